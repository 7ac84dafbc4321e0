"""systemd: the unit's own commands run as systemd runs them, Type=notify through a
socket the test listens on (READY=1 once the mount answers, STATUS= lines with request
counts, STOPPING=1 on SIGTERM), the pre-start on a dead mountpoint, the unit files
checked by systemd-analyze (issue 14, section 2); `idcfs unmount -z` (section 6).
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from idcfs.cli import is_mounted
from tests.support import one_slide
from tests.support.mounting import Mount, run_idcfs, series_dir
from tests.support.orthanc import OrthancServer
from tests.support.slides import GeneratedSlide
from tests.support.units import REPOSITORY, UnitRunner, read_unit

WAIT_S = 60.0
TILE = "level-0/0_0.jpg"


slide = one_slide.slide  # the module's fixtures
server = one_slide.server


@pytest.fixture(scope="module")
def expected(server: OrthancServer, slide: GeneratedSlide) -> bytes:
    return one_slide.stored_tile(server, slide, TILE)


class NotifyListener:
    """The service manager's end of NOTIFY_SOCKET: a unix datagram socket."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socket.bind(str(path))
        self.messages: list[dict[str, str]] = []

    def wait_for(self, wanted: Callable[[dict[str, str]], bool], what: str) -> dict[str, str]:
        """The first message (KEY=VALUE lines) `wanted` accepts, within WAIT_S."""
        deadline = time.monotonic() + WAIT_S
        while True:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no {what} within {WAIT_S:g} s; got {self.messages}"
            self.socket.settimeout(remaining)
            data = self.socket.recv(4096).decode()
            message = dict(line.split("=", 1) for line in data.splitlines() if "=" in line)
            self.messages.append(message)
            if wanted(message):
                return message

    def close(self) -> None:
        self.socket.close()


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[NotifyListener]:
    notify = NotifyListener(tmp_path / "notify.sock")
    yield notify
    notify.close()


@pytest.fixture
def runner(server: OrthancServer, tmp_path: Path) -> UnitRunner:
    """idcfs@<instance>.service for a mountpoint under tmp_path (not made yet: the
    pre-start makes it). The shared options file names a server that does not answer,
    so the mount works only if the instance's own file wins, as the unit promises."""
    path = tmp_path / "mnt" / "idc"
    instance = subprocess.run(["systemd-escape", "-p", str(path)], capture_output=True,
                              text=True, check=True).stdout.strip() if shutil.which(
        "systemd-escape") else str(path).strip("/").replace("/", "-")
    etc_default = tmp_path / "etc-default"
    etc_default.mkdir()
    (etc_default / "idcfs").write_text('IDCFS_OPTIONS="--url http://127.0.0.1:9/none"\n')
    (etc_default / f"idcfs-{instance}").write_text(
        f'IDCFS_OPTIONS="--url {server.dicomweb_url} --readahead-size 0 --timeout 20 '
        f'--log-file {tmp_path / "idcfs.log"}"\n')
    return UnitRunner(read_unit(), instance, path, etc_default)


@pytest.fixture
def services() -> Iterator[list[subprocess.Popen[str]]]:
    """Main processes a test started; stopped (SIGTERM, then SIGKILL) by PID at the end."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(WAIT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(WAIT_S)


def _ready(message: dict[str, str]) -> bool:
    return message.get("READY") == "1"


def _reads_answered(message: dict[str, str]) -> int:
    status = message.get("STATUS", "")
    return int(status.split(" reads answered")[0].rsplit(" ", 1)[-1]) if "reads" in status else -1


def _start(runner: UnitRunner, listener: NotifyListener,
           services: list[subprocess.Popen[str]]) -> subprocess.Popen[str]:
    process = runner.start(listener.path)
    services.append(process)
    listener.wait_for(_ready, "READY=1")
    # READY=1 means the mount answers now: mounted, and the root lists at once.
    assert process.poll() is None and is_mounted(runner.path)
    assert "studies" in os.listdir(runner.path)
    return process


def _stop_with_sigterm(process: subprocess.Popen[str], listener: NotifyListener,
                       path: Path) -> None:
    process.send_signal(signal.SIGTERM)
    listener.wait_for(lambda message: message.get("STOPPING") == "1", "STOPPING=1")
    assert process.wait(WAIT_S) == 0, process.stderr.read() if process.stderr else ""
    assert not is_mounted(path)


def test_notify_ready_status_and_stopping(
    runner: UnitRunner, listener: NotifyListener, services: list[subprocess.Popen[str]],
    slide: GeneratedSlide, expected: bytes,
) -> None:
    assert runner.unit.settings["Type"] == "notify"
    process = _start(runner, listener, services)
    assert (series_dir(runner.path, slide) / TILE).read_bytes() == expected
    counted = listener.wait_for(lambda message: _reads_answered(message) >= 1,
                                "a STATUS= line counting the read")
    assert "requests sent" in counted["STATUS"]
    _stop_with_sigterm(process, listener, runner.path)


def test_pre_start_survives_a_dead_mountpoint_and_stop_leaves_no_mount(
    runner: UnitRunner, listener: NotifyListener, services: list[subprocess.Popen[str]],
    slide: GeneratedSlide, expected: bytes,
) -> None:
    """A daemon killed with SIGKILL leaves a dead mount a shell still sits in; the unit
    restarts on it, and its ExecStop takes the mount away although a shell sits in it."""
    first = _start(runner, listener, services)
    holder = subprocess.Popen(["sleep", "120"], cwd=runner.path / "studies")
    try:
        first.kill()
        first.wait(WAIT_S)
        _wait_for_dead(runner.path)
        second = _start(runner, listener, services)  # the pre-start and start, again
        assert (series_dir(runner.path, slide) / TILE).read_bytes() == expected
        holder.kill()
        holder.wait(WAIT_S)
        holder = subprocess.Popen(["sleep", "120"], cwd=runner.path / "studies")
        (stop,) = runner.unit.stop
        result = runner.run(stop)
        assert result.returncode == 0, result.stderr
        assert not is_mounted(runner.path) and holder.poll() is None
        holder.kill()  # its shell left: the detached mount ends, and so does the daemon
        holder.wait(WAIT_S)
        assert second.wait(WAIT_S) == 0
    finally:
        holder.kill()
        holder.wait(WAIT_S)


def _wait_for_dead(path: Path) -> None:
    deadline = time.monotonic() + WAIT_S
    while True:
        try:
            os.statvfs(path)
        except OSError as error:
            if error.errno == errno.ENOTCONN:
                return
        assert time.monotonic() < deadline, f"{path} did not become a dead mount"
        time.sleep(0.05)


def test_unmount_z_detaches_a_mount_a_shell_sits_in(server: OrthancServer, mount_idcfs) -> None:  # type: ignore[no-untyped-def]
    mount: Mount = mount_idcfs(server.dicomweb_url, "--readahead-size", "0")
    holder = subprocess.Popen(["sleep", "120"], cwd=mount.path / "studies")
    try:
        busy = run_idcfs("unmount", str(mount.path))
        assert busy.returncode == 2 and is_mounted(mount.path)
        result = run_idcfs("unmount", "-z", str(mount.path))
        assert result.returncode == 0, result.stderr
        assert not is_mounted(mount.path) and os.listdir(mount.path) == []
        assert holder.poll() is None
    finally:
        holder.kill()
        holder.wait(WAIT_S)
    _wait_for_exit(mount.pid)
    assert run_idcfs("unmount", "-z", str(mount.path)).returncode == 2  # not mounted


def _wait_for_exit(pid: int) -> None:
    deadline = time.monotonic() + WAIT_S
    while Path(f"/proc/{pid}").exists() and _state(pid) != "Z":
        assert time.monotonic() < deadline, "the daemon did not end once its mount was gone"
        time.sleep(0.05)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return "Z"


@pytest.mark.skipif(not shutil.which("systemd-analyze") or not shutil.which("unshare")
                    or os.geteuid() != 0, reason="needs systemd-analyze, unshare and root")
def test_unit_files_verify(tmp_path: Path) -> None:
    """systemd-analyze verify, with /usr/local/bin/idcfs present (in a private mount
    namespace: the machine's /usr/local is not touched), finds nothing to say."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "idcfs").write_text("#!/bin/sh\n")
    (bin_dir / "idcfs").chmod(0o755)
    units = tmp_path / "units"
    units.mkdir()
    shutil.copy(REPOSITORY / "systemd" / "idcfs@.service", units / "idcfs@mnt-idc.service")
    shutil.copy(REPOSITORY / "systemd" / "mnt-idc.mount", units / "mnt-idc.mount")
    script = (f'mount --bind "{bin_dir}" /usr/local/bin && systemd-analyze verify '
              f'"{units}/idcfs@mnt-idc.service" "{units}/mnt-idc.mount"')
    result = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                             script], capture_output=True, text=True, timeout=WAIT_S)
    assert result.returncode == 0 and result.stderr == "", result.stderr
