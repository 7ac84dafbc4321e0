"""The tree a real mount shows over a real Orthanc: directories, names, order, slide.json."""

from __future__ import annotations

import json
import os

import pytest

from tests.support.expected import (
    expected_tiles,
    read_headers,
    volume_instances,
    wsi_series_on_server,
)
from tests.support.mounting import named, series_dir


@pytest.fixture
def mounted(orthanc, mount_idcfs):  # type: ignore[no-untyped-def]
    return mount_idcfs(orthanc.dicomweb_url)


def test_studies_tree_holds_exactly_the_wsi_series(mounted, orthanc) -> None:
    shown = {
        (study.name, series.name)
        for study in (mounted.path / "studies").iterdir()
        for series in study.iterdir()
    }
    assert shown == wsi_series_on_server(orthanc.dicomweb_url)
    assert sorted(os.listdir(mounted.path)) == [".idcfs-stats.json", "studies"]


def test_levels_associated_images_and_slide_json(mounted, test_slides) -> None:
    slide = named(test_slides, "jpeg_ybr")
    folder = series_dir(mounted.path, slide)
    names = sorted(os.listdir(folder))
    assert names == sorted(
        ["slide.json", "label.jpg", "overview.jpg", "thumbnail.jpg", "level-0", "level-1",
         "level-2", "iiif", "slide.dzi", "slide_files",
         "tissue-mask.png"]
    )
    description = json.loads((folder / "slide.json").read_text())
    volumes = sorted(volume_instances(read_headers(slide.files)),
                     key=lambda ds: -ds.TotalPixelMatrixColumns)
    for level, ds in zip(description["levels"], volumes, strict=True):
        assert (level["width"], level["height"]) == (ds.TotalPixelMatrixColumns,
                                                     ds.TotalPixelMatrixRows)
        assert (level["tile_width"], level["tile_height"]) == (ds.Columns, ds.Rows)
        assert level["columns"] == -(-ds.TotalPixelMatrixColumns // ds.Columns)
        assert level["pixel_spacing_mm"] is not None
    assert description["levels"][1]["downsample"] == pytest.approx(2.0, rel=0.01)
    assert "YBR_FULL_422" in description["photometric_interpretation"]
    assert description["associated_images"] == ["label.jpg", "overview.jpg", "thumbnail.jpg"]


def test_readdir_order_is_frame_order_row_by_row(mounted, test_slides) -> None:
    slide = named(test_slides, "jpeg_ybr")
    level = series_dir(mounted.path, slide) / "level-0"
    listed = [entry.name for entry in os.scandir(level)]  # readdir order, unsorted
    assert listed.pop() == "tissue.txt"  # after the tiles
    positions = [tuple(map(int, name[:-4].split("_"))) for name in listed]
    assert positions == sorted(positions, key=lambda cr: (cr[1], cr[0]))
    assert len(listed) == 4 * 3


def test_series_without_associated_images_have_none(mounted, test_slides) -> None:
    folder = series_dir(mounted.path, named(test_slides, "jpeg_rgb"))
    assert not [name for name in os.listdir(folder) if name.endswith(".jpg")]


def test_sparse_level_lists_only_existing_tiles(mounted, test_slides) -> None:
    slide = named(test_slides, "sparse")
    expected = {tile.relative_path for tile in expected_tiles(read_headers(slide.files), False)}
    folder = series_dir(mounted.path, slide)
    shown = {
        f"{level}/{name}"
        for level in os.listdir(folder) if level.startswith("level-")
        for name in os.listdir(folder / level) if name != "tissue.txt"
    }
    assert shown == expected
    full_grid = 1
    for level in json.loads((folder / "slide.json").read_text())["levels"]:
        full_grid = level["columns"] * level["rows"]
    assert len(shown) < full_grid


@pytest.mark.parametrize(
    ("name", "directories"),
    [
        ("focal_planes", ["plane-0_path-1", "plane-1_path-1"]),
        ("optical_paths", ["plane-0_path-1", "plane-0_path-2"]),
    ],
)
def test_planes_and_paths_get_one_directory_each(mounted, test_slides, name, directories) -> None:
    slide = named(test_slides, name)
    folder = series_dir(mounted.path, slide)
    for level in (entry for entry in os.listdir(folder) if entry.startswith("level-")):
        assert sorted(os.listdir(folder / level)) == [*directories, "tissue.txt"]
    expected = {tile.relative_path for tile in expected_tiles(read_headers(slide.files), True)}
    shown = {
        str(path.relative_to(folder)) for path in folder.glob("level-*/*/*.jpg")
    }
    assert shown == expected
    description = json.loads((folder / "slide.json").read_text())
    assert description["tile_directories"] == directories


def test_flat_layout_for_one_plane_and_path(mounted, test_slides) -> None:
    slide = named(test_slides, "jpeg2000")
    level = series_dir(mounted.path, slide) / "level-0"
    assert all(entry.is_file() for entry in level.iterdir())


def test_views_turned_off_leave_slide_json_images_and_levels(
        orthanc, mount_idcfs, test_slides) -> None:  # type: ignore[no-untyped-def]
    mount = mount_idcfs(orthanc.dicomweb_url, "--no-deepzoom", "--no-iiif", "--no-tissue")
    slide = named(test_slides, "jpeg_ybr")
    folder = series_dir(mount.path, slide)
    assert sorted(os.listdir(folder)) == ["label.jpg", "level-0", "level-1", "level-2",
                                          "overview.jpg", "slide.json", "thumbnail.jpg"]
    assert all(name.endswith(".jpg") for name in os.listdir(folder / "level-0"))
    for name in ("slide.dzi", "iiif", "tissue-mask.png", "level-0/tissue.txt"):
        assert not (folder / name).exists(), name
    planes = series_dir(mount.path, named(test_slides, "focal_planes"))
    assert os.listdir(planes / "level-0") == ["plane-0_path-1", "plane-1_path-1"]
