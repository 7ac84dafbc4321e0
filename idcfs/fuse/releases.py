"""Keeping the kernel's queue of RELEASE requests short while opens flood in.

open() waits for its OPEN to be answered; close() does not wait for its RELEASE. The
kernel sends RELEASE as a background request: at most `max_background` of them (the
kernel's default, 12: pyfuse3 has no way to raise it) are with the daemon at once, the
rest wait in a queue nothing bounds. 64 readers opening disk-cached tiles as fast as
they were answered got half as many releases through as opens (1,100/s against
2,400/s, docs/PERFORMANCE.md, "Soak"), so handles already closed piled up in the daemon:
63,000 after a minute, each keeping its tile's content (300 MB); `OpenFiles.is_open`
said yes for every tile, so no open stored its content in the page cache; and while
the queue is longer than `max_background`, the kernel holds back every read-ahead READ
(`fc->blocked`): reads that reached the daemon waited 5-12 s, until the flood paused.

So when the open handles grow `surge` past those that stayed open through the last
drain, new opens wait (on the event loop, no thread) until releases bring the handles
down to `settled` above that, or `max_wait_s` passes. A reader that waits in open()
holds no handle, so the queue drains (over 10,000 releases a second once opens pause)
and the reads held back go. Handles still open at the end of a whole drain are held by
their programs, not released late: the next drain starts `surge` above them, so a
program holding many files waits at most `max_wait_s` per `surge` opens.
"""

from __future__ import annotations

import trio

from idcfs.fuse.openfiles import OpenFiles
from idcfs.metrics import Metrics

SURGE = 256
SETTLED = 16
MAX_WAIT_S = 0.5


class ReleaseBacklog:
    """Holds opens back while releases lag; every call is on the FUSE event loop."""

    def __init__(self, open_files: OpenFiles, metrics: Metrics, surge: int = SURGE,
                 settled: int = SETTLED, max_wait_s: float = MAX_WAIT_S) -> None:
        self._open = open_files
        self.surge = surge
        self.settled = settled
        self.max_wait_s = max_wait_s
        self._held_open = 0  # handles that stayed open through the last drain (or fewer)
        self._drained: trio.Event | None = None  # while a drain is on: set when it ends
        self._drain_ends_at = 0.0
        self.drains = metrics.counter("fuse.release_drains")
        self.opens_held = metrics.counter("fuse.opens_held_for_releases")

    async def before_open(self) -> None:
        """Return at once, or when the drain under way (or started now) ends."""
        count = self._open.count()
        self._held_open = min(self._held_open, count)
        if self._drained is None:
            if count < self._held_open + self.surge:
                return
            self._drained = trio.Event()
            self._drain_ends_at = trio.current_time() + self.max_wait_s
            self.drains.add()
        drained = self._drained
        self.opens_held.add()
        with trio.move_on_at(self._drain_ends_at):
            await drained.wait()
        if self._drained is drained:  # out of time: what is still open is held
            self._end(self._open.count())

    def released(self) -> None:
        """After a handle is removed: end the drain once few enough are left."""
        count = self._open.count()
        self._held_open = min(self._held_open, count)
        if self._drained is not None and count <= self._held_open + self.settled:
            self._end(self._held_open)

    def _end(self, held_open: int) -> None:
        assert self._drained is not None
        self._held_open = held_open
        self._drained.set()
        self._drained = None
