"""Starting and stopping real idcfs mounts from tests and benchmarks (by PID, bounded)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from idcfs.cli import is_mounted

MOUNT_TIMEOUT = 120


@dataclass
class Mount:
    """A running idcfs mount started by a test."""

    path: Path
    log_file: Path
    pid: int

    def log(self) -> str:
        return self.log_file.read_text() if self.log_file.exists() else ""


def idcfs_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "idcfs", *args]


def run_idcfs(*args: str, timeout: float = MOUNT_TIMEOUT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(idcfs_command(*args), capture_output=True, text=True, timeout=timeout)


def stop_mount(mount: Mount) -> None:
    """Unmount and wait (bounded) for the daemon we started to exit; kill it by PID if not."""
    if is_mounted(mount.path):
        subprocess.run(["fusermount3", "-u", "-z", str(mount.path)], capture_output=True)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and _alive(mount.pid):
        time.sleep(0.05)
    if _alive(mount.pid):
        os.kill(mount.pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def named(slides: list, name: str):  # type: ignore[no-untyped-def]
    """The generated slide called `name`."""
    return next(slide for slide in slides if slide.name == name)


def series_dir(mount_path: Path, slide) -> Path:  # type: ignore[no-untyped-def]
    """A slide's series directory under studies/ of a mount."""
    return mount_path / "studies" / slide.study_uid / slide.series_uid
