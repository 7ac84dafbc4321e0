"""The DeepZoom view through a real mount over the real Orthanc (issue 15, 1): the .dzi,
every tile of every DeepZoom level of the generated slides against wsidicom's
read_region of the same files, pass-through tiles byte for byte, and what listing and a
coarse tile cost at the relay."""

from __future__ import annotations

import io
import os
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from wsidicom import WsiDicom
from wsidicom.config import Settings
from wsidicom.options import DownsamplerOption, ResampleFilterOption

from idcfs.fs.views.deepzoom import deepzoom_levels
from idcfs.tiles.convert import psnr
from tests.support.mounting import named, series_dir

DZI = "{http://schemas.microsoft.com/deepzoom/2008}"
MIN_PSNR_DB = 40.0
SLIDES = ["jpeg_ybr", "jpeg_rgb", "jpeg2000", "sparse", "focal_planes"]
AREA = Settings(resampling_filter=ResampleFilterOption.BOX,
                   preferred_downsampler=DownsamplerOption.PILLOW)
"""wsidicom resizing by area averaging as idcfs does (its default is bilinear), so the
comparison measures levels, tiles, decoding and geometry, not the choice of filter."""


@pytest.fixture
def mounted(relay, mount_idcfs):  # type: ignore[no-untyped-def]
    return mount_idcfs(relay.url + "/dicom-web")  # the default quality, 97


def frame_paths(relay) -> list[str]:  # type: ignore[no-untyped-def]
    return [path for _, path in relay.requests if "/frames/" in path]


def decoded(path: Path) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(path.read_bytes())))


def images(folder: Path) -> list[str]:
    """The stems of the series' .dzi files."""
    return sorted(name[:-4] for name in os.listdir(folder) if name.endswith(".dzi"))


@pytest.mark.parametrize("name", SLIDES)
def test_every_tile_of_every_level_matches_wsidicom(mounted, test_slides, name) -> None:  # type: ignore[no-untyped-def]
    slide = named(test_slides, name)
    folder = series_dir(mounted.path, slide)
    with WsiDicom.open(slide.folder, settings=AREA) as wsi:
        width, height = wsi.size.width, wsi.size.height
        planes = sorted(wsi.levels.base_level.focal_planes)
        stems = images(folder)
        assert len(stems) == (len(planes) if len(planes) > 1 else 1)
        for plane, stem in enumerate(stems):
            image = ElementTree.fromstring((folder / f"{stem}.dzi").read_bytes())
            assert (image.tag, image.attrib["Format"], image.attrib["Overlap"]) == (
                f"{DZI}Image", "jpeg", "0")
            assert next(iter(image)).attrib == {"Width": str(width), "Height": str(height)}
            tile = int(image.attrib["TileSize"])
            z = planes[plane] if len(planes) > 1 else None
            check_levels(wsi, folder / f"{stem}_files", width, height, tile, z)


def check_levels(wsi: WsiDicom, files: Path, width: int, height: int, tile: int,  # type: ignore[no-untyped-def]
                 z: float | None) -> None:
    levels = deepzoom_levels(width, height)
    assert sorted(os.listdir(files), key=int) == [str(level.number) for level in levels]
    for level in levels:
        columns, rows = -(-level.width // tile), -(-level.height // tile)
        names = {f"{column}_{row}.jpeg" for column in range(columns) for row in range(rows)}
        assert set(os.listdir(files / str(level.number))) == names
        scale = 1 << level.shrink
        for column in range(columns):
            for row in range(rows):
                shown = decoded(files / str(level.number) / f"{column}_{row}.jpeg")
                size = level.tile_box(column, row, tile)
                assert shown.shape[:2] == (size[1], size[0]), (level.number, column, row)
                # wsidicom reads only whole output pixels inside the image
                x, y = column * tile, row * tile
                inside = (min(size[0], (width - x * scale) // scale),
                          min(size[1], (height - y * scale) // scale))
                if min(inside) < 1:
                    continue
                expected = np.asarray(wsi.read_region((x, y), level.shrink, inside, z=z))
                score = psnr(shown[:inside[1], :inside[0]], expected)
                assert score >= MIN_PSNR_DB, (level.number, column, row, score)


@pytest.mark.parametrize("name", ["jpeg_ybr", "jpeg_rgb", "jpeg2000", "focal_planes"])
def test_tiles_of_a_stored_level_are_its_tile_files(mounted, test_slides, name) -> None:  # type: ignore[no-untyped-def]
    slide = named(test_slides, name)
    folder = series_dir(mounted.path, slide)
    stem = images(folder)[-1]
    top = len(os.listdir(folder / f"{stem}_files")) - 1
    tiles = folder / "level-0"
    if stem != "slide":  # several planes: slide-plane-1_path-1 is level-0/plane-1_path-1
        tiles = tiles / stem.removeprefix("slide-")
    stored = folder / f"{stem}_files" / str(top) / "0_0.jpeg"
    assert stored.read_bytes() == (tiles / "0_0.jpg").read_bytes()


def test_listing_sends_no_frame_request(mounted, relay, test_slides) -> None:  # type: ignore[no-untyped-def]
    for name in SLIDES:
        folder = series_dir(mounted.path, named(test_slides, name))
        for stem in images(folder):
            files = folder / f"{stem}_files"
            for level in os.listdir(files):
                for entry in os.scandir(files / level):
                    assert entry.stat().st_size > 0
    assert frame_paths(relay) == []


def test_a_coarse_tile_costs_only_low_resolution_frames(mounted, relay, test_slides) -> None:  # type: ignore[no-untyped-def]
    slide = named(test_slides, "jpeg_ybr")  # stored levels of 1000, 500 and 250 wide
    folder = series_dir(mounted.path, slide)
    os.listdir(folder / "slide_files" / "7")
    relay.reset()
    assert decoded(folder / "slide_files" / "7" / "0_0.jpeg").shape == (88, 125, 3)
    smallest = min(slide.levels, key=lambda level: level.width).instance_uids[0]
    sent = frame_paths(relay)
    assert len(sent) == 1 and f"/instances/{smallest}/frames/1" in sent[0], sent
    relay.reset()
    (folder / "slide_files" / "7" / "0_0.jpeg").read_bytes()  # cached like a tile
    assert frame_paths(relay) == []
