"""Issue 4's mechanisms through real mounts: batched read-ahead for sequential readers,
none for random ones, and the disk cache across a remount (requests counted by a relay)."""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.support.expected import tile_names, tile_paths
from tests.support.mounting import named, series_dir, stop_mount
from tests.support.slides import write_pyramid


def _big_slide(orthanc, tmp_path: Path):  # type: ignore[no-untyped-def]
    slide = write_pyramid(tmp_path / "big", "speed", width=24 * 256, height=10 * 256)
    orthanc.upload(slide.files)
    return slide


def _frame_lists(relay) -> list[list[str]]:  # type: ignore[no-untyped-def]
    """The frame numbers of each frames request the relay saw."""
    return [path.rsplit("/frames/", 1)[1].split(",")
            for _, path in relay.requests if "/frames/" in path]


def test_sequential_reads_are_batched(orthanc, relay, mount_idcfs, tmp_path) -> None:
    slide = _big_slide(orthanc, tmp_path)
    mount = mount_idcfs(relay.url + "/dicom-web")
    level = series_dir(mount.path, slide) / "level-0"
    names = tile_names(level)  # readdir order = frame order
    relay.reset()
    copied = subprocess.run(["cp", "-r", str(level), str(tmp_path / "copy")], check=True)
    assert copied.returncode == 0
    assert len(names) == 240
    for name in names:
        assert (tmp_path / "copy" / name).read_bytes() == (level / name).read_bytes()
    assert relay.count("/frames/") <= 12, "240 tiles read in order must come in batches"


def test_random_reads_fetch_only_what_is_asked(orthanc, relay, mount_idcfs, tmp_path) -> None:
    slide = _big_slide(orthanc, tmp_path)
    mount = mount_idcfs(relay.url + "/dicom-web")
    level = series_dir(mount.path, slide) / "level-0"
    names = tile_names(level)
    relay.reset()
    chosen = random.Random(1).sample(names, 20)
    for name in chosen:
        assert (level / name).read_bytes()[:2] == b"\xff\xd8"
    frames = sum(len(path.rsplit("/frames/", 1)[1].split(","))
                 for _, path in relay.requests if "/frames/" in path)
    assert frames <= 22, "random reads must not trigger read-ahead"


def test_disk_cache_survives_remount(relay, mount_idcfs, test_slides, tmp_path) -> None:
    cache_dir = tmp_path / "disk-cache"
    slide = named(test_slides, "jpeg_ybr")
    first = mount_idcfs(relay.url + "/dicom-web", "--cache-dir", str(cache_dir))
    folder = series_dir(first.path, slide)
    before = {p.name: p.read_bytes() for p in tile_paths(folder / "level-0")}
    stop_mount(first)
    assert cache_dir.stat().st_mode & 0o777 == 0o700
    second = mount_idcfs(relay.url + "/dicom-web", "--cache-dir", str(cache_dir))
    relay.reset()
    folder = series_dir(second.path, slide)
    after = {p.name: p.read_bytes() for p in tile_paths(folder / "level-0")}
    assert after == before
    fetched = [path for _, path in relay.requests if "/frames/" in path or "/metadata" in path]
    assert not fetched, f"sent {fetched}; first log:\n{first.log()}\nsecond:\n{second.log()}"


def _read_then_remount(relay, mount_idcfs, test_slides, tmp_path, between=None, slide=None):  # type: ignore[no-untyped-def]
    """Read level-0 of a slide (the RGB one by default) with a disk cache, unmount, call
    `between(cache_dir)`, mount again; (the level in the new mount, the bytes read the
    first time)."""
    cache_dir = tmp_path / "disk-cache"
    slide = slide or named(test_slides, "jpeg_rgb")
    first = mount_idcfs(relay.url + "/dicom-web", "--cache-dir", str(cache_dir))
    level = series_dir(first.path, slide) / "level-0"
    before = {p.name: p.read_bytes() for p in tile_paths(level)}
    stop_mount(first)
    if between is not None:
        between(cache_dir)
    second = mount_idcfs(relay.url + "/dicom-web", "--cache-dir", str(cache_dir))
    return series_dir(second.path, slide) / "level-0", before


def test_remount_shows_exact_sizes_from_the_disk_cache(relay, mount_idcfs, test_slides,
                                                      tmp_path) -> None:
    level, before = _read_then_remount(relay, mount_idcfs, test_slides, tmp_path)
    shown = {p.name: p.stat().st_size for p in tile_paths(level)}  # nothing opened yet
    assert shown == {name: len(data) for name, data in before.items()}
    assert {p.name: p.read_bytes() for p in tile_paths(level)} == before


def _spoil_size_index(cache_dir: Path) -> None:
    from array import array

    from idcfs.cache.disk import DiskCache

    disk = DiskCache(cache_dir, 1 << 30)
    keys = [key for key in disk._store.iterkeys() if str(key).startswith("sizes/")]
    assert keys
    for key in keys:
        count = len(disk.get(key)) // 4
        disk.put(key, array("I", [5] * count).tobytes())  # every size wrong
    disk.close()


def test_a_wrong_size_in_the_index_is_corrected_on_open(relay, mount_idcfs, test_slides,
                                                       tmp_path) -> None:
    level, before = _read_then_remount(relay, mount_idcfs, test_slides, tmp_path,
                                       between=_spoil_size_index)
    name = sorted(before)[1]
    assert (level / name).stat().st_size == 5
    copied = tmp_path / "copied.jpg"
    subprocess.run(["cp", str(level / name), str(copied)], check=True)
    assert copied.read_bytes() == before[name]
    assert (level / name).stat().st_size == len(before[name])
    assert (level / name).read_bytes() == before[name]


def _damage_tiles(cache_dir: Path) -> None:
    from idcfs.cache.disk import DiskCache

    disk = DiskCache(cache_dir, 1 << 30)
    keys = [key for key in disk._store.iterkeys() if str(key).startswith("tile/")]
    assert keys
    for key in keys:
        stored = disk._store.get(key)
        disk._store.set(key, stored[:-1] + bytes([stored[-1] ^ 0xFF]))  # one flipped byte
    disk.close()


def test_damaged_disk_cache_entries_are_fetched_again(relay, mount_idcfs, test_slides,
                                                      tmp_path) -> None:
    level, before = _read_then_remount(relay, mount_idcfs, test_slides, tmp_path,
                                       between=_damage_tiles)
    relay.reset()
    assert {name: (level / name).read_bytes() for name in before} == before
    fetched = sum(len(frames) for frames in _frame_lists(relay))
    assert fetched == len(before), "every damaged tile is fetched again, once"


def _statistics(level: Path) -> dict:  # type: ignore[type-arg]
    root = level.parents[3]  # ROOT/studies/STUDY/SERIES/level-0
    return json.loads((root / ".idcfs-stats.json").read_bytes())


def _stored_into_page_cache(level: Path) -> dict[str, int]:
    statistics = _statistics(level)
    in_process, helper = statistics["page_cache_fill"], statistics["disk_page_fill"]
    return {"in_process": in_process["stored"], "helper": helper["stored"],
            "settled": in_process["stored"] + in_process["skipped_opened"] + helper["stored"]
            + helper["given_back"]}


def _filled_after_remount(orthanc, relay, mount_idcfs, tmp_path):  # type: ignore[no-untyped-def]
    """A level read, remounted and listed (the kernel learns every exact size), its first
    tile read (a walk starts there) and the page cache filled; (level, bytes first read,
    how many tiles were stored)."""
    slide = _big_slide(orthanc, tmp_path)
    level, before = _read_then_remount(relay, mount_idcfs, None, tmp_path, slide=slide)
    names = tile_names(level)
    assert (level / names[0]).read_bytes() == before[names[0]]
    deadline = time.monotonic() + 60
    stored = _stored_into_page_cache(level)
    while stored["settled"] < len(names) - 1 and time.monotonic() < deadline:
        time.sleep(0.1)
        stored = _stored_into_page_cache(level)
    return level, before, stored


def _helper_pids(mount) -> list[int]:  # type: ignore[no-untyped-def]
    """The child processes of a mount's daemon (the disk page filler)."""
    pids = []
    for task in Path(f"/proc/{mount.pid}/task").iterdir():
        pids += [int(pid) for pid in (task / "children").read_text().split()]
    return pids


def _drop_pages(path: Path) -> None:
    with open(path, "rb") as handle:
        os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def test_a_walk_after_remount_is_read_from_the_page_cache(orthanc, relay, mount_idcfs,
                                                          tmp_path) -> None:
    """After a remount, a helper process stores the tiles read ahead from the disk cache
    into the kernel's page cache: the walk's reads never reach the daemon, and the bytes
    are the ones first read. A tile whose pages the kernel drops is read through the
    daemon. The helper ends with the mount."""
    level, before, stored = _filled_after_remount(orthanc, relay, mount_idcfs, tmp_path)
    reads_before = _statistics(level)["fuse"]["reads_served"]
    assert {name: (level / name).read_bytes() for name in before} == before
    reads = _statistics(level)["fuse"]["reads_served"] - reads_before
    assert stored["helper"] >= len(before) // 2, stored
    statistics_file_reads = 2  # the statistics file is read through the daemon (direct_io)
    unstored = len(before) - stored["helper"] - stored["in_process"]
    assert reads <= unstored + statistics_file_reads, (reads, stored)

    name = tile_names(level)[-1]
    _drop_pages(level / name)
    reads_before = _statistics(level)["fuse"]["reads_served"]
    assert (level / name).read_bytes() == before[name]
    assert _statistics(level)["fuse"]["reads_served"] - reads_before >= 2

    mount = mount_idcfs.mounts[-1]
    helpers = _helper_pids(mount)
    assert len(helpers) == 1
    stop_mount(mount)
    assert not Path(f"/proc/{helpers[0]}").exists(), "the helper ends with the mount"


def test_a_tile_changed_since_it_was_stored_is_an_error_not_truncated(
    orthanc, relay, mount_idcfs, tmp_path
) -> None:
    """A tile in the page cache whose bytes on disk change size before the kernel drops
    its pages: the read that reaches the daemon is EIO, with a log line, never short."""
    from idcfs.cache.disk import DiskCache

    level, before, stored = _filled_after_remount(orthanc, relay, mount_idcfs, tmp_path)
    assert stored["helper"] >= len(before) // 2, stored
    name = tile_names(level)[-1]
    disk = DiskCache(tmp_path / "disk-cache", 1 << 30)
    keys = [key for key in disk._store.iterkeys() if str(key).startswith("tile/")]
    for key in keys:
        disk.put(key, disk.get(key) + b"longer now")
    disk.close()
    _drop_pages(level / name)
    with open(level / name, "rb") as handle:
        for _ in range(2):  # and again: the handle stays failed
            with pytest.raises(OSError) as raised:
                handle.read()
            assert raised.value.errno == errno.EIO
    assert "shown at open: EIO" in mount_idcfs.mounts[-1].log()
    assert (level / name).read_bytes() == before[name] + b"longer now"  # opened again


def test_reads_stay_right_when_the_page_filler_process_dies(orthanc, relay, mount_idcfs,
                                                            tmp_path) -> None:
    slide = _big_slide(orthanc, tmp_path)
    level, before = _read_then_remount(relay, mount_idcfs, None, tmp_path, slide=slide)
    mount = mount_idcfs.mounts[-1]
    for pid in _helper_pids(mount):
        os.kill(pid, signal.SIGKILL)
    assert {name: (level / name).read_bytes() for name in tile_names(level)} == before
    assert _statistics(level)["disk_page_fill"]["running"] is False
    assert "disk page filler stopped" in mount.log()


def test_no_tile_is_stored_into_the_page_cache_at_a_placeholder_size(orthanc, relay, mount_idcfs,
                                                                     tmp_path) -> None:
    """Without a disk cache, the kernel holds placeholder sizes: read-ahead stores nothing
    (the pages past a wrong size would be dropped, or worse, kept)."""
    slide = _big_slide(orthanc, tmp_path)
    mount = mount_idcfs(relay.url + "/dicom-web")
    level = series_dir(mount.path, slide) / "level-0"
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-r", str(level), str(copy)], check=True)
    filled = _statistics(level)["page_cache_fill"]
    assert filled["stored"] == 0, filled
    for name in tile_names(level):
        assert (copy / name).read_bytes() == (level / name).read_bytes()


def test_concurrent_random_readers_share_requests(orthanc, relay, mount_idcfs, tmp_path) -> None:
    slide = _big_slide(orthanc, tmp_path)
    mount = mount_idcfs(relay.url + "/dicom-web")
    level = series_dir(mount.path, slide) / "level-0"
    names = tile_names(level)
    chosen = random.Random(7).sample(names[1:], 8)  # not the first tile: no read-ahead
    relay.reset()
    relay.latency_s = 0.3
    barrier = threading.Barrier(len(chosen))

    def read(name: str) -> bytes:
        barrier.wait()
        return (level / name).read_bytes()

    try:
        with ThreadPoolExecutor(len(chosen)) as pool:
            contents = list(pool.map(read, chosen))
    finally:
        relay.latency_s = 0.0
    assert all(data[:2] == b"\xff\xd8" for data in contents)
    frame_lists = _frame_lists(relay)
    assert sum(len(frames) for frames in frame_lists) == 8
    assert len(frame_lists) <= 4, "8 readers at once must share requests"
    for name, data in zip(chosen, contents, strict=True):
        assert (level / name).read_bytes() == data


def test_readers_reading_on_keep_sharing_requests(orthanc, relay, mount_idcfs, tmp_path) -> None:
    """An ML loader's workers: each reads a tile, spends a few ms on it, reads the next.
    A request's slot waits for its readers to come back, so each round of 8 reads costs
    about 2 requests (one per slot), not a request per straggler."""
    slide = _big_slide(orthanc, tmp_path)
    mount = mount_idcfs(relay.url + "/dicom-web")
    level = series_dir(mount.path, slide) / "level-0"
    names = tile_names(level)
    readers, rounds = 8, 7
    spaced = names[4::4]  # no two opens a walk apart: no read-ahead
    chosen = random.Random(8).sample(spaced, readers * rounds)
    relay.reset()
    relay.latency_s = 0.5  # a slot then waits up to 50 ms for its readers

    def read_on(reader: int) -> list[bytes]:
        contents = []
        for round_number in range(rounds):
            contents.append((level / chosen[reader + readers * round_number]).read_bytes())
            time.sleep(0.004 * reader)  # a decode: 0-28 ms
        return contents

    try:
        with ThreadPoolExecutor(readers) as pool:
            results = list(pool.map(read_on, range(readers)))
    finally:
        relay.latency_s = 0.0
    frame_lists = _frame_lists(relay)
    assert sum(len(frames) for frames in frame_lists) == readers * rounds
    # 2 per round when settled, more while the first rounds sort themselves into two
    # groups; without the wait, 25-27 here
    assert len(frame_lists) <= 2 * rounds + 8, frame_lists
    for reader, contents in enumerate(results):
        for round_number, data in enumerate(contents):
            assert (level / chosen[reader + readers * round_number]).read_bytes() == data


def _small_tile_slide(orthanc, tmp_path: Path):  # type: ignore[no-untyped-def]
    """1,200 tiles of 64 x 64 (a grid larger than read-ahead's windows)."""
    slide = write_pyramid(tmp_path / "small-tiles", "small", width=40 * 64, height=30 * 64,
                          tile=64)
    orthanc.upload(slide.files)
    return slide


def _frames_fetched(relay) -> int:  # type: ignore[no-untyped-def]
    return sum(len(frames) for frames in _frame_lists(relay))


def _settled(relay, quiet_s: float = 1.0, limit_s: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    """Wait until the relay has seen no new request for `quiet_s`."""
    deadline = time.monotonic() + limit_s
    seen, since = len(relay.requests), time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - since < quiet_s:
        time.sleep(0.1)
        if len(relay.requests) != seen:
            seen, since = len(relay.requests), time.monotonic()


def test_read_ahead_nobody_consumes_is_capped(orthanc, relay, mount_idcfs, tmp_path) -> None:
    """A walk that stops after its first tile: read-ahead fetches its first window and
    no more, because the staging area (--readahead-size) is full and nobody reads it;
    what it holds stays within that size."""
    slide = _small_tile_slide(orthanc, tmp_path)
    mount = mount_idcfs(relay.url + "/dicom-web", "--readahead-size", "32K")
    level = series_dir(mount.path, slide) / "level-0"
    names = tile_names(level)
    relay.reset()
    (level / names[0]).read_bytes()  # where a walk starts
    _settled(relay)
    first_window = 256
    assert _frames_fetched(relay) <= first_window + 1, _frame_lists(relay)
    assert _statistics(level)["readahead_staged_bytes"] <= 32 << 10
    assert len(names) == 1200


def test_read_ahead_never_evicts_tiles_being_read(orthanc, relay, mount_idcfs,
                                                  tmp_path) -> None:
    """Tiles read (memory cache) stay when read-ahead then fetches far more than the
    staging area holds: reading them again sends no request."""
    slide = _small_tile_slide(orthanc, tmp_path)
    mount = mount_idcfs(relay.url + "/dicom-web", "--readahead-size", "32K")
    level = series_dir(mount.path, slide) / "level-0"
    names = tile_names(level)
    kept = [names[index] for index in range(300, 1200, 45)]  # far apart: no walk
    first = {name: (level / name).read_bytes() for name in kept}
    relay.reset()
    (level / names[0]).read_bytes()  # a walk starts: 256 tiles read ahead
    _settled(relay)
    assert _frames_fetched(relay) > 200
    relay.reset()
    assert {name: (level / name).read_bytes() for name in kept} == first
    assert _frames_fetched(relay) == 0, "tiles being read were evicted by read-ahead"
