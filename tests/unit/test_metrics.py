"""The metrics registry: exact counts under concurrency, nested snapshots, live gauges."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable

import pytest

from idcfs.metrics import Metrics

THREADS = 8
ADDS_PER_THREAD = 50_000


def run_in_threads(work: Callable[[], None]) -> None:
    """`work` on THREADS threads started together."""
    barrier = threading.Barrier(THREADS)

    def start() -> None:
        barrier.wait()
        work()

    threads = [threading.Thread(target=start) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def test_counters_are_exact_under_concurrent_adds() -> None:
    metrics = Metrics()

    def add_many() -> None:
        counter = metrics.counter("frames_fetched")  # every thread gets the same counter
        for _ in range(ADDS_PER_THREAD):
            counter.add()

    run_in_threads(add_many)
    assert metrics.value("frames_fetched") == THREADS * ADDS_PER_THREAD


def test_histograms_are_exact_under_concurrent_adds() -> None:
    metrics = Metrics()
    histogram = metrics.histogram("frames_per_request")

    def add_many() -> None:
        for index in range(ADDS_PER_THREAD):
            histogram.add(64 if index % 2 else 1)

    run_in_threads(add_many)
    half = THREADS * ADDS_PER_THREAD // 2
    assert histogram.snapshot() == {1: half, 64: half}


def test_snapshot_nests_dotted_names() -> None:
    metrics = Metrics()
    metrics.counter("page_cache_fill.stored").add(3)
    metrics.counter("page_cache_fill.dropped_busy").add()
    metrics.counter("a.b.c").add(2)
    metrics.histogram("frames_per_request").add(12)
    metrics.counter("requests")
    assert metrics.snapshot() == {
        "a": {"b": {"c": 2}},
        "frames_per_request": {12: 1},
        "page_cache_fill": {"dropped_busy": 1, "stored": 3},
        "requests": 0,
    }


def test_gauges_are_read_at_snapshot_time() -> None:
    metrics = Metrics()
    queue: list[int] = []
    metrics.gauge("readahead.queued", lambda: len(queue))
    assert metrics.snapshot() == {"readahead": {"queued": 0}}
    queue += [1, 2, 3]
    assert metrics.snapshot() == {"readahead": {"queued": 3}}
    assert metrics.value("readahead.queued") == 3


def test_a_name_is_one_kind_of_metric() -> None:
    metrics = Metrics()
    assert metrics.counter("hits") is metrics.counter("hits")
    with pytest.raises(TypeError, match="hits is a Counter"):
        metrics.histogram("hits")


def test_latency_percentiles_are_within_one_percent_in_bounded_memory() -> None:
    latency = Metrics().latency("frame_requests.latency")
    rng = random.Random(14)
    durations = sorted(rng.lognormvariate(-4, 1.5) for _ in range(20_000))
    for seconds in durations:
        latency.add(seconds)
    shown = latency.snapshot()
    assert shown["count"] == len(durations)
    for name, quantile in (("p50_ms", 0.50), ("p90_ms", 0.90), ("p99_ms", 0.99)):
        exact = 1000 * durations[int(quantile * (len(durations) - 1))]
        assert abs(shown[name] - exact) <= 0.011 * exact, (name, shown[name], exact)
    assert shown["max_ms"] == round(1000 * durations[-1], 3)
    assert len(latency._sketch._store.bins) <= 2048  # the bound, whatever the count


def test_latency_counts_are_exact_under_concurrent_adds() -> None:
    latency = Metrics().latency("frame_requests.latency")
    run_in_threads(lambda: [latency.add(0.001) for _ in range(5_000)])
    assert latency.snapshot()["count"] == THREADS * 5_000
    assert Metrics().latency("empty").snapshot() == {"count": 0}
