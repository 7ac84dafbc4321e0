"""The mountpoint around a mount's life: checked before mounting, cleared after a crash.

A daemon killed with SIGKILL (or by the OOM killer) leaves its mount behind, dead:
every access fails with ENOTCONN ("Transport endpoint is not connected") until it is
unmounted. `idcfs unmount` clears such a mount (a lazy unmount when something still
holds it; `-z` detaches a live mount in use the same way), and `idcfs mount` clears a
dead idcfs mount in its way by itself. A dead mount of another filesystem is not ours
to clear: the error says how.

libfuse 3 mounts over a non-empty directory without a word (and rejects the old
`nonempty` option), hiding what is there; idcfs refuses unless `-o nonempty` is given,
and takes that option out before the options reach libfuse.

Nothing here waits without bound: looking at a mount whose daemon is alive but stuck
gives up after `PROBE_TIMEOUT_S`, and fusermount3 is given `UNMOUNT_TIMEOUT_S`.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import subprocess
import threading
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from idcfs.errors import IdcfsError

NONEMPTY = "nonempty"
IDCFS_FSTYPE = "fuse.idcfs"
PROBE_TIMEOUT_S = 5.0
UNMOUNT_TIMEOUT_S = 30.0
DEAD_ERRNOS = frozenset({errno.ENOTCONN, errno.ECONNABORTED})


class MountpointError(IdcfsError):
    """The mountpoint cannot be used or cleared; the message is one line for the user."""


class State(Enum):
    """What a look at a mountpoint found."""

    ALIVE = "alive"  # it answered
    DEAD = "dead"  # ENOTCONN: its daemon is gone
    STUCK = "stuck"  # no answer within PROBE_TIMEOUT_S: a daemon that is alive but busy


@dataclass(frozen=True)
class MountEntry:
    """One line of /proc/self/mountinfo: where, and what filesystem."""

    path: str
    fstype: str


@dataclass(frozen=True)
class Prepared:
    """A mountpoint ready to mount on: its path, the options for libfuse, and a note
    for the user when something had to be done first (a dead mount cleared)."""

    path: Path
    fuse_options: list[str]
    note: str | None = None


def mount_entry(path: Path) -> MountEntry | None:
    """The mount at exactly `path`, by /proc/self/mountinfo (which lists dead FUSE
    mounts too); the last one when several are stacked there."""
    found = None
    target = str(path)
    with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as mounts:
        for line in mounts:
            head, _, tail = line.partition(" - ")
            fields = head.split(" ")
            if len(fields) > 4 and _unescape(fields[4]) == target:
                found = MountEntry(target, tail.split(" ", 1)[0])
    return found


def is_mounted(path: Path) -> bool:
    """Whether `path` is a mount point (dead FUSE mounts included)."""
    return mount_entry(path) is not None


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda match: chr(int(match.group(1), 8)), field)


def absolute(path: Path) -> Path:
    """`path` made absolute without looking into it: only its parent is resolved, so a
    dead or stuck mount at `path` itself is never touched (a symlink that is not a
    mount point is followed)."""
    lexical = Path(os.path.abspath(path))
    candidate = lexical.parent.resolve() / lexical.name
    if mount_entry(candidate) is None and candidate.is_symlink():
        return candidate.resolve()
    return candidate


def probe(path: Path, timeout: float = PROBE_TIMEOUT_S) -> State:
    """Whether the filesystem mounted at `path` answers, by a statfs in a thread of its
    own (a stuck daemon must not hold the command: the thread is left behind). Not
    stat: the kernel answers that from attributes it cached while the daemon lived."""
    outcome: list[State] = []

    def look() -> None:
        try:
            os.statvfs(path)
            outcome.append(State.ALIVE)
        except OSError as error:
            outcome.append(State.DEAD if error.errno in DEAD_ERRNOS else State.ALIVE)

    thread = threading.Thread(target=look, name="idcfs-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    return outcome[0] if outcome else State.STUCK


def unmount(path: Path, lazy: bool = False) -> str | None:
    """Unmount `path`; a dead mount that something still holds is detached lazily (it
    goes once the last user lets go), and so is any mount when `lazy` (`idcfs unmount
    -z`: a shell still sits in it). Returns a note when a dead mount was detached;
    MountpointError (one line) when the mount cannot be unmounted."""
    if lazy:
        failure = _run_unmount(path, lazy=True)
        if failure is not None:
            raise MountpointError(f"cannot unmount {path}: {failure}")
        return None
    failure = _run_unmount(path, lazy=False)
    if failure is None:
        return None
    if probe(path) is not State.DEAD:
        raise MountpointError(f"cannot unmount {path}: {failure}")
    lazy_failure = _run_unmount(path, lazy=True)
    if lazy_failure is not None:
        raise MountpointError(f"cannot unmount the dead mount {path}: {lazy_failure}")
    return f"{path} was dead and still in use; detached it (lazy unmount)"


def _run_unmount(path: Path, lazy: bool) -> str | None:
    """Run fusermount3 -u (or umount); None when it worked, else why not."""
    tool = shutil.which("fusermount3") or shutil.which("fusermount")
    if tool:
        command = [tool, "-u", *(["-z"] if lazy else []), str(path)]
    else:
        command = ["umount", *(["-l"] if lazy else []), str(path)]
    try:
        result = subprocess.run(command, capture_output=True, text=True,
                                timeout=UNMOUNT_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"{command[0]}: {error}"
    if result.returncode == 0:
        return None
    lines = result.stderr.strip().splitlines()
    return lines[-1] if lines else f"{command[0]} exited with {result.returncode}"


def prepare(path: Path, fuse_options: list[str]) -> Prepared:
    """Check `path` for a mount and clear a dead idcfs mount there; MountpointError
    (one line) when it is in use, not a directory, or not empty without -o nonempty."""
    where = absolute(path)
    note = _clear_dead_mount(where)
    if not where.is_dir():
        raise MountpointError(f"mountpoint {path} does not exist or is not a directory")
    options = [option for option in fuse_options if option and option != NONEMPTY]
    if NONEMPTY not in fuse_options and _has_entries(where):
        raise MountpointError(f"mountpoint {path} is not empty (-o nonempty mounts over "
                              "what it holds, hiding it)")
    return Prepared(where, options, note)


def _clear_dead_mount(path: Path) -> str | None:
    """Nothing when `path` is not a mount point; a note once a dead idcfs mount there
    is cleared; MountpointError when a live mount or another filesystem's is there."""
    entry = mount_entry(path)
    if entry is None:
        return None
    state = probe(path)
    if state is not State.DEAD:
        raise MountpointError(f"{path} is already mounted ({entry.fstype})")
    if entry.fstype != IDCFS_FSTYPE:
        raise MountpointError(f"{path} is a dead {entry.fstype} mount; clear it with "
                              f"`fusermount3 -u {path}` (or `-uz` when busy)")
    lazy = unmount(path)
    return f"cleared the dead idcfs mount at {path} (its daemon had stopped)" + (
        "; detached lazily, it was still in use" if lazy else "")


def _has_entries(path: Path) -> bool:
    with os.scandir(path) as entries:
        return next(entries, None) is not None
