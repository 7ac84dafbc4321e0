"""Catalogs against the real bundled IDC index (offline), and catalogs from users' files."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import duckdb
import idc_index_data
import pytest

from idcfs.catalog import idc_index
from idcfs.catalog.base import Catalog, SeriesEntry
from idcfs.catalog.idc_index import (
    IdcIndexCatalog,
    idc_data_version,
    index_files,
    index_parquet_path,
)
from idcfs.catalog.user_file import FileCatalog

# An offline pancreas cohort: the slides of IDC's two pancreas collections under 500 MB.
PANCREAS_QUERY = """
    SELECT * FROM index
    WHERE Modality = 'SM' AND collection_id IN ('cptac_pda', 'tcga_paad')
      AND series_size_MB < 500
"""
# The query of IDC's DICOMweb tutorial (notebooks/advanced_topics/idc_dicomweb_access.ipynb).
TUTORIAL_QUERY = """
SELECT index.StudyInstanceUID, sm_index.SeriesInstanceUID
FROM sm_index
JOIN index ON sm_index.SeriesInstanceUID = index.SeriesInstanceUID
WHERE Modality = 'SM' AND primaryAnatomicStructure_CodeMeaning = 'Pancreas'
"""
SLIDE_FIELDS = {
    "collection_id",
    "PatientID",
    "license_short_name",
    "source_DOI",
    "idc_data_version",
    "SeriesDescription",
    "StudyDate",
    "series_size_MB",
    "instanceCount",
}

Triple = tuple[str | None, str, str]  # (collection, study, series)


@pytest.fixture(scope="module")
def duck() -> duckdb.DuckDBPyConnection:
    """DuckDB on the bundled index, independent of the catalog code."""
    conn = duckdb.connect()
    conn.execute(f"CREATE VIEW index AS SELECT * FROM read_parquet('{index_parquet_path()}')")
    return conn


@pytest.fixture(scope="module")
def full() -> IdcIndexCatalog:
    return IdcIndexCatalog()


def expected(duck: duckdb.DuckDBPyConnection, where: str = "TRUE") -> set[Triple]:
    sql = "SELECT collection_id, StudyInstanceUID, SeriesInstanceUID FROM index"
    return set(duck.execute(f"{sql} WHERE Modality = 'SM' AND ({where})").fetchall())


def walk(catalog: Catalog) -> set[Triple]:
    """Every (collection, study, series) reached through collections -> studies -> series."""
    found = set()
    for collection in catalog.collections():
        studies = catalog.studies(collection)
        assert studies == sorted(set(studies))
        for study in studies:
            entries = catalog.series(study, collection)
            assert [e.series_uid for e in entries] == sorted(e.series_uid for e in entries)
            assert {(e.collection_id, e.study_uid) for e in entries} == {(collection, study)}
            found |= {(collection, study, e.series_uid) for e in entries}
    return found


def as_triples(entries: list[SeriesEntry]) -> set[Triple]:
    return {(e.collection_id, e.study_uid, e.series_uid) for e in entries}


# -- the IDC catalog -------------------------------------------------------------------


def test_walk_reaches_exactly_the_sm_series(full: IdcIndexCatalog, duck) -> None:
    want = expected(duck)
    got = walk(full)
    assert got == want
    assert full.collections() == sorted({c for c, _, _ in want})
    assert len(got) == len({series for _, _, series in want})  # no series listed twice
    pairs = {(c, study) for c, study, _ in want}  # a study may span collections
    assert sum(len(full.studies(c)) for c in full.collections()) == len(pairs)


def test_studies_without_collection(full: IdcIndexCatalog, duck) -> None:
    want = expected(duck)
    studies = full.studies()
    assert studies == sorted({study for _, study, _ in want})
    assert set(studies) == {s for c in full.collections() for s in full.studies(c)}
    for study in studies[::997]:
        per_collection = [e for c in full.collections() for e in full.series(study, c)]
        assert as_triples(full.series(study)) == as_triples(per_collection)
    assert full.series("1.2.3.no.such.study") == []
    assert full.studies("no_such_collection") == []


def test_series_fields_are_json(full: IdcIndexCatalog) -> None:
    entries = [e for study in full.studies()[::2000] for e in full.series(study)]
    for entry in entries:
        assert set(entry.fields) >= SLIDE_FIELDS
        assert entry.fields["collection_id"] == entry.collection_id
        assert entry.fields["idc_data_version"] == idc_data_version()
        json.dumps(dict(entry.fields), allow_nan=False)


def test_collection_info(full: IdcIndexCatalog, duck) -> None:
    sql = """SELECT count(*), count(DISTINCT StudyInstanceUID), count(DISTINCT PatientID),
        list(DISTINCT license_short_name) FROM index WHERE Modality = 'SM' AND collection_id = ?"""
    series, studies, patients, licences = duck.execute(sql, ["gtex"]).fetchall()[0]
    info = full.collection_info("gtex")
    assert info is not None
    json.dumps(info, allow_nan=False)
    assert (info["series_count"], info["study_count"]) == (series, studies)
    assert (info["patient_count"], info["licenses"]) == (patients, sorted(licences))
    assert info["total_size_MB"] > 0 and info["source_DOIs"]
    assert info["description"]  # from the bundled collections_index
    assert info["idc_data_version"] == idc_data_version()
    assert full.collection_info("no_such_collection") is None


def test_query_cohort_shows_exactly_its_series(duck) -> None:
    catalog = IdcIndexCatalog(query=PANCREAS_QUERY)
    rows = duck.execute(
        f"SELECT collection_id, StudyInstanceUID, SeriesInstanceUID FROM ({PANCREAS_QUERY})"
    )
    want = set(rows.fetchall())
    assert want and walk(catalog) == want
    assert catalog.collections() == ["cptac_pda", "tcga_paad"]
    assert catalog.studies() == sorted({study for _, study, _ in want})


def test_query_keeps_sm_series_of_chosen_collections_only(duck) -> None:
    query = (
        "SELECT StudyInstanceUID, SeriesInstanceUID FROM index WHERE collection_id = 'cptac_pda'"
    )
    assert len(duck.execute(query).fetchall()) > len(
        expected(duck, "collection_id = 'cptac_pda'")
    )  # the query returns radiology series too
    catalog = IdcIndexCatalog(collections=["cptac_pda", "gtex"], query=query)
    assert catalog.collections() == ["cptac_pda"]
    assert walk(catalog) == expected(duck, "collection_id = 'cptac_pda'")


def test_restricted_to_collections(duck) -> None:
    catalog = IdcIndexCatalog(collections=["tcga_brca", "gtex", "gtex"])
    assert catalog.collections() == ["gtex", "tcga_brca"]
    want = expected(duck, "collection_id IN ('gtex', 'tcga_brca')")
    for collection in catalog.collections():
        studies = {study for c, study, _ in want if c == collection}
        assert catalog.studies(collection) == sorted(studies)
    assert catalog.studies() == sorted({study for _, study, _ in want})
    some = catalog.studies("tcga_brca")[:50]
    assert {t for s in some for t in as_triples(catalog.series(s))} == {
        t for t in want if t[1] in set(some)
    }


def non_sm_collection(duck: duckdb.DuckDBPyConnection) -> str:
    sql = """SELECT min(collection_id) FROM index
        GROUP BY collection_id HAVING bool_and(Modality <> 'SM')"""
    return duck.execute(sql).fetchall()[0][0]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"collections": ["gtex", "no_such_collection"]},
            "unknown collection 'no_such_collection'",
        ),
        ({"query": "SELEC StudyInstanceUID FROM index"}, "Parser Error"),
        ({"query": "SELECT collection_id FROM index"}, "must return columns StudyInstanceUID"),
        ({"query": "SELECT * FROM no_such_table"}, "Catalog Error.*no_such_table"),
        ({"query": "SELECT * FROM index; SELECT * FROM index"}, "single SELECT"),
        ({"query": "DROP VIEW index"}, "single SELECT"),
    ],
)
def test_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        IdcIndexCatalog(**kwargs)


def test_collection_without_slides(duck) -> None:
    name = non_sm_collection(duck)
    with pytest.raises(ValueError, match=f"'{name}' has no slide microscopy"):
        IdcIndexCatalog(collections=[name])


def test_tutorial_query_without_sm_index(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    if "sm_index" in index_files():
        pytest.skip("sm_index is installed next to the bundled index")
    with pytest.raises(ValueError, match=r"sm_index.*fetch_index\('sm_index'\)"):
        IdcIndexCatalog(query=TUTORIAL_QUERY)


def test_tutorial_query_with_downloaded_sm_index(monkeypatch, tmp_path: Path, duck) -> None:
    """A stand-in sm_index where idc-index downloads it: the tutorial's query runs as is."""
    folder = tmp_path / "idc_index_data" / idc_index_data.__version__
    folder.mkdir(parents=True)
    duck.execute(
        f"""COPY (SELECT SeriesInstanceUID, CASE collection_id WHEN 'cmb_gec' THEN 'Stomach'
            ELSE 'Pancreas' END AS primaryAnatomicStructure_CodeMeaning FROM index
            WHERE Modality = 'SM' AND collection_id IN ('cmb_gec', 'tcga_paad'))
        TO '{folder / "sm_index.parquet"}' (FORMAT parquet)"""
    )
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    catalog = IdcIndexCatalog(query=TUTORIAL_QUERY)
    assert catalog.views["sm_index"] == folder / "sm_index.parquet"
    assert walk(catalog) == expected(duck, "collection_id = 'tcga_paad'")


def test_versions(duck) -> None:
    assert index_parquet_path().is_file()
    major = idc_index_data.__version__.split(".")[0]
    assert idc_data_version() == f"v{major}"
    versions = index_files().get("version_metadata_index")
    if versions is not None:
        sql = "SELECT max(idc_version) FROM read_parquet(?)"
        assert duck.execute(sql, [str(versions)]).fetchall()[0][0] == int(major)


def test_concurrent_series(full: IdcIndexCatalog) -> None:
    studies = full.studies("tcga_brca")[:300]
    fresh = IdcIndexCatalog(collections=["tcga_brca"])
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda s: fresh.series(s, "tcga_brca"), studies * 4))
    assert results == [full.series(s, "tcga_brca") for s in studies] * 4


def test_failed_background_load_is_reported(monkeypatch) -> None:
    monkeypatch.setattr(idc_index, "_slides_sql", lambda *args: "SELECT no_such_column")
    catalog = IdcIndexCatalog(collections=["cmb_gec"])
    assert catalog.studies("cmb_gec")  # listings need no fields
    with pytest.raises(RuntimeError, match="no_such_column"):
        catalog.series(catalog.studies("cmb_gec")[0])


# -- catalogs from users' files --------------------------------------------------------


def write_table(duck: duckdb.DuckDBPyConnection, path: Path, sql: str) -> None:
    kind = "parquet" if path.suffix == ".parquet" else "csv"
    duck.execute(f"COPY ({sql}) TO '{path}' (FORMAT {kind})")


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_file_catalog(tmp_path: Path, duck, suffix: str) -> None:
    path = tmp_path / f"cohort{suffix}"
    write_table(
        duck,
        path,
        """SELECT collection_id, StudyInstanceUID, SeriesInstanceUID, PatientID,
            CAST(StudyDate AS DATE) AS StudyDate, series_size_MB, 'nan'::DOUBLE AS score
        FROM index WHERE Modality = 'SM' AND collection_id IN ('cmb_gec', 'htan_hms')""",
    )
    catalog = FileCatalog(path)
    assert catalog.has_collections()
    assert walk(catalog) == expected(duck, "collection_id IN ('cmb_gec', 'htan_hms')")
    htan = {(study, series) for c, study, series in walk(catalog) if c == "htan_hms"}
    assert catalog.collection_info("htan_hms") == {
        "collection_id": "htan_hms",
        "series_count": len(htan),
        "study_count": len({study for study, _ in htan}),
    }
    entry = catalog.series(catalog.studies("cmb_gec")[0])[0]
    assert set(entry.fields) == {
        "collection_id",
        "PatientID",
        "StudyDate",
        "series_size_MB",
        "score",
    }
    assert entry.fields["score"] is None  # NaN
    assert entry.fields["StudyDate"] is None or len(entry.fields["StudyDate"]) == 10
    json.dumps(dict(entry.fields), allow_nan=False)


def test_file_study_spanning_collections(tmp_path: Path) -> None:
    path = tmp_path / "cohort.csv"
    path.write_text(
        "collection_id,StudyInstanceUID,SeriesInstanceUID,stain\n"
        "a,1.1,1.1.2,HE\nb,1.1,1.1.1,IHC\na,1.2,1.2.1,HE\n,1.3,1.3.1,HE\na,1.2,1.2.1,HE\n"
    )
    catalog = FileCatalog(path)
    assert catalog.collections() == ["a", "b"]
    assert (catalog.studies("a"), catalog.studies("b")) == (["1.1", "1.2"], ["1.1"])
    assert catalog.studies() == ["1.1", "1.2", "1.3"]
    assert catalog.series("1.1", "b") == [SeriesEntry("1.1", "1.1.1", "b")]
    assert [(e.series_uid, e.collection_id) for e in catalog.series("1.1")] == [
        ("1.1.1", "b"),
        ("1.1.2", "a"),
    ]
    assert catalog.series("1.1", "a")[0].fields == {"collection_id": "a", "stain": "HE"}
    assert catalog.series("1.3")[0].collection_id is None
    assert catalog.series("1.2") == [SeriesEntry("1.2", "1.2.1", "a")]  # repeated row once
    assert catalog.collection_info("b") == {
        "collection_id": "b",
        "series_count": 1,
        "study_count": 1,
    }


def test_file_without_collections(tmp_path: Path) -> None:
    path = tmp_path / "cohort.csv"
    path.write_text("SeriesInstanceUID,StudyInstanceUID,collection_id\n1.2,1.3,\n1.20,1.3,\n")
    catalog = FileCatalog(path)
    assert not catalog.has_collections()
    assert (catalog.collections(), catalog.studies()) == ([], ["1.3"])
    assert [e.series_uid for e in catalog.series("1.3")] == ["1.2", "1.20"]  # kept as text
    assert catalog.collection_info("a") is None


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "catalog file not found"),
        ("StudyInstanceUID,Other\n1.2,x\n", "lacks column\\(s\\) SeriesInstanceUID \\(it has"),
        ("", "lacks column"),
    ],
)
def test_file_errors(tmp_path: Path, content: str | None, message: str) -> None:
    path = tmp_path / "cohort.csv"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ValueError, match=message) as raised:
        FileCatalog(path)
    assert "\n" not in str(raised.value)
