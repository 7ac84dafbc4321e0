"""Demand reads of one instance share requests (an I/O scheduler's request merging).

Random readers (an ML loader's workers) each ask for one tile. Sent one request per
tile, they cost the server a whole request each; a server that re-reads the instance
per request (Orthanc) then spends its CPU on parsing, and a quota counted in requests
(IDC's proxy) runs out sooner. Here at most `per_instance` requests per instance are in
flight for demand reads. A request starts at once when a slot is free, after a short
gathering pause (`gather_s`) in which readers arriving together join it; frames asked
for while both slots are busy wait and leave together, up to `max_frames` per request,
as soon as a slot frees.

When a request lands, its readers read on and ask again within milliseconds. The slot
waits for them (anticipation, as in the anticipatory disk scheduler) before its next
request: until as many new frames have been asked for as the last request carried, at
most `anticipate_fraction` of that request's duration and never past `anticipate_max_s`.
Without the wait a slot leaves with whatever queued meanwhile, its own readers miss it
by a few milliseconds and wait a whole request longer.

The caller has claimed each frame (`idcfs.fetch.claims`) and waits on its future.
`run_batch` fetches a batch and `abandon_batch` gives one up (at close); each must end
every claim it is given, success or failure (the claim rule).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from idcfs.fetch.claims import Claim
from idcfs.slide.model import FrameRef, Slide

log = logging.getLogger(__name__)

Batch = dict[FrameRef, Claim[bytes]]
RunBatch = Callable[[Slide, Batch], None]


@dataclass
class _InstanceQueue:
    slide: Slide
    pending: Batch = field(default_factory=dict)
    in_flight: int = 0
    arrivals: int = 0  # frames ever queued: a slot counts its readers' return by it
    closed: bool = False


@dataclass(frozen=True)
class CoalesceSettings:
    per_instance: int = 2
    gather_s: float = 0.002
    max_frames: int = 64
    workers: int = 8
    anticipate_fraction: float = 0.1
    anticipate_max_s: float = 0.05
    inline: bool = False  # the reader whose frame opens a slot sends its request itself

    @classmethod
    def for_byte_ranges(cls, connections: int) -> CoalesceSettings:
        """For sources that read frames by byte ranges (DICOM files in a bucket): a
        request costs the server its bytes only, not a parse of the instance, so demand
        reads of one instance go out at once, up to the connections, instead of waiting
        for one of two shared requests; nor do they wait to gather others (frames that
        are not adjacent would be separate ranged GETs anyway, in parallel), or wait
        after a request for its readers' next asks: that would add to every random
        read what a shared request saves only on a server that parses per request. The
        reader that opens a slot sends from its own thread (`inline`): a hand-off to a
        pool thread and back cost a random read two thread switches for nothing."""
        return cls(per_instance=connections, workers=connections, gather_s=0.0,
                   anticipate_fraction=0.0, inline=True)


class RequestCoalescer:
    """Queues claimed frames per instance and sends them in shared requests."""

    def __init__(
        self, run_batch: RunBatch, abandon_batch: RunBatch, settings: CoalesceSettings | None = None
    ) -> None:
        self.run_batch = run_batch
        self.abandon_batch = abandon_batch
        self.settings = settings or CoalesceSettings()
        self._queues: dict[Hashable, _InstanceQueue] = {}
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._executor = ThreadPoolExecutor(self.settings.workers, "idcfs-fetch")

    def submit(self, slide: Slide, owned: Batch) -> None:
        """Queue claimed frames. Their futures resolve when fetched. Never blocks, unless
        `inline`: then the caller sends the request its frames open a slot for (and what
        queues meanwhile) before it returns."""
        starts: list[Hashable] = []
        with self._lock:
            for frame, future in owned.items():
                key = (slide.series_uid, frame.instance_uid)
                queue = self._queues.setdefault(key, _InstanceQueue(slide))
                queue.pending[frame] = future
                queue.arrivals += 1
                if queue.in_flight < self.settings.per_instance and key not in starts:
                    queue.in_flight += 1
                    starts.append(key)
            self._arrived.notify_all()
        if starts and self.settings.inline:
            for key in starts[1:]:
                self._start(key)
            self._drain(starts[0])  # in the caller's thread, which waits for it anyway
            return
        for key in starts:
            self._start(key)

    def close(self) -> None:
        """Stop: frames still queued get an error."""
        self._executor.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            queues = list(self._queues.values())
            self._queues.clear()
            for queue in queues:
                queue.closed = True
            self._arrived.notify_all()
        for queue in queues:
            self.abandon_batch(queue.slide, queue.pending)

    def _start(self, key: Hashable) -> None:
        try:
            self._executor.submit(self._drain, key)
        except RuntimeError:  # closed: nothing will send these
            with self._lock:
                queue = self._queues.pop(key, None)
            if queue is not None:
                self.abandon_batch(queue.slide, queue.pending)

    def _drain(self, key: Hashable) -> None:
        """One slot: send what is pending, then what queued meanwhile, until none is."""
        if self.settings.gather_s > 0:  # sleep(0) would still hand the GIL to another thread
            time.sleep(self.settings.gather_s)
        expected_arrivals, wait_s = 0, 0.0
        while True:
            with self._lock:
                queue = self._queues.get(key)
                if queue is None:
                    return
                if wait_s > 0:  # anticipation (a wait of 0 would only drop the lock)
                    self._arrived.wait_for(
                        lambda q=queue, n=expected_arrivals: q.arrivals >= n or q.closed,
                        timeout=wait_s)
                if queue.closed:
                    return
                batch = self._take(queue)
                if not batch:
                    queue.in_flight -= 1
                    if queue.in_flight == 0:
                        del self._queues[key]
                    return
            started = time.monotonic()
            self._run(queue.slide, batch)
            with self._lock:
                expected_arrivals = queue.arrivals + len(batch)
            wait_s = self._anticipation(time.monotonic() - started)

    def _anticipation(self, request_s: float) -> float:
        """How long a slot waits for its readers to ask again after a request of
        `request_s`."""
        return min(self.settings.anticipate_fraction * request_s, self.settings.anticipate_max_s)

    def _take(self, queue: _InstanceQueue) -> Batch:
        frames = sorted(queue.pending, key=lambda frame: frame.number)
        return {frame: queue.pending.pop(frame) for frame in frames[: self.settings.max_frames]}

    def _run(self, slide: Slide, batch: Batch) -> None:
        try:
            self.run_batch(slide, batch)
        except Exception as error:  # the batch's futures carry it to their readers
            log.debug("request for %d frames failed: %s", len(batch), error)
