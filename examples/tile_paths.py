"""Tile paths of an idcfs mount for a training loader, and reading one tile.

Shared by torch_tiles.py and multiprocessing_tiles.py (docs/ML.md). Nothing here
fetches a frame: series come from a catalog file or a walk of `studies/`, the level
from each series' slide.json (one metadata request per series, kept by the mount),
the tile names from the level's listing (frame order) or its `tissue.txt`.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image

TILE_SUFFIXES = (".jpg", ".jpeg")  # every tile name ends so (--tile-name included)
TISSUE_LIST = "tissue.txt"
BACKGROUND = 255  # white: what pads a tile smaller than --size


def add_options(parser: argparse.ArgumentParser) -> None:
    """The options both examples take: where the tiles are and how to read them."""
    parser.add_argument("mount", type=Path, help="the idcfs mountpoint")
    parser.add_argument("--catalog", type=Path, metavar="CSV",
                        help="series to read: a CSV with StudyInstanceUID and "
                        "SeriesInstanceUID columns (e.g. the file given to --catalog); "
                        "default: every series under MOUNT/studies/")
    parser.add_argument("--level", type=int, default=0,
                        help="pyramid level of every series (default 0, full resolution)")
    parser.add_argument("--mpp", type=float, metavar="UM",
                        help="instead of --level: the level nearest this many µm per pixel")
    parser.add_argument("--tiles", choices=("listing", "tissue"), default="listing",
                        help="every tile of the level (its listing, frame order) or only "
                        "those its tissue.txt names")
    parser.add_argument("--order", choices=("random", "sequential"), default="random",
                        help="random: shuffled each epoch; sequential: frame order, which "
                        "the mount's read-ahead follows")
    parser.add_argument("--workers", type=int, default=8, help="reader processes (default 8)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--size", type=int, default=256,
                        help="tiles are cropped or padded (white) to SIZE x SIZE (default 256)")
    parser.add_argument("--limit", type=int, help="only the first N tiles")
    parser.add_argument("--manifest", type=Path, metavar="FILE",
                        help="write one line per tile yielded: its path, the SHA-256 of "
                        "its pixels as yielded, their shape")


def selected_paths(args: argparse.Namespace) -> list[Path]:
    """The tile paths the options name, in frame order within each level."""
    series = catalog_series(args.mount, args.catalog) if args.catalog else walk_series(args.mount)
    paths = [path for folder in series
             for path in level_tiles(folder, args.level, args.mpp, args.tiles)]
    return paths[: args.limit] if args.limit else paths


def walk_series(mount: Path) -> list[Path]:
    """Every series directory under MOUNT/studies/ (a listing of studies and series;
    with `--url` and no catalog, one QIDO-RS search)."""
    studies = mount / "studies"
    return [series for study in _sorted_dirs(studies) for series in _sorted_dirs(study)]


def catalog_series(mount: Path, catalog: Path) -> list[Path]:
    """The series directories a CSV names (StudyInstanceUID, SeriesInstanceUID)."""
    with open(catalog, newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [mount / "studies" / row["StudyInstanceUID"] / row["SeriesInstanceUID"]
            for row in rows]


def level_tiles(series: Path, level: int, mpp: float | None, source: str) -> Iterator[Path]:
    """The tile paths of one level of a series: the listing or tissue.txt of each tile
    directory (the level, or its plane/path directories)."""
    slide = json.loads((series / "slide.json").read_text())
    chosen = nearest_level(slide["levels"], mpp) if mpp else _level(slide["levels"], level)
    folder = series / chosen["directory"]
    subdirectories = slide["tile_directories"]
    folders = [folder / name for name in subdirectories] if subdirectories else [folder]
    for tile_dir in folders:
        yield from tissue_tiles(tile_dir) if source == "tissue" else listed_tiles(tile_dir)


def nearest_level(levels: list[dict], mpp: float) -> dict:
    """The level whose pixel spacing (µm, the mean of row and column) is nearest `mpp`."""
    spaced = [level for level in levels if level["pixel_spacing_mm"]]
    if not spaced:
        raise SystemExit("no level of this slide gives its pixel spacing: use --level")
    return min(spaced, key=lambda level: abs(sum(level["pixel_spacing_mm"]) * 500 - mpp))


def listed_tiles(folder: Path) -> list[Path]:
    """A tile directory's tiles in listing order (frame order; no frame is fetched)."""
    with os.scandir(folder) as entries:
        return [Path(entry.path) for entry in entries if entry.name.endswith(TILE_SUFFIXES)]


def tissue_tiles(folder: Path) -> list[Path]:
    """The tiles a tile directory's tissue.txt names (computed by the mount on first
    read from a low-resolution level, then cached)."""
    names = (folder / TISSUE_LIST).read_text().splitlines()
    return [folder / name for name in names]


def read_tile(path: Path) -> bytes:
    """A tile file's bytes: one open, one read to the end."""
    with open(path, "rb") as handle:
        return handle.read()


def decode(data: bytes, size: int) -> np.ndarray:
    """A JPEG tile as H x W x 3 uint8 RGB, cropped or padded with white to size x size."""
    with Image.open(io.BytesIO(data)) as image:
        pixels = np.asarray(image.convert("RGB"))
    fitted = np.full((size, size, 3), BACKGROUND, dtype=np.uint8)
    height, width = min(size, pixels.shape[0]), min(size, pixels.shape[1])
    fitted[:height, :width] = pixels[:height, :width]
    return fitted


def manifest_line(path: Path, pixels: np.ndarray) -> str:
    digest = hashlib.sha256(np.ascontiguousarray(pixels).tobytes()).hexdigest()
    return f"{path}\t{digest}\t{'x'.join(map(str, pixels.shape))}\n"


def write_manifest(target: Path, lines: Iterable[str]) -> None:
    with open(target, "w") as handle:
        handle.writelines(lines)


def _level(levels: list[dict], index: int) -> dict:
    found = [level for level in levels if level["index"] == index]
    if not found:
        raise SystemExit(f"no level {index} (the slide has {len(levels)})")
    return found[0]


def _sorted_dirs(folder: Path) -> list[Path]:
    return sorted(path for path in folder.iterdir() if path.is_dir())
