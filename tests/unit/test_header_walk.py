"""`read_header` walks a header with pydicom's raw element reader (`_walked_header`)
and gives exactly the header `dcmread`'s path gives (`_parse_up_to_pixels`, `_header`):
the same `to_json`, key order included, or the same error. The walk takes the files it
is meant for (explicit VR little endian, every layout, real and IDC-style file, the
warm-up's header) and leaves to `dcmread` what it reads differently: implicit VR or big
endian, items in implicit VR, no item where one should be, UN of undefined length, a
command set, a buffer that ends before the Pixel Data."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag
from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
)
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32

from idcfs.errors import MetadataError
from idcfs.source.dicomfile import (
    _KEPT,
    _header,
    _parse_up_to_pixels,
    _sequence_json,
    _walked_header,
    forget_converted,
    read_header,
)
from idcfs.source.warmup import warm_header
from tests.support.file_layouts import write_layouts
from tests.support.fixtures import header_corpus
from tests.support.slides import GeneratedSlide
from tests.unit.test_header_json import CHARSETS, _file, odd_dataset

UNDEFINED = 0xFFFFFFFF
ITEM, ITEM_END, SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD


def reference(data: bytes) -> object:
    """dcmread's path over the whole file: its header's JSON text, or its error."""
    try:
        found = _parse_up_to_pixels(data, complete=True)
        assert found is not None
        return json.dumps(_header(data, len(data), *found).to_json())
    except MetadataError as error:
        return f"MetadataError: {error}"


def read(data: bytes, first_range: int = 64 * 1024) -> object:
    try:
        header = read_header(lambda start, length: data[start : start + length], len(data),
                             first_range)
        return json.dumps(header.to_json())
    except MetadataError as error:
        return f"MetadataError: {error}"


def walked(data: bytes) -> object:
    header = _walked_header(data, len(data))
    return None if header is None else json.dumps(header.to_json())


def assert_walked(data: bytes, what: object) -> None:
    """The walk takes the file and gives dcmread's header, fresh and from kept JSON."""
    for remembered in (False, True):
        if not remembered:
            forget_converted()
        expected = reference(data)
        assert not str(expected).startswith("MetadataError"), what
        assert walked(data) == expected, (what, remembered)
        assert read(data) == expected, (what, remembered)


def assert_left_to_dcmread(data: bytes, what: object) -> None:
    forget_converted()
    assert walked(data) is None, what
    assert read(data) == reference(data), what


def test_every_file_of_the_corpus(test_slides: list[GeneratedSlide], tmp_path: Path) -> None:
    """Generated slides, every file layout, the real and IDC-style files."""
    for data, what in header_corpus(test_slides, tmp_path):
        assert_walked(data, what)


def test_the_warm_up_header() -> None:
    assert_walked(warm_header(), "warm-up")


def test_a_header_longer_than_the_first_read(tmp_path: Path) -> None:
    """Cut before its Pixel Data, a buffer is left to dcmread's path (which asks for
    more), and the header read in several reads is the one read at once."""
    data = write_layouts(tmp_path, ["sparse_long_header"])["sparse_long_header"].path.read_bytes()
    whole = reference(data)
    assert read(data, first_range=4096) == read(data) == whole
    for cut in (132, 200, 1000, 4096, 100_000, 300_000):
        assert _walked_header(data[:cut], len(data)) is None, cut


def with_pixels(ds: Dataset) -> Dataset:
    ds.PixelData = bytes(16)
    ds["PixelData"].VR = "OB"
    return ds


@pytest.mark.parametrize("charset", CHARSETS, ids=str)
def test_odd_elements_walked(charset: str | list[str] | None) -> None:
    """The odd elements of test_header_json (character sets, PN, DS/IS, binary VRs, AT,
    empty values, VM > 1, nested sequences, items of their own character set), less the
    UN of a wanted tag, which only pydicom's Dataset converts."""
    ds = with_pixels(odd_dataset(charset))
    if charset == ["ISO 2022 IR 6", "ISO 2022 IR 87"]:
        ds.SeriesDescription = ds.PatientID = "ascii"
        ds.add_new(0x0008030E, "UT", "ascii")
    elif charset in (None, "", "ISO_IR 100"):
        ds.PatientName = "Yamada^Tarou"
    del ds[0x00080030]  # UN of StudyTime
    assert_walked(_file(ds, ExplicitVRLittleEndian), charset)
    for tag in (0x00480105, 0x52009229, 0x52009230, 0x00081115):  # undefined lengths
        ds[tag].is_undefined_length = True
        for item in ds[tag].value:
            item.is_undefined_length_sequence_item = True
    assert_walked(_file(ds, ExplicitVRLittleEndian), (charset, "undefined lengths"))


@pytest.mark.parametrize("syntax", [ImplicitVRLittleEndian, ExplicitVRBigEndian])
def test_implicit_vr_and_big_endian_files(syntax: str) -> None:
    assert_left_to_dcmread(_file(with_pixels(odd_dataset("ISO_IR 192")), syntax), syntax)


# ---------------------------------------------------------------- headers made by hand


def tag_bytes(tag: int) -> bytes:
    return struct.pack("<HH", tag >> 16, tag & 0xFFFF)


def element(tag: int, vr: str, value: bytes | str) -> bytes:
    data = value.encode("latin-1") if isinstance(value, str) else value
    if len(data) % 2:
        data += b"\x00" if vr in ("UI", "OB") else b" "
    if vr in EXPLICIT_VR_LENGTH_32:
        return tag_bytes(tag) + vr.encode() + struct.pack("<HI", 0, len(data)) + data
    return tag_bytes(tag) + vr.encode() + struct.pack("<H", len(data)) + data


def implicit(tag: int, value: bytes) -> bytes:
    return tag_bytes(tag) + struct.pack("<I", len(value)) + value


def item(content: bytes, defined: bool) -> bytes:
    if defined:
        return tag_bytes(ITEM) + struct.pack("<I", len(content)) + content
    return (tag_bytes(ITEM) + struct.pack("<I", UNDEFINED) + content
            + tag_bytes(ITEM_END) + bytes(4))


def sequence(tag: int, items: list[bytes], defined: bool = False, vr: str = "SQ") -> bytes:
    content = b"".join(items)
    if defined:
        return tag_bytes(tag) + vr.encode() + struct.pack("<HI", 0, len(content)) + content
    return (tag_bytes(tag) + vr.encode() + struct.pack("<HI", 0, UNDEFINED) + content
            + tag_bytes(SEQUENCE_END) + bytes(4))


def part10(body: bytes, syntax: str = JPEGBaseline8Bit, meta_extra: bytes = b"") -> bytes:
    meta = (element(0x00020001, "OB", b"\x00\x01")
            + element(0x00020002, "UI", "1.2.840.10008.5.1.4.1.1.77.1.6")
            + element(0x00020003, "UI", "1.2.3.4")
            + (element(0x00020010, "UI", syntax) if syntax else b"") + meta_extra)
    meta = element(0x00020000, "UL", struct.pack("<I", len(meta))) + meta
    pixels = (tag_bytes(0x7FE00010) + b"OB\x00\x00" + struct.pack("<I", UNDEFINED)
              + tag_bytes(ITEM) + bytes(4) + tag_bytes(ITEM) + struct.pack("<I", 4)
              + b"\xff\xd8\xff\xd9" + tag_bytes(SEQUENCE_END) + bytes(4))
    return bytes(128) + b"DICM" + meta + body + pixels


CHARSET = element(0x00080005, "CS", "ISO_IR 100")
IDENTITY = (element(0x00080008, "CS", "ORIGINAL\\PRIMARY")
            + element(0x00080016, "UI", "1.2.840.10008.5.1.4.1.1.77.1.6")
            + element(0x00080018, "UI", "1.2.3.4") + element(0x00080060, "CS", "SM")
            + element(0x00100010, "PN", "Müller^Jörg"))
HEAD = CHARSET + IDENTITY
TAIL = (element(0x00280008, "IS", "2") + element(0x00280010, "US", struct.pack("<H", 16))
        + element(0x00400512, "LO", "Slide é"))
PIXEL_MEASURES = sequence(0x00289110, [item(
    element(0x00180050, "DS", "1") + element(0x00280030, "DS", "0.25\\0.25"), True)])
OPTICAL_PATH = element(0x00480106, "SH", "1") + element(0x00480107, "ST", "passed over")


def test_sequences_of_every_length_kind() -> None:
    """Wanted and unwanted sequences of undefined and defined length, nested, their
    items of either kind, empty ones of both, an item of its own character set."""
    body = (HEAD
            + sequence(0x00081115, [item(element(0x00081155, "UI", "1.2"), False), item(
                sequence(0x0008114A, [item(element(0x00080005, "CS", "ISO_IR 192"), False),
                                      item(b"", False)]), True)])  # passed over
            + sequence(0x00209222, [item(b"", True), item(b"", False)], defined=True)
            + element(0x00209311, "CS", "TILED_FULL") + TAIL
            + sequence(0x00480008, [item(element(0x0040072A, "DS", "20")
                                         + element(0x0040074A, "DS", "0.5"), True)],
                       defined=True)
            + sequence(0x00480105, [
                item(element(0x00080005, "CS", "ISO_IR 192") + OPTICAL_PATH[:0]
                     + element(0x00480106, "SH", "é".encode()), False),
                item(OPTICAL_PATH + element(0x00282000, "OB", bytes(3000)), True),
                item(b"", False), item(b"", True)])
            + sequence(0x52009229, [item(PIXEL_MEASURES + sequence(0x00480207, [item(
                element(0x00480106, "SH", "1"), True)], defined=True), False)]))
    assert_walked(part10(body), "sequences")
    assert json.loads(str(walked(part10(body))))["dicom"]["00480105"]["Value"][0] == {
        "00480106": {"vr": "SH", "Value": ["é"]}}


def test_duplicate_elements() -> None:
    """A tag twice: pydicom keeps the later value at the first place; so does the walk."""
    body = HEAD + element(0x00080060, "CS", "XX") + TAIL + element(0x00280008, "IS", "3")
    assert_walked(part10(body), "duplicates")


def test_an_empty_character_set_and_none() -> None:
    assert_walked(part10(element(0x00080005, "CS", "") + IDENTITY + TAIL), "empty charset")
    assert_walked(part10(IDENTITY + TAIL), "no charset")
    two = element(0x00080005, "CS", "\\ISO 2022 IR 100")
    assert_walked(part10(two + IDENTITY + TAIL), "two charsets")


@pytest.mark.parametrize("defined", [True, False])
def test_items_in_implicit_vr(defined: bool) -> None:
    """pydicom reads an item whose first element has no VR as implicit VR: wanted or
    passed over, the walk leaves it to dcmread."""
    content = implicit(0x00480106, b"1 ") + implicit(0x00480107, b"path")
    for tag in (0x00480105, 0x00081115):
        body = HEAD + TAIL + sequence(tag, [item(content, defined)])
        assert_left_to_dcmread(part10(body), (tag, defined))


def test_no_item_where_an_item_should_be() -> None:
    body = HEAD + TAIL + sequence(0x00480105, [element(0x00480106, "SH", "1")])
    assert_left_to_dcmread(part10(body), "no item")


def test_an_item_delimiter_after_an_item_of_defined_length() -> None:
    """pydicom reads it as one more (empty) item; the walk, whose generator would take
    it as the item's end, leaves it to dcmread."""
    stray = item(element(0x00480106, "SH", "1"), True) + tag_bytes(ITEM_END) + bytes(4)
    data = part10(HEAD + TAIL + sequence(0x00480105, [stray]))
    assert_left_to_dcmread(data, "stray delimiter")
    assert json.loads(str(reference(data)))["dicom"]["00480105"]["Value"] == [
        {"00480106": {"vr": "SH", "Value": ["1"]}}, {}]


def test_a_wanted_element_in_un() -> None:
    """pydicom's Dataset converts a known tag's UN by its dictionary VR."""
    data = part10(HEAD + element(0x00080030, "UN", b"101010") + TAIL)
    assert_left_to_dcmread(data, "UN")
    assert json.loads(str(reference(data)))["dicom"]["00080030"]["vr"] == "TM"


def test_undefined_lengths_that_are_not_sequences() -> None:
    """UN of undefined length (pydicom reads it as a sequence) and an OB of undefined
    length before the Pixel Data (pydicom reads its value up to a delimiter)."""
    un = sequence(0x00091010, [item(element(0x00100020, "LO", "x"), False)], vr="UN")
    ob = (tag_bytes(0x00091011) + b"OB\x00\x00" + struct.pack("<I", UNDEFINED)
          + b"\x01\x02\x03\x04" + tag_bytes(SEQUENCE_END) + bytes(4))
    for extra in (un, ob):
        assert_left_to_dcmread(part10(HEAD + TAIL + extra), extra[:4])


def test_a_command_set_and_meta_without_a_syntax() -> None:
    command = (tag_bytes(0x00000000) + struct.pack("<I", 4) + struct.pack("<I", 0))
    assert_left_to_dcmread(part10(command + HEAD + TAIL), "command set")
    explicit = element(0x00000000, "UL", struct.pack("<I", 0))  # pydicom warns, reads it
    assert_left_to_dcmread(part10(explicit + HEAD + TAIL), "explicit command set")
    assert_left_to_dcmread(part10(HEAD + TAIL, syntax=""), "no transfer syntax")
    assert_left_to_dcmread(part10(HEAD + TAIL, syntax="1.2.840.10008.1.2.1.99"), "deflated")
    assert_left_to_dcmread(part10(HEAD + TAIL, syntax="1.2.3.4.5"), "not a syntax")


def test_values_dcmread_rejects() -> None:
    """A negative NumberOfFrames, an offset table of a wrong length, a value of a wrong
    length for its VR, no Pixel Data: dcmread's path says why."""
    for body in (HEAD + element(0x00280008, "IS", "-1"),
                 HEAD + TAIL + element(0x7FE00001, "OV", bytes(12)),
                 HEAD + TAIL + element(0x7FE00001, "OV", bytes(16))
                 + element(0x7FE00002, "OV", bytes(8)),
                 HEAD + TAIL + element(0x00480006, "UL", b"\x01\x02")):
        data = part10(body)
        assert str(reference(data)).startswith("MetadataError"), body[-20:]
        assert_left_to_dcmread(data, body[-20:])
    cut = part10(HEAD + TAIL)
    cut = cut[: cut.index(tag_bytes(0x7FE00010))] + element(0x00080050, "SH", "end")
    assert str(reference(cut)).startswith("MetadataError")
    assert_left_to_dcmread(cut, "no pixel data")


def test_an_extended_offset_table_is_read_by_the_walk() -> None:
    table = element(0x7FE00001, "OV", struct.pack("<2Q", 0, 100))
    lengths = element(0x7FE00002, "OV", struct.pack("<2Q", 90, 80))
    data = part10(HEAD + TAIL + table + lengths)
    assert_walked(data, "EOT")
    header = json.loads(str(walked(data)))
    assert header["extended_offsets"] == [0, 100] and header["extended_lengths"] == [90, 80]
    assert header["frame_count"] == 2


def mutate(tree: object) -> None:
    """Change every dict and list of a JSON tree in place."""
    if isinstance(tree, dict):
        for value in list(tree.values()):
            mutate(value)
        tree["changed"] = True
    elif isinstance(tree, list):
        for value in tree:
            mutate(value)
        tree.append("changed")


def test_kept_sequences_and_character_sets_share_nothing() -> None:
    """The walk keeps whole sequences and character sets by their values (`_KEPT`): a
    header read again is the same, and a change to one header's JSON, however deep,
    shows in no other."""
    body = (element(0x00080005, "CS", "\\ISO 2022 IR 100") + IDENTITY + TAIL
            + sequence(0x00480105, [item(OPTICAL_PATH, True)], defined=True)
            + sequence(0x52009229, [item(PIXEL_MEASURES, True)], defined=True))
    data = part10(body)
    expected = json.loads(str(reference(data)))["dicom"]
    forget_converted()
    trees = []
    for _ in range(3):
        header = _walked_header(data, len(data))
        assert header is not None
        trees.append(header.dicom_json)
        assert trees[-1] == expected
        mutate(trees[-1])
    assert _KEPT


def test_a_kept_sequence_is_cut_to_what_is_wanted_of_it() -> None:
    value = item(OPTICAL_PATH, True) + item(element(0x00480106, "SH", "2"), True)
    raw = RawDataElement(BaseTag(0x00480105), "SQ", len(value), value, 0, False, True)
    forget_converted()
    first = _sequence_json(raw, {0x00480106: None}, "iso8859")
    assert _sequence_json(raw, {0x00480106: None}, "iso8859") == first  # another dict
    every = _sequence_json(raw, None, "iso8859")
    assert first["Value"] == [{"00480106": {"vr": "SH", "Value": ["1"]}},
                              {"00480106": {"vr": "SH", "Value": ["2"]}}]
    assert every["Value"][0]["00480107"] == {"vr": "ST", "Value": ["passed over"]}
