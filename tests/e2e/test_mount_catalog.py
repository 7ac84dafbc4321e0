"""Catalog mounts end to end: --catalog FILE with collections over the real Orthanc, the
IDC index tree, and the proxy's rules (429 quota, 500 retry) through a fault relay."""

from __future__ import annotations

import csv
import errno
import json
import os
from pathlib import Path

import pytest

from idcfs.catalog.idc_index import IdcIndexCatalog
from tests.support.expected import frames_by_path
from tests.support.mounting import named

COLLECTIONS = {"jpeg_ybr": "demo_a", "jpeg_rgb": "demo_a", "sparse": "demo_b"}
MISSING_SERIES = ("1.2.826.0.1.3680043.8.498.1", "1.2.826.0.1.3680043.8.498.2")


def write_catalog(path: Path, slides: list) -> Path:  # type: ignore[type-arg]
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["StudyInstanceUID", "SeriesInstanceUID", "collection_id", "PatientID"])
        for name, collection in COLLECTIONS.items():
            slide = named(slides, name)
            writer.writerow([slide.study_uid, slide.series_uid, collection, f"patient-{name}"])
        writer.writerow([*MISSING_SERIES, "demo_b", "patient-missing"])
    return path


@pytest.fixture
def catalog_mount(relay, mount_idcfs, test_slides, tmp_path):  # type: ignore[no-untyped-def]
    catalog = write_catalog(tmp_path / "cohort.csv", test_slides)
    mount = mount_idcfs(relay.url + "/dicom-web", "--catalog", str(catalog))
    relay.reset()
    return mount


def test_catalog_tree_has_collections_and_studies(catalog_mount) -> None:
    shown = sorted(os.listdir(catalog_mount.path))
    assert shown == [".idcfs-stats.json", "collections", "studies"]
    assert sorted(os.listdir(catalog_mount.path / "collections")) == ["demo_a", "demo_b"]
    info = json.loads((catalog_mount.path / "collections" / "demo_a" / "collection.json")
                      .read_text())
    assert info["series_count"] == 2 and info["study_count"] == 2


def test_catalog_series_serve_the_same_bytes(catalog_mount, orthanc, test_slides) -> None:
    slide = named(test_slides, "jpeg_ybr")
    folder = catalog_mount.path / "collections" / "demo_a" / slide.study_uid / slide.series_uid
    for relative, frame in frames_by_path(orthanc.dicomweb_url, slide, False).items():
        assert (folder / relative).read_bytes() == frame
    description = json.loads((folder / "slide.json").read_text())
    assert description["PatientID"] == "patient-jpeg_ybr"
    assert description["collection_id"] == "demo_a"


def test_series_missing_on_server_is_eio_with_log(catalog_mount) -> None:
    study, series = MISSING_SERIES
    folder = catalog_mount.path / "collections" / "demo_b" / study / series
    with pytest.raises(OSError) as caught:
        os.listdir(folder)
    assert caught.value.errno == errno.EIO
    assert series in catalog_mount.log()


def test_quota_429_fails_fast_and_stops_requests(catalog_mount, relay, test_slides) -> None:
    slide = named(test_slides, "jpeg_rgb")
    level = catalog_mount.path / "studies" / slide.study_uid / slide.series_uid / "level-0"
    names = sorted(os.listdir(level))
    relay.inject(429, times=1000, path_contains="/frames/", body=b"<html>quota</html>")
    for name in names[:3]:
        with pytest.raises(OSError) as caught:
            (level / name).read_bytes()
        assert caught.value.errno == errno.EIO
    assert relay.count("/frames/") == 1, "after a 429 no request may be sent until reset"
    assert catalog_mount.log().count("quota is exhausted until 00:00 UTC") == 1


def test_http_500_is_retried(catalog_mount, relay, test_slides) -> None:
    slide = named(test_slides, "sparse")
    folder = catalog_mount.path / "studies" / slide.study_uid / slide.series_uid
    tile = next(folder.glob("level-0/*.jpg"))
    relay.inject(500, times=2, path_contains="/frames/")
    assert tile.read_bytes()[:2] == b"\xff\xd8"
    assert relay.count("/frames/") == 3


def test_idc_index_tree_matches_duckdb_counts(orthanc, mount_idcfs) -> None:
    """The default IDC tree (served here from the local server URL): collections and the
    studies of one collection equal the index's own counts, without any request."""
    mount = mount_idcfs(orthanc.dicomweb_url, "--catalog", "idc")
    catalog = IdcIndexCatalog()
    assert sorted(os.listdir(mount.path / "collections")) == catalog.collections()
    gtex = os.listdir(mount.path / "collections" / "gtex")
    assert sorted(name for name in gtex if name != "collection.json") == catalog.studies("gtex")
    assert len(os.listdir(mount.path / "studies")) == len(catalog.studies())


def test_cohort_query_mounts_exactly_its_series(orthanc, mount_idcfs) -> None:
    query = ("SELECT StudyInstanceUID, SeriesInstanceUID FROM index "
             "WHERE Modality = 'SM' AND collection_id = 'cptac_pda' LIMIT 25")
    mount = mount_idcfs(orthanc.dicomweb_url, "--query", query)
    shown = {
        (study.name, series.name)
        for study in (mount.path / "studies").iterdir()
        for series in study.iterdir()
    }
    expected = {(e.study_uid, e.series_uid)
                for catalog in [IdcIndexCatalog(query=query)]
                for study in catalog.studies() for e in catalog.series(study)}
    assert shown == expected and len(shown) == 25


def test_bad_query_is_one_line_exit_2(orthanc, tmp_path) -> None:
    from tests.support.mounting import run_idcfs

    result = run_idcfs("mount", "--url", orthanc.dicomweb_url, "--query", "SELECT nonsense",
                       str(tmp_path))
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
