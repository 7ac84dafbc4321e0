"""tissue.txt and tissue-mask.png in the tree, as `build_mount` wires them (the DICOM-levels
view with the tissue view as its level files, the real RegionReader) over an in-memory
source: where they are listed, what listing costs, which frames a mask reads, the level
rule, sharing, the disk cache and failures."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import pytest

from idcfs.cache.disk import DiskCache
from idcfs.cache.memory import ByteLRU
from idcfs.cache.tiles import TileCache
from idcfs.errors import FetchError
from idcfs.fetch.loader import TileLoader
from idcfs.fetch.regions import RegionReader
from idcfs.fetch.slides import SlideStore
from idcfs.fetch.tissue import MASK_MIN_SIDE, TissueMasks, mask_plan
from idcfs.fs.nodes import FetchedFile, TileFileIndex
from idcfs.fs.tree import Tree
from idcfs.fs.views.catalog import CatalogView
from idcfs.fs.views.dicom_levels import DicomLevelsView
from idcfs.fs.views.tile_names import TileNames
from idcfs.fs.views.tissue import TissueView
from idcfs.metrics import Metrics
from idcfs.slide.model import Level, Slide, TileGrid
from idcfs.tiles.convert import DEFAULT_QUALITY
from tests.support.memory_source import MemorySource
from tests.support.slides import GeneratedSlide
from tests.unit.test_views import MountedTree, catalog_of, named, series_path


def mounted(slides: Sequence[GeneratedSlide], disk: DiskCache | None = None,
            template: str = "{col}_{row}.jpg") -> tuple[MountedTree, Metrics]:
    source = MemorySource([path for slide in slides for path in slide.files])
    metrics = Metrics()
    tiles = TileCache(ByteLRU(32 << 20), ByteLRU(8 << 20), disk, DEFAULT_QUALITY, metrics)
    loader = TileLoader(source, tiles, metrics)
    tissue = TissueView(TissueMasks(RegionReader(loader, metrics), tiles, metrics))
    index = TileFileIndex()
    views = [DicomLevelsView(loader, index, tile_names=TileNames(template), level_files=tissue),
             tissue]
    catalog_view = CatalogView(catalog_of(slides), SlideStore(source, disk), views, [])
    return MountedTree(Tree(catalog_view.root_children), source, tiles, index, None), metrics


def _lines(mount: MountedTree, path: str) -> list[str]:
    return mount.file(path).content().decode().splitlines()


def _frame_requests(mount: MountedTree) -> list[str]:
    return [uid for uid, _ in mount.source.requests]


def test_listing_shows_both_files_at_upper_bounds_and_fetches_nothing(
    test_slides: list[GeneratedSlide],
) -> None:
    (slide,) = named(test_slides, "jpeg_ybr")
    mount, _ = mounted([slide])
    series = series_path(slide)
    assert mount.names(series)[-1] == "tissue-mask.png"
    files = {level.index: mount.file(f"{series}/level-{level.index}/tissue.txt")
             for level in slide.levels}
    shown = {index: file.size() for index, file in files.items()}
    assert mount.source.requests == []
    assert all(not exact for _, exact in shown.values())
    for index, file in files.items():
        text = file.content()
        assert len(text) <= shown[index][0]
        assert file.size() == (len(text), True)


def test_a_mask_reads_only_the_frames_of_the_level_the_rule_chooses(
    test_slides: list[GeneratedSlide],
) -> None:
    """jpeg_ybr's levels are 1000, 500 and 250 wide: none reaches 1,024, so the finest."""
    (slide,) = named(test_slides, "jpeg_ybr")
    mount, metrics = mounted([slide])
    series = series_path(slide)
    _lines(mount, f"{series}/level-2/tissue.txt")
    assert set(_frame_requests(mount)) == {slide.levels[0].instance_uids[0]}
    mask = mount.file(f"{series}/tissue-mask.png").content()
    assert mask.startswith(b"\x89PNG")
    for level in slide.levels:
        assert set(_lines(mount, f"{series}/level-{level.index}/tissue.txt")) <= set(
            mount.names(f"{series}/level-{level.index}"))
    assert metrics.snapshot()["tissue_masks"]["computed"] == 1


def _level(index: int, width: int, planes: int = 1) -> Level:
    grids = [TileGrid(plane, "1") for plane in range(planes)]
    return Level(index, width, width * 3 // 4, 256, 256, 4096 / width, None, grids)


def test_the_mask_level_is_the_coarsest_with_a_long_side_of_1024() -> None:
    levels = [_level(0, 4096, planes=2), _level(1, 2048), _level(2, 1024), _level(3, 512)]
    slide = Slide("1", "2", {}, levels, [], [0.0, 1.0], ["1"])
    assert MASK_MIN_SIDE == 1024
    plan = mask_plan(slide)
    assert plan is not None and plan.level.index == 2 and plan.grid_key == (0, "1")
    small = Slide("1", "2", {}, [_level(0, 800), _level(1, 400)], [], [0.0], ["1"])
    assert mask_plan(small).level.index == 0  # type: ignore[union-attr]
    assert mask_plan(Slide("1", "2", {}, [], [], [], [])) is None


def test_plane_directories_each_list_theirs_and_the_level_lists_all(
    test_slides: list[GeneratedSlide],
) -> None:
    planes, paths = named(test_slides, "focal_planes", "optical_paths")
    mount, _ = mounted([planes, paths])
    for slide in (planes, paths):
        level = f"{series_path(slide)}/level-0"
        names = mount.names(level)
        assert names[-1] == "tissue.txt" and names[:-1] == [
            grid for grid in names if grid.startswith("plane-")]
        everything = _lines(mount, f"{level}/tissue.txt")
        for directory in names[:-1]:
            own = _lines(mount, f"{level}/{directory}/tissue.txt")
            assert own == [line.split("/", 1)[1] for line in everything
                           if line.startswith(f"{directory}/")]
            assert set(own) <= set(mount.names(f"{level}/{directory}"))
        assert everything  # fluorescence and z-stacks have tissue too


def test_concurrent_readers_share_one_computation(test_slides: list[GeneratedSlide]) -> None:
    (slide,) = named(test_slides, "jpeg_ybr")
    mount, metrics = mounted([slide])
    mount.source.delay_s = 0.05
    files = [mount.file(f"{series_path(slide)}/level-{level.index}/tissue.txt")
             for level in slide.levels]
    files.append(mount.file(f"{series_path(slide)}/tissue-mask.png"))
    results: list[bytes] = []
    threads = [threading.Thread(target=lambda f=file: results.append(f.content()))
               for file in files for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(results) == len(threads)
    shown = metrics.snapshot()
    assert shown["tissue_masks"]["computed"] == 1
    reads = shown["tile_reads"]  # each file read once per reader, as the statistics sum
    assert sum(reads.values()) == len(threads) and reads["source"] == 1 and not reads["failed"]


def test_the_mask_is_kept_on_disk_for_the_next_mount(
    test_slides: list[GeneratedSlide], tmp_path: Path,
) -> None:
    (slide,) = named(test_slides, "jpeg_rgb")
    path = f"{series_path(slide)}/level-0/tissue.txt"
    disk = DiskCache(tmp_path / "cache", 64 << 20)
    first, _ = mounted([slide], disk, template="{row:04d}_{col:04d}.jpg")
    listed = _lines(first, path)
    assert listed and all(len(name) == 13 for name in listed)
    second, metrics = mounted([slide], disk, template="{row:04d}_{col:04d}.jpg")
    node = second.file(path)
    assert isinstance(node, FetchedFile)
    assert node.size() == (len("".join(f"{name}\n" for name in listed)), True)  # when listed
    assert _lines(second, path) == listed
    assert second.source.requests == []
    shown = metrics.snapshot()
    assert shown["tile_reads"]["memory"] == 1  # the listing took it from disk
    assert shown["tissue_masks"]["computed"] == 0
    disk.close()


def test_a_failed_fetch_fails_the_read_and_is_not_kept(test_slides: list[GeneratedSlide]) -> None:
    (slide,) = named(test_slides, "jpeg_rgb")
    mount, _ = mounted([slide])
    path = f"{series_path(slide)}/level-1/tissue.txt"
    mount.source.fail_next.append(FetchError("HTTP 503"))
    with pytest.raises(FetchError, match="503"):
        mount.file(path).content()
    assert _lines(mount, path)
