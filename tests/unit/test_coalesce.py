"""RequestCoalescer: demand reads of one instance share requests, every future resolves."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from typing import Any

import pytest

from idcfs.errors import FetchError
from idcfs.fetch.coalesce import Batch, CoalesceSettings, RequestCoalescer
from idcfs.slide.model import FrameRef


class FakeSlide:
    series_uid = "series"


class SlowServer:
    """Answers a batch after `delay` seconds (or fails it); records each batch."""

    def __init__(self, delay: float = 0.05, fail: bool = False) -> None:
        self.delay = delay
        self.fail = fail
        self.batches: list[list[int]] = []
        self.abandoned: list[int] = []
        self.lock = threading.Lock()

    def run(self, slide: Any, batch: Batch) -> None:
        with self.lock:
            self.batches.append(sorted(frame.number for frame in batch))
        time.sleep(self.delay)
        for frame, future in batch.items():
            if self.fail:
                future.set_exception(FetchError("HTTP 500"))
            else:
                future.set_result(b"frame %d" % frame.number)
        if self.fail:
            raise FetchError("HTTP 500")

    def abandon(self, slide: Any, batch: Batch) -> None:
        self.abandoned += [frame.number for frame in batch]
        for future in batch.values():
            future.set_exception(FetchError("abandoned"))


class CountingServer(SlowServer):
    """A `SlowServer` that records the most batches it had in flight at once."""

    def __init__(self, delay: float) -> None:
        super().__init__(delay)
        self.in_flight = self.most = 0

    def run(self, slide: Any, batch: Batch) -> None:
        with self.lock:
            self.in_flight += 1
            self.most = max(self.most, self.in_flight)
        try:
            super().run(slide, batch)
        finally:
            with self.lock:
                self.in_flight -= 1


def _submit_concurrently(coalescer: RequestCoalescer, numbers: list[int]) -> dict[int, Future]:
    futures = {number: Future() for number in numbers}
    barrier = threading.Barrier(len(numbers))

    def submit(number: int) -> None:
        barrier.wait()
        coalescer.submit(FakeSlide(), {FrameRef("instance", number): futures[number]})  # type: ignore[arg-type]

    threads = [threading.Thread(target=submit, args=(n,)) for n in numbers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return futures


def test_concurrent_readers_share_requests() -> None:
    server = SlowServer(delay=0.2)
    coalescer = RequestCoalescer(server.run, server.abandon, CoalesceSettings(per_instance=2))
    futures = _submit_concurrently(coalescer, list(range(1, 17)))
    assert {n: f.result(timeout=5) for n, f in futures.items()} == {
        n: b"frame %d" % n for n in range(1, 17)}
    assert len(server.batches) <= 4, server.batches  # 16 readers, not 16 requests
    assert sorted(n for batch in server.batches for n in batch) == list(range(1, 17))
    coalescer.close()


def test_at_most_per_instance_requests_in_flight() -> None:
    server = CountingServer(delay=0.05)
    settings = CoalesceSettings(per_instance=2, max_frames=3)
    coalescer = RequestCoalescer(server.run, server.abandon, settings)
    futures = _submit_concurrently(coalescer, list(range(1, 31)))
    for future in futures.values():
        future.result(timeout=10)
    assert server.most <= 2
    assert all(len(batch) <= 3 for batch in server.batches)
    coalescer.close()


def test_a_failed_request_fails_its_readers_and_frees_the_slot() -> None:
    server = SlowServer(delay=0.01, fail=True)
    coalescer = RequestCoalescer(server.run, server.abandon, CoalesceSettings(per_instance=1))
    futures = _submit_concurrently(coalescer, [1, 2, 3])
    for future in futures.values():
        with pytest.raises(FetchError):
            future.result(timeout=5)
    server.fail = False
    again = _submit_concurrently(coalescer, [4])
    assert again[4].result(timeout=5) == b"frame 4"
    coalescer.close()


def test_close_abandons_what_is_queued() -> None:
    server = SlowServer(delay=0.3)
    coalescer = RequestCoalescer(server.run, server.abandon, CoalesceSettings(per_instance=1))
    first = _submit_concurrently(coalescer, [1])
    time.sleep(0.05)  # frame 1 is in flight; 2 and 3 must queue behind it
    queued = _submit_concurrently(coalescer, [2, 3])
    coalescer.close()
    for future in queued.values():
        with pytest.raises(FetchError):
            future.result(timeout=5)
    assert sorted(server.abandoned) == [2, 3]
    assert first[1].result(timeout=5) == b"frame 1"


def _readers_reading_on(coalescer: RequestCoalescer, readers: int, rounds: int) -> None:
    """Each reader asks for a frame, waits for it, takes 5-20 ms with it (a decode, say),
    and asks again."""

    def read(reader: int) -> None:
        for round_number in range(rounds):
            future: Future[bytes] = Future()
            frame = FrameRef("instance", 1 + reader + readers * round_number)
            coalescer.submit(FakeSlide(), {frame: future})  # type: ignore[arg-type]
            future.result(timeout=10)
            time.sleep(0.005 * (reader + 1))

    threads = [threading.Thread(target=read, args=(reader,)) for reader in range(readers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


@pytest.mark.parametrize("anticipate", [True, False])
def test_a_slot_waits_for_its_readers_to_ask_again(anticipate: bool) -> None:
    server = SlowServer(delay=0.2)
    settings = CoalesceSettings(per_instance=1, anticipate_fraction=0.5 if anticipate else 0,
                                anticipate_max_s=0.2)
    coalescer = RequestCoalescer(server.run, server.abandon, settings)
    _readers_reading_on(coalescer, readers=4, rounds=4)
    coalescer.close()
    if anticipate:  # each round is one request; the first may split
        assert len(server.batches) <= 5, server.batches
    else:  # the control: without waiting, returning readers miss the slot
        assert len(server.batches) > 5, server.batches


def test_byte_range_sources_send_each_demand_read_at_once() -> None:
    """With `for_byte_ranges(8)`, 8 readers (each in its own thread, as FUSE requests
    are) arriving one after another while the first requests are out each get a request
    of their own, all 8 in flight together, each sent from the reader's own thread."""
    server = CountingServer(delay=0.5)
    coalescer = RequestCoalescer(server.run, server.abandon, CoalesceSettings.for_byte_ranges(8))
    futures = {number: Future() for number in range(1, 9)}
    senders: list[str] = []

    def read(number: int) -> None:
        coalescer.submit(FakeSlide(), {FrameRef("instance", number): futures[number]})  # type: ignore[arg-type]
        assert futures[number].done()  # inline: sent, and landed, before submit returned
        senders.append(threading.current_thread().name)

    readers = [threading.Thread(target=read, args=(n,), name=f"reader-{n}") for n in futures]
    for reader in readers:
        reader.start()
        time.sleep(0.01)
    for reader in readers:
        reader.join(timeout=10)
    assert server.most == 8 and len(server.batches) == 8, server.batches
    assert sorted(senders) == sorted(reader.name for reader in readers)
    coalescer.close()
