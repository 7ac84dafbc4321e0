"""The `dicom/` view and its ranged files, built as `build_mount` builds them over the
file source of a real converter-made slide (tests/data/idc-style): names, exact sizes,
bytes by ranges, what a listing and a read cost, and which sources get the view."""

from __future__ import annotations

import random
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pydicom
import pytest

from idcfs.cache.memory import ByteLRU
from idcfs.errors import FetchError
from idcfs.fetch.slides import SlideStore
from idcfs.fs.nodes import RangedFile
from idcfs.fs.tree import ROOT_INODE, Tree
from idcfs.fs.views.catalog import CatalogView
from idcfs.fs.views.dicom_files import DicomFilesView
from idcfs.metrics import Metrics
from idcfs.source.base import InstanceFiles
from idcfs.source.dicomweb import DicomWebClient
from idcfs.source.files import FileFrameSource, HeaderReader
from idcfs.source.folder import FolderCatalog
from idcfs.source.objects import LocalFolderStore
from tests.support.memory_source import MemorySource

IDC_STYLE = Path(__file__).parent.parent / "data" / "idc-style"


class FilesTree:
    """A tree with only the dicom/ view over a folder, and what the tests look into."""

    def __init__(self, folder: Path) -> None:
        self.store = LocalFolderStore(folder)
        headers = HeaderReader(self.store)
        catalog = FolderCatalog(self.store, headers)
        catalog.scan()
        self.source = FileFrameSource(self.store, catalog, headers=headers)
        self.metrics = Metrics()
        view = CatalogView(catalog, SlideStore(self.source), [DicomFilesView(self.source,
                                                                             self.metrics)])
        self.tree = Tree(view.root_children)
        study = catalog.studies()[0]
        self.series_path = f"studies/{study}/{catalog.series(study)[0].series_uid}"

    def node(self, path: str):  # type: ignore[no-untyped-def]
        node = self.tree.node(ROOT_INODE)
        for name in filter(None, path.split("/")):
            node = self.tree.lookup(node.inode, name)
        return node

    def files(self) -> list[RangedFile]:
        directory = self.node(f"{self.series_path}/dicom")
        children = self.tree.children(directory.inode)
        assert all(isinstance(child, RangedFile) for child in children)
        return children  # type: ignore[return-value]

    def reads(self) -> int:
        return self.store.statistics()["requests"].get("read", 0)


def by_uid(folder: Path) -> dict[str, Path]:
    """The DICOM files of a folder by SOPInstanceUID."""
    found = {}
    for path in sorted(folder.iterdir()):
        if path.suffix != ".md":
            found[pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID] = path
    return found


def test_dicom_lists_every_instance_at_its_exact_size_and_reads_nothing() -> None:
    mounted = FilesTree(IDC_STYLE)
    assert [node.name for node in mounted.tree.children(mounted.node(mounted.series_path).inode)
            ] == ["dicom"]
    before = mounted.reads()
    files = mounted.files()
    originals = by_uid(IDC_STYLE)
    assert [node.name for node in files] == [f"{uid}.dcm" for uid in sorted(originals)]
    for node in files:
        assert node.size() == (originals[node.name[:-4]].stat().st_size, True)
    assert mounted.reads() == before  # sizes come from the listing


def test_ranges_are_the_files_bytes_one_read_each_at_most() -> None:
    mounted = FilesTree(IDC_STYLE)
    originals = by_uid(IDC_STYLE)
    rng = random.Random(13)
    for node in mounted.files():
        data = originals[node.name[:-4]].read_bytes()
        for _ in range(5):
            offset, length = rng.randrange(len(data)), rng.randrange(1, 200_000)
            before = mounted.reads()
            assert node.read(offset, length) == data[offset : offset + length]
            assert mounted.reads() <= before + 1  # none when a kept block holds it
        assert node.read(len(data) - 7, 4096) == data[-7:]
        assert node.read(len(data), 4096) == b""
        assert node.read(len(data) + 100, 10) == b""
    assert 6 <= mounted.metrics.value("instance_files.range_reads") <= 6 * 5 + 6
    assert mounted.metrics.value("instance_files.bytes_read") > 0


def test_a_file_shorter_than_listed_is_a_fetch_error_never_a_short_read(tmp_path: Path) -> None:
    folder = tmp_path / "slide"
    shutil.copytree(IDC_STYLE, folder)
    mounted = FilesTree(folder)
    node = max(mounted.files(), key=lambda file: file.exact_size)
    path = by_uid(folder)[node.name[:-4]]
    with path.open("r+b") as handle:
        handle.truncate(node.exact_size - 1000)
    # the folder's version check sees the truncation (another mtime) on any read; a
    # store without versions is still caught by the listed size (RangedFile)
    with pytest.raises(FetchError, match="changed since it was listed"):
        node.read(0, 100)
    with pytest.raises(FetchError, match="changed since it was listed"):
        node.read(node.exact_size - 2000, 2000)


def test_a_ranged_file_has_no_whole_content() -> None:
    node = RangedFile("x.dcm", 10, lambda start, length: b"\0" * length)
    with pytest.raises(NotImplementedError):
        node.content()
    assert node.cached_content() is None and not node.direct_io


def test_only_sources_of_files_get_the_view() -> None:
    """mount.build_mount adds DicomFilesView when the source is `InstanceFiles`."""
    store = LocalFolderStore(IDC_STYLE)
    headers = HeaderReader(store)
    assert isinstance(FileFrameSource(store, FolderCatalog(store, headers)), InstanceFiles)
    assert not isinstance(DicomWebClient("http://127.0.0.1:9/dicom-web"), InstanceFiles)
    assert not isinstance(MemorySource([]), InstanceFiles)


class CountedBytes:
    """A file in memory read by ranges, counting the ranges asked (and failing on demand)."""

    def __init__(self, size: int) -> None:
        self.data = random.Random(size).randbytes(size)
        self.ranges: list[tuple[int, int]] = []
        self.failures = 0
        self.release = threading.Event()
        self.release.set()

    def read(self, start: int, length: int) -> bytes:
        self.ranges.append((start, length))
        self.release.wait(10)
        if self.failures:
            self.failures -= 1
            raise FetchError("injected")
        return self.data[start : start + length]


def ranged(size: int, blocks: ByteLRU | None = None) -> tuple[RangedFile, CountedBytes]:
    source = CountedBytes(size)
    return RangedFile("f.dcm", size, source.read,
                      blocks if blocks is not None else ByteLRU(64 << 20)), source


KIB = 1024


def test_a_scan_costs_growing_blocks_not_a_range_per_read() -> None:
    node, source = ranged(3_000_000)
    chunks = [node.read(offset, 128 * KIB) for offset in range(0, node.exact_size, 128 * KIB)]
    assert b"".join(chunks) == source.data
    assert [length for _, length in source.ranges] == [  # 512 KiB make a scan
        128 * KIB, 128 * KIB, 128 * KIB, 128 * KIB, 256 * KIB, 512 * KIB, 1024 * KIB,
        3_000_000 - 2304 * KIB]
    assert node.read(1000, 10) == source.data[1000:1010]  # random again: 64 KiB
    assert source.ranges[-1] == (1000, 64 * KIB)


def test_random_reads_fetch_what_they_ask_or_64_kib_never_a_scans_block() -> None:
    """A tile read the kernel splits into a few contiguous requests (4, 16, 128, 128
    KiB): the first fetches 64 KiB, which holds the second; the others what they ask."""
    node, source = ranged(7_000_000)
    rng = random.Random(3)
    expected = []
    for place in rng.sample(range(20), 20):  # tiles 300 KB apart, in random order
        offset = place * 300_000 + rng.randrange(20_000)
        expected += [(offset, 64 * KIB), (offset + 20 * KIB, 128 * KIB),
                     (offset + 148 * KIB, 128 * KIB)]
        for length in (4 * KIB, 16 * KIB, 128 * KIB, 128 * KIB):
            assert node.read(offset, length) == source.data[offset : offset + length]
            offset += length
    assert source.ranges == expected


def test_reads_arriving_during_a_blocks_fetch_wait_for_it() -> None:
    node, source = ranged(2_000_000)
    node.read(0, 512 * KIB)  # a scan: the next read fetches a 256 KiB block
    source.release.clear()
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(node.read, 512 * KIB, 128 * KIB)
        while len(source.ranges) < 2:
            time.sleep(0.001)
        second = pool.submit(node.read, 640 * KIB, 64 * KIB)
        time.sleep(0.05)
        source.release.set()
        assert first.result() == source.data[512 * KIB : 640 * KIB]
        assert second.result() == source.data[640 * KIB : 704 * KIB]
    assert source.ranges == [(0, 512 * KIB), (512 * KIB, 256 * KIB)]


def test_a_failed_block_fails_its_readers_and_is_fetched_again() -> None:
    node, source = ranged(2_000_000)
    node.read(0, 512 * KIB)
    source.failures = 1
    with pytest.raises(FetchError, match="injected"):
        node.read(512 * KIB, 128 * KIB)
    assert node.read(512 * KIB, 128 * KIB) == source.data[512 * KIB : 640 * KIB]
    assert len(source.ranges) == 3


def test_blocks_the_lru_cannot_keep_are_fetched_again_correctly() -> None:
    node, source = ranged(1_000_000, ByteLRU(100 * KIB))
    chunks = [node.read(offset, 64 * KIB) for offset in range(0, node.exact_size, 64 * KIB)]
    assert b"".join(chunks) == source.data
