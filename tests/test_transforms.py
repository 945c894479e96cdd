"""The transform library (issue 24): de-identification and transcoding of pydicom's own test
files, every transfer syntax in that corpus, checked tag by tag against Table E.1-1 as the
profile library carries it, and pixel by pixel against the decoded originals."""

from __future__ import annotations

import collections
import io
import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pydicom.data
import pytest
from pydicom.data import get_testdata_file, get_testdata_files
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEG2000,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
    UID,
)

from dicom_adapter.transforms import DeidConfig, Transform, TransformConfigError, apply_transform
from dicom_adapter.transforms.annex_e_options import OPTION_COLUMNS, SOURCE_SHA256
from dicom_adapter.transforms.deidentify import ALWAYS_KEPT
from dicom_adapter.transforms.profile_table import OPTIONS, basic_action
from dicom_adapter.transforms.transcode import TranscodeSkipped, transcode
from support.deid_checks import assert_basic_profile_applied, elements

KEY = b"test key one"
OTHER_KEY = b"test key two"
LOSSLESS = [JPEG2000Lossless, JPEGLSLossless, RLELossless, ExplicitVRLittleEndian]
REPO = Path(__file__).resolve().parent.parent


def _read(path: str | Path, **kwargs) -> Dataset | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = pydicom.dcmread(path, **kwargs)
            ds.file_meta.TransferSyntaxUID, ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SOPClassUID
            return ds
        except Exception:
            return None


def _corpus() -> list[str]:
    """Every Part-10 instance among pydicom's bundled test files (with its identity UIDs).
    get_testdata_files() lists these first, then tries to download pydicom's external data:
    with no network here, only the bundled ones (its `test_files` folder) are taken."""
    bundled = Path(pydicom.data.__file__).parent / "test_files"
    files = [f for f in get_testdata_files() if Path(f).is_relative_to(bundled)] or [str(p) for p in bundled.rglob("*")]
    return sorted(f for f in files if _read(f, stop_before_pixels=True) is not None)


CORPUS = _corpus()
SYNTAXES = sorted({str(_read(f, stop_before_pixels=True).file_meta.TransferSyntaxUID) for f in CORPUS})


def _decodable(path: str) -> bool:
    ds = _read(path)
    if ds is None or "PixelData" not in ds:
        return False
    try:
        ds.pixel_array
        return True
    except Exception:
        return False


def _pixel_samples(per_syntax: int = 6) -> list[str]:
    """Per transfer syntax, its smallest instances whose pixel data decodes here, those of at
    least 32x32 first (openjpeg encodes with 6 resolution levels: smaller images it refuses)."""
    by_syntax: dict[str, list[tuple[bool, int, str]]] = collections.defaultdict(list)
    for path in CORPUS:
        if _decodable(path):
            ds = _read(path, stop_before_pixels=True)
            small = min(int(ds.Rows), int(ds.Columns)) < 32
            by_syntax[str(ds.file_meta.TransferSyntaxUID)].append((small, os.path.getsize(path), path))
    return sorted(p for items in by_syntax.values() for *_, p in sorted(items)[:per_syntax])


PIXEL_SAMPLES = _pixel_samples()


def _basic(path: str | Path, tmp_path: Path, key: bytes = KEY, options: tuple[str, ...] = (), name: str = "out.dcm"):
    transform = Transform(DeidConfig.build("basic", options=options))
    result = apply_transform(path, transform, key, tmp_path / name)
    return result, pydicom.dcmread(result.output)


# ---------------------------------------------------------------------------------------------
# De-identification: the Basic Profile against its table, on every instance of the corpus


def test_corpus_covers_every_transfer_syntax_pydicom_ships():
    assert len(CORPUS) > 100
    for syntax in (ExplicitVRLittleEndian, JPEG2000Lossless, JPEGLSLossless, RLELossless, JPEGBaseline8Bit, JPEG2000):
        assert syntax in SYNTAXES
    assert {str(_read(p, stop_before_pixels=True).file_meta.TransferSyntaxUID) for p in PIXEL_SAMPLES} == set(SYNTAXES)


@pytest.mark.parametrize("path", CORPUS, ids=os.path.basename)
def test_basic_profile_leaves_no_value_the_table_takes_away(path, tmp_path):
    original = pydicom.dcmread(path, force=True)
    result, out = _basic(path, tmp_path)
    assert result.deidentified and result.output is not None
    assert_basic_profile_applied(original, out)
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID != original.SOPInstanceUID
    assert out.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
    if "SourceApplicationEntityTitle" in original.file_meta:
        assert out.file_meta.SourceApplicationEntityTitle == original.file_meta.SourceApplicationEntityTitle
    if "PixelData" in original:
        assert out.PixelData == original.PixelData  # de-identification alone keeps the pixel bytes


def test_every_table_row_with_a_value_in_an_instance_is_acted_on(tmp_path):
    """A made instance carrying a value for every single-tag row of Table E.1-1 whose VR is
    plain text: none of those values survives, whatever the row's action."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    from dicom_adapter.transforms.profile_table import BASIC_ACTIONS
    from pydicom.datadict import dictionary_VR, dictionary_has_tag

    planted = {}
    for tag, action in BASIC_ACTIONS.items():
        if tag >> 16 in (0x0002, 0x0008) and tag in (0x00080016,):
            continue
        if dictionary_has_tag(tag) and dictionary_VR(tag) in ("LO", "SH", "PN", "LT", "ST", "UT") and tag >> 16 != 0x0002:
            value = f"MARK{tag:08X}"[:16]
            ds.add_new(tag, dictionary_VR(tag), value)
            planted[tag] = value
    assert len(planted) > 200
    source = tmp_path / "planted.dcm"
    ds.save_as(source)
    _, out = _basic(source, tmp_path)
    survivors = [f"{tag:08X}" for tag, value in planted.items() if tag in out and str(out[tag].value) == value]
    assert survivors == []


def test_uids_consistent_across_a_study_and_references_follow(tmp_path):
    base = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    uids = [f"1.2.826.0.1.3680043.8.498.{n}" for n in (101, 102, 103)]
    paths = []
    for index, uid in enumerate(uids):
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        ds.SOPInstanceUID = uid
        ds.file_meta.MediaStorageSOPInstanceUID = uid
        if index:
            ref = Dataset()
            ref.ReferencedSOPClassUID = ds.SOPClassUID
            ref.ReferencedSOPInstanceUID = uids[0]
            ds.ReferencedImageSequence = Sequence([ref])
        path = tmp_path / f"in{index}.dcm"
        ds.save_as(path)
        paths.append(path)
    outs = [_basic(p, tmp_path, name=f"out{i}.dcm")[1] for i, p in enumerate(paths)]
    assert len({o.StudyInstanceUID for o in outs}) == 1 and outs[0].StudyInstanceUID != base.StudyInstanceUID
    assert len({o.SeriesInstanceUID for o in outs}) == 1 and outs[0].SeriesInstanceUID != base.SeriesInstanceUID
    assert len({o.FrameOfReferenceUID for o in outs}) == 1
    assert len({o.SOPInstanceUID for o in outs}) == 3
    for out in outs[1:]:
        assert out.ReferencedImageSequence[0].ReferencedSOPInstanceUID == outs[0].SOPInstanceUID
        assert out.ReferencedImageSequence[0].ReferencedSOPClassUID == base.SOPClassUID  # not in the table: kept
    assert outs[0].PatientID == outs[1].PatientID  # a keyed pseudonym links the patient's instances


def test_resend_is_byte_identical_and_another_key_gives_other_uids(tmp_path):
    for path in PIXEL_SAMPLES[:6]:
        first, out1 = _basic(path, tmp_path, name="a.dcm")
        again, _ = _basic(path, tmp_path, name="b.dcm")
        other, out2 = _basic(path, tmp_path, key=OTHER_KEY, name="c.dcm")
        assert first.output.read_bytes() == again.output.read_bytes()
        assert out1.SOPInstanceUID != out2.SOPInstanceUID
        assert out1.StudyInstanceUID != out2.StudyInstanceUID


def test_options_change_only_their_columns_and_are_marked(tmp_path):
    path = get_testdata_file("CT_small.dcm")
    original = pydicom.dcmread(path)
    _, full = _basic(path, tmp_path, options=("retain_longitudinal_full_dates", "retain_uids"), name="full.dcm")
    assert OPTION_COLUMNS["rtnLongFullDatesOpt"][0x00080020] == "K"
    assert full.StudyDate == original.StudyDate and full.StudyTime == original.StudyTime
    assert full.StudyInstanceUID == original.StudyInstanceUID and full.SOPInstanceUID == original.SOPInstanceUID
    assert full.PatientName == "" and full.PatientBirthDate == ""  # not in those columns: Basic action
    assert full.LongitudinalTemporalInformationModified == "UNMODIFIED"
    codes = [item.CodeValue for item in full.DeidentificationMethodCodeSequence]
    assert codes == ["113100", OPTIONS["retain_longitudinal_full_dates"].code.value, "113110"] == ["113100", "113106", "113110"]

    _, shifted = _basic(path, tmp_path, options=("retain_longitudinal_modified_dates",), name="mod.dcm")
    _, shifted_again = _basic(path, tmp_path, options=("retain_longitudinal_modified_dates",), name="mod2.dcm")
    assert shifted.StudyDate not in ("", original.StudyDate) and shifted.StudyDate == shifted_again.StudyDate
    gap = lambda d: (np.datetime64(f"{d.StudyDate[:4]}-{d.StudyDate[4:6]}-{d.StudyDate[6:]}") - np.datetime64(f"{d.ContentDate[:4]}-{d.ContentDate[4:6]}-{d.ContentDate[6:]}"))
    assert gap(shifted) == gap(original)  # the interval between two dates survives the shift
    assert shifted.LongitudinalTemporalInformationModified == "MODIFIED"
    assert shifted.DeidentificationMethodCodeSequence[1].CodeValue == "113107"


def test_clean_descriptors_keeps_descriptors_without_identifiers(tmp_path):
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.PatientName = "Rosenberg^Miriam"
    ds.PatientID = "MRN0042"
    ds.StudyDescription = "CT chest for ROSENBERG (MRN0042) follow-up"
    ds.SeriesDescription = "axial 5mm"
    source = tmp_path / "described.dcm"
    ds.save_as(source)
    _, plain = _basic(source, tmp_path, name="plain.dcm")
    assert "StudyDescription" not in plain and "SeriesDescription" not in plain  # X in the Basic Profile
    _, clean = _basic(source, tmp_path, options=("clean_descriptors",), name="clean.dcm")
    assert OPTION_COLUMNS["cleanDescOpt"][0x00081030] == "C"
    assert clean.SeriesDescription == "axial 5mm"
    assert "CT chest for" in clean.StudyDescription and "follow-up" in clean.StudyDescription
    assert "ROSENBERG" not in clean.StudyDescription.upper() and "MRN0042" not in clean.StudyDescription
    assert [i.CodeValue for i in clean.DeidentificationMethodCodeSequence] == ["113100", "113105"]


# ---------------------------------------------------------------------------------------------
# Google's modes


def test_google_remove_list_empties_listed_tags_everywhere(tmp_path):
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    item = Dataset()
    item.PatientName = "Nested^Name"
    ds.OtherPatientIDsSequence = Sequence([item])
    source = tmp_path / "nested.dcm"
    ds.save_as(source)
    transform = Transform.from_google_flags(redact_remove_list="PatientName,00100020, 00080080")
    out = pydicom.dcmread(apply_transform(source, transform, KEY, tmp_path / "o.dcm").output)
    assert out.PatientName == "" and out.PatientID == "" and out.InstitutionName == ""
    assert out.OtherPatientIDsSequence[0].PatientName == ""
    assert out.PatientBirthDate == ds.PatientBirthDate  # not listed: kept
    assert out.StudyInstanceUID != ds.StudyInstanceUID and out.StudyInstanceUID.startswith("2.25.")  # as Google's


def test_google_keep_list_keeps_only_those_and_a_valid_instance(tmp_path):
    path = get_testdata_file("MR_small.dcm")
    original = pydicom.dcmread(path)
    transform = Transform.from_google_flags(redact_keep_list="PatientSex,StudyDate")
    out = pydicom.dcmread(apply_transform(path, transform, KEY, tmp_path / "o.dcm").output)
    assert out.PatientSex == original.PatientSex and out.StudyDate == original.StudyDate
    for element in out:
        if element.tag in ALWAYS_KEPT or element.keyword in ("PatientSex", "StudyDate", "DeidentificationMethod"):
            continue
        assert element.value in (None, "", b"") or (element.VR == "SQ" and len(element.value) == 0), element.keyword
    assert np.array_equal(out.pixel_array, original.pixel_array)
    assert out.Rows == original.Rows and out.SOPClassUID == original.SOPClassUID


def test_chc_basic_empties_every_table_attribute_and_replaces_identity(tmp_path):
    path = get_testdata_file("CT_small.dcm")
    original = pydicom.dcmread(path)
    transform = Transform.from_google_flags(redact_filter_profile="CHC_BASIC")
    out = pydicom.dcmread(apply_transform(path, transform, KEY, tmp_path / "o.dcm").output)
    for element in elements(out):
        tag = int(element.tag)
        if basic_action(tag) is None or tag in (0x00080018, 0x0020000D, 0x0020000E, 0x00120063):
            continue
        assert element.value in (None, "", b"") or (element.VR == "SQ" and len(element.value) == 0), element.keyword
    assert out.SOPInstanceUID != original.SOPInstanceUID and out.SOPInstanceUID.startswith("2.25.")
    assert out.DeidentificationMethod == "redact_filter_profile CHC_BASIC"


# ---------------------------------------------------------------------------------------------
# Configuration errors name the entry


@pytest.mark.parametrize(
    "data, named",
    [
        ({"deidentify": {"profile": "CHC_ADVANCED"}}, "CHC_ADVANCED"),
        ({"deidentify": {"profile": "basic", "options": ["retain_everything"]}}, "retain_everything"),
        ({"deidentify": {"remove": ["PatientName", "PatientNmae"]}}, "PatientNmae"),
        ({"deidentify": {"keep": ["(0010,ZZZZ)"]}}, "(0010,ZZZZ)"),
        ({"deidentify": {"profile": "basic", "colour": 1}}, "colour"),
        ({"transfer_syntax": "1.2.840.10008.1.2.4.50"}, "1.2.840.10008.1.2.4.50"),
        ({"transfer_syntax": "1.2.3.4"}, "1.2.3.4"),
        ({"transfer_syntax": JPEG2000}, "allow_lossy"),
        ({"max_pixel_bytes": 0}, "max_pixel_bytes"),
    ],
)
def test_config_errors_name_the_entry(data, named):
    with pytest.raises(TransformConfigError, match=re.escape(named)):
        Transform.from_json(data)


def test_google_flags_refuse_two_redact_modes_and_round_trip():
    with pytest.raises(TransformConfigError, match="only one of"):
        Transform.from_google_flags(redact_remove_list="PatientName", redact_filter_profile="CHC_BASIC")
    data = {
        "deidentify": {"profile": "basic", "options": ["retain_uids"], "remove": ["StationName"]},
        "transfer_syntax": JPEG2000Lossless,
    }
    assert Transform.from_json(data).to_json() == data
    assert Transform.from_json({}).is_identity
    assert Transform.from_json({"transfer_syntax": JPEG2000, "allow_lossy": True}).allow_lossy


# ---------------------------------------------------------------------------------------------
# Transcoding


@pytest.mark.parametrize("path", PIXEL_SAMPLES, ids=os.path.basename)
def test_lossless_transcodes_keep_every_pixel(path, tmp_path):
    original = pydicom.dcmread(path)
    expected = original.pixel_array
    done = []
    for target in LOSSLESS:
        result = apply_transform(path, Transform(transfer_syntax=target), KEY, tmp_path / f"{target}.dcm")
        if result.skipped:
            assert result.output is None and result.warnings  # stored as received
            assert "failed" in result.skipped.reason or "exceeds" in result.skipped.reason
            continue
        if str(original.file_meta.TransferSyntaxUID) == target:
            assert result.output is None  # nothing to do: the received bytes go as they are
            continue
        out = pydicom.dcmread(result.output)
        assert out.file_meta.TransferSyntaxUID == target == result.transfer_syntax
        assert out.SOPInstanceUID == original.SOPInstanceUID  # lossless: the same instance
        assert np.array_equal(out.pixel_array, expected), f"{target.name}: pixels differ"
        done.append(target)
    # Some instances no codec here takes (1-bit segmentations, YBR_FULL_422 stored natively,
    # images under 32x32 for openjpeg): those were skipped with a reason, checked above; that
    # every source syntax still reaches every target is the next test's job.


def test_every_source_syntax_reaches_every_lossless_target():
    reached = collections.defaultdict(set)
    for path in PIXEL_SAMPLES:
        ds = pydicom.dcmread(path)
        for target in LOSSLESS:
            work, outcome = transcode(ds, target)
            if not isinstance(outcome, TranscodeSkipped):
                reached[str(ds.file_meta.TransferSyntaxUID)].add(target)
    for syntax, targets in reached.items():
        assert targets == set(LOSSLESS), f"{UID(syntax).name} reached only {sorted(targets)}"
    assert sorted(reached) == SYNTAXES


def test_deidentified_and_jpeg2000_lossless_together(tmp_path):
    path = get_testdata_file("MR_small_RLE.dcm")
    original = pydicom.dcmread(path)
    transform = Transform(DeidConfig.build("basic"), JPEG2000Lossless)
    result = apply_transform(path, transform, KEY, tmp_path / "o.dcm")
    out = pydicom.dcmread(result.output)
    assert result.deidentified and result.transcoded and out.file_meta.TransferSyntaxUID == JPEG2000Lossless
    assert np.array_equal(out.pixel_array, original.pixel_array)
    assert out.PatientName == "" and out.PatientIdentityRemoved == "YES"
    assert apply_transform(path, transform, KEY, tmp_path / "again.dcm").output.read_bytes() == result.output.read_bytes()


def test_untranscodable_instances_are_skipped_never_raised(tmp_path):
    # No pixel data (a structured report) cannot be compressed.
    sr = get_testdata_file("test-SR.dcm")
    result = apply_transform(sr, Transform(transfer_syntax=JPEG2000Lossless), KEY)
    assert isinstance(result.skipped, TranscodeSkipped) and "no pixel data" in result.skipped.reason
    assert result.output is None
    # Too large for the memory limit.
    ct = get_testdata_file("CT_small.dcm")
    result = apply_transform(ct, Transform(transfer_syntax=JPEG2000Lossless, max_pixel_bytes=1000), KEY)
    assert result.skipped and "exceeds max_pixel_bytes=1000" in result.skipped.reason
    # Broken compressed pixel data: the codec fails, the (de-identified) copy keeps its syntax.
    ds = pydicom.dcmread(get_testdata_file("MR_small_jp2klossless.dcm"))
    ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + b"\x00" * 60])  # a J2K codestream cut after its first marker
    broken = tmp_path / "broken.dcm"
    ds.save_as(broken)
    result = apply_transform(broken, Transform(DeidConfig.build("basic"), RLELossless), KEY, tmp_path / "o.dcm")
    assert result.skipped and "failed" in result.skipped.reason
    out = pydicom.dcmread(result.output)
    assert out.file_meta.TransferSyntaxUID == JPEG2000Lossless and out.PatientIdentityRemoved == "YES"


def test_lossy_only_when_allowed_and_then_a_new_keyed_uid(tmp_path):
    path = get_testdata_file("CT_small.dcm")
    with pytest.raises(TransformConfigError, match="lossy"):
        Transform(transfer_syntax=JPEG2000)
    transform = Transform(transfer_syntax=JPEG2000, allow_lossy=True)
    first = pydicom.dcmread(apply_transform(path, transform, KEY, tmp_path / "a.dcm").output)
    second = pydicom.dcmread(apply_transform(path, transform, KEY, tmp_path / "b.dcm").output)
    assert first.file_meta.TransferSyntaxUID == JPEG2000 and first.LossyImageCompression == "01"
    assert first.SOPInstanceUID == second.SOPInstanceUID != pydicom.dcmread(path).SOPInstanceUID


def test_a_file_object_source_works(tmp_path):
    data = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    result = apply_transform(io.BytesIO(data), Transform(DeidConfig.build("basic")), KEY, tmp_path / "o.dcm")
    assert pydicom.dcmread(result.output).PatientIdentityRemoved == "YES"


# ---------------------------------------------------------------------------------------------
# The generated option table, and dciodvfy


def test_option_table_matches_its_source():
    """The option columns are generated from dicom-standard's JSON; with that wheel at hand
    (DICOM_STANDARD_WHEEL), regenerating gives the committed module."""
    wheel = os.environ.get("DICOM_STANDARD_WHEEL")
    assert all(len(column) > 0 for name, column in OPTION_COLUMNS.items() if name != "rtnSafePrivOpt") and SOURCE_SHA256
    if not wheel:
        pytest.skip("DICOM_STANDARD_WHEEL not set (pip download --no-deps dicom-standard==0.1.0 to check the generation)")
    sys.path.insert(0, str(REPO / "scripts"))
    import generate_annex_e_options as generator

    module = REPO / "functions/dicom_adapter/transforms/annex_e_options.py"
    assert generator.render(generator.read_table(Path(wheel))) == module.read_text()


def _dciodvfy_errors(path: Path) -> set[str]:
    run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    lines = (run.stdout + run.stderr).splitlines()
    # Values differ after de-identification; the kind of error (and the attribute) is what counts.
    return {re.sub(r"<[^>]*>|\"[^\"]*\"|=\s*\S+", "", line).strip() for line in lines if line.startswith("Error")}


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy absent (apt-get install dicom3tools)")
@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "JPEG2000.dcm", "SC_rgb_rle.dcm", "waveform_ecg.dcm"])
def test_dciodvfy_finds_no_new_errors_after_deidentification(name, tmp_path):
    path = Path(get_testdata_file(name))
    _, _ = _basic(path, tmp_path)
    new = _dciodvfy_errors(tmp_path / "out.dcm") - _dciodvfy_errors(path)
    assert new == set()
