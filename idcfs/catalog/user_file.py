"""Catalogs held in a DuckDB table, and the one read from a user's parquet or CSV file.

`TableCatalog` answers from a table with one row per series (StudyInstanceUID,
SeriesInstanceUID, optionally collection_id, any other columns): the keys are loaded
once into compact Python structures, so listings never touch DuckDB; a series' other
columns become `SeriesEntry.fields`, fetched for a block of neighbouring studies at a
time (a directory walk visits studies in sorted order) and kept in a small LRU cache.

A study may hold series of several collections: it is listed under each of them, with
only that collection's series there, and once (with all its series) outside collections.
"""

from __future__ import annotations

import datetime
import math
import os
import threading
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
from cachetools import LRUCache

from idcfs.catalog.base import SeriesEntry

STUDY = "StudyInstanceUID"
SERIES = "SeriesInstanceUID"
COLLECTION = "collection_id"
KEY_COLUMNS = (STUDY, SERIES)

BLOCK_STUDIES = 128  # studies whose fields one query fetches
CACHE_STUDIES = 2048  # (collection, study) series lists kept

# DuckDB types whose Python values are JSON-serialisable as they are.
PLAIN_TYPES = frozenset(
    ["VARCHAR", "BOOLEAN", "TINYINT", "SMALLINT", "INTEGER", "BIGINT"]
    + ["UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT"]
)

Key = tuple[str | None, str]  # (collection_id, series_uid) within one study


def sql_str(text: str) -> str:
    """`text` as a SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def sql_ident(name: str) -> str:
    """`name` as a quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (DuckDB adds a SQL excerpt below it)."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def jsonable(value: Any) -> Any:
    """`value` as a JSON-serialisable value: dates as ISO strings, NaN and infinities as None."""
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float | Decimal):
        number = float(value)
        return number if math.isfinite(number) else None
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(item) for item in value]
    if isinstance(value, bytes):
        return value.hex()
    return str(value)  # UUID, timedelta, ...


def row_reader(
    description: Sequence[tuple[Any, ...]],
) -> Callable[[tuple[Any, ...]], dict[str, Any]]:
    """A function turning a row of a result described by `description` (a DB-API cursor
    description) into a JSON-serialisable dict of its columns other than the two UIDs."""
    columns = [
        (at, column[0], str(column[1]) not in PLAIN_TYPES)
        for at, column in enumerate(description)
        if column[0] not in KEY_COLUMNS
    ]

    def read(row: tuple[Any, ...]) -> dict[str, Any]:
        return {name: jsonable(row[at]) if convert else row[at] for at, name, convert in columns}

    return read


class TableCatalog:
    """A read-only `Catalog` over DuckDB table `table` of `conn` (one row per series).

    The table needs columns StudyInstanceUID and SeriesInstanceUID (non-null VARCHAR)
    and, when `has_collection_column`, collection_id (NULL: the series is in no
    collection). Every other column except the two UIDs goes into `SeriesEntry.fields`.
    `key_rows`, when given, are the table's (collection, study, series) sorted by study
    and series, so that the table itself may still be loading (see `_wait_for_table`).
    The catalog owns `conn`; all its DuckDB use goes through one lock. Entries are
    cached and shared between calls: callers must not mutate their `fields`.
    """

    def __init__(
        self,
        conn: duckdb.DuckDBPyConnection,
        table: str,
        *,
        has_collection_column: bool,
        key_rows: Iterable[tuple[str | None, str, str]] | None = None,
    ) -> None:
        self._conn = conn
        self._table = table
        self._has_collection_column = has_collection_column
        self._lock = threading.Lock()
        self._cache: LRUCache[tuple[str | None, str], list[SeriesEntry]] = LRUCache(CACHE_STUDIES)
        if key_rows is None:
            collection = COLLECTION if has_collection_column else "NULL"
            sql = f"SELECT {collection}, {STUDY}, {SERIES} FROM {table} ORDER BY 2, 3"
            _, key_rows = self._query(sql)
        self._index_keys(key_rows)

    def _index_keys(self, rows: Iterable[tuple[str | None, str, str]]) -> None:
        """Builds the listings from (collection, study, series) rows sorted by study, series."""
        by_study: dict[str, list[Key]] = {}
        by_collection: dict[str, dict[str, None]] = {}
        self._series_count: Counter[str] = Counter()
        interned: dict[str, str] = {}
        for collection, study, series in rows:
            collection = interned.setdefault(collection, collection) if collection else None
            by_study.setdefault(study, []).append((collection, series))
            if collection is not None:
                by_collection.setdefault(collection, {})[study] = None
                self._series_count[collection] += 1
        self._by_study = {study: tuple(keys) for study, keys in by_study.items()}
        self._studies = list(by_study)
        self._by_collection = {name: list(by_collection[name]) for name in sorted(by_collection)}

    # -- Catalog protocol -------------------------------------------------------------

    def has_collections(self) -> bool:
        """True when at least one series has a collection."""
        return bool(self._by_collection)

    def collections(self) -> list[str]:
        """All collection ids, sorted."""
        return list(self._by_collection)

    def collection_info(self, collection_id: str) -> dict[str, Any] | None:
        """Series and study counts of one collection; None when it is unknown."""
        studies = self._by_collection.get(collection_id)
        if studies is None:
            return None
        return {
            "collection_id": collection_id,
            "series_count": self._series_count[collection_id],
            "study_count": len(studies),
        }

    def studies(self, collection_id: str | None = None) -> list[str]:
        """StudyInstanceUIDs, sorted; only those with series in `collection_id` when given."""
        if collection_id is None:
            return list(self._studies)
        return list(self._by_collection.get(collection_id, ()))

    def series(self, study_uid: str, collection_id: str | None = None) -> list[SeriesEntry]:
        """The series of one study (of `collection_id` only, when given), sorted by UID."""
        if not self._keys(study_uid, collection_id):
            return []
        with self._lock:
            entries = self._cache.get((collection_id, study_uid))
            if entries is None:
                entries = self._load_block(study_uid, collection_id)
        return list(entries)

    # -- fields ---------------------------------------------------------------------------

    def _keys(self, study_uid: str, collection_id: str | None) -> list[Key]:
        keys = self._by_study.get(study_uid, ())
        return [key for key in keys if collection_id is None or key[0] == collection_id]

    def _load_block(self, study_uid: str, collection_id: str | None) -> list[SeriesEntry]:
        """Caches the entries of the block of studies around `study_uid`; lock held."""
        ordered = self._studies if collection_id is None else self._by_collection[collection_id]
        start = bisect_left(ordered, study_uid) // BLOCK_STUDIES * BLOCK_STUDIES
        block = ordered[start : start + BLOCK_STUDIES]
        self._wait_for_table()
        fields = self._block_fields(block[0], block[-1], collection_id)
        for study in block:
            self._cache[(collection_id, study)] = [
                SeriesEntry(study, series, collection, fields.get((collection, series), {}))
                for collection, series in self._keys(study, collection_id)
            ]
        return self._cache[(collection_id, study_uid)]

    def _block_fields(
        self, first_study: str, last_study: str, collection_id: str | None
    ) -> dict[Key, dict[str, Any]]:
        """Fields of the series of studies first..last (and of `collection_id`); lock held."""
        sql = f"SELECT * FROM {self._table} WHERE {STUDY} BETWEEN ? AND ?"
        params = [first_study, last_study]
        if collection_id is not None:
            sql += f" AND {COLLECTION} = ?"
            params.append(collection_id)
        cursor = self._conn.execute(sql, params)
        names = [column[0] for column in cursor.description]
        series_at = names.index(SERIES)
        collection_at = names.index(COLLECTION) if self._has_collection_column else None
        read = row_reader(cursor.description)
        fields = {}
        for row in cursor.fetchall():
            collection = row[collection_at] if collection_at is not None else None
            fields[(collection or None, row[series_at])] = read(row)
        return fields

    def _wait_for_table(self) -> None:
        """Returns once the table exists: a hook for subclasses that load it in the background."""

    def _query(self, sql: str, params: Sequence[Any] = ()) -> tuple[list[str], list[tuple]]:
        """Runs `sql` under the lock: (column names, rows)."""
        self._wait_for_table()
        with self._lock:
            cursor = self._conn.execute(sql, list(params))
            return [column[0] for column in cursor.description], cursor.fetchall()


def _is_parquet(path: Path) -> bool:
    with path.open("rb") as file:
        return file.read(4) == b"PAR1"


class FileCatalog(TableCatalog):
    """A catalog from a parquet or CSV file with StudyInstanceUID, SeriesInstanceUID columns.

    An optional collection_id column groups series into collections (has_collections()
    is True when it holds a non-empty value); the other columns become
    `SeriesEntry.fields`. Rows without both UIDs are skipped, repeated rows kept once.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise ValueError(f"catalog file not found: {self.path}")
        conn = duckdb.connect()
        try:
            columns = self._columns(conn, self._source(()))
            has_collection = COLLECTION.lower() in (name.lower() for name in columns)
            conn.execute(self._table_sql(columns, has_collection))
        except (duckdb.Error, OSError) as error:
            raise ValueError(
                f"cannot read catalog file {self.path}: {first_line(error)}"
            ) from error
        super().__init__(conn, "slides", has_collection_column=has_collection)
        self._revised_ns = self.path.stat().st_mtime_ns

    def revision_ns(self) -> int | None:
        """When the file was last modified (read once: the tree keeps one time)."""
        return self._revised_ns

    def _source(self, text_columns: Sequence[str]) -> str:
        """The DuckDB table function reading the file; CSV `text_columns` read as VARCHAR."""
        if _is_parquet(self.path):
            return f"read_parquet({sql_str(str(self.path))})"
        forced = ", ".join(f"{sql_str(name)}: 'VARCHAR'" for name in text_columns)
        options = f", types={{{forced}}}" if forced else ""
        return f"read_csv({sql_str(str(self.path))}{options})"

    def _columns(self, conn: duckdb.DuckDBPyConnection, source: str) -> list[str]:
        """The file's column names; ValueError unless both UID columns are among them."""
        columns = [row[0] for row in conn.execute(f"DESCRIBE SELECT * FROM {source}").fetchall()]
        lowered = {name.lower() for name in columns}
        missing = [name for name in KEY_COLUMNS if name.lower() not in lowered]
        if missing:
            raise ValueError(
                f"catalog file {self.path} lacks column(s) {', '.join(missing)}"
                f" (it has: {', '.join(columns)})"
            )
        return columns

    def _table_sql(self, columns: list[str], has_collection: bool) -> str:
        """SQL creating table `slides`: keys as trimmed VARCHAR first, then other columns."""
        keys = [*KEY_COLUMNS, COLLECTION] if has_collection else list(KEY_COLUMNS)
        lowered = {name.lower() for name in keys}
        actual = [name for name in columns if name.lower() in lowered]
        cleaned = [f"NULLIF(TRIM(CAST({key} AS VARCHAR)), '') AS {key}" for key in keys]
        others = [sql_ident(name) for name in columns if name.lower() not in lowered]
        return (
            f"CREATE TABLE slides AS SELECT DISTINCT ON ({', '.join(keys)}) * FROM "
            f"(SELECT {', '.join(cleaned + others)} FROM {self._source(actual)})"
            f" WHERE {STUDY} IS NOT NULL AND {SERIES} IS NOT NULL"
        )
