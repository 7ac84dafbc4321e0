"""The caches: checked disk cache, memory LRU, the tile size index, and the three tiers
of served tiles (memory, staging, disk) behind `TileCache`."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from idcfs.cache.disk import DiskCache, seal, unseal
from idcfs.cache.memory import ByteLRU
from idcfs.cache.sizes import TileSizes
from idcfs.cache.tiles import Found, TileCache, tile_key
from idcfs.fetch.loader import TileLoader
from idcfs.fetch.slides import SlideStore
from idcfs.metrics import Metrics
from idcfs.slide.model import FrameRef, Slide
from idcfs.source.base import FrameSource
from idcfs.tiles.convert import served_jpeg
from tests.support.memory_source import MemorySource
from tests.support.slides import GeneratedSlide

QUALITY = 97


def bare_slide(series_uid: str = "series") -> Slide:
    """A slide with nothing in it: the tile tiers key tiles by series, instance, frame."""
    return Slide("study", series_uid, {}, [], [], [], [])


def tile_cache(disk: DiskCache | None = None, memory_bytes: int = 1 << 20,
               staged_bytes: int = 1 << 20, quality: int = QUALITY) -> TileCache:
    return TileCache(ByteLRU(memory_bytes), ByteLRU(staged_bytes), disk, quality, Metrics())


def generated(slides: list[GeneratedSlide], name: str) -> GeneratedSlide:
    return next(slide for slide in slides if slide.name == name)


def served_tiles(source: FrameSource, slide: Slide) -> list[bytes]:
    """The served JPEG of every level-0 tile, in frame order, straight from the source."""
    tiles = slide.levels[0].grids[0].tiles
    info = slide.instances[tiles[0].frame.instance_uid]
    frames = source.frames(info, [tile.frame.number for tile in tiles])
    return [served_jpeg(frame.data, info.pixels, frame.transfer_syntax, QUALITY)
            for frame in frames]


# -- memory LRU and disk cache -------------------------------------------------------


def test_byte_lru_bounds_bytes() -> None:
    cache = ByteLRU(10)
    cache.put("a", b"12345")
    cache.put("b", b"12345")
    cache.put("c", b"123")
    assert cache.get("a") is None and cache.get("c") == b"123"
    cache.put("huge", b"x" * 11)
    assert "huge" not in cache
    assert cache.current_bytes <= 10


def test_disk_cache_checks_entries(tmp_path: Path) -> None:
    assert unseal(seal(b"tile", 5.0)) == (b"tile", 5.0)
    assert unseal(seal(b"tile")[:-1]) is None
    disk = DiskCache(tmp_path / "c", 1 << 20)
    assert (tmp_path / "c").stat().st_mode & 0o777 == 0o700
    disk.put("k", b"data")
    assert disk.get("k") == b"data"
    disk._store.set("k", seal(b"data")[:-2] + b"XY")  # damage the content
    assert disk.get("k") is None and disk.dropped == 1
    assert disk.get("k") is None  # dropped for good
    disk._store.set("old", seal(b"old", stored_at=0.0))
    assert disk.get("old") == b"old"
    restored = unseal(disk._store.get("old"))
    assert restored is not None and restored[1] > 1e9  # read long after storing: stored again


def test_disk_cache_reads_many_under_one_lock(tmp_path: Path) -> None:
    disk = DiskCache(tmp_path / "c", 1 << 20)
    disk.put("a", b"first")
    disk.put("b", b"second")
    disk._store.set("bad", seal(b"data")[:-1] + b"X")
    assert disk.get_many(["a", "missing", "b", "bad"]) == {"a": b"first", "b": b"second"}
    assert disk.dropped == 1


WRITER = """
import random, sys
from pathlib import Path
from idcfs.cache.disk import DiskCache
disk = DiskCache(Path(sys.argv[1]), 1 << 30)
index = 0
while True:
    size = 1_500_000 if index % 7 == 3 else 30_000  # 1 in 7 a file of its own
    disk.put(f"k{index % 20}", random.Random(index).randbytes(size))
    print(index, flush=True)
    index += 1
"""


def _payload(index: int) -> bytes:
    return random.Random(index).randbytes(1_500_000 if index % 7 == 3 else 30_000)


def test_a_writer_killed_mid_put_leaves_whole_entries_or_none(tmp_path: Path) -> None:
    """SIGKILL while entries are written and overwritten (in SQLite and in files of their
    own): every entry stored before is whole, the one in flight is old, new or absent,
    and none is damaged."""
    directory = tmp_path / "c"
    child = subprocess.Popen([sys.executable, "-c", WRITER, str(directory)],
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    stored = [int(child.stdout.readline()) for _ in range(60)]
    os.kill(child.pid, signal.SIGKILL)
    stored += [int(line) for line in child.stdout]
    child.wait(10)
    in_flight = stored[-1] + 1
    disk = DiskCache(directory, 1 << 30)
    for key in range(20):
        last = max(index for index in stored if index % 20 == key)
        allowed = [_payload(last)] + ([_payload(in_flight)] if in_flight % 20 == key else [])
        assert disk.get(f"k{key}") in allowed, f"k{key}"
    assert disk.dropped == 0


def test_a_torn_file_entry_is_dropped(tmp_path: Path) -> None:
    """A value in a file of its own cut short (a crash of the machine, not the process)
    fails its length check: the read is a miss, never short bytes."""
    disk = DiskCache(tmp_path / "c", 1 << 30)
    disk.put("big", _payload(3))
    (file,) = (tmp_path / "c").rglob("*.val")
    with open(file, "r+b") as handle:
        handle.truncate(1000)
    assert disk.get("big") is None and disk.dropped == 1


def test_tile_sizes_survive_a_new_index(tmp_path: Path) -> None:
    disk = DiskCache(tmp_path / "c", 1 << 20)
    sizes = TileSizes(disk, flush_every_s=3600)
    sizes.note("series/instance/q97", 3, 12345)
    sizes.note("series/instance/q97", 1, 77)
    assert sizes.get("series/instance/q97", 3) == 12345
    assert sizes.get("series/instance/q97", 2) is None  # never stored
    assert sizes.get("series/instance/q97", 99) is None
    assert TileSizes(disk).get("series/instance/q97", 3) is None  # not written yet
    sizes.flush()
    again = TileSizes(disk)
    assert again.get("series/instance/q97", 3) == 12345
    assert again.get("series/instance/q97", 1) == 77
    assert again.get("series/other/q97", 1) is None


# -- the tile tiers ------------------------------------------------------------------


def test_a_staged_tile_moves_to_memory_when_read() -> None:
    tiles, slide, frame = tile_cache(), bare_slide(), FrameRef("instance", 3)
    tiles.keep(slide, frame, b"tile", staged=True)
    assert tiles.is_staged(slide, frame) and tiles.in_memory(slide, frame)
    assert tile_key(slide, frame) not in tiles.memory
    assert tiles.for_reading(slide, frame) == b"tile"
    assert not tiles.is_staged(slide, frame) and tile_key(slide, frame) in tiles.memory
    assert tiles.for_reading(slide, FrameRef("instance", 4)) is None


def test_tiles_of_one_series_are_not_tiles_of_another() -> None:
    tiles, frame = tile_cache(), FrameRef("instance", 1)
    tiles.keep(bare_slide("a"), frame, b"tile of a", staged=False)
    assert tiles.for_reading(bare_slide("b"), frame) is None
    assert tiles.for_reading(bare_slide("a"), frame) == b"tile of a"


def test_staging_is_nearly_full_past_three_quarters() -> None:
    tiles, slide = tile_cache(staged_bytes=100), bare_slide()
    tiles.keep(slide, FrameRef("i", 1), b"x" * 75, staged=True)
    assert not tiles.staging_nearly_full()
    tiles.keep(slide, FrameRef("i", 2), b"x", staged=True)
    assert tiles.staging_nearly_full()


def test_kept_tiles_reach_the_disk_with_their_sizes(tmp_path: Path) -> None:
    disk = DiskCache(tmp_path / "c", 1 << 20)
    tiles, slide, frame = tile_cache(disk), bare_slide(), FrameRef("instance", 5)
    tiles.keep(slide, frame, b"12345678", staged=False)
    assert disk.get(tiles.disk_key(slide, frame)) == b"12345678"
    assert tiles.disk_key(slide, frame) == "tile/series/instance/5/q97"
    assert tiles.known_size(slide, frame) == 8
    assert tiles.known_size(slide, FrameRef("instance", 6)) is None
    tiles.flush()
    assert tile_cache(disk).known_size(slide, frame) == 8  # after a remount


def test_tiles_from_disk_go_to_the_tier_asked_for_and_count_as_hits(tmp_path: Path) -> None:
    disk = DiskCache(tmp_path / "c", 1 << 20)
    slide, frames = bare_slide(), [FrameRef("instance", n) for n in (1, 2, 3)]
    tile_cache(disk).keep(slide, frames[0], b"one", staged=False)
    tile_cache(disk).keep(slide, frames[1], b"two", staged=False)
    metrics = Metrics()
    tiles = TileCache(ByteLRU(1 << 20), ByteLRU(1 << 20), disk, QUALITY, metrics)
    assert tiles.from_disk(slide, frames, staged=True) == {frames[0]: b"one", frames[1]: b"two"}
    assert tiles.is_staged(slide, frames[0]) and tiles.is_staged(slide, frames[1])
    assert metrics.value("disk_cache.hits") == 2
    assert tiles.from_disk(slide, frames[2:], staged=False) == {}


def test_a_tile_stored_at_another_quality_is_not_served(tmp_path: Path) -> None:
    disk = DiskCache(tmp_path / "c", 1 << 20)
    slide, frame = bare_slide(), FrameRef("instance", 1)
    tile_cache(disk, quality=90).keep(slide, frame, b"q90 tile", staged=False)
    assert tile_cache(disk, quality=97).from_disk(slide, [frame], staged=False) == {}
    assert tile_cache(disk, quality=97).known_size(slide, frame) is None


def test_a_lookup_says_which_tier_held_the_tile() -> None:
    metrics = Metrics()
    tiles = TileCache(ByteLRU(100), ByteLRU(50), None, QUALITY, metrics)
    slide = bare_slide()
    tiles.keep(slide, FrameRef("i", 1), b"1234", staged=False)
    tiles.keep(slide, FrameRef("i", 2), b"56", staged=True)
    assert metrics.value("readahead_staged_bytes") == 2
    assert tiles.lookup(slide, FrameRef("i", 1)) == Found(b"1234", "memory")
    assert tiles.lookup(slide, FrameRef("i", 2)) == Found(b"56", "staged")
    assert tiles.lookup(slide, FrameRef("i", 2)) == Found(b"56", "memory")  # moved on read
    assert tiles.lookup(slide, FrameRef("i", 3)) is None
    assert metrics.value("readahead_staged_bytes") == 0


def test_disk_lookups_are_counted_per_tile(tmp_path: Path) -> None:
    disk = DiskCache(tmp_path / "c", 1 << 20)
    metrics = Metrics()
    tiles = TileCache(ByteLRU(1 << 20), ByteLRU(1 << 20), disk, QUALITY, metrics)
    slide, frames = bare_slide(), [FrameRef("instance", n) for n in (1, 2, 3)]
    tiles.keep(slide, frames[0], b"one", staged=False)
    tiles.from_disk(slide, frames, staged=False)
    assert metrics.snapshot()["disk_cache"] == {"lookups": 3, "hits": 1, "misses": 2}


@pytest.fixture
def jpeg_ybr(test_slides: list[GeneratedSlide]) -> GeneratedSlide:
    return generated(test_slides, "jpeg_ybr")


def test_read_ahead_never_evicts_tiles_being_read(jpeg_ybr: GeneratedSlide) -> None:
    source = MemorySource(jpeg_ybr.files)
    slide = SlideStore(source).get(jpeg_ybr.study_uid, jpeg_ybr.series_uid)
    served = served_tiles(MemorySource(jpeg_ybr.files), slide)
    tiles = slide.levels[0].grids[0].tiles  # 12 tiles
    staged_bytes = sum(map(len, served[-5:]))
    cache = TileCache(ByteLRU(sum(map(len, served[:3]))), ByteLRU(staged_bytes), None,
                      QUALITY, Metrics())
    loader = TileLoader(source, cache, Metrics())
    read = [loader.tile(slide, tiles[i].frame) for i in range(3)]
    owned = loader.claim_for_prefetch(slide, [t.frame for t in tiles[3:12]])
    loader.fetch_claimed(slide, owned)
    for i in range(3):
        assert tile_key(slide, tiles[i].frame) in cache.memory  # still there
    assert read == served[:3]
    assert cache.staged.current_bytes <= staged_bytes
    assert source.requests[-1] == (tiles[0].frame.instance_uid, list(range(4, 13)))  # one batch
    assert loader.tile(slide, tiles[11].frame) == served[11]  # staged tile moves on read
    assert tile_key(slide, tiles[11].frame) in cache.memory
    loader.close()
