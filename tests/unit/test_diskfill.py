"""Unit tests of filling the page cache from the disk cache in a helper process: the
FUSE store message, the helper's checks, and which tiles the daemon hands over."""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any

import pytest

from idcfs.cache.disk import DiskCache
from idcfs.fuse import diskfill_process, fuse_store
from idcfs.fuse.diskfill import DiskPageFiller
from idcfs.slide.model import FrameRef


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


class FakeLoader:
    def __init__(self, held: set[int]) -> None:
        self.held = held

    def holds(self, slide: Any, frame: FrameRef) -> bool:
        return frame.number in self.held

    def disk_key(self, slide: Any, frame: FrameRef) -> str:
        return f"tile/{frame.number}"


class FakeFile:
    def __init__(self, inode: int, exact_size: int | None, filled: bool = False) -> None:
        self.inode = inode
        self.exact_size = exact_size
        self.filled = filled


class FakeTree:
    def __init__(self, files: dict[int, list[FakeFile]], held: set[int]) -> None:
        self.files = files
        self.loader = FakeLoader(held)

    def tile_files(self, slide: Any, frame: FrameRef) -> list[FakeFile]:
        return self.files.get(frame.number, [])


def _frames(*numbers: int) -> list[FrameRef]:
    return [FrameRef("1.2.3", number) for number in numbers]


def _running_filler(files: dict[int, list[FakeFile]], held: set[int] = frozenset(),  # type: ignore[assignment]
                    open_inodes: set[int] = frozenset(), queued: int = 16) -> DiskPageFiller:  # type: ignore[assignment]
    filler = DiskPageFiller(FakeTree(files, held), open_inodes.__contains__,  # type: ignore[arg-type]
                            None, queued_batches=queued)  # type: ignore[arg-type]
    filler._process = object()  # type: ignore[assignment]  # taken, never sent: no thread
    return filler


def test_only_unopened_tiles_of_exact_size_not_in_memory_are_handed_over() -> None:
    files = {
        1: [FakeFile(101, 500)],
        2: [FakeFile(102, None)],  # placeholder size
        3: [FakeFile(103, 500)],  # open
        4: [FakeFile(104, 500)],  # in memory or being fetched
        5: [FakeFile(105, 500, filled=True)],  # stored already
        6: [FakeFile(106, 500), FakeFile(206, 500)],  # listed twice
        7: [FakeFile(107, 500), FakeFile(207, None)],  # listed twice, one size unknown
    }
    filler = _running_filler(files, held={4}, open_inodes={103})
    taken = filler.take("slide", _frames(1, 2, 3, 4, 5, 6, 7, 8))  # type: ignore[arg-type]
    assert [frame.number for frame in taken] == [1, 6]


def test_nothing_is_handed_over_when_the_helper_is_behind_or_stopped() -> None:
    files = {number: [FakeFile(100 + number, 500)] for number in range(1, 5)}
    filler = _running_filler(files, queued=1)
    assert len(filler.take("slide", _frames(1, 2))) == 2  # type: ignore[arg-type]
    assert filler.take("slide", _frames(3)) == []  # type: ignore[arg-type]
    assert filler.not_taken_busy == 1
    filler._stopping.set()
    assert filler.take("slide", _frames(4)) == []  # type: ignore[arg-type]


def test_stored_files_are_marked_and_the_rest_given_back() -> None:
    files = {1: [FakeFile(101, 500), FakeFile(201, 500)], 2: [FakeFile(102, 500)]}
    filler = _running_filler(files)
    given: list[list[int]] = []
    filler.give_back = lambda slide, frames: given.append([f.number for f in frames])
    wanted = {frame: files[frame.number] for frame in _frames(1, 2)}
    filler._settle("slide", wanted, {101})  # type: ignore[arg-type]
    assert [f.filled for f in files[1]] == [True, False] and not files[2][0].filled
    assert given == [[2]]
    assert filler.statistics() | {"running": None} == {
        "running": None, "stored": 1, "given_back": 1, "not_taken_busy": 0}


def test_after_a_failure_batches_still_queued_are_given_back() -> None:
    files = {number: [FakeFile(100 + number, 500)] for number in range(1, 5)}
    filler = _running_filler(files)
    given: list[list[int]] = []
    filler.give_back = lambda slide, frames: given.append([f.number for f in frames])
    filler.take("slide", _frames(1, 2))  # type: ignore[arg-type]
    filler.take("slide", _frames(3, 4))  # type: ignore[arg-type]
    filler._failed.set()  # the helper ended after these were taken
    filler._queue.put(None)
    filler._run()
    assert given == [[1, 2], [3, 4]]
    assert not any(node.filled for nodes in files.values() for node in nodes)
