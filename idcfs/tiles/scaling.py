"""From decoded samples of any bit depth to the 8-bit samples a JPEG holds."""

from __future__ import annotations

import numpy as np

from idcfs.dicom.pixels import PixelFormat
from idcfs.tiles.errors import TileDecodeError


def to_8bit(array: np.ndarray, pixels: PixelFormat) -> np.ndarray:
    """uint8 samples in the same shape, keeping the order of sample values.

    8-bit unsigned samples are kept as they are (as served JPEG frames are). Deeper or
    signed samples go through the metadata's VOI window (PS3.3 C.11.2.1.2.1, linear)
    when it has one, else are scaled from the full range of BitsStored (signed when
    PixelRepresentation is 1). MONOCHROME1 is inverted so that it displays right.
    """
    if array.dtype.kind not in "ui" and array.dtype != np.bool_:
        raise TileDecodeError(f"cannot scale {array.dtype} samples to 8 bits")
    if array.dtype == np.uint8 and pixels.bits_stored >= 8:
        scaled = array
    elif pixels.window_center is not None and pixels.window_width is not None:
        scaled = _window(array, pixels.window_center, pixels.window_width)
    else:
        scaled = _full_range(array, pixels)
    if pixels.photometric == "MONOCHROME1":
        scaled = 255 - scaled
    return np.ascontiguousarray(scaled, dtype=np.uint8)


def _window(array: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM's linear VOI function: below the window 0, above it 255, linear between."""
    span = max(width - 1.0, 1e-6)
    position = (array.astype(np.float64) - (center - 0.5)) / span + 0.5
    return _rounded(position * 255.0)


def _full_range(array: np.ndarray, pixels: PixelFormat) -> np.ndarray:
    bits = array.dtype.itemsize * 8
    if 1 <= pixels.bits_stored <= bits:
        bits = pixels.bits_stored
    low = -(1 << (bits - 1)) if array.dtype.kind == "i" or pixels.signed else 0
    position = (array.astype(np.float64) - low) / ((1 << bits) - 1)
    return _rounded(position * 255.0)


def _rounded(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)
