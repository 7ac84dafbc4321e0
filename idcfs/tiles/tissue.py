"""Where a slide holds tissue: a mask from a low-resolution image of the whole slide, and
the tiles of a grid that mask touches (docs/SEMANTICS.md, "Tissue lists").

The threshold follows the tools ML pipelines use, on 8-bit pixels of the whole slide:
- colour (brightfield, RGB): Otsu's threshold on the HSV saturation, kept within
  [SATURATION_FLOOR, SATURATION_CEILING]. Stain is coloured, glass is not: saturation
  separates tissue from white background, and also from what a luminance threshold (as
  ez-wsi-dicomweb's patch generator's fixed one, or histolab's Otsu on greyscale) takes
  for tissue: black margins, shadows and grey debris. The floor keeps an empty slide's
  JPEG noise out; the ceiling keeps pale tissue in when tissue covers most of the image
  (Otsu then splits the stains, not tissue from glass). An RGB image with no saturated
  pixel at all (greyscale scanned as RGB) is read as one channel, below.
- one channel (fluorescence, MONOCHROME): Otsu's threshold on intensity; the side of
  the threshold most border pixels fall on is the background (dark for fluorescence,
  bright for a greyscale brightfield scan), the other side is tissue. Two classes
  closer than MIN_CONTRAST levels mean there is nothing but background.
Then, as histolab does, the mask is dilated (by one pixel): a tile whose only tissue is a
sliver blurred into background at mask resolution is still counted.

A tile holds tissue when any mask pixel its area touches is tissue (`tiles_with_tissue`),
so a loader that reads only listed tiles misses none; the price is a rim of background
tiles one mask pixel wide around the tissue.

Otsu's method is computed here with numpy (a 256-bin histogram: a few lines) rather than
taken from scikit-image, whose `threshold_otsu` is the same computation but brings
scipy, networkx and more into a daemon that needs nothing else of them.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from PIL import Image

from idcfs.tiles.errors import TileDecodeError

SATURATION_FLOOR = 13  # of 255 (0.05): above JPEG chroma noise on white glass
SATURATION_CEILING = 20  # of 255 (0.08): below pale eosin (236, 214, 226 is 0.09)
MIN_CONTRAST = 8.0  # levels of 255 between the two classes' means for any tissue at all
MIN_SATURATED_FRACTION = 0.001  # fewer saturated pixels than this: not a colour image


def otsu_threshold(values: np.ndarray) -> int:
    """Otsu's threshold of 8-bit `values`: the level t that maximises the between-class
    variance of the classes <= t and > t."""
    histogram = np.bincount(values.ravel(), minlength=256).astype(np.float64)
    levels = np.arange(256, dtype=np.float64)
    weight_low = np.cumsum(histogram)
    weight_high = weight_low[-1] - weight_low
    sum_low = np.cumsum(histogram * levels)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_low = sum_low / weight_low
        mean_high = (sum_low[-1] - sum_low) / weight_high
        between = weight_low * weight_high * (mean_low - mean_high) ** 2
    return int(np.argmax(np.nan_to_num(between, nan=-1.0)))


def tissue_mask(pixels: np.ndarray) -> np.ndarray:
    """The dilated boolean tissue mask of 8-bit pixels (H x W x 3 RGB, or H x W)."""
    if pixels.dtype != np.uint8 or pixels.ndim not in (2, 3) or 0 in pixels.shape:
        raise TileDecodeError(f"no tissue mask of a {pixels.dtype} image of {pixels.shape}")
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[..., 0]
    found = _colour_tissue(pixels) if pixels.ndim == 3 else None
    if found is None:
        found = _one_channel_tissue(pixels if pixels.ndim == 2 else _luminance(pixels))
    return dilate(found)


def _colour_tissue(rgb: np.ndarray) -> np.ndarray | None:
    """Saturated pixels, or None when too few are (then it is not a colour image)."""
    channels = rgb[..., :3]  # 8-bit steps (255 * 255 fits 16 bits): no wide copies
    brightest = channels.max(axis=2)
    spread = (brightest - channels.min(axis=2)).astype(np.uint16)
    saturation = (spread * 255 // np.maximum(brightest, 1)).astype(np.uint8)  # 0 when black
    threshold = min(max(otsu_threshold(saturation), SATURATION_FLOOR), SATURATION_CEILING)
    found = saturation > threshold
    if found.mean() < MIN_SATURATED_FRACTION:
        return None
    return found


def _luminance(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma, as Pillow's convert("L")."""
    weights = np.array([0.299, 0.587, 0.114])
    return np.clip(np.rint(rgb[..., :3] @ weights), 0, 255).astype(np.uint8)


def _one_channel_tissue(values: np.ndarray) -> np.ndarray:
    """The side of the Otsu threshold the border is not on; none when the two classes
    barely differ."""
    threshold = otsu_threshold(values)
    high = values > threshold
    if high.all() or not high.any():
        return np.zeros(values.shape, dtype=bool)
    contrast = float(values[high].mean()) - float(values[~high].mean())
    if contrast < MIN_CONTRAST:
        return np.zeros(values.shape, dtype=bool)
    border = np.concatenate([high[0], high[-1], high[:, 0], high[:, -1]])
    background_is_high = border.mean() > 0.5
    return ~high if background_is_high else high


def dilate(mask: np.ndarray) -> np.ndarray:
    """`mask` grown by one pixel in each of the eight directions."""
    padded = np.pad(mask, 1)
    height, width = mask.shape
    grown = np.zeros_like(mask)
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            grown |= padded[dy : dy + height, dx : dx + width]
    return grown


def tiles_with_tissue(
    mask: np.ndarray,
    image_size: tuple[int, int],
    tile_size: tuple[int, int],
    cells: Sequence[tuple[int, int]],
) -> np.ndarray:
    """For each (column, row) of `cells`, whether its tile holds tissue.

    `image_size` and `tile_size` are the level's (width, height) and its tiles'; the
    mask covers the same whole image at its own resolution. A tile's area is widened to
    whole mask pixels (so the edge pixels it only partly covers count), and clipped to
    the image."""
    width, height = image_size
    tile_width, tile_height = tile_size
    mask_height, mask_width = mask.shape
    cell_array = np.asarray(cells, dtype=np.int64).reshape(-1, 2)
    columns, rows = cell_array[:, 0], cell_array[:, 1]
    x0 = _mask_start(columns * tile_width, width, mask_width)
    x1 = _mask_end(np.minimum((columns + 1) * tile_width, width), width, mask_width, x0)
    y0 = _mask_start(rows * tile_height, height, mask_height)
    y1 = _mask_end(np.minimum((rows + 1) * tile_height, height), height, mask_height, y0)
    summed = np.zeros((mask_height + 1, mask_width + 1), dtype=np.int64)
    summed[1:, 1:] = mask.astype(np.int64).cumsum(axis=0).cumsum(axis=1)
    counts = summed[y1, x1] - summed[y0, x1] - summed[y1, x0] + summed[y0, x0]
    return counts > 0


def _mask_start(start: np.ndarray, extent: int, mask_extent: int) -> np.ndarray:
    return np.clip(start * mask_extent // extent, 0, mask_extent - 1)


def _mask_end(end: np.ndarray, extent: int, mask_extent: int, start: np.ndarray) -> np.ndarray:
    ceiling = -(-end * mask_extent // extent)
    return np.clip(ceiling, start + 1, mask_extent)


def mask_png(mask: np.ndarray) -> bytes:
    """The mask as a 1-bit PNG (white: tissue); deterministic."""
    out = io.BytesIO()
    Image.fromarray(mask.astype(bool)).save(out, format="PNG")
    return out.getvalue()


def mask_from_png(data: bytes) -> np.ndarray:
    """The boolean mask a `mask_png` holds; TileDecodeError when it is not one."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return np.asarray(image.convert("1")).astype(bool)
    except (OSError, ValueError) as error:
        raise TileDecodeError(f"not a tissue mask PNG: {error}") from None
