"""When a mount really serves, and telling a service manager so (systemd's notify protocol).

A mount is ready once the FUSE loop runs *and* its root answers a stat and a listing
through the kernel, the path every reader takes; only then is `on_ready` called (the
background parent's "ok", which `idcfs mount` and mount(8) wait for, and --pid-file)
and READY=1 sent, so `Type=notify` units (systemd/idcfs@.service) and units ordered
after them start when tiles can be read. A STATUS= line with the request counts
follows every `STATUS_INTERVAL_S`, and STOPPING=1 when the mount stops. The datagrams
are sdnotify's (to $NOTIFY_SOCKET); without NOTIFY_SOCKET nothing is sent.

The look at the root waits at most the mount's timeout: a root that does not answer by
then fails the mount (`Readiness.failure`), never a wait without end.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sdnotify
import trio

log = logging.getLogger(__name__)

STATUS_INTERVAL_S = 2.0


class ServiceNotifier:
    """READY=1, STATUS= and STOPPING=1 to the service manager, when there is one."""

    def __init__(self, notifier: sdnotify.SystemdNotifier | None) -> None:
        self._notifier = notifier

    @classmethod
    def from_environment(cls) -> ServiceNotifier:
        """A notifier for $NOTIFY_SOCKET, which is taken out of the environment: the
        processes idcfs starts (fusermount3, the page-fill helper) are not the service."""
        if not os.environ.get("NOTIFY_SOCKET"):
            return cls(None)
        notifier = sdnotify.SystemdNotifier()
        del os.environ["NOTIFY_SOCKET"]
        return cls(notifier)

    @property
    def enabled(self) -> bool:
        return self._notifier is not None

    def ready(self, status: str) -> None:
        self._send(f"READY=1\nSTATUS={status}")

    def status(self, status: str) -> None:
        self._send(f"STATUS={status}")

    def stopping(self) -> None:
        self._send("STOPPING=1\nSTATUS=unmounting")

    def _send(self, message: str) -> None:
        if self._notifier is not None:
            self._notifier.notify(message)  # best effort: sdnotify drops socket errors


def status_line(statistics: Mapping[str, Any]) -> str:
    """The request counts of a statistics snapshot (the statistics file's content), in
    one line: reads answered, frames fetched, requests sent to the server."""
    source = statistics.get("source") or {}
    requests = statistics.get("requests_sent")
    if requests is None:  # a bucket or folder source counts requests by kind
        requests = sum((source.get("requests") or {}).values())
    reads = (statistics.get("fuse") or {}).get("reads_served", 0)
    frames = statistics.get("frames_fetched", 0)
    return f"serving: {reads} reads answered, {frames} frames fetched, {requests} requests sent"


def _look_at_root(mountpoint: Path) -> None:
    os.stat(mountpoint)
    os.listdir(mountpoint)


@dataclass
class Readiness:
    """The task that waits for the mount to answer, announces it, then reports status."""

    mountpoint: Path
    on_ready: Callable[[], None]
    notifier: ServiceNotifier
    statistics: Callable[[], Mapping[str, Any]]
    timeout: float
    failure: str | None = None  # why the mount never became ready

    async def run(self, serving: trio.CancelScope) -> None:
        """Once the root answers: on_ready, READY=1, then STATUS= lines until cancelled.
        A root that fails or does not answer within the timeout cancels `serving`."""
        self.failure = await self._wait_for_root()
        if self.failure is not None:
            log.error("%s", self.failure)
            serving.cancel()
            return
        self.on_ready()
        self.notifier.ready(status_line(self.statistics()))
        if not self.notifier.enabled:
            return
        while True:
            await trio.sleep(STATUS_INTERVAL_S)
            self.notifier.status(status_line(self.statistics()))

    async def _wait_for_root(self) -> str | None:
        with trio.move_on_after(self.timeout):
            try:
                await trio.to_thread.run_sync(_look_at_root, self.mountpoint,
                                              abandon_on_cancel=True)
            except OSError as error:
                return f"the mount at {self.mountpoint} does not answer: {error}"
            return None
        return f"the mount at {self.mountpoint} did not answer within {self.timeout:g} s"
