"""Shared fixtures: a real Orthanc with generated and real slides, and real idcfs mounts."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.browser import chromium  # noqa: F401  (a fixture)
from tests.support.fixtures import orthanc, relay, test_slides  # noqa: F401  (fixtures)
from tests.support.mounting import Mount, run_idcfs, stop_mount

XDG_DIRECTORIES = ("XDG_STATE_HOME", "XDG_CACHE_HOME", "XDG_DATA_HOME")


@pytest.fixture(scope="session", autouse=True)
def private_state_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Keep every test (and every idcfs it starts) out of the user's real state, cache
    and data directories: logs default to $XDG_STATE_HOME/idcfs, and indices idc-index
    downloaded into $XDG_DATA_HOME would change what a mount requests."""
    home = tmp_path_factory.mktemp("xdg")
    saved = {name: os.environ.get(name) for name in XDG_DIRECTORIES}
    for name in XDG_DIRECTORIES:
        os.environ[name] = str(home / name.lower())
    yield home
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture
def mount_idcfs(tmp_path: Path) -> Iterator[Callable[..., Mount]]:
    """A factory: mount_idcfs(url, *options) mounts in the background and returns a Mount
    (on `mountpoint=` if given, an empty directory; else one under tmp_path)."""
    mounts: list[Mount] = []

    def start(url: str | None, *options: str, mountpoint: Path | None = None) -> Mount:
        number = len(mounts)
        path = mountpoint or tmp_path / f"mnt{number}"
        path.mkdir(exist_ok=mountpoint is not None)
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
