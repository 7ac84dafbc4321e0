"""The command line: help, one-line errors with exit code 2, unmount. (Serving in the
foreground until SIGTERM/SIGINT, and the mountpoint's life, are in test_lifecycle.py.)"""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

from idcfs.cli import is_mounted, parse_size
from tests.support.mounting import run_idcfs


def test_sizes_parse() -> None:
    assert parse_size("512M") == 512 << 20
    assert parse_size("2G") == 2 << 30
    assert parse_size("1.5k") == 1536
    assert parse_size("4096") == 4096


def test_help_is_complete() -> None:
    top = run_idcfs("--help").stdout
    assert "mount" in top and "unmount" in top
    mount_help = run_idcfs("mount", "--help").stdout
    for option in ("--url", "--cache-size", "--foreground", "-o", "--catalog", "--collection",
                   "--query", "--quality", "--log-file", "MOUNTPOINT"):
        assert option in mount_help
    assert "MOUNTPOINT" in run_idcfs("unmount", "--help").stdout


def test_version_names_the_idc_data_version() -> None:
    result = run_idcfs("--version")
    assert result.returncode == 0
    assert result.stdout.startswith("idcfs ") and "IDC" in result.stdout


def _one_line_error(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for word in words:
        assert word in lines[0]


def test_bad_size_is_one_line_exit_2(tmp_path: Path) -> None:
    _one_line_error(run_idcfs("mount", "--cache-size", "lots", str(tmp_path)), "size")


def test_missing_mountpoint_is_one_line_exit_2(tmp_path: Path, orthanc) -> None:
    missing = tmp_path / "absent"
    _one_line_error(run_idcfs("mount", "--url", orthanc.dicomweb_url, str(missing)), "absent")


def test_unreachable_server_is_one_line_exit_2(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again below: nothing listens there
    result = run_idcfs("mount", "--url", f"http://127.0.0.1:{port}/dicom-web", str(tmp_path))
    _one_line_error(result, "cannot reach")
    assert not is_mounted(tmp_path)


def test_already_mounted_is_one_line_exit_2(orthanc, mount_idcfs) -> None:
    mount = mount_idcfs(orthanc.dicomweb_url)
    _one_line_error(run_idcfs("mount", "--url", orthanc.dicomweb_url, str(mount.path)),
                    "already mounted")


def test_unmount_of_a_plain_directory_is_exit_2(tmp_path: Path) -> None:
    _one_line_error(run_idcfs("unmount", str(tmp_path)), "not mounted")


def test_background_mount_then_unmount(orthanc, mount_idcfs) -> None:
    mount = mount_idcfs(orthanc.dicomweb_url)
    assert is_mounted(mount.path)
    assert run_idcfs("unmount", str(mount.path)).returncode == 0
    assert not is_mounted(mount.path)
