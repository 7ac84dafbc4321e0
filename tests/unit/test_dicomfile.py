"""Unit tests of idcfs.source.dicomfile: header and frame index of a DICOM file read by
byte ranges, checked against pydicom reading the whole file, with the reads counted."""

from __future__ import annotations

import dataclasses
import json
import math
import struct
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.encaps import generate_frames

from idcfs.errors import FetchError, MetadataError
from idcfs.slide.parse import parse_slide
from idcfs.source.dicomfile import (
    FileHeader,
    FrameIndex,
    FramePosition,
    frame_bytes,
    frame_index,
    read_header,
    strip_jpeg_padding,
)
from tests.support.file_layouts import LAYOUTS, LayoutFile, write_layouts

DATA = Path(__file__).parent.parent / "data"
IDC_STYLE = DATA / "idc-style"
IDC_FILES = sorted(IDC_STYLE.glob("DCM_*"))
REAL_FILES = sorted((DATA / "real").glob("*.dcm"))
SCAN_RANGE = 16 * 1024
NEEDED_TAGS = (
    "00020010", "00080008", "00080016", "00080018", "0020000D", "0020000E", "00280002",
    "00280004", "00280008", "00280010", "00280011", "00280100", "00280101", "00480006",
    "00480007", "00209311", "52009229",
)


class CountingFile:
    """A `read(start, length)` over bytes that counts its calls."""

    def __init__(self, data: bytes) -> None:
        self.data, self.calls = data, 0

    def read(self, start: int, length: int) -> bytes:
        self.calls += 1
        return self.data[start : start + length]

    @property
    def size(self) -> int:
        return len(self.data)


@pytest.fixture(scope="module")
def layouts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, LayoutFile]:
    return write_layouts(tmp_path_factory.mktemp("layouts"))


@pytest.fixture(scope="module")
def results(layouts: dict[str, LayoutFile]) -> dict[str, tuple]:
    """`located` of every layout, once (the sparse header's JSON takes a second)."""
    return {name: located(layout.path.read_bytes()) for name, layout in layouts.items()}


def located(data: bytes, scan_range: int = SCAN_RANGE) -> tuple[FileHeader, FrameIndex,
                                                                 list[bytes], int, int]:
    """(header, index, frames read through ranges, header reads, index reads)."""
    source = CountingFile(data)
    header = read_header(source.read, source.size)
    header_reads = source.calls
    index = frame_index(source.read, source.size, header, scan_range=scan_range)
    index_reads = source.calls - header_reads
    frames = [frame_bytes(source.read(p.start, p.length), p.start, p) for p in index]
    return header, index, frames, header_reads, index_reads


def pydicom_frames(path: Path) -> list[bytes]:
    """The frames as pydicom extracts them from the whole file."""
    ds = pydicom.dcmread(path)
    count = int(ds.get("NumberOfFrames", 1) or 1)
    if not ds.file_meta.TransferSyntaxUID.is_encapsulated:
        pixels = ds.pixel_array.reshape((count, -1))
        dtype = "<u2" if ds.BitsAllocated == 16 else "u1"
        return [frame.astype(dtype).tobytes() for frame in pixels]
    offsets = None
    if "ExtendedOffsetTable" in ds:
        offsets = (ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths)
    return list(generate_frames(ds.PixelData, number_of_frames=count, extended_offsets=offsets))


def index_read_bound(header: FileHeader, method: str, scan_range: int = SCAN_RANGE) -> int:
    """The most reads an index may take: a handful, or one per scan range for a scan."""
    if method == "scan":
        return 1 + math.ceil((header.size - header.pixel_data_offset) / scan_range) + 2
    return {"native": 0, "eot": 2, "bot": 3, "tiff": 4}[method]


# --------------------------------------------------------------------------- layouts


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_layout_frames_match_pydicom(layouts: dict[str, LayoutFile], results: dict[str, tuple],
                                     name: str) -> None:
    layout = layouts[name]
    header, index, frames, header_reads, index_reads = results[name]
    assert index.method == layout.method
    reference = pydicom_frames(layout.path)
    assert len(frames) == len(reference) == header.frame_count == len(layout.frames)
    for number, (ours, theirs, written) in enumerate(
            zip(frames, reference, layout.frames, strict=True), 1):
        assert strip_jpeg_padding(ours) == strip_jpeg_padding(theirs), f"frame {number}"
        assert strip_jpeg_padding(ours) == written, f"frame {number}"
    assert header_reads == (2 if name == "sparse_long_header" else 1)
    assert index_reads <= index_read_bound(header, index.method)


@pytest.mark.parametrize("name", ["bot", "multi_fragment", "scan", "tiff", "native"])
def test_consecutive_frames_come_from_one_run(layouts: dict[str, LayoutFile], name: str) -> None:
    data = layouts[name].path.read_bytes()
    header, index, frames, _, _ = located(data)
    start, end = index[0].start, index[-1].end
    assert all(a.end <= b.start for a, b in zip(index, index[1:], strict=False))
    run = data[start:end]
    assert [frame_bytes(run, start, position) for position in index] == frames


def test_odd_frames_keep_their_pad_byte_until_stripped(layouts: dict[str, LayoutFile]) -> None:
    layout = layouts["odd_frames"]
    _, _, frames, _, _ = located(layout.path.read_bytes())
    assert all(len(frame) % 2 == 1 for frame in layout.frames)
    assert all(frame.endswith(b"\xff\xd9\x00") for frame in frames)
    assert [strip_jpeg_padding(frame) for frame in frames] == layout.frames


@pytest.mark.parametrize("name", ["eot", "tiff"])
def test_lengths_from_tables_exclude_the_pad(layouts: dict[str, LayoutFile], name: str) -> None:
    layout = layouts[name]
    _, index, frames, _, _ = located(layout.path.read_bytes())
    assert frames == layout.frames
    assert all(p.fragments is not None and len(p.fragments) == 1 for p in index)


def test_multi_fragment_frames_are_joined(layouts: dict[str, LayoutFile]) -> None:
    _, index, _, _, _ = located(layouts["multi_fragment_scan"].path.read_bytes())
    assert [len(p.fragments or ()) for p in index] == [2 + i % 2 for i in range(len(index))]


def test_header_json_has_what_the_slide_model_needs(layouts: dict[str, LayoutFile],
                                                    results: dict[str, tuple]) -> None:
    for layout in layouts.values():
        header = results[layout.name][0]
        missing = [tag for tag in NEEDED_TAGS if tag not in header.dicom_json]
        assert not missing, (layout.name, missing)
        assert header.dicom_json["00020010"]["Value"] == [layout.spec.codec.transfer_syntax]
        assert not [tag for tag in header.dicom_json if tag.startswith("7FE0")]
        assert len(json.dumps(header.dicom_json)) < 12000 + 400 * header.frame_count  # no bulk data
    sparse = results["sparse_long_header"][0]
    assert len(sparse.dicom_json["52009230"]["Value"]) == sparse.frame_count
    assert sparse.pixel_data_offset > 256 * 1024


def test_scan_reads_the_pixel_data_in_large_ranges(layouts: dict[str, LayoutFile],
                                                   results: dict[str, tuple]) -> None:
    data = layouts["sparse_long_header"].path.read_bytes()
    header, index, _, _, _ = results["sparse_long_header"]
    source = CountingFile(data)
    assert frame_index(source.read, source.size, header) == index  # default: 4 MiB ranges
    assert source.calls == 2  # the Basic Offset Table item, then one range for 2 MB
    assert len(index) == 2731


def test_a_long_header_of_defined_lengths_takes_one_more_read(
        layouts: dict[str, LayoutFile], results: dict[str, tuple]) -> None:
    """The per-frame groups (a sequence of defined length) run past the first range:
    their length says how far to read next."""
    data = layouts["sparse_long_header"].path.read_bytes()
    source = CountingFile(data)
    header = read_header(source.read, source.size, first_range=4096)
    assert header.pixel_data_offset > 64 * 4096
    assert source.calls == 2
    assert header == results["sparse_long_header"][0]


def test_a_long_header_of_undefined_lengths_grows_by_doubling(
        layouts: dict[str, LayoutFile], results: dict[str, tuple], tmp_path: Path) -> None:
    dataset = pydicom.dcmread(layouts["sparse_long_header"].path)
    groups = dataset[0x52009230]
    groups.is_undefined_length = True
    for item in groups.value:
        item.is_undefined_length_sequence_item = True
    path = tmp_path / "undefined.dcm"
    dataset.save_as(path)
    data = path.read_bytes()
    ends: list[int] = []

    def read(start: int, length: int) -> bytes:
        ends.append(start + length)
        return data[start : start + length]

    header = read_header(read, len(data), first_range=4096)
    assert header.pixel_data_offset > 64 * 4096
    assert len(ends) > 3 and ends[-2] < header.pixel_data_offset + 12 <= ends[-1]
    assert all(later == 2 * earlier for earlier, later in zip(ends[1:], ends[2:], strict=False))
    assert header.dicom_json == results["sparse_long_header"][0].dicom_json


def test_extended_offset_table_is_in_the_header(layouts: dict[str, LayoutFile]) -> None:
    header, _, _, _, _ = located(layouts["eot"].path.read_bytes())
    assert header.extended_offsets is not None and header.extended_lengths is not None
    assert len(header.extended_offsets) == header.frame_count
    assert list(header.extended_lengths) == [len(f) for f in layouts["eot"].frames]


def test_index_and_header_survive_serialisation(layouts: dict[str, LayoutFile]) -> None:
    for name in ("bot", "multi_fragment_scan", "eot", "native"):
        header, index, _, _, _ = located(layouts[name].path.read_bytes())
        assert FrameIndex.from_bytes(index.to_bytes()) == index
        assert FileHeader.from_json(json.loads(json.dumps(header.to_json()))) == header
    packed = index.to_bytes()
    assert len(packed) < 40 * len(index)
    for damaged in (b"", b"nonsense", packed[:-3], packed[:8] + b"x" * 20):
        with pytest.raises(FetchError):
            FrameIndex.from_bytes(damaged)
    with pytest.raises(MetadataError):
        FileHeader.from_json({"dicom": {}})


# --------------------------------------------------------------------------- IDC-style


@pytest.mark.parametrize("path", IDC_FILES, ids=lambda path: path.name)
def test_idc_style_frames_match_pydicom(path: Path) -> None:
    data = path.read_bytes()
    header, index, frames, header_reads, index_reads = located(data)
    assert index.method == ("tiff" if header.encapsulated else "native")
    reference = pydicom_frames(path)
    assert [strip_jpeg_padding(f) for f in frames] == [strip_jpeg_padding(f) for f in reference]
    assert all(not frame.endswith(b"\xff\xd9\x00") for frame in frames)  # TIFF counts: no pad
    assert header.preamble[:8] == bytes.fromhex("49492b0008000000")
    assert header_reads == 1
    assert index_reads <= index_read_bound(header, index.method)
    assert [tag for tag in NEEDED_TAGS if tag not in header.dicom_json] == []
    assert "00282000" not in json.dumps(header.dicom_json)  # the 3 KB ICC profile is dropped


def test_idc_style_slide_matches_dicomweb_metadata() -> None:
    headers = [read_header(CountingFile(p.read_bytes()).read, p.stat().st_size)
               for p in IDC_FILES]
    first = headers[0].dicom_json
    study, series = first["0020000D"]["Value"][0], first["0020000E"]["Value"][0]
    from_files = parse_slide(study, series, [h.dicom_json for h in headers])
    from_web = parse_slide(study, series, [dicomweb_like(p) for p in IDC_FILES])
    assert from_files.levels == from_web.levels
    assert from_files.associated == from_web.associated
    assert [(lv.width, lv.height, lv.tile_width) for lv in from_files.levels] == [
        (3000, 2000, 240), (750, 500, 240), (187, 125, 240)]
    assert len(from_files.levels[0].grids[0].tiles) == 13 * 9
    assert sorted(a.kind for a in from_files.associated) == ["label", "overview", "thumbnail"]
    syntaxes = {info.transfer_syntax for info in from_files.instances.values()}
    assert syntaxes == {"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.1"}


def dicomweb_like(path: Path) -> dict:
    """What a DICOMweb server's metadata says of the file: every attribute, bulk data
    as URIs, no file meta."""
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return ds.to_json_dict(bulk_data_threshold=1024,
                           bulk_data_element_handler=lambda _: "http://server/bulk")


@pytest.mark.parametrize("path", REAL_FILES, ids=lambda path: path.name)
def test_real_files_frames_match_pydicom(path: Path) -> None:
    header, index, frames, header_reads, index_reads = located(path.read_bytes())
    assert [strip_jpeg_padding(f) for f in frames] == [
        strip_jpeg_padding(f) for f in pydicom_frames(path)]
    assert header_reads <= 2
    assert index_reads <= index_read_bound(header, index.method)


# --------------------------------------------------------------------------- damage


def _index(data: bytes) -> FrameIndex:
    return frame_index(CountingFile(data).read, len(data),
                       read_header(CountingFile(data).read, len(data)))


@pytest.mark.parametrize("cut", [100, 2000, "before_pixels"])
def test_truncated_header_is_a_metadata_error(layouts: dict[str, LayoutFile],
                                              cut: int | str) -> None:
    data = layouts["bot"].path.read_bytes()
    if cut == "before_pixels":
        cut = read_header(CountingFile(data).read, len(data)).pixel_data_offset - 12
    with pytest.raises(MetadataError):
        read_header(CountingFile(data[: int(cut)]).read, int(cut))


@pytest.mark.parametrize("name", ["bot", "eot", "scan", "multi_fragment_scan", "tiff", "native"])
def test_truncated_pixel_data_is_a_fetch_error(layouts: dict[str, LayoutFile], name: str) -> None:
    data = layouts[name].path.read_bytes()
    header = read_header(CountingFile(data).read, len(data))
    cut = header.pixel_data_offset + 64 if name == "native" else _index(data)[-1].start + 10
    short = data[:cut]
    with pytest.raises((FetchError, MetadataError)):
        index = frame_index(CountingFile(short).read, len(short), header)
        for position in index:
            frame_bytes(short[position.start : position.end], position.start, position)


def test_a_file_shorter_than_its_size_is_a_fetch_error(layouts: dict[str, LayoutFile]) -> None:
    data = layouts["scan"].path.read_bytes()
    header = read_header(CountingFile(data).read, len(data))
    with pytest.raises(FetchError):
        frame_index(CountingFile(data[: len(data) // 2]).read, len(data), header)


def test_garbage_is_a_metadata_error(layouts: dict[str, LayoutFile]) -> None:
    data = layouts["bot"].path.read_bytes()
    rng = np.random.default_rng(7)
    noise = rng.integers(0, 256, 4000, dtype=np.uint8).tobytes()
    for bad in (noise, noise[:128] + b"DICM" + noise[132:], b"\0" * 50):
        with pytest.raises(MetadataError):
            read_header(CountingFile(bad).read, len(bad))
    no_dicm = data[:128] + b"XXXX" + data[132:]
    with pytest.raises(MetadataError):
        read_header(CountingFile(no_dicm).read, len(no_dicm))


def test_garbage_preamble_falls_back_to_the_scan(layouts: dict[str, LayoutFile]) -> None:
    data = bytearray(layouts["tiff"].path.read_bytes())
    data[:16] = b"II+\0\x08\0\0\0" + struct.pack("<Q", 10**12)  # IFD beyond the file
    index = _index(bytes(data))
    assert index.method == "scan" and len(index) == len(layouts["tiff"].frames)


def test_wrong_basic_offsets_are_a_fetch_error(layouts: dict[str, LayoutFile]) -> None:
    data = layouts["bot"].path.read_bytes()
    header = read_header(CountingFile(data).read, len(data))
    table = header.pixel_data_offset + 8
    for offsets in ([0, 10**9], [5, 6], [0] * 15, [0, 4] + [8] * 13):
        packed = struct.pack(f"<{len(offsets)}L", *offsets).ljust(4 * 15, b"\0")
        bad = data[:table] + packed[: 4 * 15] + data[table + 4 * 15 :]
        with pytest.raises(FetchError):
            index = _index(bad)
            for position in index:
                frame_bytes(bad[position.start : position.end], position.start, position)


def test_frame_count_not_matching_the_fragments_is_a_fetch_error(
        layouts: dict[str, LayoutFile]) -> None:
    data = layouts["multi_fragment_scan"].path.read_bytes()
    header = dataclasses.replace(read_header(CountingFile(data).read, len(data)), frame_count=9)
    with pytest.raises(FetchError, match="image starts"):
        frame_index(CountingFile(data).read, len(data), header)
    native = layouts["native"].path.read_bytes()
    header = read_header(CountingFile(native).read, len(native))
    with pytest.raises(FetchError):
        frame_index(CountingFile(native).read, len(native),
                    dataclasses.replace(header, frame_count=header.frame_count + 1))


def test_frame_bytes_checks_its_run() -> None:
    position = FramePosition(100, 120, None)
    with pytest.raises(FetchError):
        frame_bytes(b"\0" * 10, 100, position)
    with pytest.raises(FetchError):
        frame_bytes(b"\0" * 20, 100, position)  # no item header where the frame starts
    item = b"\xfe\xff\x00\xe0" + struct.pack("<L", 12) + b"x" * 12
    assert frame_bytes(item, 100, position) == b"x" * 12
    with pytest.raises(FetchError):
        frame_bytes(item, 100, FramePosition(100, 118, None))


def test_read_errors_become_fetch_errors(layouts: dict[str, LayoutFile]) -> None:
    data = layouts["scan"].path.read_bytes()
    header = read_header(CountingFile(data).read, len(data))

    def failing(start: int, length: int) -> bytes:
        raise OSError("connection reset")

    with pytest.raises(FetchError, match="connection reset"):
        frame_index(failing, len(data), header)


def test_strip_jpeg_padding() -> None:
    assert strip_jpeg_padding(b"\xff\xd8xx\xff\xd9\x00") == b"\xff\xd8xx\xff\xd9"
    assert strip_jpeg_padding(b"\xff\xd8xx\xff\xd9") == b"\xff\xd8xx\xff\xd9"
    assert strip_jpeg_padding(b"\xff\xd8x\x00") == b"\xff\xd8x\x00"

