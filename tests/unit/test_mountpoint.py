"""Mountpoint checks without a mount: a non-empty directory, -o nonempty, paths."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from idcfs.fuse.mountpoint import (
    MountpointError,
    State,
    absolute,
    is_mounted,
    mount_entry,
    prepare,
    probe,
)


def test_an_empty_directory_is_ready_and_nonempty_never_reaches_libfuse(tmp_path: Path) -> None:
    prepared = prepare(tmp_path, ["ro", "nonempty", "", "allow_other"])
    assert prepared.path == tmp_path and prepared.note is None
    assert prepared.fuse_options == ["ro", "allow_other"]


def test_a_directory_with_entries_needs_nonempty(tmp_path: Path) -> None:
    (tmp_path / ".hidden").write_text("x")
    with pytest.raises(MountpointError, match="not empty.*-o nonempty"):
        prepare(tmp_path, ["ro"])
    assert prepare(tmp_path, ["nonempty"]).fuse_options == []


def test_a_missing_directory_or_a_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(MountpointError, match="does not exist or is not a directory"):
        prepare(tmp_path / "absent", [])
    (tmp_path / "file").write_text("x")
    with pytest.raises(MountpointError, match="does not exist or is not a directory"):
        prepare(tmp_path / "file", [])


def test_paths_are_made_absolute_through_symlinks_but_not_into_the_mountpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = tmp_path / "real"
    (real / "mnt").mkdir(parents=True)
    (tmp_path / "link").symlink_to(real)
    (tmp_path / "mnt-link").symlink_to(real / "mnt")
    monkeypatch.chdir(tmp_path)
    assert absolute(Path("link/mnt")) == real / "mnt"
    assert absolute(Path("mnt-link")) == real / "mnt"
    assert absolute(Path("real/mnt/../mnt/.")) == real / "mnt"


def test_mount_entries_come_from_mountinfo() -> None:
    root = mount_entry(Path("/"))
    assert root is not None and root.fstype and is_mounted(Path("/proc"))
    assert probe(Path("/")) is State.ALIVE
    assert not is_mounted(Path(os.getcwd()) / "surely-not-a-mount-point")
