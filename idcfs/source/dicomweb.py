"""A small DICOMweb client: QIDO-RS search, series metadata and WADO-RS frames.

It is a `FrameSource` (`idcfs.source.base`): an instance's location is its WADO-RS path
(`/studies/S/series/R/instances/I`), and the frames of one instance come in one request.

Built on urllib3 (one keep-alive connection pool). Every request has one deadline
(`ClientSettings.timeout`, `--timeout`, measured on `time.monotonic()`) that everything
it waits for shares: a connection slot, each attempt's connect and answer (their
timeouts are at most the time left), the body, read in chunks with the deadline checked
between them (a server dripping bytes cannot hold it), and the retries (HTTP
500/502/503/504, a 429 with Retry-After, connection errors, an answer cut short), whose
backoff is only slept when time is left. urllib3's own retries are off: they would not
know the deadline.

Only GET is sent, and only to the configured server: the pool is that server's, so a
redirect to another host, port or scheme fails the request (EIO) instead of being
followed. Credentials in the URL (user:password@) are sent as HTTP Basic auth and are
never shown: `base_url` and `description`, hence logs and errors, go without them.

Other credentials (`--header`, `--bearer-token-file`, `--auth google`) come from a
`RequestAuth` (`idcfs.source.auth`), asked for the headers of every attempt. A 401 or
403 is not retried (it would only be refused again): it fails the request (EIO) with
the reason, logged once per run of refusals, except that an attempt whose credentials
changed while it was sent (a token file rotated) is sent once more with the new ones.

Counted (`HttpCounts`, docs/SEMANTICS.md "Statistics"): `requests_sent` is every GET
sent, retries included, so it is what the server received; `http.requests` splits the
first attempts by kind (frames, metadata, search, probe), `http.retries` the rest.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import json
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlencode

import urllib3
from urllib3.exceptions import HostChangedError
from urllib3.exceptions import HTTPError as Urllib3Error

from idcfs.catalog.base import SeriesEntry
from idcfs.dicom.dicom_json import WSI_SOP_CLASS, first_value, parse_json_list
from idcfs.dicom.times import DATE_TIME_PAIRS, TIMEZONE_OFFSET, series_time_ns
from idcfs.errors import FetchError, QuotaExhaustedError, without_credentials
from idcfs.metrics import Metrics
from idcfs.slide.model import InstanceInfo
from idcfs.source.auth import RequestAuth, no_credentials_hint
from idcfs.source.base import Frame, InstanceMetadata
from idcfs.source.multipart import parse_content_type, split_multipart

log = logging.getLogger(__name__)

FRAMES_ACCEPT = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
JSON_ACCEPT = "application/dicom+json"
QIDO_PAGE = 1000
# the dates and times a series' time is made of, asked of the instance search
SEARCH_DATE_FIELDS = ",".join([*(tag for pair in DATE_TIME_PAIRS for tag in pair[:2]),
                               TIMEZONE_OFFSET])
DEFAULT_TIMEOUT_S = 30.0
RETRY_STATUSES = frozenset({500, 502, 503, 504})
REFUSED_STATUSES = frozenset({401, 403})  # credentials missing or refused: never retried
CHUNK_BYTES = 256 * 1024
FRAME_MEDIA = ("image/", "application/octet-stream")  # a single-part frames answer


@dataclass(frozen=True)
class ClientSettings:
    """Connection limits, the deadline of one request and its retries (seconds).

    `timeout` bounds everything one request waits for (module docstring); the connect
    and read timeouts bound one attempt, and are cut to the time left."""

    max_connections: int = 8
    timeout: float = DEFAULT_TIMEOUT_S
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    retries: int = 4
    backoff: float = 0.3


class Deadline:
    """The end of one request's time budget, on the monotonic clock."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.start = time.monotonic()

    def left(self) -> float:
        return max(0.0, self.start + self.seconds - time.monotonic())

    def allows(self, wait_s: float) -> bool:
        """Whether waiting `wait_s` still leaves time for another attempt."""
        return wait_s < self.left()

    def spent(self) -> str:
        return f"{time.monotonic() - self.start:.1f} s of the {self.seconds:g} s deadline"


@dataclass(frozen=True)
class Answer:
    """A complete HTTP answer: status, headers and the whole body."""

    status: int
    headers: urllib3.HTTPHeaderDict
    body: bytes


class TransientError(Exception):
    """One attempt failed in a way worth retrying (connection lost, answer cut short);
    `label` is its kind in the statistics."""

    def __init__(self, message: str, label: str = "connection") -> None:
        super().__init__(message)
        self.label = label


class HttpCounts:
    """What the client sent and how it ended (`requests_sent`, `http.*`)."""

    def __init__(self, metrics: Metrics) -> None:
        self.sent = metrics.counter("requests_sent")
        self.by_kind = metrics.histogram("http.requests")
        self.retries = metrics.counter("http.retries")
        self.failed = metrics.histogram("http.failed")
        self.not_sent = metrics.histogram("http.not_sent")
        self.in_flight = metrics.counter("http.in_flight")
        self.bytes_received = metrics.counter("http.bytes_received")

    def attempt(self, kind: str, attempt: int) -> None:
        self.sent.add()
        if attempt == 0:
            self.by_kind.add(kind)
        else:
            self.retries.add()


class DicomWebClient:
    """Thread-safe DICOMweb client for one server."""

    def __init__(
        self, base_url: str, settings: ClientSettings | None = None,
        metrics: Metrics | None = None, auth: RequestAuth | None = None,
    ) -> None:
        try:
            url = urllib3.util.parse_url(base_url.strip())
        except ValueError:
            url = urllib3.util.Url()
        if url.scheme not in ("http", "https") or not url.host:
            raise FetchError("not an http(s) URL")
        self.base_url = without_credentials(base_url.strip()).rstrip("/")  # safe to show
        self._base_path = (url.path or "").rstrip("/")
        self._headers = _basic_auth(url.auth)
        self.settings = settings or ClientSettings()
        self._slots = threading.BoundedSemaphore(self.settings.max_connections)
        # One server's pool: a redirect elsewhere is refused (HostChangedError), not
        # followed. No retries of its own (they would not know the deadline).
        self._pool = urllib3.connection_from_url(
            self.base_url,
            maxsize=self.settings.max_connections,
            retries=urllib3.Retry(total=None, connect=0, read=0, status=0, other=0, redirect=3,
                                  raise_on_redirect=False, raise_on_status=False),
        )
        self._quota_lock = threading.Lock()
        self._blocked_until: float = 0.0
        metrics = metrics or Metrics()
        self._counts = HttpCounts(metrics)
        self._auth = auth
        self._refused = metrics.counter("auth.refused")
        self._refusing = False  # the last answer was a 401/403: its log line is written

    @property
    def description(self) -> str:
        return f"DICOMweb {self.base_url}"

    @property
    def requests_sent(self) -> int:
        return self._counts.sent.value

    def statistics(self) -> dict[str, Any]:
        """The server (no credentials), while the quota pause lasts its end, and which
        credentials are sent (their kind, never their value)."""
        blocked_until = self._blocked_until
        paused = None
        if blocked_until > time.time():
            paused = dt.datetime.fromtimestamp(blocked_until, dt.UTC).isoformat(
                timespec="seconds")
        shown = {"server": self.base_url, "quota_exhausted_until": paused}
        return {**shown, "auth": self._auth.description} if self._auth else shown

    # -- public calls -------------------------------------------------------------

    def check_reachable(self) -> None:
        """Raise FetchError unless the server answers a minimal QIDO search."""
        self._get("/studies?" + urlencode({"limit": 1}), JSON_ACCEPT, ok=(200, 204),
                  kind="probe")

    def search_wsi_series(self) -> list[SeriesEntry]:
        """Every series holding WSI instances, with the time the instances' dates give
        (`idcfs.dicom.times`; None when the server returns none).

        Searches instances with Modality SM and filters the SOP class locally
        (some servers reject a SOPClassUID filter).
        """
        found: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
        query = {"Modality": "SM", "includefield": SEARCH_DATE_FIELDS}
        for instance in self._search_pages("/instances", query):
            if first_value(instance, "00080016") == WSI_SOP_CLASS:
                key = (first_value(instance, "0020000D"), first_value(instance, "0020000E"))
                found[key].append(instance)
        return [SeriesEntry(study, series, time_ns=series_time_ns(found[(study, series)]))
                for study, series in sorted(found)]

    def series_metadata(self, study_uid: str, series_uid: str) -> list[InstanceMetadata]:
        """Every instance of a series (one request), located by its WADO-RS path."""
        series_path = f"/studies/{study_uid}/series/{series_uid}"
        body = self._get(f"{series_path}/metadata", JSON_ACCEPT, kind="metadata")
        return [
            InstanceMetadata(f"{series_path}/instances/{first_value(meta, '00080018')}", meta)
            for meta in parse_json_list(body, "series metadata")
        ]

    def frames(self, instance: InstanceInfo, numbers: Sequence[int]) -> list[Frame]:
        """Frames `numbers` (1-based) of one instance, as stored, in the order asked."""
        if not instance.location:
            self._counts.not_sent.add("frames")
            raise FetchError(f"instance {instance.uid}: no WADO-RS location")
        path = f"{instance.location}/frames/{','.join(str(number) for number in numbers)}"
        answer = self._request(path, FRAMES_ACCEPT, kind="frames")
        try:
            frames = _frames_from_response(answer)
        except FetchError as error:
            raise FetchError(f"{path}: {error}") from error
        if len(frames) != len(numbers):
            raise FetchError(
                f"{path}: server sent {len(frames)} frames for {len(numbers)} requested"
            )
        return frames

    def close(self) -> None:
        self._pool.close()

    # -- plumbing -----------------------------------------------------------------

    def _search_pages(self, path: str, query: dict[str, str]) -> Iterator[dict[str, Any]]:
        offset = 0
        previous_first: str | None = None
        while True:
            params = {**query, "limit": QIDO_PAGE, "offset": offset}
            page = parse_json_list(
                self._get(f"{path}?{urlencode(params)}", JSON_ACCEPT, ok=(200, 204),
                          kind="search"), "search"
            )
            first = json.dumps(page[:1], sort_keys=True)
            if not page or first == previous_first:
                return
            previous_first = first
            yield from page
            offset += len(page)

    def _get(self, path: str, accept: str, ok: tuple[int, ...] = (200,), *,
             kind: str) -> bytes:
        return self._request(path, accept, ok, kind).body

    def _request(self, path: str, accept: str, ok: tuple[int, ...] = (200,),
                 kind: str = "frames") -> Answer:
        """One request's complete answer, within its deadline; FetchError otherwise.
        `kind` names it in the statistics."""
        counts = self._counts
        try:
            self._refuse_while_over_quota(path)
        except QuotaExhaustedError:
            counts.not_sent.add(kind)
            raise
        deadline = Deadline(self.settings.timeout)
        if not self._slots.acquire(timeout=deadline.left()):
            counts.not_sent.add(kind)
            raise FetchError(f"{path}: no free connection within {deadline.spent()}")
        counts.in_flight.add()
        try:
            answer = self._attempts(path, accept, deadline, kind)
        finally:
            counts.in_flight.add(-1)
            self._slots.release()
        if answer.status not in ok:
            counts.failed.add(f"HTTP {answer.status}")
        if answer.status == 429:
            self._enter_quota_pause(path)
        if answer.status in REFUSED_STATUSES:
            self._note_refusal(path, answer)
        self._refusing = False
        if answer.status not in ok:
            raise FetchError(f"{path}: HTTP {answer.status} {_short(answer.body)}")
        return answer

    def _attempts(self, path: str, accept: str, deadline: Deadline, kind: str) -> Answer:
        """Send until an answer worth keeping, retrying while retries and time are left."""
        attempt = 0
        renewed = False
        while True:
            credentials = self._credentials(deadline)
            try:
                answer = self._attempt(path, accept, credentials, deadline, kind, attempt)
            except TransientError as error:
                reason, label, pause = str(error), error.label, self._backoff(attempt)
            else:
                if (answer.status in REFUSED_STATUSES and not renewed
                        and self._credentials(deadline) != credentials):
                    renewed = True  # rotated while it was sent: once more with the new ones
                    continue
                pause = self._pause_before_retry(answer, attempt)
                if pause is None:
                    return answer
                reason = f"HTTP {answer.status} {_short(answer.body)}".rstrip()
                label = f"HTTP {answer.status}"
            attempt += 1
            if attempt > self.settings.retries or not deadline.allows(pause):
                self._counts.failed.add(label)
                raise FetchError(f"{path}: {reason}; gave up after {attempt} attempt(s), "
                                 f"{deadline.spent()}")
            time.sleep(pause)

    def _credentials(self, deadline: Deadline) -> dict[str, str]:
        """The headers carrying credentials for one attempt (FetchError if none in time)."""
        return self._auth.headers(deadline.left()) if self._auth else {}

    def _attempt(self, path: str, accept: str, credentials: dict[str, str],
                 deadline: Deadline, kind: str, attempt: int) -> Answer:
        """One GET whose connect, answer and body each wait at most the time left."""
        left = deadline.left()
        if left <= 0:
            raise TransientError("no time left", "deadline")
        self._counts.attempt(kind, attempt)
        timeout = urllib3.Timeout(connect=min(self.settings.connect_timeout, left),
                                  read=min(self.settings.read_timeout, left))
        try:
            response = self._pool.request(
                "GET", self._base_path + path,
                headers={**self._headers, **credentials, "Accept": accept},
                timeout=timeout, preload_content=False,
            )
        except HostChangedError as error:
            self._counts.failed.add("redirect")
            raise FetchError(f"{path}: redirected to another server "
                             f"({without_credentials(str(error.url))}), not followed") from None
        except Urllib3Error as error:
            raise TransientError(_describe(error)) from error
        try:
            body = self._read_body(response, deadline)
        except TransientError:
            response.close()  # the connection is in an unknown state: never reuse it
            raise
        finally:
            response.release_conn()
        self._counts.bytes_received.add(len(body))
        return Answer(response.status, response.headers, body)

    def _read_body(self, response: urllib3.BaseHTTPResponse, deadline: Deadline) -> bytes:
        """The whole body, a chunk at a time: each read waits at most the time left, so
        a server sending a byte a second cannot hold a request past its deadline."""
        chunks: list[bytes] = []
        received = 0
        while True:
            left = deadline.left()
            if left <= 0:
                raise TransientError(f"answer not complete in time ({received} bytes "
                                     "received)", "deadline")
            _limit_socket_wait(response, min(self.settings.read_timeout, left))
            try:
                chunk = response.read1(CHUNK_BYTES)
            except Urllib3Error as error:
                raise TransientError(f"answer cut short after {received} bytes: "
                                     f"{_describe(error)}") from error
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
            received += len(chunk)

    def _backoff(self, attempt: int) -> float:
        return self.settings.backoff * (2**attempt)

    def _pause_before_retry(self, answer: Answer, attempt: int) -> float | None:
        """How long to wait before sending again, or None when the answer stands: a 5xx
        backs off; a 429 with Retry-After is rate limiting (wait as told); a 429 without
        it is the quota (`_enter_quota_pause`)."""
        if answer.status in RETRY_STATUSES:
            return self._backoff(attempt)
        if answer.status == 429 and "Retry-After" in answer.headers:
            told = retry_after_seconds(answer.headers["Retry-After"])
            return self._backoff(attempt) if told is None else told
        return None

    def _note_refusal(self, path: str, answer: Answer) -> None:
        """Count a 401/403, log why once per run of them, and fail the request."""
        self._refused.add()
        hint = self._auth.refused_hint() if self._auth else no_credentials_hint()
        if not self._refusing:
            self._refusing = True
            log.error("HTTP %d from %s: %s; such requests fail with EIO and are not retried",
                      answer.status, self.base_url, hint)
        raise FetchError(f"{path}: HTTP {answer.status} {_short(answer.body)}".rstrip()
                         + f": {hint}, not retried")

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


def retry_after_seconds(value: str, now: float | None = None) -> float | None:
    """Seconds a Retry-After header asks to wait (delta-seconds or an HTTP date), or
    None when it cannot be read."""
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        moment = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - (time.time() if now is None else now))


def _basic_auth(auth: str | None) -> dict[str, str]:
    """The Authorization header of a URL's user:password (percent-decoded), if any."""
    if not auth:
        return {}
    user, _, password = auth.partition(":")
    return urllib3.make_headers(basic_auth=f"{unquote(user)}:{unquote(password)}")


def _limit_socket_wait(response: urllib3.BaseHTTPResponse, seconds: float) -> None:
    """Bound the next socket read of `response` (its connection's timeout)."""
    sock = getattr(response.connection, "sock", None)
    if sock is not None:
        sock.settimeout(max(seconds, 0.001))


def _describe(error: Urllib3Error) -> str:
    reason = getattr(error, "reason", None) or error  # MaxRetryError wraps the cause
    return f"{type(reason).__name__}: {reason}"


def _frames_from_response(answer: Answer) -> list[Frame]:
    """The frames of a WADO-RS answer: multipart parts, or one frame sent as its own
    media type; anything else (an HTML error page sent with 200) is refused."""
    media_type, params = parse_content_type(answer.headers.get("Content-Type", ""))
    if not media_type.startswith("multipart/"):
        if not media_type.startswith(FRAME_MEDIA):
            raise FetchError(f"frames answer of type {media_type}, not frames "
                             f"{_short(answer.body)}".rstrip())
        return [Frame(answer.body, params.get("transfer-syntax"))]
    boundary = params.get("boundary")
    if not boundary:
        raise FetchError("multipart frames answer without a boundary")
    return [
        Frame(part.content, parse_content_type(part.content_type)[1].get("transfer-syntax"))
        for part in split_multipart(answer.body, boundary)
    ]


def _short(body: bytes) -> str:
    text = " ".join(body[:300].decode("utf-8", "replace").split())
    return f"({text})" if text else ""
