"""Object stores: where DICOM files are read by byte ranges (issue 13).

IDC's public buckets (AWS S3 and GCS, both `idc-open-data`, anonymous), any other
S3-compatible endpoint (rclone, MinIO) and a local folder all hold the same thing: named
objects whose bytes can be read from any offset. A frame source that reads frames out of
DICOM files needs only that, so it holds an `ObjectStore` and nothing more specific.

Promises every store keeps (the same as `idcfs.source.base`):
- `read` returns exactly the bytes asked for, fewer only at the end of the object, or
  raises `FetchError`; it finishes by its `deadline`, retries included.
- Server trouble of any kind (403, 404, 5xx, a cut connection, a malformed listing) is a
  `FetchError` (EIO), never a "not found"; a missing object is its subclass
  `ObjectMissing`, for callers that named the key from an index (they list instead).
- Every call is thread-safe and bounded in time.

`HttpBucketStore` speaks the S3 REST API directly with urllib3 (the project's HTTP
client): measured against obstore and botocore on rclone it was as fast or faster and
costs no new dependency (docs/DEPENDENCIES.md, "Object store client (issue 13)").
"""

from __future__ import annotations

import contextlib
import email.utils
import os
import queue
import random
import threading
import time
import xml.etree.ElementTree as ElementTree
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, Protocol, TypeVar
from urllib.parse import quote, urlencode

import urllib3
from urllib3.exceptions import HTTPError as Urllib3Error

from idcfs.errors import FetchError, without_credentials
from idcfs.source.threads import started_pool

T = TypeVar("T")
Response = urllib3.BaseHTTPResponse

RETRIED_STATUSES = frozenset({429, 500, 502, 503, 504})
ERROR_EXCERPT_BYTES = 300
BODY_CHUNK = 8 * 1024 * 1024  # deadline checked between chunks; see `_body`
TIMEOUT_SLACK_S = 0.05  # a body's socket wait may end this much past the deadline


@dataclass(frozen=True)
class ObjectInfo:
    """One object of a listing: its key (relative to the bucket or folder), its size and
    its version, a token only the store that listed it reads (a bucket's LastModified
    and ETag, a folder's file mtime and inode), which changes when the object is
    rewritten, even at the same size. Everything kept about an object (its header, its
    frame index) is keyed by it, and reads given it fail with `ObjectChanged` rather
    than return bytes of another version. None: not known (IDC's `sm_instance_index`
    names objects without one; IDC never rewrites an object under a
    crdc_instance_uuid, so none is needed)."""

    key: str
    size: int
    version: str | None = None


class ObjectMissing(FetchError):
    """The store has no object of that key (HTTP 404, no such file): still EIO, but a
    caller that named the key from an index can tell the index is out of step."""


class ObjectChanged(FetchError):
    """The object is not the version that was listed (HTTP 412 to If-Match, another
    ETag, another mtime or inode): still EIO, never ENOENT; the caller drops what it
    kept about the object, since its offsets belong to the old version."""


class ObjectStore(Protocol):
    """Named objects read by byte ranges; thread-safe, blocking, bounded in time."""

    @property
    def description(self) -> str:
        """What the log says this store is (no credentials)."""
        ...

    def list(self, prefix: str, deadline: float | None = None) -> list[ObjectInfo]:
        """Every object whose key starts with `prefix` (all pages), sorted by key;
        finished by `deadline` (monotonic) when given."""
        ...

    def read(self, key: str, start: int, length: int, deadline: float,
             version: str | None = None) -> bytes:
        """Bytes [start, start + length) of `key`, finished by `deadline` (monotonic);
        with `version` (from this store's listing), `ObjectChanged` when the object is
        no longer that version."""
        ...

    def probe(self, prefix: str, deadline: float) -> None:
        """Check the store answers (one request at most); FetchError when it does not."""
        ...

    def size(self, key: str) -> int:
        """The size of object `key` in bytes."""
        ...

    def preconnect(self, count: int) -> None:
        """Get up to `count` connections ready, without waiting, for requests about to
        be sent together; best effort, never an error."""
        ...

    def close(self) -> None:
        """Release connections and files; the store is not used afterwards."""
        ...

    def statistics(self) -> dict[str, Any]:
        """Requests sent by kind, bytes received, retries."""
        ...


class _Counters:
    """Thread-safe counters behind `statistics()`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: Counter[str] = Counter()
        self._bytes_received = 0
        self._retries = 0

    def request(self, kind: str) -> None:
        with self._lock:
            self._requests[kind] += 1

    def received(self, count: int) -> None:
        with self._lock:
            self._bytes_received += count

    def retry(self) -> None:
        with self._lock:
            self._retries += 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "requests": dict(self._requests),
                "bytes_received": self._bytes_received,
                "retries": self._retries,
            }


def _file_version(found: os.stat_result) -> str:
    """A local file's version: its mtime (ns) and inode, which a rewrite in place or a
    replacement by rename changes (a tool that also restores the old mtime on the same
    inode at the same size defeats it; none that writes DICOM files does)."""
    return f"{found.st_mtime_ns}:{found.st_ino}"


def _check_range(start: int, length: int) -> None:
    if start < 0 or length < 0:
        raise ValueError(f"bad byte range: start {start}, length {length}")


def _range_text(start: int, length: int) -> str:
    return f"bytes {start}-{start + length - 1}"


# --------------------------------------------------------------------------- local folder


class LocalFolderStore:
    """A folder as an object store: keys are paths relative to `root`, '/'-separated.

    For DICOM files already on disk (a download by s5cmd, a mounted bucket) and for tests;
    reads use `os.pread`, so one file is shared by threads without a lock.
    """

    def preconnect(self, count: int) -> None:
        """Nothing to connect: reads are `pread`s."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._counters = _Counters()

    @property
    def description(self) -> str:
        return f"local folder {self.root}"

    def list(self, prefix: str, deadline: float | None = None) -> list[ObjectInfo]:
        self._counters.request("list")
        folder = self.root / prefix.rpartition("/")[0]
        try:
            found = [info for info in self._walk(folder) if info.key.startswith(prefix)]
        except OSError as error:
            raise FetchError(f"{self.description}: listing {prefix!r}: {error}") from error
        return sorted(found, key=lambda info: info.key)

    def probe(self, prefix: str, deadline: float) -> None:
        if not self.root.is_dir():
            raise FetchError(f"{self.description}: not a folder")

    def _walk(self, folder: Path) -> Iterator[ObjectInfo]:
        if not folder.is_dir():
            return
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    yield from self._walk(Path(entry.path))
                elif entry.is_file():
                    key = Path(entry.path).relative_to(self.root).as_posix()
                    found = entry.stat()
                    yield ObjectInfo(key, found.st_size, _file_version(found))

    def read(self, key: str, start: int, length: int, deadline: float,
             version: str | None = None) -> bytes:
        _check_range(start, length)
        self._counters.request("read")
        if time.monotonic() >= deadline:
            raise FetchError(f"{self.description}: {key} {_range_text(start, length)}: "
                             "deadline already passed")
        try:
            data, now = self._pread(self._path(key), start, length)
        except FileNotFoundError as error:
            raise ObjectMissing(f"{self.description}: {key}: {error}") from error
        except OSError as error:
            raise FetchError(f"{self.description}: {key}: {error}") from error
        if version is not None and now != version:
            raise ObjectChanged(f"{self.description}: {key}: changed since it was listed "
                                f"(mtime_ns:inode {version} then, {now} now)")
        self._counters.received(len(data))
        return data

    @staticmethod
    def _pread(path: Path, start: int, length: int) -> tuple[bytes, str]:
        """The bytes, and the file's version after reading them: a file changed before
        or while they were read shows another mtime (a file replaced by a rename keeps
        its old inode open here, whose bytes are still the listed ones)."""
        descriptor = os.open(path, os.O_RDONLY)
        try:
            parts: list[bytes] = []
            offset, wanted = start, length
            while wanted > 0:
                part = os.pread(descriptor, wanted, offset)
                if not part:
                    break
                parts.append(part)
                offset += len(part)
                wanted -= len(part)
            return b"".join(parts), _file_version(os.fstat(descriptor))
        finally:
            os.close(descriptor)

    def size(self, key: str) -> int:
        self._counters.request("size")
        try:
            return self._path(key).stat().st_size
        except OSError as error:
            raise FetchError(f"{self.description}: {key}: {error}") from error

    def _path(self, key: str) -> Path:
        parts = key.split("/")
        if not key or key.startswith("/") or ".." in parts:
            raise FetchError(f"{self.description}: key {key!r} is not inside the folder")
        return self.root.joinpath(*parts)

    def close(self) -> None:
        """Nothing is held open between calls."""

    def statistics(self) -> dict[str, Any]:
        return self._counters.snapshot()


# --------------------------------------------------------------------------- S3 over HTTP


@dataclass(frozen=True)
class BucketSettings:
    """Connection limits, timeouts (seconds) and retry policy of an `HttpBucketStore`."""

    max_connections: int = 16
    connect_timeout: float = 10.0
    read_timeout: float = 30.0
    call_timeout: float = 120.0  # the deadline of `list` and `size`, which take none
    max_attempts: int = 5
    backoff: float = 0.2  # first wait; doubles per retry, +-50 % jitter
    max_backoff: float = 10.0
    page_size: int = 1000  # max-keys of a ListObjectsV2 page
    max_whole_object: int = 64 * 1024 * 1024  # a server that ignores Range: up to this


class _Retryable(Exception):
    """One attempt failed in a way another may not: 429/5xx, cut connection, short body."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


@dataclass(frozen=True)
class _Call:
    """One logical GET: what it is for, where it goes, and by when it must be done."""

    kind: str  # "read", "list" or "size": the statistics key
    what: str  # for messages: "GET bucket/key bytes 0-99"
    path: str
    headers: dict[str, str]
    deadline: float


@dataclass(frozen=True)
class _ContentRange:
    first: int
    last: int
    total: int | None


class HttpBucketStore:
    """An S3-compatible bucket read anonymously over HTTP(S), path-style URLs.

    `{endpoint}/{bucket}/{key}` works for AWS (`https://s3.amazonaws.com`), GCS's XML API
    (`https://storage.googleapis.com`), rclone and MinIO. Only GET is ever sent: ranged
    GETs for bytes (and for sizes, `bytes=0-0`), ListObjectsV2 for listings. Keep-alive
    connections are pooled (at most `max_connections`, callers beyond that wait their
    turn within their deadline). Credentials in the endpoint URL (user:pass@) are sent as
    HTTP Basic auth and never appear in `description` or in errors.
    """

    def __init__(self, endpoint: str, bucket: str, settings: BucketSettings | None = None) -> None:
        self.settings = settings or BucketSettings()
        url = urllib3.util.parse_url(endpoint)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"not an http(s) endpoint: {without_credentials(endpoint)}")
        self.endpoint = without_credentials(endpoint).rstrip("/")
        self.bucket = bucket
        self._bucket_path = f"{(url.path or '').rstrip('/')}/{quote(bucket, safe='')}"
        self._headers = {"User-Agent": "idcfs", "Accept-Encoding": "identity"}
        if url.auth:
            self._headers.update(urllib3.make_headers(basic_auth=url.auth))
        self._pool = urllib3.connection_from_url(
            f"{url.scheme}://{url.netloc.rpartition('@')[2]}",
            maxsize=self.settings.max_connections,
            block=True,
            retries=False,
        )
        self._counters = _Counters()
        self._connect_pool: ThreadPoolExecutor | None = None
        self._connector_lock = threading.Lock()

    @property
    def description(self) -> str:
        return f"bucket {self.bucket} at {self.endpoint}"

    def close(self) -> None:
        self._pool.close()
        if self._connect_pool is not None:
            self._connect_pool.shutdown(wait=False, cancel_futures=True)

    def statistics(self) -> dict[str, Any]:
        return self._counters.snapshot()

    def preconnect(self, count: int) -> None:
        """Open connections now, each on a thread of its own, so that up to `count`
        requests sent together soon (the header reads after a series' listing) find one
        open: their TCP (and TLS) set-up, a round trip each, overlaps the request before
        them. urllib3 has no public call for this: the pool's queue of idle connections
        (None for a slot not connected yet) is used as urllib3 itself uses it, and any
        surprise there leaves the slots to connect when used."""
        slots = getattr(self._pool, "pool", None)
        if not isinstance(slots, queue.Queue):
            return
        idle, empty = [], []
        try:
            while len(idle) + len(empty) < count:
                found = slots.get(block=False)
                (empty if found is None else idle).append(found)
        except queue.Empty:
            pass
        for connection in idle:
            slots.put(connection, block=False)
        for _ in empty:  # on threads started at mount: the caller does not wait
            with contextlib.suppress(RuntimeError):  # the store is closing
                self._connector().submit(self._connect_slot, slots)

    def _connector(self) -> ThreadPoolExecutor:
        """The threads that open connections, all started on first use (the mount's
        `probe`), so that a `preconnect` only hands them work."""
        with self._connector_lock:
            if self._connect_pool is None:
                self._connect_pool = started_pool(self.settings.max_connections,
                                                  "idcfs-preconnect")
            return self._connect_pool

    def _connect_slot(self, slots: queue.Queue[Any]) -> None:
        connection = None
        try:
            connection = self._pool._new_conn()
            connection.timeout = self.settings.connect_timeout  # never a slot held for long
            connection.connect()
        except Exception:  # best effort: the request given this slot connects itself
            if connection is not None:
                connection.close()
            connection = None
        _put_under(slots, connection)

    # -- reading ------------------------------------------------------------------

    def read(self, key: str, start: int, length: int, deadline: float,
             version: str | None = None) -> bytes:
        """With `version`, the GET carries `If-Match: <its ETag>` (S3 and GCS answer 412
        when the object is another now), and the answer's own ETag is checked too, for
        servers that ignore If-Match (rclone serve s3 does)."""
        _check_range(start, length)
        if length == 0:
            return b""
        headers = {"Range": f"bytes={start}-{start + length - 1}"}
        etag = _etag_of(version)
        if etag is not None:
            headers["If-Match"] = etag
        call = self._call("read", key, headers, deadline, _range_text(start, length))
        return self._send(call, lambda response: self._range_body(call, response, start,
                                                                  length, etag))

    def size(self, key: str, deadline: float | None = None) -> int:
        call = self._call("size", key, {"Range": "bytes=0-0"}, self._deadline(deadline), "size")
        return self._send(call, lambda response: self._object_size(call, response))

    def _call(self, kind: str, key: str, headers: dict[str, str], deadline: float,
              detail: str) -> _Call:
        path = f"{self._bucket_path}/{quote(key, safe='/')}"
        return _Call(kind, f"GET {self.bucket}/{key} {detail}", path, headers, deadline)

    def _range_body(self, call: _Call, response: Response, start: int, length: int,
                    etag: str | None = None) -> bytes:
        if response.status == 416:
            return b""  # the range starts at or after the end of the object
        self._check_status(call, response, ok=(200, 206))
        if etag is not None:
            self._check_etag(call, response, etag)
        content_range = response.headers.get("Content-Range")
        if content_range is not None:
            answer = self._content_range(call, content_range)
            return self._partial_body(call, response, answer, start, length)
        if response.status == 206:
            self._fail(call, "HTTP 206 without a Content-Range header")
        return self._whole_object_slice(call, response, start, length)

    def _partial_body(self, call: _Call, response: Response, answer: _ContentRange, start: int,
                      length: int) -> bytes:
        if answer.first != start or answer.last >= start + length:
            self._fail(call, f"server sent bytes {answer.first}-{answer.last}")
        body = self._body(call, response)
        if len(body) != answer.last - answer.first + 1:
            raise _Retryable(f"body of {len(body)} bytes for {answer.first}-{answer.last}")
        at_end = answer.total is not None and answer.last + 1 >= answer.total
        if len(body) < length and not at_end:
            raise _Retryable(f"short body: {len(body)} of {length} bytes, not at the end")
        return body

    def _whole_object_slice(self, call: _Call, response: Response, start: int,
                            length: int) -> bytes:
        """A 200 without Content-Range: the server ignored Range and sent the whole object."""
        declared = response.headers.get("Content-Length")
        if declared is None or not declared.isdigit():
            self._fail(call, "HTTP 200 to a ranged GET, without Content-Range or Content-Length")
        if int(declared) > self.settings.max_whole_object:
            self._fail(call, f"server ignores Range and would send all {declared} bytes")
        return self._body(call, response)[start : start + length]

    def _object_size(self, call: _Call, response: Response) -> int:
        content_range = response.headers.get("Content-Range", "")
        if response.status == 416:
            total = content_range.rpartition("/")[2]
            return int(total) if total.isdigit() else 0  # S3: an empty object
        self._check_status(call, response, ok=(200, 206))
        if content_range:
            total = self._content_range(call, content_range).total
            if total is None:
                self._fail(call, f"Content-Range without the object size: {content_range!r}")
            return total
        declared = response.headers.get("Content-Length", "")
        if not declared.isdigit():
            self._fail(call, "no Content-Range or Content-Length in the answer")
        return int(declared)  # the body is not read: the connection is dropped instead

    # -- listing ------------------------------------------------------------------

    def list(self, prefix: str, deadline: float | None = None) -> list[ObjectInfo]:
        deadline = self._deadline(deadline)
        found: list[ObjectInfo] = []
        token: str | None = None
        seen_tokens: set[str] = set()
        while True:
            call = self._list_call(prefix, token, deadline)
            page, token = self._send(call, lambda response, call=call: self._page(call, response))
            found.extend(page)
            if token is None:
                return sorted(found, key=lambda info: info.key)
            if token in seen_tokens:
                self._fail(call, "the listing repeats a continuation token")
            seen_tokens.add(token)

    def probe(self, prefix: str, deadline: float) -> None:
        """One listing page of at most one key: the endpoint and bucket answer. Run at
        mount, it also starts the threads `preconnect` hands its connections to."""
        self._connector()
        call = self._list_call(prefix, None, deadline, page_size=1)
        self._send(call, lambda response: self._page(call, response))

    def _list_call(self, prefix: str, token: str | None, deadline: float,
                   page_size: int | None = None) -> _Call:
        keys = page_size or self.settings.page_size
        query = {"list-type": "2", "prefix": prefix, "max-keys": str(keys)}
        if token is not None:
            query["continuation-token"] = token
        path = f"{self._bucket_path}?{urlencode(query, quote_via=quote)}"
        return _Call("list", f"GET {self.bucket} listing {prefix!r}", path, {}, deadline)

    def _page(self, call: _Call, response: Response) -> tuple[list[ObjectInfo], str | None]:
        self._check_status(call, response, ok=(200,))
        try:
            return parse_listing(self._body(call, response))
        except (ElementTree.ParseError, ValueError) as error:
            self._fail(call, f"malformed listing: {error}")

    # -- sending, with retries within the deadline ---------------------------------

    def _deadline(self, deadline: float | None) -> float:
        return time.monotonic() + self.settings.call_timeout if deadline is None else deadline

    def _send(self, call: _Call, handle: Callable[[Response], T]) -> T:
        began = time.monotonic()
        attempt = 0
        while True:
            try:
                return self._attempt(call, handle)
            except _Retryable as trouble:
                attempt += 1
                wait = self._backoff(attempt, trouble.retry_after)
                if attempt >= self.settings.max_attempts:
                    self._fail(call, f"{attempt} attempts failed; last: {trouble}")
                if time.monotonic() + wait >= call.deadline:
                    waited = time.monotonic() - began
                    self._fail(call, f"cannot finish by the deadline: {waited:.2f} s waited, "
                               f"{attempt} attempts, next wait {wait:.2f} s; last: {trouble}")
                self._counters.retry()
                time.sleep(wait)

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        wait = min(self.settings.backoff * 2 ** (attempt - 1), self.settings.max_backoff)
        wait *= random.uniform(0.5, 1.5)
        return max(wait, retry_after or 0.0)

    def _attempt(self, call: _Call, handle: Callable[[Response], T]) -> T:
        left = call.deadline - time.monotonic()
        if left <= 0:
            raise _Retryable("deadline reached")
        self._counters.request(call.kind)
        try:
            response = self._pool.urlopen(
                "GET", call.path, headers={**self._headers, **call.headers},
                timeout=urllib3.Timeout(connect=min(self.settings.connect_timeout, left),
                                        read=min(self.settings.read_timeout, left)),
                pool_timeout=left, preload_content=False, retries=False, redirect=False,
                decode_content=False,
            )
        except Urllib3Error as error:
            raise _Retryable(f"{type(error).__name__}: {error}") from error
        try:
            return handle(response)
        except Urllib3Error as error:
            raise _Retryable(f"{type(error).__name__}: {error}") from error
        finally:
            if not response.isclosed():
                response.close()  # a body left unread: the connection is not reused
            response.release_conn()

    def _body(self, call: _Call, response: Response) -> bytes:
        """The whole body, each socket wait bounded by the time left.

        Read in large chunks: a frame-sized body in one call costs a third of the CPU of
        the same body read 1 MiB at a time (measured: 1.1 vs 3.7 ms per 2 MB).
        """
        chunks: list[bytes] = []
        while True:
            left = call.deadline - time.monotonic()
            if left <= 0:
                raise _Retryable("deadline reached while reading the body")
            _bound_socket_waits(response, min(self.settings.read_timeout, left))
            chunk = response.read(BODY_CHUNK, decode_content=False)
            if not chunk:
                return b"".join(chunks)
            self._counters.received(len(chunk))
            chunks.append(chunk)
            if response.length_remaining == 0:  # all its Content-Length: nothing to wait for
                return b"".join(chunks)

    def _check_status(self, call: _Call, response: Response, ok: tuple[int, ...]) -> None:
        if response.status in ok:
            return
        excerpt = _excerpt(response)
        if response.status in RETRIED_STATUSES:
            retry_after = _retry_after_seconds(response.headers.get("Retry-After"))
            raise _Retryable(f"HTTP {response.status} {excerpt}", retry_after)
        if response.status == 404:
            raise ObjectMissing(f"{self.description}: {call.what}: HTTP 404 {excerpt}")
        if response.status == 412:
            raise ObjectChanged(f"{self.description}: {call.what}: the object changed since "
                                f"it was listed (HTTP 412 Precondition Failed to If-Match)")
        self._fail(call, f"HTTP {response.status} {excerpt}")

    def _check_etag(self, call: _Call, response: Response, etag: str) -> None:
        answered = response.headers.get("ETag")
        if answered is not None and _bare_etag(answered) != _bare_etag(etag):
            raise ObjectChanged(f"{self.description}: {call.what}: the object changed since "
                                f"it was listed (ETag {etag} then, {answered} now)")

    def _content_range(self, call: _Call, value: str) -> _ContentRange:
        try:
            return _parse_content_range(value)
        except ValueError:
            self._fail(call, f"malformed Content-Range {value!r}")

    def _fail(self, call: _Call, reason: str) -> NoReturn:
        raise FetchError(f"{self.description}: {call.what}: {reason}")


def _bound_socket_waits(response: Response, timeout: float) -> None:
    """Bound each wait of the response's socket by `timeout`. `settimeout` is a system
    call that lets go of the GIL (with other threads waiting for it, a thread switch), so
    it is skipped when the socket's timeout, set by urllib3 for this attempt from the
    same deadline, is longer by less than `TIMEOUT_SLACK_S`: the time since the attempt
    began (a round trip, usually)."""
    connection = response.connection
    sock = connection.sock if connection is not None else None
    if sock is None:
        return
    current = sock.gettimeout()
    if current is None or current > timeout + TIMEOUT_SLACK_S:
        sock.settimeout(timeout)


def _excerpt(response: Response) -> str:
    """The start of an error answer, for messages."""
    try:
        head = response.read(ERROR_EXCERPT_BYTES, decode_content=False)
    except Urllib3Error:
        head = b""
    return repr(" ".join(head.decode("utf-8", "replace").split()))


def _parse_content_range(value: str) -> _ContentRange:
    """'bytes 0-99/1234' (the total may be '*'); ValueError when it is not of that form."""
    unit, _, rest = value.strip().partition(" ")
    span, _, total = rest.partition("/")
    first, _, last = span.partition("-")
    if unit != "bytes" or not first.isdigit() or not last.isdigit() or int(last) < int(first):
        raise ValueError(value)
    if not (total.isdigit() or total == "*"):
        raise ValueError(value)
    return _ContentRange(int(first), int(last), int(total) if total.isdigit() else None)


def _retry_after_seconds(value: str | None) -> float | None:
    """Retry-After as seconds to wait: a number of seconds or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - time.time())


def parse_listing(body: bytes) -> tuple[list[ObjectInfo], str | None]:
    """A ListObjectsV2 page: (objects, continuation token or None when it is the last)."""
    root = ElementTree.fromstring(body)
    if _local_name(root.tag) != "ListBucketResult":
        raise ValueError(f"root element is {_local_name(root.tag)}, not ListBucketResult")
    objects = [_object_info(element) for element in _children(root, "Contents")]
    truncated = _child_text(root, "IsTruncated", "false").lower() == "true"
    if not truncated:
        return objects, None
    token = _child_text(root, "NextContinuationToken", "")
    if not token:
        raise ValueError("IsTruncated without NextContinuationToken")
    return objects, token


def _object_info(element: ElementTree.Element) -> ObjectInfo:
    key = _child_text(element, "Key", "")
    size = _child_text(element, "Size", "")
    if not key or not size.isdigit():
        raise ValueError(f"an entry without a key or size (key {key!r}, size {size!r})")
    etag = _child_text(element, "ETag", "")
    modified = _child_text(element, "LastModified", "")
    return ObjectInfo(key, int(size), _bucket_version(modified, etag))


def _bucket_version(modified: str, etag: str) -> str | None:
    """A listed object's version: 'LastModified|"ETag"' (the ETag quoted as HTTP wants
    it in If-Match; rclone lists it bare), None when the listing gives neither."""
    if etag and not etag.startswith(('"', 'W/"')):
        etag = f'"{etag}"'
    return f"{modified}|{etag}" if modified or etag else None


def _etag_of(version: str | None) -> str | None:
    """The ETag in a version `_bucket_version` made, None when it has none."""
    if version is None:
        return None
    return version.partition("|")[2] or None


def _bare_etag(etag: str) -> str:
    """An ETag without its quotes or weak mark, to compare a listing's with an answer's."""
    return etag.strip().removeprefix("W/").strip('"')


def _local_name(tag: str) -> str:
    return tag.rpartition("}")[2]


def _children(element: ElementTree.Element, name: str) -> list[ElementTree.Element]:
    return [child for child in element if _local_name(child.tag) == name]


def _child_text(element: ElementTree.Element, name: str, default: str) -> str:
    found = _children(element, name)
    return (found[0].text or "").strip() if found else default


def _put_under(slots: queue.Queue[Any], connection: Any) -> None:
    """Put a slot back under the idle connections but over the empty slots (urllib3's
    queue is last in, first out): a request takes a connection that has served one
    before a new one, which may still be setting up its way to the server (through a
    proxy), and a new one before an empty slot it would have to connect itself."""
    with slots.mutex:
        items = slots.queue
        position = len(items)
        if isinstance(slots, queue.LifoQueue):
            while position and items[position - 1] is not None:
                position -= 1
        items.insert(position, connection)
        slots.unfinished_tasks += 1
        slots.not_empty.notify()
