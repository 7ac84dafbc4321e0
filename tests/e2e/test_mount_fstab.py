"""`mount -t fuse.idcfs` and fstab lines, through the real mount(8) and fuse3's
mount.fuse3, of a real Orthanc (issue 14, section 1); a URL without a scheme (section 6).

mount.fuse3 runs `idcfs` from the shell's default PATH (mount(8) drops the caller's),
where scripts/install.sh links it. These tests must not touch the machine's
/usr/local: each runs mount(8) in a private mount namespace of its own (unshare) in
which /usr/local/sbin, first on that PATH, is a folder holding an `idcfs` that runs
this checkout. The daemon stays in that namespace; the test reads the mount through
/proc/<daemon>/root and unmounts it with the real umount(8) there (nsenter).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import one_slide
from tests.support.mounting import run_idcfs
from tests.support.orthanc import OrthancServer
from tests.support.slides import GeneratedSlide

REPOSITORY = Path(__file__).resolve().parents[2]
WAIT_S = 30.0
TILE = "level-0/1_1.jpg"

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("nsenter")
    or not Path("/sbin/mount.fuse3").exists(),
    reason="needs root, unshare and nsenter (util-linux) and mount.fuse3 (fuse3)",
)


slide = one_slide.slide  # the module's fixtures
server = one_slide.server


@pytest.fixture(scope="module")
def expected(server: OrthancServer, slide: GeneratedSlide) -> bytes:
    """The tile as stored, fetched straight from Orthanc."""
    return one_slide.stored_tile(server, slide, TILE)


@pytest.fixture
def helper_bin(tmp_path: Path) -> Path:
    """A folder holding `idcfs`, this checkout's command, for the namespace's PATH."""
    folder = tmp_path / "sbin"
    folder.mkdir()
    command = folder / "idcfs"
    command.write_text(f'#!/bin/sh\nPYTHONPATH="{REPOSITORY}" exec "{sys.executable}" '
                       f'-m idcfs "$@"\n')
    command.chmod(0o755)
    return folder


@dataclass
class NamespaceMount:
    """A mount made by mount(8) inside a private mount namespace, held by its daemon."""

    path: Path
    pid: int

    def inside(self, path: Path) -> Path:
        """`path` as the daemon's namespace sees it."""
        return Path(f"/proc/{self.pid}/root") / path.relative_to("/")

    def mountinfo(self) -> str:
        return Path(f"/proc/{self.pid}/mountinfo").read_text()

    def umount(self) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["nsenter", "--target", str(self.pid), "--mount", "umount",
                               str(self.path)], capture_output=True, text=True, timeout=WAIT_S)


def _mount_in_namespace(helper_bin: Path, mount_command: str) -> subprocess.CompletedProcess[str]:
    """`mount_command` (a mount(8) call) in a new private mount namespace whose
    /usr/local/sbin is `helper_bin`."""
    script = f'mount --bind "{helper_bin}" /usr/local/sbin && {mount_command}'
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                          capture_output=True, text=True, timeout=WAIT_S * 4)


@pytest.fixture
def mounts() -> Iterator[list[NamespaceMount]]:
    """Mounts a test made; any still served at the end are unmounted, and their daemons
    (by PID) stopped."""
    made: list[NamespaceMount] = []
    yield made
    for mount in made:
        if _alive(mount.pid):
            mount.umount()
            _wait_for_exit(mount.pid)


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _wait_for_exit(pid: int) -> bool:
    deadline = time.monotonic() + WAIT_S
    while _alive(pid):
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            return False
        time.sleep(0.05)
    return True


def _mounted(result: subprocess.CompletedProcess[str], path: Path, pid_file: Path,
             mounts: list[NamespaceMount]) -> NamespaceMount:
    assert result.returncode == 0, result.stderr
    mount = NamespaceMount(path, int(pid_file.read_text()))
    mounts.append(mount)
    return mount


def _check_served_and_unmount(mount: NamespaceMount, server: OrthancServer,
                              slide: GeneratedSlide, expected: bytes) -> None:
    """The mount is fuse.idcfs from SOURCE, serves the stored tile, and umount(8) ends it."""
    entries = [line for line in mount.mountinfo().splitlines() if f" {mount.path} " in line]
    assert len(entries) == 1, mount.mountinfo()
    assert f" - fuse.idcfs {server.dicomweb_url} ro," in entries[0]
    assert "cache_size" not in entries[0]  # idcfs options never reach the kernel
    series = mount.inside(mount.path) / "studies" / slide.study_uid / slide.series_uid
    assert (series / TILE).read_bytes() == expected
    assert not os.path.ismount(mount.path)  # the machine's own namespace never saw it
    result = mount.umount()
    assert result.returncode == 0, result.stderr
    assert _wait_for_exit(mount.pid), "the daemon did not end after umount"


def test_mount_t_fuse_idcfs_serves_tiles_then_umount(
    server: OrthancServer, slide: GeneratedSlide, expected: bytes, helper_bin: Path,
    tmp_path: Path, mounts: list[NamespaceMount],
) -> None:
    """mount(8) → mount.fuse3 → `idcfs SOURCE MOUNTPOINT -o ...`: idcfs mount options as
    name=value, generic ones (ro, _netdev, nofail, user, x-systemd.*) as mount(8) does."""
    path = tmp_path / "mnt"
    path.mkdir()
    pid_file = tmp_path / "idcfs.pid"
    options = (f"ro,cache_size=64M,readahead_size=0,timeout=20,_netdev,nofail,noatime,"
               f"x-systemd.mount-timeout=60,log_file={tmp_path / 'idcfs.log'},"
               f"pid_file={pid_file}")
    result = _mount_in_namespace(
        helper_bin, f'mount -t fuse.idcfs "{server.dicomweb_url}" "{path}" -o "{options}"')
    mount = _mounted(result, path, pid_file, mounts)
    _check_served_and_unmount(mount, server, slide, expected)


def test_an_fstab_line_mounts(
    server: OrthancServer, slide: GeneratedSlide, expected: bytes, helper_bin: Path,
    tmp_path: Path, mounts: list[NamespaceMount],
) -> None:
    """The README's fstab line, from a file of its own (`mount -T FILE MOUNTPOINT`)."""
    path = tmp_path / "slides"
    path.mkdir()
    pid_file = tmp_path / "idcfs.pid"
    fstab = tmp_path / "fstab"
    fstab.write_text(
        f"{server.dicomweb_url} {path} fuse.idcfs ro,_netdev,nofail,noauto,cache_size=64M,"
        f"max_connections=4,log_file={tmp_path / 'idcfs.log'},pid_file={pid_file} 0 0\n")
    result = _mount_in_namespace(helper_bin, f'mount -T "{fstab}" "{path}"')
    _check_served_and_unmount(_mounted(result, path, pid_file, mounts), server, slide, expected)


@pytest.mark.parametrize(("options", "said"), [
    ("cache_size=64M", "read-only"),  # no ro: mount(8) passes rw
    ("ro,colour=blue", "unknown mount option 'colour'"),
    ("ro,cache_size", "needs a value"),
    ("ro,cache_size=lots", "bad size"),
], ids=["rw", "unknown", "no-value", "bad-value"])
def test_a_refused_option_is_one_line_and_nothing_is_mounted(
    server: OrthancServer, helper_bin: Path, tmp_path: Path, options: str, said: str,
) -> None:
    path = tmp_path / "mnt"
    path.mkdir()
    result = _mount_in_namespace(
        helper_bin, f'mount -t fuse.idcfs "{server.dicomweb_url}" "{path}" -o "{options}"; '
        f'status=$?; grep -c " {path} " /proc/self/mountinfo; exit $status')
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and said in lines[0], result.stderr
    assert result.stdout.strip() == "0"  # nothing was mounted, not even in the namespace


def test_a_url_without_a_scheme_is_one_line_exit_2(tmp_path: Path) -> None:
    result = run_idcfs("mount", "--url", "127.0.0.1:8042/dicom-web", str(tmp_path))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "http://127.0.0.1:8042/dicom-web" in lines[0]
