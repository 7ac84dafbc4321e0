"""Reading and editing JPEG marker segments without touching the entropy-coded data.

Only the header (SOI up to the first SOS) is parsed; the scan data is copied verbatim.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

from idcfs.tiles.errors import TileDecodeError

SOI = b"\xff\xd8"
EOI = b"\xff\xd9"
SOS = 0xDA
APP0 = 0xE0
APP14 = 0xEE
# SOF0-3, 5-7, 9-11, 13-15 (not DHT C4, JPG C8, DAC CC) and SOF55 (JPEG-LS, F7).
SOF_MARKERS = frozenset({*range(0xC0, 0xD0)} - {0xC4, 0xC8, 0xCC} | {0xF7})
STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})
JFIF_IDS = (b"JFIF\0", b"JFXX\0")
# Adobe APP14: "Adobe", version 100, flags0 0, flags1 0, transform 0 (no colour transform).
ADOBE_RGB_SEGMENT = b"\xff\xee\x00\x0eAdobe" + struct.pack(">HHHB", 100, 0, 0, 0)


@dataclass(frozen=True)
class Segment:
    """A marker segment before the scan: marker byte and byte range [start, end)."""

    marker: int
    start: int
    end: int


@dataclass(frozen=True)
class JpegInfo:
    """What the header says: the SOF marker, sample precision, components, markers seen."""

    sof_marker: int
    precision: int
    components: int
    has_app14: bool
    has_jfif: bool
    height: int = 0
    width: int = 0
    adobe_transform: int | None = None
    has_sos: bool = True
    has_eoi: bool = True

    @property
    def is_baseline_8bit(self) -> bool:
        """DCT Huffman (SOF0/SOF1) with 8-bit samples: what every JPEG viewer shows."""
        return self.sof_marker in (0xC0, 0xC1) and self.precision == 8

    @property
    def is_complete(self) -> bool:
        """A scan is present and the data ends with EOI (not truncated)."""
        return self.has_sos and self.has_eoi


def header_segments(data: bytes) -> Iterator[Segment]:
    """Marker segments from SOI up to and including SOS; stops early on malformed data."""
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
        end = position + 2 + struct.unpack_from(">H", data, position + 2)[0]
        if end > len(data):
            return
        yield Segment(marker, position, end)
        if marker == SOS:
            return
        position = end


def jpeg_info(frame: bytes) -> JpegInfo | None:
    """The header facts of a JPEG frame, or None when it has no readable frame header."""
    sof: Segment | None = None
    app14: Segment | None = None
    jfif = sos = False
    for segment in header_segments(frame):
        if segment.marker in SOF_MARKERS and segment.end - segment.start >= 10:
            sof = segment
        elif segment.marker == APP14 and _payload(frame, segment).startswith(b"Adobe"):
            app14 = segment
        jfif |= _is_jfif(frame, segment)
        sos |= segment.marker == SOS
    if sof is None:
        return None
    precision, height, width, components = struct.unpack_from(">BHHB", frame, sof.start + 4)
    transform = None
    if app14 is not None and app14.end - app14.start >= 16:
        transform = frame[app14.start + 15]
    return JpegInfo(
        sof_marker=sof.marker,
        precision=precision,
        components=components,
        has_app14=app14 is not None,
        has_jfif=jfif,
        height=height,
        width=width,
        adobe_transform=transform,
        has_sos=sos,
        has_eoi=ends_with_marker(frame, EOI),
    )


def ends_with_marker(data: bytes, marker: bytes) -> bool:
    """True when `data` ends with `marker`, ignoring zero padding after it."""
    end = len(data)
    while end and data[end - 1] == 0:
        end -= 1
    return data[max(0, end - len(marker)) : end] == marker


def with_rgb_app14(frame: bytes) -> bytes:
    """The frame with an Adobe APP14 (transform 0) so decoders keep its RGB components.

    JFIF APP0 segments are dropped as well: libjpeg (Pillow, browsers) lets JFIF, which
    implies YCbCr, win over APP14. A frame that has an Adobe APP14 already keeps it (and
    its transform) and is returned unchanged unless it also has a JFIF APP0.
    Raises TileDecodeError for data without a readable JPEG header (a server's bytes,
    so the project's own error, not a ValueError a caller would not expect).
    """
    info = jpeg_info(frame)
    if info is None:
        raise TileDecodeError("not a JPEG frame with a readable header")
    if info.has_app14 and not info.has_jfif:
        return frame
    pieces = [SOI] if info.has_app14 else [SOI, ADOBE_RGB_SEGMENT]
    position = 2
    for segment in header_segments(frame):
        if _is_jfif(frame, segment):
            pieces.append(frame[position : segment.start])
            position = segment.end
    pieces.append(frame[position:])
    return b"".join(pieces)


def rgb_app14_growth(header: bytes) -> int | None:
    """How many bytes `with_rgb_app14` adds to (or, dropping JFIF, takes from) a frame
    whose header is this: what it does to the header alone (SOI up to SOS), since it
    edits nothing after; None when `header` ends before its SOS."""
    segments = list(header_segments(header))
    if not segments or segments[-1].marker != SOS:
        return None
    head = header[: segments[-1].end]
    try:
        return len(with_rgb_app14(head)) - len(head)
    except TileDecodeError:
        return None


def _is_jfif(data: bytes, segment: Segment) -> bool:
    return segment.marker == APP0 and _payload(data, segment).startswith(JFIF_IDS)


def _payload(data: bytes, segment: Segment) -> bytes:
    return data[segment.start + 4 : segment.end]
