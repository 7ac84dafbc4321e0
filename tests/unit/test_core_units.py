"""Unit tests of the core pieces with small fakes (the end-to-end tests use real mounts)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from idcfs.cache.disk import DiskCache, seal, unseal
from idcfs.cache.memory import ByteLRU
from idcfs.errors import FetchError, MetadataError
from idcfs.fetch.claims import SingleFlight
from idcfs.fetch.readahead import ReadAhead, ReadAheadSettings
from idcfs.slide.model import FrameRef, TilePosition
from idcfs.slide.parse import parse_slide
from idcfs.source.dicomweb import next_utc_midnight
from idcfs.source.multipart import parse_content_type, split_multipart

WSI = "1.2.840.10008.5.1.4.1.1.77.1.6"


def element(vr: str, *values: Any) -> dict[str, Any]:
    return {"vr": vr, "Value": list(values)}


def instance(uid: str, width: int, height: int, frames: int, flavour: str = "VOLUME",
             **extra: dict[str, Any]) -> dict[str, Any]:
    meta = {
        "00080016": element("UI", WSI), "00080018": element("UI", uid),
        "00080008": element("CS", "ORIGINAL", "PRIMARY", flavour, "NONE"),
        "00280010": element("US", 256), "00280011": element("US", 256),
        "00280002": element("US", 3), "00280100": element("US", 8),
        "00280004": element("CS", "YBR_FULL_422"), "00280008": element("IS", frames),
        "00480006": element("UL", width), "00480007": element("UL", height),
    }
    meta.update(extra)
    return meta


def test_multipart_split_and_truncation() -> None:
    body = (b"--XyZ\r\nContent-Type: application/octet-stream; transfer-syntax=1.2.3\r\n\r\n"
            b"\xff\xd8one\r\n--XyZ\r\nContent-Type: application/octet-stream\r\n\r\n"
            b"two\r\n--XyZ--\r\n")
    parts = split_multipart(body, "XyZ")
    assert [part.content for part in parts] == [b"\xff\xd8one", b"two"]
    assert parse_content_type(parts[0].content_type)[1]["transfer-syntax"] == "1.2.3"
    with pytest.raises(FetchError):
        split_multipart(body[:60], "XyZ")


def test_tiled_full_levels_order_and_edges() -> None:
    metadata = [instance("1.1", 600, 300, 6), instance("1.2", 300, 150, 2),
                instance("1.3", 100, 50, 1, "LABEL")]
    slide = parse_slide("s", "r", metadata)
    assert [(level.width, level.columns, level.rows) for level in slide.levels] == [
        (600, 3, 2), (300, 2, 1)]
    tiles = slide.levels[0].grids[0].tiles
    assert [(t.column, t.row, t.frame.number) for t in tiles] == [
        (0, 0, 1), (1, 0, 2), (2, 0, 3), (0, 1, 4), (1, 1, 5), (2, 1, 6)]
    assert [image.kind for image in slide.associated] == ["label"]
    assert not slide.has_plane_directories


def test_sparse_and_focal_planes() -> None:
    def position(col: int, row: int, z: float) -> dict[str, Any]:
        return {"0048021A": element("SQ", {"0048021E": element("SL", col),
                                           "0048021F": element("SL", row),
                                           "0040074A": element("DS", z)})}
    sparse = instance("2.1", 768, 512, 3, **{
        "00209311": element("CS", "TILED_SPARSE"),
        "52009230": element("SQ", position(513, 257, 0.0), position(1, 1, 0.0),
                            position(1, 1, 2.5)),
    })
    slide = parse_slide("s", "r", [sparse])
    assert slide.focal_planes == [0.0, 2.5]
    grids = slide.levels[0].grids
    assert [(g.plane_index, [(t.column, t.row) for t in g.tiles]) for g in grids] == [
        (0, [(0, 0), (2, 1)]), (1, [(0, 0)])]
    assert slide.has_plane_directories


def test_two_planes_in_one_tiled_full_instance() -> None:
    meta = instance("3.1", 512, 256, 4, **{"00480303": element("UL", 2)})
    grids = parse_slide("s", "r", [meta]).levels[0].grids
    assert [[t.frame.number for t in g.tiles] for g in grids] == [[1, 2], [3, 4]]


def test_no_wsi_instance_is_a_metadata_error() -> None:
    with pytest.raises(MetadataError):
        parse_slide("s", "r", [])


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
    assert unseal(disk._store.get("old"))[1] > 1e9  # read long after storing: stored again


def test_disk_cache_reads_many_under_one_lock(tmp_path: Path) -> None:
    disk = DiskCache(tmp_path / "c", 1 << 20)
    disk.put("a", b"first")
    disk.put("b", b"second")
    disk._store.set("bad", seal(b"data")[:-1] + b"X")
    assert disk.get_many(["a", "missing", "b", "bad"]) == {"a": b"first", "b": b"second"}
    assert disk.dropped == 1


def test_tile_sizes_survive_a_new_index(tmp_path: Path) -> None:
    from idcfs.cache.sizes import TileSizes

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


def test_single_flight_shares_one_computation() -> None:
    flights: SingleFlight[int] = SingleFlight()
    calls = []

    def compute() -> int:
        calls.append(1)
        time.sleep(0.1)
        return 42

    results: list[int] = []
    threads = [threading.Thread(target=lambda: results.append(flights.run("k", compute)))
               for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [42] * 5 and len(calls) == 1


def test_next_utc_midnight() -> None:
    assert next_utc_midnight(86400 * 10 + 5) == 86400 * 11


class FakeLoader:
    """Records read-ahead claims and fetches; its staging area is a real ByteLRU."""

    def __init__(self) -> None:
        self.staged = ByteLRU(1 << 20)
        self.fetched: list[int] = []
        self.claimed: set[int] = set()

    def claim_for_prefetch(self, slide: Any, frames: list[FrameRef]) -> dict[FrameRef, Future]:
        fresh = [frame for frame in frames if frame.number not in self.claimed]
        self.claimed |= {frame.number for frame in fresh}
        return {frame: Future() for frame in fresh}

    def fetch_claimed(self, slide: Any, owned: dict[FrameRef, Future]) -> None:
        self.fetched += [frame.number for frame in owned]

    def abandon_claimed(self, slide: Any, owned: dict[FrameRef, Future]) -> None:
        return None


def _grid(count: int) -> list[TilePosition]:
    return [TilePosition(i, 0, FrameRef("i", i + 1)) for i in range(count)]


def test_readahead_follows_sequential_reads_only() -> None:
    loader = FakeLoader()
    readahead = ReadAhead(loader, ReadAheadSettings(workers=1))  # type: ignore[arg-type]
    tiles = _grid(1000)
    for index in (500, 17, 901, 3, 640):  # random: no read-ahead
        readahead.on_open(None, tiles, index)  # type: ignore[arg-type]
    assert readahead.scheduled_tiles == 0
    for index in range(10):
        readahead.on_open(None, tiles, index)  # type: ignore[arg-type]
    readahead.close()
    assert readahead.scheduled_tiles > 16
    assert max(loader.claimed) <= 10 + ReadAheadSettings().max_window  # never further ahead


def test_readahead_stops_when_staging_is_full() -> None:
    loader = FakeLoader()
    loader.staged.put("x", b"x" * (900 << 10))
    readahead = ReadAhead(loader, ReadAheadSettings(workers=1))  # type: ignore[arg-type]
    tiles = _grid(100)
    for index in range(10):
        readahead.on_open(None, tiles, index)  # type: ignore[arg-type]
    assert readahead.scheduled_tiles == 0


class FakeFrameClient:
    """Answers every frame with the same small YBR JPEG; counts requests."""

    def __init__(self) -> None:
        import io

        from PIL import Image

        buffer = io.BytesIO()
        Image.new("RGB", (256, 256), (200, 80, 120)).save(buffer, "JPEG")
        self.jpeg = buffer.getvalue()
        self.requests: list[list[int]] = []

    def frames(self, study: str, series: str, instance: str, numbers: list[int]) -> list:
        from idcfs.source.dicomweb import Frame

        self.requests.append(list(numbers))
        return [Frame(self.jpeg, None) for _ in numbers]


def test_read_ahead_never_evicts_tiles_being_read() -> None:
    from idcfs.fetch.loader import TileLoader, tile_key

    client = FakeFrameClient()
    slide = parse_slide("s", "r", [instance("1.1", 256 * 40, 256, 40)])
    tiles = slide.levels[0].grids[0].tiles
    tile_size = len(client.jpeg)
    loader = TileLoader(client, ByteLRU(tile_size * 3), staged=ByteLRU(tile_size * 10))  # type: ignore[arg-type]
    read = [loader.tile(slide, tiles[i].frame) for i in range(3)]
    owned = loader.claim_for_prefetch(slide, [t.frame for t in tiles[3:40]])
    loader.fetch_claimed(slide, owned)
    for i in range(3):
        assert tile_key(slide, tiles[i].frame) in loader.cache  # still there
    assert loader.staged.current_bytes <= tile_size * 10
    assert client.requests[-1] == list(range(4, 41))  # one batched request
    assert loader.tile(slide, tiles[39].frame) == read[0]  # staged tile moves on read
    assert tile_key(slide, tiles[39].frame) in loader.cache


def test_readahead_requests_are_whole_batches() -> None:
    loader = FakeLoader()
    batches: list[int] = []
    loader.fetch_claimed = lambda slide, owned: batches.append(len(owned))  # type: ignore[method-assign]
    readahead = ReadAhead(loader, ReadAheadSettings(workers=1))  # type: ignore[arg-type]
    tiles = _grid(3000)
    for index in range(1000):
        readahead.on_open("slide", tiles, index)  # type: ignore[arg-type]
    readahead._executor.shutdown(wait=True)
    assert batches and all(size == 64 for size in batches)


def test_readahead_tells_which_tiles_landed() -> None:
    loader = FakeLoader()

    def fetch(slide: Any, owned: dict[FrameRef, Future]) -> None:
        for frame, future in owned.items():
            if frame.number % 2:
                future.set_result(b"tile %d" % frame.number)
            else:
                future.set_exception(FetchError("server said 500"))

    loader.fetch_claimed = fetch  # type: ignore[method-assign]
    landed: list[tuple[FrameRef, bytes]] = []
    readahead = ReadAhead(loader, ReadAheadSettings(workers=1))  # type: ignore[arg-type]
    readahead.on_landed = lambda slide, tiles: landed.extend(tiles)
    tiles = _grid(64)
    readahead.on_open("slide", tiles, 0)  # type: ignore[arg-type]
    readahead._executor.shutdown(wait=True)
    assert landed and all(frame.number % 2 and data == b"tile %d" % frame.number
                          for frame, data in landed)


class FakeTile:
    """What the page cache filler looks at in a tile file."""

    def __init__(self, inode: int, exact_size: int | None, unread: bool = True) -> None:
        self.inode = inode
        self.exact_size = exact_size
        self.unread = unread

    def read_ahead_unread(self) -> bool:
        return self.unread


class FakeTree:
    def __init__(self, tiles: dict[int, FakeTile]) -> None:
        self.tiles = tiles

    def tile_files(self, slide: Any, frame: FrameRef) -> list[FakeTile]:
        return [self.tiles[frame.number]] if frame.number in self.tiles else []


def _filler(tiles: dict[int, FakeTile], store: Any, open_inodes: set[int] = frozenset(),  # type: ignore[assignment]
            queued: int = 16) -> Any:
    from idcfs.fuse.pagecache import PageCacheFiller

    return PageCacheFiller(FakeTree(tiles), open_inodes.__contains__, store,  # type: ignore[arg-type]
                           queued_batches=queued)


def _wait_until(condition: Any) -> None:
    deadline = time.monotonic() + 10
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)


def test_page_cache_filler_stores_only_unread_tiles_of_exact_size() -> None:
    stored: list[tuple[int, int, bytes]] = []
    tiles = {1: FakeTile(11, 4), 2: FakeTile(12, None), 3: FakeTile(13, 9),
             4: FakeTile(14, 4, unread=False), 5: FakeTile(15, 4)}
    filler = _filler(tiles, lambda *args: stored.append(args), open_inodes={15})
    filler.start()
    landed = [(FrameRef("i", n), b"data") for n in (1, 2, 3, 4, 5, 6)]  # 6: not listed
    filler.offer("slide", landed)
    _wait_until(lambda: filler.stored + filler.skipped == 3)
    filler.stop()
    assert stored == [(11, 0, b"data")]  # 12: placeholder size; 13: another size
    assert filler.skipped == 2  # 14 was opened since; 15 is open


def test_page_cache_filler_drops_when_behind_and_stops_when_refused() -> None:
    import errno

    release = threading.Event()
    calls: list[int] = []

    def store(inode: int, offset: int, data: bytes) -> None:
        calls.append(inode)
        release.wait(10)
        if inode == 12:
            raise OSError(errno.ENOENT, "not known")
        if inode == 13:
            raise OSError(errno.ENOSYS, "no store")

    tiles = {n: FakeTile(10 + n, 1) for n in range(1, 6)}
    filler = _filler(tiles, store, queued=1)
    filler.start()
    for number in range(1, 6):  # 1 is being stored, 2 waits, the rest find no room
        filler.offer("slide", [(FrameRef("i", number), b"x")])
        _wait_until(lambda: calls)
    release.set()
    assert filler.dropped == 3
    _wait_until(lambda: len(calls) == 2)
    filler.offer("slide", [(FrameRef("i", 3), b"x"), (FrameRef("i", 4), b"x")])
    _wait_until(lambda: len(calls) == 3)
    filler._thread.join(10)
    assert not filler._thread.is_alive()  # ENOSYS: the kernel takes no stores
    filler.offer("slide", [(FrameRef("i", 5), b"x")])
    filler.stop()
    assert calls == [11, 12, 13] and filler.stored == 1 and filler.unknown == 1


def test_readahead_offers_batches_to_take_over_and_fetches_what_is_given_back() -> None:
    loader = FakeLoader()
    readahead = ReadAhead(loader, ReadAheadSettings(workers=1))  # type: ignore[arg-type]
    offered: list[list[int]] = []

    def take_over(slide: Any, frames: list[FrameRef]) -> list[FrameRef]:
        offered.append([frame.number for frame in frames])
        return [frame for frame in frames if frame.number % 2 == 0]  # the even ones

    readahead.take_over = take_over
    tiles = _grid(64)
    readahead.on_open("slide", tiles, 0)  # type: ignore[arg-type]
    readahead._executor.shutdown(wait=True)
    assert offered == [list(range(1, 65))]
    assert sorted(loader.fetched) == list(range(1, 65, 2))  # the rest, claimed and fetched
    given_back = [tiles[1].frame, tiles[3].frame]  # frames 2 and 4
    readahead._executor = ThreadPoolExecutor(1)
    readahead.fetch_frames("slide", given_back)  # type: ignore[arg-type]
    readahead._executor.shutdown(wait=True)
    assert loader.fetched[-2:] == [2, 4]


def test_readahead_closed_gives_up_what_it_claims() -> None:
    loader = FakeLoader()
    abandoned: list[int] = []
    loader.abandon_claimed = lambda slide, owned: abandoned.extend(  # type: ignore[method-assign]
        frame.number for frame in owned)
    readahead = ReadAhead(loader, ReadAheadSettings(workers=1))  # type: ignore[arg-type]
    readahead.close()
    readahead.fetch_frames("slide", [FrameRef("i", 7)])  # type: ignore[arg-type]
    assert abandoned == [7] and not readahead._queued
