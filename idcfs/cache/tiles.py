"""Where a served tile can already be: memory, the staging area, or the disk cache.

Three tiers, looked up in that order by the loader:
- memory (`ByteLRU`): tiles that were read;
- staging: tiles read ahead and not read yet, a separate LRU bounded in bytes so that
  read-ahead never evicts what readers use; a read moves a tile to memory;
- disk (optional, `--cache-dir`): tiles of earlier reads and mounts, checked, with an
  index of their sizes (`TileSizes`) so a listing after a remount shows exact sizes;
  `idcfs prefetch` puts tiles there alone (`keep_on_disk`).

Keys: a tile is (series, instance, frame number, instance revision) in memory; on disk
the JPEG quality is part of the key too, since a re-encoded tile depends on it. The
revision (`InstanceInfo.revision`) is "" for DICOMweb and IDC's files (new pixel data
gets a new SOP Instance UID, as DICOM requires), a digest of the file's version for
files that can be rewritten (`--files`), so a file regenerated under the same UIDs is
never served from tiles of its old version. Computed files (renders, tissue masks,
`idcfs.fetch.computed`) carry the slide's revision (`Slide.revision`) the same way.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

from idcfs.cache.disk import DiskCache
from idcfs.cache.memory import ByteLRU
from idcfs.cache.sizes import TileSizes
from idcfs.metrics import Metrics
from idcfs.slide.model import FrameRef, Slide


def tile_key(slide: Slide, frame: FrameRef) -> Hashable:
    """The memory key of one served tile."""
    return (slide.series_uid, frame.instance_uid, frame.number, _revision(slide, frame))


def _revision(slide: Slide, frame: FrameRef) -> str:
    """The revision of the frame's instance ("" for an instance the slide does not
    describe: a bare slide of the tests, whose tiles are keyed as before)."""
    info = slide.instances.get(frame.instance_uid)
    return info.revision if info is not None else ""


def revised(key: str, revision: str) -> str:
    """A disk key with a revision (an instance's, or a slide's for its computed files),
    when there is one: keys without one are as they were before revisions."""
    return f"{key}/r{revision}" if revision else key


def _revised(key: str, slide: Slide, frame: FrameRef) -> str:
    """A disk key with the frame's instance's revision, when it has one."""
    return revised(key, _revision(slide, frame))


@dataclass(frozen=True)
class Found:
    """A tile at hand, and the tier it was in: "memory" or "staged" (read ahead)."""

    data: bytes
    tier: str


class TileCache:
    """The three tiers of served tiles; thread-safe, never blocking except on disk."""

    def __init__(
        self,
        memory: ByteLRU,
        staged: ByteLRU,
        disk: DiskCache | None,
        quality: int,
        metrics: Metrics,
    ) -> None:
        self.memory = memory
        self.staged = staged
        self.disk = disk
        self.quality = quality
        self.sizes = TileSizes(disk) if disk is not None else None
        self._disk_lookups = metrics.counter("disk_cache.lookups")
        self._disk_hits = metrics.counter("disk_cache.hits")
        metrics.gauge("disk_cache.misses", lambda: self._disk_lookups.value - self._disk_hits.value)
        metrics.gauge("readahead_staged_bytes", lambda: staged.current_bytes)

    # -- memory and staging -----------------------------------------------------------

    def for_reading(self, slide: Slide, frame: FrameRef) -> bytes | None:
        """A tile from memory; a staged one moves to memory (it is being read now)."""
        found = self.lookup(slide, frame)
        return None if found is None else found.data

    def lookup(self, slide: Slide, frame: FrameRef) -> Found | None:
        """Like `for_reading`, and which tier the tile was in."""
        key = tile_key(slide, frame)
        data = self.memory.get(key)
        if data is not None:
            return Found(data, "memory")
        data = self.staged.pop(key)
        if data is None:
            return None
        self.memory.put(key, data)
        return Found(data, "staged")

    def in_memory(self, slide: Slide, frame: FrameRef) -> bool:
        """Whether a tile is in memory or staged."""
        key = tile_key(slide, frame)
        return key in self.memory or key in self.staged

    def is_staged(self, slide: Slide, frame: FrameRef) -> bool:
        """Whether a tile was read ahead and not read since."""
        return tile_key(slide, frame) in self.staged

    def keep(self, slide: Slide, frame: FrameRef, data: bytes, staged: bool) -> None:
        """Keep a tile just fetched: on disk, then in staging (read ahead) or memory.

        Disk first: a reader finds the tile in memory only once it is on disk, so a
        daemon killed at any moment has every tile it served in the disk cache (it
        loses only tiles no reader got yet)."""
        if self.disk is not None:
            self.disk.put(self.disk_key(slide, frame), data)
            self._note_size(slide, frame, data)
        (self.staged if staged else self.memory).put(tile_key(slide, frame), data)

    def staging_nearly_full(self) -> bool:
        """Whether read-ahead should hold back (nobody reads what it fetched)."""
        return self.staged.current_bytes > self.staged.max_bytes * 3 // 4

    # -- disk -------------------------------------------------------------------------

    def from_disk(self, slide: Slide, frames: Sequence[FrameRef], staged: bool) -> dict[
        FrameRef, bytes
    ]:
        """The tiles among `frames` the disk cache holds, now also in memory or staging."""
        found = self.read_disk(slide, frames)
        if self.disk is not None:
            self._disk_lookups.add(len(set(frames)))
        target = self.staged if staged else self.memory
        for frame, data in found.items():
            self._disk_hits.add()
            target.put(tile_key(slide, frame), data)
            self._note_size(slide, frame, data)
        return found

    def on_disk(self, slide: Slide, frames: Sequence[FrameRef]) -> set[FrameRef]:
        """The tiles among `frames` the disk cache has an entry for (not read: cheap)."""
        if self.disk is None or not frames:
            return set()
        keys = {self.disk_key(slide, frame): frame for frame in frames}
        return {keys[key] for key in self.disk.holds(list(keys))}

    def read_disk(self, slide: Slide, frames: Sequence[FrameRef]) -> dict[FrameRef, bytes]:
        """The sound disk entries among `frames`, not kept in memory (a prefetch's check
        of tiles it just claimed: not a reader's hit)."""
        if self.disk is None or not frames:
            return {}
        keys = {self.disk_key(slide, frame): frame for frame in frames}
        return {keys[key]: data for key, data in self.disk.get_many(list(keys)).items()}

    def keep_on_disk(self, slide: Slide, frame: FrameRef, data: bytes) -> None:
        """Keep a tile prefetched for later in the disk cache only: a prefetch of a whole
        series must not evict from memory or staging what readers use now."""
        if self.disk is not None:
            self.disk.put(self.disk_key(slide, frame), data)
            self._note_size(slide, frame, data)

    def known_size(self, slide: Slide, frame: FrameRef) -> int | None:
        """The size of a tile the disk cache holds (from its size index), else None."""
        if self.sizes is None:
            return None
        return self.sizes.get(self._instance_key(slide, frame), frame.number)

    def disk_key(self, slide: Slide, frame: FrameRef) -> str:
        """A tile's key in the disk cache (the helper process reads it by this key)."""
        return _revised(
            f"tile/{slide.series_uid}/{frame.instance_uid}/{frame.number}/q{self.quality}",
            slide, frame)

    def flush(self) -> None:
        """Write the size index (at unmount: before the disk cache closes)."""
        if self.sizes is not None:
            self.sizes.flush()

    def _note_size(self, slide: Slide, frame: FrameRef, data: bytes) -> None:
        if self.sizes is not None:
            self.sizes.note(self._instance_key(slide, frame), frame.number, len(data))

    def _instance_key(self, slide: Slide, frame: FrameRef) -> str:
        return _revised(f"{slide.series_uid}/{frame.instance_uid}/q{self.quality}", slide, frame)
