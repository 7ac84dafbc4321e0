"""The idcfs benchmark (issue 4): idcfs against direct DICOMweb clients, same server, same
tiles, through a loopback relay adding WAN latency.

    python -m benchmarks.run [--rtt 0,20,100] [--quick]

Starts its own Orthanc (temp dir) with a generated slide whose base level has >= 3,000
JPEG tiles, then for each RTT runs (a)-(d) and (e)-(h) and prints tiles/s, MB/s, the
ratios of each idcfs figure to (d) and to (a), requests sent and the daemon's peak RSS.
(d), (e), (h), the in-memory ceiling and (h') run `--repeats` rounds (default 3) at each
RTT, one of each per round; the table shows the median run, with the fastest and
slowest in its notes, and (h) and (h') as the median of their per-round ratios to the
ceiling measured in the same round.
Results also go to benchmarks/results/latest.json and latest.md.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.clients import (
    FrameGetter,
    Result,
    Target,
    concurrent_get_latency,
    dicomweb_client_frames,
    raw_batched,
    single_get_latency,
    wsidicom_loop,
)
from benchmarks.common import (
    Mounted,
    Row,
    copy_tree,
    listed,
    median_row,
    memory_fs,
    parallel_slices,
    print_table,
    read_files,
    save,
)
from tests.support.orthanc import OrthancServer
from tests.support.relay import TcpLatencyRelay
from tests.support.slides import write_pyramid

REFERENCES = ("(d)", "(a)")


def level_dir(mount: Mounted, study: str, series: str) -> Path:
    series_dir = mount.path / "studies" / study / series
    os.listdir(series_dir)  # one metadata request, not timed
    return series_dir / "level-0"


def idcfs_rows(rtt: int, url: str, target: Target, work: Path, random_reads: int) -> list[Row]:
    return [
        _ls_cold(rtt, url, target, work),
        _parallel_readers(rtt, url, target, work),
        _single_reader(rtt, url, target, work),
        _random_reads(rtt, url, target, work, random_reads),
    ]


def copy_and_reread(rtt: int, url: str, target: Target, work: Path) -> tuple[Row, Row]:
    """(e) one `cp -r` of the level, cold; then (h) the level read again, same mount.

    The copy goes to tmpfs when there is one: (d) keeps what it fetches in memory, so
    both then measure fetching, not the destination disk.
    """
    mount = Mounted(work, "--url", url)
    level = level_dir(mount, target.study_uid, target.series_uid)
    seconds, copied = copy_tree(level, work)
    stats = mount.stats()
    copy = Row(rtt, "(e) idcfs cp -r level-0", len(target.frame_numbers), seconds, copied,
               stats["requests_sent"], {"peak_rss_mb": mount.peak_rss_mb(),
                                        "frames_per_request": stats["frames_per_request"]})
    paths = listed(level)
    start = time.perf_counter()
    nbytes, _ = read_files(paths)
    warm = Row(rtt, "(h) idcfs warm, memory", len(paths), time.perf_counter() - start,
               nbytes, mount.stats()["requests_sent"] - stats["requests_sent"])
    mount.close()
    return copy, warm


def repeated_rows(
    rtt: int, url: str, target: Target, work: Path, sizes: list[int], repeats: int
) -> list[Row]:
    """(d), (e), (h), the in-memory ceilings and (h'), `repeats` rounds of each in turn;
    the median of each. (h) and (h') are also compared with the ceiling measured in the
    same round (the machine's speed drifts between rounds): `of_ceiling` is the median
    of those per-round ratios."""
    cache_dir = _filled_disk_cache(url, target, work, rtt)
    named: dict[str, list[Row]] = {}
    for _ in range(repeats):
        result = raw_batched(target)
        raw = Row(rtt, result.name, result.tiles, result.seconds, result.nbytes,
                  result.requests)
        copy, reread = copy_and_reread(rtt, url, target, work)
        cold, warm = _memfs_reads(sizes, work)
        remount = _reread_after_remount(rtt, url, target, work, cache_dir)
        reread.extra["of_ceiling"] = warm.seconds / reread.seconds
        remount.extra["of_ceiling"] = cold.seconds / remount.seconds
        for row in (raw, copy, reread, cold, warm, remount):
            row.rtt_ms = rtt
            named.setdefault(row.name, []).append(row)
    shutil.rmtree(cache_dir)
    return [_median_with_ratio(rows) for rows in named.values()]


def _median_with_ratio(rows: list[Row]) -> Row:
    """The median run; its `of_ceiling` (if any) replaced by the median over runs."""
    ratios = [row.extra["of_ceiling"] for row in rows if "of_ceiling" in row.extra]
    middle = median_row(rows)
    if ratios:
        middle.extra = {**middle.extra, "of_ceiling": statistics.median(ratios),
                        "of_ceiling_min": min(ratios), "of_ceiling_max": max(ratios)}
    return middle


def _filled_disk_cache(url: str, target: Target, work: Path, rtt: int) -> Path:
    cache_dir = work / f"disk-cache-{rtt}"
    first = Mounted(work, "--url", url, "--cache-dir", str(cache_dir))
    read_files(listed(level_dir(first, target.study_uid, target.series_uid)))
    first.close()
    return cache_dir


def _reread_after_remount(
    rtt: int, url: str, target: Target, work: Path, cache_dir: Path
) -> Row:
    """(h') the level read in a fresh mount of a filled disk cache."""
    mount = Mounted(work, "--url", url, "--cache-dir", str(cache_dir))
    paths = listed(level_dir(mount, target.study_uid, target.series_uid))
    start = time.perf_counter()
    nbytes, _ = read_files(paths)
    row = Row(rtt, "(h') idcfs warm, disk (remount)", len(paths),
              time.perf_counter() - start, nbytes, mount.stats()["requests_sent"])
    mount.close()
    return row


def _ls_cold(rtt: int, url: str, target: Target, work: Path) -> Row:
    mount = Mounted(work, "--url", url)
    level = level_dir(mount, target.study_uid, target.series_uid)
    before = mount.stats()["frames_fetched"]
    start = time.perf_counter()
    listing = subprocess.run(["ls", "-l", str(level)], check=True, capture_output=True)
    seconds = time.perf_counter() - start
    frames = mount.stats()["frames_fetched"] - before
    mount.close()
    entries = len(listing.stdout.splitlines()) - 1
    return Row(rtt, "(e') idcfs ls -l level-0, cold", entries, seconds, 0, frames,
               {"frame_requests": frames})


def _parallel_readers(rtt: int, url: str, target: Target, work: Path) -> Row:
    mount = Mounted(work, "--url", url)
    paths = listed(level_dir(mount, target.study_uid, target.series_uid))
    start = time.perf_counter()
    nbytes = parallel_slices(paths, 8)
    seconds = time.perf_counter() - start
    row = Row(rtt, "(f) idcfs 8 parallel readers", len(paths), seconds, nbytes,
              mount.stats()["requests_sent"], {"peak_rss_mb": mount.peak_rss_mb()})
    mount.close()
    return row


def _random_reads(rtt: int, url: str, target: Target, work: Path, count: int) -> Row:
    mount = Mounted(work, "--url", url)
    paths = listed(level_dir(mount, target.study_uid, target.series_uid))
    chosen = random.Random(4).sample(paths, min(count, len(paths)))
    start = time.perf_counter()
    nbytes, latencies = read_files(chosen, threads=8)
    seconds = time.perf_counter() - start
    single = single_get_latency(target)
    numbers = random.Random(5).sample(list(target.frame_numbers), min(count, 200))
    loaded = concurrent_get_latency(target, numbers)
    median = statistics.median(latencies)
    row = Row(rtt, "(g) idcfs random reads x8", len(chosen), seconds, nbytes,
              mount.stats()["requests_sent"],
              {"median_latency_ms": median * 1000, "single_get_ms": single * 1000,
               "bar_ms": (1.2 * single + 0.003) * 1000,
               "direct_get_x8_ms": loaded * 1000,
               "bar_same_load_ms": (1.2 * loaded + 0.003) * 1000})
    mount.close()
    return row


def _single_reader(rtt: int, url: str, target: Target, work: Path, count: int = 40) -> Row:
    """(g1) cold random reads from one thread, each followed by a direct single-frame GET
    of another random tile: idcfs's cost per cold read against the GET it stands for,
    with the server in the same state."""
    mount = Mounted(work, "--url", url)
    paths = listed(level_dir(mount, target.study_uid, target.series_uid))
    picked = random.Random(6).sample(range(1, len(paths)), 2 * count)
    getter = FrameGetter(target)
    getter.seconds(target.frame_numbers[0])  # open the connection
    idcfs_s: list[float] = []
    direct_s: list[float] = []
    for mine, theirs in zip(picked[:count], picked[count:], strict=True):
        idcfs_s += read_files([paths[mine]])[1]
        direct_s.append(getter.seconds(target.frame_numbers[theirs]))
    median, direct = statistics.median(idcfs_s), statistics.median(direct_s)
    row = Row(rtt, "(g1) idcfs random reads x1", count, sum(idcfs_s), 0,
              mount.stats()["requests_sent"],
              {"median_latency_ms": median * 1000, "direct_get_ms": direct * 1000,
               "bar_ms": (1.2 * direct + 0.003) * 1000})
    mount.close()
    return row


def slow_client_rows(rtt: int, target: Target, slow_tiles: int) -> list[Row]:
    results: list[Result] = [
        wsidicom_loop(target, slow_tiles),
        dicomweb_client_frames(target, slow_tiles, threads=1),
        dicomweb_client_frames(target, slow_tiles * 4, threads=8),
    ]
    return [Row(rtt, r.name, r.tiles, r.seconds, r.nbytes, r.requests) for r in results]


def _memfs_reads(sizes: list[int], work: Path) -> tuple[Row, Row]:
    with memory_fs(sizes, work) as mountpoint:
        paths = listed(mountpoint)
        rows = []
        for label in ("cold page cache", "warm page cache"):
            start = time.perf_counter()
            nbytes, _ = read_files(paths)
            rows.append(Row(-1, f"ceiling: in-memory pyfuse3 fs, {label}", len(paths),
                            time.perf_counter() - start, nbytes))
        return rows[0], rows[1]


def build_target(url: str, slide: Any) -> Target:
    """The base level of the generated slide, tiles in frame order."""
    import pydicom

    base = max((pydicom.dcmread(path, stop_before_pixels=True) for path in slide.files),
               key=lambda ds: int(ds.TotalPixelMatrixColumns))
    columns = -(-int(base.TotalPixelMatrixColumns) // int(base.Columns))
    frames = int(base.NumberOfFrames)
    return Target(url, slide.study_uid, slide.series_uid, base.SOPInstanceUID,
                  tuple(range(1, frames + 1)),
                  tuple((i % columns, i // columns) for i in range(frames)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rtt", default="0,20,100", help="RTTs in ms, comma-separated")
    parser.add_argument("--quick", action="store_true", help="fewer tiles for the slow clients")
    parser.add_argument("--repeats", type=int, default=3,
                        help="rounds of (d), (e), (h), ceiling and (h') per RTT; medians shown")
    parser.add_argument("--columns", type=int, default=64, help="base level tile columns")
    parser.add_argument("--rows", type=int, default=48, help="base level tile rows")
    args = parser.parse_args()
    slow_tiles = 60 if args.quick else 200
    random_reads = 500 if args.quick else 2000
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="idcfs-bench-") as scratch:
        work = Path(scratch)
        slide = write_pyramid(work / "slide", "bench", width=args.columns * 256,
                              height=args.rows * 256, codec="jpeg_rgb")
        with OrthancServer() as orthanc:
            orthanc.upload(slide.files)
            target = build_target(orthanc.dicomweb_url, slide)
            sizes = [len(f) for f in _frames(target)]
            for rtt in (int(value) for value in args.rtt.split(",")):
                with TcpLatencyRelay("127.0.0.1", orthanc.port, rtt / 1000) as relay:
                    url = relay.url + "/dicom-web"
                    routed = Target(url, *list(target.__dict__.values())[1:])
                    rows += slow_client_rows(rtt, routed, slow_tiles)
                    rows += repeated_rows(rtt, url, routed, work, sizes, args.repeats)
                    rows += idcfs_rows(rtt, url, routed, work, random_reads)
                    print_table(rows, REFERENCES)
    save(rows, print_table(rows, REFERENCES))


def _frames(target: Target) -> list[bytes]:
    from dicomweb_client.api import DICOMwebClient

    client = DICOMwebClient(target.url)
    frames: list[bytes] = []
    numbers = list(target.frame_numbers)
    for first in range(0, len(numbers), 256):
        frames += client.retrieve_instance_frames(
            target.study_uid, target.series_uid, target.instance_uid,
            frame_numbers=numbers[first : first + 256],
            media_types=(("application/octet-stream", "*"),))
    return frames


if __name__ == "__main__":
    main()
