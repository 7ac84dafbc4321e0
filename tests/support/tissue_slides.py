"""Slides with tissue only where the test says: for the tissue lists (tissue.txt).

Each is a 2048 x 1536 pyramid of four levels (halving, tiles of 128), deterministic.
Tissue lies in `tissue_region` (a disc and a rectangle); elsewhere is empty glass:
- `tissue_brightfield`: YBR JPEG, H&E-like stain filling the region, white glass with
  grain around it;
- `tissue_fluorescence`: MONOCHROME2 JPEG, one optical path, a dark background with
  nuclei-like bright spots only inside the region.
`TissueSlide.truth(level)` says, for each tile of a level, whether it holds tissue (True),
is pure background (False), or neither (None: inside the region, but a fluorescence
tile whose part of it has no spot).

Not in `tests.support.slides.RECIPES`: the shared Orthanc and the tests that count its
slides never see them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tests.support.slides import (
    CODECS,
    FLUORESCENCE_PATHS,
    GeneratedSlide,
    LevelLayout,
    SlideWriter,
    smooth_field,
)

WIDTH, HEIGHT, TILE, LEVELS = 2048, 1536, 128, 4
DISC = (700.0, 700.0, 430.0)  # centre x, y and radius, level-0 pixels
RECTANGLE = (1400, 180, 1850, 760)  # left, top, right, bottom (exclusive)
SIGNAL_LEVEL = 60  # fluorescence: brighter than this is signal


def tissue_region(width: int = WIDTH, height: int = HEIGHT) -> np.ndarray:
    """The level-0 pixels that hold tissue."""
    ys, xs = np.mgrid[0:height, 0:width]
    x, y, radius = DISC
    left, top, right, bottom = RECTANGLE
    disc = (xs - x) ** 2 + (ys - y) ** 2 <= radius**2
    return disc | ((xs >= left) & (xs < right) & (ys >= top) & (ys < bottom))


@dataclass
class TissueSlide:
    """A generated slide and where its tissue is (`signal`: level-0 pixels)."""

    slide: GeneratedSlide
    region: np.ndarray
    signal: np.ndarray

    def level(self, index: int) -> LevelLayout:
        return next(level for level in self.slide.levels if level.index == index)

    def truth(self, index: int) -> dict[tuple[int, int], bool | None]:
        """Each tile (column, row) of level `index`: tissue, background or neither."""
        level = self.level(index)
        side = level.tile_width * (WIDTH // level.width)  # a tile's side in level-0 pixels
        found: dict[tuple[int, int], bool | None] = {}
        for row in range(level.rows):
            for column in range(level.columns):
                cell = np.s_[row * side : (row + 1) * side, column * side : (column + 1) * side]
                if self.signal[cell].any():
                    found[(column, row)] = True
                elif not self.region[cell].any():
                    found[(column, row)] = False
                else:
                    found[(column, row)] = None
        return found


def _stained(region: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(1501)
    shade = smooth_field(rng, WIDTH, HEIGHT, 24)[..., None]
    stain = np.array([232, 150, 190], np.float32) * (1 - shade) + np.array(
        [96, 52, 140], np.float32) * shade
    image = np.where(region[..., None], stain, np.array([243, 241, 242], np.float32))
    image = image + rng.normal(0.0, 1.5, image.shape).astype(np.float32)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _spots(region: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(1502)
    nuclei = smooth_field(rng, WIDTH, HEIGHT, 8)
    signal = np.clip((nuclei - 0.5) / 0.3, 0.0, 1.0) * region
    image = 10 + 220 * signal + rng.normal(0.0, 1.5, region.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def tissue_brightfield(out_dir: Path) -> TissueSlide:
    region = tissue_region()
    writer = SlideWriter(out_dir, "tissue_brightfield")
    writer.add_pyramid(_stained(region), LEVELS, CODECS["jpeg_ybr"], tile=TILE)
    return TissueSlide(writer.slide, region, region)


def tissue_fluorescence(out_dir: Path) -> TissueSlide:
    region = tissue_region()
    base = _spots(region)
    writer = SlideWriter(out_dir, "tissue_fluorescence")
    writer.add_pyramid(base, LEVELS, CODECS["jpeg_grey"], tile=TILE,
                       path=FLUORESCENCE_PATHS[0])
    return TissueSlide(writer.slide, region, region & (base > SIGNAL_LEVEL))
