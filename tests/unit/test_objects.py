"""Object stores: a local folder, and an S3 bucket over HTTP against an in-process fake
S3 server that can answer as S3 (206), as rclone (200 with Content-Range), as a server
ignoring Range (200, whole object), or with scripted faults (5xx, Retry-After, short
bodies, slow answers)."""

from __future__ import annotations

import hashlib
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from idcfs.errors import FetchError, NotFoundError
from idcfs.source.objects import (
    BucketSettings,
    HttpBucketStore,
    LocalFolderStore,
    ObjectChanged,
    ObjectInfo,
    ObjectMissing,
    ObjectStore,
)
from idcfs.source.threads import started_pool

BUCKET = "idc-open-data"
FAST = BucketSettings(backoff=0.001, max_backoff=0.01, max_attempts=4, page_size=3)
Fault = Callable[[BaseHTTPRequestHandler], None]


# --------------------------------------------------------------------------- fake S3


class FakeS3(ThreadingHTTPServer):
    """A keep-alive HTTP/1.1 server holding `objects` of one bucket.

    `mode` is "s3", "rclone" or "ignore-range"; `faults` answer the next requests first.
    Records (method, path, headers) of every request and the most connections open at once.
    With `versions`, listings give each object's ETag (the MD5 of its bytes, quoted as S3
    does, bare as rclone does when `mode` is "rclone") and LastModified; answers always
    carry the ETag, and If-Match is answered 412 when it names another (ignored, as
    rclone ignores it, when `honour_if_match` is False).
    """

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _FakeHandler)
        self.objects: dict[str, bytes] = {}
        self.mode = "s3"
        self.faults: list[Fault] = []
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.listing_override: bytes | None = None
        self.versions = False
        self.honour_if_match = True
        self.lock = threading.Lock()
        self.open_connections = 0
        self.most_connections = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def handle_error(self, request: object, client_address: object) -> None:
        """A client that gave up (a deadline) leaves a broken pipe: not worth a traceback."""

    def next_fault(self) -> Fault | None:
        with self.lock:
            return self.faults.pop(0) if self.faults else None

    def connection_opened(self, change: int) -> None:
        with self.lock:
            self.open_connections += change
            self.most_connections = max(self.most_connections, self.open_connections)


class _FakeHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FakeS3

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass

    def setup(self) -> None:
        super().setup()
        self.server.connection_opened(+1)

    def finish(self) -> None:
        self.server.connection_opened(-1)
        super().finish()

    def do_GET(self) -> None:  # noqa: N802
        self.server.requests.append((self.command, self.path, dict(self.headers)))
        fault = self.server.next_fault()
        if fault is not None:
            fault(self)
            return
        url = urlsplit(self.path)
        bucket, _, key = url.path.lstrip("/").partition("/")
        if bucket != BUCKET:
            answer(self, 404, b"<Error><Code>NoSuchBucket</Code></Error>")
        elif not key:
            self._list(parse_qs(url.query))
        elif unquote(key) not in self.server.objects:
            answer(self, 404, b"<Error><Code>NoSuchKey</Code></Error>")
        else:
            self._object(self.server.objects[unquote(key)])

    def _list(self, query: dict[str, list[str]]) -> None:
        if self.server.listing_override is not None:
            answer(self, 200, self.server.listing_override)
            return
        prefix = query.get("prefix", [""])[0]
        keys = sorted(key for key in self.server.objects if key.startswith(prefix))
        first = int(query.get("continuation-token", ["0"])[0])
        page = keys[first : first + int(query["max-keys"][0])]
        versions = "quoted" if self.server.mode != "rclone" else "bare"
        answer(self, 200, listing_xml(self.server.objects, page, first + len(page), len(keys),
                                      versions if self.server.versions else None))

    def _object(self, data: bytes) -> None:
        first, last = (int(part) for part in self.headers["Range"][6:].split("-"))
        wanted = self.headers.get("If-Match")
        if wanted is not None and self.server.honour_if_match and wanted != etag(data):
            answer(self, 412, b"<Error><Code>PreconditionFailed</Code></Error>")
        elif self.server.mode == "ignore-range":
            answer(self, 200, data)
        elif first >= len(data):
            answer(self, 416, b"<Error><Code>InvalidRange</Code></Error>",
                   {"Content-Range": f"bytes */{len(data)}"})
        else:
            last = min(last, len(data) - 1)
            status = 206 if self.server.mode == "s3" else 200
            answer(self, status, data[first : last + 1],
                   {"Content-Range": f"bytes {first}-{last}/{len(data)}", "ETag": etag(data)})


def etag(data: bytes) -> str:
    return f'"{hashlib.md5(data).hexdigest()}"'


def answer(handler: BaseHTTPRequestHandler, status: int, body: bytes,
           headers: dict[str, str] | None = None, declared: int | None = None) -> None:
    """Send one answer; `declared` is a Content-Length other than the body's (a cut body)."""
    handler.send_response(status)
    for name, value in (headers or {}).items():
        handler.send_header(name, value)
    handler.send_header("Content-Length", str(len(body) if declared is None else declared))
    handler.end_headers()
    handler.wfile.write(body)
    if declared is not None:
        handler.close_connection = True


def listing_xml(objects: dict[str, bytes], page: list[str], next_index: int, total: int,
                versions: str | None = None) -> bytes:
    def version(data: bytes) -> str:
        if versions is None:
            return ""
        tag = etag(data) if versions == "quoted" else etag(data).strip('"')
        escaped = tag.replace('"', "&quot;")
        return (f"<LastModified>2025-01-02T03:04:05.000Z</LastModified>"
                f"<ETag>{escaped}</ETag>")

    contents = "".join(f"<Contents><Key>{key}</Key>{version(objects[key])}"
                       f"<Size>{len(objects[key])}</Size></Contents>" for key in page)
    truncated = next_index < total
    token = f"<NextContinuationToken>{next_index}</NextContinuationToken>" if truncated else ""
    return (f'<?xml version="1.0"?><ListBucketResult xmlns="http://s3.amazonaws.com/doc/'
            f'2006-03-01/"><IsTruncated>{str(truncated).lower()}</IsTruncated>{contents}'
            f"{token}</ListBucketResult>").encode()


def status_fault(status: int, headers: dict[str, str] | None = None) -> Fault:
    return lambda handler: answer(handler, status, b"<Error><Code>SlowDown</Code></Error>",
                                  headers)


def cut_body_fault(handler: BaseHTTPRequestHandler) -> None:
    """Declares 100 bytes, sends 10 and closes the connection."""
    answer(handler, 206, b"0123456789", {"Content-Range": "bytes 0-99/5000"}, declared=100)


def slow_fault(seconds: float) -> Fault:
    def fault(handler: BaseHTTPRequestHandler) -> None:
        time.sleep(seconds)
        answer(handler, 503, b"late")

    return fault


def stalled_body_fault(head_delay: float) -> Fault:
    """Headers after `head_delay` s, then 10 of 100 bytes, then nothing for 3 s."""

    def fault(handler: BaseHTTPRequestHandler) -> None:
        time.sleep(head_delay)
        handler.send_response(206)
        handler.send_header("Content-Range", "bytes 0-99/5000")
        handler.send_header("Content-Length", "100")
        handler.end_headers()
        handler.wfile.write(b"0123456789")
        handler.wfile.flush()
        time.sleep(3.0)
        handler.close_connection = True

    return fault


@pytest.fixture
def fake() -> Iterator[FakeS3]:
    server = FakeS3()
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    rng = random.Random(7)
    server.objects = {f"series/{n}.dcm": rng.randbytes(5000 + n) for n in range(7)}
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def store(fake: FakeS3) -> Iterator[HttpBucketStore]:
    bucket = HttpBucketStore(fake.endpoint, BUCKET, FAST)
    yield bucket
    bucket.close()


def soon(seconds: float = 5.0) -> float:
    return time.monotonic() + seconds


def read_requests(store: HttpBucketStore) -> int:
    return store.statistics()["requests"].get("read", 0)


# --------------------------------------------------------------------------- reading


def test_a_cut_body_is_retried_when_the_server_ignores_range(fake: FakeS3,
                                                            store: HttpBucketStore) -> None:
    fake.mode = "ignore-range"
    fake.faults = [lambda handler: answer(handler, 200, b"x" * 10, declared=5004)]
    assert store.read("series/4.dcm", 7, 3, soon()) == fake.objects["series/4.dcm"][7:10]
    assert store.statistics()["retries"] == 1


@pytest.mark.parametrize("mode", ["s3", "rclone", "ignore-range"])
def test_ranged_reads_give_exactly_the_bytes_asked(fake: FakeS3, store: HttpBucketStore,
                                                   mode: str) -> None:
    fake.mode = mode
    data = fake.objects["series/3.dcm"]
    assert store.read("series/3.dcm", 100, 2000, soon()) == data[100:2100]
    assert store.read("series/3.dcm", 0, 1, soon()) == data[:1]
    assert store.read("series/3.dcm", len(data) - 10, 100, soon()) == data[-10:]
    assert store.read("series/3.dcm", 0, 0, soon()) == b""


def test_a_range_past_the_end_is_empty(store: HttpBucketStore) -> None:
    assert store.read("series/0.dcm", 5000, 10, soon()) == b""
    assert store.read("series/0.dcm", 9000, 10, soon()) == b""


def test_the_range_header_asks_for_exactly_the_bytes(fake: FakeS3, store: HttpBucketStore) -> None:
    store.read("series/1.dcm", 10, 20, soon())
    method, path, headers = fake.requests[-1]
    assert (method, path, headers["Range"]) == ("GET", f"/{BUCKET}/series/1.dcm", "bytes=10-29")


def test_keys_are_quoted_in_the_url(fake: FakeS3, store: HttpBucketStore) -> None:
    fake.objects["odd name+1.dcm"] = b"abcdef"
    assert store.read("odd name+1.dcm", 2, 2, soon()) == b"cd"
    assert fake.requests[-1][1] == f"/{BUCKET}/odd%20name%2B1.dcm"


@pytest.mark.parametrize("mode", ["s3", "rclone", "ignore-range"])
def test_size(fake: FakeS3, store: HttpBucketStore, mode: str) -> None:
    fake.mode = mode
    assert store.size("series/4.dcm") == 5004
    assert store.size("series/4.dcm") == 5004  # the connection is still usable
    assert fake.requests[-1][2]["Range"] == "bytes=0-0"


def test_transient_errors_are_retried(fake: FakeS3, store: HttpBucketStore) -> None:
    fake.faults = [status_fault(503), status_fault(500), cut_body_fault]
    data = fake.objects["series/2.dcm"]
    assert store.read("series/2.dcm", 0, 100, soon()) == data[:100]
    assert store.statistics()["retries"] == 3
    assert read_requests(store) == 4


def test_retries_are_bounded(fake: FakeS3, store: HttpBucketStore) -> None:
    fake.faults = [status_fault(502)] * 10
    with pytest.raises(FetchError, match="4 attempts.*HTTP 502"):
        store.read("series/2.dcm", 0, 100, soon())
    assert read_requests(store) == FAST.max_attempts


@pytest.mark.parametrize("status", [403, 404, 400])
def test_client_errors_fail_at_once_as_fetch_errors(fake: FakeS3, store: HttpBucketStore,
                                                    status: int) -> None:
    fake.faults = [status_fault(status)]
    with pytest.raises(FetchError, match=f"HTTP {status}.*SlowDown") as raised:
        store.read("series/2.dcm", 0, 100, soon())
    assert not isinstance(raised.value, NotFoundError)
    assert read_requests(store) == 1


def test_a_missing_key_is_a_fetch_error_naming_it(store: HttpBucketStore) -> None:
    with pytest.raises(FetchError, match="series/nope.dcm.*HTTP 404.*NoSuchKey"):
        store.read("series/nope.dcm", 0, 10, soon())
    with pytest.raises(FetchError, match="HTTP 404"):
        store.size("series/nope.dcm")


def test_retry_after_is_honoured(fake: FakeS3, store: HttpBucketStore) -> None:
    fake.faults = [status_fault(503, {"Retry-After": "0.4"})]
    began = time.monotonic()
    assert store.read("series/2.dcm", 0, 10, soon()) == fake.objects["series/2.dcm"][:10]
    assert time.monotonic() - began >= 0.4


def test_a_retry_after_beyond_the_deadline_fails_at_once(fake: FakeS3,
                                                         store: HttpBucketStore) -> None:
    fake.faults = [status_fault(503, {"Retry-After": "30"})]
    began = time.monotonic()
    with pytest.raises(FetchError, match=r"series/2.dcm bytes 0-9: cannot finish by the deadline"):
        store.read("series/2.dcm", 0, 10, soon(2.0))
    assert time.monotonic() - began < 1.0


def test_a_slow_server_cannot_hold_a_read_past_its_deadline(fake: FakeS3) -> None:
    fake.faults = [slow_fault(3.0)] * 3
    settings = BucketSettings(read_timeout=30.0, backoff=0.001)
    with HttpBucketStoreClosing(fake.endpoint, settings) as store:
        began = time.monotonic()
        with pytest.raises(FetchError, match=r"series/5.dcm bytes 10-19.*deadline.*waited"):
            store.read("series/5.dcm", 10, 10, time.monotonic() + 0.5)
        assert time.monotonic() - began < 1.0


def test_a_stalled_body_cannot_hold_a_read_past_its_deadline(fake: FakeS3) -> None:
    fake.faults = [stalled_body_fault(0.3)]
    with HttpBucketStoreClosing(fake.endpoint, BucketSettings(backoff=0.001)) as store:
        began = time.monotonic()
        with pytest.raises(FetchError, match="series/5.dcm bytes 0-99.*deadline"):
            store.read("series/5.dcm", 0, 100, time.monotonic() + 0.6)
        assert time.monotonic() - began < 0.8


def test_an_unreachable_server_fails_within_the_deadline() -> None:
    with HttpBucketStoreClosing("http://127.0.0.1:1", FAST) as store:
        began = time.monotonic()
        with pytest.raises(FetchError, match="attempts|deadline"):
            store.read("k", 0, 10, time.monotonic() + 2.0)
        assert time.monotonic() - began < 2.5
        assert store.statistics()["retries"] >= 1


def test_server_answers_that_contradict_the_range_are_refused(fake: FakeS3,
                                                              store: HttpBucketStore) -> None:
    fake.faults = [lambda handler: answer(handler, 206, b"x" * 10,
                                          {"Content-Range": "bytes 50-59/5000"})]
    with pytest.raises(FetchError, match="server sent bytes 50-59"):
        store.read("series/2.dcm", 0, 10, soon())


def test_a_short_body_not_at_the_end_is_retried(fake: FakeS3, store: HttpBucketStore) -> None:
    fake.faults = [lambda handler: answer(handler, 206, b"x" * 5,
                                          {"Content-Range": "bytes 0-4/5000"})]
    assert store.read("series/2.dcm", 0, 10, soon()) == fake.objects["series/2.dcm"][:10]
    assert store.statistics()["retries"] == 1


def test_parallel_reads_share_a_bounded_pool(fake: FakeS3) -> None:
    settings = BucketSettings(max_connections=3)
    with HttpBucketStoreClosing(fake.endpoint, settings) as store, ThreadPoolExecutor(12) as pool:
        starts = list(range(0, 4800, 100))
        results = list(pool.map(lambda start: store.read("series/6.dcm", start, 150, soon()),
                                starts))
    data = fake.objects["series/6.dcm"]
    assert results == [data[start : start + 150] for start in starts]
    assert fake.most_connections <= 3
    assert {method for method, _, _ in fake.requests} == {"GET"}


def test_credentials_in_the_endpoint_never_show(fake: FakeS3) -> None:
    endpoint = fake.endpoint.replace("http://", "http://reader:s3cret@")
    with HttpBucketStoreClosing(endpoint, FAST) as store:
        assert "s3cret" not in store.description and "reader" not in store.description
        with pytest.raises(FetchError) as raised:
            store.read("series/missing.dcm", 0, 10, soon())
    assert "s3cret" not in str(raised.value)
    assert fake.requests[-1][2]["authorization"].startswith("Basic ")


# --------------------------------------------------------------------------- listing


def test_listing_follows_every_page(fake: FakeS3, store: HttpBucketStore) -> None:
    fake.objects["other/1.dcm"] = b"x"
    expected = [ObjectInfo(key, len(fake.objects[key]))
                for key in sorted(fake.objects) if key.startswith("series/")]
    assert store.list("series/") == expected
    assert store.statistics()["requests"]["list"] == 3  # 7 objects, 3 a page
    assert "continuation-token=6" in fake.requests[-1][1]
    assert "prefix=series%2F" in fake.requests[-1][1]


def test_listing_an_empty_prefix(store: HttpBucketStore) -> None:
    assert store.list("nothing/") == []


@pytest.mark.parametrize("body", [
    b"not xml at all <",
    b"<Error><Code>AccessDenied</Code></Error>",
    b"<ListBucketResult><Contents><Key>a</Key></Contents></ListBucketResult>",
    b"<ListBucketResult><Contents><Key>a</Key><Size>-1</Size></Contents></ListBucketResult>",
    b"<ListBucketResult><IsTruncated>true</IsTruncated></ListBucketResult>",
])
def test_a_malformed_listing_is_a_fetch_error(fake: FakeS3, store: HttpBucketStore,
                                              body: bytes) -> None:
    fake.listing_override = body
    with pytest.raises(FetchError, match="listing"):
        store.list("series/")


def test_a_listing_that_loops_is_a_fetch_error(fake: FakeS3, store: HttpBucketStore) -> None:
    fake.listing_override = (b"<ListBucketResult><IsTruncated>true</IsTruncated>"
                             b"<NextContinuationToken>same</NextContinuationToken>"
                             b"</ListBucketResult>")
    with pytest.raises(FetchError, match="repeats a continuation token"):
        store.list("series/")


def test_a_listing_without_namespace_is_read(fake: FakeS3, store: HttpBucketStore) -> None:
    fake.listing_override = (b"<ListBucketResult><Contents><Key>a/b.dcm</Key><Size>12</Size>"
                             b"</Contents></ListBucketResult>")
    assert store.list("a/") == [ObjectInfo("a/b.dcm", 12)]


def test_a_missing_bucket_is_a_fetch_error(fake: FakeS3) -> None:
    with (HttpBucketStoreClosing(fake.endpoint, FAST, bucket="no-such-bucket") as store,
          pytest.raises(FetchError, match="HTTP 404.*NoSuchBucket")):
        store.list("")


class HttpBucketStoreClosing(HttpBucketStore):
    """An HttpBucketStore closed by `with`."""

    def __init__(self, endpoint: str, settings: BucketSettings, bucket: str = BUCKET) -> None:
        super().__init__(endpoint, bucket, settings)

    def __enter__(self) -> HttpBucketStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# --------------------------------------------------------------------------- local folder


@pytest.fixture
def folder(tmp_path: Path) -> LocalFolderStore:
    for name, size in [("ser1/a.dcm", 10), ("ser1/b.dcm", 20), ("ser10/c.dcm", 5),
                       ("ser1/deep/d.dcm", 7), ("top.dcm", 3), ("../outside.dcm", 4)]:
        path = tmp_path / "root" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(bytes(range(size)))
    return LocalFolderStore(tmp_path / "root")


def test_folder_listing_uses_key_prefixes(folder: LocalFolderStore) -> None:
    assert [info.key for info in folder.list("ser1/")] == [
        "ser1/a.dcm", "ser1/b.dcm", "ser1/deep/d.dcm"]
    assert [info.key for info in folder.list("ser1")] == [
        "ser1/a.dcm", "ser1/b.dcm", "ser1/deep/d.dcm", "ser10/c.dcm"]
    assert len(folder.list("")) == 5
    assert [(info.key, info.size) for info in folder.list("ser1/b")] == [("ser1/b.dcm", 20)]
    assert folder.list("nothing/") == []


def test_folder_reads(folder: LocalFolderStore) -> None:
    assert folder.read("ser1/b.dcm", 5, 4, soon()) == bytes([5, 6, 7, 8])
    assert folder.read("ser1/b.dcm", 15, 100, soon()) == bytes(range(15, 20))
    assert folder.read("ser1/b.dcm", 50, 10, soon()) == b""
    assert folder.size("ser1/deep/d.dcm") == 7
    assert folder.statistics()["bytes_received"] == 9


@pytest.mark.parametrize("key", ["ser1/missing.dcm", "../outside.dcm", "/etc/passwd", ""])
def test_folder_errors_are_fetch_errors(folder: LocalFolderStore, key: str) -> None:
    with pytest.raises(FetchError):
        folder.read(key, 0, 10, soon())


def test_folder_read_after_its_deadline_fails(folder: LocalFolderStore) -> None:
    with pytest.raises(FetchError, match="deadline"):
        folder.read("ser1/a.dcm", 0, 1, time.monotonic() - 1)


def test_both_stores_are_object_stores(folder: LocalFolderStore, store: HttpBucketStore) -> None:
    stores: list[ObjectStore] = [folder, store]
    assert all(isinstance(one.description, str) for one in stores)


def _until(condition: Callable[[], bool], seconds: float = 5.0) -> bool:
    end = time.monotonic() + seconds
    while not condition() and time.monotonic() < end:
        time.sleep(0.01)
    return condition()


def test_preconnect_opens_the_connections_parallel_reads_then_use(
        fake: FakeS3, store: HttpBucketStore) -> None:
    """Connections opened ahead (while a listing is under way) are the ones the header
    reads sent together right after it use: no read opens one of its own."""
    keys = sorted(fake.objects)
    store.read(keys[0], 0, 10, soon())  # one connection, idle now
    store.preconnect(4)
    assert _until(lambda: fake.open_connections == 4)
    with ThreadPoolExecutor(4) as pool:
        bodies = list(pool.map(lambda key: store.read(key, 0, 100, soon()), keys[:4]))
    assert bodies == [fake.objects[key][:100] for key in keys[:4]]
    assert fake.most_connections == 4
    store.preconnect(4)  # all open already: nothing more
    time.sleep(0.2)
    assert fake.open_connections == 4


def test_preconnect_is_bounded_by_the_pool_and_never_fails() -> None:
    server = FakeS3()
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        store = HttpBucketStore(server.endpoint, BUCKET, BucketSettings(max_connections=3))
        store.preconnect(50)
        assert _until(lambda: server.open_connections == 3)
        time.sleep(0.2)
        assert server.most_connections == 3
        store.close()
    finally:
        server.shutdown()
        server.server_close()
    dead = HttpBucketStore("http://127.0.0.1:9", BUCKET, FAST)  # nothing listens
    dead.preconnect(4)  # no error; the slots come back
    with pytest.raises(FetchError):
        dead.read("series/0.dcm", 0, 10, soon(2))
    dead.close()


def test_preconnect_hands_the_connects_to_threads_started_at_the_probe(
        fake: FakeS3, store: HttpBucketStore) -> None:
    """The caller (entering a series, about to list it) does not start threads or wait
    for connects: the probe at mount started them, preconnect only hands them work."""
    store.probe("series/", soon())
    connecting = {thread.name for thread in threading.enumerate()
                  if thread.name.startswith("idcfs-preconnect")}
    assert len(connecting) == store.settings.max_connections
    before = set(threading.enumerate())
    store.preconnect(4)
    assert set(threading.enumerate()) <= before  # no thread started by it
    assert _until(lambda: fake.open_connections == 4)


def test_started_pool_starts_every_thread_before_any_task() -> None:
    pool = started_pool(5, "idcfs-test")
    try:
        assert _until(lambda: len([thread for thread in threading.enumerate()
                                   if thread.name.startswith("idcfs-test")]) == 5)
        assert pool.submit(lambda: threading.current_thread().name).result(
            timeout=5).startswith("idcfs-test")
    finally:
        pool.shutdown()


# --------------------------------------------------------------------------- versions


def test_a_listing_gives_each_object_its_version(fake: FakeS3, store: HttpBucketStore) -> None:
    fake.versions = True
    listed = store.list("series/")
    assert [info.key for info in listed] == sorted(fake.objects)
    for info in listed:
        assert info.version == f"2025-01-02T03:04:05.000Z|{etag(fake.objects[info.key])}"


def test_a_bare_etag_of_rclone_is_quoted_as_if_match_wants(fake: FakeS3,
                                                           store: HttpBucketStore) -> None:
    fake.versions, fake.mode = True, "rclone"
    info = store.list("series/0")[0]
    assert info.version is not None and info.version.endswith(etag(fake.objects[info.key]))


def test_a_versioned_read_sends_if_match_and_gets_the_bytes(fake: FakeS3,
                                                            store: HttpBucketStore) -> None:
    fake.versions = True
    info = store.list("series/1")[0]
    assert store.read(info.key, 10, 20, soon(), info.version) == fake.objects[info.key][10:30]
    assert fake.requests[-1][2]["If-Match"] == etag(fake.objects[info.key])
    store.read(info.key, 0, 5, soon())
    assert "If-Match" not in fake.requests[-1][2]  # unversioned (IDC's index): none sent


def test_an_object_changed_since_listing_is_a_412_never_missing_nor_retried(
        fake: FakeS3, store: HttpBucketStore) -> None:
    fake.versions = True
    info = store.list("series/2")[0]
    fake.objects[info.key] = bytes(reversed(fake.objects[info.key]))  # the same size
    before = read_requests(store)
    with pytest.raises(ObjectChanged, match="changed since it was listed.*412") as raised:
        store.read(info.key, 0, 100, soon(), info.version)
    assert not isinstance(raised.value, (ObjectMissing, NotFoundError))
    assert read_requests(store) == before + 1


def test_a_server_that_ignores_if_match_is_caught_by_the_answers_etag(
        fake: FakeS3, store: HttpBucketStore) -> None:
    fake.versions, fake.honour_if_match = True, False
    info = store.list("series/3")[0]
    fake.objects[info.key] = bytes(reversed(fake.objects[info.key]))
    with pytest.raises(ObjectChanged, match="changed since it was listed.*ETag"):
        store.read(info.key, 0, 100, soon(), info.version)


def test_a_folder_file_rewritten_at_the_same_size_is_another_version(
        folder: LocalFolderStore) -> None:
    path = folder.root / "ser1" / "a.dcm"
    listed = folder.list("ser1/a")[0]
    assert listed.version is not None
    data = path.read_bytes()
    with path.open("r+b") as handle:  # in place: the same inode, a later mtime
        handle.write(bytes(reversed(data)))
    os.utime(path, ns=(0, path.stat().st_mtime_ns + 1_000_000))
    now = folder.list("ser1/a")[0]
    assert (now.key, now.size) == (listed.key, listed.size) and now.version != listed.version
    with pytest.raises(ObjectChanged, match="changed since it was listed"):
        folder.read(listed.key, 0, 4, soon(), listed.version)
    assert folder.read(now.key, 0, 4, soon(), now.version) == bytes(reversed(data))[:4]
    assert folder.read(now.key, 0, 4, soon()) == bytes(reversed(data))[:4]


def test_a_folder_file_replaced_by_a_rename_is_another_version(folder: LocalFolderStore) -> None:
    path = folder.root / "ser1" / "b.dcm"
    listed = folder.list("ser1/b")[0]
    replacement = path.with_suffix(".new")
    replacement.write_bytes(path.read_bytes())
    os.utime(replacement, ns=(0, path.stat().st_mtime_ns))  # even the same mtime
    replacement.rename(path)
    with pytest.raises(ObjectChanged):
        folder.read(listed.key, 0, 4, soon(), listed.version)
