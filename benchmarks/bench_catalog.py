"""Benchmark of the IDC catalog: startup, listings and memory, each run in a fresh process.

    python benchmarks/bench_catalog.py [--runs 5]

Every run is a new Python process (cold imports, cold DuckDB); the table shows the
median, min and max over the runs. Peak RSS is the child's ru_maxrss; "RSS after walk"
its resident size once every series of every collection has been listed.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from idcfs.catalog.base import Catalog

REPO = Path(__file__).resolve().parent.parent
PANCREAS_QUERY = (
    "SELECT * FROM index WHERE Modality = 'SM'"
    " AND collection_id IN ('cptac_pda', 'tcga_paad') AND series_size_MB < 500"
)


def rss_mb() -> float:
    """The current resident set size of this process, MB."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Stopwatch:
    """Times successive steps into a dict of milliseconds."""

    def __init__(self) -> None:
        self.times: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.times[name] = (now - self._last) * 1000
        self._last = now


def walk(catalog: Catalog) -> int:
    """Lists every series of every collection; returns how many there are."""
    return sum(
        len(catalog.series(study, collection))
        for collection in catalog.collections()
        for study in catalog.studies(collection)
    )


STARTUP = ("import idcfs.catalog.idc_index (ms)", "IdcIndexCatalog() (ms)", "list collections (ms)")


def run_full() -> dict[str, float]:
    clock = Stopwatch()
    from idcfs.catalog.idc_index import IdcIndexCatalog

    clock.lap(STARTUP[0])
    catalog = IdcIndexCatalog()
    clock.lap(STARTUP[1])
    catalog.collections()
    clock.lap(STARTUP[2])
    catalog.studies("gtex")
    clock.lap("list gtex studies (ms)")
    catalog.series(catalog.studies("gtex")[0], "gtex")
    clock.lap("first series() incl. wait for fields (ms)")
    count = walk(catalog)
    clock.lap(f"walk all {count} series (ms)")
    startup = sum(clock.times[name] for name in STARTUP)
    return {
        "import + construct + list collections (ms)": startup,
        **clock.times,
        "RSS after walk (MB)": rss_mb(),
        "peak RSS (MB)": peak_rss_mb(),
    }


def run_query() -> dict[str, float]:
    clock = Stopwatch()
    from idcfs.catalog.idc_index import IdcIndexCatalog

    catalog = IdcIndexCatalog(query=PANCREAS_QUERY)
    catalog.collections()
    clock.lap("--query pancreas: import + construct + list collections (ms)")
    count = walk(catalog)
    clock.lap(f"--query pancreas: walk all {count} series (ms)")
    return {**clock.times, "--query pancreas: peak RSS (MB)": peak_rss_mb()}


TASKS: dict[str, Callable[[], dict[str, float]]] = {"full": run_full, "query": run_query}


def in_child(task: str) -> dict[str, float]:
    """Runs `task` in a fresh interpreter and returns its figures."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    command = [sys.executable, __file__, "--child", task]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def print_table(runs: list[dict[str, float]]) -> None:
    names = list(runs[0])
    width = max(len(name) for name in names)
    print(f"{'metric':<{width}}  {'median':>9}  {'min':>9}  {'max':>9}")
    for name in names:
        values = [run[name] for run in runs]
        cells = (statistics.median(values), min(values), max(values))
        print(f"{name:<{width}}  " + "  ".join(f"{value:9.3f}" for value in cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="fresh processes per task")
    parser.add_argument("--child", choices=sorted(TASKS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(TASKS[args.child]()))
        return
    runs = [{} for _ in range(args.runs)]
    for task in TASKS:
        for run in runs:
            run.update(in_child(task))
    print(f"{args.runs} runs, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
    print_table(runs)


if __name__ == "__main__":
    main()
