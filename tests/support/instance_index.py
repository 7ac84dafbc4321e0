"""Stand-ins for idc-index's `sm_instance_index.parquet` (one row per SM instance), for
tests and benchmarks: the real one is downloaded by `IDCClient().fetch_index(...)`,
which needs the network.

The columns and their types are those of idc-index-data's
`sm_instance_index_schema.json`; the rows are written in the real file's order
(`sm_instance_index.sql`: staining, transfer syntax, series), in one row group, as
idc-index-data's parquet files are.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import duckdb
import idc_index_data

from idcfs.catalog.idc_index import index_parquet_path

FILE_NAME = "sm_instance_index.parquet"
COLUMNS_SQL = """
    SOPInstanceUID VARCHAR, SeriesInstanceUID VARCHAR,
    embeddingMedium_CodeMeaning VARCHAR[], embeddingMedium_code_designator_value_str VARCHAR[],
    tissueFixative_CodeMeaning VARCHAR[], tissueFixative_code_designator_value_str VARCHAR[],
    staining_usingSubstance_CodeMeaning VARCHAR[],
    staining_usingSubstance_code_designator_value_str VARCHAR[],
    PixelSpacing_0 DOUBLE, ImageType VARCHAR[], TransferSyntaxUID VARCHAR,
    instance_size BIGINT, TotalPixelMatrixColumns BIGINT, TotalPixelMatrixRows BIGINT,
    crdc_instance_uuid VARCHAR
"""


@dataclass(frozen=True)
class InstanceRow:
    """The columns of one row idcfs reads (the others are filled with plausible values)."""

    sop_instance_uid: str
    series_instance_uid: str
    crdc_instance_uuid: str
    instance_size: int


def index_folder(data_home: Path) -> Path:
    """Where idc-index saves downloaded indices under XDG_DATA_HOME `data_home`."""
    return data_home / "idc_index_data" / idc_index_data.__version__


def write_instance_index(data_home: Path, rows: Iterable[InstanceRow]) -> Path:
    """An sm_instance_index.parquet of `rows` where idc-index would save it."""
    folder = index_folder(data_home)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / FILE_NAME
    conn = duckdb.connect()
    conn.execute(f"CREATE TABLE rows ({COLUMNS_SQL})")
    conn.executemany(
        "INSERT INTO rows VALUES (?, ?, ['Paraffin wax'], ['SCT:311731000'], ['Formalin'],"
        " ['SCT:431510009'], ['hematoxylin', 'water soluble eosin stain'],"
        " ['SCT:12710003', 'SCT:36879007'], 0.00025,"
        " ['DERIVED', 'PRIMARY', 'VOLUME', 'RESAMPLED'], '1.2.840.10008.1.2.4.50', ?, 4096,"
        " 4096, ?)",
        [(row.sop_instance_uid, row.series_instance_uid, row.instance_size,
          row.crdc_instance_uuid) for row in rows])
    _copy_sorted(conn, "rows", path)
    return path


def write_full_size_index(path: Path, seed: int = 13) -> int:
    """A stand-in of the whole real index: instanceCount rows for every SM series of the
    bundled idc_index (392k in v25), random UIDs of real lengths; returns the row count."""
    conn = duckdb.connect()
    conn.execute(f"SELECT setseed({seed / 100})")
    conn.execute(
        f"""CREATE TABLE rows AS SELECT
            '1.2.826.0.1.3680043.8.498.' || (random() * 1e18)::UBIGINT::VARCHAR
                || (random() * 1e12)::UBIGINT::VARCHAR AS SOPInstanceUID,
            SeriesInstanceUID,
            ['Paraffin wax'] AS embeddingMedium_CodeMeaning,
            ['SCT:311731000'] AS embeddingMedium_code_designator_value_str,
            ['Formalin'] AS tissueFixative_CodeMeaning,
            ['SCT:431510009'] AS tissueFixative_code_designator_value_str,
            [CASE WHEN hash(collection_id) % 5 = 0 THEN 'hematoxylin' ELSE 'eosin' END]
                AS staining_usingSubstance_CodeMeaning,
            ['SCT:12710003'] AS staining_usingSubstance_code_designator_value_str,
            0.00025 * (1 + n) AS PixelSpacing_0,
            ['DERIVED', 'PRIMARY', 'VOLUME', 'RESAMPLED'] AS ImageType,
            TransferSyntaxUID,
            (series_size_MB * 1e6 / instanceCount * (0.5 + random()))::BIGINT AS instance_size,
            (100000 / (1 + n))::BIGINT AS TotalPixelMatrixColumns,
            (80000 / (1 + n))::BIGINT AS TotalPixelMatrixRows,
            uuid()::VARCHAR AS crdc_instance_uuid
        FROM read_parquet('{index_parquet_path()}'), range(instanceCount) AS r(n)
        WHERE Modality = 'SM'""")
    _copy_sorted(conn, "rows", path)
    return conn.execute("SELECT count(*) FROM rows").fetchone()[0]


def _copy_sorted(conn: duckdb.DuckDBPyConnection, table: str, path: Path) -> None:
    conn.execute(
        f"COPY (SELECT * FROM {table} ORDER BY staining_usingSubstance_CodeMeaning[1],"
        f" TransferSyntaxUID, SeriesInstanceUID) TO '{path}'"
        " (FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE 2000000)")


def instance_uuid(sop_instance_uid: str) -> str:
    """A stable crdc_instance_uuid for an instance (tests name bucket objects by it)."""
    return str(uuid.uuid5(uuid.NAMESPACE_OID, sop_instance_uid))
