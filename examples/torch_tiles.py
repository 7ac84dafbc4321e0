"""Train-style reading of an idcfs mount with PyTorch: a Dataset over tile paths and a
DataLoader with 8 worker processes (docs/ML.md).

    python examples/torch_tiles.py MOUNT [--catalog cohort.csv] [--tiles tissue]
        [--order random|sequential] [--epochs 2] [--workers 8]

Each item is (tile, index): the tile as a 3 x SIZE x SIZE uint8 tensor, the index into
`TileDataset.paths` (map it to a label). Prints each epoch's tiles/s. Needs torch
(optional, not an idcfs dependency: `pip install torch`).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from tile_paths import add_options, decode, manifest_line, read_tile, selected_paths, write_manifest
from torch.utils.data import DataLoader, Dataset


class TileDataset(Dataset):
    """Tiles read from their paths in a mount, decoded in the worker that reads them."""

    def __init__(self, paths: list[Path], size: int = 256) -> None:
        self.paths = paths
        self.size = size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        pixels = decode(read_tile(self.paths[index]), self.size)
        return torch.from_numpy(pixels).permute(2, 0, 1), index


def loader(dataset: TileDataset, order: str, workers: int = 8, batch_size: int = 32,
           epochs: int = 1) -> DataLoader:
    """random: reshuffled every epoch (each read is a tile the mount must fetch, unless
    cached or prefetched); sequential: frame order, so each worker's batch is a run of
    neighbouring tiles the mount's read-ahead fetches in whole requests."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=order == "random",
                      num_workers=workers, persistent_workers=workers > 0 and epochs > 1,
                      prefetch_factor=4 if workers else None)


def run_epoch(batches: DataLoader, paths: list[Path], lines: list[str] | None = None) -> float:
    """Seconds to take every batch of one epoch; each tile's manifest line if asked."""
    start = time.perf_counter()
    for tiles, indices in batches:
        if lines is not None:
            lines += [manifest_line(paths[i], tile.permute(1, 2, 0).numpy())
                      for tile, i in zip(tiles, indices.tolist(), strict=True)]
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_options(parser)
    args = parser.parse_args()
    paths = selected_paths(args)
    dataset = TileDataset(paths, args.size)
    batches = loader(dataset, args.order, args.workers, args.batch_size, args.epochs)
    lines: list[str] = []
    for epoch in range(1, args.epochs + 1):
        seconds = run_epoch(batches, paths, lines if args.manifest else None)
        print(f"epoch {epoch}: {len(paths)} tiles in {seconds:.2f} s, "
              f"{len(paths) / seconds:.0f} tiles/s ({args.order}, {args.workers} workers)")
    if args.manifest:
        write_manifest(args.manifest, lines)


if __name__ == "__main__":
    main()
