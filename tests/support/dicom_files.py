"""DICOM test data: byte-exactness helpers, pydicom's corpus, generated CTs, huge instances, PHI markers.

Invariant 2 (byte-exact) is checked by comparing the encoded data set after the group-0002
file meta, since the meta is legitimately rewritten (transfer syntax, source AE) on the way.
Invariant 4 (bounded memory) needs instances of a gigabyte that the test itself must write
without holding them. Invariant 5 (no PHI in logs) needs demographics that cannot occur in a
log by chance, so a test can grep for them.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Iterable, Mapping

import numpy as np
import pydicom
from pydicom.data import DATA_ROOT
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    PYDICOM_IMPLEMENTATION_UID,
    RLELossless,
    generate_uid,
)

__all__ = [
    # PHI markers
    "MARKER_PATIENT_NAME",
    "MARKER_PATIENT_ID",
    "MARKER_PATIENT_BIRTH_DATE",
    "MARKER_ACCESSION_NUMBER",
    "MARKER_REFERRING_PHYSICIAN_NAME",
    "MARKER_INSTITUTION_NAME",
    "MARKER_PATIENT_ADDRESS",
    "MARKER_OTHER_PATIENT_IDS",
    "MARKER_DEMOGRAPHICS",
    "MARKER_STRINGS",
    "find_marker_phi",
    # byte-exactness
    "dataset_offset_after_meta",
    "dataset_bytes_after_meta",
    "dataset_sha256_after_meta",
    # corpus
    "CorpusFile",
    "EXCLUDED_CORPUS_FILES",
    "pydicom_corpus",
    "corpus_files",
    "corpus_exclusions",
    "unique_by_sop_instance_uid",
    # generators
    "GeneratedInstance",
    "make_ct_instance",
    "make_ct_series",
    "write_large_instance",
    "MULTIFRAME_GRAYSCALE_WORD_SC_STORAGE",
]

# ---------------------------------------------------------------------------------------------
# PHI markers: values that never occur in a log line unless the log leaks demographics.

MARKER_PATIENT_NAME = "MARKERNAME^ZQX"
MARKER_PATIENT_ID = "MRKPID-7731"
MARKER_PATIENT_BIRTH_DATE = "19010203"
MARKER_ACCESSION_NUMBER = "MRKACC-4411"
MARKER_REFERRING_PHYSICIAN_NAME = "MRKREFDOC^QVW"
MARKER_INSTITUTION_NAME = "MRKINST-5520"
MARKER_PATIENT_ADDRESS = "MRKADDR-8813"
MARKER_OTHER_PATIENT_IDS = "MRKOPID-2290"

# DICOM keyword -> marker value; make_ct_instance() uses these by default.
MARKER_DEMOGRAPHICS: dict[str, str] = {
    "PatientName": MARKER_PATIENT_NAME,
    "PatientID": MARKER_PATIENT_ID,
    "PatientBirthDate": MARKER_PATIENT_BIRTH_DATE,
    "AccessionNumber": MARKER_ACCESSION_NUMBER,
    "ReferringPhysicianName": MARKER_REFERRING_PHYSICIAN_NAME,
    "InstitutionName": MARKER_INSTITUTION_NAME,
    "PatientAddress": MARKER_PATIENT_ADDRESS,
    "OtherPatientIDs": MARKER_OTHER_PATIENT_IDS,
}

# Substrings to search for (case-insensitively) in logs, exception texts, DIMSE comments.
# Name components are searched on their own, as a formatter may reorder "family^given".
MARKER_STRINGS: tuple[str, ...] = (
    "MARKERNAME",
    MARKER_PATIENT_ID,
    MARKER_PATIENT_BIRTH_DATE,
    "1901-02-03",
    MARKER_ACCESSION_NUMBER,
    "MRKREFDOC",
    MARKER_INSTITUTION_NAME,
    MARKER_PATIENT_ADDRESS,
    MARKER_OTHER_PATIENT_IDS,
)


def find_marker_phi(text: str) -> list[str]:
    """The marker strings present in `text` (empty list: no marker PHI leaked)."""
    lowered = text.lower()
    return [marker for marker in MARKER_STRINGS if marker.lower() in lowered]


# ---------------------------------------------------------------------------------------------
# Byte-exactness: where does the data set start in a Part-10 file?

# VRs with a 2-byte reserved field and a 4-byte length in explicit VR encoding (PS3.5 7.1.2).
_LONG_LENGTH_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
_HEAD_BYTES = 1 << 20  # file meta is a few hundred bytes; this is plenty


def _looks_like_vr(two: bytes) -> bool:
    return len(two) == 2 and 65 <= two[0] <= 90 and 65 <= two[1] <= 90


def dataset_offset_after_meta(head: bytes) -> int:
    """Offset of the first data set byte after the (optional) preamble, 'DICM' and group 0002.

    Walks the group-0002 elements one by one, so a missing or wrong File Meta Information
    Group Length (0002,0000) does not matter; falls back to that length only if the walk
    cannot finish. A buffer without file meta (a bare data set) has offset 0. `head` must
    hold at least the whole file meta.
    """
    if head[128:132] == b"DICM":
        start = 132
    elif head[:4] == b"DICM":
        start = 4
    elif head[:2] == b"\x02\x00":
        start = 0  # meta without preamble and magic
    else:
        return 0

    walked = _walk_group_0002(head, start)
    if walked is not None:
        return walked
    if head[start : start + 4] == b"\x02\x00\x00\x00" and head[start + 4 : start + 6] == b"UL":
        return start + 12 + struct.unpack_from("<I", head, start + 8)[0]
    raise ValueError("cannot find the end of the file meta")


def _walk_group_0002(head: bytes, pos: int) -> int | None:
    """Offset of the first element after group 0002, found element by element.

    Authoritative where it succeeds: a (0002,0000) value can be wrong, the elements cannot.
    Explicit VR LE as PS3.10 requires, tolerating implicit VR as some broken writers produce.
    None if the buffer ends inside the meta or an element runs past it.
    """
    while pos + 8 <= len(head):
        group = struct.unpack_from("<H", head, pos)[0]
        if group != 0x0002:
            return pos
        vr = head[pos + 4 : pos + 6]
        if _looks_like_vr(vr):
            if vr in _LONG_LENGTH_VRS:
                if pos + 12 > len(head):
                    return None
                pos += 12 + struct.unpack_from("<I", head, pos + 8)[0]
            else:
                pos += 8 + struct.unpack_from("<H", head, pos + 6)[0]
        else:
            pos += 8 + struct.unpack_from("<I", head, pos + 4)[0]
    return pos if pos == len(head) else None  # meta only (empty data set), or truncated


def _read_head(path: str | os.PathLike[str]) -> bytes:
    with open(path, "rb") as f:
        return f.read(_HEAD_BYTES)


def dataset_bytes_after_meta(part10: bytes | str | os.PathLike[str]) -> bytes:
    """The encoded data set exactly as in the file, everything after the group-0002 meta.

    Accepts the file's bytes or its path. Holds the data set in memory: for very large files
    compare dataset_sha256_after_meta() instead.
    """
    if isinstance(part10, (bytes, bytearray, memoryview)):
        data = bytes(part10)
        return data[dataset_offset_after_meta(data[:_HEAD_BYTES]) :]
    offset = dataset_offset_after_meta(_read_head(part10))
    with open(part10, "rb") as f:
        f.seek(offset)
        return f.read()


def dataset_sha256_after_meta(part10: bytes | str | os.PathLike[str], chunk_size: int = 1 << 22) -> str:
    """SHA-256 of the data set after the file meta, streaming (constant memory for paths)."""
    digest = hashlib.sha256()
    if isinstance(part10, (bytes, bytearray, memoryview)):
        data = bytes(part10)
        digest.update(memoryview(data)[dataset_offset_after_meta(data[:_HEAD_BYTES]) :])
        return digest.hexdigest()
    offset = dataset_offset_after_meta(_read_head(part10))
    with open(part10, "rb") as f:
        f.seek(offset)
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------
# pydicom's bundled test files as a corpus of real-world encodings.

# Files that parse but whose encoding is broken; found by sending every bundled file through
# DCMTK dcmsend and Orthanc STOW-RS (pydicom 3.0.2, DCMTK 3.6.7, Orthanc 1.10.1).
EXCLUDED_CORPUS_FILES: dict[str, str] = {
    "MR_truncated.dcm": "truncated: (7FE0,0010) declares 8192 bytes but the file ends 62 bytes early "
    "(DCMTK: premature end of stream; Orthanc STOW-RS: 400 bad file format)",
    "rtplan_truncated.dcm": "truncated inside a sequence: (300A,012C) IsocenterPosition is longer than "
    "the rest of the file (DCMTK: invalid stream)",
    "SC_rgb_jpeg.dcm": "file meta says explicit VR (JPEG Baseline) but the data set is encoded implicit VR "
    "(DCMTK misparses it, Orthanc rejects it)",
    "image_dfl.dcm": "deflated data set of odd length (4303 bytes) without the trailing NULL pad byte "
    "PS3.5 A.5 asks for (pydicom's own writer pads); sent as-is over DIMSE, DCMTK SCPs abort the "
    "association (DIMSE: Odd Fragment Length). make_ct_instance() writes valid deflated files",
    "rtdose_rle.dcm": "data set encoded implicit VR under the explicit-VR RLE Lossless transfer syntax "
    "(DCMTK reads every element as UN; Orthanc finds no UIDs)",
    "rtdose_rle_1frame.dcm": "data set encoded implicit VR under the explicit-VR RLE Lossless transfer "
    "syntax (DCMTK reads every element as UN; Orthanc finds no UIDs)",
}


@dataclass(frozen=True)
class CorpusFile:
    """One usable bundled test file and the identifiers tests need."""

    path: Path
    transfer_syntax_uid: str
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str

    @property
    def name(self) -> str:
        return self.path.name

    def read_bytes(self) -> bytes:
        return self.path.read_bytes()


def _bundled_test_files() -> list[Path]:
    """The .dcm files shipped inside the pydicom wheel.

    Deliberately not pydicom.data.get_testdata_files(): that also resolves (and downloads)
    every file of the online pydicom-data set. The DICOMDIR sample tree (dicomdirtests/) is
    left out: two dozen near-identical explicit-VR-LE images add no encoding variety.
    """
    return sorted(Path(DATA_ROOT, "test_files").glob("*.dcm"))


def _expected_native_pixel_length(ds: Dataset) -> int | None:
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        bits = int(ds.BitsAllocated)
        count = int(ds.Rows) * int(ds.Columns) * int(ds.SamplesPerPixel) * frames
    except (AttributeError, TypeError, ValueError):
        return None
    if ds.get("PhotometricInterpretation") == "YBR_FULL_422":
        count = count * 2 // 3  # chroma subsampled horizontally: 2 samples per pixel on average
    length = math.ceil(count * bits / 8)
    return length + (length % 2)


def _check_corpus_file(path: Path) -> CorpusFile | str:
    """Return a CorpusFile, or the reason the file is not usable."""
    if path.name in EXCLUDED_CORPUS_FILES:
        return EXCLUDED_CORPUS_FILES[path.name]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path)
            for _ in ds.iterall():  # parse every element, sequences included
                pass
    except Exception as exc:  # noqa: BLE001 - any parse error disqualifies the file
        return f"not a readable Part-10 file: {type(exc).__name__}: {exc}"
    meta = ds.file_meta
    ts = meta.get("TransferSyntaxUID")
    if not ts:
        return "no TransferSyntaxUID in the file meta"
    missing = [k for k in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID") if not ds.get(k)]
    if missing:
        return f"missing {', '.join(missing)} (a DICOMweb store needs all four)"
    if meta.get("MediaStorageSOPInstanceUID") != ds.SOPInstanceUID or meta.get("MediaStorageSOPClassUID") != ds.SOPClassUID:
        return (
            "file meta MediaStorageSOP{Class,Instance}UID differ from the data set's SOPClassUID/"
            "SOPInstanceUID (inconsistent Part-10: DCMTK sends the meta's UID, stores key on the data set's)"
        )
    head = _read_head(path)
    offset = dataset_offset_after_meta(head)
    uid = UID(ts)
    if uid != DeflatedExplicitVRLittleEndian and offset + 6 <= len(head):
        explicit_seen = _looks_like_vr(head[offset + 4 : offset + 6])
        if explicit_seen == uid.is_implicit_VR:
            return "data set VR encoding does not match the file meta transfer syntax"
    if "PixelData" in ds and not uid.is_compressed:
        expected = _expected_native_pixel_length(ds)
        # Longer is tolerated (MR_small_padded.dcm pads its pixel data); shorter is truncation.
        if expected is not None and len(ds.PixelData) < expected:
            return f"native pixel data is {len(ds.PixelData)} bytes, Rows x Columns x frames needs {expected}"
    return CorpusFile(
        path=path,
        transfer_syntax_uid=str(ts),
        sop_class_uid=str(ds.SOPClassUID),
        sop_instance_uid=str(ds.SOPInstanceUID),
        study_instance_uid=str(ds.StudyInstanceUID),
        series_instance_uid=str(ds.SeriesInstanceUID),
    )


@functools.lru_cache(maxsize=1)
def _scan_corpus() -> tuple[tuple[CorpusFile, ...], tuple[tuple[str, str], ...]]:
    usable: list[CorpusFile] = []
    excluded: list[tuple[str, str]] = []
    for path in _bundled_test_files():
        result = _check_corpus_file(path)
        if isinstance(result, CorpusFile):
            usable.append(result)
        else:
            excluded.append((path.name, result))
    return tuple(usable), tuple(excluded)


def corpus_files() -> list[CorpusFile]:
    """All usable bundled files, sorted by file name."""
    return list(_scan_corpus()[0])


def pydicom_corpus() -> dict[str, list[CorpusFile]]:
    """Usable bundled files grouped by transfer syntax UID (offline, no download).

    Usable = a Part-10 file with a TransferSyntaxUID, SOP Class/Instance, Study and Series UIDs,
    consistent file meta, and an encoding DCMTK and Orthanc accept (see corpus_exclusions()).
    Caution: many bundled files share a SOP Instance UID with different content (the MR_small*
    family across eight transfer syntaxes, SC_rgb_rle*, rtdose*, JPEG-lossy/JPGExtended, ...).
    One store sees those as the same instance, so a test that sends several into one store must
    pick unique_by_sop_instance_uid() or expect conflicts.
    """
    grouped: dict[str, list[CorpusFile]] = {}
    for item in corpus_files():
        grouped.setdefault(item.transfer_syntax_uid, []).append(item)
    return dict(sorted(grouped.items()))


def corpus_exclusions() -> dict[str, str]:
    """Bundled .dcm files left out of the corpus, with the reason for each."""
    return dict(_scan_corpus()[1])


def unique_by_sop_instance_uid(files: Iterable[CorpusFile]) -> list[CorpusFile]:
    """Keep the first file for each SOP Instance UID."""
    seen: set[str] = set()
    out: list[CorpusFile] = []
    for item in files:
        if item.sop_instance_uid not in seen:
            seen.add(item.sop_instance_uid)
            out.append(item)
    return out


# ---------------------------------------------------------------------------------------------
# Generated instances.

MULTIFRAME_GRAYSCALE_WORD_SC_STORAGE = UID("1.2.840.10008.5.1.4.1.1.7.3")
PRIVATE_CREATOR = "DICOMADAPTER TEST"


@dataclass(frozen=True)
class GeneratedInstance:
    """A file written by a generator and the identifiers tests assert on."""

    path: Path
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    pixel_data_length: int = 0

    def read_bytes(self) -> bytes:
        return self.path.read_bytes()

    @property
    def size(self) -> int:
        return self.path.stat().st_size


def _file_meta(sop_class: str, sop_instance: str, transfer_syntax: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = transfer_syntax
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "DCMADAPT_TEST"
    return meta


def _base_dataset(
    *,
    sop_class: str,
    sop_instance: str,
    study_uid: str,
    series_uid: str,
    modality: str,
    demographics: Mapping[str, str],
    instance_number: int,
) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.InstanceCreationDate = "20240115"
    ds.InstanceCreationTime = "101500"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_instance
    ds.StudyDate = "20240115"
    ds.SeriesDate = "20240115"
    ds.StudyTime = "101010"
    ds.SeriesTime = "101200"
    ds.Modality = modality
    ds.Manufacturer = "dicom-adapter tests"
    ds.StationName = "TESTSTATION"
    ds.StudyDescription = "Generated test study"
    ds.SeriesDescription = "Generated test series"
    ds.ManufacturerModelName = "Generator"
    ds.PatientSex = "O"
    for keyword, value in demographics.items():
        setattr(ds, keyword, value)
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = instance_number
    # A private block: private tags must survive byte-exact like any other element.
    block = ds.private_block(0x0009, PRIVATE_CREATOR, create=True)
    block.add_new(0x01, "LO", "private value kept verbatim")
    block.add_new(0x02, "UL", 0xDEADBEEF)
    return ds


def _demographics(overrides: Mapping[str, str | None]) -> dict[str, str]:
    values = dict(MARKER_DEMOGRAPHICS)
    for keyword, value in overrides.items():
        if value is None:
            values.pop(keyword, None)
        else:
            values[keyword] = value
    return values


_NATIVE_SYNTAXES = {ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian}


def make_ct_instance(
    path: str | os.PathLike[str],
    *,
    patient_name: str | None = MARKER_PATIENT_NAME,
    patient_id: str | None = MARKER_PATIENT_ID,
    patient_birth_date: str | None = MARKER_PATIENT_BIRTH_DATE,
    accession_number: str | None = MARKER_ACCESSION_NUMBER,
    referring_physician_name: str | None = MARKER_REFERRING_PHYSICIAN_NAME,
    study_instance_uid: str | None = None,
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
    instance_number: int = 1,
    size_kb: int = 70,
    transfer_syntax: str = ExplicitVRLittleEndian,
    modality: str = "CT",
    seed: int | None = None,
    extra: Mapping[str, Any] | None = None,
) -> GeneratedInstance:
    """Write a realistic small CT image (fresh UIDs unless given) and return its identifiers.

    Demographics default to the PHI markers. The pixel data is 12-bit noise sized so that the
    file is about `size_kb` KiB. Transfer syntaxes: implicit/explicit VR LE, explicit VR BE,
    deflated, and RLE Lossless (pydicom's own encoder); for JPEG family use the pydicom corpus.
    `extra` sets further attributes by keyword (a None value deletes one).
    """
    transfer_syntax = UID(transfer_syntax)
    if transfer_syntax not in _NATIVE_SYNTAXES and transfer_syntax != RLELossless:
        raise ValueError(f"cannot encode {transfer_syntax.name}; take a pydicom corpus file instead")
    path = Path(path)
    study_uid = study_instance_uid or generate_uid()
    series_uid = series_instance_uid or generate_uid()
    sop_uid = sop_instance_uid or generate_uid()
    demographics = _demographics(
        {
            "PatientName": patient_name,
            "PatientID": patient_id,
            "PatientBirthDate": patient_birth_date,
            "AccessionNumber": accession_number,
            "ReferringPhysicianName": referring_physician_name,
        }
    )
    ds = _base_dataset(
        sop_class=CTImageStorage,
        sop_instance=sop_uid,
        study_uid=study_uid,
        series_uid=series_uid,
        modality=modality,
        demographics=demographics,
        instance_number=instance_number,
    )
    ds.SliceThickness = "1.25"
    ds.KVP = "120"
    ds.PatientPosition = "HFS"
    ds.FrameOfReferenceUID = generate_uid()
    ds.ImagePositionPatient = [-125.0, -125.0, -1.25 * instance_number]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.SliceLocation = -1.25 * instance_number

    pixel_bytes = max(2 * 16 * 16, size_kb * 1024 - 1800)
    n_pixels = pixel_bytes // 2
    columns = max(16, min(512, int(math.sqrt(n_pixels)) // 2 * 2))
    rows = max(16, n_pixels // columns)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = columns
    ds.PixelSpacing = [0.488281, 0.488281]
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.WindowCenter = "40"
    ds.WindowWidth = "400"
    ds.RescaleIntercept = "-1024"
    ds.RescaleSlope = "1"
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 4096, size=(rows, columns), dtype=np.uint16)

    for keyword, value in (extra or {}).items():
        if value is None:
            if keyword in ds:
                delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)

    if transfer_syntax == RLELossless:
        ds.file_meta = _file_meta(CTImageStorage, sop_uid, ExplicitVRLittleEndian)
        # generate_instance_uid=False: pydicom would otherwise give the instance a new UID.
        ds.compress(RLELossless, pixels, encoding_plugin="pydicom", generate_instance_uid=False)
    else:
        ds.file_meta = _file_meta(CTImageStorage, sop_uid, transfer_syntax)
        data = pixels.byteswap() if transfer_syntax == ExplicitVRBigEndian else pixels
        ds.PixelData = data.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return GeneratedInstance(
        path=path,
        study_instance_uid=study_uid,
        series_instance_uid=series_uid,
        sop_instance_uid=sop_uid,
        sop_class_uid=CTImageStorage,
        transfer_syntax_uid=str(transfer_syntax),
        pixel_data_length=len(ds.PixelData),
    )


def make_ct_series(
    directory: str | os.PathLike[str],
    n: int,
    *,
    study_instance_uid: str | None = None,
    series_instance_uid: str | None = None,
    **kwargs: Any,
) -> list[GeneratedInstance]:
    """Write `n` CT slices of one series (same study/series UIDs) as directory/ct_NNNN.dcm."""
    directory = Path(directory)
    study_uid = study_instance_uid or generate_uid()
    series_uid = series_instance_uid or generate_uid()
    seed = kwargs.pop("seed", None)
    return [
        make_ct_instance(
            directory / f"ct_{i:04d}.dcm",
            study_instance_uid=study_uid,
            series_instance_uid=series_uid,
            instance_number=i,
            seed=None if seed is None else seed + i,
            **kwargs,
        )
        for i in range(1, n + 1)
    ]


_MAX_DEFINED_LENGTH = 0xFFFFFFFE  # 0xFFFFFFFF means "undefined length"


def _frame_geometry(size_bytes: int) -> tuple[int, int, int]:
    """(rows, columns, frames) of 16-bit pixels totalling about size_bytes."""
    columns = 512
    frame_bytes = 512 * columns * 2
    if size_bytes < frame_bytes:
        rows = max(1, size_bytes // (columns * 2))
        return rows, columns, 1
    return 512, columns, max(1, round(size_bytes / frame_bytes))


def write_large_instance(
    path: str | os.PathLike[str],
    size_bytes: int,
    *,
    transfer_syntax: str = ExplicitVRLittleEndian,
    fill: str = "zeros",
    seed: int = 0,
    study_instance_uid: str | None = None,
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
    block_size: int = 4 << 20,
) -> GeneratedInstance:
    """Write a valid Multi-frame Grayscale Word Secondary Capture of about `size_bytes`.

    Never holds the pixel data: pydicom writes everything but (7FE0,0010), then the element
    header and the value are streamed in `block_size` blocks of zeros or random bytes
    (`fill="random"`, deterministic per seed, for content that does not compress away).
    Rows x Columns x NumberOfFrames x 2 equals the pixel data length exactly. Native little
    endian only (implicit or explicit VR); the value length must stay below 4 GiB.
    """
    transfer_syntax = UID(transfer_syntax)
    if transfer_syntax not in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
        raise ValueError("write_large_instance supports implicit or explicit VR little endian only")
    if fill not in ("zeros", "random"):
        raise ValueError("fill must be 'zeros' or 'random'")
    rows, columns, frames = _frame_geometry(size_bytes)
    length = rows * columns * frames * 2
    if length > _MAX_DEFINED_LENGTH:
        raise ValueError(f"{length} bytes of pixel data do not fit a 32-bit value length")
    path = Path(path)
    study_uid = study_instance_uid or generate_uid()
    series_uid = series_instance_uid or generate_uid()
    sop_uid = sop_instance_uid or generate_uid()
    ds = _base_dataset(
        sop_class=MULTIFRAME_GRAYSCALE_WORD_SC_STORAGE,
        sop_instance=sop_uid,
        study_uid=study_uid,
        series_uid=series_uid,
        modality="OT",
        demographics=MARKER_DEMOGRAPHICS,
        instance_number=1,
    )
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.ConversionType = "WSD"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.NumberOfFrames = frames
    ds.FrameIncrementPointer = pydicom.tag.Tag("FrameTime")
    ds.FrameTime = "33.3"
    ds.Rows = rows
    ds.Columns = columns
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.file_meta = _file_meta(MULTIFRAME_GRAYSCALE_WORD_SC_STORAGE, sop_uid, transfer_syntax)

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pydicom.dcmwrite(f, ds, enforce_file_format=True)
        if transfer_syntax == ExplicitVRLittleEndian:
            f.write(struct.pack("<HH2s2xI", 0x7FE0, 0x0010, b"OW", length))
        else:
            f.write(struct.pack("<HHI", 0x7FE0, 0x0010, length))
        _stream_fill(f, length, fill=fill, seed=seed, block_size=block_size)
    return GeneratedInstance(
        path=path,
        study_instance_uid=study_uid,
        series_instance_uid=series_uid,
        sop_instance_uid=sop_uid,
        sop_class_uid=str(MULTIFRAME_GRAYSCALE_WORD_SC_STORAGE),
        transfer_syntax_uid=str(transfer_syntax),
        pixel_data_length=length,
    )


def _stream_fill(f: BinaryIO, length: int, *, fill: str, seed: int, block_size: int) -> None:
    rng = np.random.default_rng(seed)
    zeros = bytes(block_size) if fill == "zeros" else b""
    remaining = length
    while remaining:
        n = min(block_size, remaining)
        if fill == "zeros":
            f.write(zeros if n == block_size else zeros[:n])
        else:
            f.write(rng.bytes(n))
        remaining -= n
