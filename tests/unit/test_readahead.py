"""Read-ahead: which opens start it, how far it goes, in which batches, per grid, and
what it tells (on_landed) and offers (take_over)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from idcfs.cache.memory import ByteLRU
from idcfs.cache.tiles import TileCache
from idcfs.errors import FetchError
from idcfs.fetch.loader import TileClaims, TileLoader
from idcfs.fetch.readahead import GiveBack, ReadAhead, ReadAheadSettings
from idcfs.fetch.slides import SlideStore
from idcfs.metrics import Metrics
from idcfs.slide.model import FrameRef, Slide, TilePosition
from idcfs.slide.parse import parse_slide
from idcfs.tiles.convert import DEFAULT_QUALITY
from tests.support.memory_source import MemorySource
from tests.support.slides import GeneratedSlide

WSI = "1.2.840.10008.5.1.4.1.1.77.1.6"
Answer = Callable[[FrameRef], bytes | Exception]


def wide_slide(columns: int, planes: int = 1) -> Slide:
    """One level, one row of `columns` tiles per focal plane (a grid per plane)."""

    def element(vr: str, *values: Any) -> dict[str, Any]:
        return {"vr": vr, "Value": list(values)}

    meta = {
        "00080016": element("UI", WSI), "00080018": element("UI", "1.1"),
        "00080008": element("CS", "ORIGINAL", "PRIMARY", "VOLUME", "NONE"),
        "00280010": element("US", 256), "00280011": element("US", 256),
        "00280002": element("US", 3), "00280100": element("US", 8),
        "00280004": element("CS", "YBR_FULL_422"), "00280008": element("IS", columns * planes),
        "00480006": element("UL", 256 * columns), "00480007": element("UL", 256),
        "00480303": element("UL", planes),
    }
    return parse_slide("study", "series", [meta])


def tile_row(slide: Slide, plane: int = 0) -> list[TilePosition]:
    return slide.levels[0].grids[plane].tiles


def tile_bytes(frame: FrameRef) -> bytes | Exception:
    return b"tile %d" % frame.number


class RecordingLoader(TileLoader):
    """A real loader (claims, tile cache) whose read-ahead fetches are recorded and
    answered by `answer` instead of a source: bytes land in staging, an error fails it."""

    def __init__(self, staged_bytes: int = 1 << 20, answer: Answer = tile_bytes) -> None:
        self.metrics = Metrics()
        tiles = TileCache(ByteLRU(1 << 20), ByteLRU(staged_bytes), None, DEFAULT_QUALITY,
                          self.metrics)
        super().__init__(MemorySource([]), tiles, self.metrics)
        self.answer = answer
        self.claimed: list[int] = []
        self.batches: list[list[int]] = []
        self.abandoned: list[int] = []

    @property
    def fetched(self) -> list[int]:
        return [number for batch in self.batches for number in batch]

    def claim_for_prefetch(self, slide: Slide, frames: Sequence[FrameRef]) -> TileClaims:
        owned = super().claim_for_prefetch(slide, frames)
        self.claimed += [frame.number for frame in owned]
        return owned

    def fetch_claimed(self, slide: Slide, owned: TileClaims) -> None:
        self.batches.append([frame.number for frame in owned])
        for frame, claim in owned.items():
            answer = self.answer(frame)
            if isinstance(answer, Exception):
                claim.fail(answer)
            else:
                self.tiles.keep(slide, frame, answer, staged=True)
                claim.resolve(answer)

    def abandon_claimed(self, slide: Slide, owned: TileClaims) -> None:
        self.abandoned += [frame.number for frame in owned]
        super().abandon_claimed(slide, owned)


def scheduled(loader: RecordingLoader) -> int:
    return int(loader.metrics.value("readahead.scheduled_tiles"))


def finish_queued(readahead: ReadAhead) -> None:
    """Wait for the batches queued so far (later refills are given up)."""
    readahead._executor.shutdown(wait=True)


def wait_until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 10
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.005)


def test_readahead_follows_sequential_reads_only() -> None:
    loader, slide = RecordingLoader(), wide_slide(1000)
    readahead = ReadAhead(loader, loader.metrics, ReadAheadSettings(workers=1))
    tiles = tile_row(slide)
    for index in (500, 17, 901, 3, 640):  # random: no read-ahead
        readahead.on_open(slide, "grid", tiles, index)
    assert scheduled(loader) == 0
    for index in range(10):
        readahead.on_open(slide, "grid", tiles, index)
    readahead.close()
    assert scheduled(loader) > 16
    assert max(loader.claimed) <= 10 + ReadAheadSettings().max_window  # never further ahead


def test_readahead_stops_when_staging_is_full() -> None:
    loader, slide = RecordingLoader(), wide_slide(100)
    loader.tiles.staged.put("x", b"x" * (900 << 10))
    readahead = ReadAhead(loader, loader.metrics, ReadAheadSettings(workers=1))
    for index in range(10):
        readahead.on_open(slide, "grid", tile_row(slide), index)
    assert scheduled(loader) == 0


def test_readahead_requests_are_whole_batches() -> None:
    loader, slide = RecordingLoader(), wide_slide(3000)
    readahead = ReadAhead(loader, loader.metrics, ReadAheadSettings(workers=1))
    for index in range(1000):
        readahead.on_open(slide, "grid", tile_row(slide), index)
    finish_queued(readahead)
    assert loader.batches and all(len(batch) == 64 for batch in loader.batches)


def test_readahead_tells_which_tiles_landed() -> None:
    def odd_ones_only(frame: FrameRef) -> bytes | Exception:
        return b"tile %d" % frame.number if frame.number % 2 else FetchError("server said 500")

    loader, slide = RecordingLoader(answer=odd_ones_only), wide_slide(64)
    landed: list[tuple[FrameRef, bytes]] = []
    readahead = ReadAhead(loader, loader.metrics, ReadAheadSettings(workers=1),
                          on_landed=lambda slide, tiles: landed.extend(tiles))
    readahead.on_open(slide, "grid", tile_row(slide), 0)
    finish_queued(readahead)
    assert landed and all(frame.number % 2 and data == b"tile %d" % frame.number
                          for frame, data in landed)
    assert len(landed) == 32


def test_readahead_offers_batches_to_take_over_and_fetches_what_is_given_back() -> None:
    loader, slide = RecordingLoader(), wide_slide(64)
    offered: list[list[int]] = []
    give_backs: list[GiveBack] = []

    def take_over(slide: Slide, frames: list[FrameRef], give_back: GiveBack) -> list[FrameRef]:
        offered.append([frame.number for frame in frames])
        give_backs.append(give_back)
        return [frame for frame in frames if frame.number % 2 == 0]  # the even ones

    readahead = ReadAhead(loader, loader.metrics, ReadAheadSettings(workers=1),
                          take_over=take_over)
    tiles = tile_row(slide)
    readahead.on_open(slide, "grid", tiles, 0)
    wait_until(lambda: len(loader.fetched) == 32)
    assert offered == [list(range(1, 65))]
    assert sorted(loader.fetched) == list(range(1, 65, 2))  # the rest, claimed and fetched
    give_backs[0](slide, [tiles[1].frame, tiles[3].frame])  # frames 2 and 4
    wait_until(lambda: len(loader.fetched) == 34)
    readahead.close()
    assert loader.fetched[-2:] == [2, 4]


def test_readahead_closed_gives_up_what_it_claims() -> None:
    loader, slide = RecordingLoader(), wide_slide(8)
    readahead = ReadAhead(loader, loader.metrics, ReadAheadSettings(workers=1))
    readahead.close()
    readahead.fetch_frames(slide, [FrameRef("1.1", 7)])
    assert loader.abandoned == [7] and not readahead._queued
    assert loader.in_flight(slide, FrameRef("1.1", 7)) is None  # its claim ended


def test_streams_are_per_grid_key() -> None:
    loader, slide = RecordingLoader(), wide_slide(1000)
    readahead = ReadAhead(loader, loader.metrics, ReadAheadSettings(workers=1))
    tiles = tile_row(slide)
    for index, grid in zip((5, 6, 7), ("a", "b", "c"), strict=True):
        readahead.on_open(slide, grid, tiles, index)  # consecutive, but in three grids
    assert scheduled(loader) == 0
    for index in (5, 6, 7):
        readahead.on_open(slide, "a", tiles, index)
    readahead.close()
    assert scheduled(loader) > 0 and min(loader.claimed) == 8


def test_two_readers_of_two_grids_each_keep_their_stream() -> None:
    loader, slide = RecordingLoader(), wide_slide(1000, planes=2)
    readahead = ReadAhead(loader, loader.metrics, ReadAheadSettings(workers=1))
    for index in (5, 6, 7):  # interleaved opens of plane 0 and plane 1
        readahead.on_open(slide, "plane-0", tile_row(slide, 0), index)
        readahead.on_open(slide, "plane-1", tile_row(slide, 1), index)
    readahead.close()
    claimed = set(loader.claimed)
    assert 9 in claimed and 1000 + 9 in claimed  # frame numbers of both planes' tile 8


def test_beyond_grids_kept_the_oldest_grids_streams_are_dropped() -> None:
    def streak_after_other_grids(grids_kept: int) -> int:
        loader, slide = RecordingLoader(), wide_slide(1000)
        readahead = ReadAhead(loader, loader.metrics,
                              ReadAheadSettings(workers=1, grids_kept=grids_kept))
        tiles = tile_row(slide)
        readahead.on_open(slide, "a", tiles, 5)
        readahead.on_open(slide, "a", tiles, 6)
        readahead.on_open(slide, "b", tiles, 500)
        readahead.on_open(slide, "c", tiles, 500)  # the third grid: "a" is the oldest
        readahead.on_open(slide, "a", tiles, 7)  # continues a's stream, if kept
        readahead.close()
        return scheduled(loader)

    assert streak_after_other_grids(grids_kept=3) > 0
    assert streak_after_other_grids(grids_kept=2) == 0


def test_a_grid_opened_again_becomes_the_most_recent() -> None:
    loader, slide = RecordingLoader(), wide_slide(1000)
    readahead = ReadAhead(loader, loader.metrics, ReadAheadSettings(workers=1, grids_kept=2))
    tiles = tile_row(slide)
    readahead.on_open(slide, "a", tiles, 5)
    readahead.on_open(slide, "b", tiles, 500)
    readahead.on_open(slide, "a", tiles, 6)  # now "b" is the oldest
    readahead.on_open(slide, "c", tiles, 500)
    readahead.on_open(slide, "a", tiles, 7)
    readahead.close()
    assert scheduled(loader) > 0


def test_an_open_of_a_levels_first_tile_reads_the_level_in_one_request(
    test_slides: list[GeneratedSlide],
) -> None:
    generated = next(slide for slide in test_slides if slide.name == "jpeg_ybr")
    source = MemorySource(generated.files)
    slide = SlideStore(source).get(generated.study_uid, generated.series_uid)
    metrics = Metrics()
    tiles = TileCache(ByteLRU(8 << 20), ByteLRU(8 << 20), None, DEFAULT_QUALITY, metrics)
    loader = TileLoader(source, tiles, metrics)
    landed: list[int] = []
    readahead = ReadAhead(loader, metrics, ReadAheadSettings(workers=1),
                          on_landed=lambda slide, batch: landed.extend(f.number for f, _ in batch))
    grid = slide.levels[0].grids[0].tiles
    readahead.on_open(slide, "level-0", grid, 0)
    wait_until(lambda: len(landed) == 12)
    readahead.close()
    assert source.requests == [(grid[0].frame.instance_uid, list(range(1, 13)))]
    assert sorted(landed) == list(range(1, 13))
    assert all(tiles.is_staged(slide, tile.frame) for tile in grid)
