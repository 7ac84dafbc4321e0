"""Laziness, sharing, errors and read-only behaviour of a real mount (requests counted by
a relay in front of the real Orthanc)."""

from __future__ import annotations

import errno
import os
import subprocess
import threading
from pathlib import Path

import pytest

from tests.support.mounting import named, series_dir


@pytest.fixture
def relayed(relay, mount_idcfs):  # type: ignore[no-untyped-def]
    mount = mount_idcfs(relay.url + "/dicom-web")
    relay.reset()
    return mount


def test_listing_fetches_no_frames_and_metadata_once(relayed, relay, test_slides) -> None:
    folder = series_dir(relayed.path, named(test_slides, "jpeg_ybr"))
    subprocess.run(["ls", "-lR", str(folder)], check=True, capture_output=True)
    subprocess.run(["find", str(relayed.path), "-type", "f"], check=True, capture_output=True)
    os.stat(folder / "level-0" / "0_0.jpg")
    assert relay.count("/frames/") == 0
    assert relay.count(f"/series/{folder.name}/metadata") == 1
    subprocess.run(["ls", "-lR", str(folder)], check=True, capture_output=True)
    assert relay.count(f"/series/{folder.name}/metadata") == 1
    assert relay.count("/frames/") == 0


def test_tile_size_is_a_placeholder_until_read_then_exact(relayed, test_slides) -> None:
    tile = series_dir(relayed.path, named(test_slides, "jpeg_ybr")) / "level-2" / "0_0.jpg"
    before = tile.stat().st_size
    data = tile.read_bytes()
    assert tile.stat().st_size == len(data)
    assert before >= len(data)


def test_concurrent_reads_of_one_tile_make_one_request(relayed, relay, test_slides) -> None:
    folder = series_dir(relayed.path, named(test_slides, "jpeg_ybr"))
    tile = folder / "level-0" / "1_1.jpg"
    os.listdir(folder / "level-0")
    relay.reset()
    results: list[bytes] = []
    barrier = threading.Barrier(8)

    def read() -> None:
        barrier.wait()
        results.append(tile.read_bytes())

    threads = [threading.Thread(target=read) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(results) == 8 and len(set(results)) == 1
    assert relay.count("/frames/") == 1


def test_server_failure_is_eio_with_a_log_line_and_recovers(relayed, relay, test_slides) -> None:
    tile = series_dir(relayed.path, named(test_slides, "jpeg_ybr")) / "level-1" / "1_1.jpg"
    os.listdir(tile.parent)
    relay.inject(503, times=50, path_contains="/frames/")
    with pytest.raises(OSError) as caught:
        tile.read_bytes()
    assert caught.value.errno == errno.EIO
    assert "EIO on open" in relayed.log() and "HTTP 503" in relayed.log()
    relay.reset()
    assert len(tile.read_bytes()) > 0  # a failure is not remembered


def test_transient_errors_are_retried(relayed, relay, test_slides) -> None:
    tile = series_dir(relayed.path, named(test_slides, "jpeg_ybr")) / "level-1" / "0_1.jpg"
    os.listdir(tile.parent)
    relay.inject(500, times=2, path_contains="/frames/")
    assert len(tile.read_bytes()) > 0


def test_metadata_failure_is_eio_not_enoent(relayed, relay, test_slides) -> None:
    folder = series_dir(relayed.path, named(test_slides, "focal_planes"))
    relay.inject(503, times=50, path_contains="/metadata")
    with pytest.raises(OSError) as caught:
        os.listdir(folder)
    assert caught.value.errno == errno.EIO
    relay.reset()
    assert "slide.json" in os.listdir(folder)


def test_missing_paths_are_enoent(relayed, test_slides) -> None:
    folder = series_dir(relayed.path, named(test_slides, "jpeg_ybr"))
    for missing in (relayed.path / "nope", folder / "level-9", folder / "level-0" / "99_99.jpg",
                    relayed.path / "studies" / "1.2.3"):
        with pytest.raises(FileNotFoundError):
            missing.stat()


def test_writes_are_erofs(relayed, test_slides) -> None:
    folder = series_dir(relayed.path, named(test_slides, "jpeg_ybr"))
    tile = folder / "level-0" / "0_0.jpg"
    attempts = [
        lambda: os.open(tile, os.O_RDWR),
        lambda: os.open(folder / "new.txt", os.O_WRONLY | os.O_CREAT),
        lambda: os.mkdir(folder / "dir"),
        lambda: os.rename(tile, folder / "moved.jpg"),
        lambda: os.chmod(tile, 0o777),
        lambda: os.unlink(tile),
    ]
    for attempt in attempts:
        with pytest.raises(OSError) as caught:
            attempt()
        assert caught.value.errno == errno.EROFS


def test_small_cache_still_serves_right_bytes(relay, mount_idcfs, test_slides) -> None:
    mount = mount_idcfs(relay.url + "/dicom-web", "--cache-size", "16K")
    folder = series_dir(mount.path, named(test_slides, "jpeg_ybr")) / "level-0"
    first = {path.name: path.read_bytes() for path in sorted(folder.iterdir())}
    again = {path.name: path.read_bytes() for path in sorted(Path(folder).iterdir())}
    assert first == again
