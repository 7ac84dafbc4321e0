"""The DICOM-levels layout of a series (docs/LAYOUT.md): `slide.json`, the associated
images, `level-N/` per pyramid level (with `plane-P_path-O/` below it when the slide
has several focal planes or optical paths), and one `<column>_<row>.jpg` per stored tile
(or as `--tile-name` names it: `tile_names.py`).

Every tile file is one stored frame, served through the loader; opening one tells
read-ahead where in its grid the reader is. slide.json is fixed when the metadata gives
every instance's transfer syntax; else it is rendered at each open, so it shows the
syntaxes the loader learns from frames (`idcfs.fetch.syntaxes`) once they are known.
"""

from __future__ import annotations

from collections.abc import Callable

from idcfs.catalog.base import SeriesEntry
from idcfs.errors import MetadataError
from idcfs.fetch.loader import TileLoader
from idcfs.fetch.readahead import ReadAhead
from idcfs.fs.nodes import (
    DirNode,
    FetchedFile,
    LiveFile,
    Node,
    StaticFile,
    TileFile,
    TileFileIndex,
    default_placeholder,
    json_bytes,
)
from idcfs.fs.views import LevelFiles
from idcfs.fs.views.tile_names import TileNames
from idcfs.slide.model import SERIES_FACTS, AssociatedImage, FrameRef, Level, Slide, TileGrid

Placeholder = Callable[[int, int, int], int]


class AssociatedFile(FetchedFile):
    """label.jpg, overview.jpg or thumbnail.jpg (stitched when stored as tiles)."""

    def __init__(self, slide: Slide, image: AssociatedImage, loader: TileLoader, placeholder: int):
        super().__init__(image.file_name, placeholder)
        self.slide = slide
        self.image = image
        self.loader = loader
        if len(image.tiles) == 1:  # served as its one tile: disk-cached, its size is known
            self.exact_size = loader.known_size(slide, image.tiles[0].frame)

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
        tile_names: TileNames | None = None,
        level_files: LevelFiles | None = None,
    ) -> None:
        """`level_files` adds files beside the tiles of each level (tissue.txt)."""
        self.loader = loader
        self.tile_index = tile_index
        self.readahead = readahead
        self.placeholder = placeholder
        self.tile_names = tile_names or TileNames()
        self.level_files = level_files

    def series_nodes(self, slide: Slide, entry: SeriesEntry) -> list[Node]:
        nodes: list[Node] = [self._slide_json(slide, entry)]
        for image in slide.associated:
            info = slide.instances[image.instance_uid]
            size = self.placeholder(info.total_width, info.total_height, 3)
            nodes.append(AssociatedFile(slide, image, self.loader, size))
        nodes += [
            DirNode(level.directory_name, lambda lv=level: self._level(slide, lv))
            for level in slide.levels
        ]
        return nodes

    def _slide_json(self, slide: Slide, entry: SeriesEntry) -> Node:
        """Fixed when the metadata names every transfer syntax, else rendered at each
        open with those learned from frames so far (the same mtime either way)."""
        if slide.syntaxes_known():
            return StaticFile("slide.json", self._description(slide, entry))
        unknown = [uid for uid, info in slide.instances.items() if not info.transfer_syntax]
        learned = self.loader.syntaxes
        learned.recall(unknown)
        return LiveFile("slide.json", lambda: self._description(slide, entry, learned.of(unknown)),
                        dated=True)

    @staticmethod
    def _description(slide: Slide, entry: SeriesEntry,
                     learned: dict[str, str] | None = None) -> bytes:
        """The slide's description with the catalog's fields (the catalog's PatientID,
        ContainerIdentifier, SeriesDescription win over the metadata's: a user's catalog
        may name them on purpose)."""
        description = {**dict(entry.fields), **slide.describe(learned)}
        for name in SERIES_FACTS:
            if entry.fields.get(name) is not None:
                description[name] = entry.fields[name]
        return json_bytes(description)

    def _level(self, slide: Slide, level: Level) -> list[Node]:
        if not slide.has_plane_directories:
            return self._tiles(slide, level, level.grids[0]) if level.grids else []
        directories: list[Node] = [
            DirNode(grid.directory_name, lambda g=grid: self._tiles(slide, level, g))
            for grid in level.grids
        ]
        return directories + self._beside_tiles(slide, level, level.grids, True)

    def _beside_tiles(self, slide: Slide, level: Level, grids: list[TileGrid],
                      in_subdirectories: bool) -> list[Node]:
        if self.level_files is None:
            return []
        return self.level_files.level_files(slide, level, grids, in_subdirectories,
                                            self.tile_names)

    def _tiles(self, slide: Slide, level: Level, grid: TileGrid) -> list[Node]:
        placeholder = self.placeholder(level.tile_width, level.tile_height, 3)
        grid_key = (slide.series_uid, level.index, grid.directory_name)
        names = [self.tile_names.name(tile.column, tile.row) for tile in grid.tiles]
        if len(set(names)) != len(names):  # unique on the grid checked, not on this one
            raise MetadataError(f"{slide.series_uid} {level.directory_name}: tile names "
                                f"{self.tile_names.template!r} clash in this grid")
        sizes = self._shown_sizes(slide, grid, placeholder)
        nodes: list[Node] = []
        for index, (tile, name, size) in enumerate(zip(grid.tiles, names, sizes, strict=True)):
            node = TileFile(name, slide, tile.frame, self.loader, size,
                            self._open_hook(slide, grid_key, grid, index))
            self.tile_index.add(node)
            nodes.append(node)
        return nodes + self._beside_tiles(slide, level, [grid], False)

    def _shown_sizes(self, slide: Slide, grid: TileGrid, placeholder: int) -> list[int]:
        """The size each tile shows before it is fetched: foretold by the source when it
        can (DICOM files: their frame index), else the placeholder."""
        hints: dict[str, tuple[int, ...] | None] = {}
        sizes = []
        for tile in grid.tiles:
            uid, number = tile.frame.instance_uid, tile.frame.number
            if uid not in hints:
                hints[uid] = self.loader.size_hints(slide, uid)
            known = hints[uid]
            sizes.append(known[number - 1] if known and number <= len(known) else placeholder)
        return sizes

    def _open_hook(
        self, slide: Slide, grid_key: tuple[str, int, str], grid: TileGrid, index: int
    ) -> Callable[[], None] | None:
        readahead = self.readahead
        if readahead is None:
            return None
        return lambda: readahead.on_open(slide, grid_key, grid.tiles, index)
