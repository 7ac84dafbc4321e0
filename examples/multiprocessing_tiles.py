"""The same reading of an idcfs mount without PyTorch: a `multiprocessing` pool of 8
processes that read and decode tiles, batches handed to the main process (docs/ML.md).

    python examples/multiprocessing_tiles.py MOUNT [--catalog cohort.csv] [--tiles tissue]
        [--order random|sequential] [--epochs 2] [--workers 8]

Each item is (index, tile): the index into the path list, the tile as SIZE x SIZE x 3
uint8 (numpy). Prints each epoch's tiles/s.
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Iterator
from multiprocessing import Pool
from multiprocessing.pool import Pool as PoolType
from pathlib import Path

import numpy as np
from tile_paths import add_options, decode, manifest_line, read_tile, selected_paths, write_manifest

_worker: dict = {}  # each worker process's paths and tile size, set once at its start


def open_pool(paths: list[Path], size: int = 256, workers: int = 8) -> PoolType:
    """Worker processes that know the paths (sent once each, not with every task)."""
    return Pool(workers, initializer=_start_worker, initargs=(paths, size))


def _start_worker(paths: list[Path], size: int) -> None:
    _worker.update(paths=paths, size=size)


def load(index: int) -> tuple[int, np.ndarray]:
    """In a worker: tile `index` read and decoded."""
    return index, decode(read_tile(_worker["paths"][index]), _worker["size"])


def epoch_order(count: int, order: str, epoch: int) -> list[int]:
    """random: a new shuffle each epoch; sequential: frame order."""
    indices = list(range(count))
    if order == "random":
        random.Random(epoch).shuffle(indices)
    return indices


def tiles(pool: PoolType, count: int, order: str, batch_size: int = 32,
          epoch: int = 0) -> Iterator[tuple[int, np.ndarray]]:
    """One epoch's tiles, in order. Each worker takes `batch_size` neighbouring indices
    at a time (imap's chunks), so in sequential order it reads a run of neighbouring
    tiles, which the mount's read-ahead follows."""
    return pool.imap(load, epoch_order(count, order, epoch), chunksize=batch_size)


def run_epoch(pool: PoolType, paths: list[Path], order: str, batch_size: int, epoch: int,
              lines: list[str] | None = None) -> float:
    """Seconds to take every tile of one epoch; each tile's manifest line if asked."""
    start = time.perf_counter()
    for index, pixels in tiles(pool, len(paths), order, batch_size, epoch):
        if lines is not None:
            lines.append(manifest_line(paths[index], pixels))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_options(parser)
    args = parser.parse_args()
    paths = selected_paths(args)
    lines: list[str] = []
    with open_pool(paths, args.size, args.workers) as pool:
        for epoch in range(1, args.epochs + 1):
            seconds = run_epoch(pool, paths, args.order, args.batch_size, epoch,
                                lines if args.manifest else None)
            print(f"epoch {epoch}: {len(paths)} tiles in {seconds:.2f} s, "
                  f"{len(paths) / seconds:.0f} tiles/s ({args.order}, {args.workers} workers)")
    if args.manifest:
        write_manifest(args.manifest, lines)


if __name__ == "__main__":
    main()
