"""Decoding one stored frame to its pixel samples, codec by codec.

imagecodecs does the compressed formats (libjpeg-turbo, jpegsof3/liblj92, CharLS,
OpenJPEG/OpenJPH, libjxl); pydicom does uncompressed and RLE frames, whose sample
layouts (planar configuration, YBR_FULL_422, bit masks, signedness) it knows; it is
imported on first use (0.2 s), as most frames never need it.
Every decoder returns HxW or HxWxC samples as the photometric interpretation says;
`decode_samples` then converts YBR to RGB and applies the pixel representation.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

import imagecodecs
import numpy as np

from idcfs.dicom.pixels import PixelFormat
from idcfs.tiles.errors import TileDecodeError
from idcfs.tiles.jpeg_markers import ends_with_marker, jpeg_info, with_rgb_app14
from idcfs.tiles.sniff import BIG_ENDIAN, DEFLATED, J2K_CODESTREAM, Codec, codec_for, j2k_size

EXPLICIT_LE = "1.2.840.10008.1.2.1"
RLE_SYNTAX = "1.2.840.10008.1.2.5"
END_MARKER = b"\xff\xd9"  # JPEG EOI, JPEG-LS EOI and JPEG 2000 EOC alike
YBR_PHOTOMETRICS = frozenset({"YBR_FULL", "YBR_FULL_422"})
Decoder = Callable[[bytes, PixelFormat, "str | None"], np.ndarray]


def decode_samples(frame: bytes, pixels: PixelFormat, transfer_syntax: str | None) -> np.ndarray:
    """HxW or HxWxC samples of one frame: RGB for colour, signed when stored signed."""
    codec = codec_for(frame, pixels, transfer_syntax)
    try:
        array = DECODERS[codec](frame, pixels, transfer_syntax)
    except TileDecodeError:
        raise
    except Exception as error:  # codecs raise their own types; keep their reason
        reason = f"{type(error).__name__}: {error}".strip()
        raise TileDecodeError(f"{codec.value} frame cannot be decoded ({reason})") from error
    return _signed(np.asarray(array), pixels)


def _native(frame: bytes, pixels: PixelFormat, transfer_syntax: str | None) -> np.ndarray:
    expected = pixels.frame_bytes
    if transfer_syntax == DEFLATED and len(frame) - expected not in (0, 1):
        frame = _inflate(frame, expected)
    if len(frame) - expected not in (0, 1):
        raise TileDecodeError(
            f"uncompressed frame has {len(frame)} bytes, {expected} expected "
            f"({pixels.columns}x{pixels.rows}, {pixels.samples_per_pixel} samples, "
            f"{pixels.bits_allocated} bits)"
        )
    syntax = BIG_ENDIAN if transfer_syntax == BIG_ENDIAN else EXPLICIT_LE
    return _ybr_to_rgb(_pydicom(frame[:expected], pixels, syntax), pixels)


def _inflate(frame: bytes, expected: int) -> bytes:
    """A deflated frame, inflated to at most one byte more than a frame holds (a few
    KB that inflate to gigabytes must not be inflated whole)."""
    return zlib.decompressobj(-zlib.MAX_WBITS).decompress(frame, expected + 2)


def _rle(frame: bytes, pixels: PixelFormat, transfer_syntax: str | None) -> np.ndarray:
    from pydicom.encaps import encapsulate

    return _ybr_to_rgb(_pydicom(encapsulate([frame]), pixels, RLE_SYNTAX), pixels)


def _pydicom(data: bytes, pixels: PixelFormat, syntax: str) -> np.ndarray:
    from pydicom.pixels import get_decoder

    array, _ = get_decoder(syntax).as_array(
        data,
        rows=pixels.rows,
        columns=pixels.columns,
        samples_per_pixel=pixels.samples_per_pixel,
        bits_allocated=pixels.bits_allocated,
        bits_stored=pixels.bits_stored,
        pixel_representation=pixels.pixel_representation,
        photometric_interpretation=pixels.photometric,
        planar_configuration=pixels.planar_configuration,
        number_of_frames=1,
        pixel_keyword="PixelData",
        as_rgb=False,
    )
    return array


def _jpeg(frame: bytes, pixels: PixelFormat, transfer_syntax: str | None) -> np.ndarray:
    info = jpeg_info(frame)
    if info is None:
        raise TileDecodeError(f"JPEG frame has no readable frame header (starts {frame[:8].hex()})")
    _require_end_marker(frame, "JPEG")
    _require_fits(info.width, info.height, pixels, "JPEG")
    if info.sof_marker == 0xF7:
        return _ybr_to_rgb(imagecodecs.jpegls_decode(frame), pixels)
    if info.sof_marker == 0xC3:
        return _ybr_to_rgb(_lossless_jpeg(frame), pixels)
    if pixels.photometric == "RGB" and info.components == 3:
        frame = with_rgb_app14(frame)
    return imagecodecs.jpeg8_decode(frame)  # libjpeg converts YCbCr to RGB itself


def _lossless_jpeg(frame: bytes) -> np.ndarray:
    """Process 14 JPEG: jpegsof3 (strict, made for DICOM), then liblj92 if it refuses."""
    try:
        return imagecodecs.jpegsof3_decode(frame)
    except Exception as first:
        try:
            return imagecodecs.ljpeg_decode(frame)
        except Exception:
            raise first from None


def _j2k(frame: bytes, pixels: PixelFormat, transfer_syntax: str | None) -> np.ndarray:
    """JPEG 2000 and HTJ2K: the decoders undo YBR_ICT/YBR_RCT themselves."""
    if frame.startswith(J2K_CODESTREAM):
        _require_end_marker(frame, "JPEG 2000")
    size = j2k_size(frame)
    if size is None:
        raise TileDecodeError("JPEG 2000 frame has no readable SIZ header")
    _require_fits(*size, pixels, "JPEG 2000")
    try:
        array = imagecodecs.jpeg2k_decode(frame)
    except Exception as first:
        try:
            array = imagecodecs.htj2k_decode(frame)
        except Exception:
            raise first from None
    return _ybr_to_rgb(array, pixels)


def _jxl(frame: bytes, pixels: PixelFormat, transfer_syntax: str | None) -> np.ndarray:
    return _ybr_to_rgb(imagecodecs.jpegxl_decode(frame), pixels)


def _require_end_marker(frame: bytes, name: str) -> None:
    if not ends_with_marker(frame, END_MARKER):
        raise TileDecodeError(f"{name} frame is truncated: it does not end with an EOI/EOC marker")


def _require_fits(width: int, height: int, pixels: PixelFormat, name: str) -> None:
    """The header's image size must be within the metadata's tile (a cropped edge frame
    may be smaller), so decoders never allocate for a corrupt or foreign header."""
    if not 0 < width <= pixels.columns or not 0 < height <= pixels.rows:
        raise TileDecodeError(
            f"{name} frame header gives a {width}x{height} image, the metadata a "
            f"{pixels.columns}x{pixels.rows} tile"
        )


def _ybr_to_rgb(array: np.ndarray, pixels: PixelFormat) -> np.ndarray:
    """YBR_FULL (YBR_FULL_422 once upsampled) to RGB, PS3.3 C.7.6.3.1.2, any bit depth."""
    if pixels.photometric not in YBR_PHOTOMETRICS or array.ndim != 3 or array.shape[2] != 3:
        return array
    bits = min(max(pixels.bits_stored, 1), array.dtype.itemsize * 8)
    half = float(1 << (bits - 1))
    ybr = array.astype(np.float64)
    y, cb, cr = ybr[..., 0], ybr[..., 1] - half, ybr[..., 2] - half
    rgb = np.stack([y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb], axis=-1)
    return np.clip(np.rint(rgb), 0, (1 << bits) - 1).astype(array.dtype)


def _signed(array: np.ndarray, pixels: PixelFormat) -> np.ndarray:
    """Samples stored as two's complement in BitsStored bits, for codecs that give them
    back unsigned (JPEG-LS, lossless JPEG, some JPEG 2000 encoders)."""
    if not pixels.signed or array.dtype.kind != "u":
        return array
    width = array.dtype.itemsize * 8
    shift = width - min(max(pixels.bits_stored, 1), width)
    signed = np.dtype(f"int{width}")
    return (array << shift).astype(signed) >> shift


DECODERS: dict[Codec, Decoder] = {
    Codec.NATIVE: _native,
    Codec.RLE: _rle,
    Codec.JPEG: _jpeg,
    Codec.J2K: _j2k,
    Codec.JXL: _jxl,
}
