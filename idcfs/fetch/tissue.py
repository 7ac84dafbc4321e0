"""Tissue masks of slides: computed once per series from one low-resolution level, kept
like tiles, and the tiles of each grid they select (docs/SEMANTICS.md, "Tissue lists").

Which pixels (`mask_plan`): the whole image at the size of the coarsest stored level
whose long side has at least MASK_MIN_SIDE pixels (the finest level when none has),
among the levels holding the base level's first grid (its first focal plane and optical
path, the first plane directory). On a 100,000-pixel slide that is a level of 1,000 to
4,000 pixels a side: some 16 to 250 frames of 256, from one instance. The pixels come
from the shared `RegionReader.pixels` (at that level's downsample, so it reads exactly
that level's frames, in batches), the threshold from `idcfs.tiles.tissue`.

Kept: the mask's PNG in the tiles' memory LRU and, with `--cache-dir`, in the disk cache
(MASK_VERSION in the key: a changed rule is computed afresh, not read back; and the
slide's revision, `ComputedFiles.key`: a rewritten file's mask too). One
computation per series at a time (claims): concurrent readers of tissue.txt files and
of tissue-mask.png wait for it, bounded by the mount's deadline. Selecting a grid's
tiles from a kept mask is arithmetic on it (no request).

Counted as a stitched label is (docs/SEMANTICS.md, "Statistics"): each tissue file a
reader reads is one tile read (`tile_reads.<where>`: `memory`, `waited`, `disk`,
`source` when computed for it, `failed`) and a disk lookup when it looked there; the
frames a computation reads are frame requests. `tissue_masks.computed` counts masks
computed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from idcfs.cache.tiles import TileCache
from idcfs.fetch.claims import DEFAULT_WAIT_S
from idcfs.fetch.computed import ComputedFiles
from idcfs.fetch.regions import GridKey, Region
from idcfs.metrics import Metrics
from idcfs.slide.model import Level, Slide, TileGrid
from idcfs.tiles.tissue import mask_from_png, mask_png, tiles_with_tissue, tissue_mask

MASK_MIN_SIDE = 1024  # pixels on the long side of the level a mask is computed from
MASK_VERSION = 1  # part of the disk cache key: bump when the rule changes


class RegionPixels(Protocol):
    """What masks need of `idcfs.fetch.regions.RegionReader`."""

    def pixels(self, slide: Slide, grid_key: GridKey, region: Region, out_width: int,
               out_height: int) -> np.ndarray: ...


@dataclass(frozen=True)
class MaskPlan:
    """Where a slide's mask comes from: the grid and level, and the mask's size."""

    grid_key: GridKey
    level: Level

    @property
    def size(self) -> tuple[int, int]:
        return self.level.width, self.level.height


def mask_plan(slide: Slide) -> MaskPlan | None:
    """The level and grid a slide's mask is computed from (module docstring); None for a
    slide without levels."""
    if not slide.levels or not slide.levels[0].grids:
        return None
    key = slide.levels[0].grids[0].key
    having = slide.levels_with(key)
    large_enough = [level for level in having
                    if max(level.width, level.height) >= MASK_MIN_SIDE]
    chosen = (max(large_enough, key=lambda level: level.downsample) if large_enough
              else min(having, key=lambda level: level.downsample))
    return MaskPlan(key, chosen)


class TissueMasks:
    """Each slide's tissue mask (as PNG bytes) and the tiles it selects; thread-safe,
    blocking. Masks are kept like tiles (`ComputedFiles`)."""

    def __init__(self, regions: RegionPixels, tiles: TileCache, metrics: Metrics,
                 wait_s: float = DEFAULT_WAIT_S) -> None:
        self.regions = regions
        self._kept = ComputedFiles(tiles, metrics, wait_s)
        self._computed = metrics.counter("tissue_masks.computed")

    def png(self, slide: Slide) -> bytes:
        """A reader's mask: from memory, from disk, or computed (once at a time); counted
        as one tile read by where it came from."""
        return self._kept.get(slide, self._name(slide), lambda: self._compute(slide))

    def at_hand(self, slide: Slide) -> bytes | None:
        """A reader's mask when it is in memory (never blocks; counted when found)."""
        return self._kept.cached(slide, self._name(slide))

    def known(self, slide: Slide) -> bytes | None:
        """The mask when it is in memory or the disk cache, for a listing's exact sizes
        (so `rsync` after a remount sees them unchanged); neither a tile read nor a
        request. One read of a small entry per directory listed."""
        return self._kept.known(slide, self._name(slide))

    def selected(self, slide: Slide, level: Level, grid: TileGrid,
                 png: bytes) -> list[bool]:
        """For each tile of `grid` (frame order), whether it holds tissue by mask `png`."""
        if not grid.tiles:
            return []
        cells = [(tile.column, tile.row) for tile in grid.tiles]
        flags = tiles_with_tissue(mask_from_png(png), (level.width, level.height),
                                  (level.tile_width, level.tile_height), cells)
        return [bool(flag) for flag in flags]

    def _compute(self, slide: Slide) -> bytes:
        plan = mask_plan(slide)
        if plan is None:
            raise ValueError(f"{slide.series_uid} has no levels: no tissue mask")
        base = slide.levels[0]
        width, height = plan.size
        pixels = self.regions.pixels(slide, plan.grid_key, Region(0, 0, base.width, base.height),
                                     width, height)
        self._computed.add()
        return mask_png(tissue_mask(pixels))

    @staticmethod
    def _name(slide: Slide) -> str:
        """The mask's name in the caches (`ComputedFiles.key` adds the slide's
        revision)."""
        return f"tissue-mask/{slide.series_uid}/v{MASK_VERSION}"
