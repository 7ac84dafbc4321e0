"""The ML loader benchmark (issue 15, 5): tiles/s of the examples' loader (8 worker
processes reading and decoding tile files of a mount) against a direct DICOMweb client
with 8 processes, same server, same tiles, through a loopback relay adding latency.

    python -m benchmarks.bench_loader [--rtt 20] [--repeats 3] [--loader torch]

Starts its own Orthanc (temp dir) with a generated slide (one level, `--columns` x
`--rows` JPEG tiles of 256, default 32 x 24 = 768, in one instance), then at each RTT,
`--repeats` rounds of:
- (L1)/(L2) the loader over a fresh mount, sequential (frame) order: epoch 1 cold (empty
  caches), epoch 2 warm (the same mount, same workers);
- (L3)/(L4) the same in random order (reshuffled each epoch);
- (P) `idcfs prefetch` of the series into an empty `--cache-dir`, then (L5) a random
  epoch over the same mount;
- (D) dicomweb-client in 8 processes, one frame per request (what a loader over DICOMweb
  does), random order, `--direct-tiles` tiles, decoded alike;
- (D64) 8 processes each over its own slice, 64 frames per request, decoded alike (a
  hand-tuned direct loader; sequential only).
Every tile is decoded (Pillow, RGB) in the worker that reads it, as the examples do.
The table shows the median run of each, with the fastest and slowest in its notes, and
each row's tiles/s over (D)'s. Results also go to benchmarks/results/loader.md and
loader.json.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from multiprocessing import Pool
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import Mounted, Row, median_row, print_table, save
from tests.support.orthanc import OrthancServer
from tests.support.relay import TcpLatencyRelay
from tests.support.slides import GeneratedSlide, write_pyramid

EXAMPLES = Path(__file__).parents[1] / "examples"
WORKERS = 8
BATCH = 32
SIZE = 256
REFERENCES = ("(D)",)
AS_STORED = (("application/octet-stream", "*"),)


def examples(name: str) -> Any:
    """A module of examples/ (they import their sibling tile_paths as scripts do)."""
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))
    return importlib.import_module(name)


# --------------------------------------------------------------------------- the loaders

Epochs = Callable[[list[Path], Sequence[str]], Iterator[float]]


def torch_epochs(paths: list[Path], orders: Sequence[str]) -> Iterator[float]:
    """Seconds of each epoch of torch_tiles' DataLoader, as each ends (persistent
    workers, so a second epoch starts none); one order for all epochs."""
    torch_tiles = examples("torch_tiles")
    dataset = torch_tiles.TileDataset(paths, SIZE)
    batches = torch_tiles.loader(dataset, orders[0], WORKERS, BATCH, epochs=len(orders))
    for _ in orders:
        yield torch_tiles.run_epoch(batches, paths)


def pool_epochs(paths: list[Path], orders: Sequence[str]) -> Iterator[float]:
    """Seconds of each epoch of multiprocessing_tiles' pool, as each ends; the first
    includes starting the pool, as the DataLoader's first includes starting its workers."""
    mp_tiles = examples("multiprocessing_tiles")
    start = time.perf_counter()
    with mp_tiles.open_pool(paths, SIZE, WORKERS) as pool:
        started = time.perf_counter() - start
        for epoch, order in enumerate(orders, start=1):
            yield mp_tiles.run_epoch(pool, paths, order, BATCH, epoch) + started
            started = 0.0


LOADERS: dict[str, Epochs] = {"torch": torch_epochs, "multiprocessing": pool_epochs}


def series_paths(mount: Mounted, slide: GeneratedSlide) -> tuple[Path, list[Path]]:
    """The series directory and its level-0 tile paths (entering it: not timed)."""
    series = mount.path / "studies" / slide.study_uid / slide.series_uid
    return series, examples("tile_paths").listed_tiles(series / "level-0")


def loader_rows(rtt: int, url: str, slide: GeneratedSlide, work: Path, epochs: Epochs,
                order: str, labels: tuple[str, str]) -> list[Row]:
    """A fresh mount, two epochs in `order`: cold, then warm. The cold epoch includes
    starting the workers; `start_s` in its notes is that cost alone (the loader over
    `WORKERS` tiles already in memory)."""
    mount = Mounted(work, "--url", url)
    _, paths = series_paths(mount, slide)
    rows, sent = [], mount.stats()["requests_sent"]  # the listing's, not counted
    for label, seconds in zip(labels, epochs(paths, [order, order]), strict=True):
        requests = mount.stats()["requests_sent"]  # read between epochs
        rows.append(Row(rtt, label, len(paths), seconds, 0, requests - sent,
                        {"peak_rss_mb": mount.peak_rss_mb()}))
        sent = requests
    for row in rows:
        row.nbytes = sum(path.stat().st_size for path in paths)  # exact once read
    rows[0].extra["start_s"] = next(epochs(paths[:WORKERS], [order]))
    mount.close()
    return rows


def prefetched_rows(rtt: int, url: str, slide: GeneratedSlide, work: Path,
                    epochs: Epochs) -> list[Row]:
    """(P) `idcfs prefetch` of the series into an empty disk cache, then (L5) a random
    epoch over the same mount."""
    cache = Path(tempfile.mkdtemp(dir=work, prefix="cache-"))
    mount = Mounted(work, "--url", url, "--cache-dir", str(cache))
    series, paths = series_paths(mount, slide)
    listing = mount.stats()["requests_sent"]
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "idcfs", "prefetch", str(series)], check=True,
                   capture_output=True, timeout=600)
    prefetch_s = time.perf_counter() - start
    sent = mount.stats()["requests_sent"]
    seconds = next(epochs(paths, ["random"]))
    nbytes = sum(path.stat().st_size for path in paths)
    rows = [Row(rtt, "(P) idcfs prefetch SERIES", len(paths), prefetch_s, nbytes,
                sent - listing),
            Row(rtt, "(L5) loader, random, after prefetch", len(paths), seconds, nbytes,
                mount.stats()["requests_sent"] - sent)]
    mount.close()
    return rows


# --------------------------------------------------------------------------- direct

_direct: dict[str, Any] = {}  # each direct worker's client and instance


def _start_direct(url: str, uids: tuple[str, str, str]) -> None:
    from dicomweb_client.api import DICOMwebClient

    _direct.update(client=DICOMwebClient(url), uids=uids,
                   decode=examples("tile_paths").decode)


def _fetch_decoded(numbers: list[int]) -> tuple[int, list[np.ndarray]]:
    """In a direct worker: one request for these frames, each decoded; the bytes
    fetched and the pixels, handed back to the main process as the loaders' are."""
    study, series, instance = _direct["uids"]
    frames = _direct["client"].retrieve_instance_frames(
        study, series, instance, frame_numbers=numbers, media_types=AS_STORED)
    return sum(map(len, frames)), [_direct["decode"](frame, SIZE) for frame in frames]


def direct_row(rtt: int, url: str, uids: tuple[str, str, str], numbers: list[int],
               per_request: int, label: str) -> Row:
    """8 processes (started before timing) fetching `numbers`, `per_request` frames per
    request; one frame per request in the order given, else contiguous runs."""
    requests = [numbers[i : i + per_request] for i in range(0, len(numbers), per_request)]
    with Pool(WORKERS, initializer=_start_direct, initargs=(url, uids)) as pool:
        pool.map(_ping, range(WORKERS))
        start = time.perf_counter()
        tiles = nbytes = 0
        for fetched, pixels in pool.imap(_fetch_decoded, requests):
            tiles, nbytes = tiles + len(pixels), nbytes + fetched
        seconds = time.perf_counter() - start
    return Row(rtt, label, tiles, seconds, nbytes, len(requests))


def _ping(_: int) -> None:
    """Let every worker start (and import) before the clock starts."""


# --------------------------------------------------------------------------- the run


def round_rows(rtt: int, url: str, slide: GeneratedSlide, uids: tuple[str, str, str],
               frames: int, work: Path, epochs: Epochs, direct_tiles: int,
               round_index: int) -> list[Row]:
    import random

    shuffled = random.Random(round_index).sample(range(1, frames + 1), min(direct_tiles, frames))
    return [
        *loader_rows(rtt, url, slide, work, epochs, "sequential",
                     ("(L1) loader cold, sequential", "(L2) loader warm, sequential")),
        *loader_rows(rtt, url, slide, work, epochs, "random",
                     ("(L3) loader cold, random", "(L4) loader warm, random")),
        *prefetched_rows(rtt, url, slide, work, epochs),
        direct_row(rtt, url, uids, shuffled, 1, "(D) dicomweb-client x8 processes, 1/req"),
        direct_row(rtt, url, uids, list(range(1, frames + 1)), 64,
                   "(D64) dicomweb-client x8 processes, 64/req"),
    ]


def instance_of(slide: GeneratedSlide) -> tuple[tuple[str, str, str], int]:
    """(study, series, instance) UIDs of the slide's level and its frame count."""
    import pydicom

    (path,) = slide.files
    dataset = pydicom.dcmread(path, stop_before_pixels=True)
    return (slide.study_uid, slide.series_uid, dataset.SOPInstanceUID), int(dataset.NumberOfFrames)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rtt", default="20", help="RTTs in ms, comma-separated (default 20)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds per RTT; medians shown")
    parser.add_argument("--columns", type=int, default=32, help="tile columns of the level")
    parser.add_argument("--rows", type=int, default=24, help="tile rows of the level")
    parser.add_argument("--direct-tiles", type=int, default=300,
                        help="random tiles (D) reads, one request each (default 300)")
    parser.add_argument("--loader", choices=sorted(LOADERS), default=(
        "torch" if importlib.util.find_spec("torch") else "multiprocessing"),
        help="the example measured (default torch when installed)")
    args = parser.parse_args()
    epochs = LOADERS[args.loader]
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="idcfs-bench-loader-") as scratch:
        work = Path(scratch)
        slide = write_pyramid(work / "slide", "loader", width=args.columns * 256,
                              height=args.rows * 256)
        uids, frames = instance_of(slide)
        with OrthancServer() as orthanc:
            orthanc.upload(slide.files)
            for rtt in (int(value) for value in args.rtt.split(",")):
                named: dict[str, list[Row]] = {}
                with TcpLatencyRelay("127.0.0.1", orthanc.port, rtt / 1000) as relay:
                    url = relay.url + "/dicom-web"
                    for index in range(args.repeats):
                        for row in round_rows(rtt, url, slide, uids, frames, work, epochs,
                                              args.direct_tiles, index):
                            named.setdefault(row.name, []).append(row)
                rows += [median_row(runs) for runs in named.values()]
                print_table(rows, REFERENCES)
    text = print_table(rows, REFERENCES)
    load = os.getloadavg()
    save(rows, f"loader: {args.loader}, {WORKERS} workers, batch {BATCH}; load average "
         f"{load[0]:.1f} {load[1]:.1f} {load[2]:.1f} at the end\n\n{text}", name="loader")


if __name__ == "__main__":
    main()
