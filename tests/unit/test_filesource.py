"""Unit tests of idcfs.source.files and idcfs.source.folder: frames out of DICOM files in
a folder store, in every layout, with the reads counted."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from idcfs.catalog.base import SeriesEntry
from idcfs.dicom.frames import strip_jpeg_padding
from idcfs.errors import FetchError, MetadataError
from idcfs.slide.parse import parse_slide
from idcfs.source.base import FrameSource
from idcfs.source.dicomfile import FramePosition
from idcfs.source.files import (
    FileFrameSource,
    HeaderReader,
    PrefixSeriesFiles,
    ScanAhead,
    idc_bucket_prefix,
    idc_series_files,
    location_of,
    parse_location,
    plan_runs,
)
from idcfs.source.folder import FolderCatalog
from idcfs.source.objects import LocalFolderStore, ObjectInfo
from tests.support.file_layouts import LAYOUTS, LayoutFile, write_layouts

IDC_STYLE = Path(__file__).parent.parent / "data" / "idc-style"


class DictStore:
    """An in-memory key-value store standing in for the disk cache."""

    def __init__(self) -> None:
        self.values: dict[str, bytes] = {}

    def get(self, key: str) -> bytes | None:
        return self.values.get(key)

    def put(self, key: str, data: bytes) -> None:
        self.values[key] = data


@pytest.fixture(scope="module")
def layouts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, LayoutFile]:
    return write_layouts(tmp_path_factory.mktemp("layouts"))


def folder_source(root: Path, kept: DictStore | None = None
                  ) -> tuple[FileFrameSource, FolderCatalog, LocalFolderStore]:
    store = LocalFolderStore(root)
    headers = HeaderReader(store, kept)
    catalog = FolderCatalog(store, headers)
    return FileFrameSource(store, catalog, kept, headers=headers), catalog, store


def reads(store: LocalFolderStore) -> int:
    return store.statistics()["requests"].get("read", 0)


def test_the_file_source_is_a_frame_source() -> None:
    source: FrameSource = folder_source(IDC_STYLE)[0]
    assert "local folder" in source.description


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_every_layout_gives_its_frames(layouts: dict[str, LayoutFile], name: str) -> None:
    layout = layouts[name]
    source, catalog, _ = folder_source(layout.path.parent)
    spec = layout.spec
    study, series = spec.identity.study_uid, spec.identity.series_uid
    assert series in [entry.series_uid for entry in catalog.series(study)]
    instances = source.series_metadata(study, series)
    slide = parse_slide(study, series, [item.dicom for item in instances],
                        {item.dicom["00080018"]["Value"][0]: item.location for item in instances})
    instance = next(iter(slide.instances.values()))
    numbers = list(range(1, len(layout.frames) + 1))
    frames = source.frames(instance, numbers)
    expected = layout.frames  # without the pad byte, which frames as stored may have
    assert [strip_jpeg_padding(frame.data) for frame in frames] == expected
    backwards = source.frames(instance, numbers[::-1][:3])
    assert [strip_jpeg_padding(frame.data) for frame in backwards] == expected[::-1][:3]


def test_a_batch_of_consecutive_frames_is_one_read(layouts: dict[str, LayoutFile]) -> None:
    layout = layouts["eot"]
    source, _, store = folder_source(layout.path.parent)
    instance = _only_instance(source, layout)
    source.frames(instance, [1])  # header and frame index built
    before = reads(store)
    source.frames(instance, list(range(1, len(layout.frames) + 1)))
    assert reads(store) - before == 1


def test_headers_and_frame_indexes_are_kept_for_the_next_mount(
        layouts: dict[str, LayoutFile]) -> None:
    layout = layouts["tiff"]
    kept = DictStore()
    first, _, _ = folder_source(layout.path.parent, kept)
    instance = _only_instance(first, layout)
    first.frames(instance, [1, 2])
    assert any(key.startswith("frame-index-v2/") for key in kept.values)
    second, catalog, store = folder_source(layout.path.parent, kept)
    catalog.scan()
    assert reads(store) == 0  # every header came from the kept store
    assert strip_jpeg_padding(second.frames(instance, [2])[0].data) == layout.frames[1]
    assert reads(store) == 1  # the frame itself, no index reads


def test_a_frame_number_outside_the_instance_is_a_fetch_error(
        layouts: dict[str, LayoutFile]) -> None:
    layout = layouts["bot"]
    source, _, _ = folder_source(layout.path.parent)
    instance = _only_instance(source, layout)
    with pytest.raises(FetchError, match="frame 999"):
        source.frames(instance, [999])


def test_a_series_with_no_files_is_eio_not_enoent(tmp_path: Path) -> None:
    source, _, _ = folder_source(tmp_path)  # the catalog said it exists: the store lacks it
    with pytest.raises(FetchError, match="no files"):
        source.series_metadata("1.2", "3.4")


def test_the_folder_catalog_skips_files_that_are_not_dicom() -> None:
    _, catalog, _ = folder_source(IDC_STYLE)
    studies = catalog.studies()
    assert len(studies) == 1
    entries = catalog.series(studies[0])
    assert len(entries) == 1
    assert entries[0].fields["PatientID"] == "IDCSTYLE-0001"
    assert not catalog.has_collections() and catalog.collections() == []


def test_instance_files_are_read_as_stored() -> None:
    source, catalog, _ = folder_source(IDC_STYLE)
    study = catalog.studies()[0]
    series = catalog.series(study)[0].series_uid
    instances = source.series_metadata(study, series)
    slide = parse_slide(study, series, [item.dicom for item in instances],
                        {item.dicom["00080018"]["Value"][0]: item.location for item in instances})
    for instance in slide.instances.values():
        path = IDC_STYLE / parse_location(instance.location).key
        assert source.instance_file_size(instance) == path.stat().st_size
        data = path.read_bytes()
        assert source.read_instance_file(instance, 100, 1000) == data[100:1100]
        assert source.read_instance_file(instance, len(data) - 10, 100) == data[-10:]


def test_plan_runs_merges_neighbours_within_the_byte_bound() -> None:
    index = [FramePosition(i * 100, i * 100 + 92, None) for i in range(10)]
    runs = plan_runs(index, [3, 1, 2, 7], max_bytes=1000, gap=8)
    assert [(run.start, run.end, run.numbers) for run in runs] == [
        (0, 292, (1, 2, 3)), (600, 692, (7,))]
    assert len(plan_runs(index, list(range(1, 11)), max_bytes=300, gap=8)) == 4


def test_locations_carry_key_and_size() -> None:
    info = ObjectInfo("a#b/c.dcm", 1234)
    assert parse_location(location_of(info)) == info
    for bad in ("", "key", "key#", "key#12x"):
        with pytest.raises(FetchError):
            parse_location(bad)


class OneSeriesCatalog:
    def series(self, study_uid: str, collection_id: str | None = None) -> list[SeriesEntry]:
        return [SeriesEntry(study_uid, "9.9", None,
                            {"series_aws_url": "s3://idc-open-data/0f-uuid/*"})]


def test_idc_series_are_found_by_the_index_url(tmp_path: Path) -> None:
    prefix_of = idc_bucket_prefix(OneSeriesCatalog(), "idc-open-data")  # type: ignore[arg-type]
    assert prefix_of("1.1", "9.9") == "0f-uuid/"
    with pytest.raises(MetadataError, match="not in the index"):
        prefix_of("1.1", "8.8")
    with pytest.raises(MetadataError, match="not elsewhere"):
        idc_bucket_prefix(OneSeriesCatalog(), "elsewhere")("1.1", "9.9")  # type: ignore[arg-type]
    (tmp_path / "0f-uuid").mkdir()
    (tmp_path / "0f-uuid" / "x.dcm").write_bytes(b"")
    store = LocalFolderStore(tmp_path)
    found = PrefixSeriesFiles(store, prefix_of).series_objects("1.1", "9.9", 1e18)
    assert [info.key for info in found] == ["0f-uuid/x.dcm"]
    # listed with a version (the folder's mtime and inode), kept without one: IDC's
    # objects are immutable, and keyed alike with or without sm_instance_index
    assert next(iter(store.list("0f-uuid/", 1e18))).version is not None
    assert [info.version for info in found] == [None]


class CountedSeriesCatalog:
    def __init__(self, series_uid: str, count: object) -> None:
        self.series_uid, self.count = series_uid, count

    def series(self, study_uid: str, collection_id: str | None = None) -> list[SeriesEntry]:
        return [SeriesEntry(study_uid, self.series_uid, None,
                            {"series_aws_url": "s3://idc-open-data/0f-uuid/*",
                             "instanceCount": self.count})]


class PreconnectCounting(LocalFolderStore):
    """A folder store that records what `preconnect` was asked for."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.asked: list[int] = []

    def preconnect(self, count: int) -> None:
        self.asked.append(count)


@pytest.mark.parametrize(("count", "asked"), [(5, 5), (40, 16), (None, 16), ("x", 16)])
def test_entering_an_idc_series_preconnects_one_connection_per_indexed_instance(
        layouts: dict[str, LayoutFile], tmp_path: Path, count: object, asked: int) -> None:
    """The index's instanceCount says how many header reads follow the listing; more
    connections would be set up (TLS handshakes) for nothing; at most parallel_reads."""
    spec = layouts["bot"].spec
    (tmp_path / "0f-uuid").mkdir()
    (tmp_path / "0f-uuid" / "x.dcm").write_bytes(layouts["bot"].path.read_bytes())
    store = PreconnectCounting(tmp_path)
    catalog = CountedSeriesCatalog(spec.identity.series_uid, count)
    series_files = idc_series_files(store, catalog, "idc-open-data")  # type: ignore[arg-type]
    source = FileFrameSource(store, series_files)
    assert len(source.series_metadata(spec.identity.study_uid, spec.identity.series_uid)) == 1
    assert store.asked == [asked]
    source.close()


def test_entering_a_files_series_preconnects_nothing_its_headers_are_kept(
        layouts: dict[str, LayoutFile], tmp_path: Path) -> None:
    """--files read every header at the scan: entering a series sends no header read,
    so no connection is opened for one."""
    (tmp_path / "x.dcm").write_bytes(layouts["bot"].path.read_bytes())
    store = PreconnectCounting(tmp_path)
    headers = HeaderReader(store)
    catalog = FolderCatalog(store, headers)
    catalog.scan()
    source = FileFrameSource(store, catalog, headers=headers)
    identity = layouts["bot"].spec.identity
    reads = store.statistics()["requests"].get("read", 0)
    assert len(source.series_metadata(identity.study_uid, identity.series_uid)) == 1
    assert store.statistics()["requests"].get("read", 0) == reads
    assert store.asked == [0]
    source.close()


def _only_instance(source: FileFrameSource, layout: LayoutFile):  # noqa: ANN202
    spec = layout.spec
    study, series = spec.identity.study_uid, spec.identity.series_uid
    instances = source.series_metadata(study, series)
    slide = parse_slide(study, series, [item.dicom for item in instances],
                        {item.dicom["00080018"]["Value"][0]: item.location for item in instances})
    return next(iter(slide.instances.values()))


class RecordedReads:
    """`read(start, length)` over bytes, recording each call; fails in `broken` ranges."""

    def __init__(self, data: bytes, broken: range = range(0)) -> None:
        self.data, self.broken = data, broken
        self.calls: list[tuple[int, int]] = []
        self._lock = threading.Lock()

    def __call__(self, start: int, length: int) -> bytes:
        with self._lock:
            self.calls.append((start, length))
        if start in self.broken:
            raise FetchError(f"injected failure at {start}")
        return self.data[start : start + length]


def test_a_scan_reads_each_block_once_fetching_ahead() -> None:
    data = bytes(range(256)) * 40
    recorded = RecordedReads(data)
    with ThreadPoolExecutor(4) as pool:
        reads = ScanAhead(recorded, len(data), pool, ahead=2, block=1000)
        cursor = 5
        while cursor + 1000 <= len(data):  # a walk: each read starts inside the last
            assert reads(cursor, 1000) == data[cursor : cursor + 1000]
            cursor += 997
        assert reads(3, 10) == data[3:13]  # a small read goes straight through
        reads.close()
    blocks = [call for call in recorded.calls if call != (3, 10)]
    assert sorted(blocks) == [(start, min(1000, len(data) - start))
                              for start in range(0, len(data), 1000)]


def test_a_scan_block_that_fails_fails_the_read_that_needs_it() -> None:
    data = bytes(5000)
    with ThreadPoolExecutor(2) as pool:
        reads = ScanAhead(RecordedReads(data, broken=range(2000, 2001)), len(data), pool,
                          ahead=1, block=1000)
        assert reads(0, 1000) == data[:1000]  # block 1 read ahead, block 2 not yet needed
        with pytest.raises(FetchError, match="injected failure at 2000"):
            reads(1500, 1000)
        reads.close()


@pytest.mark.parametrize("name", ["eot", "tiff", "bot", "scan", "multi_fragment_scan"])
def test_frame_sizes_are_told_before_any_frame_is_read(layouts: dict[str, LayoutFile],
                                                       name: str) -> None:
    """What a listing shows: every frame's stored length from a frame index that needs
    no scan (exact without pad from EOT lengths and TIFF byte counts; with the pad from a
    Basic Offset Table), with the first frame's header; nothing where only a scan tells,
    and no scan made for it."""
    layout = layouts[name]
    source, _, store = folder_source(layout.path.parent)
    instance = _only_instance(source, layout)
    before = reads(store)
    hints = source.frame_size_hints(instance)
    lengths = [len(frame) for frame in layout.frames]
    if name in ("eot", "tiff"):
        assert hints is not None and list(hints.lengths) == lengths
    elif name == "bot":
        assert hints is not None
        assert [bound - size for bound, size in zip(hints.lengths, lengths, strict=True)] == [
            size % 2 for size in lengths]
    else:
        assert hints is None
        assert reads(store) - before <= 3  # the offset table's item, no scan
        return
    assert layout.frames[0].startswith(hints.first_head[:64]) and hints.first_head
    assert reads(store) - before <= 3
    source.frames(instance, [1])  # the index is kept: the frame is one read
    assert reads(store) - before <= 4
