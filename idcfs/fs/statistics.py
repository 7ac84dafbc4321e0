"""The statistics file (`/.idcfs-stats.json`): every counter of the mount, the source
and its server (never a credential), the quota state, and uptime, rendered afresh at
each open. `idcfs stats` reads nothing else. docs/SEMANTICS.md, "Statistics", says what
each entry means and the sums they make.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

from idcfs.fs.nodes import LiveFile, json_bytes
from idcfs.metrics import STATS_FILE, Metrics
from idcfs.source.base import FrameSource
from idcfs.source.quota import QuotaWatcher

FORMAT = 1  # the file's layout version; `idcfs stats` reads this one


class MountStatistics:
    """The document of one mount's statistics file."""

    def __init__(self, metrics: Metrics, source: FrameSource, kind: str,
                 quota: QuotaWatcher | None = None) -> None:
        self.metrics = metrics
        self.source = source
        self.kind = kind
        self.quota = quota
        self._started = time.monotonic()
        self._started_wall = time.time()

    def file(self) -> LiveFile:
        return LiveFile(STATS_FILE, self.render)

    def render(self) -> bytes:
        return json_bytes(self.document())

    def document(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            **self.metrics.snapshot(),
            "format": FORMAT,
            "started_at": dt.datetime.fromtimestamp(self._started_wall, dt.UTC).isoformat(
                timespec="seconds"),
            "uptime_s": round(time.monotonic() - self._started, 1),
            "source": {"kind": self.kind, "description": self.source.description,
                       **self.source.statistics()},
        }
        if self.quota is not None:
            document["quota"] = self.quota.statistics()
        return document
