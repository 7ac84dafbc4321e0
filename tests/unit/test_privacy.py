"""Security promises below the mount (docs/SEMANTICS.md, "Security"): credentials out of
what is shown, a private disk cache whatever the umask, no allow_other by default.
The same promises through real mounts: tests/e2e/test_security.py."""

from __future__ import annotations

import base64
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from idcfs.cache.disk import LARGEST_IN_DATABASE, CacheDirError, DiskCache
from idcfs.errors import FetchError, without_credentials
from idcfs.mount import MountConfig, fuse_options
from idcfs.source.dicomweb import DicomWebClient, _basic_auth

NOBODY = 65534


@pytest.mark.parametrize(("url", "shown"), [
    ("http://user:secret@127.0.0.1:8042/dicom-web", "http://127.0.0.1:8042/dicom-web"),
    ("https://user:p@ss:w@rd@host/a/b", "https://host/a/b"),
    ("https://token@host", "https://host"),
    ("http://[::1]:80/x@y", "http://[::1]:80/x@y"),  # an @ in the path is not userinfo
    ("http://host/dicom-web", "http://host/dicom-web"),
    ("user:secret@host/path", "host/path"),
])
def test_without_credentials(url: str, shown: str) -> None:
    assert without_credentials(url) == shown


def test_the_client_shows_no_credentials_and_sends_them_decoded() -> None:
    client = DicomWebClient("http://user:s%40cret@127.0.0.1:8042/dicom-web/")
    try:
        assert client.base_url == "http://127.0.0.1:8042/dicom-web"
        assert "cret" not in client.description and "user" not in client.description
    finally:
        client.close()
    token = base64.b64encode(b"user:s@cret").decode()
    assert _basic_auth("user:s%40cret") == {"authorization": f"Basic {token}"}
    assert _basic_auth(None) == {}


@pytest.mark.parametrize("url", ["ftp://user:secret@host/x", "user:secret@host", "http://[::1"])
def test_a_url_the_client_cannot_use_is_refused_without_its_credentials(url: str) -> None:
    with pytest.raises(FetchError) as refused:
        DicomWebClient(url)
    assert "secret" not in str(refused.value)


def test_fuse_options_carry_no_allow_other_unless_asked() -> None:
    default = fuse_options(MountConfig(mountpoint=Path("/mnt")))
    assert "allow_other" not in default and {"ro", "default_permissions"} <= default
    asked = fuse_options(MountConfig(mountpoint=Path("/mnt"), fuse_options=["allow_other"]))
    assert "allow_other" in asked


@pytest.fixture
def open_umask() -> Iterator[None]:
    previous = os.umask(0)
    yield
    os.umask(previous)


def wrong_modes(directory: Path) -> dict[str, str]:
    """Everything under `directory` (itself included) that is not 0700 (directories) or
    0600 (files)."""
    wrong = {}
    for path in [directory, *directory.rglob("*")]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        if mode != (0o700 if path.is_dir() else 0o600):
            wrong[str(path.relative_to(directory))] = oct(mode)
    return wrong


def test_the_disk_cache_is_private_whatever_the_umask(tmp_path: Path, open_umask: None) -> None:
    directory = tmp_path / "cache"
    disk = DiskCache(directory, 64 << 20)
    large = os.urandom(LARGEST_IN_DATABASE + 1)  # stored in a file of its own
    disk.put("small", b"tile")
    disk.put("large", large)
    assert disk.get("large") == large
    files = [path for path in directory.rglob("*") if path.is_file()]
    assert any(path.suffix == ".val" for path in files)
    assert any(path.name == "cache.db-wal" for path in files)
    assert wrong_modes(directory) == {}
    disk.close()
    assert wrong_modes(directory) == {}


def test_a_loose_cache_of_this_user_is_made_private(tmp_path: Path) -> None:
    directory = tmp_path / "cache"
    DiskCache(directory, 1 << 20).close()
    directory.chmod(0o755)
    for path in directory.iterdir():
        path.chmod(0o644)
    (directory / "ab").mkdir(mode=0o755)
    DiskCache(directory, 1 << 20).close()
    assert wrong_modes(directory) == {}


@pytest.mark.parametrize("mode", [0o770, 0o702, 0o777])
def test_a_cache_writable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    directory = tmp_path / "cache"
    directory.mkdir()
    directory.chmod(mode)
    with pytest.raises(CacheDirError, match="writable by group or others"):
        DiskCache(directory, 1 << 20)
    assert list(directory.iterdir()) == []


def test_a_cache_of_another_user_is_refused(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("giving a directory to another user needs root")
    directory = tmp_path / "cache"
    directory.mkdir(mode=0o700)
    os.chown(directory, NOBODY, NOBODY)
    with pytest.raises(CacheDirError, match=f"belongs to uid {NOBODY}"):
        DiskCache(directory, 1 << 20)


def test_a_cache_that_is_not_a_directory_is_refused(tmp_path: Path) -> None:
    directory = tmp_path / "cache"
    directory.write_bytes(b"")
    with pytest.raises(CacheDirError, match=str(directory)):
        DiskCache(directory, 1 << 20)
