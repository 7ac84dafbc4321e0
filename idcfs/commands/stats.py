"""`idcfs stats MOUNTPOINT [--json] [--watch]`: what a mount is doing, as a table.

It reads the mount's statistics file (`MOUNTPOINT/.idcfs-stats.json`, rendered afresh at
each open by the daemon) and nothing else: no connection to the daemon, the server or
the cache. `--json` prints the file as is; `--watch` reads and prints it again every
second until Ctrl-C. What each figure means is docs/SEMANTICS.md, "Statistics".
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TextIO

from idcfs.metrics import STATS_FILE

WATCH_INTERVAL_S = 1.0
CLEAR_SCREEN = "\x1b[H\x1b[2J"
BYTE_UNITS = ("B", "KB", "MB", "GB", "TB")
LABEL_WIDTH = 15
TILE_SOURCES = ("memory", "staged", "waited", "disk", "source", "failed")  # table order
Document = dict[str, Any]


class StatsError(Exception):
    """The statistics file cannot be read (one line saying why)."""


def add_parser(commands: argparse._SubParsersAction) -> None:
    """The `stats` command's arguments (a subcommand of `idcfs`)."""
    stats = commands.add_parser(
        "stats", help="show what a mount is doing",
        description="Show a mount's statistics: requests, bytes, cache hit rates, latency "
        "percentiles, requests in flight, read-ahead, errors, the quota, the source and "
        "uptime. Reads MOUNTPOINT/.idcfs-stats.json, nothing else.")
    stats.add_argument("mountpoint", type=Path, metavar="MOUNTPOINT")
    stats.add_argument("--json", action="store_true", help="print the statistics as JSON")
    stats.add_argument("--watch", action="store_true",
                       help="print them again every second until Ctrl-C")


def read_statistics(mountpoint: Path) -> Document:
    """The statistics of the mount at `mountpoint`; StatsError when it has none."""
    path = mountpoint / STATS_FILE
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        raise StatsError(f"{mountpoint} is not an idcfs mount (no {STATS_FILE})") from None
    except OSError as error:
        raise StatsError(f"cannot read {path}: {error.strerror or error}") from None
    try:
        document = json.loads(text)
    except ValueError:
        raise StatsError(f"{path} is not an idcfs statistics file") from None
    if not isinstance(document, dict):
        raise StatsError(f"{path} is not an idcfs statistics file")
    return document


def run(mountpoint: Path, as_json: bool, watch: bool, out: TextIO = sys.stdout,
        interval_s: float = WATCH_INTERVAL_S) -> None:
    """Print the statistics once, or every `interval_s` until Ctrl-C (then return).
    StatsError when they cannot be read."""
    show: Callable[[Document], str] = as_json_text if as_json else lambda doc: table(
        doc, mountpoint)
    document = read_statistics(mountpoint)
    if not watch:
        out.write(show(document))
        return
    clear = CLEAR_SCREEN if out.isatty() else "\n"
    try:
        while True:
            out.write(clear + show(document))
            out.flush()
            time.sleep(interval_s)
            document = read_statistics(mountpoint)
    except KeyboardInterrupt:
        out.write("\n")


def as_json_text(document: Document) -> str:
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


def table(document: Document, mountpoint: Path | None = None) -> str:
    """The human-readable table of a statistics document."""
    rows = [*_header(document, mountpoint), *_requests(document), *_caches(document),
            *_activity(document)]
    return "".join(f"{label:<{LABEL_WIDTH}}{text}\n" for label, text in rows)


# -- sections ------------------------------------------------------------------------

Rows = Iterable[tuple[str, str]]


def _header(doc: Document, mountpoint: Path | None) -> Rows:
    source = doc.get("source", {})
    started = doc.get("started_at", "?")
    yield "mount", f"{mountpoint or ''}  up {_duration(doc.get('uptime_s', 0))} " \
                   f"(since {started})".lstrip()
    yield "source", f"{source.get('kind', '?')}: {source.get('description', '?')}"
    if source.get("server"):
        yield "server", str(source["server"])
    yield from _quota(doc.get("quota"), source.get("quota_exhausted_until"))


def _quota(quota: Document | None, exhausted_until: str | None) -> Rows:
    if exhausted_until:
        yield "quota", f"exhausted: no request is sent until {exhausted_until}"
    if quota is None:
        return
    if "fraction_used" in quota:
        used = f"{100 * quota['fraction_used']:.1f} % of today's quota used"
        detail = [_bytes(quota["bytes_used"]) if "bytes_used" in quota else "",
                  str(quota.get("date", "")), f"asked {quota.get('age_s', '?')} s ago"]
        yield "quota", f"{used} ({', '.join(part for part in detail if part)})"
    else:
        yield "quota", "not known yet"
    if quota.get("error"):
        yield "", f"last ask failed: {quota['error']}"


def _requests(doc: Document) -> Rows:
    http = doc.get("http")
    if http is not None:
        kinds = http.get("requests", {})
        parts = [f"{kind} {count}" for kind, count in kinds.items()]
        parts.append(f"retries {http.get('retries', 0)}")
        yield "requests", f"{doc.get('requests_sent', 0)} sent = {' + '.join(parts)}; " \
                          f"{http.get('in_flight', 0)} in flight, " \
                          f"{_bytes(http.get('bytes_received', 0))} received"
        if http.get("failed"):
            yield "", f"failed: {_by_kind(http['failed'])}"
        if http.get("not_sent"):
            yield "", f"not sent: {_by_kind(http['not_sent'])}"
    store = doc.get("source", {}).get("requests")
    if isinstance(store, dict):
        yield "requests", f"{_by_kind(store) or 'none'}; retries " \
                          f"{doc['source'].get('retries', 0)}, " \
                          f"{_bytes(doc['source'].get('bytes_received', 0))} received"
    frames = doc.get("frame_requests", {})
    fetched = doc.get("frames_fetched", 0)
    succeeded = frames.get("sent", 0) - frames.get("failed", 0)
    per_request = f" ({fetched / succeeded:.1f} a request)" if succeeded else ""
    yield "frame requests", f"{frames.get('sent', 0)} sent, {frames.get('failed', 0)} " \
                            f"failed, {frames.get('in_flight', 0)} in flight; " \
                            f"{fetched} frames{per_request}, " \
                            f"{_bytes(frames.get('bytes_received', 0))}"
    latency = frames.get("latency", {})
    if latency.get("count"):
        yield "latency", f"p50 {latency['p50_ms']:.1f} ms  p90 {latency['p90_ms']:.1f} ms  " \
                         f"p99 {latency['p99_ms']:.1f} ms  max {latency['max_ms']:.1f} ms " \
                         f"({latency['count']} requests)"
    else:
        yield "latency", "no frame request yet"


def _caches(doc: Document) -> Rows:
    reads = doc.get("tile_reads", {})
    total = sum(reads.values())
    if total:
        order = [*TILE_SOURCES, *sorted(set(reads) - set(TILE_SOURCES))]
        shares = [f"{where} {_percent(reads[where], total)}" for where in order
                  if where in reads]
        yield "tile reads", f"{total}: {'  '.join(shares)}"
    else:
        yield "tile reads", "none yet"
    memory = doc.get("memory_cache", {})
    yield "memory cache", _hit_rate(memory.get("hits", 0), memory.get("lookups", 0)) + \
        f"; {_bytes(memory.get('bytes', 0))} of {_bytes(memory.get('max_bytes', 0))}"
    disk = doc.get("disk_cache", {})
    yield "disk cache", _hit_rate(disk.get("hits", 0), disk.get("lookups", 0))
    page = doc.get("page_cache", {})
    hits, misses = page.get("hits", 0), page.get("misses", 0)
    yield "page cache", _hit_rate(hits, hits + misses, "closed files")


def _activity(doc: Document) -> Rows:
    ahead = doc.get("readahead", {})
    landed = ahead.get("landed_from_disk", 0) + ahead.get("landed_from_source", 0)
    yield "read-ahead", f"{ahead.get('streams', 0)} streams, " \
                        f"{ahead.get('batches_queued', 0)} batches queued; " \
                        f"{ahead.get('scheduled_tiles', 0)} tiles scheduled, {landed} landed " \
                        f"({ahead.get('landed_from_disk', 0)} from disk), " \
                        f"{ahead.get('failed', 0)} failed"
    fuse = doc.get("fuse", {})
    yield "files", f"{fuse.get('opens', 0)} opens ({fuse.get('open_handles', 0)} open now), " \
                   f"{fuse.get('reads_served', 0)} reads, " \
                   f"{_bytes(fuse.get('bytes_served', 0))} served"
    yield "errors", _by_kind(doc.get("errors", {})) or "none"


# -- formatting ----------------------------------------------------------------------


def _by_kind(counts: dict[str, int]) -> str:
    return ", ".join(f"{kind} {count}" for kind, count in counts.items())


def _percent(part: float, whole: float) -> str:
    return f"{100 * part / whole:.1f} %" if whole else "-"


def _hit_rate(hits: int, lookups: int, of: str = "lookups") -> str:
    return f"{_percent(hits, lookups)} hits ({hits} of {lookups} {of})"


def _bytes(count: float) -> str:
    value, unit = float(count), 0
    while value >= 1024 and unit < len(BYTE_UNITS) - 1:
        value, unit = value / 1024, unit + 1
    return f"{value:.0f} B" if unit == 0 else f"{value:.1f} {BYTE_UNITS[unit]}"


def _duration(seconds: float) -> str:
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
