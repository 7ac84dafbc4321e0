"""Which codec a stored frame needs: from its transfer syntax, else from its bytes.

Orthanc's series metadata has no TransferSyntaxUID, so frames of unknown syntax are
recognised by their signature: JPEG family (SOI, then the SOF marker tells baseline,
lossless or JPEG-LS), JPEG 2000 (codestream or JP2 box), JPEG XL, DICOM RLE (its
64-byte segment header), or uncompressed (exactly rows*columns*samples*bytes long).
"""

from __future__ import annotations

import struct
from enum import Enum

from idcfs.dicom.pixels import PixelFormat
from idcfs.tiles.errors import TileDecodeError
from idcfs.tiles.jpeg_markers import jpeg_info


class Codec(Enum):
    NATIVE = "uncompressed"
    RLE = "RLE lossless"
    JPEG = "JPEG"  # every SOI-started stream: baseline, extended, lossless, JPEG-LS
    J2K = "JPEG 2000"
    JXL = "JPEG XL"


DEFLATED = "1.2.840.10008.1.2.1.99"
BIG_ENDIAN = "1.2.840.10008.1.2.2"
SYNTAX_CODECS: dict[str, Codec] = {
    "1.2.840.10008.1.2": Codec.NATIVE,  # implicit VR little endian
    "1.2.840.10008.1.2.1": Codec.NATIVE,  # explicit VR little endian
    DEFLATED: Codec.NATIVE,  # frames of a deflated data set are served inflated
    BIG_ENDIAN: Codec.NATIVE,  # explicit VR big endian (retired)
    "1.2.840.10008.1.2.5": Codec.RLE,
    "1.2.840.10008.1.2.4.50": Codec.JPEG,  # baseline
    "1.2.840.10008.1.2.4.51": Codec.JPEG,  # extended (12-bit)
    "1.2.840.10008.1.2.4.57": Codec.JPEG,  # lossless
    "1.2.840.10008.1.2.4.70": Codec.JPEG,  # lossless, first-order prediction
    "1.2.840.10008.1.2.4.80": Codec.JPEG,  # JPEG-LS lossless
    "1.2.840.10008.1.2.4.81": Codec.JPEG,  # JPEG-LS near-lossless
    "1.2.840.10008.1.2.4.90": Codec.J2K,  # lossless only
    "1.2.840.10008.1.2.4.91": Codec.J2K,
    "1.2.840.10008.1.2.4.92": Codec.J2K,  # part 2 multi-component, lossless only
    "1.2.840.10008.1.2.4.93": Codec.J2K,
    "1.2.840.10008.1.2.4.201": Codec.J2K,  # HTJ2K lossless
    "1.2.840.10008.1.2.4.202": Codec.J2K,  # HTJ2K lossless RPCL
    "1.2.840.10008.1.2.4.203": Codec.J2K,  # HTJ2K
    "1.2.840.10008.1.2.4.110": Codec.JXL,  # JPEG XL lossless
    "1.2.840.10008.1.2.4.111": Codec.JXL,  # JPEG XL JPEG recompression
    "1.2.840.10008.1.2.4.112": Codec.JXL,
}
# MPEG-2/4, HEVC and similar video syntaxes: not frames of a tiled image.
VIDEO_SYNTAX_PREFIXES = ("1.2.840.10008.1.2.4.10",)

J2K_CODESTREAM = b"\xff\x4f\xff\x51"
JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"
JXL_CODESTREAM = b"\xff\x0a"
JXL_SIGNATURE = b"\x00\x00\x00\x0cJXL \r\n\x87\n"


def codec_for(frame: bytes, pixels: PixelFormat, transfer_syntax: str | None) -> Codec:
    """The codec of `frame`; the transfer syntax decides when it is a known one."""
    if transfer_syntax:
        codec = SYNTAX_CODECS.get(transfer_syntax)
        if codec is not None:
            return codec
        if transfer_syntax.startswith(VIDEO_SYNTAX_PREFIXES):
            raise TileDecodeError(f"transfer syntax {transfer_syntax} (video) is not supported")
    return sniff_codec(frame, pixels)


def sniff_codec(frame: bytes, pixels: PixelFormat) -> Codec:
    """The codec recognised from the bytes alone."""
    if frame.startswith(b"\xff\xd8") and jpeg_info(frame) is not None:
        return Codec.JPEG
    if len(frame) - pixels.frame_bytes in (0, 1):
        return Codec.NATIVE
    if frame.startswith((J2K_CODESTREAM, JP2_SIGNATURE)):
        return Codec.J2K
    if frame.startswith((JXL_CODESTREAM, JXL_SIGNATURE)):
        return Codec.JXL
    if looks_like_rle(frame):
        return Codec.RLE
    raise TileDecodeError(
        f"unrecognised frame format ({len(frame)} bytes, starting {frame[:8].hex()}; "
        f"{pixels.frame_bytes} bytes if uncompressed) and no transfer syntax"
    )


def j2k_size(frame: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG 2000 codestream's SIZ segment (PS3.5 A.4.4, ISO
    15444-1 A.5.1), in a bare codestream or the first 64 KB of a JP2 file; None when
    there is no readable SIZ. Read before decoding so that a corrupt header cannot make
    the decoder allocate an image of 4 billion pixels squared."""
    start = frame.find(J2K_CODESTREAM, 0, 1 << 16)
    if start < 0 or len(frame) < start + 24:
        return None
    x_size, y_size, x_origin, y_origin = struct.unpack_from(">4I", frame, start + 8)
    return max(0, x_size - x_origin), max(0, y_size - y_origin)


def looks_like_rle(frame: bytes) -> bool:
    """A DICOM RLE header (PS3.5 G.5): 1-15 segments, the first at offset 64, ascending."""
    if len(frame) < 64:
        return False
    count, *offsets = struct.unpack_from("<16I", frame)
    used = offsets[:count]
    return (
        1 <= count <= 15
        and used[0] == 64
        and all(a < b for a, b in zip(used, used[1:], strict=False))
        and used[-1] < len(frame)
        and not any(offsets[count:])
    )
