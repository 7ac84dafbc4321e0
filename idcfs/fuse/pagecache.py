"""Filling the kernel's page cache with tiles read ahead, before they are opened.

When read-ahead lands a batch of tiles, their bytes are handed to the kernel with
FUSE's store notification (`pyfuse3.notify_store`). The reader's `open()` still comes
to the daemon (it keeps the page cache: `keep_cache`), but its `read()` is then served
by the kernel, with no request to the daemon: after a remount, reading a level from the
disk cache costs one request per file instead of two.

A tile is only stored when the kernel was shown its exact size (when its directory was
listed, its size was known from the size index, or foretold right from its file's frame
index: `TileLoader.size_hints`): the kernel keeps the pages of a file only up to the size
it holds, and another size would make it drop them at the first `stat`.
Only tiles not opened yet are stored (one opened already was read through the daemon).
Stores run on a thread of their own, never on the FUSE event loop, and never into an
open file: the kernel locks a page while a read of it waits for the daemon, and a store
to that page waits for the lock. From this thread the store just waits for the event
loop to answer the read; from the event loop it would wait forever. Batches offered
while this thread is behind are dropped (their tiles are read through the daemon as
usual); nothing waits for it. It must be stopped before the FUSE session closes.
"""

from __future__ import annotations

import errno
import logging
import queue
import threading
from collections.abc import Callable

import pyfuse3

from idcfs.fs.nodes import TileFile, TileFileIndex
from idcfs.metrics import Metrics
from idcfs.slide.model import FrameRef, Slide

log = logging.getLogger(__name__)

QUEUED_BATCHES = 16
STOP_WAIT_S = 2.0

Store = Callable[[int, int, bytes], None]


class PageCacheFiller:
    """Stores tiles that read-ahead landed into the kernel's page cache; thread-safe."""

    def __init__(
        self,
        tile_index: TileFileIndex,
        is_open: Callable[[int], bool],
        metrics: Metrics,
        store: Store = pyfuse3.notify_store,
        queued_batches: int = QUEUED_BATCHES,
    ) -> None:
        self.tile_index = tile_index
        self.is_open = is_open
        self._store = store
        self._queue: queue.Queue[list[tuple[TileFile, bytes]]] = queue.Queue(queued_batches)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="idcfs-pagecache", daemon=True)
        self.stored = metrics.counter("page_cache_fill.stored")
        self.skipped = metrics.counter("page_cache_fill.skipped_opened")
        self.dropped = metrics.counter("page_cache_fill.dropped_busy")
        self.unknown = metrics.counter("page_cache_fill.not_known_to_kernel")

    def start(self) -> None:
        """Begin storing; call once the FUSE session exists."""
        self._thread.start()

    def offer(self, slide: Slide, landed: list[tuple[FrameRef, bytes]]) -> None:
        """Queue tiles that just landed; never blocks (a batch that does not fit is
        dropped)."""
        if self._stopping.is_set():
            return
        batch = []
        for frame, data in landed:
            for node in self.tile_index.files(slide, frame):
                if node.size()[0] == len(data):  # what the kernel was shown
                    batch.append((node, data))
        if not batch:
            return
        try:
            self._queue.put_nowait(batch)
        except queue.Full:
            self.dropped.add(len(batch))

    def stop(self) -> None:
        """Stop storing and wait (briefly) for a store under way; before the session
        closes, since a store after that would write to a closed session."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(STOP_WAIT_S)

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                batch = self._queue.get(timeout=0.5)
            except queue.Empty:
                continue
            for node, data in batch:
                if self._stopping.is_set():
                    return
                if not self._store_one(node, data):
                    self._stopping.set()
                    return

    def _store_one(self, node: TileFile, data: bytes) -> bool:
        """Store one tile; False when the kernel cannot take stores at all."""
        if self.is_open(node.inode) or not node.read_ahead_unread():
            self.skipped.add()  # its reader is at it or was: the kernel has it, or will
            return True
        try:
            self._store(node.inode, 0, data)
        except OSError as error:
            if error.errno == errno.ENOENT:  # not looked up yet, or forgotten
                self.unknown.add()
                return True
            log.warning("cannot fill the page cache (%s); reads go through the daemon", error)
            return False
        self.stored.add()
        return True
