"""Rules about stored frames that hold whatever source the frame came from."""

from __future__ import annotations

JPEG_EOI = b"\xff\xd9"


def strip_jpeg_padding(data: bytes) -> bytes:
    """The frame without DICOM's trailing pad byte: one 0x00 after an EOI (JPEG) or EOC
    (JPEG 2000, the same FF D9). DICOMweb servers and Offset Tables include the pad byte,
    TIFF byte counts do not: without it a served JPEG ends at its EOI whatever the source
    (docs/SEMANTICS.md)."""
    if data.endswith(JPEG_EOI + b"\x00"):
        return data[:-1]
    return data
