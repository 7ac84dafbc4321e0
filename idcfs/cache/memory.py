"""The in-memory frame cache: LRU over served tile bytes, bounded in bytes."""

from __future__ import annotations

import threading
from collections.abc import Hashable

import cachetools


class ByteLRU:
    """A thread-safe LRU cache of bytes values whose total size stays under `max_bytes`."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: cachetools.LRUCache[Hashable, bytes] = cachetools.LRUCache(
            maxsize=max_bytes, getsizeof=len
        )
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> bytes | None:
        """The value, or None; not counted (callers count what a lookup means to them:
        `TileLoader` counts tile reads, however many looks into the cache each takes)."""
        with self._lock:
            return self._entries.get(key)

    def put(self, key: Hashable, value: bytes) -> None:
        """Store `value`; one larger than the whole cache is simply not kept."""
        if len(value) > self.max_bytes:
            return
        with self._lock:
            self._entries[key] = value

    def pop(self, key: Hashable) -> bytes | None:
        """Remove and return a value (None when absent)."""
        with self._lock:
            return self._entries.pop(key, None)

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._entries

    @property
    def current_bytes(self) -> int:
        with self._lock:
            return int(self._entries.currsize)
