"""Parsing series metadata into the slide model: levels, grids, frame order, planes."""

from __future__ import annotations

from typing import Any

import pytest

from idcfs.errors import MetadataError
from idcfs.slide.parse import parse_slide

WSI = "1.2.840.10008.5.1.4.1.1.77.1.6"


def element(vr: str, *values: Any) -> dict[str, Any]:
    return {"vr": vr, "Value": list(values)}


def instance(uid: str, width: int, height: int, frames: int, flavour: str = "VOLUME",
             **extra: dict[str, Any]) -> dict[str, Any]:
    """The DICOM JSON of a TILED_FULL instance of 256-pixel tiles (plus `extra`)."""
    meta = {
        "00080016": element("UI", WSI), "00080018": element("UI", uid),
        "00080008": element("CS", "ORIGINAL", "PRIMARY", flavour, "NONE"),
        "00280010": element("US", 256), "00280011": element("US", 256),
        "00280002": element("US", 3), "00280100": element("US", 8),
        "00280004": element("CS", "YBR_FULL_422"), "00280008": element("IS", frames),
        "00480006": element("UL", width), "00480007": element("UL", height),
    }
    meta.update(extra)
    return meta


def plane_position(col: int, row: int, z: float) -> dict[str, Any]:
    """A per-frame functional group item placing a frame at pixel (col, row), depth z."""
    return {"0048021A": element("SQ", {"0048021E": element("SL", col),
                                       "0048021F": element("SL", row),
                                       "0040074A": element("DS", z)})}


def test_tiled_full_levels_order_and_edges() -> None:
    metadata = [instance("1.1", 600, 300, 6), instance("1.2", 300, 150, 2),
                instance("1.3", 100, 50, 1, "LABEL")]
    slide = parse_slide("s", "r", metadata)
    assert [(level.width, level.columns, level.rows) for level in slide.levels] == [
        (600, 3, 2), (300, 2, 1)]
    tiles = slide.levels[0].grids[0].tiles
    assert [(t.column, t.row, t.frame.number) for t in tiles] == [
        (0, 0, 1), (1, 0, 2), (2, 0, 3), (0, 1, 4), (1, 1, 5), (2, 1, 6)]
    assert [image.kind for image in slide.associated] == ["label"]
    assert not slide.has_plane_directories


def test_sparse_and_focal_planes() -> None:
    sparse = instance("2.1", 768, 512, 3, **{
        "00209311": element("CS", "TILED_SPARSE"),
        "52009230": element("SQ", plane_position(513, 257, 0.0), plane_position(1, 1, 0.0),
                            plane_position(1, 1, 2.5)),
    })
    slide = parse_slide("s", "r", [sparse])
    assert slide.focal_planes == [0.0, 2.5]
    grids = slide.levels[0].grids
    assert [(g.plane_index, [(t.column, t.row) for t in g.tiles]) for g in grids] == [
        (0, [(0, 0), (2, 1)]), (1, [(0, 0)])]
    assert slide.has_plane_directories


def test_two_planes_in_one_tiled_full_instance() -> None:
    meta = instance("3.1", 512, 256, 4, **{"00480303": element("UL", 2)})
    grids = parse_slide("s", "r", [meta]).levels[0].grids
    assert [[t.frame.number for t in g.tiles] for g in grids] == [[1, 2], [3, 4]]


def test_no_wsi_instance_is_a_metadata_error() -> None:
    with pytest.raises(MetadataError):
        parse_slide("s", "r", [])


def test_instance_locations_are_kept_for_the_frame_source() -> None:
    slide = parse_slide("s", "r", [instance("4.1", 256, 256, 1)], {"4.1": "studies/s/4.1"})
    assert slide.instances["4.1"].location == "studies/s/4.1"
