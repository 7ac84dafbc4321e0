"""Files computed from stored frames (rendered regions, tissue masks), kept like tiles.

A render and a tissue mask are each made once and then served like a tile: from the
memory LRU, else the disk cache (when `--cache-dir` is on), else computed by the first
asker while the others wait on its claim (bounded by the mount's `--timeout`). Each
read is counted as one tile read by where it came from (`tile_reads.*`), with its
disk-cache lookups, so the statistics' sums hold (docs/SEMANTICS.md, "Statistics").

Keys: what the caller names the file by (its series and what it is), with the slide's
revision (`Slide.revision`, `idcfs.cache.tiles.revised`) when its instances have one,
added here for every computed file: a DICOM file rewritten under the same UIDs between
mounts never serves a render or a mask of its old version from the disk cache. Slides
without revisions (DICOMweb, IDC) keep the caller's key as it is.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future

from idcfs.cache.tiles import TileCache, revised
from idcfs.fetch.claims import DEFAULT_WAIT_S, Claims, wait
from idcfs.metrics import Metrics
from idcfs.slide.model import Slide

READ_TIERS = ("memory", "waited", "disk", "source", "failed")


class ComputedFiles:
    """Computed contents of slides by key (one string for memory and disk, with the
    slide's revision); thread-safe."""

    def __init__(self, tiles: TileCache, metrics: Metrics, wait_s: float = DEFAULT_WAIT_S) -> None:
        self._memory = tiles.memory
        self._disk = tiles.disk
        self._claims: Claims[bytes] = Claims(wait_s)
        self._reads = {tier: metrics.counter(f"tile_reads.{tier}") for tier in READ_TIERS}
        self._disk_lookups = metrics.counter("disk_cache.lookups")
        self._disk_hits = metrics.counter("disk_cache.hits")

    def get(self, slide: Slide, name: str, compute: Callable[[], bytes]) -> bytes:
        """The content: from memory, from disk, or `compute()`d (one at a time per key;
        the others wait for it). Whatever `compute` raises reaches every waiter."""
        key = self.key(slide, name)
        found = self._memory.get(key)
        if found is not None:
            return self._served("memory", found)
        future, claim = self._claims.claim(key)
        if claim is None:
            try:
                return self._served("waited", wait(future, self._claims.wait_timeout))
            except Exception:
                self._reads["failed"].add()
                raise
        try:
            data, where = self._from_disk_or_computed(key, compute)
        except BaseException as error:
            claim.fail(error)
            self._reads["failed"].add()
            raise
        self._memory.put(key, data)  # before the claim ends: the next asker finds it
        claim.resolve(data)
        return self._served(where, data)

    def cached(self, slide: Slide, name: str) -> bytes | None:
        """The content in memory, else None; never blocks (counted when found)."""
        found = self._memory.get(self.key(slide, name))
        return None if found is None else self._served("memory", found)

    def known(self, slide: Slide, name: str) -> bytes | None:
        """The content in memory or on disk, else None: for a listing's exact sizes,
        neither a read nor a request (a disk hit is kept in memory)."""
        key = self.key(slide, name)
        found = self._memory.get(key)
        if found is None and self._disk is not None:
            found = self._disk.get(key)
            if found is not None:
                self._memory.put(key, found)
        return found

    def running(self, slide: Slide, name: str) -> Future[bytes] | None:
        """The future of a computation under way, else None."""
        return self._claims.running(self.key(slide, name))

    @staticmethod
    def key(slide: Slide, name: str) -> str:
        """The file's key in the memory and disk caches: `name` with the slide's
        revision when it has one (module docstring)."""
        return revised(name, slide.revision)

    def waited(self, future: Future[bytes]) -> bytes:
        """The content of a finished `running` future the caller waited for."""
        return self._served("waited", future.result())

    def _from_disk_or_computed(self, key: str,
                               compute: Callable[[], bytes]) -> tuple[bytes, str]:
        if self._disk is not None:
            self._disk_lookups.add()
            stored = self._disk.get(key)
            if stored is not None:
                self._disk_hits.add()
                return stored, "disk"
        data = compute()
        if self._disk is not None:
            self._disk.put(key, data)
        return data, "source"

    def _served(self, where: str, data: bytes) -> bytes:
        self._reads[where].add()
        return data
