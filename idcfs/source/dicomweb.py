"""A small DICOMweb client: QIDO-RS search, series metadata and WADO-RS frames.

It is a `FrameSource` (`idcfs.source.base`): an instance's location is its WADO-RS path
(`/studies/S/series/R/instances/I`), and the frames of one instance come in one request.

Built on urllib3 (one keep-alive connection pool, per-request timeouts, retries with
backoff for transient 5xx). Every wait is bounded: a connection slot, the connect,
each socket read, and the number of retries.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import urllib3
from urllib3.exceptions import HTTPError as Urllib3Error

from idcfs.dicom.dicom_json import WSI_SOP_CLASS, first_value, parse_json_list
from idcfs.errors import FetchError, QuotaExhaustedError
from idcfs.metrics import Metrics
from idcfs.slide.model import InstanceInfo
from idcfs.source.base import Frame, InstanceMetadata
from idcfs.source.multipart import parse_content_type, split_multipart

log = logging.getLogger(__name__)

FRAMES_ACCEPT = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
JSON_ACCEPT = "application/dicom+json"
QIDO_PAGE = 1000


@dataclass(frozen=True)
class ClientSettings:
    """Connection limits and timeouts (seconds)."""

    max_connections: int = 8
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    slot_timeout: float = 300.0
    retries: int = 4
    backoff: float = 0.3


class DicomWebClient:
    """Thread-safe DICOMweb client for one server."""

    def __init__(
        self, base_url: str, settings: ClientSettings | None = None, metrics: Metrics | None = None
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.settings = settings or ClientSettings()
        self._slots = threading.BoundedSemaphore(self.settings.max_connections)
        self._pool = urllib3.PoolManager(
            num_pools=4,
            maxsize=self.settings.max_connections,
            timeout=urllib3.Timeout(
                connect=self.settings.connect_timeout, read=self.settings.read_timeout
            ),
            retries=urllib3.Retry(
                total=self.settings.retries,
                backoff_factor=self.settings.backoff,
                status_forcelist=(500, 502, 503, 504),
                allowed_methods=("GET",),
                respect_retry_after_header=False,
                raise_on_status=False,
            ),
        )
        self._quota_lock = threading.Lock()
        self._blocked_until: float = 0.0
        self._requests_sent = (metrics or Metrics()).counter("requests_sent")

    @property
    def description(self) -> str:
        return f"DICOMweb {self.base_url}"

    @property
    def requests_sent(self) -> int:
        return self._requests_sent.value

    def statistics(self) -> dict[str, Any]:
        return {"requests_sent": self.requests_sent}

    # -- public calls -------------------------------------------------------------

    def check_reachable(self) -> None:
        """Raise FetchError unless the server answers a minimal QIDO search."""
        self._get("/studies?" + urlencode({"limit": 1}), JSON_ACCEPT, ok=(200, 204))

    def search_wsi_series(self) -> list[tuple[str, str]]:
        """(StudyInstanceUID, SeriesInstanceUID) of every series holding WSI instances.

        Searches instances with Modality SM and filters the SOP class locally
        (some servers reject a SOPClassUID filter).
        """
        found: set[tuple[str, str]] = set()
        for instance in self._search_pages("/instances", {"Modality": "SM"}):
            if first_value(instance, "00080016") == WSI_SOP_CLASS:
                found.add((first_value(instance, "0020000D"), first_value(instance, "0020000E")))
        return sorted(found)

    def series_metadata(self, study_uid: str, series_uid: str) -> list[InstanceMetadata]:
        """Every instance of a series (one request), located by its WADO-RS path."""
        series_path = f"/studies/{study_uid}/series/{series_uid}"
        body = self._get(f"{series_path}/metadata", JSON_ACCEPT)
        return [
            InstanceMetadata(f"{series_path}/instances/{first_value(meta, '00080018')}", meta)
            for meta in parse_json_list(body, "series metadata")
        ]

    def frames(self, instance: InstanceInfo, numbers: Sequence[int]) -> list[Frame]:
        """Frames `numbers` (1-based) of one instance, as stored, in the order asked."""
        if not instance.location:
            raise FetchError(f"instance {instance.uid}: no WADO-RS location")
        path = f"{instance.location}/frames/{','.join(str(number) for number in numbers)}"
        response = self._request(path, FRAMES_ACCEPT)
        frames = _frames_from_response(response)
        if len(frames) != len(numbers):
            raise FetchError(
                f"{path}: server sent {len(frames)} frames for {len(numbers)} requested"
            )
        return frames

    def close(self) -> None:
        self._pool.clear()

    # -- plumbing -----------------------------------------------------------------

    def _search_pages(self, path: str, query: dict[str, str]) -> Iterator[dict[str, Any]]:
        offset = 0
        previous_first: str | None = None
        while True:
            params = {**query, "limit": QIDO_PAGE, "offset": offset}
            page = parse_json_list(
                self._get(f"{path}?{urlencode(params)}", JSON_ACCEPT, ok=(200, 204)), "search"
            )
            first = json.dumps(page[:1], sort_keys=True)
            if not page or first == previous_first:
                return
            previous_first = first
            yield from page
            offset += len(page)

    def _get(self, path: str, accept: str, ok: tuple[int, ...] = (200,)) -> bytes:
        return self._request(path, accept, ok).data

    def _request(
        self, path: str, accept: str, ok: tuple[int, ...] = (200,)
    ) -> urllib3.BaseHTTPResponse:
        self._refuse_while_over_quota(path)
        if not self._slots.acquire(timeout=self.settings.slot_timeout):
            raise FetchError(f"{path}: no free connection after {self.settings.slot_timeout} s")
        try:
            response = self._send(path, accept)
        finally:
            self._slots.release()
        if response.status == 429:
            self._enter_quota_pause(path)
        if response.status not in ok:
            raise FetchError(f"{path}: HTTP {response.status} {_short(response.data)}")
        return response

    def _send(self, path: str, accept: str) -> urllib3.BaseHTTPResponse:
        url = self.base_url + path
        self._requests_sent.add()
        try:
            return self._pool.request("GET", url, headers={"Accept": accept})
        except Urllib3Error as error:
            raise FetchError(f"{path}: {type(error).__name__}: {error}") from error

    def _refuse_while_over_quota(self, path: str) -> None:
        if time.time() < self._blocked_until:
            raise QuotaExhaustedError(f"{path}: not sent, the server's quota is exhausted")

    def _enter_quota_pause(self, path: str) -> None:
        reset = next_utc_midnight()
        with self._quota_lock:
            first = self._blocked_until < time.time()
            self._blocked_until = reset
        if first:
            log.error(
                "HTTP 429 from %s: the server's (IDC proxy's) daily quota is exhausted until "
                "00:00 UTC (%s); no more requests are sent until then or until remount",
                self.base_url,
                dt.datetime.fromtimestamp(reset, dt.UTC).isoformat(timespec="minutes"),
            )
        raise QuotaExhaustedError(f"{path}: HTTP 429, quota exhausted")


def next_utc_midnight(now: float | None = None) -> float:
    """POSIX time of the next 00:00 UTC after `now`."""
    moment = dt.datetime.fromtimestamp(time.time() if now is None else now, dt.UTC)
    midnight = (moment + dt.timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return midnight.timestamp()


def _frames_from_response(response: urllib3.BaseHTTPResponse) -> list[Frame]:
    media_type, params = parse_content_type(response.headers.get("Content-Type", ""))
    if not media_type.startswith("multipart/"):
        return [Frame(response.data, params.get("transfer-syntax"))]
    boundary = params.get("boundary")
    if not boundary:
        raise FetchError("multipart frames answer without a boundary")
    return [
        Frame(part.content, parse_content_type(part.content_type)[1].get("transfer-syntax"))
        for part in split_multipart(response.data, boundary)
    ]


def _short(body: bytes) -> str:
    text = " ".join(body[:300].decode("utf-8", "replace").split())
    return f"({text})" if text else ""
