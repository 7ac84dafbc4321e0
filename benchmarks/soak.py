"""The soak (issue 12, 3): the stress test's load for longer, its figures printed.

    python -m benchmarks.soak --minutes N [--readers 64] [--fault-rate 0.1] [--bucket]

Starts its own Orthanc (temp dir) with a few generated JPEG pyramids, an HTTP relay that
injects faults on `--fault-rate` of the frame requests (several modes), and one idcfs
mount behind the relay; fetches every tile's expected bytes from Orthanc directly, then
runs `tests.support.stress.run_stress` for N minutes and prints reads, faults injected,
wrong bytes, hangs, EIO count, peak RSS, fds and threads before and after, reads/s.
With `--bucket`, the slides are files in a bucket of the real rclone (`rclone serve s3`,
one slide per way frames are found: TIFF tags, a Basic Offset Table, a scan), mounted
with `--files s3://`, the relay faulting the ranged GETs with what S3 and a WAN give
(500, 503 SlowDown, resets, stalls, short bodies), the oracle read from the files.
Exits 1 when a check failed (wrong bytes, a hang, another errno, RSS over its bound,
more fds or threads after than before beyond the bounded pools, a slow `ls`, a tile not
exact after the faults stopped).
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from tests.support.mounting import Mount, run_idcfs, stop_mount
from tests.support.orthanc import OrthancServer
from tests.support.relay import HttpRelay
from tests.support.s3server import RcloneS3Server
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

BUCKET = "soak"

LOG_COPY = Path(__file__).parent / "results" / "soak-idcfs.log"


def mount(source: list[str], work: Path, settings: StressSettings) -> Mount:
    """Mount `source` (its options: `--url URL`, or `--files ... --s3-endpoint ...`)."""
    path = work / "mnt"
    path.mkdir()
    log_file, pid_file = work / "idcfs.log", work / "idcfs.pid"
    result = run_idcfs("mount", *source, "--log-file", str(log_file), "--pid-file",
                       str(pid_file), *settings.mount_options(), str(path))
    if result.returncode != 0:
        raise SystemExit(f"soak: mount failed: {result.stderr.strip()}")
    return Mount(path, log_file, int(pid_file.read_text()))


def soak(settings: StressSettings, slides: int,
         disk_cache: bool) -> tuple[StressReport, list[str]]:
    with tempfile.TemporaryDirectory(prefix="idcfs-soak-") as scratch:
        work = Path(scratch)
        if disk_cache:
            settings = replace(settings, extra_options=("--cache-dir", str(work / "cache")))
        with served_slides(settings.source, work, slides) as (port, expected, count):
            say(f"{len(expected)} tiles over {count} slides, "
                f"{sum(map(len, expected.values())) / 1e6:.1f} MB")
            with HttpRelay("127.0.0.1", port) as relay:
                report = _soaked(relay, work, settings, expected)
    return report, failed_checks(report)


@contextlib.contextmanager
def served_slides(source: str, work: Path,
                  slides: int) -> Iterator[tuple[int, dict[str, bytes], int]]:
    """Generated slides on their server, for as long as the block runs: (its port, every
    tile's expected bytes, how many slides). A bucket's slides are files in rclone's
    bucket, one per layout, their oracle read from the files; DICOMweb's are uploaded
    to Orthanc, their oracle fetched from it directly."""
    if source == "bucket":
        generated = write_bucket_stress_slides(work / "slides", work / "s3", BUCKET)
        with RcloneS3Server(work / "s3") as rclone:
            yield rclone.port, file_oracle(generated), len(generated)
        return
    generated = write_stress_slides(work / "slides", count=slides)
    with OrthancServer() as orthanc:
        orthanc.upload(path for slide in generated for path in slide.files)
        yield orthanc.port, oracle(orthanc.dicomweb_url, generated), len(generated)


def _soaked(relay: HttpRelay, work: Path, settings: StressSettings,
            expected: dict[str, bytes]) -> StressReport:
    """The load on one mount behind `relay`; the daemon's log kept in results/."""
    source = (["--files", f"s3://{BUCKET}/", "--s3-endpoint", relay.url]
              if settings.source == "bucket" else ["--url", relay.url + "/dicom-web"])
    mounted = mount(source, work, settings)
    try:
        report = run_stress(mounted.path, mounted.pid, relay, expected, settings,
                            mounted.log_file, progress=say)
        LOG_COPY.parent.mkdir(exist_ok=True)
        LOG_COPY.write_text(mounted.log())
    finally:
        stop_mount(mounted)
    return report


def say(line: str) -> None:
    print(line, flush=True)


def commit() -> str:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True, cwd=Path(__file__).parent).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="length of the load")
    parser.add_argument("--readers", type=int, default=64, help="reader threads")
    parser.add_argument("--walkers", type=int, default=None,
                        help="of the readers, how many walk levels in order (default half)")
    parser.add_argument("--fault-rate", type=float, default=0.1,
                        help="share of frame requests given a fault")
    parser.add_argument("--slides", type=int, default=3,
                        help="generated slides (with --bucket: one per layout, 3)")
    parser.add_argument("--seed", type=int, default=12)
    parser.add_argument("--timeout", type=float, default=3.0, help="the mount's --timeout")
    parser.add_argument("--cache-size", default="2M", help="the mount's --cache-size")
    parser.add_argument("--readahead-size", default="2M", help="the mount's --readahead-size")
    parser.add_argument("--disk-cache", action="store_true",
                        help="also a --cache-dir (disk cache and its page-cache helper)")
    parser.add_argument("--bucket", action="store_true",
                        help="the slides as files in rclone's S3 bucket (--files s3://) "
                             "instead of Orthanc (DICOMweb)")
    args = parser.parse_args()
    settings = StressSettings(
        readers=args.readers,
        walkers=args.readers // 2 if args.walkers is None else args.walkers,
        seconds=args.minutes * 60, fault_rate=args.fault_rate, seed=args.seed,
        timeout_s=args.timeout, cache_size=args.cache_size,
        readahead_size=args.readahead_size, sample_every_s=5.0,
        source="bucket" if args.bucket else "dicomweb",
    )
    started = time.strftime("%Y-%m-%d %H:%M")
    report, failures = soak(settings, args.slides, args.disk_cache)
    print(f"commit {commit()}, started {started}")
    for line in report.lines():
        print(line)
    for failure in failures:
        print(f"FAILED: {failure}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
