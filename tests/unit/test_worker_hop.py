"""The adapter's hop to a worker thread (`in_worker_thread`): results, errors, the
thread bound, and what a cancelled caller does with and without `abandon`."""

from __future__ import annotations

import threading
import time

import pytest
import trio

from idcfs.fuse.adapter import in_worker_thread


def test_the_result_or_the_error_of_the_call_comes_back_from_another_thread() -> None:
    async def main() -> None:
        limiter = trio.CapacityLimiter(2)
        where = await in_worker_thread(threading.get_ident, limiter, False)
        assert where != threading.get_ident()
        with pytest.raises(ValueError, match="refused"):
            await in_worker_thread(lambda: int("refused"), limiter, True)
        assert limiter.borrowed_tokens == 0

    trio.run(main)


def test_no_more_calls_run_at_once_than_the_limiter_allows() -> None:
    running, most = 0, 0
    lock = threading.Lock()

    def call() -> None:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.02)
        with lock:
            running -= 1

    async def main() -> None:
        limiter = trio.CapacityLimiter(3)
        async with trio.open_nursery() as nursery:
            for _ in range(10):
                nursery.start_soon(in_worker_thread, call, limiter, False)
        assert limiter.borrowed_tokens == 0

    trio.run(main)
    assert most == 3


def test_an_abandoning_caller_stops_waiting_and_the_thread_keeps_its_slot_to_its_end() -> None:
    release = threading.Event()
    finished = threading.Event()

    def call() -> str:
        release.wait(5)
        finished.set()
        return "late"

    async def main() -> None:
        limiter = trio.CapacityLimiter(1)
        began = trio.current_time()
        with trio.move_on_after(0.05):
            await in_worker_thread(call, limiter, True)
        assert trio.current_time() - began < 1
        assert limiter.borrowed_tokens == 1, "the thread still runs: its slot is taken"
        release.set()
        with trio.fail_after(5):
            while limiter.borrowed_tokens:
                await trio.sleep(0.01)
        assert finished.is_set()

    trio.run(main)


def test_a_caller_that_does_not_abandon_gets_the_result_before_its_cancellation() -> None:
    got: list[str] = []

    def call() -> str:
        time.sleep(0.2)
        return "done"

    async def main() -> None:
        limiter = trio.CapacityLimiter(1)
        with trio.move_on_after(0.05) as scope:
            got.append(await in_worker_thread(call, limiter, False))
            await trio.sleep(0)  # the cancellation lands at the next checkpoint
        assert scope.cancelled_caught
        assert limiter.borrowed_tokens == 0

    trio.run(main)
    assert got == ["done"]
