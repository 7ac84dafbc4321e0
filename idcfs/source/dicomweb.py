"""A small DICOMweb client: QIDO-RS search, series metadata and WADO-RS frames.

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
from idcfs.source.multipart import parse_content_type, split_multipart

log = logging.getLogger(__name__)

FRAMES_ACCEPT = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
JSON_ACCEPT = "application/dicom+json"
QIDO_PAGE = 1000


@dataclass(frozen=True)
class Frame:
    """One frame as stored on the server, with the transfer syntax its part declared."""

    data: bytes
    transfer_syntax: str | None


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

    def __init__(self, base_url: str, settings: ClientSettings | None = None) -> None:
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
        self.requests_sent = 0

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

    def series_metadata(self, study_uid: str, series_uid: str) -> list[dict[str, Any]]:
        """The DICOM JSON metadata of every instance of a series."""
        return parse_json_list(self.series_metadata_json(study_uid, series_uid), "metadata")

    def series_metadata_json(self, study_uid: str, series_uid: str) -> bytes:
        """The series metadata answer as sent (DICOM JSON)."""
        return self._get(f"/studies/{study_uid}/series/{series_uid}/metadata", JSON_ACCEPT)

    def frames(
        self, study_uid: str, series_uid: str, instance_uid: str, numbers: Sequence[int]
    ) -> list[Frame]:
        """Frames `numbers` (1-based) of one instance, as stored, in the order asked."""
        frame_list = ",".join(str(number) for number in numbers)
        path = (
            f"/studies/{study_uid}/series/{series_uid}/instances/{instance_uid}"
            f"/frames/{frame_list}"
        )
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
        self.requests_sent += 1
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
