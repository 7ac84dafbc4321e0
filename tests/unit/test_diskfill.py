"""Unit tests of filling the page cache from the disk cache in a helper process: the
FUSE store message, the helper's checks, and which tiles the daemon hands over."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from collections.abc import Collection, Iterator
from pathlib import Path

import pytest

from idcfs.cache.disk import DiskCache
from idcfs.cache.memory import ByteLRU
from idcfs.cache.tiles import TileCache
from idcfs.fetch.loader import TileLoader
from idcfs.fetch.slides import SlideStore
from idcfs.fs.nodes import TileFile, TileFileIndex
from idcfs.fuse import diskfill_process, fuse_store
from idcfs.fuse.diskfill import DiskPageFiller
from idcfs.metrics import Metrics
from idcfs.slide.model import FrameRef, Slide
from idcfs.tiles.convert import DEFAULT_QUALITY
from tests.support.memory_source import MemorySource
from tests.support.slides import GeneratedSlide


def test_a_store_is_one_write_of_header_arguments_and_data() -> None:
    read_end, write_end = os.pipe()
    try:
        fuse_store.store(write_end, 77, b"tile bytes")
        message = os.read(read_end, 4096)
    finally:
        os.close(read_end)
        os.close(write_end)
    length, code, unique = struct.unpack_from("<IiQ", message)
    nodeid, offset, size, _ = struct.unpack_from("<QQII", message, 16)
    assert (length, code, unique) == (len(message), 4, 0)  # FUSE_NOTIFY_STORE
    assert (nodeid, offset, size) == (77, 0, 10)
    assert message[40:] == b"tile bytes"


def test_no_session_descriptor_outside_a_fuse_daemon() -> None:
    assert fuse_store.session_fd() is None


def _disk_with(tmp_path: Path, entries: dict[str, bytes]) -> DiskCache:
    disk = DiskCache(tmp_path / "cache", 1 << 20)
    for key, data in entries.items():
        disk.put(key, data)
    return disk


def test_the_helper_stores_only_sound_tiles_of_the_size_the_kernel_holds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    disk = _disk_with(tmp_path, {"a": b"aaaa", "b": b"bbbbbb", "c": b"cc"})
    stored_key = disk._store.get("c")
    disk._store.set("c", stored_key[:-1] + b"X")  # damaged
    stores: list[tuple[int, bytes]] = []

    def store(fd: int, inode: int, data: bytes) -> None:
        if inode == 13:
            raise FileNotFoundError(inode)  # the kernel forgot this one
        stores.append((inode, data))

    monkeypatch.setattr(diskfill_process, "store", store)
    request = [["a", 4, [11, 12, 13]], ["b", 5, [21]], ["c", 2, [31]], ["gone", 3, [41]]]
    assert diskfill_process.fill(disk, 99, request) == [11, 12]
    assert stores == [(11, b"aaaa"), (12, b"aaaa")]
    assert disk.get("c") is None and disk.dropped == 1  # dropped, as the daemon would
    disk.close()


class ListedTiles:
    """Tile files of a real slide as a listing made them, over a real loader and disk."""

    def __init__(self, generated: GeneratedSlide, disk: DiskCache) -> None:
        source = MemorySource(generated.files)
        self.slide = SlideStore(source).get(generated.study_uid, generated.series_uid)
        self.metrics = Metrics()
        self.disk = disk
        self.tiles = TileCache(ByteLRU(1 << 20), ByteLRU(1 << 20), disk, DEFAULT_QUALITY,
                               self.metrics)
        self.loader = TileLoader(source, self.tiles, self.metrics)
        self.index = TileFileIndex()
        self.files: dict[int, list[TileFile]] = {}

    def frames(self, *numbers: int) -> list[FrameRef]:
        tiles = self.slide.levels[0].grids[0].tiles
        return [tiles[number - 1].frame for number in numbers]

    def add(self, number: int, inode: int, exact_size: int | None,
            filled: bool = False) -> TileFile:
        """A listed file of level-0 tile `number`."""
        (frame,) = self.frames(number)
        node = TileFile(f"{number}.jpg", self.slide, frame, self.loader, 999)
        node.inode, node.exact_size, node.filled = inode, exact_size, filled
        self.index.add(node)
        self.files.setdefault(number, []).append(node)
        return node

    def hold_in_memory(self, number: int) -> None:
        (frame,) = self.frames(number)
        self.tiles.keep(self.slide, frame, b"in memory", staged=False)


class GivenBack:
    """Records what the filler gives back to read-ahead (a `GiveBack`)."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    def __call__(self, slide: Slide, frames: list[FrameRef]) -> None:
        self.batches.append([frame.number for frame in frames])


@pytest.fixture
def listed(test_slides: list[GeneratedSlide], tmp_path: Path) -> Iterator[ListedTiles]:
    generated = next(slide for slide in test_slides if slide.name == "jpeg_ybr")
    disk = DiskCache(tmp_path / "cache", 1 << 20)
    yield ListedTiles(generated, disk)
    disk.close()


@pytest.fixture
def idle_helper() -> Iterator[subprocess.Popen[bytes]]:
    """A process standing in for the helper: batches are taken, never sent (no thread)."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield process
    process.kill()
    process.wait()


def running_filler(listed: ListedTiles, helper: subprocess.Popen[bytes],
                   open_inodes: Collection[int] = (), queued: int = 16) -> DiskPageFiller:
    filler = DiskPageFiller(listed.index, open_inodes.__contains__, listed.loader, listed.disk,
                            listed.metrics, queued_batches=queued)
    filler._process = helper
    return filler


def test_only_unopened_tiles_of_exact_size_not_in_memory_are_handed_over(
    listed: ListedTiles, idle_helper: subprocess.Popen[bytes]
) -> None:
    listed.add(1, 101, 500)
    listed.add(2, 102, None)  # placeholder size
    listed.add(3, 103, 500)  # open
    listed.add(4, 104, 500)  # in memory or being fetched
    listed.hold_in_memory(4)
    listed.add(5, 105, 500, filled=True)  # stored already
    listed.add(6, 106, 500)  # listed twice
    listed.add(6, 206, 500)
    listed.add(7, 107, 500)  # listed twice, one size unknown
    listed.add(7, 207, None)
    filler = running_filler(listed, idle_helper, open_inodes={103})
    taken = filler.take(listed.slide, listed.frames(1, 2, 3, 4, 5, 6, 7, 8), GivenBack())
    assert [frame.number for frame in taken] == [1, 6]


def test_a_tile_being_fetched_is_not_handed_over(
    listed: ListedTiles, idle_helper: subprocess.Popen[bytes]
) -> None:
    listed.add(1, 101, 500)
    listed.loader.claim_for_prefetch(listed.slide, listed.frames(1))  # in flight
    filler = running_filler(listed, idle_helper)
    assert filler.take(listed.slide, listed.frames(1), GivenBack()) == []


def test_nothing_is_handed_over_when_the_helper_is_behind_or_stopped(
    listed: ListedTiles, idle_helper: subprocess.Popen[bytes]
) -> None:
    for number in range(1, 5):
        listed.add(number, 100 + number, 500)
    filler = running_filler(listed, idle_helper, queued=1)
    assert len(filler.take(listed.slide, listed.frames(1, 2), GivenBack())) == 2
    assert filler.take(listed.slide, listed.frames(3), GivenBack()) == []
    assert filler.not_taken_busy.value == 1
    filler._stopping.set()
    assert filler.take(listed.slide, listed.frames(4), GivenBack()) == []


def test_nothing_is_handed_over_before_the_helper_runs(listed: ListedTiles) -> None:
    listed.add(1, 101, 500)
    filler = DiskPageFiller(listed.index, lambda inode: False, listed.loader, listed.disk,
                            listed.metrics)
    assert filler.take(listed.slide, listed.frames(1), GivenBack()) == []
    assert listed.metrics.value("disk_page_fill.running") is False


def test_stored_files_are_marked_and_the_rest_given_back(
    listed: ListedTiles, idle_helper: subprocess.Popen[bytes]
) -> None:
    listed.add(1, 101, 500)
    listed.add(1, 201, 500)
    listed.add(2, 102, 500)
    files = listed.files
    filler = running_filler(listed, idle_helper)
    given = GivenBack()
    wanted = {frame: files[frame.number] for frame in listed.frames(1, 2)}
    filler._settle(listed.slide, wanted, {101}, given)
    assert [f.filled for f in files[1]] == [True, False] and not files[2][0].filled
    assert given.batches == [[2]]
    assert listed.metrics.snapshot()["disk_page_fill"] | {"running": None} == {
        "running": None, "stored": 1, "given_back": 1, "not_taken_busy": 0}


def test_after_a_failure_batches_still_queued_are_given_back(
    listed: ListedTiles, idle_helper: subprocess.Popen[bytes]
) -> None:
    for number in range(1, 5):
        listed.add(number, 100 + number, 500)
    filler = running_filler(listed, idle_helper)
    given = GivenBack()
    filler.take(listed.slide, listed.frames(1, 2), given)
    filler.take(listed.slide, listed.frames(3, 4), given)
    filler._failed.set()  # the helper ended after these were taken
    filler._queue.put(None)
    filler._run()
    assert given.batches == [[1, 2], [3, 4]]
    assert not any(node.filled for nodes in listed.files.values() for node in nodes)
