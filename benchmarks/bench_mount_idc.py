"""Issue 3's figures for the IDC tree: mount ready time, `ls collections/`, `ls
collections/gtex/`, and daemon RSS after listing every collection.

    python -m benchmarks.bench_mount_idc [--runs 5]

The tree comes from the bundled IDC index (`--catalog idc`); the server is a local
Orthanc (this machine has no route to IDC's proxy), so the figures are idcfs's own.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.support.orthanc import OrthancServer


def one_run(url: str, work: Path) -> dict[str, float]:
    mountpoint = Path(tempfile.mkdtemp(dir=work))
    pid_file = mountpoint.with_suffix(".pid")
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "idcfs", "mount", "--url", url, "--catalog", "idc",
                    "--pid-file", str(pid_file), "--log-file", str(mountpoint.with_suffix(".log")),
                    str(mountpoint)], check=True)
    figures = {"mount_ready_s": time.perf_counter() - start}
    pid = int(pid_file.read_text())
    figures["ls_collections_s"] = _timed_ls(mountpoint / "collections")
    figures["ls_gtex_s"] = _timed_ls(mountpoint / "collections" / "gtex")
    start = time.perf_counter()
    for collection in os.listdir(mountpoint / "collections"):
        os.listdir(mountpoint / "collections" / collection)
    figures["ls_every_collection_s"] = time.perf_counter() - start
    figures["rss_mb"] = _rss_mb(pid, "VmRSS")
    figures["peak_rss_mb"] = _rss_mb(pid, "VmHWM")
    subprocess.run([sys.executable, "-m", "idcfs", "unmount", str(mountpoint)], check=True)
    return figures


def _timed_ls(path: Path) -> float:
    start = time.perf_counter()
    subprocess.run(["ls", str(path)], check=True, capture_output=True)
    return time.perf_counter() - start


def _rss_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description="IDC tree mount figures")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    bars = {"mount_ready_s": 2.0, "ls_collections_s": 0.2, "ls_gtex_s": 1.0, "rss_mb": 300}
    with tempfile.TemporaryDirectory() as scratch, OrthancServer() as orthanc:
        runs = [one_run(orthanc.dicomweb_url, Path(scratch)) for _ in range(args.runs)]
    print(f"| figure | median of {args.runs} | min | max | bar |")
    print("|---|---|---|---|---|")
    for name in runs[0]:
        values = [run[name] for run in runs]
        bar = f"< {bars[name]}" if name in bars else ""
        print(f"| {name} | {statistics.median(values):.3f} | {min(values):.3f} | "
              f"{max(values):.3f} | {bar} |")


if __name__ == "__main__":
    main()
