"""The direct clients idcfs is compared with, each reading the same tiles of one level.

(a) wsidicom read_encoded_tile loop over DICOMweb; (b) dicomweb-client, one frame per
request, sequential; (c) the same with 8 threads; (d) the best raw client we could
write: urllib3 keep-alive, 64 frames per request, 4 requests in flight.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import urllib3

AS_STORED = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'


@dataclass(frozen=True)
class Target:
    """One level of one slide on a DICOMweb server."""

    url: str
    study_uid: str
    series_uid: str
    instance_uid: str
    frame_numbers: tuple[int, ...]
    positions: tuple[tuple[int, int], ...]  # (column, row) per frame, same order


@dataclass(frozen=True)
class Result:
    name: str
    tiles: int
    nbytes: int
    seconds: float
    requests: int

    @property
    def tiles_per_s(self) -> float:
        return self.tiles / self.seconds

    @property
    def mb_per_s(self) -> float:
        return self.nbytes / self.seconds / 1e6


def _timed(name: str, run, requests: int) -> Result:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    sizes = run()
    return Result(name, len(sizes), sum(sizes), time.perf_counter() - start, requests)


def wsidicom_loop(target: Target, count: int) -> Result:
    """(a) wsidicom over DICOMweb, read_encoded_tile for each tile in turn."""
    from dicomweb_client.api import DICOMwebClient
    from wsidicom import WsiDicom, WsiDicomWebClient

    client = WsiDicomWebClient(DICOMwebClient(target.url))
    slide = WsiDicom.open_web(client, target.study_uid, target.series_uid)
    positions = target.positions[:count]

    def run() -> list[int]:
        return [
            len(slide.read_encoded_tile(0, position, crop_to_image_boundary=False))
            for position in positions
        ]

    return _timed("(a) wsidicom loop", run, count)


def dicomweb_client_frames(target: Target, count: int, threads: int) -> Result:
    """(b)/(c) dicomweb-client, one frame per request, `threads` at a time."""
    from dicomweb_client.api import DICOMwebClient

    client = DICOMwebClient(target.url)
    numbers = target.frame_numbers[:count]

    def fetch(number: int) -> int:
        frames = client.retrieve_instance_frames(
            target.study_uid, target.series_uid, target.instance_uid, frame_numbers=[number],
            media_types=(("application/octet-stream", "*"),),
        )
        return len(frames[0])

    def run() -> list[int]:
        with ThreadPoolExecutor(threads) as pool:
            return list(pool.map(fetch, numbers))

    label = "(b) dicomweb-client 1/req" if threads == 1 else f"(c) dicomweb-client x{threads}"
    return _timed(label, run, count)


def raw_batched(target: Target, per_request: int = 64, in_flight: int = 4) -> Result:
    """(d) urllib3, `per_request` frames per request, `in_flight` requests at a time."""
    from idcfs.source.multipart import parse_content_type, split_multipart

    pool = urllib3.PoolManager(maxsize=in_flight)
    numbers = list(target.frame_numbers)
    batches = [numbers[i : i + per_request] for i in range(0, len(numbers), per_request)]
    base = (f"{target.url}/studies/{target.study_uid}/series/{target.series_uid}"
            f"/instances/{target.instance_uid}/frames/")

    def fetch(batch: Sequence[int]) -> list[int]:
        response = pool.request("GET", base + ",".join(map(str, batch)),
                                headers={"Accept": AS_STORED})
        boundary = parse_content_type(response.headers["Content-Type"])[1]["boundary"]
        return [len(part.content) for part in split_multipart(response.data, boundary)]

    def run() -> list[int]:
        with ThreadPoolExecutor(in_flight) as workers:
            return [size for sizes in workers.map(fetch, batches) for size in sizes]

    return _timed(f"(d) raw {per_request}/req x{in_flight}", run, len(batches))


class FrameGetter:
    """Single-frame GETs on warm keep-alive connections, timed."""

    def __init__(self, target: Target, connections: int = 1) -> None:
        self.pool = urllib3.PoolManager(maxsize=connections)
        self.base = (f"{target.url}/studies/{target.study_uid}/series/{target.series_uid}"
                     f"/instances/{target.instance_uid}/frames/")

    def seconds(self, number: int) -> float:
        start = time.perf_counter()
        self.pool.request("GET", f"{self.base}{number}", headers={"Accept": AS_STORED})
        return time.perf_counter() - start


def concurrent_get_latency(target: Target, numbers: Sequence[int], threads: int = 8) -> float:
    """Median seconds of single-frame GETs made `threads` at a time (same load as (g))."""
    getter = FrameGetter(target, threads)
    with ThreadPoolExecutor(threads) as workers:
        return statistics.median(workers.map(getter.seconds, numbers))


def single_get_latency(target: Target, samples: int = 30) -> float:
    """Median seconds of one single-frame GET on a warm keep-alive connection."""
    getter = FrameGetter(target)
    times = [getter.seconds(number) for number in target.frame_numbers[:samples]]
    return statistics.median(times[1:])
