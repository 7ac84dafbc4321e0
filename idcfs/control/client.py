"""The client's end of the control socket: find a mount's daemon from a path in the
mount, send it one request, read its events.

The socket's path is read from the mount's statistics file (`control.socket`), so the
client needs no environment of the daemon's. Nothing waits without bound: connecting
gives up after `CONNECT_TIMEOUT_S`, and reading after `idle_s` without an event (the
daemon sends one at least every second while it fetches, and after each directory it
lists; it tells its --timeout first, which bounds one listing).
"""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Iterator
from pathlib import Path

from idcfs.control.protocol import MAX_LINE, Message, ProtocolError, decode, encode
from idcfs.errors import IdcfsError

STATS_FILE = ".idcfs-stats.json"
CONNECT_TIMEOUT_S = 5.0
FIRST_EVENT_S = 30.0  # before the daemon has told its --timeout


class ControlClientError(IdcfsError):
    """The daemon cannot be reached or stopped answering; the message is one line."""


def control_socket(mountpoint: Path) -> Path:
    """The control socket a mount publishes in its statistics file."""
    try:
        statistics = json.loads((mountpoint / STATS_FILE).read_bytes())
    except (OSError, ValueError) as error:
        raise ControlClientError(f"cannot read {mountpoint / STATS_FILE}: {error}") from None
    published = (statistics.get("control") or {}).get("socket")
    if not published:
        raise ControlClientError(f"the daemon of {mountpoint} has no control socket "
                                 "(an older idcfs, or see its log); remount it")
    return Path(published)


class Connection:
    """One request to a daemon and the events it answers with; a context manager
    (leaving it closes the connection, which stops what was asked for)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.idle_s = FIRST_EVENT_S
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._socket.settimeout(CONNECT_TIMEOUT_S)
        try:
            self._socket.connect(str(path))
        except OSError as error:
            self._socket.close()
            raise ControlClientError(f"cannot reach the daemon at {path}: "
                                     f"{error.strerror or error}") from None
        self._lines = self._socket.makefile("rb")

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def events(self, request: Message) -> Iterator[Message]:
        """Send `request`, then yield each event until the daemon closes."""
        try:
            self._socket.sendall(encode(request))
        except OSError as error:
            raise ControlClientError(f"cannot send to the daemon: {error}") from None
        while True:
            self._socket.settimeout(self.idle_s)
            try:
                line = self._lines.readline(MAX_LINE + 1)
            except TimeoutError:
                raise ControlClientError(
                    f"the daemon sent nothing for {self.idle_s:g} s; see its log") from None
            except OSError as error:
                raise ControlClientError(f"lost the daemon: {error}") from None
            if not line:
                return
            try:
                event = decode(line)
            except ProtocolError as error:
                raise ControlClientError(f"the daemon's answer is not understood: "
                                         f"{error}") from None
            if event.get("event") == "started":
                self.idle_s = 2 * float(event.get("timeout") or FIRST_EVENT_S) + 10
            yield event

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._lines.close()
            self._socket.close()
