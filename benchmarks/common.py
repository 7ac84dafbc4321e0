"""What the benchmarks share: a row of figures, an idcfs daemon started and stopped for
one scenario, the readers that time it, the in-memory FUSE ceiling, the table printer
and the results files.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from idcfs.cli import is_mounted

RESULTS = Path(__file__).parent / "results"
CACHE_SIZE = "128M"
STATS = ".idcfs-stats.json"


@dataclass
class Row:
    rtt_ms: int
    name: str
    tiles: int
    seconds: float
    nbytes: int
    requests: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def tiles_per_s(self) -> float:
        return self.tiles / self.seconds if self.seconds else 0.0

    @property
    def mb_per_s(self) -> float:
        return self.nbytes / self.seconds / 1e6 if self.seconds else 0.0


class Mounted:
    """An idcfs daemon started for one scenario (`source` are its source options, such
    as `--url URL`), stopped by its PID's unmount."""

    def __init__(self, work: Path, *source: str) -> None:
        self.path = Path(tempfile.mkdtemp(dir=work, prefix="mnt-"))
        pid_file = self.path.with_suffix(".pid")
        command = [sys.executable, "-m", "idcfs", "mount", "--cache-size", CACHE_SIZE,
                   "--log-file", str(self.path.with_suffix(".log")),
                   "--pid-file", str(pid_file), *source, str(self.path)]
        subprocess.run(command, check=True, timeout=120)
        self.pid = int(pid_file.read_text())

    def stats(self) -> dict[str, Any]:
        return json.loads((self.path / STATS).read_text())

    def peak_rss_mb(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def close(self) -> None:
        subprocess.run([sys.executable, "-m", "idcfs", "unmount", str(self.path)], check=False)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and Path(f"/proc/{self.pid}").exists():
            time.sleep(0.05)


def read_files(paths: list[Path], threads: int = 1) -> tuple[int, list[float]]:
    """Read every file completely; (total bytes, per-file seconds)."""
    def read(path: Path) -> tuple[int, float]:
        start = time.perf_counter()
        with open(path, "rb") as handle:
            size = len(handle.read())
        return size, time.perf_counter() - start

    if threads == 1:
        results = [read(path) for path in paths]
    else:
        with ThreadPoolExecutor(threads) as pool:
            results = list(pool.map(read, paths))
    return sum(size for size, _ in results), [seconds for _, seconds in results]


def parallel_slices(paths: list[Path], readers: int) -> int:
    """`readers` threads, each reading its own contiguous slice in order."""
    share = -(-len(paths) // readers)
    slices = [paths[i : i + share] for i in range(0, len(paths), share)]
    with ThreadPoolExecutor(readers) as pool:
        return sum(pool.map(lambda part: read_files(part)[0], slices))


def listed(folder: Path) -> list[Path]:
    """A directory's files in readdir order (the order cp, tar and find use)."""
    return [folder / name for name in os.listdir(folder)]


def memory_dir(work: Path) -> Path:
    """tmpfs when there is one: a copy's destination costs memory, not disk writes."""
    shm = Path("/dev/shm")
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else work


def copy_tree(folder: Path, work: Path) -> tuple[float, int]:
    """`cp -r folder` to tmpfs: (seconds, bytes copied); the copy is removed."""
    destination = Path(tempfile.mkdtemp(dir=memory_dir(work))) / "copy"
    start = time.perf_counter()
    subprocess.run(["cp", "-r", str(folder), str(destination)], check=True)
    seconds = time.perf_counter() - start
    copied = sum(path.stat().st_size for path in destination.iterdir())
    shutil.rmtree(destination.parent)
    return seconds, copied


def median_row(rows: list[Row]) -> Row:
    """The run with the median time, its spread in the notes."""
    ordered = sorted(rows, key=lambda row: row.seconds)
    middle = ordered[(len(ordered) - 1) // 2]
    if len(rows) > 1:
        middle.extra = {**middle.extra, "runs": len(rows),
                        "min_s": ordered[0].seconds, "max_s": ordered[-1].seconds}
    return middle


@contextmanager
def memory_fs(files: Sequence[int] | Sequence[tuple[str, int]], work: Path) -> Iterator[Path]:
    """The minimal in-memory pyfuse3 filesystem (`benchmarks/memfs.py`) serving files of
    these sizes (named `<i>.jpg`) or these (name, size) pairs, mounted until the end of
    the block."""
    mountpoint = Path(tempfile.mkdtemp(dir=work, prefix="memfs-"))
    files_json = Path(tempfile.mkstemp(dir=work, prefix="memfs-", suffix=".json")[1])
    files_json.write_text(json.dumps(list(files)))
    process = subprocess.Popen([sys.executable, str(Path(__file__).with_name("memfs.py")),
                                str(mountpoint), str(files_json)])
    try:
        deadline = time.monotonic() + 30
        while not is_mounted(mountpoint) and time.monotonic() < deadline:
            time.sleep(0.05)
        yield mountpoint
    finally:
        process.terminate()
        process.wait(timeout=20)


def print_table(rows: list[Row], references: Sequence[str]) -> str:
    """Markdown table of `rows`; a `x REF` column per reference (a scenario label such as
    "(d)"): each row's tiles/s over that scenario's at the same RTT."""
    lines = [
        "| RTT ms | scenario | tiles | s | tiles/s | MB/s | "
        + " | ".join(f"x {ref}" for ref in references) + " | requests | notes |",
        "|---|---|---|---|---|---|" + "---|" * len(references) + "---|---|",
    ]
    for row in rows:
        same_rtt = [r for r in rows if r.rtt_ms == row.rtt_ms]
        ratios = [_ratio(row.tiles_per_s, next(
            (r.tiles_per_s for r in same_rtt if r.name.startswith(ref)), None))
            for ref in references]
        notes = ", ".join(_note(key, value) for key, value in row.extra.items())
        lines.append(
            f"| {row.rtt_ms if row.rtt_ms >= 0 else '-'} | {row.name} | {row.tiles} | "
            f"{row.seconds:.3f} | {row.tiles_per_s:.0f} | {row.mb_per_s:.1f} | "
            + "".join(f"{ratio} | " for ratio in ratios)
            + f"{row.requests if row.requests is not None else ''} | {notes} |"
        )
    table = "\n".join(lines)
    print(table)
    return table


def _note(key: str, value: Any) -> str:
    if isinstance(value, float):
        precise = key.endswith("_s") or key.startswith("of_ceiling")
        return f"{key} {value:.2f}" if precise else f"{key} {value:.1f}"
    if isinstance(value, dict):
        return f"{key} " + " ".join(f"{count}x{size}" for size, count in value.items())
    return f"{key} {value}"


def _ratio(value: float, reference: float | None) -> str:
    return f"{value / reference:.2f}" if reference else ""


def save(rows: list[Row], text: str, name: str = "latest") -> None:
    """benchmarks/results/NAME.md (the commit and `text`) and NAME.json (every row)."""
    RESULTS.mkdir(exist_ok=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=Path(__file__).parent).stdout.strip()
    (RESULTS / f"{name}.md").write_text(f"commit {commit}\n\n{text}\n")
    (RESULTS / f"{name}.json").write_text(json.dumps(
        {"commit": commit, "rows": [row.__dict__ for row in rows]}, indent=2, default=str))
