"""Reading a DICOM whole-slide instance file through byte ranges.

idcfs serves frames straight from DICOM files in cloud buckets with HTTP range requests.
This module is the transport-independent part: given `read(start, length) -> bytes` (at
most `length` bytes, fewer only at the end of the file) and the file's size, it finds the
instance's header (`read_header`) and where every frame's bytes are (`frame_index`), in
a handful of reads, never one per frame.

Where the frames are, in the order wsidicom looks (the first that is present wins):
1. native (uncompressed) pixel data: frame i at the value start + i * frame length;
2. the Extended Offset Table (7FE0,0001/0002), in the header;
3. the Basic Offset Table, the first item of the encapsulated pixel data, when not empty;
4. the TIFF tags of a dual-personality DICOM-TIFF file (IDC's TCGA, CPTAC, NLST... files:
   a (Big)TIFF header in the preamble, one IFD after the pixel data whose TileOffsets
   point at each frame's first byte and whose TileByteCounts exclude DICOM's pad byte);
   tiles that are not exactly the fragments, one per frame in frame order (checked from
   the offsets and counts, plus the item headers of the first and last tile), make it
   fall back to 5, which is always right, only slower;
5. a scan of the fragment item headers (FE FF 00 E0 + 4-byte length), reading the pixel
   data in large sequential ranges (`SCAN_RANGE`) and skipping over fragments larger
   than that. With more fragments than frames, a frame starts at each fragment whose
   content begins with a start-of-image marker: JPEG / JPEG-LS SOI (FF D8), a JPEG 2000
   codestream (FF 4F FF 51) or the JP2 signature box; a single-frame instance takes
   every fragment.

A frame made of several fragments is returned as the concatenation of their contents.
A `FramePosition` gives the one contiguous byte run `[start, end)` to fetch for a frame
(consecutive frames are adjacent runs, so a caller can fetch many in one range) and
`frame_bytes` takes the frame out of the fetched bytes. With a Basic Offset Table only
the frame starts are known without reading every item header, so those positions carry
no fragment list and `frame_bytes` walks the item headers inside the run.

Pad byte: DICOM pads an odd-length frame with one 0x00 after EOI. Contents taken from
items (offset tables, scan) keep it, TIFF byte counts exclude it; `strip_jpeg_padding`
removes it when a served JPEG must end at its EOI.

Malformed headers raise `MetadataError`; frames that cannot be located (or runs that do
not hold what the index says) raise `FetchError`. Nothing else is raised on bad input.
"""

from __future__ import annotations

import base64
import io
import logging
import struct
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pydicom
from pydicom.charset import convert_encodings, default_encoding
from pydicom.dataelem import DataElement, RawDataElement, convert_raw_data_element
from pydicom.dataset import Dataset
from pydicom.encaps import parse_basic_offsets
from pydicom.errors import BytesLengthException
from pydicom.filereader import data_element_generator
from pydicom.jsonrep import convert_to_python_number
from pydicom.tag import ItemDelimiterTag, ItemTag, SequenceDelimiterTag
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
    PrivateTransferSyntaxes,
)
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32, PersonName
from pydicom.values import convert_value, converters

from idcfs.dicom.frames import strip_jpeg_padding
from idcfs.dicom.pixels import PixelFormat
from idcfs.errors import FetchError, IdcfsError, MetadataError

log = logging.getLogger(__name__)

__all__ = ["strip_jpeg_padding"]  # the pad rule, re-exported for callers of this module

Read = Callable[[int, int], bytes]
"""`read(start, length)`: at most `length` bytes from `start`; fewer only at end of file."""

# The first read of a header. IDC's headers are a few KB, up to tens with an ICC
# profile; reading more costs time for bytes thrown away (the frame index reads its own
# ranges): four headers entering a series through rclone, 256 KiB each took ~6 ms more
# than 64 KiB at an RTT of 0 and of 20 ms, while 16 KiB saved only ~1-2 ms more and
# would send a second round trip for every mid-sized ICC profile. A longer header
# costs one more read when its long elements have defined lengths (`read_header`).
FIRST_RANGE = 64 * 1024
MAX_HEADER = 64 * 1024 * 1024
NEAR_RANGE = 64 * 1024
SCAN_RANGE = 4 * 1024 * 1024
BULK_THRESHOLD = 1024
PREAMBLE_BYTES = 16

PIXEL_DATA = 0x7FE00010
EXTENDED_OFFSETS = 0x7FE00001
EXTENDED_LENGTHS = 0x7FE00002
ITEM = b"\xfe\xff\x00\xe0"
ITEM_DELIMITER = b"\xfe\xff\x0d\xe0"
SEQUENCE_DELIMITER = b"\xfe\xff\xdd\xe0"
UNDEFINED_LENGTH = 0xFFFFFFFF
IMAGE_STARTS = (b"\xff\xd8", b"\xff\x4f\xff\x51", b"\x00\x00\x00\x0cjP  ")
_DROPPED = "idcfs:dropped-bulk-data"
_MAGIC = b"IDCFSFX2"
HEAD_BYTES = 4096  # of the first frame, kept with the index: its JPEG header, for sizes
METHODS = ("native", "eot", "bot", "tiff", "scan")
"""How a `FrameIndex` was built, in the order they are tried."""
_NO_FRAGMENTS = 0xFFFFFFFF
_PLANE_POSITION = {"0048021A": {"0048021E": None, "0048021F": None, "0040074A": None}}
_GROUP_ITEMS = {**_PLANE_POSITION, "00480207": {"00480106": None},  # optical path
                "00289110": {"00180088": None, "00280030": None},  # pixel measures
                "00289132": {"00281050": None, "00281051": None}}  # frame VOI LUT
HEADER_TAGS: dict[str, Any] = {
    # the slide model: idcfs.slide.parse, idcfs.dicom.pixels, idcfs.dicom.times
    # (00020010 is the file meta's, added to every header)
    **dict.fromkeys((
        "00020010", "00080005", "00080008", "00080016", "00080018", "00080020", "00080021",
        "00080023", "00080030", "00080031", "00080033", "00080201", "00083002", "0008103E",
        "00100020", "00209228", "00209311", "00280002", "00280004", "00280006", "00280008",
        "00280010", "00280011", "00280100", "00280101", "00280103", "00281050", "00281051",
        "00400512", "00480001", "00480002", "00480006", "00480007", "00480302", "00480303")),
    "52009229": _GROUP_ITEMS, "52009230": _GROUP_ITEMS,  # shared, per-frame groups
    "00480105": {"00480106": None}, "00480008": {"0040074A": None},  # paths, origin
    # the tree of --files (idcfs.source.folder) and the series check of idcfs.source.files
    **dict.fromkeys(("0020000D", "0020000E", "00081030", "00200011", "00080070", "00081090")),
}
"""The attributes a file header's DICOM JSON keeps, with the items of its sequences cut
to theirs (None: the whole value): what idcfs reads of an instance, and nothing else,
since pydicom's conversion costs about 60 us an element (tests/unit/test_header_tags.py
fails when a reader asks for another). 00080005 decodes the strings."""


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class FileHeader:
    """What the header of one instance file says, up to the Pixel Data value.

    `dicom_json` is the dataset as DICOM JSON (file meta TransferSyntaxUID included as
    "00020010"; large binary values such as ICC profiles and the offset tables left
    out), so the slide model reads it as it reads DICOMweb metadata.
    """

    dicom_json: dict[str, Any]
    transfer_syntax: str
    pixel_data_offset: int
    pixel_data_length: int | None
    encapsulated: bool
    frame_count: int
    extended_offsets: tuple[int, ...] | None
    extended_lengths: tuple[int, ...] | None
    preamble: bytes
    size: int

    def to_json(self) -> dict[str, Any]:
        """A JSON-able form for a disk cache (`from_json` is its inverse)."""
        return {
            "dicom": self.dicom_json, "transfer_syntax": self.transfer_syntax,
            "pixel_data_offset": self.pixel_data_offset,
            "pixel_data_length": self.pixel_data_length, "encapsulated": self.encapsulated,
            "frame_count": self.frame_count,
            "extended_offsets": _listed(self.extended_offsets),
            "extended_lengths": _listed(self.extended_lengths),
            "preamble": self.preamble.hex(), "size": self.size,
        }

    @classmethod
    def from_json(cls, value: Any) -> FileHeader:
        """Inverse of `to_json`; MetadataError when `value` is not of that shape."""
        try:
            return cls(
                dict(value["dicom"]), str(value["transfer_syntax"]),
                int(value["pixel_data_offset"]), _optional_int(value["pixel_data_length"]),
                bool(value["encapsulated"]), int(value["frame_count"]),
                _tupled(value["extended_offsets"]), _tupled(value["extended_lengths"]),
                bytes.fromhex(value["preamble"]), int(value["size"]),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise MetadataError(f"not a cached file header: {error}") from error


@dataclass(frozen=True)
class FramePosition:
    """Where one frame is: the byte run `[start, end)` to fetch, and the (offset, length)
    of each fragment content inside it, or None when only the run is known (Basic Offset
    Table: `frame_bytes` then walks the item headers inside the run)."""

    start: int
    end: int
    fragments: tuple[tuple[int, int], ...] | None

    @property
    def length(self) -> int:
        return self.end - self.start

    @property
    def content_bound(self) -> int:
        """The frame's stored length: exact when its fragments are known (EOT lengths,
        TIFF byte counts, a scan), else its run less one item header (pad included)."""
        if self.fragments is not None:
            return sum(length for _, length in self.fragments)
        return max(0, self.length - 8)

    @property
    def content_start(self) -> int:
        return self.fragments[0][0] if self.fragments else self.start + 8


@dataclass(frozen=True)
class FrameIndex(Sequence[FramePosition]):
    """Every frame's position, in frame order, and how it was found (`METHODS`)."""

    method: str
    positions: tuple[FramePosition, ...]
    # the first frame's first bytes (up to HEAD_BYTES) when read on the way; what was
    # read depends on the read sizes, so it is not part of what the index says
    first_head: bytes = field(default=b"", compare=False)

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, index: Any) -> Any:
        return self.positions[index]

    def to_bytes(self) -> bytes:
        """A compact form for a disk cache (zlib of fixed-size records)."""
        out = bytearray(struct.pack("<BI", METHODS.index(self.method), len(self.positions)))
        out += struct.pack("<H", len(self.first_head)) + self.first_head
        for position in self.positions:
            fragments = position.fragments
            count = _NO_FRAGMENTS if fragments is None else len(fragments)
            out += struct.pack("<QQI", position.start, position.end, count)
            for offset, length in fragments or ():
                out += struct.pack("<QQ", offset, length)
        return _MAGIC + zlib.compress(bytes(out))

    @classmethod
    def from_bytes(cls, data: bytes) -> FrameIndex:
        """Inverse of `to_bytes`; FetchError when the data is damaged."""
        if not data.startswith(_MAGIC):
            raise FetchError("cached frame index: not a frame index")
        try:
            return _unpack_index(zlib.decompress(data[len(_MAGIC):]))
        except (zlib.error, struct.error, IndexError) as error:
            raise FetchError(f"cached frame index is damaged: {error}") from error



def _unpack_index(raw: bytes) -> FrameIndex:
    method, count = struct.unpack_from("<BI", raw)
    head_length = struct.unpack_from("<H", raw, 5)[0]
    first_head = raw[7 : 7 + head_length]
    position, offset = [], 7 + head_length
    for _ in range(count):
        start, end, fragment_count = struct.unpack_from("<QQI", raw, offset)
        offset += 20
        fragments = None
        if fragment_count != _NO_FRAGMENTS:
            fragments = tuple(struct.unpack_from("<QQ", raw, offset + 16 * i)
                              for i in range(fragment_count))
            offset += 16 * fragment_count
        position.append(FramePosition(start, end, fragments))
    if offset != len(raw):
        raise IndexError("trailing bytes")
    return FrameIndex(METHODS[method], tuple(position), first_head)


# --------------------------------------------------------------------------- helpers


def frame_bytes(run: bytes, run_start: int, position: FramePosition) -> bytes:
    """The frame's bytes (its fragment contents joined) out of a fetched byte run that
    starts at file offset `run_start` and covers `[position.start, position.end)`."""
    low, high = position.start - run_start, position.end - run_start
    if low < 0 or high > len(run):
        raise FetchError(f"bytes {run_start}-{run_start + len(run)} do not hold the frame "
                         f"at {position.start}-{position.end}")
    if position.fragments is not None:
        return b"".join(run[o - run_start : o - run_start + n] for o, n in position.fragments)
    return b"".join(_item_contents(run, low, high, run_start))


def _item_contents(run: bytes, low: int, high: int, run_start: int) -> Iterator[bytes]:
    """Contents of the items exactly filling run[low:high]; FetchError otherwise."""
    cursor = low
    while cursor < high:
        header = run[cursor : cursor + 8]
        if len(header) < 8 or header[:4] != ITEM:
            raise FetchError(f"no fragment item at file offset {run_start + cursor}")
        length = int.from_bytes(header[4:], "little")
        if cursor + 8 + length > high:
            raise FetchError(f"fragment at file offset {run_start + cursor} runs past its frame")
        yield run[cursor + 8 : cursor + 8 + length]
        cursor += 8 + length


class _RangeReader:
    """`read` with a few recent ranges kept, so that nearby small reads cost nothing;
    counts the reads made. Every answer is exactly the bytes asked, or FetchError."""

    def __init__(self, read: Read, size: int, keep: int = 3) -> None:
        self._read, self.size, self._keep = read, size, keep
        self._chunks: list[tuple[int, bytes]] = []
        self.reads = 0

    def held(self, offset: int, length: int) -> bytes:
        """Up to `length` bytes at `offset` from the ranges kept, without a read."""
        for start, data in self._chunks:
            if start <= offset < start + len(data):
                return data[offset - start : offset - start + length]
        return b""

    def get(self, offset: int, length: int, readahead: int = NEAR_RANGE) -> bytes:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise FetchError(f"bytes {offset}-{offset + length} lie outside the file "
                             f"({self.size} bytes)")
        for start, data in self._chunks:
            if start <= offset and offset + length <= start + len(data):
                return data[offset - start : offset - start + length]
        data = _read_exactly(self._read, offset, min(max(length, readahead), self.size - offset))
        self.reads += 1
        self._chunks = [(offset, data), *self._chunks[: self._keep - 1]]
        return data[:length]


def _read_exactly(read: Read, offset: int, length: int) -> bytes:
    try:
        data = bytes(read(offset, length))
    except IdcfsError:
        raise
    except OSError as error:
        raise FetchError(f"reading bytes {offset}-{offset + length}: {error}") from error
    if len(data) != length:
        raise FetchError(f"reading bytes {offset}-{offset + length}: got {len(data)} bytes "
                         "(the file is shorter than its size says)")
    return data


# --------------------------------------------------------------------------- header


def read_header(read: Read, size: int, first_range: int = FIRST_RANGE, *,
                max_header: int = MAX_HEADER) -> FileHeader:
    """The instance's header, parsed by pydicom from the first `first_range` bytes.

    While the Pixel Data element is not in the bytes read, more are read (only the new
    part), up to `max_header` bytes (TILED_SPARSE per-frame groups or an ICC profile can
    make headers of many megabytes): at least twice as many, and at least up to where
    the elements read so far say the header reaches (`_header_reach`), so a long
    element of defined length costs one more read, not a doubling per power of two.
    Each buffer is read by `_walked_header` first, then, when it is unsure, by
    pydicom's `dcmread` (which decides the errors). MetadataError when it is not a WSI
    Part 10 file."""
    if size < 132:
        raise MetadataError(f"a {size}-byte file is too short for a DICOM Part 10 file")
    buffer = b""
    length = min(size, max(first_range, 132))
    while True:
        buffer += _read_exactly(read, len(buffer), length - len(buffer))
        header = _walked_header(buffer, size)
        if header is not None:
            return header
        found = _parse_up_to_pixels(buffer, complete=length >= size)
        if found is not None:
            return _header(buffer, size, *found)
        if length >= min(size, max_header):
            raise MetadataError(f"no Pixel Data element in the first {length} bytes")
        length = min(size, max(length * 2, _header_reach(buffer) + NEAR_RANGE), max_header)


def _header_reach(buffer: bytes) -> int:
    """How far the header reaches at least, from the lengths of the elements that
    start in `buffer` (which ends before the Pixel Data): pydicom reads it again leaving
    out (deferring) the values of large elements, so one of defined length that runs
    past the end (an ICC profile, per-frame groups) puts the stream at its end. 0 when
    that tells nothing (the end cuts a sequence of undefined length: its end is
    unknown until read)."""
    stream = io.BytesIO(buffer)
    try:
        pydicom.dcmread(stream, stop_before_pixels=True, defer_size=BULK_THRESHOLD)
    except Exception:  # pydicom raises many types on a cut header
        return 0
    return stream.tell()


def _parse_up_to_pixels(buffer: bytes, complete: bool) -> tuple[Any, int] | None:
    """(dataset, offset of the Pixel Data tag), or None when `buffer` ends before it."""
    if buffer[128:132] != b"DICM":
        raise MetadataError("not a DICOM Part 10 file: no 'DICM' at byte 128")
    stream = io.BytesIO(buffer)
    try:
        dataset = pydicom.dcmread(stream, stop_before_pixels=True, specific_tags=_READ_TAGS)
    except Exception as error:  # pydicom raises many types on a cut or damaged header
        if complete:
            raise MetadataError(f"unreadable DICOM header: {error}") from error
        return None
    tag_at = stream.tell()
    if tag_at + 12 > len(buffer):
        if complete:
            raise MetadataError("the file ends before its Pixel Data element")
        return None
    return dataset, tag_at


def _header(buffer: bytes, size: int, dataset: Any, tag_at: int) -> FileHeader:
    syntax = _transfer_syntax(dataset)
    value_at, length = _pixel_value(buffer, size, syntax, tag_at)
    offsets, lengths = _extended_offsets(dataset)
    return _file_header(buffer, size, syntax, value_at, length, _dicom_json(dataset, syntax),
                        _frame_count(dataset), offsets, lengths)


def _pixel_value(buffer: bytes, size: int, syntax: UID, tag_at: int) -> tuple[int, int]:
    """(offset, length) of the Pixel Data value whose tag is at `tag_at`, checked."""
    endian = "<" if syntax.is_little_endian else ">"
    group, element = struct.unpack_from(f"{endian}HH", buffer, tag_at)
    if (group << 16 | element) != PIXEL_DATA:
        raise MetadataError(f"the dataset has no Pixel Data (found ({group:04X},{element:04X}))")
    value_at, length = _pixel_element(buffer, tag_at, syntax, endian)
    encapsulated = length == UNDEFINED_LENGTH
    if encapsulated != syntax.is_encapsulated:
        raise MetadataError(f"Pixel Data of {'un' if encapsulated else ''}defined length "
                            f"does not match transfer syntax {syntax}")
    if value_at + (0 if encapsulated else length) > size:
        raise MetadataError("the Pixel Data value runs past the end of the file")
    return value_at, length


def _file_header(buffer: bytes, size: int, syntax: UID, value_at: int, length: int,
                 dicom_json: dict[str, Any], frame_count: int,
                 offsets: tuple[int, ...] | None, lengths: tuple[int, ...] | None
                 ) -> FileHeader:
    encapsulated = length == UNDEFINED_LENGTH
    return FileHeader(
        dicom_json=dicom_json,
        transfer_syntax=str(syntax),
        pixel_data_offset=value_at,
        pixel_data_length=None if encapsulated else length,
        encapsulated=encapsulated,
        frame_count=frame_count,
        extended_offsets=offsets,
        extended_lengths=lengths,
        preamble=buffer[:PREAMBLE_BYTES],
        size=size,
    )


def _transfer_syntax(dataset: Any) -> UID:
    syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)
    if not syntax:
        raise MetadataError("the file meta has no TransferSyntaxUID")
    syntax = UID(str(syntax))
    if not syntax.is_transfer_syntax or syntax.is_deflated:  # is_deflated raises on others
        raise MetadataError(f"transfer syntax {syntax} cannot be read by byte ranges")
    return syntax


def _pixel_element(buffer: bytes, tag_at: int, syntax: UID, endian: str) -> tuple[int, int]:
    """(offset of the value, its length) from the Pixel Data element header."""
    if syntax.is_implicit_VR:
        return tag_at + 8, struct.unpack_from(f"{endian}L", buffer, tag_at + 4)[0]
    vr = buffer[tag_at + 4 : tag_at + 6]
    if vr not in (b"OB", b"OW"):
        raise MetadataError(f"Pixel Data has VR {vr!r}, not OB or OW")
    return tag_at + 12, struct.unpack_from(f"{endian}L", buffer, tag_at + 8)[0]


def _extended_offsets(dataset: Any) -> tuple[tuple[int, ...] | None, tuple[int, ...] | None]:
    if EXTENDED_OFFSETS not in dataset:
        return None, None
    table = _uint64s(dataset[EXTENDED_OFFSETS].value, "Extended Offset Table")
    if EXTENDED_LENGTHS not in dataset:
        return table, None
    return table, _table_lengths(table, dataset[EXTENDED_LENGTHS].value)


def _table_lengths(table: tuple[int, ...], value: Any) -> tuple[int, ...]:
    lengths = _uint64s(value, "Extended Offset Table Lengths")
    if len(lengths) != len(table):
        raise MetadataError(f"Extended Offset Table has {len(table)} offsets "
                            f"but {len(lengths)} lengths")
    return lengths


def _uint64s(value: Any, what: str) -> tuple[int, ...]:
    data = bytes(value or b"")
    if len(data) % 8:
        raise MetadataError(f"{what} is {len(data)} bytes, not a multiple of 8")
    return struct.unpack(f"<{len(data) // 8}Q", data)


def _frame_count(dataset: Any) -> int:
    return _checked_frame_count(dataset.get("NumberOfFrames", 1))


def _checked_frame_count(value: Any) -> int:
    try:
        count = int(value or 1)
    except (TypeError, ValueError) as error:
        raise MetadataError(f"unreadable NumberOfFrames: {error}") from error
    if count < 1:
        raise MetadataError(f"NumberOfFrames is {count}")
    return count


def _dicom_json(dataset: Any, syntax: UID) -> dict[str, Any]:
    """DICOM JSON of the elements `HEADER_TAGS` names (bulk binary values left out),
    with the file meta's TransferSyntaxUID, which DICOMweb metadata may lack."""
    try:
        tree = _json_of(dataset, _HEADER_TAGS, [default_encoding])
    except Exception as error:  # pydicom's value conversions raise various types
        raise MetadataError(f"header cannot be converted to DICOM JSON: {error}") from error
    tree["00020010"] = {"vr": "UI", "Value": [str(syntax)]}
    return tree


def _int_tags(tags: dict[str, Any]) -> dict[int, Any]:
    return {int(tag, 16): _int_tags(inner) if inner else None for tag, inner in tags.items()}


_HEADER_TAGS = _int_tags(HEADER_TAGS)
# What pydicom keeps of a header: the values of other elements are skipped, not read
# (a quarter of dcmread's time), their lengths still passed over to the Pixel Data.
_READ_TAGS = [*_HEADER_TAGS, EXTENDED_OFFSETS, EXTENDED_LENGTHS]
_CHARACTER_SET = 0x00080005
_BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW"})
_PLAIN_VRS = frozenset({
    "AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "SH", "ST", "TM", "UC", "UI",
    "UR", "UT", "FL", "FD", "SL", "SS", "SV", "UL", "US", "UV", "PN", "AT", *_BINARY_VRS})
_LUT_DESCRIPTORS = frozenset({0x00281101, 0x00281102, 0x00281103, 0x00283002})
_INLINE_BINARY_LIMIT = (BULK_THRESHOLD // 4) * 3  # pydicom's rule: base64 grows by 4/3
# Elements' JSON by what it is made from (`_converted_key`): the headers of one series
# repeat most of their elements (UIDs, dates, device, optical path, pixel format), and
# converting one costs ~20-40 us; bounded, cleared when full. Any thread may use it
# (a dict's get and set are atomic); a race only converts an element twice.
_CONVERTED: dict[tuple[Any, ...], dict[str, Any] | None] = {}
_CONVERTED_MAX = 4096
_CONVERTED_VALUE_MAX = 256
_UNKNOWN = object()


def _json_of(dataset: Dataset, wanted: dict[int, Any] | None,
             inherited: str | list[str]) -> dict[str, Any]:
    """DICOM JSON of the elements of `dataset` that `wanted` names (all when None), the
    items of its sequences cut to theirs; binary values over BULK_THRESHOLD left out.

    The same JSON as pydicom's `Dataset.to_json_dict` of those elements
    (tests/unit/test_header_json.py compares them), made from the raw elements: each
    value is decoded by pydicom's own converter (`pydicom.values.convert_value`) and
    shaped by the rules of `DataElement.to_json_dict`, without a `DataElement` or a
    `Dataset` made for it, which cost ~4 times as much (a header has ~70 elements,
    entering a series reads one header per instance, while the listing waits). Elements
    whose VR pydicom would first look up or correct (implicit VR, UN, LUT descriptors)
    go through pydicom's `Dataset` path."""
    encodings = inherited
    if _CHARACTER_SET in dataset:
        encodings = convert_encodings(dataset[_CHARACTER_SET].value) or inherited
    tree: dict[str, Any] = {}
    for tag in dataset.keys():  # noqa: SIM118 (iterating a Dataset converts every element)
        if wanted is not None and tag not in wanted:
            continue
        element = _element_json(dataset, tag, None if wanted is None else wanted[tag],
                                encodings)
        if element is not None:
            tree[f"{tag:08X}"] = element
    return tree


def _element_json(dataset: Dataset, tag: int, inner: dict[int, Any] | None,
                  encodings: str | list[str]) -> dict[str, Any] | None:
    """One element's DICOM JSON; None for a binary value left out."""
    raw = dataset.get_item(tag)
    if isinstance(raw, RawDataElement):
        found = _converted_json(raw, encodings)
        if found is not _UNKNOWN:
            return found  # type: ignore[no-any-return]
    element = dataset[tag]
    if element.VR == "SQ":
        return {"vr": "SQ", "Value": [_json_of(item, inner, encodings)
                                      for item in element.value or ()]}
    return _pydicom_json(element)


def _converted_json(raw: RawDataElement, encodings: str | list[str]) -> Any:
    """A raw element's JSON (None: a binary value left out), converted here or kept
    (`_CONVERTED`); `_UNKNOWN` when pydicom's `Dataset` must convert it: a VR it looks
    up or corrects (not in `_PLAIN_VRS`), a LUT descriptor, a value of a wrong length
    (pydicom raises, or reads it as UN)."""
    if raw.VR not in _PLAIN_VRS or raw.tag in _LUT_DESCRIPTORS:
        return _UNKNOWN
    key = _converted_key(raw, encodings)
    found = _CONVERTED.get(key, _UNKNOWN) if key is not None else _UNKNOWN
    if found is not _UNKNOWN:
        return _fresh(found)
    try:
        found = _value_json(raw.VR, convert_value(raw.VR, raw, encodings))
    except BytesLengthException:
        return _UNKNOWN
    if key is not None:
        if len(_CONVERTED) >= _CONVERTED_MAX:
            _CONVERTED.clear()
        _CONVERTED[key] = _fresh(found)
    return found


def forget_converted() -> None:
    """Drop the elements' JSON kept (`_CONVERTED`, and the walk's `_KEPT`): the next
    header converts each again."""
    _CONVERTED.clear()
    _KEPT.clear()


def _converted_key(raw: RawDataElement, encodings: str | list[str]) -> tuple[Any, ...] | None:
    """What an element's JSON is a function of: its tag, VR, raw value, byte order and
    the character sets in force; None for a long value (not kept)."""
    value = raw.value
    if value is not None and len(value) > _CONVERTED_VALUE_MAX:
        return None
    return (int(raw.tag), raw.VR, value, raw.is_little_endian, raw.is_implicit_VR,
            _charsets(encodings))


def _fresh(tree: dict[str, Any] | None) -> dict[str, Any] | None:
    """A copy of an element's JSON that shares no list or dict with `tree`."""
    if tree is None:
        return None
    values = tree.get("Value")
    if values is None:
        return dict(tree)
    return {**tree, "Value": [dict(v) if isinstance(v, dict) else v for v in values]}


def _pydicom_json(element: DataElement) -> dict[str, Any] | None:
    tree = element.to_json_dict(bulk_data_threshold=BULK_THRESHOLD,
                                bulk_data_element_handler=lambda _e: _DROPPED)
    return None if tree.get("BulkDataURI") == _DROPPED else tree


def _value_json(vr: str, value: Any) -> dict[str, Any] | None:
    """`DataElement.to_json_dict` of a decoded value, for the VRs of `_PLAIN_VRS`."""
    multiplicity = _multiplicity(value)
    if vr in _BINARY_VRS:
        if not multiplicity:
            return {"vr": vr}
        if len(value) > _INLINE_BINARY_LIMIT:
            return None
        return {"vr": vr, "InlineBinary": base64.b64encode(value).decode("utf-8")}
    if not multiplicity:
        return {"vr": vr}
    values = list(value) if multiplicity > 1 else [value]
    if vr == "PN":
        return {"vr": vr, "Value": [_person_name(name) for name in values]}
    if vr == "AT":
        return {"vr": vr, "Value": [format(tag, "08X") for tag in values]}
    return {"vr": vr, "Value": convert_to_python_number(values, vr)}


def _multiplicity(value: Any) -> int:
    """`DataElement.VM` of a decoded value."""
    if value is None:
        return 0
    if isinstance(value, str | bytes | PersonName):
        return 1 if value else 0
    try:
        iter(value)
    except TypeError:
        return 1
    return len(value)


def _person_name(name: PersonName) -> dict[str, str]:
    components = name.components
    found = {"Alphabetic": components[0]}
    if len(components) > 1:
        found["Ideographic"] = components[1]
    if len(components) > 2:
        found["Phonetic"] = components[2]
    return found


# --------------------------------------------------------------------------- header, walked
#
# `dcmread` makes a `Dataset` of the header and, as `_json_of` asks for each sequence, a
# `Dataset` of each item, and it reads every sequence of undefined length whole, wanted
# or not: ~0.8 ms of a header's ~1.9 ms of CPU (the benchmark's series), and entering a
# series parses its headers one after another under the GIL. The walk below reads the
# same elements with pydicom's own reader (`data_element_generator`, the same options,
# so the same bytes kept and passed over), keeps them in plain dicts, reads only the
# wanted items' wanted elements and passes over the rest, and converts each value with
# `_converted_json` as `_json_of` does. It takes only what it reads exactly as `dcmread`
# would (Part 10, explicit VR little endian throughout, sequences of items); on anything
# else it is unsure and `dcmread`'s path reads the buffer (tests/unit/test_header_json.py
# compares the two over every layout, real file and odd case).


class _Unsure(Exception):
    """The walk met what only pydicom's `Dataset` path reads as idcfs must (implicit VR,
    a VR pydicom looks up or corrects, a value of a wrong length, no item where an item
    should be...)."""


_PIXEL_TAGS = frozenset({0x7FE00010, 0x7FE00009, 0x7FE00008})  # `stop_before_pixels`'
_ITEM_TAG = int(ItemTag)  # ints: a BaseTag compares in Python
_ITEM_END_TAG = int(ItemDelimiterTag)
_SEQUENCE_END_TAG = int(SequenceDelimiterTag)
_ITEM_HEAD = struct.Struct("<HHL")
_SEQUENCE_HEAD = struct.Struct("<HH2s2xL")
_NOTHING: dict[int, Any] = {}  # the wanted tags of a sequence passed over
_DATASET_SYNTAXES = (ImplicitVRLittleEndian, ExplicitVRBigEndian,
                     DeflatedExplicitVRLittleEndian)  # `read_partial` reads these otherwise


def _walked_header(buffer: bytes, size: int) -> FileHeader | None:
    """The header `_header` makes of what `_parse_up_to_pixels` finds in `buffer`, from
    the walk; None when the walk is unsure or the buffer ends before the Pixel Data
    (`dcmread`'s path then decides, raising what it raises)."""
    try:
        return _walk_header(buffer, size)
    except Exception:  # noqa: BLE001 (any surprise: dcmread's path reads it as before)
        return None


def _walk_header(buffer: bytes, size: int) -> FileHeader | None:
    if buffer[128:132] != b"DICM":
        return None
    stream = io.BytesIO(buffer)
    stream.seek(132)
    syntax = _meta_syntax(stream)
    if syntax is None or not _explicit_vr(buffer, stream.tell()):
        return None
    walk = _Walk(stream, top=True)
    elements = walk.elements(_HEADER_TAGS, _READ_TAGS, None)
    tag_at = walk.pixel_at
    if tag_at is None or tag_at + 12 > len(buffer):
        return None
    value_at, length = _pixel_value(buffer, size, syntax, tag_at)
    offsets = lengths = None
    if EXTENDED_OFFSETS in elements:
        offsets = _uint64s(_binary(elements[EXTENDED_OFFSETS]), "Extended Offset Table")
        if EXTENDED_LENGTHS in elements:
            lengths = _table_lengths(offsets, _binary(elements[EXTENDED_LENGTHS]))
    tree = _walked_json(elements, _HEADER_TAGS, [default_encoding])
    tree["00020010"] = {"vr": "UI", "Value": [str(syntax)]}
    frames = _checked_frame_count(_walked_frames(tree))
    return _file_header(buffer, size, syntax, value_at, length, tree, frames, offsets,
                        lengths)


def _meta_syntax(stream: io.BytesIO) -> UID | None:
    """The file meta's TransferSyntaxUID, the stream left after the meta, as
    `_read_file_meta_info` reads them; None unless pydicom then reads the dataset as
    explicit VR little endian (`read_partial`) and idcfs can read it by ranges."""
    start = stream.tell()
    if not _explicit_vr(stream.getbuffer(), start):
        return None  # pydicom reads such a meta as implicit VR
    stopped: list[int] = []

    def after_meta(tag: int, _vr: str | None, length: int) -> bool:
        if tag >> 16 != 2 or length == UNDEFINED_LENGTH:
            stopped.append(tag)
            return True
        return False

    meta = {raw.tag: raw for raw in data_element_generator(stream, False, True, after_meta)}
    if not meta or not stopped or stopped[0] >> 16 in (0, 2):
        return None  # no meta, one pydicom reads otherwise, or a command set after it
    if next(iter(meta.values())).VR not in converters:  # pydicom reads it as implicit VR
        return None
    raw = meta.get(0x00020010)
    found = None if raw is None else _converted_json(raw, default_encoding)
    if not isinstance(found, dict) or len(found.get("Value") or ()) != 1:
        return None  # none, empty, several, or one pydicom's Dataset converts
    return _walked_syntax(found["Value"][0])


def _walked_syntax(value: str) -> UID | None:
    """The transfer syntax of UI `value` (as `_transfer_syntax`: UID(str(the value))),
    when `read_partial` reads its dataset as explicit VR little endian and `_header`
    takes it; kept by value (`_KEPT`: pydicom's UID validates with a pattern)."""
    key = ("UID", value)
    kept = _KEPT.get(key)
    if kept is None:
        syntax = UID(value)
        readable = not (syntax.is_private or syntax in PrivateTransferSyntaxes
                        or syntax in _DATASET_SYNTAXES or not syntax.is_transfer_syntax)
        kept = (syntax if readable else None,)
        _keep_walked(key, kept)
    return kept[0]  # type: ignore[no-any-return]


def _explicit_vr(data: Any, at: int) -> bool:
    """pydicom reads the dataset at `at` as explicit VR (`_is_implicit_vr`): its first
    element's VR is two capital letters."""
    vr = bytes(data[at + 4 : at + 6])
    return len(vr) == 2 and 0x40 < vr[0] < 0x5B and 0x40 < vr[1] < 0x5B


class _Walk:
    """The raw elements of an explicit VR little endian dataset in `stream`, read as
    pydicom's `read_dataset` reads them: `data_element_generator` yields the elements of
    defined length (with `specific_tags`, the others passed over), and a sequence of
    undefined length, which it would read whole into `Dataset`s, is read here into a list
    of its items, each a dict of its wanted elements. At the top level the walk stops at
    the Pixel Data, as `stop_before_pixels` does, and says where (`pixel_at`)."""

    def __init__(self, stream: io.BytesIO, top: bool = False) -> None:
        self.stream, self.top = stream, top
        self.pixel_at: int | None = None
        self._end: int | None = None  # of the item read, when of defined length
        self._stopped: list[int] = []

    # `stop_when`s of the generator (called for every element, so one for each kind of
    # walk): stop at an element of undefined length, and at the top level at the Pixel
    # Data, in an item of defined length at its end (where `read_dataset` stops asking
    # for elements: once one starts at or past it)

    def _stop_at_top(self, tag: int, _vr: str | None, length: int) -> bool:
        if length == UNDEFINED_LENGTH or tag in _PIXEL_TAGS:
            self._stopped.append(int(tag))
            return True
        return False

    def _stop_in_item(self, tag: int, vr: str | None, length: int) -> bool:
        header = 12 if vr in EXPLICIT_VR_LENGTH_32 else 8  # the generator's rewind
        if self._end is not None and self.stream.tell() - header >= self._end:
            self._stopped.append(_ITEM_END_TAG)
            return True
        if length == UNDEFINED_LENGTH:
            self._stopped.append(int(tag))
            return True
        return False

    def elements(self, wanted: dict[int, Any] | None, keep: list[int] | None,
                 length: int | None) -> dict[int, Any]:
        """The elements from here to the end of `length` bytes (None: to an item
        delimiter or the end of the bytes), keyed by tag; those of tags not in `keep`
        (None: all) passed over. `wanted` says what to keep of a sequence's items."""
        stream, found = self.stream, {}
        self._end = None if length is None else stream.tell() + length
        kept = None if keep is None else {*keep, _CHARACTER_SET}
        stop_when = self._stop_at_top if self.top else self._stop_in_item
        while self._end is None or stream.tell() < self._end:
            self._stopped.clear()
            for raw in data_element_generator(stream, False, True, stop_when,
                                              specific_tags=keep):
                found[int(raw.tag)] = raw  # int keys: BaseTag compares in Python
            if not self._stopped:  # the end of the bytes or an item delimiter
                if self._end is not None and stream.tell() > self._end:
                    raise _Unsure("a delimiter past the end of an item of defined length")
                return found
            tag = self._stopped[0]
            if tag == _ITEM_END_TAG:
                return found
            if self.top and tag in _PIXEL_TAGS:
                self.pixel_at = stream.tell()
                return found
            items = self._sequence(_inner(wanted, tag))
            if kept is None or tag in kept:
                found[tag] = items
        return found

    def _sequence(self, wanted: dict[int, Any] | None) -> list[dict[int, Any]]:
        """The items of the sequence of undefined length whose element starts here."""
        _group, _element, vr, _length = _SEQUENCE_HEAD.unpack(self.stream.read(12))
        if vr != b"SQ":
            raise _Unsure(f"an element of undefined length has VR {vr!r}")
        return _Walk(self.stream).items(wanted, None)

    def items(self, wanted: dict[int, Any] | None, length: int | None
              ) -> list[dict[int, Any]]:
        """A sequence's items from here (as `read_sequence`): up to the sequence
        delimiter (`length` None) or over `length` bytes."""
        stream, found = self.stream, []
        start = stream.tell()
        keep = _keep(wanted)
        while length is None or stream.tell() - start < length:
            group, element, item_length = _ITEM_HEAD.unpack(stream.read(8))
            tag = group << 16 | element
            if tag == _SEQUENCE_END_TAG:
                break
            if tag != _ITEM_TAG:
                raise _Unsure(f"({group:04X},{element:04X}) where an item should be")
            found.append(self._item(wanted, keep, item_length))
        return found

    def _item(self, wanted: dict[int, Any] | None, keep: list[int] | None,
              length: int) -> dict[int, Any]:
        stream = self.stream
        at = stream.tell()
        if length == 0:
            return {}
        if length == UNDEFINED_LENGTH:
            if stream.read(4) == ITEM_DELIMITER:  # empty: pydicom finds it implicit, reads none
                stream.seek(at + 8)
                return {}
            stream.seek(at)
        if not _explicit_vr(stream.getbuffer(), at):
            raise _Unsure("an item in implicit VR")  # pydicom reads it so
        return self.elements(wanted, keep, None if length == UNDEFINED_LENGTH else length)


def _inner(wanted: dict[int, Any] | None, tag: int) -> dict[int, Any] | None:
    """What to keep of the items of sequence `tag` (None: all, `_NOTHING`: none)."""
    if wanted is None:
        return None
    return wanted.get(tag, _NOTHING)


def _keep(wanted: dict[int, Any] | None) -> list[int] | None:
    """`specific_tags` for the items' elements: `_NOTHING` still keeps the character set
    (pydicom reads every element when given none)."""
    if wanted is None:
        return None
    return list(wanted) or [_CHARACTER_SET]


def _walked_json(elements: dict[int, Any], wanted: dict[int, Any] | None,
                 inherited: str | list[str]) -> dict[str, Any]:
    """`_json_of` of walked elements: the same elements in the same order, each value
    converted by `_converted_json`, the character set by pydicom's `DataElement` (as
    `_json_of` finds it, converted by the `Dataset`)."""
    encodings, charset_json = inherited, None
    if _CHARACTER_SET in elements:
        charset_json, encodings = _character_set(elements[_CHARACTER_SET], inherited)
    tree: dict[str, Any] = {}
    for tag, element in elements.items():
        if wanted is not None and tag not in wanted:
            continue
        inner = None if wanted is None else wanted[tag]
        if tag == _CHARACTER_SET:
            found = charset_json
        elif isinstance(element, list):
            found = {"vr": "SQ", "Value": [_walked_json(item, inner, encodings)
                                           for item in element]}
        elif element.VR == "SQ":
            found = _sequence_json(element, inner, encodings)
        else:
            found = _converted_json(element, encodings)
            if found is _UNKNOWN:
                raise _Unsure(f"{element.tag} needs pydicom's Dataset")
        if found is not None:
            tree[f"{tag:08X}"] = found
    return tree


def _character_set(raw: Any, inherited: str | list[str]
                   ) -> tuple[dict[str, Any] | None, str | list[str]]:
    """(the JSON of a walked Specific Character Set, the encodings it sets), as the
    `Dataset` converts it (pydicom's `DataElement`); kept by its value (`_KEPT`)."""
    if not isinstance(raw, RawDataElement) or raw.VR != "CS":
        raise _Unsure("a Specific Character Set not of VR CS")
    key = ("CS", raw.value, _charsets(inherited))
    kept = _KEPT.get(key)
    if kept is None:
        element = convert_raw_data_element(raw, encoding=default_encoding)
        kept = _pydicom_json(element), convert_encodings(element.value) or inherited
        _keep_walked(key, kept)
    tree, encodings = kept
    return _copied(tree), encodings if isinstance(encodings, str) else list(encodings)


def _sequence_json(raw: RawDataElement, wanted: dict[int, Any] | None,
                   encodings: str | list[str]) -> dict[str, Any]:
    """A sequence of defined length: its items read from its value, as `convert_SQ`;
    kept by its value (`_KEPT`: a series' headers repeat their optical path, pixel
    measures, origin...) with the `wanted` it was cut to."""
    value = raw.value or b""
    key = ("SQ", int(raw.tag), value, _charsets(encodings))
    kept = _KEPT.get(key) if len(value) <= _KEPT_VALUE_MAX else None
    if kept is not None and kept[0] is wanted:
        return _copied(kept[1])  # type: ignore[no-any-return]
    items = _Walk(io.BytesIO(value)).items(wanted, len(value))
    tree = {"vr": "SQ", "Value": [_walked_json(item, wanted, encodings) for item in items]}
    if len(value) <= _KEPT_VALUE_MAX:
        _keep_walked(key, (wanted, _copied(tree)))
    return tree


# What the walk keeps besides `_CONVERTED`: character sets and whole sequences, by their
# raw values (a sequence's value holds its items' ICC profiles, so it is kept only when
# short), for any thread as `_CONVERTED` is; cleared with it by `forget_converted`.
_KEPT: dict[tuple[Any, ...], Any] = {}
_KEPT_MAX = 256
_KEPT_VALUE_MAX = 16 * 1024


def _keep_walked(key: tuple[Any, ...], value: Any) -> None:
    if len(_KEPT) >= _KEPT_MAX:
        _KEPT.clear()
    _KEPT[key] = value


def _charsets(encodings: str | list[str]) -> str | tuple[str, ...]:
    return encodings if isinstance(encodings, str) else tuple(encodings)


def _copied(tree: Any) -> Any:
    """A JSON tree that shares no dict or list with `tree`."""
    if isinstance(tree, dict):
        return {key: _copied(value) for key, value in tree.items()}
    if isinstance(tree, list):
        return [_copied(value) for value in tree]
    return tree


def _walked_frames(tree: dict[str, Any]) -> int | None:
    """NumberOfFrames as `_frame_count` gets it (None: absent or empty) from its JSON,
    when that JSON is of one integer, as an IS of one value gives; else unsure."""
    found = tree.get("00280008")
    if found is None or "Value" not in found:
        return None
    values = found["Value"]
    if found["vr"] != "IS" or len(values) != 1 or type(values[0]) is not int:
        raise _Unsure("NumberOfFrames is not one IS")
    return values[0]  # type: ignore[no-any-return]


def _binary(raw: Any) -> Any:
    if not isinstance(raw, RawDataElement) or raw.VR not in _BINARY_VRS:
        raise _Unsure("an offset table not of a binary VR")
    return convert_value(raw.VR, raw)


# --------------------------------------------------------------------------- frames


class ScanNeeded(FetchError):
    """The file has no offset table nor TIFF tags: only a scan would locate its frames."""


def frame_index(read: Read, size: int, header: FileHeader, *,
                scan_range: int = SCAN_RANGE, allow_scan: bool = True) -> FrameIndex:
    """Every frame's position (module docstring: native, EOT, BOT, TIFF tags, scan),
    with the first frame's first bytes when they were read on the way (they usually
    are: the reads near the offset table cover them). FetchError when the frames cannot
    be located; ScanNeeded instead of a scan when `allow_scan` is False."""
    reader = _RangeReader(read, size)
    if not header.encapsulated:
        return FrameIndex("native", _native_positions(header))
    first_item, offsets = _basic_offsets(reader, header)
    if header.extended_offsets is not None:
        method, positions = "eot", _table_positions(
            reader, header, first_item, header.extended_offsets, header.extended_lengths)
    elif offsets:
        method, positions = "bot", _table_positions(reader, header, first_item, offsets, None)
    else:
        tiff = _tiff_positions(reader, header, first_item)
        if tiff is None and not allow_scan:
            raise ScanNeeded("no offset table and no TIFF tags")
        method = "tiff" if tiff is not None else "scan"
        positions = tiff or _scan_positions(reader, header, first_item, scan_range)
    head = reader.held(positions[0].content_start, HEAD_BYTES) if positions else b""
    return FrameIndex(method, positions, head)


def _native_positions(header: FileHeader) -> tuple[FramePosition, ...]:
    try:
        length = PixelFormat.from_dicom_json(header.dicom_json).frame_bytes
    except (TypeError, ValueError) as error:
        raise FetchError(f"native frames cannot be located: {error}") from error
    total = header.pixel_data_length or 0
    if length <= 0 or length * header.frame_count > total:
        raise FetchError(f"{header.frame_count} frames of {length} bytes do not fit in "
                         f"{total} bytes of Pixel Data")
    starts = (header.pixel_data_offset + i * length for i in range(header.frame_count))
    return tuple(FramePosition(s, s + length, ((s, length),)) for s in starts)


def _basic_offsets(reader: _RangeReader, header: FileHeader) -> tuple[int, list[int]]:
    """(file offset of the first fragment's item, the Basic Offset Table's offsets)."""
    start = header.pixel_data_offset
    head = reader.get(start, 8, readahead=max(NEAR_RANGE, 8 + 4 * header.frame_count))
    if head[:4] != ITEM:
        raise FetchError(f"no Basic Offset Table item at the Pixel Data value ({start})")
    length = int.from_bytes(head[4:], "little")
    try:
        offsets = parse_basic_offsets(reader.get(start, 8 + length))
    except (ValueError, struct.error) as error:
        raise FetchError(f"unreadable Basic Offset Table: {error}") from error
    return start + 8 + length, offsets


def _table_positions(reader: _RangeReader, header: FileHeader, first_item: int,
                     offsets: Sequence[int], lengths: Sequence[int] | None
                     ) -> tuple[FramePosition, ...]:
    """Positions from an offset table: frame i runs from its item to frame i+1's item;
    the last frame's items are walked up to the sequence delimiter. With EOT lengths a
    frame whose run is exactly one item gets its exact fragment (length without pad)."""
    _check_table(reader, header, first_item, offsets)
    starts = [first_item + offset for offset in offsets]
    positions = [_table_position(start, end, lengths[i] if lengths else None)
                 for i, (start, end) in enumerate(zip(starts, starts[1:], strict=False))]
    last = tuple((o, n) for o, n, _ in _walk_items(reader, starts[-1], NEAR_RANGE))
    if not last:
        raise FetchError(f"no fragment at the last frame's offset ({starts[-1]})")
    if lengths and len(last) == 1 and lengths[-1] <= last[0][1]:
        last = ((last[0][0], lengths[-1]),)
    positions.append(FramePosition(last[0][0], last[-1][0] + last[-1][1], last))
    return tuple(positions)


def _table_position(start: int, end: int, length: int | None) -> FramePosition:
    if length is not None and end - start == 8 + length + length % 2:
        return FramePosition(start + 8, start + 8 + length, ((start + 8, length),))
    return FramePosition(start, end, None)


def _check_table(reader: _RangeReader, header: FileHeader, first_item: int,
                 offsets: Sequence[int]) -> None:
    if len(offsets) != header.frame_count:
        raise FetchError(f"offset table has {len(offsets)} entries for "
                         f"{header.frame_count} frames")
    if offsets[0] != 0 or any(b <= a for a, b in zip(offsets, offsets[1:], strict=False)):
        raise FetchError("offset table does not start at 0 and increase")
    if first_item + offsets[-1] + 8 > reader.size:
        raise FetchError("offset table points past the end of the file")
    if reader.get(first_item, 4) != ITEM:
        raise FetchError(f"no fragment item where the first frame should be ({first_item})")


def _walk_items(reader: _RangeReader, start: int, readahead: int
                ) -> Iterator[tuple[int, int, bytes]]:
    """(content offset, length, first content bytes) of consecutive items from `start` up
    to the sequence delimiter, reading `readahead` bytes at a time."""
    cursor = start
    while True:
        block = reader.get(cursor, min(16, reader.size - cursor), readahead)
        if block[:4] == SEQUENCE_DELIMITER:
            return
        if len(block) < 8 or block[:4] != ITEM:
            raise FetchError(f"no fragment item or sequence delimiter at {cursor}")
        length = int.from_bytes(block[4:8], "little")
        if cursor + 8 + length > reader.size:
            raise FetchError(f"fragment at {cursor} runs past the end of the file")
        yield cursor + 8, length, block[8 : 8 + length]
        cursor += 8 + length


def _scan_positions(reader: _RangeReader, header: FileHeader, first_item: int,
                    scan_range: int) -> tuple[FramePosition, ...]:
    items = list(_walk_items(reader, first_item, scan_range))
    groups = _group_fragments(items, header.frame_count)
    return tuple(FramePosition(g[0][0], g[-1][0] + g[-1][1], tuple(g)) for g in groups)


def _group_fragments(items: list[tuple[int, int, bytes]], frames: int
                     ) -> list[list[tuple[int, int]]]:
    """Fragments per frame: all for one frame, one each when the counts match, else a
    new frame at each fragment that starts with an image marker (module docstring)."""
    fragments = [(offset, length) for offset, length, _ in items]
    if not fragments:
        raise FetchError("the encapsulated Pixel Data holds no fragment")
    if frames == 1:
        return [fragments]
    if len(fragments) == frames:
        return [[fragment] for fragment in fragments]
    starts = [i for i, (_, _, head) in enumerate(items) if head.startswith(IMAGE_STARTS)]
    if len(starts) != frames or starts[0] != 0:
        raise FetchError(f"{len(fragments)} fragments with {len(starts)} image starts "
                         f"for {frames} frames")
    ends = [*starts[1:], len(fragments)]
    return [fragments[a:b] for a, b in zip(starts, ends, strict=True)]


# --------------------------------------------------------------------------- TIFF


@dataclass(frozen=True)
class _Tiff:
    endian: str
    big: bool
    first_ifd: int

    @property
    def entry_size(self) -> int:
        return 20 if self.big else 12


_TIFF_TYPES = {3: "H", 4: "L", 16: "Q", 13: "L", 18: "Q"}
_WANTED_TAGS = (273, 279, 324, 325)
MAX_IFDS = 64


def _tiff_layout(preamble: bytes) -> _Tiff | None:
    """The TIFF header in the preamble: classic (II*\\0, MM\\0*) or BigTIFF (II+\\0)."""
    order = preamble[:2]
    if order not in (b"II", b"MM") or len(preamble) < 16:
        return None
    endian = "<" if order == b"II" else ">"
    version = struct.unpack_from(f"{endian}H", preamble, 2)[0]
    if version == 42:
        return _Tiff(endian, False, struct.unpack_from(f"{endian}L", preamble, 4)[0])
    if version == 43 and struct.unpack_from(f"{endian}HH", preamble, 4) == (8, 0):
        return _Tiff(endian, True, struct.unpack_from(f"{endian}Q", preamble, 8)[0])
    return None


def _tiff_positions(reader: _RangeReader, header: FileHeader, first_item: int
                    ) -> tuple[FramePosition, ...] | None:
    """Positions from the tile (or strip) offsets and byte counts of the IFD that has one
    tile per frame inside the pixel data; None (scan instead) when there is none."""
    layout = _tiff_layout(header.preamble)
    if layout is None:
        return None
    try:
        for tags in _ifds(reader, layout):
            offsets = tags.get(324) or tags.get(273) or ()
            counts = tags.get(325) or tags.get(279) or ()
            if len(offsets) == len(counts) == header.frame_count and _tiles_are_frames(
                    reader, first_item, offsets, counts):
                return tuple(FramePosition(o, o + n, ((o, n),))
                             for o, n in zip(offsets, counts, strict=True))
    except (FetchError, struct.error) as error:
        log.warning("TIFF tags of the file unreadable (%s); scanning its fragments", error)
        return None
    log.warning("no TIFF directory of the file matches its %d frames; scanning its fragments",
                header.frame_count)
    return None


def _ifds(reader: _RangeReader, layout: _Tiff) -> Iterator[dict[int, tuple[int, ...]]]:
    """The wanted tags of each IFD in the chain (bounded, loops cut)."""
    seen: set[int] = set()
    ifd = layout.first_ifd
    count_format, next_format = ("Q", "Q") if layout.big else ("H", "L")
    count_size = 8 if layout.big else 2
    while ifd and ifd not in seen and len(seen) < MAX_IFDS:
        seen.add(ifd)
        count = struct.unpack(layout.endian + count_format, reader.get(ifd, count_size))[0]
        if count > 4096:
            raise FetchError(f"TIFF directory at {ifd} claims {count} entries")
        table = reader.get(ifd + count_size, count * layout.entry_size + struct.calcsize(
            next_format))
        yield _ifd_tags(reader, layout, table, count)
        ifd = struct.unpack_from(layout.endian + next_format, table, count * layout.entry_size)[0]


def _ifd_tags(reader: _RangeReader, layout: _Tiff, table: bytes, count: int
              ) -> dict[int, tuple[int, ...]]:
    tags: dict[int, tuple[int, ...]] = {}
    entry_format = layout.endian + ("HHQ" if layout.big else "HHL")
    inline = 8 if layout.big else 4
    for index in range(count):
        at = index * layout.entry_size
        tag, kind, number = struct.unpack_from(entry_format, table, at)
        if tag not in _WANTED_TAGS or kind not in _TIFF_TYPES:
            continue
        value_format = f"{layout.endian}{number}{_TIFF_TYPES[kind]}"
        width = struct.calcsize(value_format)
        value_at = at + struct.calcsize(entry_format)
        if width <= inline:
            data = table[value_at : value_at + width]
        else:
            pointer = struct.unpack_from(layout.endian + ("Q" if layout.big else "L"),
                                         table, value_at)[0]
            data = reader.get(pointer, width)
        tags[tag] = struct.unpack(value_format, data)
    return tags


def _tiles_are_frames(reader: _RangeReader, first_item: int, offsets: Sequence[int],
                      counts: Sequence[int]) -> bool:
    """The tiles are the frames' fragments, one each, in order: consecutive tiles are
    separated by exactly a pad byte (or none) and an item header, and the first and the
    last sit right after an item header whose length is the byte count (plus the pad).
    So the whole chain is checked with at most two small reads."""
    gaps = (b - a - n for a, n, b in zip(offsets, counts, offsets[1:], strict=False))
    if any(gap not in (8, 9) for gap in gaps):
        return False
    if offsets[0] != first_item + 8 or offsets[-1] + counts[-1] > reader.size:
        return False
    for index in {0, len(offsets) - 1}:
        header = reader.get(offsets[index] - 8, 8)
        length = int.from_bytes(header[4:], "little")
        if header[:4] != ITEM or length - counts[index] not in (0, 1):
            return False
    return True


def _listed(values: tuple[int, ...] | None) -> list[int] | None:
    return None if values is None else list(values)


def _tupled(values: Any) -> tuple[int, ...] | None:
    return None if values is None else tuple(int(v) for v in values)


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)
