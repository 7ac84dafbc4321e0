"""The tissue mask and the tiles it selects (idcfs/tiles/tissue.py), on synthetic arrays
with known tissue: brightfield colour, greyscale brightfield, fluorescence."""

from __future__ import annotations

import numpy as np
import pytest

from idcfs.tiles.errors import TileDecodeError
from idcfs.tiles.tissue import (
    dilate,
    mask_from_png,
    mask_png,
    otsu_threshold,
    tiles_with_tissue,
    tissue_mask,
)

WIDTH, HEIGHT = 320, 240


def _disc(width: int = WIDTH, height: int = HEIGHT, centre: tuple[float, float] = (120, 110),
          radius: float = 60) -> np.ndarray:
    ys, xs = np.mgrid[0:height, 0:width]
    return (xs - centre[0]) ** 2 + (ys - centre[1]) ** 2 <= radius**2


def _brightfield(region: np.ndarray, seed: int = 1) -> np.ndarray:
    """White glass with grain; H&E-like pink and purple inside `region`."""
    rng = np.random.default_rng(seed)
    height, width = region.shape
    image = np.full((height, width, 3), (242, 240, 241), np.float64)
    shade = rng.random((height, width, 1))
    stain = np.array([230, 140, 185]) * (1 - shade) + np.array([110, 60, 150]) * shade
    image[region] = stain[region]
    image += rng.normal(0, 2.0, image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _fluorescence(region: np.ndarray, seed: int = 2) -> np.ndarray:
    """Dark background; bright spots (nuclei) only inside `region`."""
    rng = np.random.default_rng(seed)
    image = 12 + rng.normal(0, 1.5, region.shape)
    spots = (rng.random(region.shape) < 0.3) & region
    image[spots] = 200
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _far_from(region: np.ndarray, pixels: int) -> np.ndarray:
    grown = region
    for _ in range(pixels):
        grown = dilate(grown)
    return ~grown


def test_otsu_matches_the_exhaustive_between_class_variance() -> None:
    rng = np.random.default_rng(7)
    values = np.concatenate([rng.normal(60, 12, 4000), rng.normal(170, 20, 2500)])
    values = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    best, best_variance = 0, -1.0
    for threshold in range(255):
        low, high = values[values <= threshold], values[values > threshold]
        if len(low) == 0 or len(high) == 0:
            continue
        variance = len(low) * len(high) * (low.mean() - high.mean()) ** 2
        if variance > best_variance:
            best, best_variance = threshold, variance
    assert otsu_threshold(values) == best
    assert 90 < best < 140


def test_brightfield_mask_is_the_stained_area() -> None:
    region = _disc()
    mask = tissue_mask(_brightfield(region))
    assert mask[region].all()
    assert not mask[_far_from(region, 2)].any()


def test_pale_tissue_covering_most_of_the_slide_is_all_tissue() -> None:
    region = np.ones((HEIGHT, WIDTH), dtype=bool)
    region[:, :20] = False
    image = _brightfield(region)
    image[:, 20:170] = (236, 214, 226)  # pale eosin (saturation ~0.09) beside dark stain
    mask = tissue_mask(image)
    assert mask[:, 21:].all()
    assert not mask[:, :18].any()


def test_empty_glass_has_no_tissue() -> None:
    image = _brightfield(np.zeros((HEIGHT, WIDTH), dtype=bool))
    assert not tissue_mask(image).any()


def test_black_margin_and_grey_debris_are_not_tissue() -> None:
    region = _disc(radius=40)
    image = _brightfield(region)
    image[:, -30:] = 0  # outside the glass
    image[10:40, 10:40] = 90  # grey dust
    mask = tissue_mask(image)
    assert mask[region].all()
    assert not mask[_far_from(region, 2)].any()


def test_fluorescence_signal_is_tissue_on_a_dark_background() -> None:
    region = np.zeros((HEIGHT, WIDTH), dtype=bool)
    region[60:180, 100:260] = True
    mask = tissue_mask(_fluorescence(region))
    assert not mask[_far_from(region, 2)].any()
    assert mask[region].mean() > 0.5


def test_greyscale_brightfield_tissue_is_the_dark_side() -> None:
    region = _disc()
    grey = _brightfield(region)[..., 1]
    mask = tissue_mask(grey)
    assert mask[region].mean() > 0.99
    assert not mask[_far_from(region, 2)].any()
    as_rgb = np.repeat(grey[..., None], 3, axis=2)  # greyscale scanned as RGB
    assert np.array_equal(tissue_mask(as_rgb), mask)


def test_uniform_channel_has_no_tissue() -> None:
    rng = np.random.default_rng(3)
    flat = np.clip(np.rint(30 + rng.normal(0, 1.5, (HEIGHT, WIDTH))), 0, 255).astype(np.uint8)
    assert not tissue_mask(flat).any()


def test_a_wrong_image_is_a_decode_error() -> None:
    with pytest.raises(TileDecodeError):
        tissue_mask(np.zeros((4, 4), dtype=np.uint16))
    with pytest.raises(TileDecodeError):
        tissue_mask(np.zeros((0, 4, 3), dtype=np.uint8))


def test_dilation_grows_by_one_pixel() -> None:
    mask = np.zeros((5, 5), dtype=bool)
    mask[2, 2] = True
    grown = dilate(mask)
    assert grown[1:4, 1:4].all() and grown.sum() == 9


def _truth(region: np.ndarray, tile: int) -> dict[tuple[int, int], bool]:
    height, width = region.shape
    return {(column, row): bool(region[row * tile : (row + 1) * tile,
                                       column * tile : (column + 1) * tile].any())
            for row in range(-(-height // tile)) for column in range(-(-width // tile))}


@pytest.mark.parametrize("mask_factor", [1, 4, 16])
def test_tiles_with_tissue_are_every_tile_touching_it_and_few_others(mask_factor: int) -> None:
    """A 2048 x 1536 level in tiles of 100 (its edge tiles cut), a mask 1, 4 and 16
    times coarser: every tile touching the disc is listed, background ones only at the
    rim (within one mask pixel plus the dilation)."""
    width, height, tile = 2048, 1536, 100
    region = _disc(width, height, centre=(777, 640), radius=420)
    coarse = region.reshape(height // mask_factor, mask_factor,
                            width // mask_factor, mask_factor).any(axis=(1, 3))
    mask = dilate(coarse)
    truth = _truth(region, tile)
    cells = list(truth)
    selected = dict(zip(cells, tiles_with_tissue(mask, (width, height), (tile, tile), cells),
                        strict=True))
    assert all(selected[cell] for cell, tissue in truth.items() if tissue)
    background = [cell for cell, tissue in truth.items() if not tissue]
    rim = 3 * mask_factor  # a mask pixel partly covered, the dilation, the tile widened
    near = _truth(_disc(width, height, centre=(777, 640), radius=420 + rim), tile)
    listed_far = [cell for cell in background if selected[cell] and not near[cell]]
    assert listed_far == []
    assert sum(selected[cell] for cell in background) <= 0.1 * len(background)


def test_edge_tiles_and_a_mask_coarser_than_a_tile() -> None:
    """A 250 x 130 level in tiles of 100 (3 x 2, edges cut) over a 5 x 3 mask: each tile
    is judged by the mask pixels its area reaches."""
    mask = np.zeros((3, 5), dtype=bool)
    mask[2, 4] = True  # x 200-250, y 86.7-130: the bottom-right tile, and the bottom
    cells = [(column, row) for row in range(2) for column in range(3)]  # of the one above
    selected = tiles_with_tissue(mask, (250, 130), (100, 100), cells)
    assert list(selected) == [False, False, True, False, False, True]
    assert list(tiles_with_tissue(np.ones((1, 1), dtype=bool), (250, 130), (100, 100),
                                  cells)) == [True] * 6


def test_mask_png_round_trips_as_one_bit() -> None:
    mask = _disc(64, 48, centre=(30, 20), radius=12)
    data = mask_png(mask)
    assert data.startswith(b"\x89PNG") and data == mask_png(mask)
    assert np.array_equal(mask_from_png(data), mask)
    with pytest.raises(TileDecodeError):
        mask_from_png(b"not a png")
