"""A mount's life through real mounts over an Orthanc of this module's own (issue 12, 5).

Killed with SIGKILL (a dead mount left behind, `idcfs unmount` and `idcfs mount` clear
it), stopped with SIGTERM/SIGINT (clean unmount; the disk cache serves a remount with
no request), killed while the disk cache is written (nothing damaged is served; only
tiles no reader got are lost), a mountpoint that is not empty (refused unless -o
nonempty), a series whose metadata lacks what the model needs (EIO on its directory),
and the server going away and coming back (EIO within --timeout, then reads again in
the same mount). The promises are in docs/SEMANTICS.md, "Lifecycle".

The server is this module's own because it holds a broken slide: the session's shared
Orthanc, whose slides other tests count, never sees it.
"""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from idcfs.cli import is_mounted
from tests.support.expected import frames_by_path
from tests.support.fixtures import orthanc_holding
from tests.support.mounting import Mount, idcfs_command, run_idcfs, series_dir
from tests.support.orthanc import OrthancServer
from tests.support.relay import HttpRelay
from tests.support.slides import (
    GeneratedSlide,
    generate_test_slides,
    missing_matrix,
    write_pyramid,
)

TIMEOUT_S = 3.0
SLACK_S = 1.5  # kernel round trips, thread hops and a loaded 2-core machine
WAIT_S = 30.0
WALK_SIZE = (3072, 2048)  # 12 x 8 = 96 tiles of 256 in level-0


@dataclass
class Slides:
    ybr: GeneratedSlide  # 3 levels and associated images
    walk: GeneratedSlide  # one 96-tile level, for copies interrupted by a kill
    broken: GeneratedSlide  # level-1 without TotalPixelMatrixColumns/Rows


@pytest.fixture(scope="module")
def slides(tmp_path_factory: pytest.TempPathFactory) -> Slides:
    folder = tmp_path_factory.mktemp("life-slides")
    (ybr,) = generate_test_slides(folder, ["jpeg_ybr"])
    walk = write_pyramid(folder, "life_walk", width=WALK_SIZE[0], height=WALK_SIZE[1])
    return Slides(ybr, walk, missing_matrix(folder))


@pytest.fixture(scope="module")
def server(slides: Slides) -> Iterator[OrthancServer]:
    with orthanc_holding([*slides.ybr.files, *slides.walk.files,
                          *slides.broken.files]) as orthanc:
        yield orthanc


@pytest.fixture(scope="module")
def expected(server: OrthancServer, slides: Slides) -> dict[str, dict[str, bytes]]:
    """Every tile of the good slides as stored (fetched straight from Orthanc)."""
    return {slide.name: frames_by_path(server.dicomweb_url, slide, nested=False)
            for slide in (slides.ybr, slides.walk)}


@pytest.fixture
def life_relay(server: OrthancServer) -> Iterator[HttpRelay]:
    with HttpRelay(server.host, server.port) as relay:
        yield relay


def _wait_for(condition: Callable[[], bool], what: str, seconds: float = WAIT_S) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"not within {seconds:g} s: {what}"
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie nobody reaped yet does not: in a container PID 1
    may never reap the daemon, which was reparented to it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _kill_9(mount: Mount) -> None:
    """SIGKILL the daemon. Its page-filler helper holds /dev/fuse too and must end by
    itself (its input closes), or the mount would stay alive with nobody serving it."""
    helpers = _children(mount.pid)
    os.kill(mount.pid, signal.SIGKILL)
    _wait_for(lambda: not _alive(mount.pid), "the daemon to die")
    _wait_for(lambda: not any(map(_alive, helpers)), "its helper process to end")
    _wait_for(lambda: _dead(mount.path), "the mount to be dead")


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(child) for child in path.read_text().split()] if path.exists() else []


def _dead(path: Path) -> bool:
    """ENOTCONN from a call the kernel must send to the daemon (stat it may answer from
    attributes it cached)."""
    try:
        os.statvfs(path)
    except OSError as error:
        return error.errno == errno.ENOTCONN
    return False


def _one_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def _mount_cli(url: str, path: Path, log_file: Path, *options: str) -> tuple[
        subprocess.CompletedProcess[str], Mount | None]:
    """`idcfs mount` in the background, as a user types it; the Mount when it worked."""
    pid_file = log_file.with_suffix(".pid")
    result = run_idcfs("mount", "--url", url, "--log-file", str(log_file),
                       "--pid-file", str(pid_file), *options, str(path))
    if result.returncode != 0:
        return result, None
    return result, Mount(path, log_file, int(pid_file.read_text()))


def _tile_names(frames: list[int], columns: int) -> set[str]:
    return {f"{(number - 1) % columns}_{(number - 1) // columns}.jpg" for number in frames}


def _frames_requested(relay: HttpRelay, instance_uid: str) -> list[int]:
    numbers = []
    for _, path in relay.requests:
        match = re.search(rf"/instances/{re.escape(instance_uid)}/frames/([\d,]+)", path)
        if match:
            numbers += [int(number) for number in match.group(1).split(",")]
    return numbers


# -- 1. kill -9 --------------------------------------------------------------------------


@pytest.mark.parametrize("busy", [False, True], ids=["idle", "busy"])
def test_unmount_clears_a_mount_whose_daemon_was_killed(life_relay, mount_idcfs, busy) -> None:  # type: ignore[no-untyped-def]
    """After kill -9 every access is ENOTCONN; `idcfs unmount` clears it, exit 0, also
    while a process still has its working directory there (a lazy unmount, said so)."""
    mount = mount_idcfs(life_relay.url + "/dicom-web")
    assert (mount.path / "studies").is_dir()
    holder = subprocess.Popen(["sleep", "60"], cwd=mount.path) if busy else None
    try:
        _kill_9(mount)
        assert is_mounted(mount.path) and _dead(mount.path)
        result = run_idcfs("unmount", str(mount.path))
        assert result.returncode == 0, result.stderr
        assert not is_mounted(mount.path)
        assert os.listdir(mount.path) == []
        if busy:
            assert "lazy unmount" in _one_line(result)
        else:
            assert result.stderr == ""
    finally:
        if holder is not None:
            holder.kill()
            holder.wait(10)


def test_a_live_mount_in_use_is_not_detached(life_relay, mount_idcfs) -> None:  # type: ignore[no-untyped-def]
    """Only a dead mount is unmounted lazily: a live one in use stays, one line, exit 2."""
    mount = mount_idcfs(life_relay.url + "/dicom-web")
    holder = subprocess.Popen(["sleep", "60"], cwd=mount.path / "studies")
    try:
        result = run_idcfs("unmount", str(mount.path))
        assert result.returncode == 2 and "busy" in _one_line(result).lower()
        assert is_mounted(mount.path) and (mount.path / "studies").is_dir()
    finally:
        holder.kill()
        holder.wait(10)
    assert run_idcfs("unmount", str(mount.path)).returncode == 0


def test_mount_on_a_dead_mount_clears_it_and_says_so(life_relay, mount_idcfs, tmp_path) -> None:  # type: ignore[no-untyped-def]
    mount = mount_idcfs(life_relay.url + "/dicom-web")
    _kill_9(mount)
    assert _dead(mount.path)
    result, again = _mount_cli(life_relay.url + "/dicom-web", mount.path, tmp_path / "again.log")
    assert again is not None, result.stderr
    mount_idcfs.mounts.append(again)  # stopped with the others
    assert "cleared the dead idcfs mount" in _one_line(result)
    assert result.returncode == 0 and (mount.path / "studies").is_dir()


# -- 2. SIGTERM and SIGINT -----------------------------------------------------------------


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_a_signal_unmounts_cleanly_and_the_disk_cache_serves_the_remount(
    life_relay, mount_idcfs, slides, expected, tmp_path, stop_signal,  # type: ignore[no-untyped-def]
) -> None:
    """A foreground daemon stopped by SIGTERM or SIGINT exits 0 with its mountpoint
    unmounted; a remount on the same --cache-dir serves what it read with no request."""
    cache_dir, mountpoint, log_file = tmp_path / "cache", tmp_path / "fg", tmp_path / "fg.log"
    mountpoint.mkdir()
    url = life_relay.url + "/dicom-web"
    process = subprocess.Popen(
        idcfs_command("mount", "--foreground", "--url", url, "--cache-dir", str(cache_dir),
                      "--log-file", str(log_file), str(mountpoint)),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        _wait_for(lambda: is_mounted(mountpoint) or process.poll() is not None, "the mount")
        assert process.poll() is None, process.communicate()[1]
        level = series_dir(mountpoint, slides.ybr) / "level-0"
        first = {entry.name: entry.read_bytes() for entry in level.glob("*.jpg")}
        process.send_signal(stop_signal)
        assert process.wait(timeout=WAIT_S) == 0, process.communicate()[1]
        assert not is_mounted(mountpoint)
        assert f"signal {stop_signal.name}: unmounting" in log_file.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], capture_output=True)
    assert first == {name.split("/", 1)[1]: data for name, data in expected["jpeg_ybr"].items()
                     if name.startswith("level-0/")}
    again = mount_idcfs(url, "--cache-dir", str(cache_dir))
    life_relay.reset()
    level = series_dir(again.path, slides.ybr) / "level-0"
    assert {entry.name: entry.read_bytes() for entry in level.glob("*.jpg")} == first
    sent = [path for _, path in life_relay.requests if "/frames/" in path or "/metadata" in path]
    assert sent == [], again.log()
    stats = json.loads((again.path / ".idcfs-stats.json").read_text())
    print("remount statistics:", {key: value for key, value in stats.items()
                                  if "disk" in key or "request" in key})  # shown with -s


# -- 3. kill -9 while the disk cache is written ------------------------------------------


def test_a_kill_while_the_disk_cache_is_written_loses_only_tiles_in_flight(
    life_relay, mount_idcfs, slides, expected, tmp_path,  # type: ignore[no-untyped-def]
) -> None:
    """`cp -r` of a 96-tile level with --cache-dir, the daemon killed part way: the next
    mount on that cache serves every tile with its exact bytes, and asks the server only
    for tiles the copy had not finished (every tile a reader got was on disk)."""
    cache_dir, copy = tmp_path / "cache", tmp_path / "copy"
    url = life_relay.url + "/dicom-web"
    mount = mount_idcfs(url, "--cache-dir", str(cache_dir), "--readahead-size", "256K")
    life_relay.latency_s = 0.1  # small read-ahead batches land all along the copy
    level = series_dir(mount.path, slides.walk) / "level-0"
    copier = subprocess.Popen(["cp", "-r", str(level), str(copy)], stderr=subprocess.DEVNULL)
    wanted = {name.split("/", 1)[1]: data for name, data in expected["life_walk"].items()}
    try:
        _wait_for(lambda: copy.is_dir() and len(os.listdir(copy)) >= 30, "30 tiles copied")
        _kill_9(mount)
    finally:
        copier.wait(WAIT_S)
    copied = {entry.name for entry in copy.glob("*.jpg")
              if entry.read_bytes() == wanted[entry.name]}
    assert run_idcfs("unmount", str(mount.path)).returncode == 0
    life_relay.latency_s = 0.0
    again = mount_idcfs(url, "--cache-dir", str(cache_dir))
    life_relay.reset()
    level = series_dir(again.path, slides.walk) / "level-0"
    served = {entry.name: entry.read_bytes() for entry in level.glob("*.jpg")}
    assert served == wanted
    columns = -(-WALK_SIZE[0] // 256)
    fetched = _tile_names(_frames_requested(life_relay, slides.walk.levels[0].instance_uids[0]),
                          columns)
    assert not fetched & copied, f"fetched again although served before: {fetched & copied}"
    assert "damaged entry" not in again.log()
    print(f"{len(copied)} tiles copied before the kill, {len(fetched)} fetched again, "
          f"{len(wanted) - len(copied) - len(fetched)} read ahead then and kept")


# -- 4. a mountpoint that is not empty ---------------------------------------------------


def test_a_mountpoint_that_is_not_empty_is_refused_unless_nonempty(
    life_relay, mount_idcfs, tmp_path,  # type: ignore[no-untyped-def]
) -> None:
    mountpoint = tmp_path / "full"
    mountpoint.mkdir()
    (mountpoint / "notes.txt").write_text("mine\n")
    url = life_relay.url + "/dicom-web"
    refused, _ = _mount_cli(url, mountpoint, tmp_path / "refused.log")
    assert refused.returncode == 2 and "not empty" in _one_line(refused)
    assert not is_mounted(mountpoint)
    result, mount = _mount_cli(url, mountpoint, tmp_path / "over.log", "-o", "ro,nonempty")
    assert mount is not None, result.stderr
    mount_idcfs.mounts.append(mount)
    assert (mountpoint / "studies").is_dir() and not (mountpoint / "notes.txt").exists()
    assert run_idcfs("unmount", str(mountpoint)).returncode == 0
    assert (mountpoint / "notes.txt").read_text() == "mine\n"


# -- 5. metadata that lacks what the model needs -----------------------------------------


def test_a_level_without_its_pixel_matrix_is_eio_on_the_series_and_not_kept(
    life_relay, mount_idcfs, slides,  # type: ignore[no-untyped-def]
) -> None:
    """level-1 has no TotalPixelMatrixColumns/Rows: listing the series is EIO with a log
    line naming the instance (never the series without that level), every time, with the
    metadata asked for again; other series of the mount are untouched."""
    mount = mount_idcfs(life_relay.url + "/dicom-web")
    folder = series_dir(mount.path, slides.broken)
    broken_uid = slides.broken.levels[1].instance_uids[0]
    asked = []
    for _ in range(2):
        with pytest.raises(OSError) as caught:
            os.listdir(folder)
        assert caught.value.errno == errno.EIO
        asked.append(life_relay.count(f"/series/{slides.broken.series_uid}/metadata"))
    assert 0 < asked[0] < asked[1], asked
    lines = [line for line in mount.log().splitlines() if "EIO on" in line]
    assert len(lines) >= 2 and all(broken_uid in line and "TotalPixelMatrix" in line
                                   for line in lines), mount.log()
    assert "level-2" in os.listdir(series_dir(mount.path, slides.ybr))


# -- 6. the server goes away and comes back ----------------------------------------------


def test_reads_fail_while_the_server_is_away_and_work_again_when_it_is_back(
    life_relay, mount_idcfs, slides, expected,  # type: ignore[no-untyped-def]
) -> None:
    """The server stops listening (its connections cut) for a while: a tile not held is
    EIO within --timeout, a series not listed yet too, a tile held is still read; once
    it listens again at the same address, all of them read in the same mount."""
    mount = mount_idcfs(life_relay.url + "/dicom-web", "--timeout", str(TIMEOUT_S))
    folder = series_dir(mount.path, slides.ybr)
    tiles = expected["jpeg_ybr"]
    assert (folder / "level-0/0_0.jpg").read_bytes() == tiles["level-0/0_0.jpg"]
    away: dict[str, Callable[[], object]] = {
        "a tile not read yet": (folder / "level-1/0_0.jpg").read_bytes,
        "a series not listed yet": lambda: os.listdir(series_dir(mount.path, slides.walk)),
    }
    life_relay.go_away()
    try:
        for what, access in away.items():
            start = time.monotonic()
            with pytest.raises(OSError) as caught:
                access()
            seconds = time.monotonic() - start
            assert caught.value.errno == errno.EIO, what
            assert seconds <= TIMEOUT_S + SLACK_S, f"{what}: {seconds:.1f} s"
            print(f"{what}: EIO after {seconds:.2f} s")  # shown with -s
        assert (folder / "level-0/0_0.jpg").read_bytes() == tiles["level-0/0_0.jpg"]
    finally:
        life_relay.come_back()
    assert (folder / "level-1/0_0.jpg").read_bytes() == tiles["level-1/0_0.jpg"]
    walk = series_dir(mount.path, slides.walk) / "level-0"
    assert (walk / "5_3.jpg").read_bytes() == expected["life_walk"]["level-0/5_3.jpg"]
