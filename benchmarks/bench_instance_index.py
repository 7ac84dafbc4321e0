"""Benchmark of instance lookups in sm_instance_index (issue 13): what entering an IDC
series costs to learn its instances' keys and sizes from the index, by method.

    python benchmarks/bench_instance_index.py [--runs 3]

The real index is downloaded by idc-index (network); this writes a stand-in of the
same size (instanceCount rows per SM series of the bundled idc_index, real columns,
the real file's order, one row group: tests/support/instance_index.py) and measures,
each method in a fresh process:
- parquet: a DuckDB point query on the parquet file per series entry;
- duckdb-table: the rows loaded once into a compressed in-memory DuckDB table ordered
  by series, a point query on it per entry;
- dict: the rows loaded into a Python dict of packed bytes per series;
- idcfs: `InstanceTable` (idcfs/catalog/idc_index.py): the catalog's series' rows in
  sorted numpy arrays, loaded in the catalog's background, a binary search per entry.
Load time is the one-off cost (in the catalog's background loader); lookup times are
medians over 200 random series; RSS is the process's growth by the load.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SAMPLE = 200


def rss_mb() -> float:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    """The process's peak resident size (VmHWM: ru_maxrss would keep the parent's across
    exec, and the parent has just written the stand-in index)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _series_sample(conn, path: Path) -> list[str]:  # type: ignore[no-untyped-def]
    rows = conn.execute(f"SELECT DISTINCT SeriesInstanceUID FROM read_parquet('{path}')"
                        ).fetchall()
    random.seed(13)
    return [row[0] for row in random.sample(rows, SAMPLE)]


def _timed(lookup, sample: list[str]) -> float:  # type: ignore[no-untyped-def]
    times = []
    for series in sample:
        began = time.perf_counter()
        found = lookup(series)
        times.append((time.perf_counter() - began) * 1000)
        assert found, series
    return statistics.median(times)


def run(method: str, path: Path) -> dict[str, float]:
    import duckdb

    from idcfs.catalog.idc_index import IdcIndexCatalog

    constructed = time.perf_counter()
    catalog = IdcIndexCatalog()
    catalog.series(catalog.studies()[0])  # the fields table loaded
    conn = duckdb.connect()
    sample = _series_sample(conn, path)
    conn.close()
    before = rss_mb()
    began = time.perf_counter()
    figures: dict[str, float] = {}
    if method == "parquet":
        cursor = duckdb.connect()
        sql = (f"SELECT crdc_instance_uuid, instance_size FROM read_parquet('{path}') "
               "WHERE SeriesInstanceUID = ?")

        def lookup(series: str) -> list:  # type: ignore[type-arg]
            return cursor.execute(sql, [series]).fetchall()
    elif method == "duckdb-table":
        cursor = catalog._conn.cursor()
        cursor.execute(
            "CREATE TABLE packed.instances AS SELECT SeriesInstanceUID AS series,"
            " crdc_instance_uuid::UUID AS instance, instance_size AS size"
            f" FROM read_parquet('{path}') ORDER BY series")
        sql = "SELECT instance::VARCHAR, size FROM packed.instances WHERE series = ?"

        def lookup(series: str) -> list:  # type: ignore[type-arg]
            return cursor.execute(sql, [series]).fetchall()
    elif method == "idcfs":
        instances = catalog.instance_table
        assert instances is not None
        instances._loader.join()
        figures[f"{method}: ready after the catalog's construction (ms)"] = (
            time.perf_counter() - constructed) * 1000

        def lookup(series: str) -> list:  # type: ignore[type-arg]
            return instances.instances(series, 10.0)
    else:
        packed = _load_dict(path)

        def lookup(series: str) -> list:  # type: ignore[type-arg]
            blob = packed[series]
            return [(str(uuid.UUID(bytes=blob[i:i + 16])), struct.unpack_from("<q", blob, i + 16))
                    for i in range(0, len(blob), 24)]
    loaded = (time.perf_counter() - began) * 1000
    grown = rss_mb() - before
    return {f"{method}: load (ms)": loaded, **figures, f"{method}: RSS growth (MB)": grown,
            f"{method}: peak RSS (MB)": peak_rss_mb(),
            f"{method}: lookup median (ms)": _timed(lookup, sample)}


def _load_dict(path: Path) -> dict[str, bytes]:
    import duckdb

    rows = duckdb.connect().execute(
        f"SELECT SeriesInstanceUID, crdc_instance_uuid, instance_size FROM read_parquet('{path}')"
    ).fetchall()
    packed: dict[str, bytearray] = {}
    for series, key, size in rows:
        blob = packed.setdefault(series, bytearray())
        blob.extend(uuid.UUID(key).bytes + struct.pack("<q", size))
    return {series: bytes(blob) for series, blob in packed.items()}


def in_child(method: str, data_home: Path, path: Path) -> dict[str, float]:
    env = {**os.environ, "XDG_DATA_HOME": str(data_home),
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, __file__, "--child", method, str(path)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run(args.child[0], Path(args.child[1]))))
        return
    sys.path.insert(0, str(REPO))
    from tests.support.instance_index import FILE_NAME, index_folder, write_full_size_index

    with tempfile.TemporaryDirectory() as home:
        data_home = Path(home)
        folder = index_folder(data_home)
        folder.mkdir(parents=True)
        path = folder / FILE_NAME
        began = time.perf_counter()
        rows = write_full_size_index(path)
        print(f"stand-in index: {rows} rows, {path.stat().st_size / 2**20:.1f} MB, "
              f"written in {time.perf_counter() - began:.1f} s")
        figures: list[dict[str, float]] = [{} for _ in range(args.runs)]
        for method in ("parquet", "duckdb-table", "dict", "idcfs"):
            for figure in figures:
                figure.update(in_child(method, data_home, path))
    for name in figures[0]:
        values = [figure[name] for figure in figures]
        print(f"{name:<32} median {statistics.median(values):9.3f}  "
              f"min {min(values):9.3f}  max {max(values):9.3f}")


if __name__ == "__main__":
    main()
