"""The tile loader over an in-memory frame source: what a read serves, how many requests
it costs, and where tiles land (memory, staging, disk)."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from idcfs.cache.disk import DiskCache
from idcfs.cache.memory import ByteLRU
from idcfs.cache.tiles import TileCache, tile_key
from idcfs.errors import FetchError
from idcfs.fetch.loader import TileLoader
from idcfs.fetch.slides import SlideStore
from idcfs.metrics import Metrics
from idcfs.slide.model import Slide, TilePosition
from idcfs.tiles.convert import DEFAULT_QUALITY, served_jpeg
from idcfs.tiles.jpeg_markers import jpeg_info
from tests.support.memory_source import MemorySource
from tests.support.slides import (
    CODECS,
    LABEL,
    GeneratedSlide,
    InstanceSpec,
    SlideWriter,
    cut_tiles,
    label_image,
    write_instance,
)

CONVERTED_SLIDES = ["jpeg_ybr", "jpeg_rgb", "jpeg2000", "optical_paths", "uncompressed16"]


@dataclass
class LoaderOverMemory:
    """A real loader and tile cache over a MemorySource holding one slide."""

    source: MemorySource
    slide: Slide
    tiles: TileCache
    loader: TileLoader
    metrics: Metrics

    @property
    def level0(self) -> list[TilePosition]:
        return self.slide.levels[0].grids[0].tiles


def loader_for(generated: GeneratedSlide, disk: DiskCache | None = None, delay_s: float = 0.0,
               staged_bytes: int = 8 << 20, frames_per_request: int = 64) -> LoaderOverMemory:
    source = MemorySource(generated.files, delay_s)
    slide = SlideStore(source).get(generated.study_uid, generated.series_uid)
    metrics = Metrics()
    tiles = TileCache(ByteLRU(32 << 20), ByteLRU(staged_bytes), disk, DEFAULT_QUALITY, metrics)
    loader = TileLoader(source, tiles, metrics, max_frames_per_request=frames_per_request)
    return LoaderOverMemory(source, slide, tiles, loader, metrics)


def stored_level0(generated: GeneratedSlide, slide: Slide) -> list[bytes]:
    """The stored frames of level 0's tiles in tile order, from a source of their own
    (the loader's source counts no request for them)."""
    tiles = slide.levels[0].grids[0].tiles
    info = slide.instances[tiles[0].frame.instance_uid]
    frames = MemorySource(generated.files).frames(info, [tile.frame.number for tile in tiles])
    return [frame.data for frame in frames]


def served_level0(generated: GeneratedSlide, slide: Slide) -> list[bytes]:
    """The served JPEG of each of level 0's tiles, converted from its stored frame."""
    info = slide.instances[slide.levels[0].grids[0].tiles[0].frame.instance_uid]
    syntax = info.transfer_syntax
    return [served_jpeg(data, info.pixels, syntax, DEFAULT_QUALITY)
            for data in stored_level0(generated, slide)]


def named(slides: list[GeneratedSlide], name: str) -> GeneratedSlide:
    return next(slide for slide in slides if slide.name == name)


@pytest.fixture
def jpeg_ybr(test_slides: list[GeneratedSlide]) -> GeneratedSlide:
    return named(test_slides, "jpeg_ybr")


# -- what a read serves --------------------------------------------------------------


@pytest.mark.parametrize("name", CONVERTED_SLIDES)
def test_a_tile_read_is_the_served_jpeg_of_its_stored_frame(
    test_slides: list[GeneratedSlide], name: str
) -> None:
    generated = named(test_slides, name)
    rig = loader_for(generated)
    read = [rig.loader.tile(rig.slide, tile.frame) for tile in rig.level0]
    assert read == served_level0(generated, rig.slide)
    assert {data[:2] for data in read} == {b"\xff\xd8"}
    rig.loader.close()


def test_ybr_frames_are_served_byte_for_byte(jpeg_ybr: GeneratedSlide) -> None:
    rig = loader_for(jpeg_ybr)
    frame = rig.level0[4].frame
    assert rig.loader.tile(rig.slide, frame) == stored_level0(jpeg_ybr, rig.slide)[4]
    rig.loader.close()


def test_rgb_frames_get_an_adobe_app14(test_slides: list[GeneratedSlide]) -> None:
    generated = named(test_slides, "jpeg_rgb")
    rig = loader_for(generated)
    frame = rig.level0[0].frame
    stored_info = jpeg_info(stored_level0(generated, rig.slide)[0])
    served_info = jpeg_info(rig.loader.tile(rig.slide, frame))
    assert stored_info is not None and not stored_info.has_app14
    assert served_info is not None and served_info.has_app14
    rig.loader.close()


# -- requests ------------------------------------------------------------------------


def test_concurrent_readers_of_one_tile_send_one_request(jpeg_ybr: GeneratedSlide) -> None:
    rig = loader_for(jpeg_ybr, delay_s=0.2)
    frame = rig.level0[2].frame
    barrier = threading.Barrier(8)
    results: list[bytes] = []

    def read() -> None:
        barrier.wait()
        results.append(rig.loader.tile(rig.slide, frame))

    threads = [threading.Thread(target=read) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert rig.source.requests == [(frame.instance_uid, [3])]
    assert results == [served_level0(jpeg_ybr, rig.slide)[2]] * 8
    rig.loader.close()


def test_a_second_read_is_a_memory_hit(jpeg_ybr: GeneratedSlide) -> None:
    rig = loader_for(jpeg_ybr)
    frame = rig.level0[0].frame
    first = rig.loader.tile(rig.slide, frame)
    assert rig.loader.tile(rig.slide, frame) == first
    assert len(rig.source.requests) == 1
    assert rig.metrics.snapshot()["memory_cache"] | {"bytes": 0} == {
        "lookups": 2, "hits": 1, "misses": 1, "bytes": 0, "max_bytes": 32 << 20}
    rig.loader.close()


def test_a_source_failure_reaches_the_reader_and_is_not_cached(jpeg_ybr: GeneratedSlide) -> None:
    rig = loader_for(jpeg_ybr)
    frame = rig.level0[1].frame
    rig.source.fail_next = [FetchError("HTTP 503")]
    with pytest.raises(FetchError, match="HTTP 503"):
        rig.loader.tile(rig.slide, frame)
    assert rig.loader.in_flight(rig.slide, frame) is None
    assert rig.loader.tile(rig.slide, frame) == served_level0(jpeg_ybr, rig.slide)[1]
    assert rig.source.requests == [(frame.instance_uid, [2])] * 2
    rig.loader.close()


def test_a_tile_being_fetched_is_in_flight_and_held(jpeg_ybr: GeneratedSlide) -> None:
    rig = loader_for(jpeg_ybr, delay_s=0.3)
    frame = rig.level0[0].frame
    reader = threading.Thread(target=rig.loader.tile, args=(rig.slide, frame))
    assert not rig.loader.holds(rig.slide, frame)
    reader.start()
    _wait_for(lambda: bool(rig.source.requests))
    assert rig.loader.in_flight(rig.slide, frame) is not None
    assert rig.loader.holds(rig.slide, frame)
    reader.join(10)
    assert rig.loader.in_flight(rig.slide, frame) is None and rig.loader.holds(rig.slide, frame)
    rig.loader.close()


# -- read-ahead ----------------------------------------------------------------------


def test_a_read_ahead_batch_lands_in_staging_and_a_read_moves_it_to_memory(
    jpeg_ybr: GeneratedSlide,
) -> None:
    rig = loader_for(jpeg_ybr)
    frames = [tile.frame for tile in rig.level0]
    rig.loader.fetch_claimed(rig.slide, rig.loader.claim_for_prefetch(rig.slide, frames))
    assert rig.source.requests == [(frames[0].instance_uid, list(range(1, 13)))]
    assert all(rig.tiles.is_staged(rig.slide, frame) for frame in frames)
    assert not any(tile_key(rig.slide, frame) in rig.tiles.memory for frame in frames)
    data = rig.loader.tile(rig.slide, frames[5])
    assert data == served_level0(jpeg_ybr, rig.slide)[5]
    assert not rig.tiles.is_staged(rig.slide, frames[5])
    assert tile_key(rig.slide, frames[5]) in rig.tiles.memory
    assert len(rig.source.requests) == 1
    rig.loader.close()


def test_tiles_claimed_for_read_ahead_are_not_claimed_again(jpeg_ybr: GeneratedSlide) -> None:
    rig = loader_for(jpeg_ybr)
    frames = [tile.frame for tile in rig.level0]
    owned = rig.loader.claim_for_prefetch(rig.slide, frames[:6])
    assert list(rig.loader.claim_for_prefetch(rig.slide, frames[:8])) == frames[6:8]
    rig.loader.abandon_claimed(rig.slide, owned)
    assert rig.source.requests == []


def test_a_reader_of_a_tile_being_read_ahead_waits_for_that_batch(
    jpeg_ybr: GeneratedSlide,
) -> None:
    rig = loader_for(jpeg_ybr, delay_s=0.2)
    frames = [tile.frame for tile in rig.level0]
    owned = rig.loader.claim_for_prefetch(rig.slide, frames)
    batch = threading.Thread(target=rig.loader.fetch_claimed, args=(rig.slide, owned))
    batch.start()
    assert rig.loader.tile(rig.slide, frames[7]) == served_level0(jpeg_ybr, rig.slide)[7]
    batch.join(10)
    assert len(rig.source.requests) == 1
    assert tile_key(rig.slide, frames[7]) in rig.tiles.memory  # read: no longer staged
    rig.loader.close()


def test_an_abandoned_read_ahead_claim_fails_its_waiting_reader(
    jpeg_ybr: GeneratedSlide,
) -> None:
    rig = loader_for(jpeg_ybr)
    frame = rig.level0[0].frame
    owned = rig.loader.claim_for_prefetch(rig.slide, [frame])
    future = rig.loader.in_flight(rig.slide, frame)
    rig.loader.abandon_claimed(rig.slide, owned)
    assert future is not None and isinstance(future.exception(0), FetchError)
    assert rig.loader.tile(rig.slide, frame)[:2] == b"\xff\xd8"  # the next read fetches it


# -- disk cache ----------------------------------------------------------------------


def test_a_new_loader_over_the_same_disk_serves_tiles_without_requests(
    jpeg_ybr: GeneratedSlide, tmp_path: Path
) -> None:
    first = loader_for(jpeg_ybr, DiskCache(tmp_path / "cache", 64 << 20))
    served = [first.loader.tile(first.slide, tile.frame) for tile in first.level0]
    first.loader.close()
    first.tiles.flush()  # as at unmount
    assert first.tiles.disk is not None
    first.tiles.disk.close()
    again = loader_for(jpeg_ybr, DiskCache(tmp_path / "cache", 64 << 20))
    frames = [tile.frame for tile in again.level0]
    assert [again.loader.known_size(again.slide, f) for f in frames] == [len(d) for d in served]
    assert [again.loader.tile(again.slide, frame) for frame in frames] == served
    assert again.source.requests == []
    assert again.metrics.value("disk_cache.hits") == 12
    again.loader.close()


def test_without_a_disk_cache_no_size_is_known_before_a_read(jpeg_ybr: GeneratedSlide) -> None:
    rig = loader_for(jpeg_ybr)
    frame = rig.level0[0].frame
    rig.loader.tile(rig.slide, frame)
    assert rig.loader.known_size(rig.slide, frame) is None


# -- associated images ---------------------------------------------------------------


def test_associated_images_are_jpegs_of_the_instances_total_size(
    jpeg_ybr: GeneratedSlide,
) -> None:
    rig = loader_for(jpeg_ybr)
    shown = {}
    for image in rig.slide.associated:
        decoded = Image.open(io.BytesIO(rig.loader.associated(rig.slide, image)))
        info = rig.slide.instances[image.instance_uid]
        assert decoded.format == "JPEG" and decoded.size == (info.total_width, info.total_height)
        shown[image.kind] = decoded.size
    assert shown == {"label": (300, 120), "overview": (400, 280), "thumbnail": (200, 140)}
    rig.loader.close()


def tiled_label_slide(out_dir: Path) -> GeneratedSlide:
    """One small level plus a 600 x 300 label stored as 3 x 2 tiles of 256 pixels."""
    writer = SlideWriter(out_dir, "tiled_label")
    codec = CODECS["jpeg_ybr"]
    writer.add_level(0, [label_image("level", 256, 256)], codec)
    frames = [codec.encode(tile) for tile in cut_tiles(label_image("tiled", 600, 300),
                                                        256, 256).values()]
    spec = InstanceSpec(writer.identity, "label", 2, codec, LABEL, width=600, height=300,
                        tile_width=256, tile_height=256, spacing_mm=0.05, frames=frames)
    writer.slide.files.append(write_instance(spec, writer.folder / "02_label.dcm"))
    return writer.slide


def test_a_label_stored_as_tiles_is_stitched_into_one_jpeg_once(tmp_path: Path) -> None:
    rig = loader_for(tiled_label_slide(tmp_path))
    (label,) = rig.slide.associated
    data = rig.loader.associated(rig.slide, label)
    assert Image.open(io.BytesIO(data)).size == (600, 300)
    assert rig.source.requests == [(label.instance_uid, [1, 2, 3, 4, 5, 6])]
    assert rig.loader.associated(rig.slide, label) == data
    assert len(rig.source.requests) == 1
    rig.loader.close()


# -- metrics -------------------------------------------------------------------------


def test_metrics_count_frames_and_requests_by_size(jpeg_ybr: GeneratedSlide) -> None:
    rig = loader_for(jpeg_ybr)
    frames = [tile.frame for tile in rig.level0]
    for frame in frames[:3]:
        rig.loader.tile(rig.slide, frame)
    rig.loader.fetch_claimed(rig.slide, rig.loader.claim_for_prefetch(rig.slide, frames))
    assert rig.metrics.value("frames_fetched") == 12
    assert rig.metrics.value("frames_per_request") == {1: 3, 9: 1}
    assert rig.metrics.value("disk_cache.hits") == 0
    requests = rig.metrics.snapshot()["frame_requests"]
    assert (requests["sent"], requests["failed"], requests["in_flight"]) == (4, 0, 0)
    assert requests["latency"]["count"] == 4
    assert requests["latency"]["p50_ms"] <= requests["latency"]["p99_ms"]
    assert rig.metrics.snapshot()["readahead"] == {
        "landed_from_disk": 0, "landed_from_source": 9, "failed": 0, "abandoned": 0}
    rig.loader.close()


def test_each_tile_read_is_counted_once_by_where_it_came_from(
        jpeg_ybr: GeneratedSlide) -> None:
    """A read looks into memory up to three times (peek, tile, after its claim); each
    finished read counts once, so lookups are reads, not looks into the LRU."""
    rig = loader_for(jpeg_ybr)
    frames = [tile.frame for tile in rig.level0]
    assert rig.loader.cached(rig.slide, frames[0]) is None  # a miss alone is no read
    rig.loader.tile(rig.slide, frames[0])  # source
    rig.loader.cached(rig.slide, frames[0])  # memory
    rig.loader.tile(rig.slide, frames[0])  # memory
    rig.loader.fetch_claimed(rig.slide, rig.loader.claim_for_prefetch(rig.slide, frames[1:3]))
    rig.loader.tile(rig.slide, frames[1])  # staged
    rig.source.fail_next = [FetchError("HTTP 503")]
    with pytest.raises(FetchError):
        rig.loader.tile(rig.slide, frames[3])  # failed
    owned = rig.loader.claim_for_prefetch(rig.slide, frames[4:5])
    future = rig.loader.in_flight(rig.slide, frames[4])
    assert future is not None
    rig.loader.fetch_claimed(rig.slide, owned)
    rig.loader.waited(rig.slide, frames[4], future)  # waited
    statistics = rig.metrics.snapshot()
    assert statistics["tile_reads"] == {
        "memory": 2, "staged": 1, "waited": 1, "disk": 0, "source": 1, "failed": 1}
    memory = statistics["memory_cache"]
    assert (memory["lookups"], memory["hits"], memory["misses"]) == (6, 2, 4)
    requests = statistics["frame_requests"]
    assert (requests["sent"], requests["failed"]) == (4, 1)
    assert sum(statistics["frames_per_request"].values()) == requests["sent"] - 1
    rig.loader.close()


def _wait_for(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 10
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.005)


def test_a_tile_claimed_again_after_its_batch_resolved_it_stays_claimed(
    jpeg_ybr: GeneratedSlide,
) -> None:
    """A batch ends its claims again when it is done (`release_all` in `fetch_claimed`);
    that must not end a newer claim of a tile it resolved earlier (single flight)."""
    # One frame per request; staging keeps nothing, so tile 1 may be claimed again.
    rig = loader_for(jpeg_ybr, delay_s=0.3, staged_bytes=1, frames_per_request=1)
    first, second = (tile.frame for tile in rig.level0[:2])
    batch = rig.loader.claim_for_prefetch(rig.slide, [first, second])
    fetching = threading.Thread(target=rig.loader.fetch_claimed, args=(rig.slide, batch))
    fetching.start()
    _wait_for(lambda: batch[first].done)  # the second frame's request is under way
    again = rig.loader.claim_for_prefetch(rig.slide, [first])
    fetching.join(10)
    assert list(again) == [first]
    assert rig.loader.in_flight(rig.slide, first) is again[first].future
    assert rig.loader.claim_for_prefetch(rig.slide, [first]) == {}  # no second fetch of it
    rig.loader.abandon_claimed(rig.slide, again)
