"""A series as a IIIF image service (Image API 3.0, level 1): `iiif/info.json`, and any
`iiif/{region}/{size}/0/default.jpg` answered on lookup (never listed: the names are
countless), rendered by the shared region reader (`idcfs.fetch.regions`).

- region: `full`, `square` (the centred square of the shorter side) or `x,y,w,h` in
  full-resolution pixels, clipped at the image's edge as the spec says; a region of
  zero width or height, or one that starts outside the image, is a name that cannot
  exist (the server's 400): ENOENT, as is any other syntax.
- size: `max` (the clipped region's own size), `w,`, `,h` (the other side keeps the
  aspect ratio, rounded, at least 1) or `w,h`; larger than the region (upscaling, `^`)
  or zero is ENOENT.
- rotation `0`, quality `default`, format `jpg`: anything else is ENOENT.

A slide with several focal planes or optical paths gets one service per combination of
its base level: `iiif-plane-<i>_path-<id>/`. Lookups parse names only; a region is
read (from the smallest stored level fine enough) when its default.jpg is opened, and
one larger than the reader's bound is refused there (EIO and a log line:
`RegionTooLarge`). info.json's `id` is `--iiif-base-url` + the service's path under
`studies/` (which every mount has; a series under `collections/` is the same image),
else that path alone, root-relative (docs/SEMANTICS.md, "IIIF").
"""

from __future__ import annotations

import re
from urllib.parse import quote

from idcfs.catalog.base import SeriesEntry
from idcfs.fetch.regions import GridKey, Region, RegionReader
from idcfs.fs.nodes import DirNode, Node, StaticFile, default_placeholder, json_bytes
from idcfs.fs.views.rendered import RenderedFile
from idcfs.slide.model import Level, Slide, TileGrid

CONTEXT = "http://iiif.io/api/image/3/context.json"
PROTOCOL = "http://iiif.io/api/image"
FEATURES = ["regionByPx", "regionSquare", "sizeByW", "sizeByH", "sizeByWh"]
ROTATION, IMAGE_FILE = "0", "default.jpg"
TOLERANCE = 0.01  # a stored downsample within 1 % of a power of two is that power
BEYOND_STORED = 4  # scale factors go this far past the coarsest stored level (16 tiles)
_BY_PIXELS = re.compile(r"(\d+),(\d+),(\d+),(\d+)")
_BY_SIDES = re.compile(r"(\d*),(\d*)")


def parse_region(text: str, width: int, height: int) -> Region | None:
    """The region a name asks of a `width` x `height` image, clipped to it; None for a
    name that is no region of it."""
    if text == "full":
        return Region(0, 0, width, height)
    if text == "square":
        side = min(width, height)
        return Region((width - side) // 2, (height - side) // 2, side, side)
    match = _BY_PIXELS.fullmatch(text)
    if match is None:
        return None
    x, y, w, h = (int(value) for value in match.groups())
    if w == 0 or h == 0 or x >= width or y >= height:
        return None
    return Region(x, y, min(w, width - x), min(h, height - y))


def parse_size(text: str, region: Region) -> tuple[int, int] | None:
    """The output size a name asks for the (clipped) region; None for a name that is no
    size of it (bad syntax, zero, or larger than the region: no upscaling)."""
    if text == "max":
        return region.width, region.height
    match = _BY_SIDES.fullmatch(text)
    if match is None or match.group(0) == ",":
        return None
    width_text, height_text = match.groups()
    if width_text and height_text:
        width, height = int(width_text), int(height_text)
    elif width_text:
        width = int(width_text)
        height = _kept_ratio(region.height, width, region.width)
    else:
        height = int(height_text)
        width = _kept_ratio(region.width, height, region.height)
    if not (1 <= width <= region.width and 1 <= height <= region.height):
        return None
    return width, height


def _kept_ratio(other: int, given: int, side: int) -> int:
    """`other * given / side` rounded half up, at least 1 (integers: exact)."""
    return max(1, (2 * other * given + side) // (2 * side))


def scale_factors(levels: list[Level], tile_width: int, tile_height: int) -> list[int]:
    """Every power of two from 1 up to the first at which the image fits in one tile,
    but at most BEYOND_STORED times the coarsest stored level's (its downsample rounded
    down to a power of two): OpenSeadragon asks for every power of two up to the
    largest factor, so the list has no gaps, and a tile past the coarsest stored level
    reads at most BEYOND_STORED² of its tiles."""
    base = levels[0]
    coarsest = max(level.downsample for level in levels)
    ceiling = 1 << int(coarsest * (1 + TOLERANCE)).bit_length() - 1
    factors = [1]
    while (factors[-1] < ceiling * BEYOND_STORED
           and (-(-base.width // factors[-1]) > tile_width
                or -(-base.height // factors[-1]) > tile_height)):
        factors.append(factors[-1] * 2)
    return factors


def info_document(service_id: str, levels: list[Level]) -> dict[str, object]:
    """info.json of the image whose stored levels are `levels` (the base first)."""
    base = levels[0]
    tiles: dict[str, object] = {"width": base.tile_width,
                                "scaleFactors": scale_factors(levels, base.tile_width,
                                                              base.tile_height)}
    if base.tile_height != base.tile_width:
        tiles["height"] = base.tile_height
    return {
        "@context": CONTEXT,
        "id": service_id,
        "type": "ImageService3",
        "protocol": PROTOCOL,
        "profile": "level1",
        "width": base.width,
        "height": base.height,
        "tiles": [tiles],
        "extraFeatures": FEATURES,
    }


def check_base_url(text: str) -> str:
    """`--iiif-base-url`: an http(s) URL with a host, without query or fragment (ids
    are built by appending paths); ValueError saying why not."""
    if not re.match(r"https?://[^/\s?#]+(/[^\s?#]*)?$", text, re.IGNORECASE):
        raise ValueError(f"bad --iiif-base-url {text!r}: an http:// or https:// URL with "
                         "a host and no query, e.g. http://localhost:8000")
    return text.rstrip("/")


class IiifView:
    """Adds `iiif/` (or one `iiif-plane-<i>_path-<id>/` per plane/path) to a series."""

    def __init__(self, reader: RegionReader, base_url: str | None = None) -> None:
        self.reader = reader
        self.base_url = base_url or ""

    def series_nodes(self, slide: Slide, entry: SeriesEntry) -> list[Node]:
        if not slide.levels:
            return []
        return [self._service(slide, grid) for grid in slide.levels[0].grids]

    def _service(self, slide: Slide, grid: TileGrid) -> DirNode:
        name = f"iiif-{grid.directory_name}" if slide.has_plane_directories else "iiif"
        grid_key = grid.key
        levels = slide.levels_with(grid_key)
        path = "/".join(quote(part, safe="") for part in
                        ("studies", slide.study_uid, slide.series_uid, name))
        info = StaticFile("info.json", json_bytes(info_document(f"{self.base_url}/{path}",
                                                                levels)))
        base = slide.levels[0]
        return DirNode(name, lambda: [info],
                       lambda text: self._region(slide, grid_key, base, text))

    def _region(self, slide: Slide, grid_key: GridKey, base: Level, text: str) -> Node | None:
        region = parse_region(text, base.width, base.height)
        if region is None:
            return None
        return DirNode(text, list, lambda size: self._size(slide, grid_key, region, size))

    def _size(self, slide: Slide, grid_key: GridKey, region: Region, text: str) -> Node | None:
        size = parse_size(text, region)
        if size is None:
            return None
        image = RenderedFile(IMAGE_FILE, default_placeholder(size[0], size[1], 3), self.reader,
                             slide, grid_key, region, size, "iiif")
        return DirNode(text, lambda: [DirNode(ROTATION, lambda: [image])])
