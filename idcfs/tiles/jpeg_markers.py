"""Reading and editing JPEG marker segments without touching the entropy-coded data."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

SOI = b"\xff\xd8"
SOS = 0xDA
APP0 = 0xE0
APP14 = 0xEE
SOF_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7}
STANDALONE = {0x01, *range(0xD0, 0xD8)}
# Adobe APP14: "Adobe", version 100, flags0 0, flags1 0, transform 0 (no colour transform).
ADOBE_RGB_SEGMENT = b"\xff\xee" + struct.pack(">H", 14) + b"Adobe" + struct.pack(">HHHB", 100, 0, 0, 0)


@dataclass(frozen=True)
class Segment:
    """A marker segment before the scan: marker byte and byte range [start, end)."""

    marker: int
    start: int
    end: int


@dataclass(frozen=True)
class JpegInfo:
    """What the header says: the SOF marker, sample precision, component count, markers."""

    sof_marker: int
    precision: int
    components: int
    has_app14: bool
    has_jfif: bool

    @property
    def is_baseline_8bit(self) -> bool:
        """DCT Huffman (SOF0/SOF1) with 8-bit samples: what every JPEG viewer shows."""
        return self.sof_marker in (0xC0, 0xC1) and self.precision == 8


def header_segments(data: bytes) -> Iterator[Segment]:
    """Marker segments from SOI up to and including SOS."""
    if not data.startswith(SOI):
        return
    position = 2
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            return
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker in STANDALONE:
            position += 2
            continue
        length = struct.unpack_from(">H", data, position + 2)[0]
        yield Segment(marker, position, position + 2 + length)
        if marker == SOS:
            return
        position += 2 + length


def jpeg_info(frame: bytes) -> JpegInfo | None:
    """The header facts of a JPEG frame, or None when it is not a (readable) JPEG."""
    sof: tuple[int, int, int] | None = None
    app14 = jfif = False
    for segment in header_segments(frame):
        if segment.marker in SOF_MARKERS and segment.end - segment.start >= 10:
            precision = frame[segment.start + 4]
            components = frame[segment.start + 9]
            sof = (segment.marker, precision, components)
        app14 |= segment.marker == APP14 and _payload(frame, segment).startswith(b"Adobe")
        jfif |= segment.marker == APP0 and _payload(frame, segment).startswith(b"JFIF\0")
    if sof is None:
        return None
    return JpegInfo(sof[0], sof[1], sof[2], app14, jfif)


def with_rgb_app14(frame: bytes) -> bytes:
    """The frame with an Adobe APP14 (transform 0) so decoders keep its RGB components.

    A JFIF APP0 is dropped as well: libjpeg lets JFIF (which implies YCbCr) win over
    APP14. A frame that has an Adobe APP14 already is returned unchanged.
    """
    info = jpeg_info(frame)
    if info is None or info.has_app14:
        return frame
    jfif_ranges = [
        (segment.start, segment.end)
        for segment in header_segments(frame)
        if segment.marker == APP0 and _payload(frame, segment).startswith(b"JFIF\0")
    ]
    pieces = [SOI, ADOBE_RGB_SEGMENT]
    position = 2
    for start, end in jfif_ranges:
        pieces.append(frame[position:start])
        position = end
    pieces.append(frame[position:])
    return b"".join(pieces)


def _payload(data: bytes, segment: Segment) -> bytes:
    return data[segment.start + 4 : segment.end]
