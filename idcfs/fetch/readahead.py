"""Read-ahead: when opens walk a tile grid in order, fetch the next tiles before they
are asked for, in growing batches, several requests in flight.

Each grid keeps a few streams (one per reader walking it: `cp -r`, `tar`, or 8
readers over 8 slices of a level). An open that continues a stream lengthens its
window (128, then 256 tiles); an open that continues none starts a new stream
with no read-ahead, so random reads (an ML loader) fetch only what they ask for.
The one exception is an open of a grid's first tile, where `cp`, `tar`, `rsync` and
`find` start: it is taken as the start of a walk at once. The opened tile itself
goes into the first batch, so a walk costs whole batches from its first tile on.
Read-ahead lands in the loader's staging area, which is bounded in bytes and separate
from the memory cache; when the staging area is nearly full (nobody consumes what was
read ahead) no more is scheduled. Frames are claimed when scheduled (single flight),
so a reader that catches up waits for the batch rather than asking on its own.
`on_landed`, if given, is told of each batch that landed (the page-cache filler then
stores it in the kernel's page cache: `idcfs.fuse.pagecache`). `take_over`, if given, is
offered each batch before it is claimed, and takes the tiles it will put in the kernel's
page cache itself (`idcfs.fuse.diskfill`); it hands back those it could not through the
`GiveBack` it is passed (this object's `fetch_frames`). Streams are kept per grid for
the `grids_kept` grids opened most recently; older grids' streams are dropped.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from idcfs.fetch.loader import TileClaims, TileLoader
from idcfs.metrics import Metrics
from idcfs.slide.model import FrameRef, Slide, TilePosition

log = logging.getLogger(__name__)

ACTIVE_STREAM_S = 10.0  # a stream opened this recently is a reader walking now (statistics)

LandedListener = Callable[[Slide, list[tuple[FrameRef, bytes]]], None]
GiveBack = Callable[[Slide, list[FrameRef]], None]
TakeOver = Callable[[Slide, list[FrameRef], GiveBack], list[FrameRef]]


@dataclass
class Stream:
    """One reader's walk through a grid."""

    last: int
    ahead_until: int
    streak: int = 0
    window: int = 0
    alive: bool = True
    opened_at: float = 0.0  # monotonic time of its last open


@dataclass(frozen=True)
class QueuedBatch:
    """Tiles claimed for one read-ahead request, waiting for a worker."""

    slide: Slide
    tiles: Sequence[TilePosition]
    stream: Stream | None
    owned: TileClaims


@dataclass(frozen=True)
class ReadAheadSettings:
    workers: int = 4
    first_window: int = 256
    max_window: int = 512
    min_streak: int = 2
    streams_per_grid: int = 16
    max_batch: int = 64
    grids_kept: int = 1024


class ReadAhead:
    """Schedules read-ahead for tile opens; thread-safe and never blocking the caller."""

    def __init__(
        self,
        loader: TileLoader,
        metrics: Metrics,
        settings: ReadAheadSettings | None = None,
        on_landed: LandedListener | None = None,
        take_over: TakeOver | None = None,
    ) -> None:
        self.loader = loader
        self.settings = settings or ReadAheadSettings()
        self.on_landed = on_landed
        self.take_over = take_over
        self._executor = ThreadPoolExecutor(self.settings.workers, "idcfs-readahead")
        self._streams: OrderedDict[Hashable, list[Stream]] = OrderedDict()
        self._lock = threading.Lock()
        self._queued: dict[int, QueuedBatch] = {}
        self._batch_ids = itertools.count()
        self._scheduled_tiles = metrics.counter("readahead.scheduled_tiles")
        metrics.gauge("readahead.streams", self._live_streams)
        metrics.gauge("readahead.batches_queued", lambda: len(self._queued))

    def on_open(
        self, slide: Slide, grid: Hashable, tiles: Sequence[TilePosition], index: int
    ) -> None:
        """Note that tile `index` of a grid (`grid` names it) was opened; maybe fetch the
        ones after it."""
        with self._lock:
            stream = self._stream_for(grid, index)
            stream.opened_at = time.monotonic()
            span = self._advance(stream, index, len(tiles))
        if span is not None:
            self._schedule(slide, tiles, span, stream)

    def _refill(self, slide: Slide, tiles: Sequence[TilePosition], stream: Stream) -> None:
        """After a batch landed: queue the next one if the stream's window has room, so
        the workers stay busy while the reader waits for an earlier batch."""
        with self._lock:
            span = self._advance(stream, stream.last, len(tiles)) if stream.alive else None
        if span is not None:
            self._schedule(slide, tiles, span, stream)

    def fetch_frames(self, slide: Slide, frames: list[FrameRef]) -> None:
        """Fetch these tiles into the staging area now (tiles `take_over` gave back)."""
        self._submit(slide, (), frames, None)

    def close(self) -> None:
        """Stop: queued batches are abandoned (their claims released), none is started."""
        self._executor.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            queued = list(self._queued.values())
            self._queued.clear()
        for batch in queued:
            self.loader.abandon_claimed(batch.slide, batch.owned)

    def _live_streams(self) -> int:
        """Readers walking a grid now: streams that read ahead and were opened in the
        last `ACTIVE_STREAM_S` (a random reader's streams never read ahead)."""
        since = time.monotonic() - ACTIVE_STREAM_S
        with self._lock:
            return sum(stream.window > 0 and stream.opened_at >= since
                       for streams in self._streams.values() for stream in streams)

    def _stream_for(self, grid: Hashable, index: int) -> Stream:
        streams = self._streams_of(grid)
        for stream in streams:
            if stream.last < index <= max(stream.last + 2, stream.ahead_until - 1):
                stream.streak += 1
                stream.last = index
                return stream
            if stream.last == index:
                return stream
        stream = Stream(last=index, ahead_until=index)
        if index == 0:  # where cp, tar, rsync and find start
            stream.streak = self.settings.min_streak
        streams.append(stream)
        if len(streams) > self.settings.streams_per_grid:
            streams.pop(0).alive = False
        return stream

    def _streams_of(self, grid: Hashable) -> list[Stream]:
        """The grid's streams, the grid now the most recent; the oldest grid's streams
        are dropped beyond `grids_kept`."""
        streams = self._streams.get(grid)
        if streams is None:
            streams = self._streams[grid] = []
            if len(self._streams) > self.settings.grids_kept:
                _, dropped = self._streams.popitem(last=False)
                for stream in dropped:
                    stream.alive = False
        else:
            self._streams.move_to_end(grid)
        return streams

    def _advance(self, stream: Stream, index: int, count: int) -> tuple[int, int] | None:
        """The span to read ahead now: whole batches up to `window` tiles past `index`.

        A batch is added as soon as there is room for a whole one, so the workers always
        have the next request queued; each refill doubles the window, up to the maximum.
        """
        settings = self.settings
        if stream.streak < settings.min_streak or self.loader.tiles.staging_nearly_full():
            return None
        window = stream.window or settings.first_window
        start = max(stream.ahead_until, index)
        end = min(index + 1 + window, count)
        if end < count:
            end = start + (end - start) // settings.max_batch * settings.max_batch
        if end <= start:
            return None
        stream.window = min(window * 2, settings.max_window)
        stream.ahead_until = end
        return start, end

    def _schedule(
        self, slide: Slide, tiles: Sequence[TilePosition], span: tuple[int, int], stream: Stream
    ) -> None:
        start, end = span
        size = self.settings.max_batch
        for first in range(start, end, size):
            frames = [tile.frame for tile in tiles[first : min(first + size, end)]]
            if self.take_over is not None:
                taken = set(self.take_over(slide, frames, self.fetch_frames))
                frames = [frame for frame in frames if frame not in taken]
            if not self._submit(slide, tiles, frames, stream):
                return

    def _submit(
        self, slide: Slide, tiles: Sequence[TilePosition], frames: list[FrameRef],
        stream: Stream | None,
    ) -> bool:
        """Claim and queue one batch; False once closed."""
        owned = self.loader.claim_for_prefetch(slide, frames)
        if not owned:
            return True
        self._scheduled_tiles.add(len(owned))
        batch = next(self._batch_ids)
        with self._lock:
            self._queued[batch] = QueuedBatch(slide, tiles, stream, owned)
        try:
            self._executor.submit(self._fetch, batch)
        except RuntimeError:  # closed: give up what close() may not have seen
            with self._lock:
                queued = self._queued.pop(batch, None)
            if queued is not None:
                self.loader.abandon_claimed(slide, queued.owned)
            return False
        return True

    def _fetch(self, batch_id: int) -> None:
        with self._lock:
            batch = self._queued.pop(batch_id, None)
        if batch is None:
            return
        try:
            self.loader.fetch_claimed(batch.slide, batch.owned)
        except Exception as error:  # a reader waiting for one of these tiles sees it too
            log.debug("read-ahead of %d tiles failed: %s", len(batch.owned), error)
            return
        finally:
            self._tell_landed(batch)
        if batch.stream is not None:
            self._refill(batch.slide, batch.tiles, batch.stream)

    def _tell_landed(self, batch: QueuedBatch) -> None:
        listener = self.on_landed
        if listener is None:
            return
        landed = [
            (frame, claim.future.result())
            for frame, claim in batch.owned.items()
            if claim.done and claim.future.exception() is None
        ]
        if landed:
            try:
                listener(batch.slide, landed)
            except Exception:  # a listener's failure must not stop read-ahead
                log.exception("read-ahead listener failed")
