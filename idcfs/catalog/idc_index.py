"""The IDC catalog: slide microscopy series of the IDC index that idc-index-data bundles.

DuckDB reads the bundled `idc_index.parquet` directly (idc-index's IDCClient costs
seconds and gigabytes). At construction the SM rows (76,300 in IDC v25), restricted
to the chosen collections and/or to the series a user's SQL query returns, are copied
into one in-memory DuckDB table holding the columns slide.json shows; listings then
come from Python structures (see `TableCatalog`).

A query may use these views: `index` (idc_index.parquet, every modality), the other
indices idc-index-data bundles (collections_index, prior_versions_index, ...), and the
indices idc-index downloads with `IDCClient().fetch_index(name)` (sm_index,
sm_instance_index, clinical_index, ...) when their files exist locally: see
`downloaded_index_dirs()`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import duckdb
import idc_index_data
import numpy as np

from idcfs.catalog.user_file import (
    COLLECTION,
    KEY_COLUMNS,
    SERIES,
    STUDY,
    TableCatalog,
    jsonable,
    sql_ident,
    sql_str,
)
from idcfs.dicom.times import time_ns

log = logging.getLogger(__name__)

INDEX_VIEW = "index"  # the name idc-index gives idc_index.parquet in SQL
INSTANCE_VIEW = "sm_instance_index"  # SOPInstanceUID -> crdc_instance_uuid, instance_size
VERSION_VIEW = "version_metadata_index"  # idc_version -> version_timestamp (the release)
# Indices idc-index knows, for idc-index-data releases without INDEX_METADATA.
KNOWN_INDICES = ("idc_index", "prior_versions_index", "sm_index", "sm_instance_index")
REQUIRED_COLUMNS = (
    COLLECTION,
    "PatientID",
    STUDY,
    SERIES,
    "Modality",
    "instanceCount",
    "series_size_MB",
    "license_short_name",
    "source_DOI",
)
# Columns of the index copied for slide.json (in this order) when the index has them.
SERIES_COLUMNS = (
    COLLECTION,
    "PatientID",
    "PatientAge",
    "PatientSex",
    STUDY,
    SERIES,
    "StudyDate",
    "StudyDescription",
    "SeriesDate",
    "SeriesDescription",
    "SeriesNumber",
    "Manufacturer",
    "ManufacturerModelName",
    "TransferSyntaxUID",
    "transfer_syntax_name",
    "PhotometricInterpretation",
    "instanceCount",
    "series_size_MB",
    "license_short_name",
    "source_DOI",
    "series_init_idc_version",
    "series_revised_idc_version",
    "series_aws_url",
)
# Licence details per source DOI, from collections_index.
LICENCES_SQL = """
    SELECT DISTINCT ON (lower(src.source_doi)) lower(src.source_doi) AS doi,
        src.license.license_long_name AS license_long_name,
        src.license.license_url AS license_url
    FROM (SELECT unnest(sources) AS src FROM collections_index)
    WHERE src.source_doi IS NOT NULL
"""
STATS_SQL = """
    SELECT count(DISTINCT PatientID) AS patient_count,
        sum(instanceCount) AS instance_count,
        round(sum(series_size_MB), 3) AS total_size_MB,
        list_sort(list(DISTINCT license_short_name)
            FILTER (WHERE license_short_name IS NOT NULL)) AS licenses,
        list_sort(list(DISTINCT source_DOI) FILTER (WHERE source_DOI IS NOT NULL)) AS source_DOIs
    FROM {table} WHERE collection_id = ?
"""
# Optional DuckDB settings, for a lower peak RSS while reading the parquet (one row group
# of a million rows: prefetching buffers whole column chunks, -50 MB) and freed buffers
# handed back to the OS soon after.
OPTIONAL_SETTINGS = (
    "SET disable_parquet_prefetching = true",
    "SET allocator_background_threads = true",
    "SET allocator_flush_threshold = '8MB'",
)
METADATA_SQL = "SELECT * EXCLUDE (collection_id) FROM collections_index WHERE collection_id = ?"


def index_parquet_path() -> Path:
    """The `idc_index.parquet` that idc-index-data bundles (one row per DICOM series)."""
    path = idc_index_data.IDC_INDEX_PARQUET_FILEPATH
    if path is None:
        raise FileNotFoundError("idc-index-data has no idc_index.parquet")
    return Path(path)


def idc_data_version() -> str:
    """The IDC data release of the bundled index, e.g. "v25".

    idc-index-data's major version is the IDC release (25.0.5 holds IDC v25, queried
    from BigQuery's `idc_v25`); idc-index's `get_idc_version()` derives it the same way.
    """
    return f"v{idc_index_data.__version__.split('.')[0]}"


def downloaded_index_dirs() -> list[Path]:
    """Where idc-index saves the indices `fetch_index()` downloads, in lookup order.

    Recent idc-index releases use platformdirs' user data directory for
    ("idc_index_data", version=<idc-index-data version>): on Linux
    $XDG_DATA_HOME/idc_index_data/<version>, by default ~/.local/share/idc_index_data/25.0.5.
    Older ones wrote next to the bundled parquet, in the idc_index_data package.
    """
    data_home = os.environ.get("XDG_DATA_HOME", "").strip() or Path.home() / ".local" / "share"
    version = idc_index_data.__version__
    return [Path(data_home) / "idc_index_data" / version, index_parquet_path().parent]


def _index_names() -> list[str]:
    """Names of the indices idc-index-data describes (bundled or downloadable)."""
    return list(getattr(idc_index_data, "INDEX_METADATA", None) or KNOWN_INDICES)


def _bundled_path(name: str) -> Path | None:
    if name == "idc_index":
        return index_parquet_path()
    metadata = getattr(idc_index_data, "INDEX_METADATA", {}).get(name) or {}
    path = metadata.get("parquet_filepath")
    return Path(path) if path else None


def index_files() -> dict[str, Path]:
    """SQL view name -> parquet file of every IDC index present on this machine."""
    found = {}
    for name in _index_names():
        candidates = [
            _bundled_path(name),
            *(d / f"{name}.parquet" for d in downloaded_index_dirs()),
        ]
        path = next((p for p in candidates if p is not None and p.is_file()), None)
        if path is not None:
            found[INDEX_VIEW if name == "idc_index" else name] = path
    return found


def _register_views(conn: duckdb.DuckDBPyConnection) -> dict[str, Path]:
    """Creates a view per local index file; returns those registered (view -> file).

    An unreadable downloaded index (say, a partial download) is skipped with a warning.
    """
    registered = {}
    for view, path in index_files().items():
        sql = f"CREATE VIEW {sql_ident(view)} AS SELECT * FROM read_parquet({sql_str(str(path))})"
        try:
            conn.execute(sql)
        except duckdb.Error as error:
            if view == INDEX_VIEW:
                raise
            log.warning("IDC index %s not usable: %s", path, error)
            continue
        registered[view] = path
    return registered


def _index_columns(conn: duckdb.DuckDBPyConnection) -> list[str]:
    """The columns of SERIES_COLUMNS the index has; ValueError when a required one is absent."""
    present = {row[0] for row in conn.execute(f'DESCRIBE "{INDEX_VIEW}"').fetchall()}
    missing = [name for name in REQUIRED_COLUMNS if name not in present]
    if missing:
        raise ValueError(f"{index_parquet_path()} lacks column(s) {', '.join(missing)}")
    return [name for name in SERIES_COLUMNS if name in present]


def _collection_ids(conn: duckdb.DuckDBPyConnection, modality: str | None) -> set[str]:
    where = f"WHERE Modality = {sql_str(modality)}" if modality else ""
    sql = f'SELECT DISTINCT collection_id FROM "{INDEX_VIEW}" {where}'
    return {row[0] for row in conn.execute(sql).fetchall()}


def _check_collections(
    conn: duckdb.DuckDBPyConnection, collections: Sequence[str] | None
) -> list[str] | None:
    """The requested collection ids, sorted; ValueError naming those without SM series."""
    if not collections:
        return None
    wanted = sorted({collections} if isinstance(collections, str) else set(collections))
    with_slides = _collection_ids(conn, "SM")
    if all(name in with_slides for name in wanted):
        return wanted
    known = _collection_ids(conn, None)
    problems = [
        f"collection {name!r} has no slide microscopy (SM) series"
        if name in known
        else f"unknown collection {name!r}"
        for name in wanted
        if name not in with_slides
    ]
    raise ValueError(f"{'; '.join(problems)} (IDC {idc_data_version()})")


def _missing_index_hint(message: str, views: dict[str, Path]) -> str:
    absent = [
        name
        for name in _index_names()
        if name not in views and re.search(rf"\b{re.escape(name)}\b", message)
    ]
    if not absent:
        return ""
    return (
        f" ({absent[0]} is not on this machine: idc-index downloads it with"
        f" IDCClient().fetch_index({absent[0]!r}) into {downloaded_index_dirs()[0]})"
    )


def _user_sql(
    conn: duckdb.DuckDBPyConnection, sql: str, views: dict[str, Path]
) -> duckdb.DuckDBPyConnection:
    """Runs SQL wrapping a user's query; DuckDB errors become ValueError with its message."""
    try:
        return conn.execute(sql)
    except duckdb.Error as error:
        raise ValueError(
            f"query failed: {error}{_missing_index_hint(str(error), views)}"
        ) from error


def _single_select(conn: duckdb.DuckDBPyConnection, query: str) -> str:
    """The text of `query`, which must be exactly one SELECT statement."""
    try:
        statements = conn.extract_statements(query)
    except duckdb.Error as error:
        raise ValueError(f"query failed: {error}") from error
    if len(statements) != 1 or statements[0].type != duckdb.StatementType.SELECT:
        raise ValueError("the query must be a single SELECT statement")
    return statements[0].query.strip().rstrip(";")


def _load_cohort(conn: duckdb.DuckDBPyConnection, query: str, views: dict[str, Path]) -> None:
    """Runs a user's query into table `cohort` of distinct (study, series) UIDs."""
    subquery = f"(\n{_single_select(conn, query)}\n) AS q"
    cursor = _user_sql(conn, f"SELECT * FROM {subquery} LIMIT 0", views)
    returned = [column[0] for column in cursor.description]
    if not {name.lower() for name in KEY_COLUMNS} <= {name.lower() for name in returned}:
        raise ValueError(
            f"the query must return columns {' and '.join(KEY_COLUMNS)};"
            f" it returns: {', '.join(returned)}"
        )
    keys = ", ".join(f"CAST({name} AS VARCHAR) AS {name}" for name in KEY_COLUMNS)
    _user_sql(conn, f"CREATE TABLE cohort AS SELECT DISTINCT {keys} FROM {subquery}", views)


def _where_sql(collections: list[str] | None, cohort: bool) -> str:
    """The condition on index rows (alias s) selecting the SM series to show."""
    where = ["s.Modality = 'SM'"]
    if collections:
        where.append(f"s.collection_id IN ({', '.join(map(sql_str, collections))})")
    if cohort:
        on = " AND ".join(f"c.{name} = s.{name}" for name in KEY_COLUMNS)
        where.append(f"EXISTS (SELECT 1 FROM cohort AS c WHERE {on})")
    return " AND ".join(where)


def _slides_sql(table: str, columns: list[str], licences: bool, where: str) -> str:
    """SQL creating `table`: the series to show with their slide.json fields.

    Rows stay in the parquet's order, grouped by collection, so that DuckDB's zone maps
    make the per-collection lookups cheap; sorting by study cost ~40 MB more peak RSS.
    """
    select = [f"s.{sql_ident(name)}" for name in columns]
    join = ""
    if licences:
        select += ["l.license_long_name", "l.license_url"]
        join = f"LEFT JOIN ({LICENCES_SQL}) AS l ON lower(s.source_DOI) = l.doi"
    select.append(f"{sql_str(idc_data_version())} AS idc_data_version")
    return (
        f'CREATE TABLE {table} AS SELECT {", ".join(select)} FROM "{INDEX_VIEW}" AS s {join}'
        f" WHERE {where}"
    )


def _release_time_ns(conn: duckdb.DuckDBPyConnection, views: dict[str, Path]) -> int | None:
    """When the bundled IDC data release was made, from version_metadata_index."""
    if VERSION_VIEW not in views:
        return None
    try:
        rows = conn.execute(f"SELECT CAST(version_timestamp AS VARCHAR) FROM {VERSION_VIEW} "
                            "WHERE idc_version = ?", [int(idc_data_version()[1:])]).fetchall()
    except (duckdb.Error, ValueError) as error:
        log.warning("no IDC release date (%s); directories show a fixed date", error)
        return None
    return time_ns(str(rows[0][0])[:10]) if rows and rows[0][0] else None


def _tune(conn: duckdb.DuckDBPyConnection) -> None:
    """Applies the OPTIONAL_SETTINGS this DuckDB version knows."""
    for sql in OPTIONAL_SETTINGS:
        try:
            conn.execute(sql)
        except duckdb.Error as error:
            log.debug("DuckDB setting not applied (%s): %s", sql, error)


def _table_name(conn: duckdb.DuckDBPyConnection) -> str:
    """Name for the slides table: in a compressed in-memory database when DuckDB has them.

    Compressed, the v25 table takes ~6 MB instead of ~53 MB (DuckDB >= 1.3).
    """
    try:
        conn.execute("ATTACH ':memory:' AS packed (COMPRESS)")
    except duckdb.Error:
        return "slides"
    return "packed.slides"


def _key_rows(conn: duckdb.DuckDBPyConnection, where: str) -> list[tuple[str, str, str]]:
    """(collection, study, series) of the index rows matching `where`, by study and series."""
    select = f'SELECT s.{COLLECTION}, s.{STUDY}, s.{SERIES} FROM "{INDEX_VIEW}" AS s'
    return conn.execute(f"{select} WHERE {where} ORDER BY 2, 3").fetchall()


class _BackgroundSQL(threading.Thread):
    """Runs SQL statements on a cursor of their own while the caller goes on."""

    def __init__(self, cursor: duckdb.DuckDBPyConnection, statements: Sequence[str]) -> None:
        super().__init__(name="idcfs-catalog-load", daemon=True)
        self._cursor = cursor
        self._statements = statements
        self._error: Exception | None = None
        self.start()

    def run(self) -> None:
        try:
            for sql in self._statements:
                self._cursor.execute(sql)
        except Exception as error:  # re-raised by wait(), in the caller's thread
            self._error = error
        finally:
            self._cursor.close()

    def wait(self) -> None:
        """Returns when the statements have run; RuntimeError if one failed."""
        self.join()
        if self._error is not None:
            raise RuntimeError(f"loading the IDC series table failed: {self._error}")


class InstanceTable:
    """The instance files of the catalog's series, from idc-index's `sm_instance_index`
    (when downloaded): (crdc_instance_uuid, instance_size) by SeriesInstanceUID, so
    entering a series of IDC's buckets needs no listing (issue 13).

    Entering a series is on the hot path. Measured with a stand-in of the whole index
    (392k rows, one row group, the real file's order; benchmarks/bench_instance_index.py):
    a DuckDB query of the parquet per series costs ~70 ms (a scan of the whole
    SeriesInstanceUID column), about the bucket round trip it saves; the rows in a
    DuckDB table ordered by series still ~7 ms a lookup (string zone maps keep 8-byte
    prefixes, and every UID starts alike) and ~75 MB; a Python dict 0.01 ms but 2.5 s
    and ~70 MB. So the rows of the catalog's series are read once, in the background
    after the series table (~0.4 s more), into four sorted numpy arrays: a 64-bit key of
    the series (from the MD5 of its UID), the UUID's two halves and the size, 32 bytes an
    instance (~12 MB for the whole index); a lookup is a binary search (~0.05 ms).
    Series whose keys collide are left out (they are listed).
    """

    def __init__(self, conn: duckdb.DuckDBPyConnection, slides_table: str,
                 after: threading.Thread) -> None:
        self._slides_table = slides_table
        self._after = after
        self._columns: dict[str, np.ndarray] = {}
        self._error: Exception | None = None
        self._warned = False
        self._loader = threading.Thread(target=self._load, args=(conn.cursor(),),
                                        name="idcfs-instances-load", daemon=True)
        self._loader.start()

    def instances(self, series_uid: str, timeout: float) -> list[tuple[str, int]] | None:
        """(crdc_instance_uuid, instance_size) of the series' instances, sorted; None when
        the index has no row for it, or could not be loaded within `timeout` seconds (the
        caller lists the series instead). Never raises."""
        self._loader.join(timeout)
        if self._loader.is_alive():
            log.warning("sm_instance_index still loading after %.1f s; listing series %s",
                        timeout, series_uid)
            return None
        if self._error is not None:
            if not self._warned:
                self._warned = True
                log.warning("sm_instance_index not usable (%s); series are listed",
                            self._error)
            return None
        columns = self._columns
        key = np.uint64(series_key(series_uid))
        first, last = (int(np.searchsorted(columns["series"], key, side=side))
                       for side in ("left", "right"))
        rows = [(_uuid_text(int(high), int(low)), int(size)) for high, low, size in zip(
            columns["high"][first:last], columns["low"][first:last],
            columns["size"][first:last], strict=True)]
        return sorted(rows) or None

    def _load(self, cursor: duckdb.DuckDBPyConnection) -> None:
        try:
            self._after.join()
            found = cursor.execute(_instances_sql(self._slides_table)).fetchnumpy()
            self._columns = {name: np.asarray(found[name], dtype=dtype) for name, dtype in
                             (("series", np.uint64), ("high", np.uint64), ("low", np.uint64),
                              ("size", np.int64))}
            log.debug("sm_instance_index: %d instances of the catalog's series",
                      len(self._columns["series"]))
        except Exception as error:  # told by instances(), in the caller's thread
            self._error = error
        finally:
            cursor.close()


def series_key(series_uid: str) -> int:
    """The 64-bit key of a series in `InstanceTable`: the first 8 bytes of the MD5 of its
    UID, little-endian (DuckDB's md5_number() modulo 2**64 is the same number)."""
    return int.from_bytes(hashlib.md5(series_uid.encode()).digest()[:8], "little")


def _uuid_text(high: int, low: int) -> str:
    return str(uuid.UUID(int=high << 64 | low))


LOW_64 = 2**64 - 1


def _instances_sql(slides_table: str) -> str:
    """SQL of sm_instance_index's rows of the series in `slides_table`, sorted by series
    key; usable rows only (a key that is not a UUID, a row without a size, a series
    whose key another shares: left to the listing). Each series' key is computed once,
    and the UUID is split as a number: string work per row cost twice the time."""
    return f"""
        WITH series AS (
            SELECT DISTINCT {SERIES} AS uid,
                (md5_number({SERIES}) & {LOW_64})::UBIGINT AS series
            FROM {slides_table}),
        shared AS (SELECT series FROM series GROUP BY series HAVING count(*) > 1),
        rows AS (
            SELECT s.series,
                CAST(TRY_CAST(i.crdc_instance_uuid AS UUID) AS UHUGEINT) AS number,
                TRY_CAST(i.instance_size AS BIGINT) AS size
            FROM "{INSTANCE_VIEW}" AS i JOIN series AS s ON i.SeriesInstanceUID = s.uid)
        SELECT series, (number >> 64)::UBIGINT AS high, (number & {LOW_64})::UBIGINT AS low,
            size
        FROM rows
        WHERE number IS NOT NULL AND size IS NOT NULL
            AND series NOT IN (SELECT series FROM shared)
        ORDER BY series
    """


class IdcIndexCatalog(TableCatalog):
    """The slide microscopy (Modality SM) series of the bundled IDC index.

    `collections`: show only these collection ids (ValueError naming any that is
    unknown or has no SM series). `query`: a DuckDB SELECT over the views named in the
    module docstring returning StudyInstanceUID and SeriesInstanceUID; only those series
    are shown, and only the SM ones in the index (ValueError with DuckDB's message when
    it fails or lacks those columns). Both given: series satisfying both.
    `views` maps the SQL views a query may use to their parquet files.
    """

    def __init__(self, collections: Sequence[str] | None = None, query: str | None = None) -> None:
        conn = duckdb.connect()
        _tune(conn)
        self.views = _register_views(conn)
        columns = _index_columns(conn)
        chosen = _check_collections(conn, collections)
        if query is not None:
            _load_cohort(conn, query, self.views)
        where = _where_sql(chosen, cohort=query is not None)
        keys = _key_rows(conn, where)
        table = _table_name(conn)
        self._revised_ns = _release_time_ns(conn, self.views)
        fields_sql = _slides_sql(table, columns, "collections_index" in self.views, where)
        # The fields table takes a second scan of the parquet: off the startup path.
        self._loader = _BackgroundSQL(
            conn.cursor(),
            [
                "SET threads = 1",  # the parquet is one row group: no gain, more memory
                fields_sql,
                "DROP TABLE IF EXISTS cohort",
            ],
        )
        self.instance_table = (
            InstanceTable(conn, table, self._loader)
            if INSTANCE_VIEW in self.views else None
        )
        super().__init__(conn, table, has_collection_column=True, key_rows=keys)
        if not self._studies:
            log.warning("no IDC slide microscopy series match the collections and query given")

    def _wait_for_table(self) -> None:
        self._loader.wait()

    def series_instances(self, series_uid: str,
                         timeout: float) -> list[tuple[str, int]] | None:
        """(crdc_instance_uuid, instance_size) of the series' instance files, from
        sm_instance_index when idc-index has downloaded it; None when it is not on this
        machine or names no instance of the series (see `InstanceTable.instances`)."""
        if self.instance_table is None:
            return None
        return self.instance_table.instances(series_uid, timeout)

    def revision_ns(self) -> int | None:
        """The release date of the bundled IDC data version (version_metadata_index),
        midnight UTC; None when idc-index-data does not bundle that index."""
        return self._revised_ns

    def collection_info(self, collection_id: str) -> dict[str, Any] | None:
        """Counts, size, licences and DOIs of the collection's shown series, plus IDC's
        description of the whole collection (collections_index: name, cancer types,
        subjects, description, the sources of the shown series' DOIs); None if unknown.
        """
        info = super().collection_info(collection_id)
        if info is None:
            return None
        info.update(self._record(STATS_SQL.format(table=self._table), [collection_id]))
        if "collections_index" in self.views:
            metadata = self._record(METADATA_SQL, [collection_id])
            dois = {doi.lower() for doi in info["source_DOIs"]}
            sources = metadata.get("sources") or []
            metadata["sources"] = [s for s in sources if str(s.get("source_doi")).lower() in dois]
            info.update(metadata)
        info["idc_data_version"] = idc_data_version()
        return info

    def _record(self, sql: str, params: Sequence[Any]) -> dict[str, Any]:
        """The first row of a query as a JSON-serialisable dict ({} when there is none)."""
        names, rows = self._query(sql, params)
        return jsonable(dict(zip(names, rows[0], strict=True))) if rows else {}
