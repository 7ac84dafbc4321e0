"""The DICOM-levels layout of a series (docs/LAYOUT.md): `slide.json`, the associated
images, `level-N/` per pyramid level (with `plane-P_path-O/` below it when the slide
has several focal planes or optical paths), and one `<column>_<row>.jpg` per stored tile.

Every tile file is one stored frame, served through the loader; opening one tells
read-ahead where in its grid the reader is.
"""

from __future__ import annotations

from collections.abc import Callable

from idcfs.catalog.base import SeriesEntry
from idcfs.fetch.loader import TileLoader
from idcfs.fetch.readahead import ReadAhead
from idcfs.fs.nodes import (
    DirNode,
    FetchedFile,
    Node,
    StaticFile,
    TileFile,
    TileFileIndex,
    default_placeholder,
    json_bytes,
)
from idcfs.slide.model import AssociatedImage, FrameRef, Level, Slide, TileGrid

Placeholder = Callable[[int, int, int], int]


class AssociatedFile(FetchedFile):
    """label.jpg, overview.jpg or thumbnail.jpg (stitched when stored as tiles)."""

    def __init__(self, slide: Slide, image: AssociatedImage, loader: TileLoader, placeholder: int):
        super().__init__(image.file_name, placeholder)
        self.slide = slide
        self.image = image
        self.loader = loader

    def fetch(self) -> bytes:
        return self.loader.associated(self.slide, self.image)

    def peek(self) -> bytes | None:
        if len(self.image.tiles) == 1:
            return self.loader.cached(self.slide, self.image.tiles[0].frame)
        return None

    def stored_frame(self) -> tuple[Slide, FrameRef] | None:
        """A single-frame image is that tile; a stitched one is composed in memory."""
        frame = self.loader.associated_frame(self.slide, self.image)
        return None if frame is None else (self.slide, frame)


class DicomLevelsView:
    """Builds a series directory's nodes in the DICOM-levels layout."""

    def __init__(
        self,
        loader: TileLoader,
        tile_index: TileFileIndex,
        readahead: ReadAhead | None = None,
        placeholder: Placeholder = default_placeholder,
    ) -> None:
        self.loader = loader
        self.tile_index = tile_index
        self.readahead = readahead
        self.placeholder = placeholder

    def series_nodes(self, slide: Slide, entry: SeriesEntry) -> list[Node]:
        description = {**dict(entry.fields), **slide.describe()}
        nodes: list[Node] = [StaticFile("slide.json", json_bytes(description))]
        for image in slide.associated:
            info = slide.instances[image.instance_uid]
            size = self.placeholder(info.total_width, info.total_height, 3)
            nodes.append(AssociatedFile(slide, image, self.loader, size))
        nodes += [
            DirNode(level.directory_name, lambda lv=level: self._level(slide, lv))
            for level in slide.levels
        ]
        return nodes

    def _level(self, slide: Slide, level: Level) -> list[Node]:
        if not slide.has_plane_directories:
            return self._tiles(slide, level, level.grids[0]) if level.grids else []
        return [
            DirNode(grid.directory_name, lambda g=grid: self._tiles(slide, level, g))
            for grid in level.grids
        ]

    def _tiles(self, slide: Slide, level: Level, grid: TileGrid) -> list[Node]:
        size = self.placeholder(level.tile_width, level.tile_height, 3)
        grid_key = (slide.series_uid, level.index, grid.directory_name)
        nodes: list[Node] = []
        for index, tile in enumerate(grid.tiles):
            node = TileFile(tile.file_name, slide, tile.frame, self.loader, size,
                            self._open_hook(slide, grid_key, grid, index))
            self.tile_index.add(node)
            nodes.append(node)
        return nodes

    def _open_hook(
        self, slide: Slide, grid_key: tuple[str, int, str], grid: TileGrid, index: int
    ) -> Callable[[], None] | None:
        readahead = self.readahead
        if readahead is None:
            return None
        return lambda: readahead.on_open(slide, grid_key, grid.tiles, index)
