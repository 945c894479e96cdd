"""Transcoding a pydicom Dataset to another transfer syntax (Google's
`--store_compress_to_transfer_syntax`), with pydicom's own encoders and decoders and the
plugins that give them codecs: pylibjpeg-openjpeg (JPEG 2000), pyjpegls (JPEG-LS encoding),
pylibjpeg-libjpeg (JPEG and JPEG-LS decoding), pylibjpeg-rle (RLE, faster than pydicom's own).

Lossless targets keep every pixel value, so the SOP Instance UID stays (PS3.4 transcoding);
a lossy one (only with `allow_lossy`) changes the image, so the instance gets a new UID
(keyed: a re-send still gives the same one) and LossyImageCompression "01". An instance that
cannot be transcoded (no pixel data, a codec that fails, too large; openjpeg, for one,
refuses images under 32x32 pixels) comes back as
`TranscodeSkipped` with the reason: the caller stores it as it is, with a WARNING and a counter.

Memory: pydicom decodes the whole pixel data into one array and encodes from it, so a
transcode holds the source bytes, the decoded frames and the encoded result at once (4-5x the
decoded size at peak: 0.96 GB for 210 MB of 16-bit pixels to JPEG 2000, bench/transcode_bench.py). It does not stream; `max_pixel_bytes` refuses (skips) an instance
whose decoded pixel data is larger, rather than pretend: that is the bound, and a skipped
instance (or one only de-identified) is copied with its large values streamed from the source
file (streaming.py), in a few MiB whatever its size.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Union

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import pack_bits
from pydicom.pixels.encoders import (
    JPEG2000Encoder,
    JPEG2000LosslessEncoder,
    JPEGLSLosslessEncoder,
    JPEGLSNearLosslessEncoder,
    RLELosslessEncoder,
)
from pydicom.uid import UID, ExplicitVRLittleEndian

from .errors import TransformConfigError

# The targets we encode, with pydicom's encoder for each (None: native, nothing to encode).
LOSSLESS_TARGETS = {
    JPEG2000LosslessEncoder.UID: JPEG2000LosslessEncoder,
    JPEGLSLosslessEncoder.UID: JPEGLSLosslessEncoder,
    RLELosslessEncoder.UID: RLELosslessEncoder,
    ExplicitVRLittleEndian: None,
}
LOSSY_TARGETS = {JPEG2000Encoder.UID: JPEG2000Encoder, JPEGLSNearLosslessEncoder.UID: JPEGLSNearLosslessEncoder}
# Lossy encoders need a target quality; these keep the image diagnostic (PSNR 50 dB for JPEG
# 2000 would be near lossless; a compression ratio of 10 is the usual "visually lossless").
_LOSSY_PARAMETERS = {JPEG2000Encoder.UID: {"j2k_cr": [10]}, JPEGLSNearLosslessEncoder.UID: {"jls_error": 2}}
DEFAULT_MAX_PIXEL_BYTES = 512 * 1024 * 1024


def check_target(uid: str, *, allow_lossy: bool = False) -> UID:
    """The target as a UID, or TransformConfigError naming it: not one we encode, its codec
    plugin missing, or lossy without `allow_lossy`."""
    target = UID(uid.strip())
    if target in LOSSY_TARGETS and not allow_lossy:
        raise TransformConfigError(f"transfer syntax {uid} ({target.name}) is lossy: allow it explicitly (allow_lossy)")
    encoders = {**LOSSLESS_TARGETS, **LOSSY_TARGETS}
    if target not in encoders:
        known = ", ".join(f"{u} ({UID(u).name})" for u in encoders if u not in LOSSY_TARGETS or allow_lossy)
        raise TransformConfigError(f"cannot encode transfer syntax {uid!r}; we encode {known}")
    encoder = encoders[target]
    if encoder is not None and not encoder.is_available:
        raise TransformConfigError(f"transfer syntax {uid} ({target.name}) needs {', '.join(encoder.missing_dependencies)}")
    return target


@dataclass(frozen=True)
class Transcoded:
    """The data set now has `transfer_syntax` (and, if lossy, a new SOP Instance UID)."""

    transfer_syntax: str
    lossy: bool = False


@dataclass(frozen=True)
class TranscodeSkipped:
    """The data set was left as it was; `reason` says why (for the WARNING line)."""

    reason: str


TranscodeOutcome = Union[Transcoded, TranscodeSkipped]


def transcode(
    dataset: Dataset,
    target: str,
    *,
    allow_lossy: bool = False,
    max_pixel_bytes: int = DEFAULT_MAX_PIXEL_BYTES,
    new_uid: Callable[[str], str] | None = None,
) -> tuple[Dataset, TranscodeOutcome]:
    """`dataset` in the `target` transfer syntax, or `dataset` itself (unchanged) and why not.

    Works on a copy of the top-level elements, so a codec that fails halfway leaves the
    caller's data set as it was. `new_uid` maps the old SOP Instance UID for a lossy target.
    """
    wanted = check_target(target, allow_lossy=allow_lossy)
    current = UID(dataset.file_meta.TransferSyntaxUID)
    if current == wanted:
        return dataset, Transcoded(str(wanted))
    if "PixelData" not in dataset:
        if wanted == ExplicitVRLittleEndian:  # any data set can be re-encoded natively
            work = _copy(dataset)
            work.file_meta.TransferSyntaxUID = wanted
            return work, Transcoded(str(wanted))
        return dataset, TranscodeSkipped(f"no pixel data to compress into {wanted.name}")
    size = _decoded_size(dataset)
    if size > max_pixel_bytes:
        return dataset, TranscodeSkipped(f"decoded pixel data of {size} bytes exceeds max_pixel_bytes={max_pixel_bytes}")
    work = _copy(dataset)
    try:
        if not current.is_compressed:
            _read_in(work)
        if current.is_compressed or not current.is_little_endian:
            # decompress() refuses a native source; a big-endian one is decoded and rewritten.
            if current.is_compressed:
                work.decompress(generate_instance_uid=False)
            else:
                pixels = work.pixel_array  # decoded to native order, samples interleaved
                if int(work.BitsAllocated) == 1:
                    work.PixelData = pack_bits(pixels)
                else:
                    work.PixelData = pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()
                if int(work.get("SamplesPerPixel") or 1) > 1:
                    work.PlanarConfiguration = 0
                work.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        if wanted != ExplicitVRLittleEndian:
            work.compress(wanted, generate_instance_uid=False, **_LOSSY_PARAMETERS.get(wanted, {}))
        else:
            work.file_meta.TransferSyntaxUID = wanted
    except Exception as exc:  # any codec error: the instance is stored as it is
        return dataset, TranscodeSkipped(f"{current.name} -> {wanted.name} failed: {type(exc).__name__}: {exc}")
    lossy = wanted in LOSSY_TARGETS
    if lossy:
        work.LossyImageCompression = "01"
        if new_uid is not None:
            work.SOPInstanceUID = new_uid(str(dataset.SOPInstanceUID))
    return work, Transcoded(str(wanted), lossy=lossy)


def _decoded_size(dataset: Dataset) -> int:
    """Bytes of the decoded pixel data, from the Image Pixel module (no decoding)."""
    frames = int(dataset.get("NumberOfFrames") or 1)
    bits = int(dataset.get("BitsAllocated") or 8)
    return int(dataset.get("Rows") or 0) * int(dataset.get("Columns") or 0) * int(dataset.get("SamplesPerPixel") or 1) * frames * ((bits + 7) // 8)


def _read_in(work: Dataset) -> None:
    """Native pixel data streamed from the source (streaming.py) read into memory: pydicom's
    encoders take bytes, not a buffer (its decoders take either). Within max_pixel_bytes."""
    element = work["PixelData"]
    if element.is_buffered:
        buffer = element.value
        buffer.seek(0)
        work.PixelData = buffer.read()


def _copy(dataset: Dataset) -> Dataset:
    """A new Dataset with copies of the top-level elements (values shared: pixel data bytes are
    never changed in place, only replaced) and of the file meta."""
    work = Dataset()
    for element in dataset:
        work.add(copy.copy(element))
    meta = FileMetaDataset()
    for element in dataset.file_meta:
        meta.add(copy.copy(element))
    work.file_meta = meta
    work.preamble = getattr(dataset, "preamble", None)
    return work
