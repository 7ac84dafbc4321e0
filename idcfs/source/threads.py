"""Thread pools whose threads all run before the first task that matters.

`ThreadPoolExecutor` starts a thread per task submitted until it has `max_workers`, so
requests sent together by a fresh pool each wait for a thread to start (~0.5 ms, then
the GIL): the header reads of the first series entered spread over ~5 ms at an RTT of
20 ms, and connections opened ahead of them (`HttpBucketStore.preconnect`) held up the
listing they were meant to overlap by ~4 ms. Pools made here start every thread at
construction (at mount), where nothing waits for them.
"""

from __future__ import annotations

import contextlib
import threading
from concurrent.futures import ThreadPoolExecutor

START_WAIT_S = 5.0  # a thread started late only costs its first task that wait


def started_pool(workers: int, name: str) -> ThreadPoolExecutor:
    """A pool of `workers` threads named `name`_N, all started (not waited for)."""
    pool = ThreadPoolExecutor(workers, name)
    started = threading.Barrier(workers)

    def wait() -> None:  # a thread busy with this one is not reused: all `workers` start
        with contextlib.suppress(threading.BrokenBarrierError):
            started.wait(timeout=START_WAIT_S)

    for _ in range(workers):
        pool.submit(wait)
    return pool
