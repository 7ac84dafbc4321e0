"""Loopback relays that sit between idcfs and a test server.

- `HttpRelay`: an HTTP/1.1 keep-alive forwarding proxy that records every request
  (method, path, headers) and injects faults into chosen requests: the next N whose path holds
  a substring, or a seeded random fraction of them (`FaultMode`): an answer of its own
  (500, 502, 503, 429 with or without Retry-After, a 200 HTML page, metadata that is
  not JSON) without contacting the server; a connection reset before the headers or in
  the middle of the body; a stall (accepts, sends nothing); a slow drip of the body
  (1 byte/s); a multipart answer cut short (no closing boundary) or with fewer parts;
  a wrong Content-Length; a frame part of garbage bytes; JSON lacking attributes. It
  can also add a delay, go away (stop listening, connections cut) and come back
  on the same port, and act as a server that wants credentials (`require_header`:
  401 to every request without the header's accepted value). Bodies pass unchanged
  otherwise; hop-by-hop headers are dropped (a chunked answer is re-sent with a
  Content-Length).
- `TcpLatencyRelay`: a byte-level TCP relay that delays every chunk by half a round
  trip in each direction without serialising them (like a long link), and charges a
  round trip for connection set-up; it counts connections and bytes. It can also cap
  each connection's bandwidth in each direction (a single stream over a WAN).

Both listen on a free 127.0.0.1 port chosen at `start()`, serve from a background
thread, and work as context managers.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import http.client
import json
import random
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.support.service import Service

UPSTREAM_TIMEOUT_S = 120.0
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
    "trailer", "trailers", "transfer-encoding", "upgrade", "proxy-connection",
})
DEFAULT_FAULT_BODY = b"<html><body>injected fault</body></html>"
UNAUTHORIZED_BODY = b'{"error": {"code": 401, "message": "credentials missing or refused"}}'
TCP_CHUNK = 256 * 1024
TCP_QUEUE_CHUNKS = 256  # at most 64 MiB in flight per direction
CAPPED_CHUNK_S = 0.005  # under a bandwidth cap, chunks of 5 ms of the link's time
MIN_CAPPED_CHUNK = 4096


class _BackgroundService(Service):
    """A relay listening on a loopback port."""

    port: int = 0

    @property
    def url(self) -> str:
        """http://127.0.0.1:PORT of the relay (for TcpLatencyRelay too)."""
        return f"http://127.0.0.1:{self.port}"


# --------------------------------------------------------------------------- HTTP


class FaultMode(enum.Enum):
    """What an injected fault does to a request (see `HttpRelay.inject_fault`)."""

    ANSWER = "answer"  # `status`, `headers`, `body`, without contacting the server
    RESET = "reset"  # connection reset before any byte of the answer
    STALL = "stall"  # accept the request, send nothing for `hold_s`, then close
    DRIP = "drip"  # the server's headers at once, then its body at `drip_bytes_per_s`
    RESET_MID_BODY = "reset-mid-body"  # headers and half the body, then a reset
    WRONG_LENGTH = "wrong-length"  # Content-Length off by `length_delta`, then close
    CUT_MULTIPART = "cut-multipart"  # multipart without its closing boundary
    FEWER_PARTS = "fewer-parts"  # multipart with its last part left out
    GARBAGE_PART = "garbage-part"  # first part: random bytes, Content-Type `label`
    DROP_TAGS = "drop-tags"  # a JSON list whose objects lose the keys `drop_tags`


@dataclass
class Fault:
    """An injected fault for the next `remaining` requests whose path holds
    `path_contains`, each hit with probability `rate` (seeded by `seed`)."""

    status: int
    remaining: int
    path_contains: str = ""
    body: bytes = DEFAULT_FAULT_BODY
    headers: dict[str, str] = field(default_factory=dict)
    mode: FaultMode = FaultMode.ANSWER
    rate: float = 1.0
    seed: int = 0
    hold_s: float = 30.0
    drip_bytes_per_s: float = 1.0
    length_delta: int = 1000
    label: str = "image/jpeg"
    drop_tags: tuple[str, ...] = ()
    served: int = 0  # requests this fault answered
    _rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def matches(self, path: str) -> bool:
        return self.remaining > 0 and self.path_contains in path

    def strikes(self) -> bool:
        """Whether this matching request is hit (always at rate 1)."""
        return self.rate >= 1.0 or self._rng.random() < self.rate

    def garbage(self, size: int) -> bytes:
        return self._rng.randbytes(size)


class _ProxyServer(ThreadingHTTPServer):
    """The threaded listening server; remembers its relay and open client sockets."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, relay: HttpRelay, port: int = 0) -> None:
        self.relay = relay
        self.open_sockets: set[socket.socket] = set()
        self.sockets_lock = threading.Lock()
        super().__init__(("127.0.0.1", port), _ProxyHandler)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        with self.sockets_lock:
            self.open_sockets.add(request)
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self.sockets_lock:
                self.open_sockets.discard(request)

    def close_client_sockets(self) -> None:
        with self.sockets_lock:
            sockets = list(self.open_sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class _ProxyHandler(BaseHTTPRequestHandler):
    """Forwards one client connection's requests over one upstream keep-alive connection."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: _ProxyServer
    upstream: http.client.HTTPConnection | None = None

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the relay's record is `HttpRelay.requests`."""

    def do_GET(self) -> None:
        self._relay_request()

    do_HEAD = do_POST = do_PUT = do_DELETE = do_OPTIONS = do_PATCH = do_GET

    def finish(self) -> None:
        super().finish()
        if self.upstream is not None:
            self.upstream.close()

    def _relay_request(self) -> None:
        relay = self.server.relay
        body = self._read_request_body()
        fault = relay.record(self.command, self.path, self.headers)
        if relay.refuses(self.headers):
            self._answer(401, [("Content-Type", "application/json"),
                               ("WWW-Authenticate", 'Bearer realm="relay"')], UNAUTHORIZED_BODY)
            return
        if relay.latency_s > 0:
            time.sleep(relay.latency_s)
        if fault is not None and fault.mode in LOCAL_FAULTS:
            LOCAL_FAULTS[fault.mode](self, fault)
            return
        try:
            status, headers, payload = self._forward(body)
        except (OSError, http.client.HTTPException) as error:
            self._drop_upstream()
            message = f"relay: upstream failed: {error}".encode()
            self._answer(502, [("Content-Type", "text/plain")], message)
            return
        if fault is None:
            self._answer(status, headers, payload)
        elif fault.mode in DELIVERY_FAULTS:
            DELIVERY_FAULTS[fault.mode](self, fault, status, headers, payload)
        else:
            headers, payload = BODY_FAULTS[fault.mode](fault, headers, payload)
            self._answer(status, headers, payload)

    def _read_request_body(self) -> bytes | None:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else None

    def _forward(self, body: bytes | None) -> tuple[int, list[tuple[str, str]], bytes]:
        """Send the request upstream; one retry when a reused connection had gone stale."""
        reused = self.upstream is not None
        try:
            return self._exchange(body)
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            if not reused:
                raise
            self._drop_upstream()
            return self._exchange(body)

    def _exchange(self, body: bytes | None) -> tuple[int, list[tuple[str, str]], bytes]:
        relay = self.server.relay
        if self.upstream is None:
            self.upstream = http.client.HTTPConnection(
                relay.upstream_host, relay.upstream_port, timeout=UPSTREAM_TIMEOUT_S
            )
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        self.upstream.request(self.command, self.path, body=body, headers=headers)
        response = self.upstream.getresponse()
        payload = response.read()
        if response.will_close:
            self._drop_upstream()
        kept = [(k, v) for k, v in response.getheaders() if k.lower() not in HOP_BY_HOP]
        return response.status, kept, payload

    def _drop_upstream(self) -> None:
        if self.upstream is not None:
            self.upstream.close()
            self.upstream = None

    def _answer(self, status: int, headers: list[tuple[str, str]], payload: bytes) -> None:
        """Send status line, headers and body in one write (no Nagle stall between them)."""
        lengths = [value for name, value in headers if name.lower() == "content-length"]
        length = int(lengths[0]) if self.command == "HEAD" and lengths else len(payload)
        head = self._head(status, headers, length)
        self.wfile.write(head if self.command == "HEAD" else head + payload)

    def _head(self, status: int, headers: list[tuple[str, str]], length: int) -> bytes:
        """The status line and headers, with `length` as the Content-Length."""
        reason = self.responses.get(status, ("",))[0]
        lines = [f"HTTP/1.1 {status} {reason}"]
        lines += [f"{name}: {value}" for name, value in headers if name.lower() != "content-length"]
        lines.append(f"Content-Length: {length}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def reset_connection(self) -> None:
        """Abort the client connection with a TCP reset (SO_LINGER 0)."""
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
        self.close_connection = True

    def send_slowly(self, data: bytes, bytes_per_s: float, hold_s: float) -> None:
        """Write `data` at `bytes_per_s` until done, the client leaves, `hold_s` passes or
        the relay stops."""
        stopping = self.server.relay.stopping
        end = time.monotonic() + hold_s
        for index in range(len(data)):
            if stopping.wait(1.0 / bytes_per_s) or time.monotonic() > end:
                break
            try:
                self.wfile.write(data[index : index + 1])
            except OSError:
                break
        self.close_connection = True


# -- faults: each answers one request in its own way ----------------------------------

Headers = list[tuple[str, str]]


def _answer_fault(handler: _ProxyHandler, fault: Fault) -> None:
    handler._answer(fault.status, list(fault.headers.items()), fault.body)


def _reset_fault(handler: _ProxyHandler, fault: Fault) -> None:
    handler.reset_connection()


def _stall_fault(handler: _ProxyHandler, fault: Fault) -> None:
    handler.server.relay.stopping.wait(fault.hold_s)
    handler.close_connection = True


def _drip_fault(
    handler: _ProxyHandler, fault: Fault, status: int, headers: Headers, payload: bytes
) -> None:
    handler.wfile.write(handler._head(status, headers, len(payload)))
    handler.send_slowly(payload, fault.drip_bytes_per_s, fault.hold_s)


def _reset_mid_body_fault(
    handler: _ProxyHandler, fault: Fault, status: int, headers: Headers, payload: bytes
) -> None:
    handler.wfile.write(handler._head(status, headers, len(payload)) + payload[: len(payload) // 2])
    handler.reset_connection()


def _wrong_length_fault(
    handler: _ProxyHandler, fault: Fault, status: int, headers: Headers, payload: bytes
) -> None:
    length = max(0, len(payload) + fault.length_delta)
    handler.wfile.write(handler._head(status, headers, length) + payload)
    handler.close_connection = True


def _boundary(headers: Headers) -> bytes:
    message = Message()
    message["content-type"] = next((v for k, v in headers if k.lower() == "content-type"), "")
    boundary = message.get_param("boundary")
    if not isinstance(boundary, str):
        raise ValueError("relay: the answer to cut is not multipart")
    return b"--" + boundary.encode("ascii")


def _cut_multipart(fault: Fault, headers: Headers, payload: bytes) -> tuple[Headers, bytes]:
    closing = payload.rfind(b"\r\n" + _boundary(headers) + b"--")
    return headers, payload[:closing]


def _fewer_parts(fault: Fault, headers: Headers, payload: bytes) -> tuple[Headers, bytes]:
    delimiter = _boundary(headers)
    pieces = payload.split(delimiter)  # preamble, parts..., closing "--" and epilogue
    return headers, delimiter.join(pieces[:-2] + pieces[-1:])


def _garbage_part(fault: Fault, headers: Headers, payload: bytes) -> tuple[Headers, bytes]:
    delimiter = _boundary(headers)
    pieces = payload.split(delimiter)
    head, _, content = pieces[1].partition(b"\r\n\r\n")
    kept = [line for line in head.split(b"\r\n") if not line.lower().startswith(b"content-type")]
    head = b"\r\n".join([*kept, f"Content-Type: {fault.label}".encode()])
    pieces[1] = head + b"\r\n\r\n" + fault.garbage(len(content) - 2) + b"\r\n"
    return headers, delimiter.join(pieces)


def _drop_tags(fault: Fault, headers: Headers, payload: bytes) -> tuple[Headers, bytes]:
    items = json.loads(payload)
    for item in items:
        for tag in fault.drop_tags:
            item.pop(tag, None)
    return headers, json.dumps(items).encode()


LOCAL_FAULTS: dict[FaultMode, Callable[[_ProxyHandler, Fault], None]] = {
    FaultMode.ANSWER: _answer_fault,
    FaultMode.RESET: _reset_fault,
    FaultMode.STALL: _stall_fault,
}
DELIVERY_FAULTS: dict[FaultMode, Callable[[_ProxyHandler, Fault, int, Headers, bytes], None]] = {
    FaultMode.DRIP: _drip_fault,
    FaultMode.RESET_MID_BODY: _reset_mid_body_fault,
    FaultMode.WRONG_LENGTH: _wrong_length_fault,
}
BODY_FAULTS: dict[FaultMode, Callable[[Fault, Headers, bytes], tuple[Headers, bytes]]] = {
    FaultMode.CUT_MULTIPART: _cut_multipart,
    FaultMode.FEWER_PARTS: _fewer_parts,
    FaultMode.GARBAGE_PART: _garbage_part,
    FaultMode.DROP_TAGS: _drop_tags,
}


class HttpRelay(_BackgroundService):
    """A counting, fault-injecting HTTP/1.1 relay in front of `upstream_host:upstream_port`.

    Holds `requests` ((method, path) in arrival order, injected answers included),
    `headers` (each of those requests' headers, in the same order), the pending
    faults, `latency_s` (delay added before answering each request) and `refused`
    (requests answered 401 for want of the header `require_header` asks for).
    """

    def __init__(self, upstream_host: str, upstream_port: int, latency_s: float = 0.0) -> None:
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.latency_s = latency_s
        self.requests: list[tuple[str, str]] = []
        self.headers: list[Message] = []  # case-insensitive: headers[i].get('host')
        self.stopping = threading.Event()  # set by stop(): stalled and dripping answers end
        self._faults: list[Fault] = []
        self._required: tuple[str, frozenset[str]] | None = None
        self.refused = 0
        self.on_refusal: Callable[[], None] | None = None  # called before each 401 is sent
        self._lock = threading.Lock()
        self._server: _ProxyServer | None = None
        self._thread: threading.Thread | None = None

    def start(self, port: int = 0) -> HttpRelay:
        """Listen on loopback `port` (0: a free one) and serve from a background thread."""
        self.stopping.clear()
        self._server = _ProxyServer(self, port)
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
            name=f"HttpRelay:{self.port}", daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and close every client connection."""
        server, self._server = self._server, None
        if server is None:
            return
        self.stopping.set()
        server.shutdown()
        server.close_client_sockets()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def go_away(self) -> None:
        """Act as a server that went down: stop listening and cut every connection, so
        connections are refused until `come_back`."""
        self.stop()

    def come_back(self) -> None:
        """Listen again, on the same port: the server is back at the same address."""
        self.start(self.port)

    def inject(
        self,
        status: int,
        times: int | None,
        path_contains: str = "",
        body: bytes = DEFAULT_FAULT_BODY,
        headers: dict[str, str] | None = None,
    ) -> Fault:
        """Answer the next `times` requests (None: all) whose path contains `path_contains`
        with `status` and `body` (default Content-Type text/html), without contacting
        upstream."""
        return self.inject_fault(FaultMode.ANSWER, times, path_contains, status=status,
                                 body=body, headers=headers)

    def inject_fault(
        self,
        mode: FaultMode,
        times: int | None = 1,
        path_contains: str = "",
        *,
        headers: dict[str, str] | None = None,
        **options: Any,
    ) -> Fault:
        """Inject `mode` into the next `times` requests whose path contains
        `path_contains` (None: every one until `clear_faults`); `rate=0.3, seed=1` hits
        a seeded random fraction of them instead. Other options are `Fault` fields
        (`status`, `body`, `hold_s`, `drip_bytes_per_s`, `length_delta`, `label`,
        `drop_tags`). Returns the fault; its `served` counts the requests it hit."""
        fault_headers = {"Content-Type": "text/html; charset=utf-8", **(headers or {})}
        options.setdefault("status", 200)
        remaining = sys.maxsize if times is None else times
        fault = Fault(remaining=remaining, path_contains=path_contains, headers=fault_headers,
                      mode=mode, **options)
        with self._lock:
            self._faults.append(fault)
        return fault

    def require_header(self, name: str, *accepted: str) -> None:
        """From now on answer 401 (without contacting the server) to every request
        whose header `name` is not one of `accepted`; no values: require nothing."""
        with self._lock:
            self._required = (name, frozenset(accepted)) if accepted else None

    def refuses(self, headers: Message) -> bool:
        """Whether a request with `headers` lacks the required header (counted)."""
        with self._lock:
            if self._required is None:
                return False
            name, accepted = self._required
            refused = headers.get(name) not in accepted
            self.refused += refused
            on_refusal = self.on_refusal
        if refused and on_refusal is not None:
            on_refusal()
        return refused

    def clear_faults(self) -> None:
        """Drop pending faults; the record of requests is kept."""
        with self._lock:
            self._faults.clear()

    def count(self, substring: str = "") -> int:
        """How many recorded requests have `substring` in their path."""
        with self._lock:
            return sum(substring in path for _, path in self.requests)

    def reset(self) -> None:
        """Forget recorded requests, pending faults and the required header (latency is
        kept)."""
        with self._lock:
            self.requests.clear()
            self.headers.clear()
            self._faults.clear()
            self._required = None
            self.refused = 0

    def record(self, method: str, path: str, headers: Message | None = None) -> Fault | None:
        """Record an arriving request; return (using up one count of) the injected fault
        that answers it, if any. Called by the relay's request handlers."""
        with self._lock:
            self.requests.append((method, path))
            self.headers.append(headers if headers is not None else Message())
            fault = next((f for f in self._faults if f.matches(path) and f.strikes()), None)
            if fault is not None:
                fault.remaining -= 1
                fault.served += 1
                if fault.remaining == 0:
                    self._faults.remove(fault)
            return fault


# --------------------------------------------------------------------------- TCP


class TcpLatencyRelay(_BackgroundService):
    """Byte relay adding `rtt_s / 2` of one-way delay to every chunk in each direction.

    Chunks are pipelined: one read at time t is written at t + rtt/2 however many are
    in flight, in order. A new connection carries nothing for one round trip after it
    was accepted (the handshake a real link would cost; its upstream connection is
    opened at once). With `bytes_per_s`, each
    connection's direction is a link of that bandwidth: a chunk is sent once the ones
    before it are, takes size/bandwidth, then travels rtt/2 (the relay holds what the
    link has not sent yet, at most `TCP_QUEUE_CHUNKS` chunks, then stops reading). Holds
    counters: `connections`, `bytes_up` (client to server) and `bytes_down` (server to
    client).
    """

    def __init__(self, upstream_host: str, upstream_port: int, rtt_s: float,
                 bytes_per_s: float | None = None) -> None:
        if bytes_per_s is not None and bytes_per_s <= 0:
            raise ValueError(f"bandwidth must be positive: {bytes_per_s}")
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.rtt_s = rtt_s
        self.bytes_per_s = bytes_per_s
        self.connections = 0
        self.bytes_up = 0
        self.bytes_down = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self) -> TcpLatencyRelay:
        """Listen on a free loopback port; the event loop runs in a background thread."""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._run_loop, name="TcpLatencyRelay", daemon=True
        )
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._listen(), self._loop)
        future.result(timeout=10)
        return self

    def _run_loop(self) -> None:
        assert self._loop is not None
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(
            self._on_client, "127.0.0.1", 0, limit=TCP_CHUNK * 4, backlog=512
        )
        self.port = int(self._server.sockets[0].getsockname()[1])

    def stop(self) -> None:
        """Close the listener and every relayed connection, then end the loop thread."""
        loop, self._loop = self._loop, None
        if loop is None:
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=10)
        loop.close()

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        try:
            await self._relay_connection(reader, writer)
        except asyncio.CancelledError:
            pass  # the relay is stopping; end quietly
        finally:
            self._tasks.discard(task)
            writer.close()

    async def _relay_connection(
        self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        _set_nodelay(client_writer)
        # The handshake's round trip is charged as a time before which no chunk leaves
        # (`_Link.free_at`), while the upstream connection and the pipes are set up at
        # once: their work then does not fall on the moment the handshake ends, which
        # is when the response to a request sent beside it (a listing) comes back.
        usable_at = asyncio.get_running_loop().time() + self.rtt_s
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(
                self.upstream_host, self.upstream_port, limit=TCP_CHUNK * 4
            )
        except OSError:
            return
        _set_nodelay(upstream_writer)
        half = self.rtt_s / 2
        try:
            await asyncio.gather(
                _pipe(client_reader, upstream_writer,
                      _Link(half, self.bytes_per_s, usable_at), self._count_up),
                _pipe(upstream_reader, client_writer,
                      _Link(half, self.bytes_per_s, usable_at), self._count_down),
            )
        finally:
            upstream_writer.close()

    def _count_up(self, size: int) -> None:
        self.bytes_up += size

    def _count_down(self, size: int) -> None:
        self.bytes_down += size


def _set_nodelay(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _Link:
    """One direction of one connection: `delay` seconds of travel, nothing sent before
    `usable_at` (the connection's handshake), and, with a bandwidth, one chunk on the
    wire at a time."""

    def __init__(self, delay: float, bytes_per_s: float | None, usable_at: float = 0.0) -> None:
        self.delay = delay
        self.bytes_per_s = bytes_per_s
        self.free_at = usable_at  # when the chunks accepted so far have all been sent

    @property
    def chunk(self) -> int:
        """How much to read at once: small enough under a cap to pace smoothly."""
        if self.bytes_per_s is None:
            return TCP_CHUNK
        return int(min(TCP_CHUNK, max(MIN_CAPPED_CHUNK, self.bytes_per_s * CAPPED_CHUNK_S)))

    def due(self, now: float, size: int) -> float:
        """When a chunk of `size` bytes read at `now` reaches the other end."""
        sent_at = max(now, self.free_at)
        if self.bytes_per_s is not None:
            self.free_at = sent_at = sent_at + size / self.bytes_per_s
        return sent_at + self.delay


async def _pipe(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    link: _Link,
    count: Callable[[int], None],
) -> None:
    """Copy reader to writer, each chunk delivered when `link` says it arrives.

    A reading task stamps chunks and a writing task waits for each stamp, so the
    delays of chunks in flight overlap instead of adding up. EOF is passed on (as a
    half-close) after the last chunk; after a write error the rest is discarded.
    """
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(TCP_QUEUE_CHUNKS)
    loop = asyncio.get_running_loop()
    sender = asyncio.ensure_future(_deliver(queue, writer))
    try:
        while True:
            try:
                chunk = await reader.read(link.chunk)
            except OSError:
                chunk = b""
            await queue.put((link.due(loop.time(), len(chunk)), chunk))
            if not chunk:
                break
            count(len(chunk))
        await sender
    finally:
        sender.cancel()


async def _deliver(queue: asyncio.Queue[tuple[float, bytes]], writer: asyncio.StreamWriter) -> None:
    """Write queued chunks at their due times until the EOF marker (an empty chunk)."""
    loop = asyncio.get_running_loop()
    broken = False
    while True:
        due, chunk = await queue.get()
        if not chunk:
            break
        if broken:
            continue
        wait = due - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        broken = not await _write(writer, chunk)
    if not broken:
        await _write(writer, b"")


async def _write(writer: asyncio.StreamWriter, chunk: bytes) -> bool:
    """Write a chunk (an empty one means half-close); False when the peer is gone."""
    try:
        if chunk:
            writer.write(chunk)
            await writer.drain()
        elif writer.can_write_eof():
            writer.write_eof()
    except OSError:
        writer.transport.abort()
        return False
    return True
