"""Composing one image from several stored frames: a reusable step for views.

A label or overview stored as a grid of frames is served as one JPEG; a later view
(DeepZoom) builds tiles that cut across stored frames or are resized. Both are the same
steps: decode each frame, paste it at its place on a canvas, crop (and maybe resize)
the canvas, encode. Frames smaller than the grid's tile (edge frames some converters
crop) are pasted at their own size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from idcfs.dicom.pixels import PixelFormat
from idcfs.tiles.convert import (
    DEFAULT_QUALITY,
    MAX_JPEG_SIDE,
    decode_frame,
    encode_jpeg,
    to_8bit,
)
from idcfs.tiles.errors import TileDecodeError

MAX_CANVAS_PIXELS = 1 << 26  # 64 Mpx (192 MB as 8-bit RGB): the largest image composed


@dataclass(frozen=True)
class Piece:
    """One stored frame and where its top-left pixel goes on the canvas."""

    top: int
    left: int
    data: bytes
    transfer_syntax: str | None


def compose(pieces: Sequence[Piece], pixels: PixelFormat, width: int, height: int,
            background: bool = False) -> np.ndarray:
    """The canvas of `width` x `height` pixels the pieces cover, in their native dtype;
    what no piece covers is 0, or with `background` the colour wsidicom gives a missing
    tile of a sparse level (`background_value`: white, black for MONOCHROME2).

    Raises TileDecodeError when a piece cannot be decoded, there is none, or the canvas
    would be larger than `MAX_CANVAS_PIXELS` or a JPEG can be (a label or overview
    whose metadata claims an enormous matrix must not take the daemon's memory)."""
    _check_canvas(width, height)
    canvas: np.ndarray | None = None
    for piece in pieces:
        decoded = decode_frame(piece.data, pixels, piece.transfer_syntax)
        if canvas is None:
            fill = background_value(pixels, decoded.dtype) if background else 0
            canvas = np.full((height, width, *decoded.shape[2:]), fill, dtype=decoded.dtype)
        _paste(canvas, decoded, piece.top, piece.left)
    if canvas is None:
        raise TileDecodeError("no frames to compose")
    return canvas


def background_value(pixels: PixelFormat, dtype: np.dtype) -> int:
    """The sample value of an area no frame covers, in `dtype`: black (0) for
    MONOCHROME2, else white (the largest value of BitsStored), as wsidicom and viewers
    show the tiles a sparse level lacks (glass is bright in brightfield, dark in
    fluorescence)."""
    if pixels.photometric == "MONOCHROME2":
        return 0
    bits = np.dtype(dtype).itemsize * 8
    if 1 <= pixels.bits_stored < bits:
        bits = pixels.bits_stored
    return int(min((1 << bits) - 1, np.iinfo(dtype).max)) if np.dtype(dtype).kind in "ui" else 1


def composed_jpeg(
    pieces: Sequence[Piece], pixels: PixelFormat, width: int, height: int,
    quality: int = DEFAULT_QUALITY,
) -> bytes:
    """The pieces as one JPEG of `width` x `height`, scaled to 8 bits."""
    return encode_jpeg(to_8bit(compose(pieces, pixels, width, height), pixels), quality)


def _check_canvas(width: int, height: int) -> None:
    if width < 1 or height < 1 or max(width, height) > MAX_JPEG_SIDE:
        raise TileDecodeError(f"cannot compose a {width}x{height} image")
    if width * height > MAX_CANVAS_PIXELS:
        raise TileDecodeError(f"a {width}x{height} image is larger than the "
                              f"{MAX_CANVAS_PIXELS >> 20} Mpx idcfs composes")


def _paste(canvas: np.ndarray, decoded: np.ndarray, top: int, left: int) -> None:
    """Copy what of `decoded` falls inside the canvas: edge frames overhang its bottom
    and right, and a region's canvas (`idcfs.fetch.regions`) starts inside its first
    frames (a negative top or left)."""
    if decoded.ndim != canvas.ndim:
        raise TileDecodeError("frames of one image differ in samples per pixel")
    skip_rows, skip_columns = max(0, -top), max(0, -left)
    top, left = max(0, top), max(0, left)
    rows = max(0, min(decoded.shape[0] - skip_rows, canvas.shape[0] - top))
    columns = max(0, min(decoded.shape[1] - skip_columns, canvas.shape[1] - left))
    canvas[top : top + rows, left : left + columns] = (
        decoded[skip_rows : skip_rows + rows, skip_columns : skip_columns + columns])
