"""The page-cache filler: which read-ahead tiles it stores into the kernel's page cache,
and how it behaves when behind or refused."""

from __future__ import annotations

import errno
import threading
import time
from collections.abc import Callable, Collection

import pytest

from idcfs.cache.memory import ByteLRU
from idcfs.cache.tiles import TileCache
from idcfs.fetch.loader import TileLoader
from idcfs.fetch.slides import SlideStore
from idcfs.fs.nodes import TileFile, TileFileIndex
from idcfs.fuse.pagecache import PageCacheFiller, Store
from idcfs.metrics import Metrics
from idcfs.slide.model import FrameRef, Slide
from idcfs.tiles.convert import DEFAULT_QUALITY
from tests.support.memory_source import MemorySource
from tests.support.slides import GeneratedSlide


class ListedTiles:
    """Tile files of a real slide as a listing made them: real loader, index, inodes."""

    def __init__(self, generated: GeneratedSlide) -> None:
        source = MemorySource(generated.files)
        self.slide = SlideStore(source).get(generated.study_uid, generated.series_uid)
        self.metrics = Metrics()
        self.tiles = TileCache(ByteLRU(1 << 20), ByteLRU(1 << 20), None, DEFAULT_QUALITY,
                               self.metrics)
        self.loader = TileLoader(source, self.tiles, self.metrics)
        self.index = TileFileIndex()

    def frame(self, number: int) -> FrameRef:
        return self.slide.levels[0].grids[0].tiles[number - 1].frame

    def add(self, number: int, inode: int, exact_size: int | None, unread: bool = True,
            data: bytes = b"") -> TileFile:
        """A listed file of level-0 tile `number`; `unread`: read ahead, not opened since."""
        node = TileFile(f"{number}.jpg", self.slide, self.frame(number), self.loader, 999)
        node.inode, node.exact_size = inode, exact_size
        self.index.add(node)
        if unread:
            self.tiles.keep(self.slide, node.frame, data or b"x", staged=True)
        return node

    def filler(self, store: Store, open_inodes: Collection[int] = (),
               queued: int = 16) -> PageCacheFiller:
        return PageCacheFiller(self.index, open_inodes.__contains__, self.metrics, store,
                               queued_batches=queued)

    def landed(self, *numbers: int, data: bytes = b"x") -> list[tuple[FrameRef, bytes]]:
        return [(self.frame(number), data) for number in numbers]


@pytest.fixture
def listed(test_slides: list[GeneratedSlide]) -> ListedTiles:
    return ListedTiles(next(slide for slide in test_slides if slide.name == "jpeg_ybr"))


def wait_until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 10
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)


def test_page_cache_filler_stores_only_unread_tiles_of_exact_size(listed: ListedTiles) -> None:
    stored: list[tuple[int, int, bytes]] = []

    def store(inode: int, offset: int, data: bytes) -> None:
        stored.append((inode, offset, data))

    listed.add(1, 11, 4, data=b"data")
    listed.add(2, 12, None, data=b"data")
    listed.add(3, 13, 9, data=b"data")
    listed.add(4, 14, 4, unread=False)
    listed.add(5, 15, 4, data=b"data")
    filler = listed.filler(store, open_inodes={15})
    filler.start()
    filler.offer(listed.slide, listed.landed(1, 2, 3, 4, 5, 6, data=b"data"))  # 6: not listed
    wait_until(lambda: filler.stored.value + filler.skipped.value == 3)
    filler.stop()
    assert stored == [(11, 0, b"data")]  # 12: placeholder size; 13: another size
    assert filler.skipped.value == 2  # 14 was opened since; 15 is open


def test_page_cache_filler_drops_when_behind_and_stops_when_refused(
    listed: ListedTiles,
) -> None:
    release = threading.Event()
    calls: list[int] = []

    def store(inode: int, offset: int, data: bytes) -> None:
        calls.append(inode)
        release.wait(10)
        if inode == 12:
            raise OSError(errno.ENOENT, "not known")
        if inode == 13:
            raise OSError(errno.ENOSYS, "no store")

    for number in range(1, 6):
        listed.add(number, 10 + number, 1)
    filler = listed.filler(store, queued=1)
    filler.start()
    for number in range(1, 6):  # 1 is being stored, 2 waits, the rest find no room
        filler.offer(listed.slide, listed.landed(number))
        wait_until(lambda: bool(calls))
    release.set()
    assert filler.dropped.value == 3
    wait_until(lambda: len(calls) == 2)
    filler.offer(listed.slide, listed.landed(3, 4))
    wait_until(lambda: len(calls) == 3)
    filler._thread.join(10)
    assert not filler._thread.is_alive()  # ENOSYS: the kernel takes no stores
    filler.offer(listed.slide, listed.landed(5))
    filler.stop()
    assert calls == [11, 12, 13] and filler.stored.value == 1 and filler.unknown.value == 1


def test_a_tile_listed_twice_is_stored_into_both_files(listed: ListedTiles) -> None:
    stored: list[int] = []
    listed.add(1, 11, 1)
    listed.add(1, 21, 1)  # the same series listed under collections/ and studies/
    filler = listed.filler(lambda inode, offset, data: stored.append(inode))
    filler.start()
    filler.offer(listed.slide, listed.landed(1))
    wait_until(lambda: filler.stored.value == 2)
    filler.stop()
    assert stored == [11, 21]
    assert listed.metrics.snapshot()["page_cache_fill"] == {
        "stored": 2, "skipped_opened": 0, "dropped_busy": 0, "not_known_to_kernel": 0}


def test_nothing_is_queued_after_stop(listed: ListedTiles) -> None:
    stored: list[int] = []
    listed.add(1, 11, 1)
    filler = listed.filler(lambda inode, offset, data: stored.append(inode))
    filler.stop()
    filler.offer(listed.slide, listed.landed(1))
    assert filler._queue.empty() and stored == []


def test_the_slide_of_an_offer_decides_which_files_it_reaches(listed: ListedTiles) -> None:
    listed.add(1, 11, 1)
    other = Slide(listed.slide.study_uid, "another series", {}, [], [], [], [])
    filler = listed.filler(lambda inode, offset, data: None)
    filler.offer(other, listed.landed(1))
    assert filler._queue.empty()
