"""The prefetcher over a real loader, tile cache and disk cache, and an in-memory source:
requests per batch, tiles kept on disk only, resuming, the byte budget, failures,
stopping, and readers sharing its requests."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from idcfs.cache.disk import DiskCache
from idcfs.errors import FetchError
from idcfs.fetch.prefetch import Failure, Prefetcher, Tally, WantedTile
from idcfs.slide.model import Slide
from tests.support.slides import GeneratedSlide
from tests.unit.test_loader import LoaderOverMemory, loader_for, named

BATCH = 4  # frames per request in these tests (64 in a mount)


def wanted(slide: Slide, levels: tuple[int, ...] = (0, 1, 2)) -> list[WantedTile]:
    return [WantedTile(slide, tile.frame, f"level-{level.index}/{tile.file_name}")
            for level in slide.levels if level.index in levels
            for grid in level.grids for tile in grid.tiles]


class Reports:
    """What a run reported: every tally, every failure."""

    def __init__(self) -> None:
        self.tallies: list[Tally] = []
        self.failures: list[Failure] = []

    def __call__(self, tally: Tally, failures: list[Failure]) -> None:
        self.tallies.append(Tally(**vars(tally)))
        self.failures += failures


@pytest.fixture
def rig(test_slides: list[GeneratedSlide], tmp_path: Path) -> LoaderOverMemory:
    disk = DiskCache(tmp_path / "cache", 1 << 30)
    return loader_for(named(test_slides, "jpeg_ybr"), disk, frames_per_request=BATCH)


def run(rig: LoaderOverMemory, tiles: list[WantedTile], max_bytes: int | None = None,
        stop: threading.Event | None = None, workers: int = 2) -> tuple[Tally, Reports]:
    reports = Reports()
    prefetcher = Prefetcher(rig.loader, rig.metrics, workers)
    tally = prefetcher.run(tiles, stop or threading.Event(), reports, max_bytes)
    return tally, reports


def test_tiles_go_to_disk_in_one_request_per_batch_and_not_to_memory(rig) -> None:  # type: ignore[no-untyped-def]
    tiles = wanted(rig.slide, (0,))  # 12 tiles of one instance
    tally, reports = run(rig, tiles)
    assert (tally.tiles, tally.fetched, tally.cached, tally.failed) == (12, 12, 0, 0)
    assert [numbers for _, numbers in rig.source.requests] == [
        [1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]]
    assert rig.tiles.on_disk(rig.slide, [tile.frame for tile in tiles]) == {
        tile.frame for tile in tiles}
    assert not any(rig.tiles.in_memory(rig.slide, tile.frame) for tile in tiles)
    assert reports.tallies[0].to_fetch == 12 and reports.tallies[-1].fetched == 12
    assert tally.fetched_bytes == sum(rig.tiles.known_size(rig.slide, tile.frame) or 0
                                      for tile in tiles)
    assert rig.metrics.value("prefetch.tiles_fetched") == 12


def test_a_second_run_skips_every_cached_tile_without_a_request(rig) -> None:  # type: ignore[no-untyped-def]
    tiles = wanted(rig.slide)
    first, _ = run(rig, tiles)
    sent = len(rig.source.requests)
    again, _ = run(rig, tiles)
    assert len(rig.source.requests) == sent
    assert (again.cached, again.fetched, again.cached_bytes) == (
        first.tiles, 0, first.fetched_bytes)


def test_a_run_resumes_with_what_is_not_cached_in_whole_batches(rig) -> None:  # type: ignore[no-untyped-def]
    tiles = wanted(rig.slide, (0,))
    for tile in tiles[:5]:  # read before: on disk
        rig.loader.tile(rig.slide, tile.frame)
    rig.source.requests.clear()
    tally, _ = run(rig, tiles)
    assert (tally.cached, tally.fetched) == (5, 7)
    assert [numbers for _, numbers in rig.source.requests] == [[6, 7, 8, 9], [10, 11, 12]]


def test_max_bytes_bounds_what_the_disk_holds_and_a_rerun_fetches_nothing(
    test_slides, tmp_path,  # type: ignore[no-untyped-def]
) -> None:
    slide = named(test_slides, "jpeg_ybr")
    measuring = loader_for(slide)
    tiles = wanted(measuring.slide, (0,))
    sizes = [len(measuring.loader.tile(measuring.slide, tile.frame)) for tile in tiles]
    limit = sum(sizes[:6])
    rig = loader_for(slide, DiskCache(tmp_path / "cache", 1 << 30), frames_per_request=BATCH)
    tiles = wanted(rig.slide, (0,))
    tally, _ = run(rig, tiles, max_bytes=limit)
    assert 0 < tally.fetched < 12 and tally.left_out == 12 - tally.fetched
    assert tally.fetched_bytes <= limit + max(sizes)
    sent = len(rig.source.requests)
    again, _ = run(rig, tiles, max_bytes=limit)
    assert len(rig.source.requests) == sent and again.fetched == 0
    assert again.cached == tally.fetched and again.left_out == 12 - tally.fetched
    rest, _ = run(rig, tiles)
    assert rest.fetched == 12 - tally.fetched and rest.cached == tally.fetched


def test_a_failed_batch_is_listed_by_path_left_uncached_and_fetched_by_the_next_run(rig) -> None:  # type: ignore[no-untyped-def]
    tiles = wanted(rig.slide, (0,))
    rig.source.fail_next.append(FetchError("HTTP 500 injected"))
    tally, reports = run(rig, tiles, workers=1)
    assert (tally.fetched, tally.failed) == (8, 4)
    assert [failure.path for failure in reports.failures] == [tile.path for tile in tiles[:4]]
    assert all("HTTP 500 injected" in failure.reason for failure in reports.failures)
    assert not rig.tiles.on_disk(rig.slide, [tile.frame for tile in tiles[:4]])
    again, _ = run(rig, tiles)
    assert (again.cached, again.fetched, again.failed) == (8, 4, 0)


def test_a_stopped_run_starts_no_batch_and_keeps_what_landed(rig) -> None:  # type: ignore[no-untyped-def]
    tiles = wanted(rig.slide, (0,))
    stop = threading.Event()
    prefetcher = Prefetcher(rig.loader, rig.metrics, workers=1)

    def stop_after_first(tally: Tally, failures: list[Failure]) -> None:
        if tally.fetched:
            stop.set()

    tally = prefetcher.run(tiles, stop, stop_after_first)
    assert tally.stopped and tally.fetched == BATCH and len(rig.source.requests) == 1
    again, _ = run(rig, tiles)
    assert (again.cached, again.fetched) == (BATCH, 12 - BATCH)


def test_a_reader_of_a_tile_being_prefetched_shares_its_request(test_slides, tmp_path) -> None:  # type: ignore[no-untyped-def]
    rig = loader_for(named(test_slides, "jpeg_ybr"), DiskCache(tmp_path / "c", 1 << 30),
                     delay_s=0.3, frames_per_request=BATCH)
    tiles = wanted(rig.slide, (0,))[:BATCH]
    running = threading.Thread(target=run, args=(rig, tiles))
    running.start()
    while not rig.source.requests:
        threading.Event().wait(0.01)
    data = rig.loader.tile(rig.slide, tiles[2].frame)  # waits for the prefetch's request
    running.join()
    assert data[:2] == b"\xff\xd8" and len(rig.source.requests) == 1
