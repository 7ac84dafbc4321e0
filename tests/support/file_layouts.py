"""Small DICOM whole-slide instance files in every layout a ranged reader must handle.

Each layout writes one instance (seconds for all of them, deterministic) built with
`tests.support.slides` (`InstanceSpec`, `build_dataset`, its codecs and textures), then
lays its Pixel Data out differently:

| layout | Pixel Data | how frames are found |
|---|---|---|
| bot | one fragment per frame, Basic Offset Table | bot |
| eot | one fragment per frame, empty BOT, Extended Offset Table (lengths without pad) | eot |
| tiff | no offset table; BigTIFF header in the preamble, IFD after the pixel data | tiff |
| tiff_classic | the same with a classic TIFF header, a decoy IFD first | tiff |
| tiff_wrong_offsets | TIFF tags whose offsets miss the fragments | scan (fallback) |
| scan | no offset table, no TIFF | scan |
| multi_fragment | 2-3 fragments per frame, Basic Offset Table | bot |
| multi_fragment_scan | 2-3 fragments per frame, no offset table: frames start at SOI | scan |
| odd_frames | every frame of odd length (one pad byte), BOT | bot |
| sparse_long_header | TILED_SPARSE, per-frame groups > 256 KiB, no offset table | scan |
| jpeg2000 | JPEG 2000, 2-3 fragments per frame, no offset table | scan |
| native | uncompressed 8-bit RGB | native |

The TIFF personality is written as PixelMed writes it (see tests/data/idc-style/README):
bytes 0-7 (0-15 for BigTIFF) of the preamble are the TIFF header, the IFD sits in a
Data Set Trailing Padding (FFFC,FFFC) element after the Pixel Data, its TileOffsets
point at each fragment's first byte and TileByteCounts exclude the pad byte.

Frames are made unique and of a chosen length parity by a JPEG comment segment holding
the frame number (`numbered`), so "frame i is frame i" is checkable.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from pydicom.dataset import Dataset

from tests.support.slides import (
    CODECS,
    VOLUME_ORIGINAL,
    Codec,
    InstanceSpec,
    SlideIdentity,
    _rng,
    build_dataset,
    cut_tiles,
    tissue_texture,
)

ITEM = b"\xfe\xff\x00\xe0"
COMMENT = b"\xff\xfe"
RGB_NATIVE = replace(CODECS["raw16"], photometric="RGB", samples=3, bits_allocated=8,
                     bits_stored=8)
TIFF_COMPRESSION = {"1.2.840.10008.1.2.4.50": 7, "1.2.840.10008.1.2.4.91": 34712}


@dataclass(frozen=True)
class LayoutFile:
    """One written instance: its file, the frames it holds (without pad) and the method
    a ranged reader should locate them with."""

    name: str
    path: Path
    frames: list[bytes]
    method: str
    spec: InstanceSpec


# --------------------------------------------------------------------------- frames


def numbered(frame: bytes, number: int, odd: bool | None = None) -> bytes:
    """The JPEG with a comment segment "frame <number>" after SOI; the comment is one
    byte longer when needed to make the frame's length odd (True) or even (False)."""
    text = f"frame {number}".encode()
    if odd is not None and (len(frame) + 4 + len(text)) % 2 != int(odd):
        text += b" "
    return frame[:2] + COMMENT + struct.pack(">H", len(text) + 2) + text + frame[2:]


def encoded_tiles(codec: Codec, size: tuple[int, int], tile: int, seed: str,
                  odd: bool | None = None, count: int | None = None) -> list[bytes]:
    """Frames of a `size` texture cut in `tile` squares, column fastest; with `count`,
    that many frames cycling over the tiles (numbered, so each differs)."""
    tiles = list(cut_tiles(tissue_texture(_rng("layouts", seed), *size), tile, tile).values())
    encoded = [codec.encode(pixels) for pixels in tiles]
    if not codec.encapsulated:
        return encoded
    if codec.transfer_syntax != "1.2.840.10008.1.2.4.50":
        return encoded
    total = count or len(encoded)
    return [numbered(encoded[i % len(encoded)], i + 1, odd) for i in range(total)]


def split(frame: bytes, parts: int) -> list[bytes]:
    """`parts` fragments of even length (the last may be odd), at least one byte each."""
    if parts <= 1:
        return [frame]
    step = max(2, (len(frame) // parts) & ~1)
    cuts = [min(i * step, len(frame)) for i in range(parts)] + [len(frame)]
    return [frame[a:b] for a, b in zip(cuts, cuts[1:], strict=False) if b > a]


def item(fragment: bytes) -> bytes:
    """One item, its content padded to even length with 0x00."""
    padded = fragment + b"\0" * (len(fragment) % 2)
    return ITEM + struct.pack("<L", len(padded)) + padded


@dataclass(frozen=True)
class Encapsulated:
    """Encapsulated Pixel Data and where each frame's items start (from the first item
    after the Basic Offset Table) and how long each frame's content is (without pad)."""

    value: bytes
    frame_offsets: list[int]
    frame_lengths: list[int]
    fragment_offsets: list[list[int]]  # content offsets of each frame's fragments


def encapsulate(frames: Sequence[bytes], fragments: Sequence[int] | None = None,
                bot: bool = True) -> Encapsulated:
    """Items for `frames`, frame i split in `fragments[i]` fragments (default one)."""
    body, offsets, content = bytearray(), [], []
    for index, frame in enumerate(frames):
        offsets.append(len(body))
        starts = []
        for fragment in split(frame, fragments[index] if fragments else 1):
            starts.append(len(body) + 8)
            body += item(fragment)
        content.append(starts)
    table = struct.pack(f"<{len(frames)}L", *offsets) if bot else b""
    head = ITEM + struct.pack("<L", len(table)) + table
    shifted = [[len(head) + start for start in starts] for starts in content]
    return Encapsulated(bytes(head + body), offsets, [len(f) for f in frames], shifted)


# --------------------------------------------------------------------------- TIFF


def tiff_directories(big: bool, ifd_offset: int,
                     directories: Sequence[Sequence[tuple[int, int, Sequence[int]]]]) -> bytes:
    """IFDs (entries (tag, type, values)) chained from `ifd_offset`, each followed by
    its out-of-line values; the bytes to place at that file offset."""
    out = bytearray()
    for index, entries in enumerate(directories):
        out += _directory(big, ifd_offset + len(out), entries, last=index == len(directories) - 1)
    return bytes(out)


_TYPE_FORMATS = {3: "H", 4: "L", 16: "Q"}


def _directory(big: bool, at: int, entries: Sequence[tuple[int, int, Sequence[int]]],
               last: bool) -> bytes:
    count_format, entry_size, inline = ("<Q", 20, 8) if big else ("<H", 12, 4)
    pointer = "<Q" if big else "<L"
    table_size = struct.calcsize(count_format) + len(entries) * entry_size + (8 if big else 4)
    table, extra = bytearray(struct.pack(count_format, len(entries))), bytearray()
    for tag, kind, values in sorted(entries):
        data = struct.pack(f"<{len(values)}{_TYPE_FORMATS[kind]}", *values)
        table += struct.pack("<HH", tag, kind) + struct.pack(pointer, len(values))
        if len(data) <= inline:
            table += data.ljust(inline, b"\0")
        else:
            table += struct.pack(pointer, at + table_size + len(extra))
            extra += data + b"\0" * (len(data) % 2)
    next_ifd = 0 if last else at + table_size + len(extra)
    return bytes(table + struct.pack(pointer, next_ifd) + extra)


def tiff_header(big: bool, ifd_offset: int) -> bytes:
    """The first bytes of the preamble: little-endian TIFF or BigTIFF header."""
    if big:
        return b"II+\0" + struct.pack("<HHQ", 8, 0, ifd_offset)
    return b"II*\0" + struct.pack("<L", ifd_offset)


@dataclass(frozen=True)
class TiledImage:
    """What a TIFF directory says of a tiled image besides where its tiles are."""

    width: int
    height: int
    samples: int
    transfer_syntax: str
    tile_width: int
    tile_height: int

    @classmethod
    def of_spec(cls, spec: InstanceSpec) -> TiledImage:
        return cls(spec.width, spec.height, spec.codec.samples, spec.codec.transfer_syntax,
                   spec.tile_width, spec.tile_height)


def _image_entries(image: TiledImage, offsets: Sequence[int], counts: Sequence[int],
                   big: bool) -> list[tuple[int, int, Sequence[int]]]:
    long_kind = 16 if big else 4
    return [
        (256, 4, [image.width]), (257, 4, [image.height]), (258, 3, [8] * image.samples),
        (259, 3, [TIFF_COMPRESSION.get(image.transfer_syntax, 1)]), (262, 3, [2]),
        (277, 3, [image.samples]), (284, 3, [1]), (322, 3, [image.tile_width]),
        (323, 3, [image.tile_height]), (324, long_kind, offsets), (325, long_kind, counts),
    ]


# --------------------------------------------------------------------------- files


def layout_spec(name: str, frames: list[bytes], codec: Codec, size: tuple[int, int],
                tile: int, positions: list[tuple[int, int]] | None = None) -> InstanceSpec:
    """A level-0 VOLUME instance of a one-instance slide named after the layout."""
    return InstanceSpec(SlideIdentity.for_name(f"layout_{name}"), name, 1, codec,
                        VOLUME_ORIGINAL, size[0], size[1], tile, tile, 0.0005, frames,
                        positions=positions, offset_table=False)


def _set_pixels(ds: Dataset, value: bytes) -> None:
    ds.PixelData = value
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True


def _save(ds: Dataset, path: Path, preamble: bytes = b"") -> bytes:
    ds.preamble = preamble.ljust(128, b"\0")
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    data = buffer.getvalue()
    path.write_bytes(data)
    return data


def write_encapsulated(path: Path, spec: InstanceSpec, fragments: Sequence[int] | None = None,
                       *, bot: bool = True, eot: bool = False) -> Path:
    """An instance whose Pixel Data has the given fragments and offset tables."""
    pixels = encapsulate(spec.frames, fragments, bot=bot and not eot)
    ds = build_dataset(spec)
    _set_pixels(ds, pixels.value)
    if eot:
        ds.ExtendedOffsetTable = struct.pack(f"<{len(spec.frames)}Q", *pixels.frame_offsets)
        ds.ExtendedOffsetTableLengths = struct.pack(f"<{len(spec.frames)}Q",
                                                    *pixels.frame_lengths)
    _save(ds, path)
    return path


def write_dual_personality(path: Path, spec: InstanceSpec, *, big: bool = True,
                           decoy: bool = False, offset_shift: int = 0) -> Path:
    """A DICOM-TIFF file: no offset table, a TIFF header in the preamble and the IFD(s)
    in a trailing padding element; `offset_shift` moves every TileOffsets value."""
    pixels = encapsulate(spec.frames, bot=False)
    image = TiledImage.of_spec(spec)
    counts = pixels.frame_lengths
    directories = [_image_entries(image, [0] * len(counts), counts, big)]
    if decoy:  # a one-tile image first, as a thumbnail IFD would be
        directories.insert(0, _image_entries(image, [0], [counts[0]], big))
    size = len(tiff_directories(big, 0, directories))
    ds = build_dataset(spec)
    _set_pixels(ds, pixels.value)
    ds.DataSetTrailingPadding = b"\0" * (size + size % 2)
    data = bytearray(_save(ds, path))
    ifd_at = len(data) - len(ds.DataSetTrailingPadding)
    value_at = ifd_at - 12 - 8 - len(pixels.value)
    assert data[value_at - 12 : value_at - 8] == b"\xe0\x7f\x10\x00", "Pixel Data not found"
    offsets = [value_at + starts[0] + offset_shift for starts in pixels.fragment_offsets]
    directories[-1] = _image_entries(image, offsets, counts, big)
    if decoy:
        directories[0] = _image_entries(image, [offsets[0]], [counts[0]], big)
    ifds = tiff_directories(big, ifd_at, directories)
    data[ifd_at : ifd_at + len(ifds)] = ifds
    data[: 16 if big else 8] = tiff_header(big, ifd_at)
    path.write_bytes(bytes(data))
    return path


def write_native(path: Path, spec: InstanceSpec) -> Path:
    """An uncompressed instance (frames concatenated in the Pixel Data)."""
    ds = build_dataset(spec)
    _save(ds, path)
    return path


# --------------------------------------------------------------------------- layouts


def _jpeg_spec(name: str, odd: bool | None = None) -> InstanceSpec:
    frames = encoded_tiles(CODECS["jpeg_ybr"], (320, 192), 64, name, odd)
    return layout_spec(name, frames, CODECS["jpeg_ybr"], (320, 192), 64)


def _fragment_counts(frames: int) -> list[int]:
    return [2 + i % 2 for i in range(frames)]


def _bot(out: Path) -> LayoutFile:
    spec = _jpeg_spec("bot")
    return LayoutFile("bot", write_encapsulated(out / "bot.dcm", spec), spec.frames, "bot", spec)


def _eot(out: Path) -> LayoutFile:
    spec = _jpeg_spec("eot", odd=True)
    path = write_encapsulated(out / "eot.dcm", spec, eot=True)
    return LayoutFile("eot", path, spec.frames, "eot", spec)


def _tiff(out: Path) -> LayoutFile:
    spec = _jpeg_spec("tiff")
    path = write_dual_personality(out / "tiff.dcm", spec)
    return LayoutFile("tiff", path, spec.frames, "tiff", spec)


def _tiff_classic(out: Path) -> LayoutFile:
    spec = _jpeg_spec("tiff_classic")
    path = write_dual_personality(out / "tiff_classic.dcm", spec, big=False, decoy=True)
    return LayoutFile("tiff_classic", path, spec.frames, "tiff", spec)


def _tiff_wrong_offsets(out: Path) -> LayoutFile:
    spec = _jpeg_spec("tiff_wrong_offsets")
    path = write_dual_personality(out / "tiff_wrong_offsets.dcm", spec, offset_shift=6)
    return LayoutFile("tiff_wrong_offsets", path, spec.frames, "scan", spec)


def _scan(out: Path) -> LayoutFile:
    spec = _jpeg_spec("scan")
    path = write_encapsulated(out / "scan.dcm", spec, bot=False)
    return LayoutFile("scan", path, spec.frames, "scan", spec)


def _multi_fragment(out: Path) -> LayoutFile:
    spec = _jpeg_spec("multi_fragment")
    path = write_encapsulated(out / "multi_fragment.dcm", spec, _fragment_counts(15))
    return LayoutFile("multi_fragment", path, spec.frames, "bot", spec)


def _multi_fragment_scan(out: Path) -> LayoutFile:
    spec = _jpeg_spec("multi_fragment_scan", odd=True)
    path = write_encapsulated(out / "multi_fragment_scan.dcm", spec, _fragment_counts(15),
                              bot=False)
    return LayoutFile("multi_fragment_scan", path, spec.frames, "scan", spec)


def _odd_frames(out: Path) -> LayoutFile:
    spec = _jpeg_spec("odd_frames", odd=True)
    path = write_encapsulated(out / "odd_frames.dcm", spec)
    return LayoutFile("odd_frames", path, spec.frames, "bot", spec)


SPARSE_GRID = (64, 48)
"""Tile grid of `sparse_long_header`: 16-pixel tiles, 2,731 of its 3,072 stored, so the
per-frame functional groups (about 130 bytes a frame) pass 256 KiB."""


def _sparse_long_header(out: Path) -> LayoutFile:
    columns, rows = SPARSE_GRID
    positions = [(c, r) for r in range(rows) for c in range(columns) if (c * 7 + r) % 9 < 8]
    size = (columns * 16, rows * 16)
    frames = encoded_tiles(CODECS["jpeg_ybr"], (64, 64), 16, "sparse", count=len(positions))
    spec = layout_spec("sparse_long_header", frames, CODECS["jpeg_ybr"], size, 16, positions)
    path = write_encapsulated(out / "sparse_long_header.dcm", spec, bot=False)
    return LayoutFile("sparse_long_header", path, frames, "scan", spec)


def _jpeg2000(out: Path) -> LayoutFile:
    codec = CODECS["j2k"]
    frames = encoded_tiles(codec, (256, 128), 64, "jpeg2000")
    spec = layout_spec("jpeg2000", frames, codec, (256, 128), 64)
    path = write_encapsulated(out / "jpeg2000.dcm", spec, _fragment_counts(len(frames)),
                              bot=False)
    return LayoutFile("jpeg2000", path, frames, "scan", spec)


def _native(out: Path) -> LayoutFile:
    frames = encoded_tiles(RGB_NATIVE, (200, 130), 64, "native")
    spec = layout_spec("native", frames, RGB_NATIVE, (200, 130), 64)
    return LayoutFile("native", write_native(out / "native.dcm", spec), frames, "native", spec)


LAYOUTS: dict[str, Callable[[Path], LayoutFile]] = {
    "bot": _bot,
    "eot": _eot,
    "tiff": _tiff,
    "tiff_classic": _tiff_classic,
    "tiff_wrong_offsets": _tiff_wrong_offsets,
    "scan": _scan,
    "multi_fragment": _multi_fragment,
    "multi_fragment_scan": _multi_fragment_scan,
    "odd_frames": _odd_frames,
    "sparse_long_header": _sparse_long_header,
    "jpeg2000": _jpeg2000,
    "native": _native,
}


def write_layouts(out_dir: Path, names: Sequence[str] | None = None) -> dict[str, LayoutFile]:
    """Write the layouts (all, or those named) into `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    return {name: LAYOUTS[name](out_dir) for name in (names or list(LAYOUTS))}



def add_tiff_personality(path: Path, big: bool = True) -> Path:
    """Give an encapsulated instance file without offset tables (one fragment per frame)
    a TIFF personality, as IDC's converter writes it: the file is rewritten with the IFD
    in a trailing padding element, its TileOffsets at the fragments (found by a scan)."""
    import pydicom

    from idcfs.source.dicomfile import frame_index, read_header

    ds = pydicom.dcmread(path)
    frames = int(ds.NumberOfFrames)
    image = TiledImage(int(ds.TotalPixelMatrixColumns), int(ds.TotalPixelMatrixRows),
                       int(ds.SamplesPerPixel), str(ds.file_meta.TransferSyntaxUID),
                       int(ds.Columns), int(ds.Rows))
    size = len(tiff_directories(big, 0, [_image_entries(image, [0] * frames, [0] * frames,
                                                        big)]))
    ds.DataSetTrailingPadding = b"\0" * (size + size % 2)
    ds.save_as(path)
    data = bytearray(path.read_bytes())

    def read(start: int, length: int) -> bytes:
        return bytes(data[start : start + length])

    index = frame_index(read, len(data), read_header(read, len(data)))
    offsets = [position.content_start for position in index]
    counts = [position.content_bound - (data[position.end - 1] == 0) for position in index]
    ifd_at = len(data) - len(ds.DataSetTrailingPadding)
    ifds = tiff_directories(big, ifd_at, [_image_entries(image, offsets, counts, big)])
    data[ifd_at : ifd_at + len(ifds)] = ifds
    data[: 16 if big else 8] = tiff_header(big, ifd_at)
    path.write_bytes(bytes(data))
    return path
