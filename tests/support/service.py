"""Start/stop plumbing shared by the test services (Orthanc, rclone, relays)."""

from __future__ import annotations

import atexit
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Self


class Service:
    """Something started in the background and stopped again; `with` does both."""

    def start(self) -> Any:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def free_port() -> int:
    """A loopback TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class ProcessService(Service):
    """A server run as a child process on a free loopback port, its output in a log.

    `start` launches it (`_command` on a fresh port), waits (bounded) until `_answers`,
    and tries another port when it lost the race for the first (its log says
    `port_in_use`); `stop` ends only that child, by its PID. Subclasses give the
    command, the readiness check, the log's place and what a failure raises.
    """

    name = "server"
    port_in_use = "address already in use"
    start_attempts = 3
    log_tail_lines = 30
    failure: type[Exception] = RuntimeError

    def __init__(self, startup_timeout_s: float) -> None:
        self.startup_timeout_s = startup_timeout_s
        self.host = "127.0.0.1"
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._log_path: Path | None = None

    @property
    def pid(self) -> int | None:
        """PID of the child process while it runs."""
        return self._process.pid if self._process else None

    def _command(self) -> list[str]:
        """The command line for `self.port`; may write files it needs."""
        raise NotImplementedError

    def _new_log_path(self) -> Path:
        raise NotImplementedError

    def _answers(self) -> bool:
        raise NotImplementedError

    def _launch_until_ready(self) -> None:
        """Launch on fresh ports until the server answers; `failure` (stopped) if not."""
        atexit.register(self.stop)  # no orphan server if the caller forgets stop()
        for attempt in range(self.start_attempts):
            self._launch()
            if self._wait_until_ready():
                return
            last_attempt = attempt == self.start_attempts - 1
            if last_attempt or not self._lost_port_race():
                break
        message = f"{self.name} did not answer on port {self.port}:\n{self.log_tail()}"
        self.stop()
        raise self.failure(message)

    def _launch(self, cwd: Path | None = None) -> None:
        self._end_process()
        self.port = free_port()
        self._log_path = self._new_log_path()
        command = self._command()
        with self._log_path.open("ab") as log:
            self._process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=cwd or self._log_path.parent,
            )

    def _wait_until_ready(self) -> bool:
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self._process is None or self._process.poll() is not None:
                return False
            if self._answers():
                return True
            time.sleep(0.05)
        return False

    def _lost_port_race(self) -> bool:
        """True when the server exited because another process took its port first."""
        exited = self._process is not None and self._process.poll() is not None
        return exited and self.port_in_use in self.log_tail(lines=8).lower()

    def log_tail(self, lines: int | None = None) -> str:
        """The last lines of the server's own log (stdout and stderr)."""
        if self._log_path is None or not self._log_path.exists():
            return f"(no {self.name} log)"
        text = self._log_path.read_text(errors="replace")
        return "\n".join(text.splitlines()[-(lines or self.log_tail_lines):])

    def _end_process(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
