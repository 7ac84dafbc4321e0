"""Tissue-aware tile lists (docs/LAYOUT.md): `tissue.txt` beside the tiles of each level
(and of each plane/path directory), the names of the tiles that hold tissue, one a line,
in frame order; `tissue-mask.png` in each series, the mask they come from.

Both are listed with placeholder sizes and computed on first read (`idcfs.fetch.tissue`:
one mask per series, from a low-resolution level), so listing sends nothing; a mask in
memory or in the disk cache makes their sizes exact when listed. The
placeholder of tissue.txt is an upper bound without naming a tile: as many lines as
tiles, each as long as the name of the last column and row (a tile name's length never
shrinks as its numbers grow).
"""

from __future__ import annotations

from idcfs.catalog.base import SeriesEntry
from idcfs.fetch.tissue import TissueMasks, mask_plan
from idcfs.fs.nodes import FetchedFile, Node, default_placeholder
from idcfs.fs.views.tile_names import TileNames
from idcfs.slide.model import Level, Slide, TileGrid

LIST_NAME = "tissue.txt"
MASK_NAME = "tissue-mask.png"
PNG_OVERHEAD = 1024  # signature, chunks, zlib framing: above what a PNG adds to its pixels


class TissueListFile(FetchedFile):
    """tissue.txt of one directory: the listed grids' tissue tiles, grid by grid."""

    def __init__(self, masks: TissueMasks, slide: Slide, level: Level, grids: list[TileGrid],
                 in_subdirectories: bool, names: TileNames) -> None:
        self.masks = masks
        self.slide = slide
        self.level = level
        self.grids = grids
        self.prefixes = [f"{grid.directory_name}/" if in_subdirectories else ""
                         for grid in grids]
        self.names = names
        super().__init__(LIST_NAME, self._upper_bound())
        png = masks.known(slide)
        if png is not None:  # the exact size costs no request
            self.exact_size = len(self._text(png))

    def fetch(self) -> bytes:
        return self._text(self.masks.png(self.slide))

    def peek(self) -> bytes | None:
        png = self.masks.at_hand(self.slide)
        return None if png is None else self._text(png)

    def _text(self, png: bytes) -> bytes:
        lines = []
        for grid, prefix in zip(self.grids, self.prefixes, strict=True):
            selected = self.masks.selected(self.slide, self.level, grid, png)
            lines += [f"{prefix}{self.names.name(tile.column, tile.row)}\n"
                      for tile, chosen in zip(grid.tiles, selected, strict=True) if chosen]
        return "".join(lines).encode()

    def _upper_bound(self) -> int:
        longest = len(self.names.name(self.level.columns - 1, self.level.rows - 1).encode())
        return sum(len(grid.tiles) * (len(prefix.encode()) + longest + 1)
                   for grid, prefix in zip(self.grids, self.prefixes, strict=True))


class TissueMaskFile(FetchedFile):
    """tissue-mask.png of a series: white where there is tissue, at the mask's size."""

    def __init__(self, masks: TissueMasks, slide: Slide, size: tuple[int, int]) -> None:
        super().__init__(MASK_NAME, default_placeholder(*size, 1) + size[1] + PNG_OVERHEAD)
        self.masks = masks
        self.slide = slide
        data = masks.known(slide)
        if data is not None:
            self.exact_size = len(data)

    def fetch(self) -> bytes:
        return self.masks.png(self.slide)

    def peek(self) -> bytes | None:
        return self.masks.at_hand(self.slide)


class TissueView:
    """The series view that adds tissue-mask.png, and the level files that add
    tissue.txt (given to `DicomLevelsView` as its `level_files`)."""

    def __init__(self, masks: TissueMasks) -> None:
        self.masks = masks

    def series_nodes(self, slide: Slide, entry: SeriesEntry) -> list[Node]:
        plan = mask_plan(slide)
        return [] if plan is None else [TissueMaskFile(self.masks, slide, plan.size)]

    def level_files(self, slide: Slide, level: Level, grids: list[TileGrid],
                    in_subdirectories: bool, names: TileNames) -> list[Node]:
        if mask_plan(slide) is None or not grids:
            return []
        return [TissueListFile(self.masks, slide, level, grids, in_subdirectories, names)]
