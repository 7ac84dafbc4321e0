"""The DeepZoom view over an in-memory frame source, wired as `build_mount` wires it:
names, levels and sizes, which tiles are stored frames passed through and which are
rendered, and that listing fetches nothing."""

from __future__ import annotations

import io
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass

import numpy as np
import pytest
from PIL import Image

from idcfs.cache.memory import ByteLRU
from idcfs.cache.tiles import TileCache
from idcfs.fetch.loader import TileLoader
from idcfs.fetch.regions import RegionReader
from idcfs.fetch.slides import SlideStore
from idcfs.fs.nodes import TileFile, TileFileIndex
from idcfs.fs.tree import Tree
from idcfs.fs.views.catalog import CatalogView
from idcfs.fs.views.deepzoom import DeepZoomView, deepzoom_levels
from idcfs.fs.views.dicom_levels import DicomLevelsView
from idcfs.fs.views.rendered import RenderedFile
from idcfs.metrics import Metrics
from idcfs.tiles.convert import DEFAULT_QUALITY
from tests.support.memory_source import MemorySource
from tests.support.slides import SPARSE_TILES, GeneratedSlide
from tests.support.tree_paths import PathWalk
from tests.unit.test_views import catalog_of, named, series_path

DZI = "{http://schemas.microsoft.com/deepzoom/2008}"


@dataclass
class DeepZoomTree(PathWalk):
    tree: Tree
    source: MemorySource
    metrics: Metrics


def mounted(slides: list[GeneratedSlide]) -> DeepZoomTree:
    source = MemorySource([path for slide in slides for path in slide.files])
    metrics = Metrics()
    tiles = TileCache(ByteLRU(32 << 20), ByteLRU(8 << 20), None, DEFAULT_QUALITY, metrics)
    loader = TileLoader(source, tiles, metrics)
    index = TileFileIndex()
    views = [DicomLevelsView(loader, index),
             DeepZoomView(loader, RegionReader(loader, metrics), index)]
    catalog_view = CatalogView(catalog_of(slides), SlideStore(source), views, [])
    return DeepZoomTree(Tree(catalog_view.root_children), source, metrics)


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


@pytest.fixture
def ybr(test_slides: list[GeneratedSlide]) -> GeneratedSlide:
    return named(test_slides, "jpeg_ybr")[0]


def test_levels_are_numbered_and_sized_as_deepzoom_does() -> None:
    levels = deepzoom_levels(1000, 700)
    assert [level.number for level in levels] == list(range(11))  # ceil(log2(1000)) = 10
    sizes = {level.number: (level.width, level.height) for level in levels}
    assert sizes[10] == (1000, 700) and sizes[9] == (500, 350) and sizes[7] == (125, 88)
    assert sizes[1] == (2, 2) and sizes[0] == (1, 1)
    assert [(level.width, level.height) for level in deepzoom_levels(1, 1)] == [(1, 1)]


def test_a_series_shows_a_dzi_with_the_true_size(ybr: GeneratedSlide) -> None:
    mount = mounted([ybr])
    folder = series_path(ybr)
    assert mount.names(folder)[-2:] == ["slide.dzi", "slide_files"]
    image = ElementTree.fromstring(mount.file(f"{folder}/slide.dzi").content())
    assert image.tag == f"{DZI}Image"
    assert image.attrib == {"Format": "jpeg", "Overlap": "0", "TileSize": "256"}
    assert next(iter(image)).attrib == {"Width": "1000", "Height": "700"}
    assert mount.names(f"{folder}/slide_files") == [str(number) for number in range(11)]


def test_several_planes_or_paths_get_one_dzi_each(test_slides: list[GeneratedSlide]) -> None:
    planes, paths = named(test_slides, "focal_planes", "optical_paths")
    mount = mounted([planes, paths])
    assert mount.names(series_path(planes))[-4:] == [
        "slide-plane-0_path-1.dzi", "slide-plane-0_path-1_files",
        "slide-plane-1_path-1.dzi", "slide-plane-1_path-1_files"]
    assert mount.names(series_path(paths))[-4:] == [
        "slide-plane-0_path-1.dzi", "slide-plane-0_path-1_files",
        "slide-plane-0_path-2.dzi", "slide-plane-0_path-2_files"]


def test_listing_every_level_fetches_nothing(ybr: GeneratedSlide) -> None:
    mount = mounted([ybr])
    files = f"{series_path(ybr)}/slide_files"
    for level in mount.names(files):
        for name in mount.names(f"{files}/{level}"):
            size, exact = mount.file(f"{files}/{level}/{name}").size()
            assert size > 0 and not exact  # a placeholder until read
    assert mount.source.requests == []
    assert mount.names(f"{files}/10") == [f"{column}_{row}.jpeg" for row in range(3)
                                          for column in range(4)]


def test_a_stored_level_is_passed_through_except_its_cropped_edges(ybr: GeneratedSlide) -> None:
    mount = mounted([ybr])
    folder = series_path(ybr)
    inner = mount.node(f"{folder}/slide_files/9/0_0.jpeg")  # = level-1 (500 x 350)
    assert isinstance(inner, TileFile)
    assert inner.content() == mount.file(f"{folder}/level-1/0_0.jpg").content()
    edge = mount.node(f"{folder}/slide_files/9/1_0.jpeg")  # 244 wide: cropped
    assert isinstance(edge, RenderedFile)
    assert pixels(edge.content()).shape == (256, 244, 3)
    assert edge.size() == (len(edge.content()), True)


def test_a_coarse_tile_reads_only_low_resolution_frames(ybr: GeneratedSlide) -> None:
    mount = mounted([ybr])
    folder = series_path(ybr)
    shown = pixels(mount.file(f"{folder}/slide_files/7/0_0.jpeg").content())
    assert shown.shape == (88, 125, 3)
    smallest = min(ybr.levels, key=lambda level: level.width)
    assert {uid for uid, _ in mount.source.requests} == {smallest.instance_uids[0]}
    assert pixels(mount.file(f"{folder}/slide_files/0/0_0.jpeg").content()).shape == (1, 1, 3)


def test_a_sparse_level_has_every_tile(test_slides: list[GeneratedSlide]) -> None:
    sparse = named(test_slides, "sparse")[0]
    mount = mounted([sparse])
    level = f"{series_path(sparse)}/slide_files/10"
    assert len(mount.names(level)) == 12 and (0, 0) not in SPARSE_TILES
    missing = mount.file(f"{level}/0_0.jpeg")
    assert isinstance(missing, RenderedFile)
    assert (pixels(missing.content()) >= 250).all()  # background, as wsidicom shows it
    assert isinstance(mount.node(f"{level}/1_0.jpeg"), TileFile)
