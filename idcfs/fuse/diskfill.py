"""Filling the kernel's page cache from the disk cache, in a helper process.

After a remount, reading a level from the disk cache cost this process a disk read, a
checksum and a store per tile, on threads that took the GIL from the FUSE loop at every
SQLite and zlib call: the reader then waited on the loop. Instead, when read-ahead is
about to read a batch, the tiles the kernel was shown an exact size for (the size index
knew it at listing) are handed to a helper process (`idcfs.fuse.diskfill_process`) that
holds the FUSE session's descriptor too: it reads them from the disk cache, checks them
(checksum, and the exact size the kernel holds), and stores each in the page cache.

A file stored so is opened without its content: its reads are served by the kernel.
Should the kernel drop the pages, a read that reaches the daemon loads the content
then, and gets EIO if it is no longer the size the kernel holds. Tiles the helper did
not store go back to read-ahead, fetched as usual. When the helper is behind, batches
are not taken (read-ahead reads them itself). When it fails, it is not restarted.
Only tiles nobody has open are handed over (a store into a page whose read waits for
the daemon waits for that read to be answered; in the helper, that wait is harmless).
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import subprocess
import sys
import threading
from collections.abc import Callable

from idcfs.cache.disk import DiskCache
from idcfs.fetch.loader import TileLoader
from idcfs.fetch.readahead import GiveBack
from idcfs.fs.nodes import TileFile, TileFileIndex
from idcfs.fuse.fuse_store import session_fd
from idcfs.metrics import Metrics
from idcfs.slide.model import FrameRef, Slide

log = logging.getLogger(__name__)

QUEUED_BATCHES = 16
STOP_WAIT_S = 2.0

Batch = tuple[Slide, dict[FrameRef, list[TileFile]], GiveBack]


class DiskPageFiller:
    """Hands batches of disk-cached tiles to the helper process; thread-safe."""

    def __init__(
        self,
        tile_index: TileFileIndex,
        is_open: Callable[[int], bool],
        loader: TileLoader,
        disk: DiskCache,
        metrics: Metrics,
        queued_batches: int = QUEUED_BATCHES,
    ) -> None:
        self.tile_index = tile_index
        self.is_open = is_open
        self.loader = loader
        self.disk = disk
        self._queue: queue.Queue[Batch | None] = queue.Queue(queued_batches)
        self._process: subprocess.Popen[bytes] | None = None
        self._thread = threading.Thread(target=self._run, name="idcfs-diskfill", daemon=True)
        self._stopping = threading.Event()  # unmount
        self._failed = threading.Event()  # the helper ended or misbehaved
        self.stored = metrics.counter("disk_page_fill.stored")
        self.given_back = metrics.counter("disk_page_fill.given_back")
        self.not_taken_busy = metrics.counter("disk_page_fill.not_taken_busy")
        metrics.gauge("disk_page_fill.running", lambda: self.running)

    def start(self) -> bool:
        """Start the helper once the FUSE session exists; False when it cannot run."""
        fd = session_fd()
        if fd is None:
            log.info("no single FUSE session descriptor: the page cache is filled in-process")
            return False
        command = [sys.executable, "-m", "idcfs.fuse.diskfill_process", str(fd),
                   str(self.disk.directory), str(self.disk.max_bytes)]
        try:
            self._process = subprocess.Popen(
                command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, pass_fds=[fd],
            )
        except OSError as error:
            log.warning("cannot start the disk page filler (%s)", error)
            return False
        self._thread.start()
        return True

    @property
    def running(self) -> bool:
        return (self._process is not None and not self._stopping.is_set()
                and not self._failed.is_set())

    def take(self, slide: Slide, frames: list[FrameRef], give_back: GiveBack) -> list[FrameRef]:
        """Take the frames whose files the kernel holds at an exact size, unopened and
        not in memory; never blocks (when the helper is behind, nothing is taken). Those
        it then fails to store go to `give_back`."""
        if not self.running:
            return []
        wanted = {}
        for frame in frames:
            nodes = self.tile_index.files(slide, frame)
            if nodes and self._fillable(slide, frame, nodes):
                wanted[frame] = nodes
        if not wanted:
            return []
        try:
            self._queue.put_nowait((slide, wanted, give_back))
        except queue.Full:
            self.not_taken_busy.add(len(wanted))
            return []
        return list(wanted)

    def _fillable(self, slide: Slide, frame: FrameRef, nodes: list[TileFile]) -> bool:
        sizes = {node.exact_size for node in nodes}
        return (
            None not in sizes
            and len(sizes) == 1
            and not any(node.filled or self.is_open(node.inode) for node in nodes)
            and not self.loader.holds(slide, frame)
        )

    def stop(self) -> None:
        """Stop the helper (at most a few seconds); before the FUSE session closes."""
        self._stopping.set()
        process = self._process
        if process is None:
            return
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)
        with contextlib.suppress(OSError, ValueError):
            if process.stdin is not None:
                process.stdin.close()
        try:
            process.wait(STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            log.warning("disk page filler (pid %d) did not stop: killed", process.pid)
            process.kill()
            process.wait()
        self._thread.join(STOP_WAIT_S)

    def _run(self) -> None:
        """Send batches until unmount; after a failure, give every batch still queued
        back to read-ahead."""
        while True:
            batch = self._queue.get()
            if batch is None or self._stopping.is_set():
                return
            slide, wanted, give_back = batch
            stored = self._ask_or_fail(slide, wanted) if self.running else set()
            if self._stopping.is_set():
                return
            self._settle(slide, wanted, stored, give_back)

    def _ask_or_fail(self, slide: Slide, wanted: dict[FrameRef, list[TileFile]]) -> set[int]:
        try:
            return self._ask(slide, wanted)
        except (OSError, ValueError) as error:
            if not self._stopping.is_set():
                self._failed.set()
                log.warning("disk page filler stopped (%s%s): tiles are read in-process",
                            error, self._helper_said())
            return set()

    def _helper_said(self) -> str:
        """The helper's last words on stderr (it is stopped first, if it still runs)."""
        process = self._process
        assert process is not None and process.stderr is not None
        if process.poll() is None:
            process.kill()
            process.wait()
        said = process.stderr.read().decode(errors="replace").strip()
        return f"; {said.splitlines()[-1]}" if said else ""

    def _ask(self, slide: Slide, wanted: dict[FrameRef, list[TileFile]]) -> set[int]:
        """Send one request to the helper; the inodes it stored."""
        process = self._process
        assert process is not None and process.stdin is not None and process.stdout is not None
        request = [
            [self.loader.tiles.disk_key(slide, frame), nodes[0].exact_size,
             [node.inode for node in nodes]]
            for frame, nodes in wanted.items()
        ]
        process.stdin.write(json.dumps(request).encode() + b"\n")
        process.stdin.flush()
        answer = process.stdout.readline()
        if not answer:
            raise OSError(f"the helper process ended (exit code {process.poll()})")
        return set(json.loads(answer))

    def _settle(self, slide: Slide, wanted: dict[FrameRef, list[TileFile]],
                stored: set[int], give_back: GiveBack) -> None:
        """Mark the files stored; give the tiles stored nowhere back to read-ahead."""
        missed = []
        for frame, nodes in wanted.items():
            filled = [node for node in nodes if node.inode in stored]
            for node in filled:
                node.filled = True
            self.stored.add(len(filled))
            if not filled:
                missed.append(frame)
        if missed:
            self.given_back.add(len(missed))
            try:
                give_back(slide, missed)
            except Exception:  # read-ahead closed meanwhile: readers fetch on demand
                log.exception("cannot give tiles back to read-ahead")
