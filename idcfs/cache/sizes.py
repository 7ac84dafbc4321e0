"""The sizes of the tiles in the disk cache, kept in the disk cache too.

After a remount a tile's size is otherwise unknown until it is opened (a placeholder
is shown, and the first open tells the kernel to ask again, which costs a round trip
per file). With this index, a level listed after a remount shows the exact size of
every tile the disk cache holds. Sizes are only a promise made ahead of the read: when
the bytes served differ (an evicted tile fetched again by a newer codec), the open
still corrects the kernel's view.

One entry per instance (and quality): an array of 32-bit sizes by frame number, 0 for
unknown. Changes are written at most every `flush_every_s` seconds and at unmount; a
crash loses only the sizes learnt since the last write.
"""

from __future__ import annotations

import threading
import time
from array import array

from idcfs.cache.disk import DiskCache

FLUSH_EVERY_S = 5.0


class TileSizes:
    """Frame sizes per instance, read from and written to a DiskCache; thread-safe."""

    def __init__(self, disk: DiskCache, flush_every_s: float = FLUSH_EVERY_S) -> None:
        self.disk = disk
        self.flush_every_s = flush_every_s
        self._sizes: dict[str, array[int]] = {}
        self._dirty: set[str] = set()
        self._last_flush = time.monotonic()
        self._lock = threading.Lock()

    def get(self, instance_key: str, number: int) -> int | None:
        """The stored size of frame `number` (1-based), or None when unknown."""
        with self._lock:
            sizes = self._load(instance_key)
            size = sizes[number - 1] if 0 < number <= len(sizes) else 0
        return size or None

    def note(self, instance_key: str, number: int, size: int) -> None:
        """Remember the size of a frame just stored in the disk cache."""
        with self._lock:
            sizes = self._load(instance_key)
            if len(sizes) < number:
                sizes.extend([0] * (number - len(sizes)))
            if sizes[number - 1] != size:
                sizes[number - 1] = size
                self._dirty.add(instance_key)
            due = time.monotonic() - self._last_flush >= self.flush_every_s
        if due:
            self.flush()

    def flush(self) -> None:
        """Write the arrays that changed."""
        with self._lock:
            changed = {key: self._sizes[key].tobytes() for key in self._dirty}
            self._dirty.clear()
            self._last_flush = time.monotonic()
        for key, data in changed.items():
            self.disk.put(_entry_key(key), data)

    def _load(self, instance_key: str) -> array[int]:
        sizes = self._sizes.get(instance_key)
        if sizes is None:
            sizes = array("I")
            stored = self.disk.get(_entry_key(instance_key))
            if stored is not None and len(stored) % sizes.itemsize == 0:
                sizes.frombytes(stored)
            self._sizes[instance_key] = sizes
        return sizes


def _entry_key(instance_key: str) -> str:
    return f"sizes/{instance_key}"
