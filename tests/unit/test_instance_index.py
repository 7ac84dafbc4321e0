"""Unit tests of the instance index (issue 13): IDC's sm_instance_index, when idc-index has
downloaded it, names a series' instance files (keys and sizes), so entering the series
sends no listing; an instance the store lacks makes the series listed, never ENOENT."""

from __future__ import annotations

import logging
import shutil
import uuid
from pathlib import Path

import duckdb
import pytest

from idcfs.catalog.base import SeriesEntry
from idcfs.catalog.idc_index import IdcIndexCatalog, index_parquet_path, series_key
from idcfs.dicom.frames import strip_jpeg_padding
from idcfs.errors import FetchError
from idcfs.slide.parse import parse_slide
from idcfs.source.files import (
    FileFrameSource,
    IndexedSeriesFiles,
    PrefixSeriesFiles,
    idc_bucket_prefix,
    idc_series_files,
)
from idcfs.source.objects import LocalFolderStore, ObjectMissing
from tests.support.file_layouts import LayoutFile, write_layouts
from tests.support.instance_index import InstanceRow, instance_uuid, write_instance_index

COLLECTION = "cmb_gec"  # 20 SM series
OTHER_COLLECTION = "htan_hms"
KEY = instance_uuid("the bot layout")  # the crdc_instance_uuid of the bucket's instance


def _series(collection: str, count: int) -> list[str]:
    sql = ("SELECT SeriesInstanceUID FROM read_parquet(?) WHERE Modality = 'SM' "
           "AND collection_id = ? ORDER BY 1 LIMIT ?")
    rows = duckdb.connect().execute(sql, [str(index_parquet_path()), collection, count])
    return [row[0] for row in rows.fetchall()]


def _rows(series_uid: str, count: int) -> list[InstanceRow]:
    return [InstanceRow(f"{series_uid}.{number}", series_uid,
                        instance_uuid(f"{series_uid}.{number}"), 1000 + number)
            for number in range(count)]


# --------------------------------------------------------------------------- the catalog


def test_the_catalog_names_a_series_instances_from_the_downloaded_index(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    first, second, without_rows = _series(COLLECTION, 3)
    outside = _series(OTHER_COLLECTION, 1)[0]
    broken = InstanceRow("9.9", second, "not-a-uuid", 5)
    write_instance_index(tmp_path, [*_rows(first, 3), *_rows(second, 2), broken,
                                    *_rows(outside, 2)])
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    catalog = IdcIndexCatalog(collections=[COLLECTION])
    expected = sorted((row.crdc_instance_uuid, row.instance_size) for row in _rows(first, 3))
    assert catalog.series_instances(first, 10.0) == expected
    assert sorted(size for _, size in catalog.series_instances(second, 10.0) or []) == [1000, 1001]
    assert catalog.series_instances(without_rows, 10.0) is None  # listed instead
    assert catalog.series_instances(outside, 10.0) is None  # not a series of the catalog


def test_without_the_downloaded_index_series_are_listed(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    catalog = IdcIndexCatalog(collections=[COLLECTION])
    assert catalog.instance_table is None
    assert catalog.series_instances(_series(COLLECTION, 1)[0], 1.0) is None


def test_an_unreadable_index_is_listed_with_a_log_line(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    """An index whose columns are not sm_instance_index's (another release, a damaged
    download): a warning, and the series are listed, never an error."""
    path = write_instance_index(tmp_path, _rows(_series(COLLECTION, 1)[0], 1))
    duckdb.connect().execute(f"COPY (SELECT 1 AS SeriesInstanceUID) TO '{path}' (FORMAT parquet)")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    catalog = IdcIndexCatalog(collections=[COLLECTION])
    with caplog.at_level(logging.WARNING):
        assert catalog.series_instances(_series(COLLECTION, 1)[0], 10.0) is None
    assert "sm_instance_index not usable" in caplog.text


def test_the_series_key_is_duckdbs_md5_number() -> None:
    uid = "1.2.826.0.1.3680043.8.498.12345678901234567890"
    (number,), = duckdb.connect().execute("SELECT md5_number(?)", [uid]).fetchall()
    assert series_key(uid) == int(number) % 2**64


# --------------------------------------------------------------------------- the source


class OneSeries:
    """A catalog of one IDC series at prefix `crdc/`."""

    def __init__(self, series_uid: str, crdc: str) -> None:
        self.series_uid, self.crdc = series_uid, crdc

    def series(self, study_uid: str, collection_id: str | None = None) -> list[SeriesEntry]:
        url = f"s3://idc-open-data/{self.crdc}/*"
        return [SeriesEntry(study_uid, self.series_uid, None, {"series_aws_url": url})]


class Lookups:
    """An instance index answering `named` for every series, counting its calls."""

    def __init__(self, named: list[tuple[str, int]] | None) -> None:
        self.named, self.calls = named, 0

    def __call__(self, series_uid: str, timeout: float) -> list[tuple[str, int]] | None:
        self.calls += 1
        return self.named


@pytest.fixture(scope="module")
def bucket(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, LayoutFile, str]:
    """A folder laid out like IDC's bucket: one series of one instance (a BOT layout)."""
    root = tmp_path_factory.mktemp("bucket")
    layout = write_layouts(tmp_path_factory.mktemp("layouts"), ["bot"])["bot"]
    crdc = str(uuid.uuid4())
    (root / crdc).mkdir()
    shutil.copy(layout.path, root / crdc / f"{KEY}.dcm")
    return root, layout, crdc


def _source(root: Path, layout: LayoutFile, crdc: str,
            lookups: Lookups) -> tuple[FileFrameSource, LocalFolderStore]:
    store = LocalFolderStore(root)
    listed = PrefixSeriesFiles(store, idc_bucket_prefix(
        OneSeries(layout.spec.identity.series_uid, crdc), "idc-open-data"))  # type: ignore[arg-type]
    return FileFrameSource(store, IndexedSeriesFiles(listed, lookups)), store


def _listings(store: LocalFolderStore) -> int:
    return store.statistics()["requests"].get("list", 0)


def test_entering_a_series_the_index_names_sends_no_listing(
        bucket: tuple[Path, LayoutFile, str]) -> None:
    root, layout, crdc = bucket
    size = layout.path.stat().st_size
    source, store = _source(root, layout, crdc, Lookups([(KEY, size)]))
    identity = layout.spec.identity
    found = source.series_metadata(identity.study_uid, identity.series_uid)
    assert [instance.location for instance in found] == [f"{crdc}/{KEY}.dcm#{size}"]
    assert _listings(store) == 0
    slide = parse_slide(identity.study_uid, identity.series_uid, [found[0].dicom],
                        {found[0].dicom["00080018"]["Value"][0]: found[0].location})
    instance = next(iter(slide.instances.values()))
    frames = source.frames(instance, range(1, len(layout.frames) + 1))
    assert [strip_jpeg_padding(frame.data) for frame in frames] == layout.frames


def test_a_stale_index_row_makes_the_series_listed_once_never_enoent(
        bucket: tuple[Path, LayoutFile, str], caplog: pytest.LogCaptureFixture) -> None:
    root, layout, crdc = bucket
    lookups = Lookups([(str(uuid.uuid4()), 4321)])  # an instance the bucket lacks
    source, store = _source(root, layout, crdc, lookups)
    identity = layout.spec.identity
    with caplog.at_level(logging.WARNING):
        found = source.series_metadata(identity.study_uid, identity.series_uid)
    assert [instance.location.partition("#")[0] for instance in found] == [f"{crdc}/{KEY}.dcm"]
    assert _listings(store) == 1
    assert "out of step: listing the series" in caplog.text
    source.series_metadata(identity.study_uid, identity.series_uid)  # again: listed
    assert (_listings(store), lookups.calls) == (2, 1)


def test_a_series_the_index_does_not_name_is_listed(
        bucket: tuple[Path, LayoutFile, str]) -> None:
    root, layout, crdc = bucket
    source, store = _source(root, layout, crdc, Lookups(None))
    identity = layout.spec.identity
    assert len(source.series_metadata(identity.study_uid, identity.series_uid)) == 1
    assert _listings(store) == 1


def test_a_missing_object_is_a_fetch_error_the_index_can_tell(tmp_path: Path) -> None:
    with pytest.raises(ObjectMissing) as raised:
        LocalFolderStore(tmp_path).read("nothing.dcm", 0, 10, 1e18)
    assert isinstance(raised.value, FetchError)  # EIO, never ENOENT


def test_without_an_instance_table_idc_series_are_listed(tmp_path: Path) -> None:
    files = idc_series_files(LocalFolderStore(tmp_path), OneSeries("1.2", "x"),  # type: ignore[arg-type]
                             "idc-open-data")
    assert isinstance(files, PrefixSeriesFiles)
