"""Any region of a slide, at any size, as pixels or as a JPEG: the one region reader of
the views that show more than stored tiles (DeepZoom, IIIF, tissue masks).

A region is given in full-resolution (level-0) pixels and an output size; its scale is
how many level-0 pixels one output pixel covers. It is read from the smallest stored
level that is fine enough (`level_for`: downsample <= scale, 1 % tolerance), only the
stored tiles the region touches on that level: those the tile caches hold when their
served bytes are the stored frames (8-bit baseline JPEG: a render after reading or
prefetching a level sends nothing), the others fetched through the `TileLoader` in one
counted request per batch of frames of an instance (`TileLoader.stored_frames`), decoded
and pasted on a canvas (`idcfs.tiles.compose`), scaled to 8 bits, cut to the region and
resized by area averaging (Pillow's resize with a box: sub-pixel exact, each output
pixel the mean of the source pixels under it; Lanczos when enlarging). A coarse region
therefore costs low-resolution frames only, never the base level.

Bounded: a region whose stored tiles (or output) exceed `max_source_pixels` (64 Mpx by
default: 1,024 tiles of 256 x 256, 192 MB decoded as RGB) raises `RegionTooLarge`
before anything is fetched.

`jpeg` encodes at the mount's quality and keeps the result like a tile: the memory LRU
(the tiles' own), then the disk cache with `--cache-dir`; renders of one key are claimed
(`idcfs.fetch.claims`), so readers of a render under way wait for it and a second read
sends nothing. Each `jpeg` a reader asks for counts as one tile read (`tile_reads.*`,
docs/SEMANTICS.md "Statistics"), like a stitched label; the stored frames a render reads
are frame requests, not tile reads.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Hashable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import NamedTuple

import cachetools
import numpy as np
from PIL import Image

from idcfs.cache.tiles import tile_key
from idcfs.dicom.pixels import PixelFormat
from idcfs.errors import DecodeError, NotFoundError, RegionTooLarge
from idcfs.fetch.claims import DEFAULT_WAIT_S
from idcfs.fetch.computed import ComputedFiles
from idcfs.fetch.loader import TileLoader
from idcfs.metrics import Metrics
from idcfs.slide.model import FrameRef, Level, Slide
from idcfs.tiles.compose import Piece, background_value, compose
from idcfs.tiles.convert import TileDecodeError, encode_jpeg, serves_stored_frames, to_8bit

log = logging.getLogger(__name__)

GridKey = tuple[int, str]  # (plane_index, optical_path) of a TileGrid
TOLERANCE = 0.01  # a level of a 1001-wide image halved is 500 wide: downsample 2.002
MAX_SOURCE_PIXELS = 1 << 26  # stored-tile pixels one region may decode (64 Mpx)
SMALL_RENDER = 64 * 64  # renders of fewer pixels are encoded at quality 100 (_quality_for)
SHRINK = Image.Resampling.BOX
"""Area averaging: each output pixel the mean of the source pixels under it, as vips
dzsave's default (mean) shrink and wsidicom's pyramid filter; no ringing, and no
pixel reaches outside its own area, so a tile is the same whatever region it was cut
from (Lanczos reaches 3 output pixels around: a 1 x 1 tile of a coarse level differed
from the same area read alone by 32 dB)."""
ENLARGE = Image.Resampling.LANCZOS  # a region asked larger than its finest level
KEPT_GRIDS = 64  # tile-position maps of grids kept (one per level and plane/path)


class Region(NamedTuple):
    """A rectangle of the full-resolution image: left, top, width, height in pixels."""

    x: int
    y: int
    width: int
    height: int


@dataclass(frozen=True)
class SourceArea:
    """What a region reads on one stored level: the box of level pixels it covers
    (floats: sub-pixel), the whole-pixel canvas around it, and the tiles it touches."""

    level: Level
    box: tuple[float, float, float, float]  # left, top, right, bottom in level pixels
    left: int
    top: int
    width: int
    height: int
    columns: range
    rows: range

    @property
    def tile_pixels(self) -> int:
        """The pixels of every stored tile the region touches (its cost to decode)."""
        return len(self.columns) * len(self.rows) * self.level.tile_width * self.level.tile_height


class RegionReader:
    """Regions of slides from the fewest stored tiles; thread-safe, blocking."""

    def __init__(self, loader: TileLoader, metrics: Metrics, wait_s: float = DEFAULT_WAIT_S,
                 max_source_pixels: int = MAX_SOURCE_PIXELS) -> None:
        """`wait_s` bounds a reader's wait for a render another reader does (the mount's
        `--timeout`)."""
        self.loader = loader
        self.quality = loader.quality
        self.max_source_pixels = max_source_pixels
        self._kept = ComputedFiles(loader.tiles, metrics, wait_s)
        self._positions: cachetools.LRUCache[Hashable, dict[tuple[int, int], FrameRef]] = (
            cachetools.LRUCache(KEPT_GRIDS))
        self._positions_lock = threading.Lock()
        self._rendered = metrics.counter("regions.rendered")
        self._tiles_decoded = metrics.counter("regions.tiles_decoded")
        self._refused = metrics.counter("regions.refused")

    # -- the seam ---------------------------------------------------------------------

    def level_for(self, slide: Slide, grid_key: GridKey, scale: float) -> Level:
        """The smallest stored level fine enough for `scale` (level-0 pixels per output
        pixel): the largest downsample <= scale (1 % tolerance), among the levels that
        have the grid; the finest of those when none is (an enlargement).
        NotFoundError when no level has the grid."""
        having = slide.levels_with(grid_key)
        if not having:
            raise NotFoundError(f"{slide.series_uid}: no level has plane {grid_key[0]} "
                                f"path {grid_key[1]!r}")
        fine = [level for level in having if level.downsample <= scale * (1 + TOLERANCE)]
        if not fine:
            return min(having, key=lambda level: level.downsample)
        return max(fine, key=lambda level: level.downsample)

    def pixels(self, slide: Slide, grid_key: GridKey, region: Region, out_width: int,
               out_height: int) -> np.ndarray:
        """The region as 8-bit pixels, `out_height` x `out_width` (x 3 for colour, RGB),
        from the fewest stored tiles of `level_for` (see the module docstring). Callers
        clip regions to the image; a part outside it (a DeepZoom edge tile of an
        odd-sized level) repeats the image's edge pixels.
        RegionTooLarge above the bound, ValueError for an empty region or size,
        FetchError / DecodeError from the frames."""
        area = self.source_area(slide, grid_key, region, out_width, out_height)
        canvas = self._canvas(slide, grid_key, area)
        return _resized(canvas, area, out_width, out_height)

    def jpeg(self, slide: Slide, grid_key: GridKey, region: Region, out_width: int,
             out_height: int, key: str) -> bytes:
        """`pixels` as a JPEG at the mount's quality, cached like a tile (memory, then
        disk) under `key` and the arguments (a key reused for another region cannot
        serve the wrong pixels); one render at a time per key, others wait for it."""
        identity = self._identity(slide, grid_key, region, out_width, out_height, key)
        return self._kept.get(slide, identity, lambda: self._render(
            slide, grid_key, region, out_width, out_height, key))

    # -- for views: never blocking ----------------------------------------------------

    def cached(self, slide: Slide, grid_key: GridKey, region: Region, out_width: int,
               out_height: int, key: str) -> bytes | None:
        """A render in memory, else None (counted as a read only when found)."""
        return self._kept.cached(
            slide, self._identity(slide, grid_key, region, out_width, out_height, key))

    def in_flight(self, slide: Slide, grid_key: GridKey, region: Region, out_width: int,
                  out_height: int, key: str) -> Future[bytes] | None:
        """The future of a render under way, else None."""
        return self._kept.running(
            slide, self._identity(slide, grid_key, region, out_width, out_height, key))

    def waited(self, future: Future[bytes]) -> bytes:
        """The render of a finished `in_flight` future the caller waited for."""
        return self._kept.waited(future)

    def source_area(self, slide: Slide, grid_key: GridKey, region: Region, out_width: int,
                    out_height: int) -> SourceArea:
        """What reading `region` at that size would read (nothing is fetched);
        RegionTooLarge above the bound (logged and counted: `regions.refused`)."""
        if out_width < 1 or out_height < 1:
            raise ValueError(f"output size {out_width}x{out_height} is empty")
        _check_inside(region, slide.levels[0])
        scale = min(region.width / out_width, region.height / out_height)
        level = self.level_for(slide, grid_key, scale)
        area = _area(level, slide.levels[0], region)
        largest = max(area.tile_pixels, out_width * out_height)
        if largest > self.max_source_pixels:
            self._refused.add()
            raise RegionTooLarge(
                f"{slide.series_uid}: region {region.x},{region.y},{region.width},"
                f"{region.height} at {out_width}x{out_height} needs {largest:,} pixels from "
                f"{level.directory_name}, more than the {self.max_source_pixels:,} idcfs "
                "decodes for one file")
        return area

    # -- steps ------------------------------------------------------------------------

    def _identity(self, slide: Slide, grid_key: GridKey, region: Region, out_width: int,
                  out_height: int, key: str) -> str:
        """The render's name in the memory and disk caches (the quality is part of it:
        the disk cache outlives a mount and its --quality; `ComputedFiles.key` adds the
        slide's revision)."""
        plane, path = grid_key
        return (f"region/{slide.series_uid}/{key}/{plane}/{path}/{region.x},{region.y},"
                f"{region.width},{region.height}/{out_width}x{out_height}/q{self.quality}")

    def _quality_for(self, width: int, height: int) -> int:
        """The mount's quality, or 100 for an image under SMALL_RENDER pixels: a JPEG
        block's quantisation error falls on its few pixels (a 22 x 22 DeepZoom tile
        scored 39.5 dB against its exact pixels at quality 97), and at a few hundred
        bytes such a tile costs nothing more at 100 (45 dB and more)."""
        return 100 if width * height < SMALL_RENDER else self.quality

    def _render(self, slide: Slide, grid_key: GridKey, region: Region, out_width: int,
                out_height: int, key: str) -> bytes:
        pixels = self.pixels(slide, grid_key, region, out_width, out_height)
        self._rendered.add()
        try:
            return encode_jpeg(pixels, self._quality_for(out_width, out_height))
        except ValueError as error:
            raise DecodeError(f"{slide.series_uid} {key}: {error}") from error

    def _canvas(self, slide: Slide, grid_key: GridKey, area: SourceArea) -> np.ndarray:
        """The 8-bit pixels of the area's canvas: its stored tiles decoded and pasted,
        the background where a sparse level has none."""
        level = area.level
        positions = self.grid_positions(slide, level, grid_key)
        wanted = [(column, row, positions[(column, row)])
                  for row in area.rows for column in area.columns if (column, row) in positions]
        pixels = slide.instances[_first_instance(level, wanted)].pixels
        if not wanted:
            return _blank(pixels, area.width, area.height)
        frames = [frame for _, _, frame in wanted]
        held = self._cached_tiles(slide, frames)
        fetched = self.loader.stored_frames(slide, [frame for frame in frames
                                                    if frame not in held])
        self._tiles_decoded.add(len(wanted))
        pieces = []
        for column, row, frame in wanted:
            syntax = slide.instances[frame.instance_uid].transfer_syntax
            data = held.get(frame)
            if data is None:
                data, syntax = fetched[frame].data, fetched[frame].transfer_syntax or syntax
            pieces.append(Piece(row * level.tile_height - area.top,
                                column * level.tile_width - area.left, data, syntax))
        try:
            canvas = compose(pieces, pixels, area.width, area.height, background=True)
            return to_8bit(canvas, pixels)
        except TileDecodeError as error:
            raise DecodeError(f"{slide.series_uid} {level.directory_name}: {error}") from error

    def _cached_tiles(self, slide: Slide, frames: list[FrameRef]) -> dict[FrameRef, bytes]:
        """The tiles among `frames` the tile caches hold (memory, staging, disk) whose
        served bytes are the stored frames (`serves_stored_frames`): a render after
        reading or prefetching a level sends no request. Looked at without claims or
        counts: these are not tile reads."""
        tiles = self.loader.tiles
        syntaxes = self._syntaxes(slide, frames)
        usable = [frame for frame in frames
                  if serves_stored_frames(slide.instances[frame.instance_uid].pixels,
                                          syntaxes.get(frame.instance_uid))]
        held: dict[FrameRef, bytes] = {}
        for frame in usable:
            data = tiles.memory.get(tile_key(slide, frame)) or tiles.staged.get(
                tile_key(slide, frame))
            if data is not None:
                held[frame] = data
        missing = [frame for frame in usable if frame not in held]
        return held | tiles.read_disk(slide, missing)

    def _syntaxes(self, slide: Slide, frames: list[FrameRef]) -> dict[str, str | None]:
        """Each instance's transfer syntax: its metadata's, else the one its frames named
        (Orthanc's metadata has none), recalled from the disk cache after a remount, so
        tiles prefetched to disk serve a render there too."""
        uids = sorted({frame.instance_uid for frame in frames})
        syntaxes: dict[str, str | None] = {uid: slide.instances[uid].transfer_syntax
                                           for uid in uids}
        unknown = [uid for uid, syntax in syntaxes.items() if syntax is None]
        if unknown:
            self.loader.syntaxes.recall(unknown)
            syntaxes.update(self.loader.syntaxes.of(unknown))
        return syntaxes

    def grid_positions(self, slide: Slide, level: Level,
                       grid_key: GridKey) -> dict[tuple[int, int], FrameRef]:
        """(column, row) → frame of one grid of a level (empty when the level has no such
        grid), made once per grid (kept for a few; a rewritten file's slide has its own)."""
        cache_key = (slide.series_uid, slide.revision, level.index, grid_key)
        with self._positions_lock:
            found = self._positions.get(cache_key)
        if found is not None:
            return found
        grid = level.grid(grid_key)
        made = {} if grid is None else {(tile.column, tile.row): tile.frame
                                        for tile in grid.tiles}
        with self._positions_lock:
            self._positions[cache_key] = made
        return made


def _check_inside(region: Region, base: Level) -> None:
    """ValueError for a region with no pixel inside the image."""
    if (region.width < 1 or region.height < 1 or region.x >= base.width
            or region.y >= base.height or region.x + region.width <= 0
            or region.y + region.height <= 0):
        raise ValueError(f"region {tuple(region)} is empty or outside the "
                         f"{base.width}x{base.height} image")


def _area(level: Level, base: Level, region: Region) -> SourceArea:
    """The level pixels under `region` (its part inside the image) and the tiles
    holding them."""
    scale_x, scale_y = level.width / base.width, level.height / base.height
    box = (region.x * scale_x, region.y * scale_y, (region.x + region.width) * scale_x,
           (region.y + region.height) * scale_y)
    left = min(level.width - 1, max(0, math.floor(box[0])))
    top = min(level.height - 1, max(0, math.floor(box[1])))
    right = max(left + 1, min(level.width, math.ceil(box[2] - 1e-9)))
    bottom = max(top + 1, min(level.height, math.ceil(box[3] - 1e-9)))
    columns = range(left // level.tile_width, (right - 1) // level.tile_width + 1)
    rows = range(top // level.tile_height, (bottom - 1) // level.tile_height + 1)
    return SourceArea(level, box, left, top, right - left, bottom - top, columns, rows)


def _first_instance(level: Level, wanted: list[tuple[int, int, FrameRef]]) -> str:
    """The instance whose pixel format the canvas takes (one level, one format)."""
    return wanted[0][2].instance_uid if wanted else level.instance_uids[0]


def _blank(pixels: PixelFormat, width: int, height: int) -> np.ndarray:
    """The 8-bit background of an area no stored tile covers."""
    fill = background_value(pixels, np.dtype(np.uint8))
    shape = (height, width) if pixels.samples_per_pixel == 1 else (height, width, 3)
    return np.full(shape, fill, dtype=np.uint8)


def _resized(canvas: np.ndarray, area: SourceArea, out_width: int, out_height: int) -> np.ndarray:
    """The area's box of the canvas at the output size: cut when it is whole pixels of
    that size, else resized over exactly the box (area averaging, or Lanczos when
    enlarging). A box past the image's edge
    takes the edge pixels repeated, as `vips dzsave` extends an odd-sized level."""
    box = [area.box[0] - area.left, area.box[1] - area.top,
           area.box[2] - area.left, area.box[3] - area.top]
    before = (max(0, math.ceil(-box[1])), max(0, math.ceil(-box[0])))
    after = (max(0, math.ceil(box[3] - 1e-9) - area.height),
             max(0, math.ceil(box[2] - 1e-9) - area.width))
    if any(before) or any(after):
        widths = [(before[0], after[0]), (before[1], after[1])] + [(0, 0)] * (canvas.ndim - 2)
        canvas = np.pad(canvas, widths, mode="edge")
        box = [box[0] + before[1], box[1] + before[0], box[2] + before[1], box[3] + before[0]]
    whole = [round(value) for value in box]
    if (all(abs(value - rounded) < 1e-6 for value, rounded in zip(box, whole, strict=True))
            and (whole[2] - whole[0], whole[3] - whole[1]) == (out_width, out_height)):
        return np.ascontiguousarray(canvas[whole[1]:whole[3], whole[0]:whole[2]])
    shrinking = box[2] - box[0] >= out_width and box[3] - box[1] >= out_height
    image = Image.fromarray(canvas)
    resized = image.resize((out_width, out_height), SHRINK if shrinking else ENLARGE,
                           box=(box[0], box[1], box[2], box[3]))
    return np.asarray(resized)
