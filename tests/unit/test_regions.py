"""The region reader over an in-memory frame source: which stored level and tiles a
region reads, in how many requests, what pixels it gives (against wsidicom reading the
same files), the bound, and how its JPEGs are cached and shared."""

from __future__ import annotations

import io
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from wsidicom import WsiDicom
from wsidicom.config import Settings
from wsidicom.options import DownsamplerOption, ResampleFilterOption

from idcfs.cache.disk import DiskCache
from idcfs.cache.memory import ByteLRU
from idcfs.cache.tiles import TileCache
from idcfs.errors import FetchError, NotFoundError, RegionTooLarge
from idcfs.fetch.loader import TileLoader
from idcfs.fetch.regions import Region, RegionReader
from idcfs.fetch.slides import SlideStore
from idcfs.metrics import Metrics
from idcfs.slide.model import Slide
from idcfs.tiles.convert import DEFAULT_QUALITY, psnr
from tests.support.memory_source import MemorySource
from tests.support.slides import SPARSE_TILES, GeneratedSlide

BRIGHTFIELD = (0, "1")  # the one grid of a single-plane, single-path slide
MIN_PSNR_DB = 40.0
LANCZOS = Settings(resampling_filter=ResampleFilterOption.LANCZOS,
                   preferred_downsampler=DownsamplerOption.PILLOW)
"""wsidicom resizing as idcfs does (its default is bilinear): the comparison then
measures the level chosen, the tiles read, the decoding and the geometry, not taste in
filters (bilinear against Lanczos alone differs by 32-37 dB on these textures)."""


@dataclass
class ReaderOverMemory:
    """A real region reader, loader and tile cache over a MemorySource of one slide."""

    source: MemorySource
    slide: Slide
    reader: RegionReader
    metrics: Metrics

    def instance_of(self, level: int) -> str:
        return self.slide.levels[level].instance_uids[0]

    def requested_instances(self) -> set[str]:
        return {uid for uid, _ in self.source.requests}


def reader_for(generated: GeneratedSlide, disk: DiskCache | None = None, delay_s: float = 0.0,
               max_source_pixels: int = 1 << 26) -> ReaderOverMemory:
    source = MemorySource(generated.files, delay_s)
    slide = SlideStore(source).get(generated.study_uid, generated.series_uid)
    metrics = Metrics()
    tiles = TileCache(ByteLRU(32 << 20), ByteLRU(8 << 20), disk, DEFAULT_QUALITY, metrics)
    loader = TileLoader(source, tiles, metrics)
    reader = RegionReader(loader, metrics, wait_s=10, max_source_pixels=max_source_pixels)
    return ReaderOverMemory(source, slide, reader, metrics)


def named(slides: list[GeneratedSlide], name: str) -> GeneratedSlide:
    return next(slide for slide in slides if slide.name == name)


@pytest.fixture
def jpeg_ybr(test_slides: list[GeneratedSlide]) -> GeneratedSlide:
    return named(test_slides, "jpeg_ybr")


def reference(generated: GeneratedSlide, location: tuple[int, int], level: int,
              size: tuple[int, int], path: str | None = None) -> np.ndarray:
    """wsidicom's read_region of the same files (level: log2 of the downsample)."""
    with WsiDicom.open(generated.folder, settings=LANCZOS) as opened:
        return np.asarray(opened.read_region(location, level, size, path=path))


def decoded(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


# -- which level ----------------------------------------------------------------------


def test_level_for_is_the_smallest_stored_level_fine_enough(jpeg_ybr: GeneratedSlide) -> None:
    setup = reader_for(jpeg_ybr)  # levels of downsample 1, 2 and 4 (1 % tolerance)
    chosen = {scale: setup.reader.level_for(setup.slide, BRIGHTFIELD, scale).index
              for scale in (0.25, 1, 1.9, 2, 2.01, 3.9, 3.99, 4, 64)}
    assert chosen == {0.25: 0, 1: 0, 1.9: 0, 2: 1, 2.01: 1, 3.9: 1, 3.99: 2, 4: 2, 64: 2}


def test_level_for_chooses_among_the_levels_of_that_grid_only(
    test_slides: list[GeneratedSlide],
) -> None:
    setup = reader_for(named(test_slides, "optical_paths"))
    assert setup.reader.level_for(setup.slide, (0, "2"), 2).index == 1
    with pytest.raises(NotFoundError):
        setup.reader.level_for(setup.slide, (0, "3"), 1)


# -- what is read ---------------------------------------------------------------------


def test_a_coarse_region_reads_only_the_tiles_of_the_low_resolution_level(
    jpeg_ybr: GeneratedSlide,
) -> None:
    setup = reader_for(jpeg_ybr)
    whole = Region(0, 0, 1000, 700)
    shown = setup.reader.pixels(setup.slide, BRIGHTFIELD, whole, 125, 88)
    assert shown.shape == (88, 125, 3)
    assert setup.source.requests == [(setup.instance_of(2), [1])]  # level-2: one tile


def test_a_region_reads_the_tiles_it_touches_in_one_request(jpeg_ybr: GeneratedSlide) -> None:
    setup = reader_for(jpeg_ybr)  # level 0: 4 x 3 tiles of 256
    setup.reader.pixels(setup.slide, BRIGHTFIELD, Region(300, 200, 400, 200), 400, 200)
    # columns 1-2, rows 0-1 of a 4-column grid: frames 2, 3, 6, 7
    assert setup.source.requests == [(setup.instance_of(0), [2, 3, 6, 7])]


def test_an_aligned_region_at_a_stored_scale_reads_one_tile(jpeg_ybr: GeneratedSlide) -> None:
    setup = reader_for(jpeg_ybr)  # level 1 (500 x 350): tile (1, 0) is level-0 512-1023
    setup.reader.pixels(setup.slide, BRIGHTFIELD, Region(512, 0, 488, 512), 244, 256)
    assert setup.source.requests == [(setup.instance_of(1), [2])]


# -- what it gives --------------------------------------------------------------------


@pytest.mark.parametrize("name", ["jpeg_ybr", "jpeg_rgb", "jpeg2000"])
def test_full_resolution_regions_equal_wsidicoms(test_slides: list[GeneratedSlide],
                                                 name: str) -> None:
    generated = named(test_slides, name)
    setup = reader_for(generated)
    shown = setup.reader.pixels(setup.slide, BRIGHTFIELD, Region(200, 150, 300, 250), 300, 250)
    expected = reference(generated, (200, 150), 0, (300, 250))
    assert shown.shape == expected.shape == (250, 300, 3)
    assert psnr(shown, expected) >= 50.0


@pytest.mark.parametrize("name", ["jpeg_ybr", "jpeg_rgb", "jpeg2000"])
def test_downscaled_regions_match_wsidicoms_at_that_scale(test_slides: list[GeneratedSlide],
                                                         name: str) -> None:
    generated = named(test_slides, name)
    setup = reader_for(generated)
    base = setup.slide.levels[0]
    for level in (1, 2, 3):  # wsidicom's level n: downsample 2**n, stored or not
        size = (base.width >> level, base.height >> level)
        shown = setup.reader.pixels(setup.slide, BRIGHTFIELD,
                                    Region(0, 0, size[0] << level, size[1] << level), *size)
        expected = reference(generated, (0, 0), level, size)
        assert psnr(shown, expected) >= MIN_PSNR_DB, (name, level)


def test_rgb_photometric_colours_are_kept(test_slides: list[GeneratedSlide]) -> None:
    generated = named(test_slides, "jpeg_rgb")
    setup = reader_for(generated)
    shown = setup.reader.pixels(setup.slide, BRIGHTFIELD, Region(0, 0, 700, 500), 700, 500)
    expected = reference(generated, (0, 0), 0, (700, 500))
    for channel in range(3):  # a swapped or YCbCr-converted channel would fail this
        assert psnr(shown[..., channel], expected[..., channel]) >= 50.0


def test_monochrome_regions_are_two_dimensional(test_slides: list[GeneratedSlide]) -> None:
    generated = named(test_slides, "optical_paths")
    setup = reader_for(generated)
    shown = setup.reader.pixels(setup.slide, (0, "2"), Region(0, 0, 512, 384), 256, 192)
    assert shown.shape == (192, 256) and shown.dtype == np.uint8
    assert psnr(shown, reference(generated, (0, 0), 1, (256, 192), path="2")) >= MIN_PSNR_DB


def test_missing_tiles_of_a_sparse_level_are_background(test_slides: list[GeneratedSlide]) -> None:
    generated = named(test_slides, "sparse")
    setup = reader_for(generated)
    assert (0, 0) not in SPARSE_TILES and (1, 0) in SPARSE_TILES
    shown = setup.reader.pixels(setup.slide, BRIGHTFIELD, Region(0, 0, 512, 256), 512, 256)
    assert (shown[:, :256] == 255).all()  # white, as wsidicom shows it
    assert psnr(shown, reference(generated, (0, 0), 0, (512, 256))) >= 50.0
    assert [numbers for _, numbers in setup.source.requests] == [[1]]  # only the one held


def test_a_region_of_only_missing_tiles_sends_nothing(test_slides: list[GeneratedSlide]) -> None:
    setup = reader_for(named(test_slides, "sparse"))
    shown = setup.reader.pixels(setup.slide, BRIGHTFIELD, Region(0, 0, 200, 200), 100, 100)
    assert shown.shape == (100, 100, 3) and (shown == 255).all()
    assert setup.source.requests == []


# -- the bound ------------------------------------------------------------------------


def test_a_region_above_the_bound_is_refused_before_anything_is_fetched(
    jpeg_ybr: GeneratedSlide,
) -> None:
    setup = reader_for(jpeg_ybr, max_source_pixels=4 * 256 * 256)
    setup.reader.pixels(setup.slide, BRIGHTFIELD, Region(0, 0, 512, 512), 512, 512)  # 4 tiles
    with pytest.raises(RegionTooLarge, match="more than the 262,144"):
        setup.reader.pixels(setup.slide, BRIGHTFIELD, Region(0, 0, 600, 512), 600, 512)
    with pytest.raises(RegionTooLarge):  # an enlargement is bounded by its output too
        setup.reader.pixels(setup.slide, BRIGHTFIELD, Region(0, 0, 100, 100), 1000, 1000)
    assert len(setup.source.requests) == 1
    assert setup.metrics.value("regions.refused") == 2
    # the whole image at a coarse scale is cheap: one tile of level 2
    setup.reader.pixels(setup.slide, BRIGHTFIELD, Region(0, 0, 1000, 700), 250, 175)


# -- JPEGs, cached like tiles ---------------------------------------------------------


def test_a_jpeg_is_rendered_once_and_then_served_from_memory(jpeg_ybr: GeneratedSlide) -> None:
    setup = reader_for(jpeg_ybr)
    args = (setup.slide, BRIGHTFIELD, Region(0, 0, 1000, 700), 125, 88, "dz/7/0_0")
    first = setup.reader.jpeg(*args)
    assert decoded(first).shape == (88, 125, 3)
    assert setup.reader.jpeg(*args) == first
    assert setup.reader.cached(*args) == first
    assert len(setup.source.requests) == 1
    assert setup.metrics.value("tile_reads.source") == 1
    assert setup.metrics.value("tile_reads.memory") == 2
    assert setup.metrics.value("regions.rendered") == 1


def test_readers_of_one_render_share_it(jpeg_ybr: GeneratedSlide) -> None:
    setup = reader_for(jpeg_ybr, delay_s=0.2)
    args = (setup.slide, BRIGHTFIELD, Region(0, 0, 1000, 700), 250, 175, "shared")
    results: list[bytes] = []
    threads = [threading.Thread(target=lambda: results.append(setup.reader.jpeg(*args)))
               for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 4 and len(set(results)) == 1
    assert len(setup.source.requests) == 1
    assert setup.metrics.value("tile_reads.waited") + setup.metrics.value(
        "tile_reads.memory") == 3


def test_a_key_reused_for_another_region_renders_that_region(jpeg_ybr: GeneratedSlide) -> None:
    setup = reader_for(jpeg_ybr)
    left = setup.reader.jpeg(setup.slide, BRIGHTFIELD, Region(0, 0, 256, 256), 64, 64, "k")
    right = setup.reader.jpeg(setup.slide, BRIGHTFIELD, Region(256, 0, 256, 256), 64, 64, "k")
    assert left != right and len(setup.source.requests) == 2


def test_jpegs_outlive_the_mount_in_the_disk_cache(jpeg_ybr: GeneratedSlide,
                                                    tmp_path: Path) -> None:
    args = (Region(0, 0, 1000, 700), 125, 88, "dz/7/0_0")
    disk = DiskCache(tmp_path / "cache", 1 << 26)
    first = reader_for(jpeg_ybr, disk)
    rendered = first.reader.jpeg(first.slide, BRIGHTFIELD, *args)
    second = reader_for(jpeg_ybr, disk)  # a fresh memory cache, as after a remount
    assert second.reader.jpeg(second.slide, BRIGHTFIELD, *args) == rendered
    assert second.source.requests == []
    assert second.metrics.value("tile_reads.disk") == 1
    assert second.metrics.value("disk_cache.hits") == 1
    disk.close()


def test_a_failed_render_is_an_error_and_the_next_read_tries_again(
    jpeg_ybr: GeneratedSlide,
) -> None:
    setup = reader_for(jpeg_ybr)
    args = (setup.slide, BRIGHTFIELD, Region(0, 0, 1000, 700), 125, 88, "dz/7/0_0")
    setup.source.fail_next.append(FetchError("HTTP 503"))
    with pytest.raises(FetchError):
        setup.reader.jpeg(*args)
    assert setup.metrics.value("tile_reads.failed") == 1
    assert decoded(setup.reader.jpeg(*args)).shape == (88, 125, 3)
    assert len(setup.source.requests) == 2
