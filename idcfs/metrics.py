"""One registry of the mount's counters, rendered by the statistics file.

Components register what they count when they are built (`counter`, `histogram`) or a
reading of their own state (`gauge`); the statistics file (`/.idcfs-stats.json`) shows
`snapshot()`. Counters change on many threads at once (FUSE workers, read-ahead,
request slots, page-cache fillers), so each takes a lock of its own: a `+=` on a shared
int is not atomic under the GIL's switching. Names are dotted paths: "memory_cache.hits"
shows as {"memory_cache": {"hits": ...}}.
"""

from __future__ import annotations

import threading
from collections import Counter as CountBy
from collections.abc import Callable, Hashable
from typing import Any


class Counter:
    """A thread-safe count."""

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


class Metrics:
    """The registry: named counters, histograms and gauges; thread-safe."""

    def __init__(self) -> None:
        self._entries: dict[str, Counter | Histogram | Callable[[], Any]] = {}
        self._lock = threading.Lock()

    def counter(self, name: str) -> Counter:
        """The counter called `name` (made on first use; shared by every caller)."""
        return self._get_or_add(name, Counter)

    def histogram(self, name: str) -> Histogram:
        return self._get_or_add(name, Histogram)

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


def _read(entry: Counter | Histogram | Callable[[], Any]) -> Any:
    if isinstance(entry, Counter):
        return entry.value
    if isinstance(entry, Histogram):
        return entry.snapshot()
    return entry()
