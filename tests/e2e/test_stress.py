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

The slides go to an Orthanc of this module's own, so the session's shared server, whose
slides other tests count, never holds them. The longer run is `benchmarks/soak.py`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from tests.support.fixtures import orthanc_holding
from tests.support.orthanc import OrthancServer
from tests.support.relay import HttpRelay
from tests.support.slides import GeneratedSlide
from tests.support.stress import (
    StressReport,
    StressSettings,
    failed_checks,
    oracle,
    run_stress,
    write_stress_slides,
)

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


def _stressed(server: OrthancServer, slides: list[GeneratedSlide], mount_idcfs,  # noqa: ANN001
              settings: StressSettings) -> tuple[dict[str, bytes], StressReport, str]:
    """The stress load on a mount behind a relay: (expected tiles, report, its summary),
    after asserting that every check of the soak held."""
    expected = oracle(server.dicomweb_url, slides)
    with HttpRelay(server.host, server.port) as relay:
        mount = mount_idcfs(relay.url + "/dicom-web", *settings.mount_options())
        report = run_stress(mount.path, mount.pid, relay, expected, settings, mount.log_file)
    summary = "\n".join(report.lines())
    print(summary)  # shown with -s
    assert failed_checks(report) == [], summary
    return expected, report, summary
