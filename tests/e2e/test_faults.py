"""Faults between idcfs and the server, injected by the relay, through real mounts.

The contract every test checks (docs/SEMANTICS.md, "Deadline"): a read returns the
tile's exact bytes (the frame as fetched straight from Orthanc) or fails with EIO
within the deadline (`--timeout 3` here; the wall time of the failing read is measured);
never a partial tile, never ENOENT, never a hang; and nothing bad is kept: once the
fault stops, the same path reads correctly in the same mount, fetched again.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.expected import frames_by_path
from tests.support.mounting import Mount, named, series_dir
from tests.support.relay import FaultMode, HttpRelay

TIMEOUT_S = 3.0
SLACK_S = 1.0  # kernel round trips, thread hops and a loaded 2-core machine
SETTLE_S = 0.3
FRAMES = "/frames/"
EIO_LINE = "EIO on"
ROWS_AND_COLUMNS = ("00280010", "00280011")
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"


@dataclass
class Outcome:
    """What one read gave: the bytes, or the errno; and how long it took."""

    data: bytes | None
    error: int | None
    seconds: float


@dataclass
class Faulty:
    """A mount behind the relay with `--timeout 3`, its jpeg_ybr series listed."""

    mount: Mount
    relay: HttpRelay
    folder: Path
    expected: dict[str, bytes]

    def read(self, relative: str) -> Outcome:
        """Read one tile and check the contract: exact bytes, or EIO within the deadline."""
        start = time.monotonic()
        try:
            data: bytes | None = (self.folder / relative).read_bytes()
            error = None
        except OSError as failure:
            data, error = None, failure.errno
        outcome = Outcome(data, error, time.monotonic() - start)
        if error is None:
            assert data == self.expected[relative], f"{relative}: not the stored frame"
        else:
            assert error == errno.EIO, f"{relative}: {errno.errorcode.get(error, error)}"
            assert outcome.seconds <= TIMEOUT_S + SLACK_S, f"{relative}: {outcome.seconds:.1f} s"
            print(f"{relative}: EIO after {outcome.seconds:.2f} s")  # shown with -s
        return outcome

    def fails(self, relative: str) -> Outcome:
        outcome = self.read(relative)
        assert outcome.error == errno.EIO, f"{relative}: read although the fault is on"
        return outcome

    def recovers(self, relative: str) -> None:
        """After the fault: the same path reads right, and was fetched again for it.

        A request cut by its own deadline ends a few ms after its reader's EIO (its
        deadline started when it was sent); a read in that window may share its
        failure, so the check starts once it is over."""
        self.relay.clear_faults()
        time.sleep(SETTLE_S)
        before = self.relay.count(FRAMES)
        assert self.read(relative).data == self.expected[relative]
        assert self.relay.count(FRAMES) > before, "served from a cache: the fault was kept"

    def eio_lines(self) -> list[str]:
        return [line for line in self.mount.log().splitlines() if EIO_LINE in line]


@pytest.fixture(scope="module")
def expected(orthanc, test_slides) -> dict[str, bytes]:  # type: ignore[no-untyped-def]
    return frames_by_path(orthanc.dicomweb_url, named(test_slides, "jpeg_ybr"), False)


def faulty_mount(relay, mount_idcfs, test_slides, expected, *options: str) -> Faulty:  # type: ignore[no-untyped-def]
    mount = mount_idcfs(relay.url + "/dicom-web", "--timeout", str(TIMEOUT_S), *options)
    folder = series_dir(mount.path, named(test_slides, "jpeg_ybr"))
    for level in ("level-0", "level-1", "level-2"):
        os.listdir(folder / level)
    relay.reset()
    return Faulty(mount, relay, folder, expected)


@pytest.fixture
def faulty(relay, mount_idcfs, test_slides, expected) -> Faulty:  # type: ignore[no-untyped-def]
    """Read-ahead off, so each read is one demand request the fault can hit."""
    return faulty_mount(relay, mount_idcfs, test_slides, expected, "--readahead-size", "0")


# -- transient faults: retried within the deadline, the read gets its bytes ------------

TRANSIENT = {
    "http-500-once": dict(mode=FaultMode.ANSWER, status=500),
    "http-502-once": dict(mode=FaultMode.ANSWER, status=502),
    "http-503-once": dict(mode=FaultMode.ANSWER, status=503),
    "http-503-storm-of-3": dict(mode=FaultMode.ANSWER, status=503, times=3),
    "reset-before-headers": dict(mode=FaultMode.RESET),
    "reset-mid-body": dict(mode=FaultMode.RESET_MID_BODY),
    "content-length-too-long": dict(mode=FaultMode.WRONG_LENGTH, length_delta=1000),
    "429-retry-after-1": dict(mode=FaultMode.ANSWER, status=429, headers={"Retry-After": "1"}),
}


@pytest.mark.parametrize("fault", list(TRANSIENT), ids=list(TRANSIENT))
def test_transient_faults_are_retried_within_the_deadline(faulty: Faulty, fault: str) -> None:
    options = dict(TRANSIENT[fault])
    injected = faulty.relay.inject_fault(options.pop("mode"), options.pop("times", 1), FRAMES,
                                         **options)
    outcome = faulty.read("level-1/1_0.jpg")
    assert outcome.data is not None, faulty.eio_lines()
    assert injected.served == TRANSIENT[fault].get("times", 1)
    assert faulty.relay.count(FRAMES) == injected.served + 1
    assert faulty.eio_lines() == []


# -- faults that last: EIO within the deadline, one log line, then recovery ------------

LASTING = {
    "http-500-always": dict(mode=FaultMode.ANSWER, status=500),
    "http-502-always": dict(mode=FaultMode.ANSWER, status=502),
    "http-503-always": dict(mode=FaultMode.ANSWER, status=503),
    "stall": dict(mode=FaultMode.STALL, hold_s=8.0),
    "drip-1-byte-per-s": dict(mode=FaultMode.DRIP, drip_bytes_per_s=1.0, hold_s=8.0),
    "multipart-cut-short": dict(mode=FaultMode.CUT_MULTIPART),
    "fewer-parts": dict(mode=FaultMode.FEWER_PARTS),
    "html-page-with-200": dict(mode=FaultMode.ANSWER, status=200),
    "content-length-too-short": dict(mode=FaultMode.WRONG_LENGTH, length_delta=-100),
    "reset-always": dict(mode=FaultMode.RESET),
    "garbage-labelled-jpeg": dict(mode=FaultMode.GARBAGE_PART, label="image/jpeg"),
    "garbage-octet-stream": dict(mode=FaultMode.GARBAGE_PART,
                                 label="application/octet-stream"),
    "garbage-labelled-jpeg-baseline": dict(mode=FaultMode.GARBAGE_PART,
                                           label=f"image/jpeg; transfer-syntax={JPEG_BASELINE}"),
    "429-retry-after-past-deadline": dict(mode=FaultMode.ANSWER, status=429,
                                          headers={"Retry-After": "60"}),
}


@pytest.mark.parametrize("fault", list(LASTING), ids=list(LASTING))
def test_lasting_faults_are_eio_within_the_deadline_then_recover(faulty: Faulty,
                                                                 fault: str) -> None:
    options = dict(LASTING[fault])
    faulty.relay.inject_fault(options.pop("mode"), None, FRAMES, **options)
    faulty.fails("level-0/1_1.jpg")
    lines = faulty.eio_lines()
    assert len(lines) == 1 and "1_1.jpg" in lines[0], lines
    print(f"{fault}: {lines[0].split(': ', 1)[1][:160]}")
    faulty.recovers("level-0/1_1.jpg")


@pytest.mark.parametrize("mode", [FaultMode.RESET_MID_BODY, FaultMode.STALL])
def test_a_random_fraction_of_faults_never_gives_wrong_bytes(faulty: Faulty,
                                                             mode: FaultMode) -> None:
    fault = faulty.relay.inject_fault(mode, None, FRAMES, rate=0.3, seed=7, hold_s=8.0)
    tiles = sorted(path for path in faulty.expected if path.startswith("level-0/"))[:6]
    outcomes = [faulty.read(path) for path in tiles]
    assert 0 < fault.served < faulty.relay.count(FRAMES), "the seeded fraction hit none or all"
    for path, outcome in zip(tiles, outcomes, strict=True):
        if outcome.error is not None:
            faulty.recovers(path)


def test_quota_429_without_retry_after_pauses_the_mount(faulty: Faulty) -> None:
    faulty.relay.inject(429, times=1000, path_contains=FRAMES)
    faulty.fails("level-0/2_0.jpg")
    faulty.fails("level-0/2_1.jpg")
    assert faulty.relay.count(FRAMES) == 1, "nothing may be sent after the quota's 429"
    assert "quota is exhausted" in faulty.mount.log()


def test_rate_limiting_429_resumes_in_the_same_mount(faulty: Faulty) -> None:
    faulty.relay.inject(429, times=1, path_contains=FRAMES, headers={"Retry-After": "1"})
    assert faulty.read("level-0/2_0.jpg").data is not None
    assert faulty.read("level-0/2_1.jpg").data is not None
    assert "quota" not in faulty.mount.log()


# -- what a read waits for besides its own request -------------------------------------


def read_together(faulty: Faulty, paths: list[str]) -> list[Outcome]:
    """Read `paths` at once, each in its own thread."""
    outcomes: dict[int, Outcome] = {}
    barrier = threading.Barrier(len(paths))

    def read(index: int) -> None:
        barrier.wait()
        outcomes[index] = faulty.read(paths[index])

    threads = [threading.Thread(target=read, args=(index,)) for index in range(len(paths))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=TIMEOUT_S * 4)
    assert len(outcomes) == len(paths), "a read hung"
    return [outcomes[index] for index in range(len(paths))]


def test_readers_of_a_shared_fetch_share_its_deadline(faulty: Faulty) -> None:
    faulty.relay.inject_fault(FaultMode.STALL, None, FRAMES, hold_s=8.0)
    outcomes = read_together(faulty, ["level-0/3_0.jpg"] * 4)
    assert all(outcome.error == errno.EIO for outcome in outcomes)
    assert faulty.relay.count(FRAMES) == 1
    faulty.recovers("level-0/3_0.jpg")


def test_a_read_queued_behind_a_stalled_request_keeps_its_deadline(
    relay, mount_idcfs, test_slides, expected
) -> None:  # type: ignore[no-untyped-def]
    faulty = faulty_mount(relay, mount_idcfs, test_slides, expected,
                          "--readahead-size", "0", "--max-connections", "1")
    relay.inject_fault(FaultMode.STALL, 1, FRAMES, hold_s=8.0)
    paths = ["level-0/0_2.jpg", "level-1/0_1.jpg"]  # two instances: two requests
    outcomes = read_together(faulty, paths)
    assert [outcome.error for outcome in outcomes] == [errno.EIO] * 2  # stalled, queued
    relay.clear_faults()
    time.sleep(SETTLE_S)
    assert [faulty.read(path).data for path in paths] == [expected[path] for path in paths]


def test_a_read_waiting_for_a_read_ahead_batch_keeps_its_deadline(
    relay, mount_idcfs, test_slides, expected
) -> None:  # type: ignore[no-untyped-def]
    faulty = faulty_mount(relay, mount_idcfs, test_slides, expected)
    relay.inject_fault(FaultMode.STALL, None, FRAMES, hold_s=8.0)
    faulty.fails("level-0/0_0.jpg")  # a grid's first tile: read ahead in a batch of 12
    faulty.recovers("level-0/0_0.jpg")
    assert faulty.read("level-0/1_0.jpg").data is not None


# -- series metadata ------------------------------------------------------------------

METADATA_FAULTS: dict[str, Callable[[HttpRelay], object]] = {
    "not-json": lambda relay: relay.inject(
        200, None, "/metadata", body=b"<html>not json</html>",
        headers={"Content-Type": "application/dicom+json"}),
    "lacks-rows-and-columns": lambda relay: relay.inject_fault(
        FaultMode.DROP_TAGS, None, "/metadata", drop_tags=ROWS_AND_COLUMNS),
    "stall": lambda relay: relay.inject_fault(FaultMode.STALL, None, "/metadata", hold_s=8.0),
}


@pytest.mark.parametrize("fault", list(METADATA_FAULTS), ids=list(METADATA_FAULTS))
def test_bad_series_metadata_is_eio_and_not_kept(relay, mount_idcfs, test_slides,
                                                 fault: str) -> None:  # type: ignore[no-untyped-def]
    mount = mount_idcfs(relay.url + "/dicom-web", "--timeout", str(TIMEOUT_S))
    folder = series_dir(mount.path, named(test_slides, "jpeg_rgb"))
    METADATA_FAULTS[fault](relay)
    start = time.monotonic()
    with pytest.raises(OSError) as caught:
        os.listdir(folder)
    seconds = time.monotonic() - start
    assert caught.value.errno == errno.EIO and seconds <= TIMEOUT_S + SLACK_S, seconds
    relay.clear_faults()
    before = relay.count("/metadata")
    assert "slide.json" in os.listdir(folder)
    assert relay.count("/metadata") == before + 1
