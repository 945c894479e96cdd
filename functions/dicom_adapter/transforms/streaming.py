"""Large values copied from the source file to the copy in chunks, never held whole (issue 24).

`dcmread(defer_size=...)` leaves large values on disk, but the first access to them (iterating
the data set, as de-identification does, or writing it with save_as) reads each one whole: a
1 GB Pixel Data would cost 1 GB of memory. pydicom 3's writer streams an O* value given as a
buffer (`io.BufferedIOBase`: filewriter.write_OBvalue / write_OWvalue copy it in
`settings.buffered_read_size` chunks, after a header it encodes itself, in tag order, with the
sequence delimiter for encapsulated pixel data). So each deferred top-level value is replaced by
such a buffer: a read-only window on its bytes in the source file. Nothing is written by hand;
de-identification sees ordinary elements (it may remove, empty or replace one, and never reads
their bytes), and a transcode reads the window like any buffered Pixel Data.

What stays deferred (read whole when written): UN values, private ones of an implicit VR source
included (pydicom's writer does not stream UN, and calling them OB would change their VR in an
explicit VR copy), other VRs pydicom does not buffer (text, numbers), and values inside
sequences (pydicom defers top-level values only; a nested one over 1 MiB is unheard of). A
deflated data set is inflated whole by pydicom before it is parsed: nothing to stream there.
"""

from __future__ import annotations

import io
import os
import struct
from typing import BinaryIO

from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian
from pydicom.valuerep import BUFFERABLE_VRS, VR

_UNDEFINED_LENGTH = 0xFFFFFFFF
_ITEM = 0xE000FFFE  # (FFFE,E000) as a little-endian 32-bit word: group first
_SEQUENCE_DELIMITER = 0xE0DDFFFE


class ValueWindow(io.BufferedIOBase):
    """`length` bytes of `file` from `offset`, as a seekable read-only buffer of its own.

    Several windows share one file object, so every read seeks first (pydicom's buffer helpers
    only ever tell, seek and read)."""

    def __init__(self, file: BinaryIO, offset: int, length: int) -> None:
        super().__init__()
        self._file = file
        self._offset = offset
        self._length = length
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._position, os.SEEK_END: self._length}[whence]
        self._position = max(0, base + offset)
        return self._position

    def read(self, size: int | None = -1) -> bytes:
        remaining = max(0, self._length - self._position)
        size = remaining if size is None or size < 0 else min(size, remaining)
        if not size:
            return b""
        self._file.seek(self._offset + self._position)
        data = self._file.read(size)
        self._position += len(data)
        return data

    def read1(self, size: int = -1) -> bytes:
        return self.read(size)


def stream_deferred_values(dataset: Dataset, file: BinaryIO) -> int:
    """Replace each deferred top-level value of `dataset` (read from `file`, which must stay
    open until the copy is written) by a window on its bytes; how many were replaced."""
    if dataset.file_meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian:
        return 0  # offsets are in the inflated data set, which pydicom holds whole anyway
    replaced = 0
    for tag in list(dataset.keys()):
        raw = dataset.get_item(tag, keep_deferred=True)
        if not isinstance(raw, RawDataElement) or raw.value is not None or raw.length == 0:
            continue
        vr = _bufferable_vr(dataset, raw)
        if vr is None:
            continue
        undefined = raw.length == _UNDEFINED_LENGTH
        length = _encapsulated_length(file, raw.value_tell) if undefined else raw.length
        element = DataElement(tag, vr, ValueWindow(file, raw.value_tell, length), is_undefined_length=undefined)
        dataset[tag] = element
        replaced += 1
    return replaced


def _bufferable_vr(dataset: Dataset, raw: RawDataElement) -> str | None:
    """The VR to write the value with (an implicit VR source's from the dictionary, as pydicom
    would take it), or None to leave it deferred."""
    try:
        vr = str(raw.VR or dictionary_VR(raw.tag))
    except KeyError:  # private or unknown, in implicit VR: UN
        return None
    if vr == VR.OB_OW:  # Pixel Data and friends: OW unless 8-bit (PS3.5 8.2)
        vr = VR.OW if int(dataset.get("BitsAllocated") or 8) > 8 else VR.OB
    return vr if vr in BUFFERABLE_VRS else None


def _encapsulated_length(file: BinaryIO, offset: int) -> int:
    """Bytes of encapsulated items from `offset` up to (not including) the sequence delimiter
    (the writer writes that itself), found by hopping over item headers (little endian: PS3.5
    A.4 forbids encapsulated big endian)."""
    position = offset
    while True:
        file.seek(position)
        header = file.read(8)
        if len(header) < 8:
            raise ValueError(f"encapsulated value at offset {offset} has no sequence delimiter")
        tag, length = struct.unpack("<II", header)
        if tag == _SEQUENCE_DELIMITER:
            return position - offset
        if tag != _ITEM or length == _UNDEFINED_LENGTH:
            raise ValueError(f"unexpected tag ({tag & 0xFFFF:04X},{tag >> 16:04X}) in encapsulated value at offset {position}")
        position += 8 + length
