"""`idcfs prefetch` through real mounts over an Orthanc of this module's own, requests
counted by a relay (issue 14, 4): what it warms serves a `cp -r` and a remount with no
request, a second run sends none, one request per run of 64 frames, --level and
--max-size limit it, a failure is listed and exits 1, Ctrl-C stops it promptly and the
next run resumes; without --cache-dir or outside a mount it is a one-line error; the
control socket is the mounting user's alone.

The server is this module's own so the shared Orthanc, whose series other tests count,
never sees the 300-tile slide.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.expected import frames_by_path
from tests.support.fixtures import orthanc_holding
from tests.support.mounting import idcfs_command, run_idcfs, series_dir, stop_mount
from tests.support.orthanc import OrthancServer
from tests.support.relay import HttpRelay
from tests.support.slides import GeneratedSlide, generate_test_slides, write_pyramid

WALK_TILES = (24, 10)  # level-0 of the walk slide: 240 tiles, 4 requests of 64
STATS = ".idcfs-stats.json"


@dataclass
class Slides:
    ybr: GeneratedSlide  # 3 levels, label, overview, thumbnail
    walk: GeneratedSlide  # level-0 240 tiles, level-1 60


@pytest.fixture(scope="module")
def slides(tmp_path_factory: pytest.TempPathFactory) -> Slides:
    folder = tmp_path_factory.mktemp("prefetch-slides")
    (ybr,) = generate_test_slides(folder, ["jpeg_ybr"])
    walk = write_pyramid(folder, "prefetch_walk", width=WALK_TILES[0] * 256,
                         height=WALK_TILES[1] * 256, levels=2)
    return Slides(ybr, walk)


@pytest.fixture(scope="module")
def server(slides: Slides) -> Iterator[OrthancServer]:
    with orthanc_holding([*slides.ybr.files, *slides.walk.files]) as orthanc:
        yield orthanc


@pytest.fixture
def relay(server: OrthancServer) -> Iterator[HttpRelay]:
    with HttpRelay(server.host, server.port) as proxy:
        yield proxy


@pytest.fixture
def walk_sizes(server: OrthancServer, slides: Slides) -> dict[str, int]:
    """The size of each level-0 tile of the walk slide, straight from the server."""
    tiles = frames_by_path(server.dicomweb_url, slides.walk, nested=False)
    return {name: len(data) for name, data in tiles.items() if name.startswith("level-0/")}


def prefetch(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return run_idcfs("prefetch", *map(str, args))


def frame_requests(relay: HttpRelay) -> list[list[int]]:
    """The frame numbers of each frames request the relay saw, in order."""
    return [[int(number) for number in path.rsplit("/frames/", 1)[1].split(",")]
            for _, path in relay.requests if "/frames/" in path]


def statistics(mount_path: Path) -> dict:  # type: ignore[type-arg]
    return json.loads((mount_path / STATS).read_text())


def tree_bytes(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes()
            for path in sorted(folder.rglob("*")) if path.is_file()}


def test_a_prefetched_series_is_copied_and_remounted_without_a_request(
    server, relay, mount_idcfs, slides, tmp_path,  # type: ignore[no-untyped-def]
) -> None:
    cache = tmp_path / "cache"
    url = relay.url + "/dicom-web"
    mount = mount_idcfs(url, "--cache-dir", str(cache))
    series = series_dir(mount.path, slides.ybr)
    result = prefetch(series)
    assert result.returncode == 0, result.stderr + mount.log()
    instances = len(slides.ybr.files)  # 3 levels and 3 associated images, one frame run each
    assert len(frame_requests(relay)) == instances, relay.requests
    assert "20 tiles: 20 fetched" in result.stdout and "0 failed" in result.stdout
    relay.reset()
    again = prefetch(series)
    assert again.returncode == 0 and "0 fetched" in again.stdout, again.stdout
    assert "20 already cached" in again.stdout and frame_requests(relay) == []
    subprocess.run(["cp", "-r", str(series), str(tmp_path / "copy")], check=True)
    assert frame_requests(relay) == [], "the copy of a prefetched series asked the server"
    copied = tree_bytes(tmp_path / "copy")
    expected = frames_by_path(server.dicomweb_url, slides.ybr, nested=False)
    assert {name: copied[name] for name in expected} == expected
    assert {"label.jpg", "overview.jpg", "thumbnail.jpg", "slide.json"} <= copied.keys()
    stop_mount(mount)
    remounted = mount_idcfs(url, "--cache-dir", str(cache))
    relay.reset()
    subprocess.run(["cp", "-r", str(series_dir(remounted.path, slides.ybr)),
                    str(tmp_path / "again")], check=True)
    sent = [path for _, path in relay.requests if "/frames/" in path or "/metadata" in path]
    assert sent == [], remounted.log()
    assert tree_bytes(tmp_path / "again") == copied


def test_one_request_per_run_of_64_frames(relay, mount_idcfs, slides, tmp_path) -> None:  # type: ignore[no-untyped-def]
    mount = mount_idcfs(relay.url + "/dicom-web", "--cache-dir", str(tmp_path / "cache"))
    series = series_dir(mount.path, slides.walk)
    tiles = prefetch(series / "level-1" / "1_0.jpg", series / "level-1" / "3_0.jpg")
    assert tiles.returncode == 0 and "2 tiles: 2 fetched" in tiles.stdout, tiles.stderr
    assert frame_requests(relay) == [[2, 4]]  # two tile files: one request
    relay.reset()
    result = prefetch(series / "level-0")
    assert result.returncode == 0, result.stderr
    runs = frame_requests(relay)
    assert sorted(map(len, runs)) == [48, 64, 64, 64], runs
    assert all(run == list(range(run[0], run[0] + len(run))) for run in runs)
    assert sorted(number for run in runs for number in run) == list(range(1, 241))
    counted = statistics(mount.path)["prefetch"]
    assert counted["tiles_fetched"] == 242 and counted["tiles_failed"] == 0


def test_level_and_max_size_limit_a_run(relay, mount_idcfs, slides, walk_sizes, tmp_path) -> None:  # type: ignore[no-untyped-def]
    mount = mount_idcfs(relay.url + "/dicom-web", "--cache-dir", str(tmp_path / "cache"))
    series = series_dir(mount.path, slides.walk)
    only_level_1 = prefetch("--level", "1", series)
    assert only_level_1.returncode == 0, only_level_1.stderr
    level_1 = slides.walk.levels[1].instance_uids[0]
    assert [path for _, path in relay.requests if "/frames/" in path and level_1 not in path] == []
    assert sum(map(len, frame_requests(relay))) == 60
    relay.reset()
    before = statistics(mount.path)["prefetch"]["bytes_fetched"]
    limit = sum(sorted(walk_sizes.values())[:40])  # about 40 of the 240 tiles
    limited = prefetch("--max-size", str(limit), series / "level-0")
    assert limited.returncode == 0, limited.stderr
    fetched = statistics(mount.path)["prefetch"]["bytes_fetched"] - before
    assert 0 < fetched <= limit + max(walk_sizes.values()), (fetched, limit)
    assert "left out by --max-size" in limited.stdout
    relay.reset()
    again = prefetch("--max-size", str(limit), series / "level-0")
    assert again.returncode == 0 and frame_requests(relay) == [], again.stdout
    relay.reset()
    rest = prefetch(series / "level-0")
    assert rest.returncode == 0
    first_numbers = sum(map(len, frame_requests(relay)))
    assert 0 < first_numbers < 240  # only what the limited run left


def test_a_failure_is_listed_exits_1_and_the_next_run_fetches_only_it(
    relay, mount_idcfs, slides, tmp_path,  # type: ignore[no-untyped-def]
) -> None:
    mount = mount_idcfs(relay.url + "/dicom-web", "--cache-dir", str(tmp_path / "cache"),
                        "--timeout", "2")
    level = series_dir(mount.path, slides.walk) / "level-0"
    fault = relay.inject(500, None, path_contains="/frames/65,")  # the second run of 64
    result = prefetch(level)
    assert result.returncode == 1, result.stdout + result.stderr
    assert fault.served >= 1
    columns = WALK_TILES[0]
    failed = {f"{level}/{(number - 1) % columns}_{(number - 1) // columns}.jpg"
              for number in range(65, 129)}
    listed = {line.split(": ", 2)[1] for line in result.stderr.splitlines()
              if line.startswith("idcfs: /")}
    assert listed == failed, result.stderr
    assert "176 fetched" in result.stdout and "64 failed" in result.stdout
    relay.clear_faults()
    relay.reset()
    again = prefetch(level)
    assert again.returncode == 0, again.stderr
    assert frame_requests(relay) == [list(range(65, 129))]


def test_ctrl_c_stops_promptly_and_the_next_run_resumes(
    relay, mount_idcfs, slides, tmp_path,  # type: ignore[no-untyped-def]
) -> None:
    mount = mount_idcfs(relay.url + "/dicom-web", "--cache-dir", str(tmp_path / "cache"),
                        "--max-connections", "2")  # one request at a time
    level = series_dir(mount.path, slides.walk) / "level-0"
    os.listdir(level)  # listed before the clock starts
    relay.latency_s = 2.0
    process = subprocess.Popen(idcfs_command("prefetch", str(level)), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while len(frame_requests(relay)) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=1.5)  # promptly: before the batch lands
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, stderr
    assert "interrupted" in stderr and "resume" in stderr
    time.sleep(3.0)  # the batch in flight lands; no other starts
    stopped_at = len(frame_requests(relay))
    assert stopped_at < 4, "the daemon went on after the client left"
    relay.latency_s = 0.0
    resumed = prefetch(level)
    assert resumed.returncode == 0, resumed.stderr
    numbers = sorted(number for run in frame_requests(relay) for number in run)
    assert numbers == list(range(1, 241)), "a tile fetched twice, or not at all"
    assert f"{64 * stopped_at} already cached" in resumed.stdout, resumed.stdout


def test_an_unmount_stops_a_prefetch_and_keeps_the_batch_in_flight(
    relay, mount_idcfs, slides, tmp_path,  # type: ignore[no-untyped-def]
) -> None:
    cache = tmp_path / "cache"
    url = relay.url + "/dicom-web"
    mount = mount_idcfs(url, "--cache-dir", str(cache), "--max-connections", "2")
    level = series_dir(mount.path, slides.walk) / "level-0"
    os.listdir(level)
    relay.latency_s = 2.0
    process = subprocess.Popen(idcfs_command("prefetch", str(level)), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not frame_requests(relay) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert run_idcfs("unmount", str(mount.path)).returncode == 0
        stdout, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 1 and "stopped before the end" in stderr, stdout + stderr
    assert len(frame_requests(relay)) == 1
    relay.latency_s = 0.0
    again = mount_idcfs(url, "--cache-dir", str(cache))
    resumed = prefetch(series_dir(again.path, slides.walk) / "level-0")
    assert resumed.returncode == 0 and "64 already cached" in resumed.stdout, resumed.stdout


def test_usage_errors_are_one_line_and_exit_2(relay, mount_idcfs, slides, tmp_path) -> None:  # type: ignore[no-untyped-def]
    mount = mount_idcfs(relay.url + "/dicom-web")
    series = series_dir(mount.path, slides.ybr)
    cases = [
        ("--cache-dir", prefetch(series)),
        ("not in an idcfs mount", prefetch(tmp_path)),
        ("not in an idcfs mount", prefetch(series, tmp_path)),
        ("no such file or directory", prefetch(series / "level-9")),
        ("bad level", prefetch("--level", "x", series)),
    ]
    for expected, result in cases:
        assert result.returncode == 2, (expected, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0], result.stderr
    assert frame_requests(relay) == []


def test_the_control_socket_is_the_mounting_users_alone(relay, mount_idcfs, tmp_path) -> None:  # type: ignore[no-untyped-def]
    mount = mount_idcfs(relay.url + "/dicom-web", "--cache-dir", str(tmp_path / "cache"))
    path = Path(statistics(mount.path)["control"]["socket"])
    info, folder = path.stat(), path.parent.stat()
    assert stat.S_ISSOCK(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o600
    assert stat.S_IMODE(folder.st_mode) == 0o700
    assert info.st_uid == folder.st_uid == os.geteuid()
    system_python = Path("/usr/bin/python3")  # one another user may run
    if os.geteuid() != 0 or not system_python.exists():
        pytest.skip("another user's attempt needs root and /usr/bin/python3")
    reach = ("import socket, sys; s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); "
             "s.sendall(b'{}\\n'); print(s.makefile().readline().strip())")
    denied = subprocess.run([str(system_python), "-c", reach, str(path)], user=65534,
                            capture_output=True, text=True, timeout=30)
    assert "PermissionError" in denied.stderr, denied
    os.chmod(path.parent, 0o755)  # opened up: the daemon's own check still refuses
    os.chmod(path, 0o666)
    try:
        refused = subprocess.run([str(system_python), "-c", reach, str(path)], user=65534,
                                 capture_output=True, text=True, timeout=30)
    finally:
        os.chmod(path.parent, 0o700)
        os.chmod(path, 0o600)
    assert refused.stdout, refused
    assert json.loads(refused.stdout)["event"] == "refused", refused
    assert "only the user who mounted it" in refused.stdout
    with socket.socket(socket.AF_UNIX) as own:  # the owner is answered
        own.connect(str(path))
        own.sendall(b'{"command": "nothing"}\n')
        answer = json.loads(own.makefile().readline())
    assert answer == {"event": "refused", "message": "unknown command 'nothing'"}
