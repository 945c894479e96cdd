"""The DICOM Part-10 file format, read and written without decoding the data set.

The adapter must keep every byte of the data set a sender sent (DESIGN invariant 2), so it
never lets pydicom re-encode one: it writes a fresh file meta header in front of the received
bytes, and it checks a received data set by walking its element headers only (seeking over
values), which also finds the UIDs the pipeline needs. pydicom's reader cannot do this walk
with bounded memory: it reads undefined-length sequences and encapsulated pixel data whole.
"""

from __future__ import annotations

import hashlib
import re
import struct
import zlib
from dataclasses import dataclass
from typing import BinaryIO, Iterable

from pydicom.uid import PYDICOM_IMPLEMENTATION_UID

PREAMBLE = b"\x00" * 128 + b"DICM"
IMPLEMENTATION_VERSION_NAME = "DICOM_ADAPTER_01"

IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
EXPLICIT_VR_BIG_ENDIAN = "1.2.840.10008.1.2.2"
# Transfer syntaxes whose whole data set is a raw deflate stream (PS3.5 A.5).
DEFLATED_TRANSFER_SYNTAXES = frozenset(
    {"1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.4.95"}
)

# Explicit VRs with a 2-byte reserved field and a 4-byte length (PS3.5 7.1.2).
_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
_UNDEFINED = 0xFFFFFFFF
_ITEM = (0xFFFE, 0xE000)
_ITEM_END = (0xFFFE, 0xE00D)
_SEQUENCE_END = (0xFFFE, 0xE0DD)

_SOP_CLASS_UID = (0x0008, 0x0016)
_SOP_INSTANCE_UID = (0x0008, 0x0018)
_STUDY_INSTANCE_UID = (0x0020, 0x000D)
_SERIES_INSTANCE_UID = (0x0020, 0x000E)
_WANTED_UIDS = {
    _SOP_CLASS_UID: "sop_class_uid",
    _SOP_INSTANCE_UID: "sop_instance_uid",
    _STUDY_INSTANCE_UID: "study_instance_uid",
    _SERIES_INSTANCE_UID: "series_instance_uid",
}


class MalformedDataset(ValueError):
    """The bytes are not a complete, well-formed DICOM data set; the message says where."""


class TruncatedDataset(MalformedDataset):
    """The data set stops before its encoding does: cut short, or still being written."""


_UID = re.compile(r"[0-9]+(\.[0-9]+)*")


def is_valid_uid(uid: str) -> bool:
    """A UID that may name a file and go into a DICOMweb URL: digits and dots, at most 64."""
    return 0 < len(uid) <= 64 and _UID.fullmatch(uid) is not None


@dataclass(frozen=True)
class DatasetSummary:
    """What the pipeline needs to know about a data set, read from its top-level elements."""

    sop_class_uid: str = ""
    sop_instance_uid: str = ""
    study_instance_uid: str = ""
    series_instance_uid: str = ""


@dataclass(frozen=True)
class FileMeta:
    """The group-0002 header of a Part-10 file and where its data set starts."""

    transfer_syntax_uid: str
    sop_class_uid: str
    sop_instance_uid: str
    source_aet: str
    sending_aet: str
    receiving_aet: str
    dataset_offset: int


def encode_file_meta(
    *,
    sop_class_uid: str,
    sop_instance_uid: str,
    transfer_syntax_uid: str,
    calling_aet: str,
    called_aet: str,
) -> bytes:
    """Return preamble, 'DICM' and the file meta group for a received instance.

    SourceApplicationEntityTitle and SendingApplicationEntityTitle are the calling AE (the
    system that sent the instance), ReceivingApplicationEntityTitle the called AE. Encoded
    here rather than with pydicom's write_file_meta_info because this runs for every C-STORE
    before the ack, and the fixed layout costs a twentieth of the time (tests read it back
    with pydicom).
    """
    elements = [
        _meta_element(0x0001, b"OB", b"\x00\x01"),
        _meta_element(0x0002, b"UI", _uid_value(sop_class_uid)),
        _meta_element(0x0003, b"UI", _uid_value(sop_instance_uid)),
        _meta_element(0x0010, b"UI", _uid_value(transfer_syntax_uid)),
        _meta_element(0x0012, b"UI", _uid_value(PYDICOM_IMPLEMENTATION_UID)),
        _meta_element(0x0013, b"SH", _text_value(IMPLEMENTATION_VERSION_NAME)),
    ]
    if calling_aet:
        elements.append(_meta_element(0x0016, b"AE", _text_value(calling_aet)))
        elements.append(_meta_element(0x0017, b"AE", _text_value(calling_aet)))
    if called_aet:
        elements.append(_meta_element(0x0018, b"AE", _text_value(called_aet)))
    body = b"".join(elements)
    return PREAMBLE + _meta_element(0x0000, b"UL", struct.pack("<L", len(body))) + body


def _meta_element(element: int, vr: bytes, value: bytes) -> bytes:
    if vr in _LONG_VRS:
        return struct.pack("<HH2s2xL", 0x0002, element, vr, len(value)) + value
    return struct.pack("<HH2sH", 0x0002, element, vr, len(value)) + value


def _uid_value(uid: str) -> bytes:
    # A non-ASCII UID is invalid; it is refused by the C-STORE checks, but the meta stays writable.
    value = uid.encode("ascii", "replace")
    return value + b"\x00" if len(value) % 2 else value


def _text_value(text: str) -> bytes:
    value = text.strip().encode("ascii", "replace")
    return value + b" " if len(value) % 2 else value


def read_file_meta(fp: BinaryIO) -> FileMeta:
    """Read the file meta of a Part-10 file positioned at its start.

    Raises MalformedDataset when there is no preamble, no 'DICM' or no transfer syntax.
    """
    head = fp.read(132)
    if len(head) < 132 or head[128:132] != b"DICM":
        raise MalformedDataset("not a DICOM Part-10 file: no 'DICM' prefix at byte 128")
    values: dict[tuple[int, int], bytes] = {}
    offset = 132
    while True:
        header = fp.read(8)
        if len(header) < 8:
            break
        group, element = struct.unpack("<HH", header[:4])
        if group != 0x0002:
            break
        vr = header[4:6]
        if vr in _LONG_VRS:
            length = struct.unpack("<L", _read_exact(fp, 4, "file meta"))[0]
            header_length = 12
        else:
            length = struct.unpack("<H", header[6:8])[0]
            header_length = 8
        if length == _UNDEFINED:
            raise MalformedDataset(f"file meta element ({group:04X},{element:04X}) has undefined length")
        values[(group, element)] = _read_exact(fp, length, "file meta")
        offset += header_length + length
    fp.seek(offset)

    def text(element: int) -> str:
        return values.get((0x0002, element), b"").rstrip(b"\x00 ").decode("ascii", "replace").strip()

    transfer_syntax = text(0x0010)
    if not transfer_syntax:
        raise MalformedDataset("file meta has no TransferSyntaxUID (0002,0010)")
    return FileMeta(
        transfer_syntax_uid=transfer_syntax,
        sop_class_uid=text(0x0002),
        sop_instance_uid=text(0x0003),
        source_aet=text(0x0016),
        sending_aet=text(0x0017),
        receiving_aet=text(0x0018),
        dataset_offset=offset,
    )


def summarize_dataset(fp: BinaryIO, offset: int, size: int, transfer_syntax_uid: str) -> DatasetSummary:
    """Check that the data set from `offset` to `size` is complete; return its top-level UIDs.

    Walks element headers and seeks over values, so memory stays small for any size. Raises
    MalformedDataset naming the element and offset where the encoding breaks.
    """
    fp.seek(offset)
    if transfer_syntax_uid in DEFLATED_TRANSFER_SYNTAXES:
        reader: _Reader = _InflatingReader(fp)
    else:
        reader = _FileReader(fp, offset, size)
    walker = _Walker(
        reader,
        implicit=transfer_syntax_uid == IMPLICIT_VR_LITTLE_ENDIAN,
        little=transfer_syntax_uid != EXPLICIT_VR_BIG_ENDIAN,
    )
    found = walker.walk_top_level()
    return DatasetSummary(**found)


class DatasetDigester:
    """SHA-256 of a Part-10 file's data set (the bytes after its file meta), fed in pieces.

    Two stores may write different file meta for the same instance; the data set is what must
    be identical (DESIGN invariant 2), so that is what duplicates are compared by.
    """

    def __init__(self) -> None:
        self._head = bytearray()
        self._skip: int | None = None
        self._digest = hashlib.sha256()

    def feed(self, data: bytes) -> None:
        if self._skip is None:
            self._head += data
            if len(self._head) < 144:
                return
            # Preamble (128) + 'DICM' + the (0002,0000) UL element header (8) + its value (4).
            if self._head[128:132] != b"DICM" or self._head[132:136] != b"\x02\x00\x00\x00":
                raise MalformedDataset("not a Part-10 file starting with (0002,0000) group length")
            self._skip = 144 + int.from_bytes(self._head[140:144], "little")
            data, self._head = bytes(self._head), bytearray()
        if self._skip:
            cut = min(self._skip, len(data))
            self._skip -= cut
            data = data[cut:]
        self._digest.update(data)

    def hexdigest(self) -> str:
        return self._digest.hexdigest()

    @classmethod
    def of_chunks(cls, chunks: Iterable[bytes]) -> str:
        digester = cls()
        for chunk in chunks:
            digester.feed(chunk)
        return digester.hexdigest()


def _read_exact(fp: BinaryIO, n: int, what: str) -> bytes:
    data = fp.read(n)
    if len(data) != n:
        raise TruncatedDataset(f"{what} ends early: wanted {n} bytes, got {len(data)}")
    return data


class _Reader:
    """Sequential access to a data set's bytes: read small headers, skip over values."""

    position: int = 0

    def read(self, n: int) -> bytes:
        raise NotImplementedError

    def skip(self, n: int) -> None:
        raise NotImplementedError

    def at_end(self) -> bool:
        raise NotImplementedError


class _FileReader(_Reader):
    def __init__(self, fp: BinaryIO, offset: int, size: int) -> None:
        self._fp = fp
        self._end = size
        self.position = offset

    def read(self, n: int) -> bytes:
        if self.position + n > self._end:
            raise TruncatedDataset(
                f"data set ends early at byte {self._end}: wanted {n} more bytes at {self.position}"
            )
        data = self._fp.read(n)
        if len(data) != n:
            raise TruncatedDataset(f"data set ends early at byte {self.position + len(data)}")
        self.position += n
        return data

    def skip(self, n: int) -> None:
        if self.position + n > self._end:
            raise TruncatedDataset(
                f"a value of {n} bytes at byte {self.position} runs past the end of the data set "
                f"({self._end - self.position} bytes left)"
            )
        self.position += n
        self._fp.seek(self.position)

    def at_end(self) -> bool:
        return self.position >= self._end


class _InflatingReader(_Reader):
    """Reads a raw deflate stream (Deflated Explicit VR Little Endian) chunk by chunk."""

    def __init__(self, fp: BinaryIO) -> None:
        self._fp = fp
        self._inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        self._buffer = bytearray()
        self._eof = False

    def _fill(self, n: int) -> None:
        while len(self._buffer) < n and not self._eof:
            chunk = self._fp.read(1 << 16)
            try:
                if chunk:
                    self._buffer += self._inflater.decompress(chunk, 1 << 20)
                    while self._inflater.unconsumed_tail and len(self._buffer) < n:
                        self._buffer += self._inflater.decompress(self._inflater.unconsumed_tail, 1 << 20)
                else:
                    self._buffer += self._inflater.flush()
                    self._eof = True
            except zlib.error as exc:
                raise MalformedDataset(f"deflated data set is corrupt: {exc}") from None

    def read(self, n: int) -> bytes:
        self._fill(n)
        if len(self._buffer) < n:
            raise TruncatedDataset(f"deflated data set ends early after {self.position + len(self._buffer)} bytes")
        data = bytes(self._buffer[:n])
        del self._buffer[:n]
        self.position += n
        return data

    def skip(self, n: int) -> None:
        while n > 0:
            step = min(n, 1 << 20)
            self.read(step)
            n -= step

    def at_end(self) -> bool:
        self._fill(1)
        if self._buffer:
            return False
        if not self._inflater.eof:
            raise TruncatedDataset("deflated data set ends before its deflate stream does")
        return True


_IMPLICIT_LITTLE = struct.Struct("<HHL")  # Implicit VR is always Little Endian (PS3.5 A.1)


class _Walker:
    """Walks element headers of a data set (PS3.5 section 7), never reading large values."""

    def __init__(self, reader: _Reader, *, implicit: bool, little: bool) -> None:
        self._reader = reader
        self._implicit = implicit
        endian = "<" if little else ">"
        # Compiled once per walk: a format string per element showed in the per-C-STORE cost.
        self._tag_and_length = struct.Struct(endian + "HHL")  # items and delimiters
        self._explicit = struct.Struct(endian + "HH2sH")
        self._long_length = struct.Struct(endian + "L")
        self._depth = 0

    def walk_top_level(self) -> dict[str, str]:
        found: dict[str, str] = {}
        reader = self._reader
        while not reader.at_end():
            tag, vr, length = self._read_header(self._implicit)
            if tag in _WANTED_UIDS and length != _UNDEFINED and length <= 64:
                found[_WANTED_UIDS[tag]] = reader.read(length).rstrip(b"\x00 ").decode("ascii", "replace")
                continue
            self._walk_value(tag, vr, length, self._implicit)
        return found

    def _read_header(self, implicit: bool) -> tuple[tuple[int, int], bytes, int]:
        raw = self._reader.read(8)
        if implicit:  # items and delimiters included, also inside a Big Endian data set's UN
            group, element, length = _IMPLICIT_LITTLE.unpack(raw)
            return (group, element), b"", length
        group, element, vr, short_length = self._explicit.unpack(raw)
        if group == 0xFFFE:  # item and delimiter tags carry no VR in any encoding
            return (group, element), b"", self._tag_and_length.unpack(raw)[2]
        if vr in _LONG_VRS:
            return (group, element), vr, self._long_length.unpack(self._reader.read(4))[0]
        if not (65 <= vr[0] <= 90 and 65 <= vr[1] <= 90):
            raise MalformedDataset(
                f"element ({group:04X},{element:04X}) at byte {self._reader.position - 8} has no valid VR ({vr!r})"
            )
        return (group, element), vr, short_length

    def _walk_value(self, tag: tuple[int, int], vr: bytes, length: int, implicit: bool) -> None:
        if tag[0] == 0xFFFE:
            raise MalformedDataset(
                f"unexpected item tag ({tag[0]:04X},{tag[1]:04X}) at byte {self._reader.position - 8}"
            )
        if length != _UNDEFINED:
            self._reader.skip(length)
            return
        if not implicit and vr not in (b"SQ", b"UN", b"OB", b"OW"):
            raise MalformedDataset(
                f"element ({tag[0]:04X},{tag[1]:04X}) with VR {vr.decode('ascii', 'replace')} "
                "has undefined length"
            )
        # An undefined-length UN holds a sequence encoded in Implicit VR Little Endian, whatever the
        # data set's byte order (PS3.5 6.2.2 and its note; DCMTK reads it so).
        self._walk_items(implicit or vr == b"UN")

    def _walk_items(self, implicit: bool) -> None:
        self._depth += 1
        if self._depth > 64:
            raise MalformedDataset("sequences nested deeper than 64 levels")
        while True:
            tag, _, length = self._read_header(implicit)
            if tag == _SEQUENCE_END:
                break
            if tag != _ITEM:
                raise MalformedDataset(
                    f"expected an item or sequence delimiter at byte {self._reader.position - 8}, "
                    f"found ({tag[0]:04X},{tag[1]:04X})"
                )
            if length != _UNDEFINED:
                self._reader.skip(length)
                continue
            self._walk_item_dataset(implicit)
        self._depth -= 1

    def _walk_item_dataset(self, implicit: bool) -> None:
        while True:
            tag, vr, length = self._read_header(implicit)
            if tag == _ITEM_END:
                return
            self._walk_value(tag, vr, length, implicit)
