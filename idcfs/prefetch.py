"""Read-ahead: when opens walk a tile grid in order, fetch the next tiles before they
are asked for, in growing batches, several requests in flight.

Each grid keeps a few streams (one per reader walking it: `cp -r`, `tar`, or 8
readers over 8 slices of a level). An open that continues a stream lengthens its
window (128, then 256 tiles); an open that continues none starts a new stream
with no read-ahead, so random reads (an ML loader) fetch only what they ask for.
Read-ahead lands in the loader's staging area, which is bounded in bytes and separate
from the memory cache; when the staging area is nearly full (nobody consumes what was
read ahead) no more is scheduled. Frames are claimed when scheduled (single flight),
so a reader that catches up waits for the batch rather than asking on its own.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from idcfs.fetch.loader import TileLoader
from idcfs.slide.model import FrameRef, Slide, TilePosition

log = logging.getLogger(__name__)


@dataclass
class Stream:
    """One reader's walk through a grid."""

    last: int
    ahead_until: int
    streak: int = 0
    window: int = 0


@dataclass(frozen=True)
class ReadAheadSettings:
    workers: int = 4
    first_window: int = 128
    max_window: int = 256
    min_streak: int = 2
    streams_per_grid: int = 16
    max_batch: int = 64
    min_batch: int = 8


class ReadAhead:
    """Schedules read-ahead for tile opens; thread-safe and never blocking the caller."""

    def __init__(self, loader: TileLoader, settings: ReadAheadSettings | None = None) -> None:
        self.loader = loader
        self.settings = settings or ReadAheadSettings()
        self._executor = ThreadPoolExecutor(self.settings.workers, "idcfs-readahead")
        self._streams: dict[int, list[Stream]] = {}
        self._lock = threading.Lock()
        self._queued: dict[int, tuple[Slide, dict[FrameRef, Future[bytes]]]] = {}
        self._batch_ids = itertools.count()
        self.scheduled_tiles = 0

    def on_open(self, slide: Slide, tiles: Sequence[TilePosition], index: int) -> None:
        """Note that tile `index` of a grid was opened; maybe fetch the ones after it."""
        with self._lock:
            stream = self._stream_for(id(tiles), index)
            span = self._advance(stream, index, len(tiles))
        if span is not None:
            self._schedule(slide, tiles, span, stream)

    def close(self) -> None:
        """Stop: queued batches are abandoned (their claims released), none is started."""
        self._executor.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            queued = list(self._queued.values())
            self._queued.clear()
        for slide, owned in queued:
            self.loader.abandon_claimed(slide, owned)

    def _stream_for(self, grid: int, index: int) -> Stream:
        streams = self._streams.setdefault(grid, [])
        for stream in streams:
            if stream.last < index <= max(stream.last + 2, stream.ahead_until - 1):
                stream.streak += 1
                stream.last = index
                return stream
            if stream.last == index:
                return stream
        stream = Stream(last=index, ahead_until=index + 1)
        streams.append(stream)
        if len(streams) > self.settings.streams_per_grid:
            streams.pop(0)
        return stream

    def _advance(self, stream: Stream, index: int, count: int) -> tuple[int, int] | None:
        settings = self.settings
        if stream.streak < settings.min_streak or self._staging_nearly_full():
            return None
        already_ahead = stream.ahead_until - index - 1
        if stream.window and already_ahead > stream.window // 2:
            return None  # refill in chunks, so requests carry many frames
        if stream.window == 0:
            stream.window = settings.first_window
        else:
            stream.window = min(stream.window * 2, settings.max_window)
        start = max(stream.ahead_until, index + 1)
        end = min(index + 1 + stream.window, count)
        if end < count and end - start > settings.max_batch:
            end = start + (end - start) // settings.max_batch * settings.max_batch
        if end <= start:
            return None
        stream.ahead_until = end
        return start, end

    def _staging_nearly_full(self) -> bool:
        staged = self.loader.staged
        return staged.current_bytes > staged.max_bytes * 3 // 4

    def _schedule(
        self, slide: Slide, tiles: Sequence[TilePosition], span: tuple[int, int], stream: Stream
    ) -> None:
        start, end = span
        settings = self.settings
        span = end - start
        size = settings.max_batch if span >= settings.max_batch else max(
            settings.min_batch, -(-span // settings.workers))
        for first in range(start, end, size):
            frames = [tile.frame for tile in tiles[first : min(first + size, end)]]
            owned = self.loader.claim_for_prefetch(slide, frames)
            if not owned:
                continue
            self.scheduled_tiles += len(owned)
            batch = next(self._batch_ids)
            with self._lock:
                self._queued[batch] = (slide, owned)
            self._executor.submit(self._fetch, batch)

    def _fetch(self, batch: int) -> None:
        with self._lock:
            slide, owned = self._queued.pop(batch, (None, {}))
        if slide is None:
            return
        try:
            self.loader.fetch_claimed(slide, owned)
        except Exception as error:  # a reader waiting for one of these tiles sees it too
            log.debug("read-ahead of %d tiles failed: %s", len(owned), error)
