"""Slides as real converters write them (issue 12, 4c), without a server.

- wsidicomizer's `add_missing_levels` stores JPEG 2000 edge frames cropped to the image:
  they are served at the size they hold, like stored JPEG frames.
- Pyramids mixing TILED_SPARSE levels at one Z with TILED_FULL levels that give no Z are
  one focal plane; slides with several real planes keep them.
- What highdicom's, wsidicom's and ez-wsi's test data do (the files of tests/data/real
  and the DICOM JSON of ez-wsi's testdata, reduced here to the attributes that matter).
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

import imagecodecs
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.encaps import generate_frames

from idcfs.dicom.pixels import PixelFormat
from idcfs.errors import MetadataError
from idcfs.slide.model import Slide
from idcfs.slide.parse import parse_slide
from idcfs.tiles.convert import TileDecodeError, decode_frame, psnr, served_jpeg

WSI = "1.2.840.10008.5.1.4.1.1.77.1.6"
J2K = "1.2.840.10008.1.2.4.90"
HTJ2K = "1.2.840.10008.1.2.4.201"
JPEG_LS = "1.2.840.10008.1.2.4.80"
BASELINE = "1.2.840.10008.1.2.4.50"
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
REAL_DIR = Path(__file__).parent.parent / "data" / "real"


def element(vr: str, *values: Any) -> dict[str, Any]:
    return {"vr": vr, "Value": list(values)}


def instance(uid: str, width: int, height: int, frames: int, flavour: str = "VOLUME",
             tile: int = 256, **extra: Any) -> dict[str, Any]:
    meta = {
        "00080016": element("UI", WSI), "00080018": element("UI", uid),
        "00080008": element("CS", "ORIGINAL", "PRIMARY", flavour, "NONE"),
        "00280010": element("US", tile), "00280011": element("US", tile),
        "00280002": element("US", 3), "00280100": element("US", 8),
        "00280004": element("CS", "YBR_FULL_422"), "00280008": element("IS", frames),
        "00480006": element("UL", width), "00480007": element("UL", height),
    }
    meta.update(extra)
    return meta


def positions(*cells: tuple[int, int, float | None], tile: int = 256) -> dict[str, Any]:
    """A PerFrameFunctionalGroupsSequence: one plane position per (column, row, z)."""
    items = []
    for column, row, z in cells:
        place = {"0048021E": element("SL", column * tile + 1),
                 "0048021F": element("SL", row * tile + 1)}
        if z is not None:
            place["0040074A"] = element("DS", z)
        items.append({"0048021A": element("SQ", place)})
    return {"52009230": element("SQ", *items)}


def sparse(uid: str, width: int, height: int, *cells: tuple[int, int, float | None],
           **extra: Any) -> dict[str, Any]:
    return instance(uid, width, height, len(cells), **{
        "00209311": element("CS", "TILED_SPARSE"), **positions(*cells), **extra})


def tissue(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Smooth colour blobs: a texture JPEG keeps above 40 dB."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (max(2, height // 16), max(2, width // 16), 3), np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC))


def shown(jpeg: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))


# -- a: cropped edge frames -----------------------------------------------------------


@pytest.mark.parametrize("syntax", [J2K, HTJ2K, JPEG_LS])
def test_cropped_edge_frame_is_served_at_the_size_it_holds(syntax: str) -> None:
    """A 256x128 frame in a 256x256 grid (wsidicomizer's add_missing_levels) is a
    256x128 JPEG, not EIO."""
    edge = tissue(128, 256)
    if syntax == JPEG_LS:
        frame = bytes(imagecodecs.jpegls_encode(edge))
    elif syntax == HTJ2K:
        frame = bytes(imagecodecs.htj2k_encode(edge))
    else:
        frame = bytes(imagecodecs.jpeg2k_encode(edge, codecformat="J2K", reversible=True))
    pixels = PixelFormat(256, 256, 3, 8, 8, 0, "RGB" if syntax == JPEG_LS else "YBR_RCT")
    assert decode_frame(frame, pixels, syntax).shape == (128, 256, 3)
    served = served_jpeg(frame, pixels, syntax)
    assert Image.open(io.BytesIO(served)).size == (256, 128)
    assert psnr(shown(served), edge) >= 40


def test_frame_larger_than_its_tile_is_refused() -> None:
    frame = bytes(imagecodecs.jpeg2k_encode(tissue(300, 256), codecformat="J2K"))
    with pytest.raises(TileDecodeError, match="256x300"):
        served_jpeg(frame, PixelFormat(256, 256, 3, 8, 8, 0, "YBR_ICT"), J2K)


def test_stored_jpeg_edge_frame_is_still_served_as_stored() -> None:
    buffer = io.BytesIO()
    Image.fromarray(tissue(100, 256)).save(buffer, format="JPEG", quality=90)
    frame = buffer.getvalue()
    assert served_jpeg(frame, PixelFormat(256, 256, 3, 8, 8, 0, "YBR_FULL_422"), None) == frame


# -- b: focal planes ------------------------------------------------------------------


def plane_dirs(slide: Slide) -> list[list[int]]:
    return [[grid.plane_index for grid in level.grids] for level in slide.levels]


def test_sparse_level_at_z0_and_full_levels_without_z_are_one_plane() -> None:
    """The issue's case: wsidicomizer keeps the scanner's TILED_SPARSE level 0 (Z 0 per
    frame) and adds TILED_FULL levels with no Z. Before: plane-0_path-0/, plane-1_path-0/."""
    level0 = sparse("1.1", 512, 512, (0, 0, 0.0), (1, 0, 0.0), (1, 1, 0.0))
    level1 = instance("1.2", 256, 256, 1, "VOLUME", **{"00209311": element("CS", "TILED_FULL")})
    level2 = instance("1.3", 128, 128, 1)  # no DimensionOrganizationType either
    slide = parse_slide("s", "r", [level0, level1, level2])
    assert slide.focal_planes == [0.0]
    assert not slide.has_plane_directories
    assert plane_dirs(slide) == [[0], [0], [0]]
    assert slide.describe()["tile_directories"] == []


def test_full_level_with_z_in_its_pixel_matrix_origin_joins_that_plane() -> None:
    """wsidicom reads the Z of a TILED_FULL instance from TotalPixelMatrixOriginSequence."""
    level0 = sparse("1.1", 512, 512, (0, 0, 1.5), (1, 1, 1.5))
    origin = {"00480008": element("SQ", {"0040074A": element("DS", "1.5")})}
    level1 = instance("1.2", 256, 256, 1, **origin)
    assert parse_slide("s", "r", [level0, level1]).focal_planes == [1.5]


def test_z_offsets_equal_to_the_nanometre_are_one_plane() -> None:
    level0 = sparse("1.1", 512, 512, (0, 0, 0.00025))
    shared = {"52009229": element("SQ", {"0048021A": element("SQ", {
        "0040074A": element("FD", 0.000249999)})})}
    level1 = instance("1.2", 256, 256, 1, **shared)
    assert len(parse_slide("s", "r", [level0, level1]).focal_planes) == 1


def test_real_multi_plane_slides_keep_their_planes() -> None:
    two_in_one = instance("1.1", 512, 256, 4, **{"00480303": element("UL", 2)})
    assert parse_slide("s", "r", [two_in_one]).focal_planes == [None, None]
    by_z = sparse("2.1", 512, 512, (0, 0, 0.0), (0, 0, 2.5), (1, 1, 2.5))
    slide = parse_slide("s", "r", [by_z])
    assert slide.focal_planes == [0.0, 2.5] and slide.has_plane_directories
    shared = [instance(f"3.{i}", 256, 256, 1, **{"52009229": element("SQ", {
        "0048021A": element("SQ", {"0040074A": element("DS", z)})})}) for i, z in enumerate(
        (0.0, 2.5))]
    assert parse_slide("s", "r", shared).focal_planes == [0.0, 2.5]


def test_unknown_z_beside_several_known_planes_stays_a_plane_of_its_own() -> None:
    """Which of two real planes a no-Z level belongs to is unknown: no guess."""
    level0 = sparse("1.1", 512, 512, (0, 0, 0.0), (0, 0, 2.5))
    level1 = instance("1.2", 256, 256, 1)
    slide = parse_slide("s", "r", [level0, level1])
    assert slide.focal_planes == [0.0, 2.5, None]
    assert plane_dirs(slide) == [[0, 1], [2]]


def test_missing_organization_type_with_per_frame_positions_is_sparse() -> None:
    """Older converters leave DimensionOrganizationType out; wsidicom then reads the
    per-frame positions, as TILED_FULL order would put these frames in the wrong cells."""
    meta = instance("1.1", 768, 512, 2, **positions((2, 1, 0.0), (0, 0, 0.0)))
    tiles = parse_slide("s", "r", [meta]).levels[0].grids[0].tiles
    assert [(t.column, t.row, t.frame.number) for t in tiles] == [(0, 0, 2), (2, 1, 1)]


# -- c: what the converters' own test data do -----------------------------------------


def test_single_frame_label_marked_as_a_concatenation_part() -> None:
    """ez-wsi's test_wsi.dcm: a one-frame LABEL with ConcatenationUID 1.2.3, part 5 at
    ConcatenationFrameOffsetNumber 12. The offset would put its only frame outside its
    1x1 grid; an instance holding its whole grid starts at frame 1 whatever it says."""
    label = instance("1.1", 234, 117, 1, "LABEL", **{
        "00209161": element("UI", "1.2.3"), "00209162": element("US", 5),
        "00209228": element("UL", 12), "00280010": element("US", 117),
        "00280011": element("US", 234)})
    slide = parse_slide("s", "r", [label])
    assert [(t.column, t.row, t.frame.number) for t in slide.associated[0].tiles] == [(0, 0, 1)]


def test_concatenation_parts_with_their_own_transfer_syntax() -> None:
    """ez-wsi's error_multi_transfer_syntax.json: two parts of one concatenation, JPEG
    baseline and implicit VR little endian. Each instance keeps its own syntax, so each
    frame is decoded as its part says."""
    common = {"00209161": element("UI", "1.2.9"), "00209311": element("CS", "TILED_FULL")}
    first = instance("1.1", 1000, 500, 4, tile=250, **common, **{
        "00209228": element("UL", 0), "00020010": element("UI", BASELINE)})
    second = instance("1.2", 1000, 500, 4, tile=250, **common, **{
        "00209228": element("UL", 4), "00020010": element("UI", IMPLICIT_LE)})
    slide = parse_slide("s", "r", [first, second])
    tiles = slide.levels[0].grids[0].tiles
    assert [(t.column, t.row, t.frame.instance_uid, t.frame.number) for t in tiles] == [
        (c, r, "1.1" if r == 0 else "1.2", c + 1) for r in range(2) for c in range(4)]
    assert slide.describe()["transfer_syntax"] == [IMPLICIT_LE, BASELINE]


def test_no_photometric_interpretation_reads_as_rgb() -> None:
    """ez-wsi's sample_instances.json has no PhotometricInterpretation at all."""
    meta = instance("1.1", 500, 500, 1, tile=500)
    del meta["00280004"]
    assert parse_slide("s", "r", [meta]).instances["1.1"].pixels.photometric == "RGB"


def test_single_frame_label_with_the_slide_size_as_matrix_is_the_frame() -> None:
    """wsidicom's rule for labels and overviews whose TotalPixelMatrix does not match
    their one frame: the image is the frame (else label.jpg would be mostly black)."""
    label = instance("1.1", 40000, 30000, 1, "LABEL", tile=512)
    slide = parse_slide("s", "r", [label])
    info = slide.instances["1.1"]
    assert (info.total_width, info.total_height) == (512, 512)


@pytest.mark.parametrize(
    "broken",
    [
        {"00280010": element("US", 0)},
        {"00480006": element("UL", -5)},
        {"00480006": element("UL", "wide")},
        {"00280008": element("IS", 10**13)},
        {"00280011": element("US", "256px")},
        {"00480303": element("UL", -1)},
    ],
    ids=["zero_rows", "negative_width", "text_width", "huge_frame_count", "text_columns",
         "negative_planes"],
)
def test_an_unusable_level_fails_the_series_and_an_unusable_label_is_skipped(
    broken: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """A pyramid without one of its levels would pass for the real one: the series is a
    MetadataError (EIO) naming the instance. Without its label the slide is still right."""
    good = instance("1.1", 512, 512, 4)
    bad_level = {**instance("1.2", 256, 256, 1), **broken}
    with pytest.raises(MetadataError, match="level instance 1.2 cannot be laid out"):
        parse_slide("s", "r", [good, bad_level])
    bad_label = {**instance("1.3", 256, 256, 1, "LABEL"), **broken}
    with caplog.at_level(logging.WARNING):
        slide = parse_slide("s", "r", [good, bad_label])
    assert list(slide.instances) == ["1.1"]
    assert "instance 1.3 skipped" in caplog.text
    with pytest.raises(MetadataError, match="no usable"):
        parse_slide("s", "r", [bad_label])


def test_multi_frame_instance_without_total_pixel_matrix_is_not_guessed() -> None:
    meta = instance("1.1", 512, 512, 4)
    del meta["00480006"], meta["00480007"]
    with pytest.raises(MetadataError):
        parse_slide("s", "r", [meta])
    with pytest.raises(MetadataError, match="1.1 cannot be laid out.*TotalPixelMatrix"):
        parse_slide("s", "r", [instance("1.2", 1024, 1024, 16), meta])


def test_frames_positioned_outside_the_matrix_are_dropped() -> None:
    meta = sparse("1.1", 512, 512, (0, 0, 0.0), (5, 0, 0.0), (-1, 0, 0.0))
    tiles = parse_slide("s", "r", [meta]).levels[0].grids[0].tiles
    assert [(t.column, t.row) for t in tiles] == [(0, 0)]


def test_levels_of_one_size_with_different_tiles_are_not_mixed() -> None:
    """Two instances of one matrix size but other tile sizes cannot share one grid."""
    slide = parse_slide("s", "r", [instance("1.1", 512, 512, 4),
                                   instance("1.2", 512, 512, 16, tile=128)])
    assert [(level.tile_width, len(level.grids[0].tiles)) for level in slide.levels] == [
        (128, 16), (256, 4)]


def _real_metadata(path: Path) -> tuple[dict[str, Any], list[bytes]]:
    ds = pydicom.dcmread(path)
    meta = ds.to_json_dict(bulk_data_threshold=1 << 30, bulk_data_element_handler=lambda _: "")
    meta.pop("7FE00010", None)
    syntax = ds.file_meta.TransferSyntaxUID
    meta["00020010"] = element("UI", str(syntax))
    count = int(getattr(ds, "NumberOfFrames", 1))
    if syntax.is_encapsulated:
        return meta, list(generate_frames(ds.PixelData, number_of_frames=count))
    size = len(ds.PixelData) // count
    return meta, [ds.PixelData[i * size : (i + 1) * size] for i in range(count)]


@pytest.mark.parametrize("path", sorted(REAL_DIR.glob("*.dcm")), ids=lambda path: path.stem)
def test_real_files_parse_and_every_frame_is_served(path: Path) -> None:
    """highdicom's and ez-wsi's files: one usable instance each, every frame a JPEG of
    the tile's size (their quirks: no OpticalPathSequence or focal-plane count in
    ez-wsi's, a one-frame label claiming a concatenation offset, 16-bit greyscale,
    JPEG-LS with and without a basic offset table, RGB baseline JPEG)."""
    meta, frames = _real_metadata(path)
    slide = parse_slide("s", "r", [meta])
    info = next(iter(slide.instances.values()))
    tiles = slide.levels[0].grids[0].tiles if slide.levels else slide.associated[0].tiles
    assert len(tiles) == info.frame_count == len(frames)
    assert not slide.has_plane_directories
    for frame in frames:
        served = served_jpeg(frame, info.pixels, info.transfer_syntax)
        size = Image.open(io.BytesIO(served)).size
        assert size == (info.pixels.columns, info.pixels.rows)
