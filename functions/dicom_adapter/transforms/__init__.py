"""Per-destination transforms (issue 24): a de-identified and/or transcoded copy of an instance.

A routing destination may carry two optional keys beside Google's format (which stays valid):

  {"filter": "Modality=CT", "dicomweb_destination": "https://research/dicomWeb",
   "deidentify": {"profile": "basic", "options": ["retain_longitudinal_full_dates"],
                  "remove": ["StationName"], "keep": []},
   "transfer_syntax": "1.2.840.10008.1.2.4.90", "allow_lossy": false, "max_pixel_bytes": 536870912}

`deidentify.profile` is "basic" (PS3.15 Annex E) or "CHC_BASIC" (Google's); `remove` and `keep`
are Google's `--redact_remove_list` / `--redact_keep_list` (keywords or GGGGEEEE tags). The
same comes from Google's flags for the default destination (`Transform.from_google_flags`).

`apply_transform` reads one Part-10 file, de-identifies, transcodes and writes a new Part-10
file. A destination without a transform never comes here: its copy stays byte-exact.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Iterator, Mapping, Union

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID

from ..part10 import IMPLEMENTATION_VERSION_NAME
from .deidentify import DeidConfig, DeidReport, deidentify
from .errors import TransformConfigError
from .streaming import stream_deferred_values
from .transcode import DEFAULT_MAX_PIXEL_BYTES, Transcoded, TranscodeSkipped, check_target, transcode
from .uids import keyed_uid

__all__ = [
    "Transform",
    "TransformConfigError",
    "TransformResult",
    "TranscodeSkipped",
    "DeidConfig",
    "apply_transform",
]

TRANSFORM_KEYS = ("deidentify", "transfer_syntax", "allow_lossy", "max_pixel_bytes")
# Values larger than this stay on disk (pydicom's defer_size) and are streamed into the copy
# (streaming.py): only the pixel data a transcode decodes is ever held in memory.
_DEFER_SIZE = 1024 * 1024


@dataclass(frozen=True)
class Transform:
    """What to do to a destination's copy: de-identify (None: no), then transcode ("" : no)."""

    deidentify: DeidConfig | None = None
    transfer_syntax: str = ""
    allow_lossy: bool = False
    max_pixel_bytes: int = DEFAULT_MAX_PIXEL_BYTES

    def __post_init__(self) -> None:
        if self.transfer_syntax:
            check_target(self.transfer_syntax, allow_lossy=self.allow_lossy)
        if self.max_pixel_bytes <= 0:
            raise TransformConfigError(f"max_pixel_bytes must be positive, not {self.max_pixel_bytes}")

    @property
    def summary(self) -> str:
        """What is done to the copy, for labels and logs (no secrets, no values)."""
        parts = []
        if self.deidentify is not None:
            d = self.deidentify
            how = d.profile or ("remove list" if d.remove else "keep list")
            parts.append(f"de-identified ({how}{''.join(f', {o}' for o in d.options)})")
        if self.transfer_syntax:
            parts.append(f"as {self.transfer_syntax}")
        return ", ".join(parts) or "as received"

    @property
    def is_identity(self) -> bool:
        """True when nothing is to be done (the copy stays byte-exact)."""
        return self.deidentify is None and not self.transfer_syntax

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {}
        if self.deidentify is not None:
            data["deidentify"] = self.deidentify.to_json()
        if self.transfer_syntax:
            data["transfer_syntax"] = self.transfer_syntax
        if self.allow_lossy:
            data["allow_lossy"] = True
        if self.max_pixel_bytes != DEFAULT_MAX_PIXEL_BYTES:
            data["max_pixel_bytes"] = self.max_pixel_bytes
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Transform":
        """From a destination entry's optional keys (other keys are the destination's own)."""
        deid = DeidConfig.from_json(data["deidentify"]) if data.get("deidentify") is not None else None
        syntax = data.get("transfer_syntax", "")
        lossy = data.get("allow_lossy", False)
        limit = data.get("max_pixel_bytes", DEFAULT_MAX_PIXEL_BYTES)
        if not isinstance(syntax, str):
            raise TransformConfigError(f"'transfer_syntax' must be a UID string, not {syntax!r}")
        if not isinstance(lossy, bool):
            raise TransformConfigError(f"'allow_lossy' must be true or false, not {lossy!r}")
        if not isinstance(limit, int) or isinstance(limit, bool):
            raise TransformConfigError(f"'max_pixel_bytes' must be an integer, not {limit!r}")
        return cls(deid, syntax.strip(), lossy, limit)

    @classmethod
    def from_google_flags(
        cls,
        *,
        redact_remove_list: str = "",
        redact_keep_list: str = "",
        redact_filter_profile: str = "",
        store_compress_to_transfer_syntax: str = "",
    ) -> "Transform":
        """Google's flags (comma-separated lists); as there, at most one redact flag."""
        given = [f for f in (redact_remove_list, redact_keep_list, redact_filter_profile) if f.strip()]
        if len(given) > 1:
            raise TransformConfigError("only one of --redact_remove_list, --redact_keep_list, --redact_filter_profile may be given")
        deid = None
        if given:
            deid = DeidConfig.build(
                profile=redact_filter_profile,
                remove=redact_remove_list.split(","),
                keep=redact_keep_list.split(","),
            )
        return cls(deid, store_compress_to_transfer_syntax.strip())


@dataclass(frozen=True)
class TransformResult:
    """What `apply_transform` did. `output` is the new Part-10 file, or None when the copy is
    the instance as received (nothing to do, or only a transcode that was skipped)."""

    output: Path | None
    size: int
    transfer_syntax: str
    sop_instance_uid: str  # of the copy (new when de-identified)
    study_instance_uid: str = ""  # of the copy
    series_instance_uid: str = ""
    deidentified: bool = False
    transcoded: bool = False
    skipped: TranscodeSkipped | None = None
    deid: DeidReport | None = None
    warnings: tuple[str, ...] = field(default=())


Source = Union[str, os.PathLike, BinaryIO]


def apply_transform(source: Source, transform: Transform, key: bytes, output: str | os.PathLike | None = None) -> TransformResult:
    """Read the Part-10 `source`, de-identify and transcode as `transform` says, and write the
    copy to `output` (default: a new temporary file the caller removes). The same source,
    transform and key always give the same bytes.

    A de-identification that cannot be done raises (the caller dead-letters the copy: an
    instance meant to be de-identified is never sent as received); a transcode that cannot be
    done leaves the copy in its received transfer syntax (result.skipped says why).

    Memory: a value over 1 MiB (Pixel Data, waveform data, padding...) is copied from the source
    file to the copy in chunks (streaming.py), so de-identification alone, or a transcode skipped
    for exceeding `max_pixel_bytes`, stays within a few MiB whatever the instance's size. A
    transcode decodes the whole pixel data (transcode.py): 4-5x `max_pixel_bytes` at most.
    """
    with _opened(source) as file:
        dataset = dcmread(file, defer_size=_DEFER_SIZE)
        stream_deferred_values(dataset, file)
        return _transform(dataset, transform, key, output)


@contextmanager
def _opened(source: Source) -> Iterator[BinaryIO]:
    """The source as a seekable binary file that stays open until the copy is written (the
    streamed values are read from it then)."""
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as file:
            yield file
    else:
        yield source


def _transform(dataset: Dataset, transform: Transform, key: bytes, output: str | os.PathLike | None) -> TransformResult:
    original_syntax = str(dataset.file_meta.TransferSyntaxUID)
    report = deidentify(dataset, transform.deidentify, key) if transform.deidentify is not None else None
    skipped: TranscodeSkipped | None = None
    transcoded = False
    if transform.transfer_syntax:
        dataset, outcome = transcode(
            dataset,
            transform.transfer_syntax,
            allow_lossy=transform.allow_lossy,
            max_pixel_bytes=transform.max_pixel_bytes,
            new_uid=lambda uid: keyed_uid(key, f"lossy:{transform.transfer_syntax}:{uid}"),
        )
        skipped = outcome if isinstance(outcome, TranscodeSkipped) else None
        transcoded = isinstance(outcome, Transcoded) and outcome.transfer_syntax != original_syntax
    warnings = (f"transcode skipped: {skipped.reason}",) if skipped else ()
    if report is None and not transcoded:
        return TransformResult(None, 0, original_syntax, str(dataset.get("SOPInstanceUID", "")), skipped=skipped, warnings=warnings)
    path = Path(output) if output is not None else _temporary_path()
    _write_part10(dataset, path)
    return TransformResult(
        path,
        path.stat().st_size,
        str(dataset.file_meta.TransferSyntaxUID),
        str(dataset.SOPInstanceUID),
        str(dataset.get("StudyInstanceUID", "")),
        str(dataset.get("SeriesInstanceUID", "")),
        deidentified=report is not None,
        transcoded=transcoded,
        skipped=skipped,
        deid=report,
        warnings=warnings,
    )


def _temporary_path() -> Path:
    handle, name = tempfile.mkstemp(prefix="transformed-", suffix=".dcm")
    os.close(handle)
    return Path(name)


def _write_part10(dataset: Dataset, path: Path) -> None:
    """The copy as a Part-10 file: the received file meta (SourceApplicationEntityTitle and the
    other AE titles kept) with the copy's SOP Instance UID and transfer syntax."""
    meta = dataset.file_meta
    meta.MediaStorageSOPClassUID = dataset.SOPClassUID
    meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    if "FileMetaInformationGroupLength" in meta:
        del meta.FileMetaInformationGroupLength  # recomputed by the writer
    dataset.save_as(path, enforce_file_format=True)
