"""The daemon's end of the control socket: a unix socket only the mounting user reaches.

Where: `$XDG_RUNTIME_DIR/idcfs/<SHA-256 of the mountpoint, 16 hex digits>.sock` (without
XDG_RUNTIME_DIR: `/tmp/idcfs-<uid>/`), published in the statistics file as
`control.socket`, so a client finds it from any path in the mount. The directory is
this user's and 0700 (refused otherwise, as the cache directory is), the socket 0600,
and each connection's peer credentials (SO_PEERCRED) are checked: a process of another
user is refused even where file permissions would let it connect (root's too: it would
act through this user's daemon). Removed at unmount; one left by a killed daemon is
replaced.

Threads: `idcfs-control` accepts; each connection is served on a thread of its own
(`idcfs-control-client`: it walks the paths and paces the prefetch, whose batches run
on the prefetcher's pool), with a watcher (`idcfs-control-watch`) that notices the
client leaving and stops the run: batches in flight finish, none starts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import socket
import socketserver
import stat
import struct
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from idcfs.control.protocol import MAX_LINE, Message, ProtocolError, decode, encode
from idcfs.errors import IdcfsError, NotFoundError
from idcfs.fetch.prefetch import Failure, Prefetcher, Tally
from idcfs.fs.selection import select_tiles
from idcfs.fs.tree import Tree
from idcfs.metrics import Metrics

log = logging.getLogger(__name__)

PRIVATE_DIRECTORY = 0o700
PRIVATE_SOCKET = 0o600
REQUEST_WAIT_S = 10.0  # the most a connection may take to send its request
SEND_WAIT_S = 30.0  # the most an event may wait for a client that does not read (stopped)
CLOSE_SLACK_S = 5.0  # beyond --timeout, the longest an unmount waits for prefetch runs
LISTING_EVERY_S = 0.2  # at most this often a "listing" event while paths are walked
NO_CACHE_DIR = ("this mount has no --cache-dir: prefetch warms the disk cache "
                "(mount with --cache-dir DIR)")

Send = Callable[[Message], None]


class ControlError(IdcfsError):
    """The control socket cannot be set up (its directory is unsafe or unusable)."""


def runtime_directory() -> Path:
    """Where this user's control sockets live."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base and os.path.isdir(base):
        return Path(base) / "idcfs"
    return Path(tempfile.gettempdir()) / f"idcfs-{os.geteuid()}"


def socket_name(mountpoint: Path) -> str:
    """A mount's socket name: short (a socket path has at most 107 bytes), one per
    mountpoint."""
    return hashlib.sha256(str(mountpoint).encode()).hexdigest()[:16] + ".sock"


def private_directory(directory: Path) -> None:
    """Create `directory` 0700, or check that an existing one is this user's own and
    nobody else's to enter; ControlError otherwise."""
    try:
        directory.mkdir(mode=PRIVATE_DIRECTORY, parents=True, exist_ok=True)
        info = directory.lstat()
    except OSError as error:
        raise ControlError(f"control directory {directory}: {error.strerror}") from None
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
        raise ControlError(f"control directory {directory} is not a directory of this "
                           f"user (uid {os.geteuid()}): refused")
    if info.st_mode & 0o077:
        os.chmod(directory, PRIVATE_DIRECTORY)


def peer_uid(connection: socket.socket) -> int:
    """The user id of the process at the other end of a unix socket (SO_PEERCRED)."""
    credentials = connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                        struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", credentials)
    return uid


class ControlServer:
    """The control socket of one mount; thread-safe."""

    def __init__(self, mountpoint: Path, tree: Tree, prefetcher: Prefetcher | None,
                 metrics: Metrics, timeout: float, directory: Path | None = None) -> None:
        """`prefetcher` is None for a mount without a disk cache (prefetch is refused)."""
        self.path = (directory or runtime_directory()) / socket_name(mountpoint)
        self.tree = tree
        self.prefetcher = prefetcher
        self.timeout = timeout
        self._server: _UnixServer | None = None
        self._runs: set[threading.Event] = set()
        self._lock = threading.Lock()
        self._ended = threading.Condition(self._lock)
        metrics.gauge("control.socket", lambda: str(self.path) if self._server else None)

    def start(self) -> None:
        """Listen; a socket that cannot be made is a warning (the mount serves anyway,
        `idcfs prefetch` then says it cannot reach it)."""
        try:
            self._listen()
        except (ControlError, OSError) as error:
            log.warning("no control socket at %s (%s): idcfs prefetch cannot reach this "
                        "mount", self.path, error)

    def _listen(self) -> None:
        private_directory(self.path.parent)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # left by a daemon that was killed
        server = _UnixServer(str(self.path), _Handler, bind_and_activate=False)
        server.control = self
        try:
            server.server_bind()
            os.chmod(self.path, PRIVATE_SOCKET)
            server.server_activate()
        except OSError:
            server.server_close()
            raise
        self._server = server
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.5},
                         name="idcfs-control", daemon=True).start()
        log.info("control socket %s", self.path)

    def close(self) -> None:
        """Stop listening, stop every run and wait for its batches in flight to land in
        the disk cache (bounded: one request's deadline), remove the socket."""
        server, self._server = self._server, None
        if server is None:
            return
        with self._lock:
            for stop in self._runs:
                stop.set()
            if not self._ended.wait_for(lambda: not self._runs, self.timeout + CLOSE_SLACK_S):
                log.warning("unmounting with %d prefetch runs still busy", len(self._runs))
        server.shutdown()
        server.server_close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def serve(self, request: Message, send: Send, stop: threading.Event) -> None:
        """Carry out one request, telling the client through `send`."""
        with self._lock:
            self._runs.add(stop)
        try:
            self._prefetch(request, send, stop)
        finally:
            with self._lock:
                self._runs.discard(stop)
                self._ended.notify_all()

    def _prefetch(self, request: Message, send: Send, stop: threading.Event) -> None:
        problem = _request_problem(request)
        if problem is None and self.prefetcher is None:
            problem = NO_CACHE_DIR
        if problem is not None or self.prefetcher is None:
            send({"event": "refused", "message": problem})
            return
        send({"event": "started", "timeout": self.timeout})
        try:
            selection = select_tiles(self.tree, request["paths"], request.get("level"), stop,
                                     _every(LISTING_EVERY_S, lambda found: send(
                                         {"event": "listing", "tiles": found})))
        except NotFoundError as error:
            send({"event": "refused", "message": str(error)})
            return
        _send_failures(send, selection.failures)
        tally = self.prefetcher.run(
            selection.tiles, stop, lambda now, failures: _report(send, now, failures),
            request.get("max_bytes"))
        log.info("prefetch of %s: %d tiles, %d cached, %d fetched (%d bytes), %d failed, "
                 "%d left out%s", ", ".join(request["paths"]), tally.tiles, tally.cached,
                 tally.fetched, tally.fetched_bytes, tally.failed, tally.left_out,
                 ", stopped" if tally.stopped else "")
        send({"event": "done", **_tally(tally), "unlisted": len(selection.failures)})


def _request_problem(request: Message) -> str | None:
    """Why a request cannot be carried out, or None."""
    if request.get("command") != "prefetch":
        return f"unknown command {request.get('command')!r}"
    paths, level, max_bytes = request.get("paths"), request.get("level"), request.get("max_bytes")
    if not isinstance(paths, list) or not paths or not all(isinstance(p, str) for p in paths):
        return "paths: a list of paths in the mount"
    if level is not None and (not isinstance(level, int) or level < 0):
        return "level: a whole number >= 0"
    if max_bytes is not None and (not isinstance(max_bytes, int) or max_bytes < 1):
        return "max_bytes: a whole number >= 1"
    return None


def _tally(tally: Tally) -> dict[str, Any]:
    return {**dataclasses.asdict(tally), "to_fetch": tally.to_fetch}


def _report(send: Send, tally: Tally, failures: list[Failure]) -> None:
    _send_failures(send, failures)
    send({"event": "progress", **_tally(tally)})


def _send_failures(send: Send, failures: list[Failure]) -> None:
    for failure in failures:
        send({"event": "failed", "path": failure.path, "reason": failure.reason})


def _every(seconds: float, call: Callable[[int], None]) -> Callable[[int], None]:
    """`call`, but at most once per `seconds`."""
    last = [0.0]

    def throttled(value: int) -> None:
        now = time.monotonic()
        if now - last[0] >= seconds:
            last[0] = now
            call(value)

    return throttled


class _UnixServer(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True
    control: ControlServer


class _Handler(socketserver.StreamRequestHandler):
    """One client: check who it is, read its request, serve it, notice it leaving."""

    server: _UnixServer

    def handle(self) -> None:
        threading.current_thread().name = "idcfs-control-client"
        self.stop = threading.Event()
        self.gone = False
        self.connection.settimeout(REQUEST_WAIT_S)
        try:  # read before answering, so that even a refused client reads the answer
            line = self.rfile.readline(MAX_LINE + 1)
        except OSError:  # no request in time
            return
        self.connection.settimeout(None)  # the watcher waits on it; sends are bounded:
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO,
                                   struct.pack("ll", int(SEND_WAIT_S), 0))
        if peer_uid(self.connection) != os.geteuid():
            self.send({"event": "refused", "message": "only the user who mounted it may "
                       "control this mount"})
            return
        try:
            request = decode(line)
        except ProtocolError as error:
            self.send({"event": "refused", "message": f"bad request: {error}"})
            return
        threading.Thread(target=self._watch, name="idcfs-control-watch", daemon=True).start()
        try:
            self.server.control.serve(request, self.send, self.stop)
        except Exception as error:  # the client hears of it; the daemon goes on
            log.exception("control request failed")
            self.send({"event": "refused", "message": f"internal error: {error}"})
        finally:
            self.stop.set()
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RD)  # wakes the watcher

    def send(self, message: Message) -> None:
        """Write one event; a client that left stops the run."""
        if self.gone:
            return
        try:
            self.wfile.write(encode(message))
            self.wfile.flush()
        except OSError:
            self.gone = True
            self.stop.set()

    def _watch(self) -> None:
        """Wait for the client to close its end (Ctrl-C), then stop the run."""
        with contextlib.suppress(OSError):
            while not self.stop.is_set() and self.connection.recv(4096):
                pass
        self.stop.set()
