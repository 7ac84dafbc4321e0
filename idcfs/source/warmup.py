"""Warming up, at mount, the code that entering the first series runs.

A fresh daemon enters its first series more slowly than a warm process would: the
code that reads a header (pydicom's reader and value converters, the header JSON of
`dicomfile`), parses a bucket listing and builds the slide model has never run, so
CPython's adaptive interpreter has not specialised it yet and its data are cold in the
CPU's caches. Measured on the benchmark's series (tests/unit/test_warmup.py checks the
mechanism, benchmarks/bench_files.py the time): three headers cost ~9 ms of CPU in a
fresh process and ~4.5 ms after the same path ran ten times on another header, and
`parse_slide` 1.4 against 0.45 ms; nothing is imported late (every module is imported
at start-up), no pattern is compiled late.

So, once the mount answers, a thread of its own runs that path over a
header built here, in memory, with the kinds of elements whole-slide headers have
(Part 10 file meta, nested sequences of undefined and defined lengths, PN, DS/IS,
binary values, encapsulated Pixel Data; read by `dicomfile`'s walk, as real headers
are), over a small listing and over an answer's headers (http.client's parser). It
sends nothing, keeps nothing (no cache is touched), takes no lock a request needs, and
stops between steps as soon as `stop()` is true (a request arrived). A failure is
logged and changes nothing else.
"""

from __future__ import annotations

import http.client
import io
import json
import logging
import struct
import threading
import time
from collections.abc import Callable

from pydicom.uid import JPEGBaseline8Bit
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32

from idcfs.slide.parse import parse_slide
from idcfs.source.dicomfile import (
    ITEM,
    ITEM_DELIMITER,
    SEQUENCE_DELIMITER,
    UNDEFINED_LENGTH,
    forget_converted,
    read_header,
)
from idcfs.source.objects import parse_listing

log = logging.getLogger(__name__)

ROUNDS = 10
"""Runs of each step: CPython 3.11 specialises a function's code after it has run a few
times (ten took the measured gain; three took half of it)."""

_UID = "1.2.826.0.1.3680043.8.498.1"
_WSI = "1.2.840.10008.5.1.4.1.1.77.1.6"
_LISTING = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n'
    b'<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
    b"<Name>warm</Name><Prefix>warm/</Prefix><KeyCount>2</KeyCount><MaxKeys>1000</MaxKeys>"
    b"<IsTruncated>false</IsTruncated>"
    b"<Contents><Key>warm/a.dcm</Key><LastModified>2024-01-01T00:00:00.000Z</LastModified>"
    b'<ETag>"0123456789abcdef0123456789abcdef"</ETag><Size>4096</Size>'
    b"<StorageClass>STANDARD</StorageClass></Contents>"
    b"<Contents><Key>warm/b.dcm</Key><LastModified>2024-01-01T00:00:00.000Z</LastModified>"
    b"<ETag>0123456789abcdef0123456789abcdef</ETag><Size>8192</Size></Contents>"
    b"</ListBucketResult>"
)

_ANSWER_HEADERS = (
    b"Accept-Ranges: bytes\r\nContent-Length: 65536\r\n"
    b"Content-Range: bytes 0-65535/6308900\r\nContent-Type: application/octet-stream\r\n"
    b'Etag: "0123456789abcdef0123456789abcdef"\r\n'
    b"Last-Modified: Mon, 01 Jan 2024 00:00:00 GMT\r\nServer: rclone\r\n"
    b"Date: Mon, 01 Jan 2024 00:00:00 GMT\r\n\r\n"
)


def warm_header() -> bytes:
    """A whole-slide instance file's first bytes, up to and into its Pixel Data: the
    elements and VRs of a real header (IDC's, wsidicomizer's), one JPEG frame. Written
    here element by element (explicit VR little endian), not by pydicom's writer, which
    took 7 ms of CPU in a fresh process for this."""
    meta = (_element(0x00020001, "OB", b"\x00\x01")
            + _element(0x00020002, "UI", _WSI) + _element(0x00020003, "UI", f"{_UID}.3")
            + _element(0x00020010, "UI", JPEGBaseline8Bit) + _element(0x00020012, "UI", _UID))
    meta = _element(0x00020000, "UL", struct.pack("<I", len(meta))) + meta
    body = b"".join((
        _element(0x00080005, "CS", "ISO_IR 100"),
        _element(0x00080008, "CS", "ORIGINAL\\PRIMARY\\VOLUME\\NONE"),
        _element(0x00080016, "UI", _WSI), _element(0x00080018, "UI", f"{_UID}.3"),
        *(_element(tag, "DA", "20240101") for tag in (0x00080020, 0x00080021, 0x00080023)),
        *(_element(tag, "TM", "120000.000000") for tag in (0x00080030, 0x00080031, 0x00080033)),
        _element(0x0008002A, "DT", "20240101120000.000000"),
        _element(0x00080060, "CS", "SM"), _element(0x00080070, "LO", "idcfs"),
        _element(0x00081030, "LO", "warm-up"), _element(0x0008103E, "LO", "warm-up"),
        _element(0x00100010, "PN", "IDCFS^WARM"), _element(0x00100020, "LO", "warm"),
        _element(0x0020000D, "UI", f"{_UID}.1"), _element(0x0020000E, "UI", f"{_UID}.2"),
        _element(0x00200011, "IS", "1"), _element(0x00200013, "IS", "1"),
        _element(0x00209311, "CS", "TILED_FULL"),
        _element(0x00280002, "US", struct.pack("<H", 3)),
        _element(0x00280004, "CS", "YBR_FULL_422"),
        _element(0x00280006, "US", struct.pack("<H", 0)), _element(0x00280008, "IS", "1"),
        *(_element(tag, "US", struct.pack("<H", value)) for tag, value in (
            (0x00280010, 256), (0x00280011, 256), (0x00280100, 8), (0x00280101, 8),
            (0x00280102, 7), (0x00280103, 0))),
        _element(0x00282110, "CS", "01"), _element(0x00282112, "DS", "12.5"),
        _element(0x00282114, "CS", "ISO_10918_1"),
        _element(0x00480001, "FL", struct.pack("<f", 0.128)),
        _element(0x00480002, "FL", struct.pack("<f", 0.128)),
        _element(0x00480003, "FL", struct.pack("<f", 0.001)),
        _element(0x00480006, "UL", struct.pack("<I", 256)),
        _element(0x00480007, "UL", struct.pack("<I", 256)),
        _sequence(0x00480008, [_element(0x0040072A, "DS", "20.0")  # as pydicom writes
                               + _element(0x0040073A, "DS", "40.0")], defined=True),
        _sequence(0x00480105, [_element(0x00480106, "SH", "1")  # an ICC profile:
                               + _element(0x00282000, "OB", bytes(2048))]),  # binary
        _element(0x00480302, "UL", struct.pack("<I", 1)),
        _element(0x00480303, "UL", struct.pack("<I", 1)),
        _sequence(0x52009229, [_sequence(0x00289110, [
            _element(0x00180050, "DS", "0.001")
            + _element(0x00280030, "DS", "0.0005\\0.0005")])
            + _sequence(0x00289132, [_element(0x00281050, "DS", "127.5")
                                     + _element(0x00281051, "DS", "255")])]),
    ))
    frame = b"\xff\xd8\xff\xd9"
    pixels = (struct.pack("<HH", 0x7FE0, 0x0010) + b"OB\x00\x00\xff\xff\xff\xff"
              + ITEM + bytes(4)  # an empty Basic Offset Table
              + ITEM + struct.pack("<I", len(frame)) + frame + SEQUENCE_DELIMITER + bytes(4))
    return bytes(128) + b"DICM" + meta + body + pixels


def _element(tag: int, vr: str, value: str | bytes) -> bytes:
    """One element, explicit VR little endian, its value padded to an even length."""
    data = value.encode("ascii") if isinstance(value, str) else value
    if len(data) % 2:
        data += b"\x00" if vr in ("UI", "OB") else b" "
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr.encode("ascii")
    if vr in EXPLICIT_VR_LENGTH_32:  # a 4-byte length after 2 reserved bytes
        return head + struct.pack("<HI", 0, len(data)) + data
    return head + struct.pack("<H", len(data)) + data


def _sequence(tag: int, items: list[bytes], defined: bool = False) -> bytes:
    """A sequence of undefined length, its items of undefined length (as most writers
    of WSI files make them), or of defined lengths (as pydicom writes them): the header
    walk of `dicomfile` reads the two differently."""
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + b"SQ\x00\x00"
    if defined:
        content = b"".join(ITEM + struct.pack("<I", len(item)) + item for item in items)
        return head + struct.pack("<I", len(content)) + content
    undefined = struct.pack("<I", UNDEFINED_LENGTH)
    return head + undefined + b"".join(ITEM + undefined + item + ITEM_DELIMITER + bytes(4)
                                       for item in items) + SEQUENCE_DELIMITER + bytes(4)


def warm_up(stop: Callable[[], bool], rounds: int = ROUNDS) -> bool:
    """Run the path of entering a series `rounds` times; False when `stop()` ended it
    early. Between steps the GIL is given up (`time.sleep(0)` hands it to a thread
    waiting for it, which would otherwise wait up to the 5 ms switch interval), so the
    catalog's load and any request wait for the warm-up at most one step (~2 ms).
    Raises what the path raises (the caller logs it)."""
    data = warm_header()

    def read(start: int, length: int) -> bytes:
        return data[start : start + length]

    def header() -> None:
        forget_converted()  # each round converts every element, as a first header does
        found = read_header(read, len(data))
        json.dumps(found.to_json())  # what a disk cache keeps
        parse_slide(f"{_UID}.1", f"{_UID}.2", [found.dicom_json], {f"{_UID}.3": "warm/a.dcm"})

    steps: list[Callable[[], object]] = [
        lambda: parse_listing(_LISTING),
        lambda: http.client.parse_headers(io.BytesIO(_ANSWER_HEADERS)),  # every answer's
        header,
    ]
    for _ in range(rounds):
        for step in steps:
            if stop():
                return False  # the kept JSON left alone: a request may be filling it
            step()
            time.sleep(0)
    forget_converted()  # keep none of the warm-up's elements
    return True


class WarmUp:
    """`warm_up` on a thread of its own, stopped by `stop` (any request). Failures are
    logged, never raised. Not at a lower CPU priority: a thread at nice 19 that holds
    the GIL when the kernel preempts it holds up every other thread of the process
    (measured: the warm-up's 30 ms of CPU took 0.2-1 s, and the first listing waited)."""

    def __init__(self, rounds: int | None = None) -> None:
        self._rounds = ROUNDS if rounds is None else rounds
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="idcfs-warmup", daemon=True)
        self.finished = threading.Event()
        self.completed = False

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """A request arrived: the warm-up ends before its next step."""
        if not self._stopped.is_set():  # once: set() takes the event's lock
            self._stopped.set()

    def _run(self) -> None:
        began = time.thread_time()
        try:
            self.completed = warm_up(self._stopped.is_set, self._rounds)
        except Exception:  # a warm-up that fails changes nothing but the speed
            log.warning("warming up the header path failed (harmless)", exc_info=True)
        finally:
            self.finished.set()
        log.debug("warm-up %s after %.1f ms of CPU",
                  "done" if self.completed else "stopped", 1000 * (time.thread_time() - began))

