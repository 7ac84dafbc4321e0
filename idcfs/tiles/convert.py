"""From a stored frame to the JPEG file idcfs serves.

1. 8-bit baseline JPEG with YBR or MONOCHROME2 photometric: the stored bytes.
2. 8-bit baseline JPEG with RGB photometric: the stored bytes plus an Adobe APP14
   marker (no re-encoding), so any decoder keeps the RGB components.
3. Anything else (JPEG 2000, JPEG-LS, lossless JPEG, 12-bit JPEG, RLE, uncompressed,
   16-bit, MONOCHROME1): decoded, scaled to 8 bits, encoded as JPEG with 4:4:4 chroma.

Codecs: imagecodecs (libjpeg-turbo, OpenJPEG, CharLS: one wheel, all DICOM JPEG
flavours) for compressed frames; pydicom's decoders for RLE and native pixel data
(they know DICOM's sample layouts); Pillow for encoding (libjpeg-turbo).
"""

from __future__ import annotations

import io

import numpy as np

from idcfs.tiles.jpeg_markers import jpeg_info, with_rgb_app14
from idcfs.tiles.pixels import PixelFormat

# Measured on grainy tissue-like tiles: quality 95 with 4:4:4 chroma keeps PSNR >= 40 dB
# (quality 90 with 4:2:0 gives 33-38 dB). See docs/SEMANTICS.md.
DEFAULT_QUALITY = 95

RLE = "1.2.840.10008.1.2.5"
NATIVE_SYNTAXES = {
    "1.2.840.10008.1.2": "1.2.840.10008.1.2",  # implicit VR little endian
    "1.2.840.10008.1.2.1": "1.2.840.10008.1.2.1",  # explicit VR little endian
    "1.2.840.10008.1.2.1.99": "1.2.840.10008.1.2.1",  # deflated: frames arrive inflated
    "1.2.840.10008.1.2.2": "1.2.840.10008.1.2.2",  # explicit VR big endian (retired)
}
YBR_NATIVE = {"YBR_FULL", "YBR_FULL_422"}
JPEG_SAFE_PHOTOMETRICS = {"YBR_FULL_422", "YBR_FULL", "YBR_ICT", "YBR_RCT", "MONOCHROME2"}


class TileDecodeError(Exception):
    """A frame that cannot be decoded or converted; the message says why."""


def served_jpeg(
    frame: bytes, pixels: PixelFormat, transfer_syntax: str | None, quality: int = DEFAULT_QUALITY
) -> bytes:
    """The JPEG file for one stored frame (cases 1-3 of the module docstring)."""
    info = jpeg_info(frame) if transfer_syntax not in NATIVE_SYNTAXES else None
    if info is not None and info.is_baseline_8bit and info.components == pixels.samples_per_pixel:
        if pixels.photometric == "RGB" and info.components == 3:
            return with_rgb_app14(frame)
        if pixels.photometric in JPEG_SAFE_PHOTOMETRICS:
            return frame
    array = decode_frame(frame, pixels, transfer_syntax)
    return encode_jpeg(to_8bit(array, pixels), quality)


def decode_frame(frame: bytes, pixels: PixelFormat, transfer_syntax: str | None) -> np.ndarray:
    """Pixels of one frame: HxW or HxWxC, native dtype, colour frames in RGB order."""
    try:
        array = _decode(frame, pixels, transfer_syntax)
    except TileDecodeError:
        raise
    except Exception as error:  # codecs raise their own types; name the reason
        raise TileDecodeError(f"cannot decode frame: {type(error).__name__}: {error}") from error
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.shape[:2] != (pixels.rows, pixels.columns):
        raise TileDecodeError(
            f"decoded frame is {array.shape[1]}x{array.shape[0]}, "
            f"metadata says {pixels.columns}x{pixels.rows}"
        )
    return array


def _decode(frame: bytes, pixels: PixelFormat, transfer_syntax: str | None) -> np.ndarray:
    import imagecodecs

    if transfer_syntax == RLE:
        return _decode_with_pydicom(frame, pixels, RLE)
    if transfer_syntax in NATIVE_SYNTAXES:
        return _decode_with_pydicom(frame, pixels, NATIVE_SYNTAXES[transfer_syntax])
    if frame.startswith(b"\xff\xd8"):
        return _decode_jpeg(frame, pixels)
    if frame.startswith((b"\xff\x4f\xff\x51", b"\x00\x00\x00\x0cjP  ")):
        return imagecodecs.jpeg2k_decode(frame)
    if len(frame) in (pixels.frame_bytes, pixels.frame_bytes + 1):
        return _decode_with_pydicom(frame, pixels, "1.2.840.10008.1.2.1")
    raise TileDecodeError(
        f"unknown frame format ({len(frame)} bytes, starts {frame[:4].hex()}, "
        f"transfer syntax {transfer_syntax or 'unknown'})"
    )


def _decode_jpeg(frame: bytes, pixels: PixelFormat) -> np.ndarray:
    import imagecodecs

    info = jpeg_info(frame)
    if info is None:
        raise TileDecodeError("JPEG frame without a readable frame header")
    if info.is_baseline_8bit:
        if pixels.photometric == "RGB" and info.components == 3:
            frame = with_rgb_app14(frame)
        return imagecodecs.jpeg8_decode(frame)
    return imagecodecs.jpeg_decode(frame)


def _decode_with_pydicom(frame: bytes, pixels: PixelFormat, syntax: str) -> np.ndarray:
    from pydicom.pixels import get_decoder

    decoder = get_decoder(syntax)
    array, _ = decoder.as_array(
        frame[: pixels.frame_bytes] if syntax != RLE else frame,
        rows=pixels.rows,
        columns=pixels.columns,
        samples_per_pixel=pixels.samples_per_pixel,
        bits_allocated=pixels.bits_allocated,
        bits_stored=pixels.bits_stored,
        pixel_representation=pixels.pixel_representation,
        photometric_interpretation=pixels.photometric,
        planar_configuration=pixels.planar_configuration,
        number_of_frames=1,
        as_rgb=pixels.photometric in YBR_NATIVE,
    )
    return array


def to_8bit(array: np.ndarray, pixels: PixelFormat) -> np.ndarray:
    """8-bit pixels keeping the order of values: the metadata's window if any, else
    the stored bit depth's full range; MONOCHROME1 is inverted for display."""
    if array.dtype == np.uint8 and pixels.window_width is None:
        scaled = array
    elif pixels.window_width is not None and pixels.window_center is not None:
        scaled = _window(array, pixels.window_center, pixels.window_width)
    else:
        scaled = _full_range(array, pixels)
    if pixels.photometric == "MONOCHROME1":
        scaled = 255 - scaled
    return np.ascontiguousarray(scaled, dtype=np.uint8)


def _window(array: np.ndarray, center: float, width: float) -> np.ndarray:
    # DICOM PS3.3 C.11.2.1.2.1 linear window.
    low = center - 0.5 - (width - 1) / 2
    span = max(width - 1, 1)
    scaled = (array.astype(np.float64) - low) / span * 255.0
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _full_range(array: np.ndarray, pixels: PixelFormat) -> np.ndarray:
    bits = max(min(pixels.bits_stored, 32), 1)
    low = -(1 << (bits - 1)) if pixels.pixel_representation else 0
    span = (1 << bits) - 1
    scaled = (array.astype(np.float64) - low) / span * 255.0
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def encode_jpeg(pixels8: np.ndarray, quality: int = DEFAULT_QUALITY) -> bytes:
    """Baseline JPEG of uint8 HxW or HxWx3 pixels, 4:4:4 chroma; deterministic."""
    from PIL import Image

    buffer = io.BytesIO()
    image = Image.fromarray(np.ascontiguousarray(pixels8))
    image.save(buffer, format="JPEG", quality=quality, subsampling=0)
    return buffer.getvalue()


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio of two uint8 images, in dB (inf when identical)."""
    error = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if error == 0 else float(10 * np.log10(255.0**2 / error))
