"""One registry of the mount's counters, rendered by the statistics file.

Components register what they count when they are built (`counter`, `histogram`,
`latency`) or a reading of their own state (`gauge`); the statistics file
(`/.idcfs-stats.json`, read by `idcfs stats`) shows `snapshot()`. What each entry means,
and the sums they make, is docs/SEMANTICS.md, "Statistics". Counters change on many
threads at once (FUSE workers, read-ahead, request slots, page-cache fillers), so each
takes a lock of its own: a `+=` on a shared int is not atomic under the GIL's switching.
Names are dotted paths: "memory_cache.hits" shows as {"memory_cache": {"hits": ...}}.
"""

from __future__ import annotations

import threading
from collections import Counter as CountBy
from collections.abc import Callable, Hashable
from typing import Any

from ddsketch import LogCollapsingLowestDenseDDSketch

STATS_FILE = ".idcfs-stats.json"  # the statistics file at the root of every mount
LATENCY_ACCURACY = 0.01  # a percentile is within 1 % of the true value
LATENCY_BINS = 2048  # the sketch's bound: ~16 KB whatever the number of requests
PERCENTILES = {"p50_ms": 0.50, "p90_ms": 0.90, "p99_ms": 0.99}


class Counter:
    """A thread-safe count (or a level, as requests in flight: `add(1)`, `add(-1)`)."""

    def __init__(self) -> None:
        self._value = 0
        self._lock = threading.Lock()

    def add(self, amount: int = 1) -> None:
        with self._lock:
            self._value += amount

    @property
    def value(self) -> int:
        return self._value


class Histogram:
    """Thread-safe counts by key (frames per request: how many requests carried N)."""

    def __init__(self) -> None:
        self._counts: CountBy[Hashable] = CountBy()
        self._lock = threading.Lock()

    def add(self, key: Hashable, amount: int = 1) -> None:
        with self._lock:
            self._counts[key] += amount

    def snapshot(self) -> dict[Hashable, int]:
        with self._lock:
            return dict(sorted(self._counts.items(), key=lambda item: str(item[0])))


class Latency:
    """Thread-safe percentiles of durations in bounded memory (a DDSketch: a percentile
    within 1 % of the true value, however many durations were added)."""

    def __init__(self) -> None:
        self._sketch = LogCollapsingLowestDenseDDSketch(LATENCY_ACCURACY, LATENCY_BINS)
        self._max_s = 0.0
        self._lock = threading.Lock()

    def add(self, seconds: float) -> None:
        with self._lock:
            self._sketch.add(max(seconds, 0.0))
            self._max_s = max(self._max_s, seconds)

    def snapshot(self) -> dict[str, float | int]:
        """count, and the median, 90th and 99th percentiles, mean and max in ms."""
        with self._lock:
            count = int(self._sketch.count)
            shown: dict[str, float | int] = {"count": count}
            if count == 0:
                return shown
            for name, quantile in PERCENTILES.items():
                shown[name] = round(1000 * self._sketch.get_quantile_value(quantile), 3)
            shown["mean_ms"] = round(1000 * self._sketch.sum / count, 3)
            shown["max_ms"] = round(1000 * self._max_s, 3)
            return shown


Entry = Counter | Histogram | Latency | Callable[[], Any]


class Metrics:
    """The registry: named counters, histograms and gauges; thread-safe."""

    def __init__(self) -> None:
        self._entries: dict[str, Entry] = {}
        self._lock = threading.Lock()

    def counter(self, name: str) -> Counter:
        """The counter called `name` (made on first use; shared by every caller)."""
        return self._get_or_add(name, Counter)

    def histogram(self, name: str) -> Histogram:
        return self._get_or_add(name, Histogram)

    def latency(self, name: str) -> Latency:
        return self._get_or_add(name, Latency)

    def gauge(self, name: str, read: Callable[[], Any]) -> None:
        """Show `read()` under `name` (a value read when the statistics are rendered)."""
        with self._lock:
            self._entries[name] = read

    def value(self, name: str) -> Any:
        """The current value under `name` (tests and benchmarks read single figures)."""
        with self._lock:
            entry = self._entries[name]
        return _read(entry)

    def snapshot(self) -> dict[str, Any]:
        """Every entry, nested by the dots of its name."""
        with self._lock:
            entries = list(self._entries.items())
        nested: dict[str, Any] = {}
        for name, entry in sorted(entries):
            *parents, leaf = name.split(".")
            target = nested
            for parent in parents:
                target = target.setdefault(parent, {})
            target[leaf] = _read(entry)
        return nested

    def _get_or_add(self, name: str, kind: type[Any]) -> Any:
        with self._lock:
            entry = self._entries.get(name)
            if entry is None:
                entry = self._entries[name] = kind()
            if not isinstance(entry, kind):
                raise TypeError(f"metric {name} is a {type(entry).__name__}, not a {kind.__name__}")
            return entry


def _read(entry: Entry) -> Any:
    if isinstance(entry, Counter):
        return entry.value
    if isinstance(entry, Histogram | Latency):
        return entry.snapshot()
    return entry()
