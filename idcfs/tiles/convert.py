"""From a stored frame to the JPEG file idcfs serves.

1. 8-bit DCT (SOF0/SOF1) JPEG with YBR or MONOCHROME2 photometric: the stored bytes.
2. The same with RGB photometric: the stored bytes plus an Adobe APP14 marker (transform
   0) and without a JFIF APP0, so every decoder keeps the RGB components; no re-encoding.
3. Anything else (JPEG 2000, HTJ2K, JPEG-LS, lossless or 12-bit JPEG, RLE, uncompressed,
   JPEG XL, more than 8 bits, MONOCHROME1): decoded, scaled to 8 bits (`to_8bit`) and
   encoded as a JPEG with 4:4:4 chroma at `quality`.

A frame may be smaller than the metadata's Rows x Columns: converters such as
wsidicomizer (`add_missing_levels`) store JPEG 2000 edge frames cropped to the image.
Such a frame is served at the size it holds, as a stored JPEG frame would be; a frame
larger than the metadata says is an error (and is refused before it is decoded, so a
corrupt header cannot make a decoder allocate gigabytes).

DEFAULT_QUALITY: measured on seeded grainy H&E-like 256x256 tiles with Pillow's
libjpeg-turbo, 4:4:4 chroma, PSNR against the decoded source (min over 6 tiles): grain
sigma 3: q95 39.2 dB, q96 40.3, q97 41.7; grain 5 (33 dB at q90 4:2:0, the grainiest of
the 33-38 dB the issue reports): q96 39.1, q97 40.5. So 97 keeps >= 40 dB.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from idcfs.dicom.frames import strip_jpeg_padding
from idcfs.dicom.pixels import PixelFormat
from idcfs.tiles.decoders import decode_samples
from idcfs.tiles.errors import TileDecodeError
from idcfs.tiles.jpeg_markers import (
    EOI,
    SOI,
    JpegInfo,
    ends_with_marker,
    header_segments,
    jpeg_info,
    rgb_app14_growth,
    with_rgb_app14,
)
from idcfs.tiles.scaling import to_8bit
from idcfs.tiles.sniff import SYNTAX_CODECS, Codec

__all__ = [
    "DEFAULT_QUALITY",
    "TileDecodeError",
    "decode_frame",
    "encode_jpeg",
    "psnr",
    "served_jpeg",
    "served_growth",
    "to_8bit",
]

DEFAULT_QUALITY = 97
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
MAX_JPEG_SIDE = 65500
"""libjpeg's limit on a JPEG's width and height (JPEG_MAX_DIMENSION)."""


def served_jpeg(
    frame: bytes, pixels: PixelFormat, transfer_syntax: str | None, quality: int = DEFAULT_QUALITY
) -> bytes:
    """The JPEG file for one stored frame (cases 1-3 of the module docstring).

    Deterministic: the same arguments give the same bytes. Raises TileDecodeError.
    """
    _check_quality(quality)
    stored = _as_stored(frame, pixels, transfer_syntax)
    if stored is not None:
        return stored
    samples = decode_frame(frame, pixels, transfer_syntax)
    if max(samples.shape[:2]) > MAX_JPEG_SIDE:
        raise TileDecodeError(f"a {_size(samples)} frame is too large for a JPEG file")
    return encode_jpeg(to_8bit(samples, pixels), quality)


def _as_stored(frame: bytes, pixels: PixelFormat, transfer_syntax: str | None) -> bytes | None:
    """The frame itself (RGB: with APP14) when it can be served without re-encoding,
    ending at its EOI (without DICOM's pad byte)."""
    if SYNTAX_CODECS.get(transfer_syntax or "", Codec.JPEG) is not Codec.JPEG:
        return None
    frame = strip_jpeg_padding(frame)
    head = _RECENT_HEADS.find(frame)
    if head is None:
        info = jpeg_info(frame) if frame.startswith(SOI) else None
        if info is None or not info.is_baseline_8bit:
            return None
        if not info.is_complete:
            raise TileDecodeError("JPEG frame is truncated: no scan or no EOI marker at its end")
        head = _RECENT_HEADS.learn(frame, info)
    elif not ends_with_marker(frame, EOI):
        raise TileDecodeError("JPEG frame is truncated: no scan or no EOI marker at its end")
    info = head.info
    _check_header_size(info.width, info.height, pixels)
    kind = _stored_kind(info, pixels)
    if kind == "with-app14":
        return head.with_rgb_app14(frame)
    return frame if kind == "as-is" else None


@dataclass(frozen=True)
class _Head:
    """A JPEG header (SOI through the SOS segment) and what is read from it alone: its
    facts (`jpeg_info`; the EOI is each frame's own) and the header `with_rgb_app14`
    makes of it, which edits nothing past the SOS. The same for every frame that starts
    with these bytes: the frames of an instance share one header, as a rule."""

    data: bytes
    info: JpegInfo
    rgb: bytes  # `with_rgb_app14(data)`

    def with_rgb_app14(self, frame: bytes) -> bytes:
        """`with_rgb_app14(frame)` of a frame that starts with this header."""
        if self.rgb is self.data:  # has an APP14 and no JFIF: unchanged
            return frame
        return self.rgb + frame[len(self.data):]


class _RecentHeads:
    """The last few headers stored frames began with, so that serving a frame costs a
    comparison of its first bytes instead of two parses of its header (~60 us a tile)."""

    def __init__(self, kept: int = 16) -> None:
        self._kept = kept
        self._heads: tuple[_Head, ...] = ()  # replaced whole: threads read it unlocked

    def find(self, frame: bytes) -> _Head | None:
        for head in self._heads:
            if frame.startswith(head.data):
                return head
        return None

    def learn(self, frame: bytes, info: JpegInfo) -> _Head:
        """The header of a complete baseline frame (`info` is its `jpeg_info`), kept."""
        end = [segment.end for segment in header_segments(frame)][-1]  # its SOS's
        data = frame[:end]
        head = _Head(data, info, with_rgb_app14(data))
        self._heads = (head, *self._heads[: self._kept - 1])
        return head


_RECENT_HEADS = _RecentHeads()


def _stored_kind(info: JpegInfo, pixels: PixelFormat) -> str | None:
    """How a baseline 8-bit JPEG frame is served: "as-is", "with-app14" (RGB), or None
    (re-encoded)."""
    photometric = pixels.photometric
    if info.components == 1 and photometric == "MONOCHROME2":
        return "as-is"
    if info.components == 3 and photometric.startswith("YBR"):
        return "as-is"
    if info.components == 3 and photometric == "RGB":
        return "with-app14"
    return None


def serves_stored_frames(pixels: PixelFormat, transfer_syntax: str | None) -> bool:
    """Whether the served tiles of an instance are its stored frames (as they are, or
    with APP14): 8-bit baseline JPEG in YBR, MONOCHROME2 or RGB. Their pixels are then
    the stored pixels, and a render may decode a cached tile instead of fetching the
    frame (any other served tile is one more lossy generation)."""
    photometric = pixels.photometric
    return (transfer_syntax == JPEG_BASELINE and pixels.bits_stored == 8
            and (photometric in ("MONOCHROME2", "RGB") or photometric.startswith("YBR")))


def served_growth(first_head: bytes, pixels: PixelFormat,
                  transfer_syntax: str | None) -> int | None:
    """How much larger (negative: smaller) the JPEG `served_jpeg` makes of a stored frame
    is than the frame without its pad byte, told from the header of its instance's first
    frame (`first_head`: the frames of one instance come from one encoder, so they share
    its segments); None when frames would be re-encoded or the header does not tell."""
    if SYNTAX_CODECS.get(transfer_syntax or "", Codec.JPEG) is not Codec.JPEG:
        return None
    info = jpeg_info(first_head) if first_head.startswith(SOI) else None
    if info is None or not info.is_baseline_8bit:
        return None
    if info.width > pixels.columns or info.height > pixels.rows:
        return None
    kind = _stored_kind(info, pixels)
    if kind == "as-is":
        return 0
    return rgb_app14_growth(first_head) if kind == "with-app14" else None


def decode_frame(frame: bytes, pixels: PixelFormat, transfer_syntax: str | None) -> np.ndarray:
    """Samples of one frame: HxW or HxWxC (C 1 or 3), native dtype, colour in RGB order.

    MONOCHROME1 samples are returned as stored (`to_8bit` inverts them). A frame
    smaller than Rows x Columns (a cropped edge frame) is returned at its own size.
    """
    array = decode_samples(frame, pixels, transfer_syntax)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or 0 in array.shape[:2]:
        raise TileDecodeError(f"decoded frame has shape {array.shape}, not an image")
    height, width = array.shape[:2]
    if height > pixels.rows or width > pixels.columns:
        raise TileDecodeError(
            f"decoded frame is {_size(array)}, larger than the metadata's "
            f"{pixels.columns}x{pixels.rows}"
        )
    if array.ndim == 3 and array.shape[2] != 3:
        raise TileDecodeError(f"decoded frame has {array.shape[2]} samples per pixel")
    return array


def encode_jpeg(pixels8: np.ndarray, quality: int = DEFAULT_QUALITY) -> bytes:
    """Baseline JPEG of uint8 HxW (greyscale) or HxWx3 (RGB) pixels, 4:4:4 chroma."""
    _check_quality(quality)
    array = np.asarray(pixels8)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.dtype != np.uint8 or not (array.ndim == 2 or array.shape[2:] == (3,)):
        raise ValueError(f"encode_jpeg needs uint8 HxW or HxWx3, got {array.dtype} {array.shape}")
    buffer = io.BytesIO()
    image = Image.fromarray(np.ascontiguousarray(array))
    image.save(buffer, format="JPEG", quality=quality, subsampling=0)
    return buffer.getvalue()


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio of two 8-bit images in dB (inf when identical)."""
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} and {b.shape}")
    error = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if error == 0 else 10.0 * float(np.log10(255.0**2 / error))


def _check_header_size(width: int, height: int, pixels: PixelFormat) -> None:
    """A stored JPEG served as it is must hold an image no larger than the tile."""
    if width == 0 or height == 0:
        raise TileDecodeError(f"JPEG frame header gives a {width}x{height} image")
    if width > pixels.columns or height > pixels.rows:
        raise TileDecodeError(
            f"JPEG frame is {width}x{height}, larger than the metadata's "
            f"{pixels.columns}x{pixels.rows}"
        )


def _check_quality(quality: int) -> None:
    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be 1-100, not {quality}")


def _size(array: np.ndarray) -> str:
    return f"{array.shape[1]}x{array.shape[0]}" if array.ndim >= 2 else str(array.shape)
