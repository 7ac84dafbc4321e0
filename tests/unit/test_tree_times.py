"""Every node's mtime, as `build_mount` wires the tree: from the catalog for catalog
directories and series directories (known before anything is fetched), from the
series' metadata inside it, the moment of looking for the statistics file."""

from __future__ import annotations

import datetime as dt
import os
import time
from pathlib import Path

from idcfs.cache.memory import ByteLRU
from idcfs.cache.tiles import TileCache
from idcfs.catalog.user_file import FileCatalog
from idcfs.fetch.loader import TileLoader
from idcfs.fetch.slides import SlideStore
from idcfs.fs.nodes import LiveFile, Node, TileFileIndex
from idcfs.fs.tree import FALLBACK_MTIME_NS, ROOT_INODE, Tree
from idcfs.fs.views.catalog import CatalogView
from idcfs.fs.views.dicom_levels import DicomLevelsView
from idcfs.metrics import Metrics
from idcfs.tiles.convert import DEFAULT_QUALITY
from tests.support.memory_source import MemorySource
from tests.support.slides import FIXED_DATE, FIXED_TIME, GeneratedSlide

DATA_NS = int(dt.datetime.strptime(FIXED_DATE + FIXED_TIME, "%Y%m%d%H%M%S")
              .replace(tzinfo=dt.UTC).timestamp()) * 10**9
FILE_NS = 1_600_000_000 * 10**9


def tree_over(slide: GeneratedSlide, catalog: FileCatalog) -> tuple[Tree, MemorySource]:
    source = MemorySource(slide.files)
    metrics = Metrics()
    tiles = TileCache(ByteLRU(8 << 20), ByteLRU(1 << 20), None, DEFAULT_QUALITY, metrics)
    view = CatalogView(catalog, SlideStore(source),
                       [DicomLevelsView(TileLoader(source, tiles, metrics), TileFileIndex())],
                       [LiveFile(".idcfs-stats.json", lambda: b"{}")])
    return Tree(view.root_children, view.revision_ns()), source


def at(tree: Tree, path: str) -> Node:
    node = tree.node(ROOT_INODE)
    for name in filter(None, path.split("/")):
        node = tree.lookup(node.inode, name)
    return node


def mtime(tree: Tree, path: str) -> int:
    return tree.attributes(at(tree, path)).mtime_ns


def test_times_from_the_catalog_file_its_dates_and_the_metadata(
    test_slides: list[GeneratedSlide], tmp_path: Path,
) -> None:
    slide = next(slide for slide in test_slides if slide.name == "jpeg_ybr")
    csv = tmp_path / "series.csv"
    csv.write_text("StudyInstanceUID,SeriesInstanceUID,collection_id,StudyDate\n"
                   f"{slide.study_uid},{slide.series_uid},c1,20110519\n")
    os.utime(csv, ns=(FILE_NS, FILE_NS))
    tree, source = tree_over(slide, FileCatalog(csv))
    series = f"collections/c1/{slide.study_uid}/{slide.series_uid}"
    for path in ("", "collections", "studies", "collections/c1", "collections/c1/collection.json",
                 f"collections/c1/{slide.study_uid}"):
        assert mtime(tree, path) == FILE_NS, path
    assert mtime(tree, series) == int(dt.datetime(2011, 5, 19, tzinfo=dt.UTC).timestamp()) * 10**9
    assert source.metadata_requests == 0  # the series directory's time needed no metadata
    for path in ("slide.json", "label.jpg", "level-0", "level-0/0_0.jpg", "level-2/0_0.jpg"):
        assert mtime(tree, f"{series}/{path}") == DATA_NS, path
    before = time.time_ns()
    assert before <= mtime(tree, ".idcfs-stats.json") <= time.time_ns()


def test_what_nothing_dates_shows_the_fixed_date() -> None:
    empty = Tree(lambda: [])
    assert empty.attributes(empty.node(ROOT_INODE)).mtime_ns == FALLBACK_MTIME_NS
    assert dt.datetime.fromtimestamp(FALLBACK_MTIME_NS / 1e9, dt.UTC) == dt.datetime(
        1980, 1, 1, tzinfo=dt.UTC)
