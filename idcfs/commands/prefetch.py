"""`idcfs prefetch PATH...`: warm a mount's disk cache before a job.

The work is the daemon's (`idcfs.control.server` → `idcfs.fetch.prefetch`, through the
mount's own loader): this process finds the mount the paths are in, sends them over
the mount's control socket, draws a progress bar from the daemon's events (rich: tiles,
MB, rate, ETA; only on a terminal), lists each failure on stderr and prints a summary.
Ctrl-C closes the connection: the daemon starts no new request, what it fetched stays
cached, and the same command resumes (cached tiles are skipped without a request).

Exit codes: 0 every wanted tile is in the disk cache; 1 some failed (listed) or the
daemon was lost; 2 a usage or set-up error (one line: not a path in an idcfs mount,
a mount without --cache-dir); 130 interrupted.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from idcfs.cli import fail, parse_size
from idcfs.control.client import Connection, ControlClientError, control_socket
from idcfs.fuse.mountpoint import IDCFS_FSTYPE, mount_entry

if TYPE_CHECKING:
    from rich.console import Console

FAILED = 1
INTERRUPTED = 130  # 128 + SIGINT, as shells report it
MB = 1e6


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "prefetch",
        help="warm a mount's disk cache with series, levels or tiles",
        description="Fetch the tiles under PATH... (series, level or tile paths in an idcfs "
        "mount) into that mount's disk cache (--cache-dir), through the mount's own "
        "daemon: one request per run of up to 64 frames, several in parallel. Tiles "
        "already cached are skipped without a request, so an interrupted run resumes. "
        "Exit code 0 only when every tile was fetched; failures are listed.",
    )
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    parser.add_argument("--level", type=_level, metavar="N",
                        help="only the tiles of pyramid level N (level-N/)")
    parser.add_argument("--max-size", type=parse_size, metavar="SIZE", dest="max_size",
                        help="stop once the disk cache holds SIZE of these tiles, cached "
                        "ones included (e.g. 500M, 2G); a second run with the same SIZE "
                        "fetches nothing")


def _level(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"bad level {text!r} (a whole number >= 0)")
    return int(text)


def run(args: argparse.Namespace) -> int:
    """The exit code of `idcfs prefetch`."""
    try:
        return _run(args)
    except KeyboardInterrupt:  # before the daemon was asked anything
        return INTERRUPTED


def _run(args: argparse.Namespace) -> int:
    mountpoint, relative = _paths_in_one_mount(args.paths)
    try:
        socket_path = control_socket(mountpoint)
        connection = Connection(socket_path)
    except ControlClientError as error:
        fail(str(error))
    request = {"command": "prefetch", "paths": relative, "level": args.level,
               "max_bytes": args.max_size}
    from rich.console import Console  # here: `idcfs mount` need not load rich

    view = ProgressView(Console(stderr=True, highlight=False), mountpoint)
    try:
        with connection, view:
            for event in connection.events(request):
                view.show(event)
    except KeyboardInterrupt:
        view.interrupted()
        return INTERRUPTED
    except ControlClientError as error:
        view.lost(str(error))
        return FAILED
    return view.exit_code()


def _paths_in_one_mount(paths: list[Path]) -> tuple[Path, list[str]]:
    """The idcfs mount every path is in, and each path relative to it."""
    found: list[tuple[Path, str]] = []
    for path in paths:
        try:
            resolved = Path(os.path.realpath(path, strict=True))
        except OSError as error:
            if error.errno in (errno.ENOENT, errno.ENOTDIR):
                fail(f"{path}: no such file or directory")
            print(f"idcfs: error: {path}: {error.strerror}", file=sys.stderr)
            raise SystemExit(FAILED) from None
        found.append(_mount_of(path, resolved))
    mountpoints = {mountpoint for mountpoint, _ in found}
    if len(mountpoints) > 1:
        fail("the paths are in different mounts: "
             + ", ".join(sorted(map(str, mountpoints))) + " (one prefetch per mount)")
    return found[0][0], [relative for _, relative in found]


def _mount_of(given: Path, resolved: Path) -> tuple[Path, str]:
    """The mount nearest above `resolved` must be idcfs's; (mountpoint, relative path)."""
    for candidate in (resolved, *resolved.parents):
        entry = mount_entry(candidate)
        if entry is None:
            continue
        if entry.fstype != IDCFS_FSTYPE:
            break
        return candidate, resolved.relative_to(candidate).as_posix()
    fail(f"{given} is not in an idcfs mount")


class ProgressView:
    """The progress bar, failures and summary of one run, from the daemon's events."""

    def __init__(self, console: Console, mountpoint: Path) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeRemainingColumn,
        )

        self.console = console
        self.mountpoint = mountpoint
        self.tally: dict[str, Any] | None = None
        self.done: dict[str, Any] | None = None
        self.failures = 0
        self.started_at = time.monotonic()
        self._progress = Progress(
            SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
            MofNCompleteColumn(), TextColumn("tiles {task.fields[megabytes]:,.1f} MB "
                                             "{task.fields[rate]:,.1f} MB/s"),
            TimeRemainingColumn(), console=console, disable=not console.is_terminal,
        )
        self._task = self._progress.add_task("finding tiles", total=None, megabytes=0.0,
                                             rate=0.0)

    def __enter__(self) -> ProgressView:
        self._progress.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._progress.stop()

    def show(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "refused":
            self._progress.stop()
            fail(str(event.get("message")))
        if kind == "listing":
            self._progress.update(self._task, description=f"finding tiles: {event['tiles']:,}")
        elif kind == "failed":
            self.failures += 1
            self._error(f"{self.mountpoint / event['path']}: {event['reason']}")
        elif kind in ("progress", "done"):
            self._update(event)
            if kind == "done":
                self.done = event

    def _update(self, tally: dict[str, Any]) -> None:
        if self.tally is None:  # the plan: the bar is over the tiles to fetch
            self.started_at = time.monotonic()
            self._progress.update(self._task, description=f"{tally['cached']:,} cached, "
                                  "fetching", total=tally["to_fetch"])
        self.tally = tally
        elapsed = max(time.monotonic() - self.started_at, 1e-3)
        self._progress.update(self._task, completed=tally["fetched"] + tally["failed"],
                              megabytes=tally["fetched_bytes"] / MB,
                              rate=tally["fetched_bytes"] / MB / elapsed)

    def exit_code(self) -> int:
        done = self.done
        if done is None:
            self.lost("the daemon closed the connection before the end (unmounted?)")
            return FAILED
        self._progress.stop()
        print(self._summary(done))
        if done["stopped"]:
            self._error("error: the daemon stopped before the end (unmounted?); run the "
                        "same command again to resume")
            return FAILED
        return FAILED if done["failed"] or done["unlisted"] else 0

    def interrupted(self) -> None:
        self._progress.stop()
        fetched = self.tally["fetched"] if self.tally else 0
        self._error(f"interrupted: {fetched:,} tiles fetched so far stay in the disk cache; "
                    "run the same command again to resume")

    def lost(self, reason: str) -> None:
        self._progress.stop()
        self._error(f"error: {reason}")

    def _summary(self, done: dict[str, Any]) -> str:
        seconds = time.monotonic() - self.started_at
        megabytes = done["fetched_bytes"] / MB
        parts = [f"{done['fetched']:,} fetched ({megabytes:,.1f} MB in {seconds:.1f} s)",
                 f"{done['cached']:,} already cached", f"{done['failed']:,} failed"]
        if done["left_out"]:
            parts.append(f"{done['left_out']:,} left out by --max-size")
        if done["unlisted"]:
            parts.append(f"{done['unlisted']:,} directories could not be listed")
        return f"idcfs prefetch: {done['tiles']:,} tiles: " + ", ".join(parts)

    def _error(self, line: str) -> None:
        self.console.print(f"idcfs: {line}", markup=False, highlight=False, soft_wrap=True)

