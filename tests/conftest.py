"""Shared fixtures: a real Orthanc with generated and real slides, and real idcfs mounts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest_orthanc import orthanc, relay, test_slides  # noqa: F401  (fixtures)

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


@pytest.fixture
def mount_idcfs(tmp_path: Path) -> Iterator[Callable[..., Mount]]:
    """A factory: mount_idcfs(url, *options) mounts in the background and returns a Mount."""
    mounts: list[Mount] = []

    def start(url: str | None, *options: str) -> Mount:
        number = len(mounts)
        path = tmp_path / f"mnt{number}"
        path.mkdir()
        log_file = tmp_path / f"idcfs{number}.log"
        pid_file = tmp_path / f"idcfs{number}.pid"
        url_args = ["--url", url] if url else []
        result = run_idcfs(
            "mount", *url_args, "--log-file", str(log_file), "--pid-file", str(pid_file),
            *options, str(path),
        )
        assert result.returncode == 0, result.stderr
        mount = Mount(path, log_file, int(pid_file.read_text()))
        mounts.append(mount)
        return mount

    start.mounts = mounts  # type: ignore[attr-defined]
    yield start
    for mount in mounts:
        stop_mount(mount)
