"""Security (docs/SEMANTICS.md, "Security"), through real mounts against the real Orthanc.

1. A session sends only GET, only to the configured server (the relay records every
   request and its headers; /proc shows the daemon's sockets); a redirect elsewhere is
   not followed.
2. A mount is private to the mounting user unless `-o allow_other` (another uid, by
   setpriv, gets EACCES without it and reads the same bytes with it).
3. The cache directory is 0700 and its files 0600 whatever the umask; a cache directory
   of another user, or writable by group or others, is refused (one line, exit 2).
4. Credentials of the URL are used (HTTP Basic auth) but never shown: not in the debug
   log, slide.json, the statistics file, the cache, nor any error message.
"""

from __future__ import annotations

import base64
import errno
import json
import os
import shutil
import socket
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from idcfs.cli import is_mounted
from tests.support.mounting import Mount, named, run_idcfs, series_dir, stop_mount
from tests.support.relay import HttpRelay
from tests.support.sockets import inet_peers, mount_options

NOBODY = 65534
AS_NOBODY = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--"]
USER, PASSWORD = "idcuser", "secret"
SECRETS = (PASSWORD.encode(), base64.b64encode(f"{USER}:{PASSWORD}".encode()))
STATS = ".idcfs-stats.json"
COMMAND_TIMEOUT_S = 60


def run(*command: str | Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([str(part) for part in command], capture_output=True,
                          timeout=COMMAND_TIMEOUT_S)


def unmount(mount: Mount) -> None:
    """`idcfs unmount`, then wait (bounded) for the daemon to exit."""
    result = run_idcfs("unmount", str(mount.path))
    assert result.returncode == 0, result.stderr
    stop_mount(mount)


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def refused_mount(tmp_path: Path, mountpoint: Path, *options: str) -> str:
    """The one-line error of an `idcfs mount` that must fail; a mount that wrongly
    succeeded is stopped again (by its PID) before the test fails."""
    log_file, pid_file = tmp_path / "refused.log", tmp_path / "refused.pid"
    result = run_idcfs("mount", *options, "--log-file", str(log_file),
                       "--pid-file", str(pid_file), str(mountpoint))
    if is_mounted(mountpoint):
        stop_mount(Mount(mountpoint, log_file, int(pid_file.read_text())))
        pytest.fail(f"mounted although it should be refused: {options}")
    assert_no_secret("the log", log_file.read_bytes() if log_file.exists() else b"")
    return one_line_error(result)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # closed again on return: nothing listens


# -- 1. only GET, only to the configured server ---------------------------------------


def test_a_session_sends_only_get_to_the_configured_server(
    relay: HttpRelay, mount_idcfs, test_slides, tmp_path: Path
) -> None:
    mount = mount_idcfs(relay.url + "/dicom-web")
    folder = series_dir(mount.path, named(test_slides, "jpeg_ybr"))
    listing = run("ls", "-lR", folder)
    assert listing.returncode == 0 and b"slide.json" in listing.stdout, listing.stderr
    copied = run("cp", "-r", folder / "level-1", tmp_path / "copy")
    assert copied.returncode == 0, copied.stderr
    assert sorted(os.listdir(tmp_path / "copy")) == sorted(os.listdir(folder / "level-1"))
    assert json.loads((mount.path / STATS).read_text())["requests_sent"] > 0
    peers = inet_peers(mount.pid)
    unmount(mount)

    server = ("127.0.0.1", relay.port)
    assert peers and peers <= {server}, f"the daemon's sockets talk to {peers}"
    assert relay.count("/metadata") and relay.count("/frames/"), relay.requests
    assert {method for method, _ in relay.requests} == {"GET"}, relay.requests
    hosts = {headers.get("Host") for headers in relay.headers}
    assert hosts == {f"127.0.0.1:{relay.port}"}
    cache_home = Path(os.environ["XDG_CACHE_HOME"])  # no --cache-dir: nothing on disk
    assert not cache_home.exists() or not any(cache_home.iterdir())


def test_a_redirect_to_another_server_is_not_followed(
    orthanc, relay: HttpRelay, mount_idcfs, test_slides
) -> None:
    with HttpRelay(orthanc.host, orthanc.port) as elsewhere:
        mount = mount_idcfs(relay.url + "/dicom-web", "--readahead-size", "0",
                            "--timeout", "5")
        level = series_dir(mount.path, named(test_slides, "jpeg_ybr")) / "level-0"
        tile = level / sorted(os.listdir(level))[0]
        target = f"{elsewhere.url}/dicom-web/studies"
        relay.inject(302, None, "/frames/", body=b"", headers={"Location": target})
        with pytest.raises(OSError) as failure:
            tile.read_bytes()
        assert failure.value.errno == errno.EIO
        assert elsewhere.requests == []
        assert "redirected to another server" in mount.log()
        relay.clear_faults()
        assert tile.read_bytes()[:2] == b"\xff\xd8"  # the same server still serves it


# -- 2. private to the mounting user unless -o allow_other ----------------------------


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A directory every user may enter (tmp_path is not: its parents are 0700).
    Requested before mount_idcfs, it is removed after the mounts in it are gone."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("switching to another uid needs root and setpriv (util-linux)")
    path = Path(tempfile.mkdtemp(prefix="idcfs-security-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    if not any(is_mounted(child) for child in path.iterdir()):
        shutil.rmtree(path, ignore_errors=True)


def test_another_user_is_refused_without_allow_other(
    public_dir: Path, orthanc, mount_idcfs, test_slides
) -> None:
    mount = mount_idcfs(orthanc.dicomweb_url, mountpoint=public_dir / "mnt")
    assert "allow_other" not in mount_options(mount.path)
    assert "default_permissions" in mount_options(mount.path)
    folder = series_dir(mount.path, named(test_slides, "jpeg_ybr"))
    for command in (["ls", mount.path], ["cat", folder / "slide.json"]):
        result = run(*AS_NOBODY, *command)
        assert result.returncode != 0, f"{command}: read by uid {NOBODY}"
        denied = (os.strerror(errno.EACCES), os.strerror(errno.EPERM))
        assert any(text.encode() in result.stderr for text in denied), result.stderr
    assert (folder / "slide.json").read_bytes()  # the mounting user still reads


def test_another_user_reads_with_allow_other(
    public_dir: Path, orthanc, mount_idcfs, test_slides
) -> None:
    mount = mount_idcfs(orthanc.dicomweb_url, "-o", "allow_other",
                        mountpoint=public_dir / "mnt")
    assert "allow_other" in mount_options(mount.path)
    level = series_dir(mount.path, named(test_slides, "jpeg_ybr")) / "level-0"
    listing = run(*AS_NOBODY, "ls", level)
    assert listing.returncode == 0, listing.stderr
    tile = level / listing.stdout.decode().split()[0]
    read = run(*AS_NOBODY, "cat", tile)
    assert read.returncode == 0, read.stderr
    assert read.stdout == tile.read_bytes()
    written = run(*AS_NOBODY, "touch", level / "new.jpg")
    assert written.returncode != 0  # still read-only for everyone


# -- 3. a private cache directory -----------------------------------------------------


def modes_under(directory: Path) -> dict[str, int]:
    """Permission bits of `directory` ('.') and of everything in it, by relative path."""
    modes = {".": stat.S_IMODE(directory.stat().st_mode)}
    for path in directory.rglob("*"):
        modes[str(path.relative_to(directory))] = stat.S_IMODE(path.lstat().st_mode)
    return modes


def test_cache_directory_and_files_are_private_whatever_the_umask(
    orthanc, mount_idcfs, test_slides, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    previous = os.umask(0)
    try:
        mount = mount_idcfs(orthanc.dicomweb_url, "--cache-dir", str(cache))
    finally:
        os.umask(previous)
    folder = series_dir(mount.path, named(test_slides, "jpeg_ybr"))
    tiles = sorted((folder / "level-2").iterdir())
    assert run("cat", folder / "slide.json", *tiles).returncode == 0
    modes_mounted = modes_under(cache)
    unmount(mount)
    modes = modes_under(cache)
    assert "cache.db" in modes and modes_mounted["."] == 0o700
    wrong = {name: oct(mode) for name, mode in {**modes_mounted, **modes}.items()
             if mode != (0o700 if (cache / name).is_dir() else 0o600)}
    assert not wrong, wrong


UNSAFE = {
    "group-writable": 0o770,
    "others-writable": 0o703,
    "another-users": 0o700,
}


@pytest.mark.parametrize("case", sorted(UNSAFE))
def test_an_unsafe_cache_directory_is_refused(orthanc, tmp_path: Path, case: str) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    cache.chmod(UNSAFE[case])
    if case == "another-users":
        if os.geteuid() != 0:
            pytest.skip("giving a directory to another user needs root")
        os.chown(cache, NOBODY, NOBODY)
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    line = refused_mount(tmp_path, mountpoint, "--url", orthanc.dicomweb_url,
                         "--cache-dir", str(cache))
    assert str(cache) in line and "refused" in line
    assert list(cache.iterdir()) == []  # nothing written into it
    assert stat.S_IMODE(cache.stat().st_mode) == UNSAFE[case]  # nor its mode changed


# -- 4. credentials are used, never shown ---------------------------------------------


def assert_no_secret(where: str, data: bytes) -> None:
    for secret in SECRETS:
        assert secret not in data, f"{secret!r} shown in {where}"


def with_credentials(url: str) -> str:
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{USER}:{PASSWORD}@{rest}"


def test_credentials_are_sent_but_never_shown(
    relay: HttpRelay, mount_idcfs, test_slides, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    mount = mount_idcfs(with_credentials(relay.url + "/dicom-web"), "--debug",
                        "--cache-dir", str(cache), "--readahead-size", "0", "--timeout", "3")
    shown: dict[str, bytes] = {}
    for slide_json in sorted(mount.path.glob("studies/*/*/slide.json")):
        shown[str(slide_json)] = slide_json.read_bytes()
    assert len(shown) >= 2, "the mount lists no series"
    level = series_dir(mount.path, named(test_slides, "jpeg_ybr")) / "level-0"
    tiles = sorted(level.iterdir())
    assert run("cp", "-r", level, tmp_path / "copy").returncode == 0
    relay.inject(500, None, "/frames/")  # server trouble: EIO with a log line
    with pytest.raises(OSError):
        (level.parent / "level-1" / "0_0.jpg").read_bytes()
    relay.clear_faults()
    relay.inject(429, None, "/frames/")  # the quota: logged with the server's address
    with pytest.raises(OSError):
        (level.parent / "level-2" / "0_0.jpg").read_bytes()
    shown[STATS] = (mount.path / STATS).read_bytes()
    unmount(mount)
    relay.clear_faults()

    expected_auth = f"Basic {SECRETS[1].decode()}"
    assert {headers.get("Authorization") for headers in relay.headers} == {expected_auth}
    log = mount.log()
    assert "EIO on" in log and "quota" in log and "DICOMweb http://127.0.0.1" in log
    assert len(tiles) > 1 and (tmp_path / "copy" / tiles[0].name).read_bytes()
    shown["the debug log"] = log.encode()
    shown.update({str(path): path.read_bytes() for path in cache.rglob("*") if path.is_file()})
    for where, data in shown.items():
        assert_no_secret(where, data)


@pytest.mark.parametrize("url", [
    f"http://{USER}:{PASSWORD}@127.0.0.1:{{port}}/dicom-web",
    f"ftp://{USER}:{PASSWORD}@127.0.0.1:{{port}}/dicom-web",
    f"http://{USER}:{PASSWORD}@/dicom-web",
])
def test_a_setup_error_does_not_show_credentials(tmp_path: Path, url: str) -> None:
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    line = refused_mount(tmp_path, mountpoint, "--url", url.format(port=closed_port()),
                         "--timeout", "1")
    # refused at once when the scheme is not http(s), else when the server is not there
    assert "cannot reach DICOMweb server" in line or "bad URL" in line
    assert "/dicom-web" in line
    assert_no_secret("the error line", line.encode())
