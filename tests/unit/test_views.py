"""The tree a mount shows, built as `build_mount` builds it (catalog view, slide store,
DICOM-levels view) over an in-memory frame source: names, order, sizes, errors, and
how many metadata calls listings cost."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from idcfs.cache.disk import DiskCache
from idcfs.cache.memory import ByteLRU
from idcfs.cache.tiles import TileCache
from idcfs.catalog.base import Catalog, SeriesEntry
from idcfs.catalog.user_file import FileCatalog
from idcfs.errors import FetchError, NotFoundError
from idcfs.fetch.loader import TileLoader
from idcfs.fetch.readahead import ReadAhead, ReadAheadSettings
from idcfs.fetch.slides import SlideStore
from idcfs.fs.nodes import LiveFile, Node, StaticFile, TileFile, TileFileIndex, json_bytes
from idcfs.fs.tree import Tree
from idcfs.fs.views import SeriesView
from idcfs.fs.views.catalog import CatalogView
from idcfs.fs.views.dicom_levels import DicomLevelsView
from idcfs.metrics import Metrics
from idcfs.slide.model import Slide
from idcfs.tiles.convert import DEFAULT_QUALITY
from tests.support.memory_source import MemorySource
from tests.support.slides import SPARSE_TILES, GeneratedSlide
from tests.support.tree_paths import PathWalk

COLLECTION = "collection_a"
STATS_FILE = ".idcfs-stats.json"
TILE_PLACEHOLDER = 256 * 256 * 3


class SeriesListCatalog:
    """A `Catalog` over a fixed list of series entries."""

    def __init__(self, entries: Sequence[SeriesEntry]) -> None:
        self.entries = list(entries)

    def has_collections(self) -> bool:
        return any(entry.collection_id for entry in self.entries)

    def collections(self) -> list[str]:
        return sorted({entry.collection_id for entry in self.entries if entry.collection_id})

    def collection_info(self, collection_id: str) -> dict[str, Any] | None:
        if collection_id not in self.collections():
            return None
        return {"collection_id": collection_id}

    def studies(self, collection_id: str | None = None) -> list[str]:
        return sorted({entry.study_uid for entry in self._of(collection_id)})

    def series(self, study_uid: str, collection_id: str | None = None) -> list[SeriesEntry]:
        found = [entry for entry in self._of(collection_id) if entry.study_uid == study_uid]
        return sorted(found, key=lambda entry: entry.series_uid)

    def _of(self, collection_id: str | None) -> list[SeriesEntry]:
        return [entry for entry in self.entries
                if collection_id is None or entry.collection_id == collection_id]


class SeriesUidView:
    """A second series view: one file naming the series (the seam under test)."""

    def series_nodes(self, slide: Slide, entry: SeriesEntry) -> list[Node]:
        return [StaticFile("series-uid.txt", slide.series_uid.encode())]


@dataclass
class MountedTree(PathWalk):
    """The parts of a mount the tests look into."""

    tree: Tree
    source: MemorySource
    tiles: TileCache
    index: TileFileIndex
    readahead: ReadAhead | None

    def tile(self, path: str) -> TileFile:
        node = self.node(path)
        assert isinstance(node, TileFile)
        return node


def mounted(slides: Sequence[GeneratedSlide], catalog: Catalog | None = None,
            extra_views: Sequence[SeriesView] = (), disk: DiskCache | None = None,
            with_readahead: bool = False) -> MountedTree:
    """Everything `idcfs.mount.build_mount` wires, over a MemorySource of `slides`."""
    source = MemorySource([path for slide in slides for path in slide.files])
    metrics = Metrics()
    tiles = TileCache(ByteLRU(32 << 20), ByteLRU(8 << 20), disk, DEFAULT_QUALITY, metrics)
    loader = TileLoader(source, tiles, metrics)
    index = TileFileIndex()
    readahead = ReadAhead(loader, metrics, ReadAheadSettings(workers=1)) if with_readahead else None
    views = [DicomLevelsView(loader, index, readahead), *extra_views]
    statistics = LiveFile(STATS_FILE, lambda: json_bytes(metrics.snapshot()))
    catalog_view = CatalogView(catalog or catalog_of(slides), SlideStore(source, disk), views,
                               [statistics])
    return MountedTree(Tree(catalog_view.root_children), source, tiles, index, readahead)


def catalog_of(slides: Sequence[GeneratedSlide]) -> SeriesListCatalog:
    return SeriesListCatalog([
        SeriesEntry(slide.study_uid, slide.series_uid, COLLECTION, {"PatientID": slide.name})
        for slide in slides])


def series_path(slide: GeneratedSlide) -> str:
    return f"studies/{slide.study_uid}/{slide.series_uid}"


def named(slides: list[GeneratedSlide], *names: str) -> list[GeneratedSlide]:
    return [next(slide for slide in slides if slide.name == name) for name in names]


def wait_until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 10
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.005)


@pytest.fixture
def jpeg_ybr(test_slides: list[GeneratedSlide]) -> GeneratedSlide:
    return named(test_slides, "jpeg_ybr")[0]


# -- names and order -----------------------------------------------------------------


def test_the_root_lists_collections_studies_and_the_statistics_file(
    test_slides: list[GeneratedSlide],
) -> None:
    ybr, rgb = named(test_slides, "jpeg_ybr", "jpeg_rgb")
    mount = mounted([ybr, rgb])
    assert mount.names("") == ["collections", "studies", STATS_FILE]
    assert mount.names("studies") == sorted([ybr.study_uid, rgb.study_uid])
    assert mount.names(f"studies/{ybr.study_uid}") == [ybr.series_uid]
    assert mount.names(f"collections/{COLLECTION}")[0] == "collection.json"


def test_a_series_lists_slide_json_associated_images_and_levels(
    test_slides: list[GeneratedSlide],
) -> None:
    ybr, rgb = named(test_slides, "jpeg_ybr", "jpeg_rgb")
    mount = mounted([ybr, rgb])
    assert mount.names(series_path(ybr)) == [
        "slide.json", "label.jpg", "overview.jpg", "thumbnail.jpg",
        "level-0", "level-1", "level-2"]
    assert mount.names(series_path(rgb)) == ["slide.json", "level-0", "level-1"]


def test_slide_json_holds_the_slide_and_the_catalogs_fields(jpeg_ybr: GeneratedSlide) -> None:
    mount = mounted([jpeg_ybr])
    described = json.loads(mount.file(f"{series_path(jpeg_ybr)}/slide.json").content())
    assert described["SeriesInstanceUID"] == jpeg_ybr.series_uid
    assert described["PatientID"] == "jpeg_ybr"
    assert [level["tile_count"] for level in described["levels"]] == [12, 4, 1]
    assert described["associated_images"] == ["label.jpg", "overview.jpg", "thumbnail.jpg"]


def test_focal_planes_and_optical_paths_get_directories_per_level(
    test_slides: list[GeneratedSlide],
) -> None:
    planes, paths = named(test_slides, "focal_planes", "optical_paths")
    mount = mounted([planes, paths])
    for level in ("level-0", "level-1"):
        assert mount.names(f"{series_path(planes)}/{level}") == [
            "plane-0_path-1", "plane-1_path-1"]
        assert mount.names(f"{series_path(paths)}/{level}") == [
            "plane-0_path-1", "plane-0_path-2"]
    assert mount.names(f"{series_path(planes)}/level-1/plane-1_path-1") == [
        "0_0.jpg", "1_0.jpg"]


def test_tiles_are_named_column_row_in_frame_order(jpeg_ybr: GeneratedSlide) -> None:
    mount = mounted([jpeg_ybr])
    level = jpeg_ybr.levels[0]
    path = f"{series_path(jpeg_ybr)}/level-0"
    assert mount.names(path) == [
        f"{column}_{row}.jpg" for row in range(level.rows) for column in range(level.columns)]
    frames = [mount.tile(f"{path}/{name}").frame.number for name in mount.names(path)]
    assert frames == list(range(1, 13))


def test_sparse_tiles_are_named_by_their_place(test_slides: list[GeneratedSlide]) -> None:
    (sparse,) = named(test_slides, "sparse")
    mount = mounted([sparse])
    path = f"{series_path(sparse)}/level-0"
    by_place = sorted(SPARSE_TILES, key=lambda place: (place[1], place[0]))
    assert mount.names(path) == [f"{column}_{row}.jpg" for column, row in by_place]
    for number, (column, row) in enumerate(SPARSE_TILES, start=1):
        assert mount.tile(f"{path}/{column}_{row}.jpg").frame.number == number


def test_absent_names_are_not_found(jpeg_ybr: GeneratedSlide) -> None:
    mount = mounted([jpeg_ybr])
    for path in ("nope", "studies/1.2.3", f"{series_path(jpeg_ybr)}/level-9",
                 f"{series_path(jpeg_ybr)}/level-0/9_9.jpg", f"collections/{COLLECTION}/1.2.3",
                 "collections/other"):
        with pytest.raises(NotFoundError):
            mount.node(path)


# -- sizes ---------------------------------------------------------------------------


def test_tile_sizes_are_placeholders_until_read_then_exact(jpeg_ybr: GeneratedSlide) -> None:
    mount = mounted([jpeg_ybr])
    tile = mount.tile(f"{series_path(jpeg_ybr)}/level-0/1_2.jpg")
    before = mount.tree.attributes(tile)
    assert (before.size, before.size_exact) == (TILE_PLACEHOLDER, False)
    data = tile.content()
    after = mount.tree.attributes(tile)
    assert (after.size, after.size_exact) == (len(data), True)
    assert len(data) < TILE_PLACEHOLDER


def test_an_associated_images_placeholder_is_its_uncompressed_size(
    jpeg_ybr: GeneratedSlide,
) -> None:
    mount = mounted([jpeg_ybr])
    label = mount.file(f"{series_path(jpeg_ybr)}/label.jpg")
    assert label.size() == (300 * 120 * 3, False)
    data = label.content()
    assert label.size() == (len(data), True)


def test_a_listing_after_a_remount_shows_exact_sizes_of_disk_cached_tiles(
    jpeg_ybr: GeneratedSlide, tmp_path: Path
) -> None:
    first = mounted([jpeg_ybr], disk=DiskCache(tmp_path / "cache", 64 << 20))
    level1 = f"{series_path(jpeg_ybr)}/level-1"
    sizes = {name: len(first.file(f"{level1}/{name}").content()) for name in first.names(level1)}
    first.tiles.flush()  # as at unmount, before the disk cache closes
    assert first.tiles.disk is not None
    first.tiles.disk.close()
    again = mounted([jpeg_ybr], disk=DiskCache(tmp_path / "cache", 64 << 20))
    shown = {name: again.file(f"{level1}/{name}").size() for name in again.names(level1)}
    assert shown == {name: (size, True) for name, size in sizes.items()}
    assert again.file(f"{series_path(jpeg_ybr)}/level-0/0_0.jpg").size()[1] is False
    assert again.source.metadata_requests == 0  # the metadata came from the disk cache too


# -- metadata calls ------------------------------------------------------------------


def test_a_series_costs_one_metadata_call_wherever_it_is_listed(
    jpeg_ybr: GeneratedSlide,
) -> None:
    mount = mounted([jpeg_ybr])
    by_study = series_path(jpeg_ybr)
    by_collection = f"collections/{COLLECTION}/{jpeg_ybr.study_uid}/{jpeg_ybr.series_uid}"
    for _ in range(3):
        assert mount.names(by_study) == mount.names(by_collection)
        mount.names(f"{by_study}/level-0")
        mount.names(f"{by_collection}/level-0")
    assert mount.source.metadata_requests == 1
    one = mount.tile(f"{by_study}/level-0/0_0.jpg")
    other = mount.tile(f"{by_collection}/level-0/0_0.jpg")
    assert one is not other and one.slide is other.slide  # two files, one shared slide
    assert mount.index.files(one.slide, one.frame) == [one, other]


def test_a_failed_metadata_call_is_not_kept(jpeg_ybr: GeneratedSlide) -> None:
    mount = mounted([jpeg_ybr])
    mount.source.fail_next_metadata = [FetchError("HTTP 502")]
    with pytest.raises(FetchError, match="HTTP 502"):
        mount.names(series_path(jpeg_ybr))
    assert mount.names(series_path(jpeg_ybr))[0] == "slide.json"
    assert mount.source.metadata_requests == 2


def test_a_series_missing_from_the_source_is_an_error_each_time(
    jpeg_ybr: GeneratedSlide,
) -> None:
    ghost = SeriesEntry(jpeg_ybr.study_uid, "1.2.3.4", COLLECTION)
    mount = mounted([jpeg_ybr], SeriesListCatalog([ghost]))
    for _ in range(2):
        with pytest.raises(FetchError):
            mount.names(f"studies/{jpeg_ybr.study_uid}/1.2.3.4")
    assert mount.source.metadata_requests == 2


# -- composition ---------------------------------------------------------------------


def test_two_views_composed_in_one_series_directory_both_appear(
    jpeg_ybr: GeneratedSlide,
) -> None:
    mount = mounted([jpeg_ybr], extra_views=[SeriesUidView()])
    names = mount.names(series_path(jpeg_ybr))
    assert names[0] == "slide.json" and names[-2:] == ["level-2", "series-uid.txt"]
    uid_file = mount.file(f"{series_path(jpeg_ybr)}/series-uid.txt")
    assert uid_file.content() == jpeg_ybr.series_uid.encode()


def test_a_catalog_read_from_a_csv_file_gives_the_same_tree(
    jpeg_ybr: GeneratedSlide, tmp_path: Path
) -> None:
    csv = tmp_path / "series.csv"
    csv.write_text("StudyInstanceUID,SeriesInstanceUID,collection_id,PatientID\n"
                   f"{jpeg_ybr.study_uid},{jpeg_ybr.series_uid},{COLLECTION},patient-7\n")
    mount = mounted([jpeg_ybr], FileCatalog(csv))
    series = f"collections/{COLLECTION}/{jpeg_ybr.study_uid}/{jpeg_ybr.series_uid}"
    assert mount.names(series)[:2] == ["slide.json", "label.jpg"]
    assert json.loads(mount.file(f"{series}/slide.json").content())["PatientID"] == "patient-7"


def test_opening_a_levels_first_tile_reads_the_level_ahead(jpeg_ybr: GeneratedSlide) -> None:
    mount = mounted([jpeg_ybr], with_readahead=True)
    level0 = f"{series_path(jpeg_ybr)}/level-0"
    first, last = mount.tile(f"{level0}/0_0.jpg"), mount.tile(f"{level0}/3_2.jpg")
    first.note_open()
    wait_until(last.read_ahead_unread)
    assert mount.readahead is not None
    mount.readahead.close()
    assert mount.source.requests == [(first.frame.instance_uid, list(range(1, 13)))]
    assert first.content()[:2] == b"\xff\xd8" and len(mount.source.requests) == 1
    assert not first.read_ahead_unread() and last.read_ahead_unread()


def test_a_cached_lookup_answers_only_once_the_directory_is_listed(
    jpeg_ybr: GeneratedSlide,
) -> None:
    mount = mounted([jpeg_ybr])
    series = mount.node(series_path(jpeg_ybr))
    assert mount.tree.lookup_cached(series.inode, "slide.json") is None  # would block
    mount.names(series_path(jpeg_ybr))
    found = mount.tree.lookup_cached(series.inode, "slide.json")
    assert found is not None and found.name == "slide.json"
    with pytest.raises(NotFoundError):
        mount.tree.lookup_cached(series.inode, "slide.xml")
