"""The DeepZoom layout of a series (docs/LAYOUT.md): `slide.dzi` and `slide_files/`, so
any static web server over the mount is a slide viewer (OpenSeadragon reads it as is).

DeepZoom numbers its levels from 0 (1 x 1 pixel) up to `top = ceil(log2(max(W, H)))`
(the full image); level L is the image shrunk 2^(top - L) times, each side rounded up,
cut into square tiles of `TileSize` (the base level's stored tile size when square, else
256) with no overlap, the tiles at the right and bottom edges cropped to the level, as
`vips dzsave` writes them. With several focal planes or optical paths, each plane/path
is an image of its own: `slide-plane-P_path-O.dzi` and `slide-plane-P_path-O_files/`.

Where a DeepZoom level is a stored level (same size, same square tile size) its
tiles are the stored tiles as the level directories serve them (`TileFile`, through the
loader: JPEG passed through), except the cropped edge tiles. Every other tile is
rendered on first read by the region reader (`idcfs.fetch.regions`): from the fewest
stored tiles of the smallest stored level fine enough, cached like tiles. Listing
renders and fetches nothing: rendered tiles show a placeholder size until read
(docs/SEMANTICS.md, "Sizes").
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from idcfs.catalog.base import SeriesEntry
from idcfs.fetch.loader import TileLoader
from idcfs.fetch.regions import GridKey, Region, RegionReader
from idcfs.fs.nodes import (
    DirNode,
    Node,
    StaticFile,
    TileFile,
    TileFileIndex,
    default_placeholder,
)
from idcfs.fs.views.rendered import RenderedFile
from idcfs.slide.model import FrameRef, Level, Slide, TileGrid

DEFAULT_TILE_SIZE = 256  # when the base level's tiles are not square
FORMAT = "jpeg"  # the .dzi's Format: tiles are <col>_<row>.jpeg
DZI_NAMESPACE = "http://schemas.microsoft.com/deepzoom/2008"

Placeholder = Callable[[int, int, int], int]


@dataclass(frozen=True)
class DeepZoomLevel:
    """One DeepZoom level: its number, how many times smaller than the image it is
    (2^shrink), and its size."""

    number: int
    shrink: int
    width: int
    height: int

    def tile_box(self, column: int, row: int, tile: int) -> tuple[int, int]:
        """The size of tile (column, row): `tile` square, cropped at the level's edges."""
        return (min(tile, self.width - column * tile), min(tile, self.height - row * tile))


def deepzoom_levels(width: int, height: int) -> list[DeepZoomLevel]:
    """Levels 0 (1 x 1) to the full image, as DeepZoom numbers and sizes them."""
    top = math.ceil(math.log2(max(width, height))) if max(width, height) > 1 else 0
    return [DeepZoomLevel(number, top - number, -(-width // (1 << (top - number))),
                          -(-height // (1 << (top - number))))
            for number in range(top + 1)]


def dzi_document(width: int, height: int, tile: int) -> bytes:
    """The .dzi file: the image's true size, its tile size, no overlap, JPEG tiles."""
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n'
            f'<Image xmlns="{DZI_NAMESPACE}" Format="{FORMAT}" Overlap="0" '
            f'TileSize="{tile}">\n'
            f'  <Size Width="{width}" Height="{height}"/>\n'
            f'</Image>\n').encode()


class DeepZoomView:
    """Builds a series directory's `.dzi` files and their tile trees."""

    def __init__(self, loader: TileLoader, regions: RegionReader, tile_index: TileFileIndex,
                 placeholder: Placeholder = default_placeholder) -> None:
        self.loader = loader
        self.regions = regions
        self.tile_index = tile_index
        self.placeholder = placeholder

    def series_nodes(self, slide: Slide, entry: SeriesEntry) -> list[Node]:
        if not slide.levels:
            return []
        base = slide.levels[0]
        tile = tile_size(base)
        nodes: list[Node] = []
        for grid_key, stem in image_names(slide):
            nodes.append(StaticFile(f"{stem}.dzi", dzi_document(base.width, base.height, tile)))
            nodes.append(DirNode(f"{stem}_files",
                                 lambda key=grid_key: self._levels(slide, key, tile)))
        return nodes

    def _levels(self, slide: Slide, grid_key: GridKey, tile: int) -> list[Node]:
        base = slide.levels[0]
        return [DirNode(str(level.number),
                        lambda lv=level: self._tiles(slide, grid_key, tile, lv))
                for level in deepzoom_levels(base.width, base.height)]

    def _tiles(self, slide: Slide, grid_key: GridKey, tile: int,
               level: DeepZoomLevel) -> list[Node]:
        """Every tile of a DeepZoom level, row by row; nothing is fetched."""
        stored = self._stored_positions(slide, grid_key, level, tile)
        nodes: list[Node] = []
        for row in range(-(-level.height // tile)):
            for column in range(-(-level.width // tile)):
                name = f"{column}_{row}.{FORMAT}"
                size = level.tile_box(column, row, tile)
                frame = stored.get((column, row)) if size == (tile, tile) else None
                if frame is not None:
                    node: Node = TileFile(name, slide, frame, self.loader,
                                          self.placeholder(tile, tile, 3))
                    self.tile_index.add(node)  # the page-cache fillers store it too
                else:
                    node = self._rendered(name, slide, grid_key, level, column, row, tile)
                nodes.append(node)
        return nodes

    def _stored_positions(self, slide: Slide, grid_key: GridKey, level: DeepZoomLevel,
                          tile: int) -> dict[tuple[int, int], FrameRef]:
        """The stored tiles of a DeepZoom level that is a stored level (the same size and
        square tile size, and that plane/path), by (column, row); else none."""
        for stored in slide.levels_with(grid_key):
            if ((stored.width, stored.height) == (level.width, level.height)
                    and (stored.tile_width, stored.tile_height) == (tile, tile)):
                return self.regions.grid_positions(slide, stored, grid_key)
        return {}

    def _rendered(self, name: str, slide: Slide, grid_key: GridKey, level: DeepZoomLevel,
                  column: int, row: int, tile: int) -> RenderedFile:
        """A tile rendered on read: its full-resolution region is exactly 2^shrink
        pixels per tile pixel (past the image's edge at an odd-sized level: the edge
        repeated, as vips does)."""
        width, height = level.tile_box(column, row, tile)
        scale = 1 << level.shrink
        region = Region(column * tile * scale, row * tile * scale, width * scale,
                        height * scale)
        return RenderedFile(name, self.placeholder(width, height, 3), self.regions, slide,
                            grid_key, region, (width, height), f"deepzoom/{level.number}/{name}")


def tile_size(base: Level) -> int:
    """The base level's stored tile size when square (so stored levels can be passed
    through), else 256."""
    if base.tile_width == base.tile_height:
        return base.tile_width
    return DEFAULT_TILE_SIZE


def image_names(slide: Slide) -> list[tuple[GridKey, str]]:
    """Each plane/path of the slide and the stem of its .dzi: `slide` alone, or
    `slide-plane-P_path-O` for each when there are several (in the levels' order)."""
    grids: dict[GridKey, TileGrid] = {}
    for level in slide.levels:
        for grid in level.grids:
            grids.setdefault(grid.key, grid)
    if not slide.has_plane_directories:
        return [(key, "slide") for key in grids]
    return [(key, f"slide-{grid.directory_name}") for key, grid in grids.items()]
