"""The daily quota of IDC's DICOMweb proxy, as the proxy itself reports it.

The proxy (ImagingDataCommons/ThrottleProxy) counts the bytes it sends each client IP
per day and refuses with HTTP 429 past a limit. `GET <proxy host>/quota_usage` answers
that count: `{"ip": ..., "bytes_used": N, "fraction_used": F, "date": "YYYY-MM-DD"}`
(F is the fraction of today's per-IP limit used). `QuotaWatcher` asks for it on a
thread of its own, never on a reader's path nor while the statistics render: once at
mount, then at most once per `interval_s` (a minute), and only when the statistics were
read since the last answer, so a mount nobody watches sends nothing more. The
statistics show the last answer and its age; the client's IP in the answer is not kept
(the statistics file may be shared).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import time
from typing import Any

import urllib3
from urllib3.exceptions import HTTPError as Urllib3Error

from idcfs.errors import without_credentials

log = logging.getLogger(__name__)

IDC_QUOTA_URL = "https://proxy.imaging.datacommons.cancer.gov/quota_usage"
INTERVAL_S = 60.0
TIMEOUT_S = 10.0
STOP_WAIT_S = 2.0
KEPT_FIELDS = ("bytes_used", "fraction_used", "date")


class QuotaWatcher:
    """The last `/quota_usage` answer of a proxy, refreshed in the background."""

    def __init__(self, url: str, interval_s: float = INTERVAL_S,
                 timeout_s: float = TIMEOUT_S) -> None:
        self.url = url
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self._pool = urllib3.PoolManager(num_pools=1, maxsize=1, retries=False)
        self._lock = threading.Lock()
        self._answer: dict[str, Any] = {}
        self._error: str | None = None
        self._fetched_at: float | None = None  # monotonic
        self._fetched_wall: float | None = None
        self._requests = 0
        self._asked = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="idcfs-quota", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stopping.set()
        self._asked.set()
        if self._thread.is_alive():
            self._thread.join(STOP_WAIT_S)
        self._pool.clear()

    def statistics(self) -> dict[str, Any]:
        """The last answer (or why there is none), never blocking; tells the thread
        someone looks, so it asks again once the interval is over."""
        self._asked.set()
        with self._lock:
            shown: dict[str, Any] = {"url": without_credentials(self.url),
                                     "requests": self._requests, **self._answer,
                                     "error": self._error}
            if self._fetched_at is not None and self._fetched_wall is not None:
                shown["age_s"] = round(time.monotonic() - self._fetched_at, 1)
                shown["fetched_at"] = dt.datetime.fromtimestamp(
                    self._fetched_wall, dt.UTC).isoformat(timespec="seconds")
        return shown

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._refresh()
            self._asked.clear()
            if self._stopping.wait(self.interval_s):
                return
            self._asked.wait()  # set by a render since the refresh, or by close()

    def _refresh(self) -> None:
        with self._lock:
            self._requests += 1
        try:
            answer, error = _usage(self._fetch()), None
        except (Urllib3Error, ValueError) as failure:
            answer, error = None, str(failure).splitlines()[0] if str(failure) else repr(failure)
            log.warning("quota usage from %s: %s", without_credentials(self.url), error)
        with self._lock:
            self._error = error
            if answer is not None:
                self._answer = answer
                self._fetched_at, self._fetched_wall = time.monotonic(), time.time()

    def _fetch(self) -> Any:
        response = self._pool.request("GET", self.url, timeout=self.timeout_s,
                                      headers={"Accept": "application/json"})
        if response.status != 200:
            raise ValueError(f"HTTP {response.status}")
        return json.loads(response.data)


def _usage(answer: Any) -> dict[str, Any]:
    """The fields kept of a `/quota_usage` answer; ValueError when it is not one."""
    if not isinstance(answer, dict) or not isinstance(answer.get("fraction_used"), int | float):
        raise ValueError("not a quota_usage answer (no fraction_used)")
    return {name: answer[name] for name in KEPT_FIELDS if name in answer}
