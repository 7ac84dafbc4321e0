"""Prefetch: warm the disk cache with many tiles before a job (`idcfs prefetch`).

The fetching is the loader's batch path (`TileLoader.warm_disk`: claims shared with
readers and read-ahead, one request per batch of up to 64 frames of one instance,
tiles kept in the disk cache only). This module plans and paces one run:

- tiles the disk cache already holds are skipped without a request, so a run that was
  interrupted resumes where it stopped, and a second run sends nothing;
- the rest go in batches of consecutive frames of one instance, `workers` in flight;
- `max_bytes` bounds what the disk holds of the wanted tiles (cached ones count): a
  batch starts only when it is estimated to fit beside the cached, fetched and
  in-flight bytes (the average tile so far; before any size is known, one tile alone),
  and near the end a batch takes half the room left, so a run stops short of the
  bound by less than two average tiles and passes it only when tiles run twice the
  average; a second run with the same bound sees the same room and fetches nothing;
- `stop` (the client left, the mount is closing) starts no new batch; batches in flight
  finish and what they fetched stays cached;
- `report` is told the tally after the plan, after every batch and at least every
  `HEARTBEAT_S` (a client's progress bar and its bound on waiting).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

from idcfs.fetch.loader import TileLoader, WarmResult
from idcfs.metrics import Metrics
from idcfs.slide.model import FrameRef, Slide

log = logging.getLogger(__name__)

HEARTBEAT_S = 1.0
CHECK_CHUNK = 1024  # tiles looked up in the disk cache at a time (the cache's lock between)


@dataclass(frozen=True)
class WantedTile:
    """A tile to warm, and its path in the mount (what a failure is reported as)."""

    slide: Slide
    frame: FrameRef
    path: str


@dataclass(frozen=True)
class Failure:
    """A tile (or a directory that could not be listed) left out, and why."""

    path: str
    reason: str


@dataclass
class Tally:
    """Where a run stands; every count is of tiles."""

    tiles: int = 0  # wanted
    cached: int = 0  # in the disk cache before they were asked for: skipped
    cached_bytes: int = 0  # their sizes, where the size index knows them
    fetched: int = 0  # put in the disk cache by this run
    fetched_bytes: int = 0
    failed: int = 0
    left_out: int = 0  # not fetched: beyond max_bytes
    stopped: bool = False  # stopped before every wanted tile was tried

    @property
    def to_fetch(self) -> int:
        return self.tiles - self.cached


Report = Callable[[Tally, list[Failure]], None]


@dataclass
class _Batch:
    """Consecutive wanted tiles of one instance: one request."""

    slide: Slide
    tiles: list[WantedTile]
    estimate: int = 0  # bytes expected, while in flight


@dataclass
class _Run:
    tally: Tally
    max_bytes: int | None
    pending: deque[_Batch]
    running: dict[Future[WarmResult], _Batch] = field(default_factory=dict)
    known: int = 0  # tiles whose size is known, for the average
    known_bytes: int = 0


class Prefetcher:
    """Runs prefetches through one loader; thread-safe (each run is its own)."""

    def __init__(self, loader: TileLoader, metrics: Metrics, workers: int = 4) -> None:
        self.loader = loader
        self.workers = max(1, workers)
        self._runs = metrics.counter("prefetch.runs")
        self._cached = metrics.counter("prefetch.tiles_cached")
        self._fetched = metrics.counter("prefetch.tiles_fetched")
        self._bytes = metrics.counter("prefetch.bytes_fetched")
        self._failed = metrics.counter("prefetch.tiles_failed")

    def run(self, wanted: Sequence[WantedTile], stop: threading.Event, report: Report,
            max_bytes: int | None = None) -> Tally:
        """Warm the disk cache with `wanted` (each tile once); blocks until every batch
        started has landed. The tally says what happened."""
        self._runs.add()
        tally = Tally(tiles=len(wanted))
        missing = self._skip_cached(wanted, tally, stop)
        run = _Run(tally, max_bytes, deque(_batches(missing, self.loader.max_frames_per_request)))
        run.known, run.known_bytes = tally.cached, tally.cached_bytes
        report(tally, [])
        with ThreadPoolExecutor(self.workers, "idcfs-prefetch") as pool:
            while not stop.is_set() and self._start(run, pool):
                done, _ = wait(run.running, timeout=HEARTBEAT_S, return_when=FIRST_COMPLETED)
                report(tally, self._landed(run, done))
            self._landed(run, wait(run.running).done)  # stopped: they land all the same
        left = sum(len(batch.tiles) for batch in run.pending)
        if stop.is_set() and left:
            tally.stopped = True
        else:
            tally.left_out = left
        return tally

    def _skip_cached(self, wanted: Sequence[WantedTile], tally: Tally,
                     stop: threading.Event) -> list[WantedTile]:
        """The wanted tiles the disk cache does not hold; the others are counted."""
        tiles = self.loader.tiles
        missing: list[WantedTile] = []
        for start in range(0, len(wanted), CHECK_CHUNK):
            if stop.is_set():
                return missing + list(wanted[start:])
            chunk = wanted[start : start + CHECK_CHUNK]
            for slide, group in _by_slide(chunk):
                held = tiles.on_disk(slide, [tile.frame for tile in group])
                for tile in group:
                    if tile.frame not in held:
                        missing.append(tile)
                        continue
                    tally.cached += 1
                    tally.cached_bytes += tiles.known_size(slide, tile.frame) or 0
        self._cached.add(tally.cached)
        return missing

    def _start(self, run: _Run, pool: ThreadPoolExecutor) -> bool:
        """Start batches while workers are free and the budget has room; False when
        nothing is in flight any more (the run is over)."""
        while run.pending and len(run.running) < self.workers:
            batch = self._next_batch(run)
            if batch is None:
                break
            frames = [tile.frame for tile in batch.tiles]
            run.running[pool.submit(self.loader.warm_disk, batch.slide, frames)] = batch
        return bool(run.running)

    def _next_batch(self, run: _Run) -> _Batch | None:
        """The next batch, cut to the room left under max_bytes; None when there is none."""
        if run.max_bytes is None:
            return run.pending.popleft()
        batch = run.pending[0]
        per_tile = _estimate(run, batch)
        used = run.tally.cached_bytes + run.tally.fetched_bytes
        room = run.max_bytes - used - sum(b.estimate for b in run.running.values())
        if room <= 0:
            return None
        count = room // per_tile
        if count < len(batch.tiles):
            count //= 2  # near the end: half the room at a time, as estimates may be low
        if count == 0 and not run.known and not run.running:
            count = 1  # no size known yet: one tile tells the average
        if count == 0:
            return None
        if count < len(batch.tiles):
            run.pending[0] = _Batch(batch.slide, batch.tiles[count:])
            batch = _Batch(batch.slide, batch.tiles[:count])
        else:
            run.pending.popleft()
        batch.estimate = per_tile * len(batch.tiles)
        return batch

    def _landed(self, run: _Run, done: Iterable[Future[WarmResult]]) -> list[Failure]:
        """Count the batches that landed; the failures among their tiles."""
        failures: list[Failure] = []
        tally = run.tally
        for future in done:
            batch = run.running.pop(future)
            results = _results(future, batch)
            for tile in batch.tiles:
                outcome = results[tile.frame]
                if isinstance(outcome, Exception):
                    tally.failed += 1
                    self._failed.add()
                    failures.append(Failure(tile.path, str(outcome) or type(outcome).__name__))
                    continue
                tally.fetched += 1
                tally.fetched_bytes += outcome
                run.known += 1
                run.known_bytes += outcome
                self._fetched.add()
                self._bytes.add(outcome)
        return failures


def _results(future: Future[WarmResult], batch: _Batch) -> WarmResult:
    """What a batch brought; an error of the batch as a whole is every tile's."""
    try:
        return future.result()
    except Exception as error:  # warm_disk reports per tile; this is a defect
        log.exception("prefetch batch of %d tiles failed", len(batch.tiles))
        return {tile.frame: error for tile in batch.tiles}


def _estimate(run: _Run, batch: _Batch) -> int:
    """Bytes a tile of `batch` is expected to take: the average of the tiles known so
    far, else its uncompressed size (an upper bound)."""
    if run.known and run.known_bytes:
        return max(1, run.known_bytes // run.known)
    info = batch.slide.instances[batch.tiles[0].frame.instance_uid]
    pixels = info.pixels
    return max(1, pixels.rows * pixels.columns * max(3, pixels.samples_per_pixel))


def _by_slide(tiles: Iterable[WantedTile]) -> list[tuple[Slide, list[WantedTile]]]:
    groups: dict[str, tuple[Slide, list[WantedTile]]] = {}
    for tile in tiles:
        groups.setdefault(tile.slide.series_uid, (tile.slide, []))[1].append(tile)
    return list(groups.values())


def _batches(tiles: Iterable[WantedTile], size: int) -> list[_Batch]:
    """Tiles by instance (in the order instances first appear), each in frame order,
    in batches of `size`."""
    groups: dict[tuple[str, str], tuple[Slide, list[WantedTile]]] = {}
    for tile in tiles:
        key = (tile.slide.series_uid, tile.frame.instance_uid)
        groups.setdefault(key, (tile.slide, []))[1].append(tile)
    batches: list[_Batch] = []
    for slide, group in groups.values():
        group.sort(key=lambda tile: tile.frame.number)
        batches += [_Batch(slide, group[start : start + size])
                    for start in range(0, len(group), size)]
    return batches
