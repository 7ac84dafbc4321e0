"""Views: what the directories of a mount show, built from nodes (`idcfs.fs.nodes`).

- `catalog.CatalogView`: the root (`collections/`, `studies/`), studies and series
  directories from the catalog; a series directory holds what every series view gives.
- `dicom_levels.DicomLevelsView`: a series as `slide.json`, label/overview/thumbnail
  and one directory per pyramid level (per focal plane and optical path when there are
  several), one JPEG per stored tile.

A new layout (DeepZoom) is a new `SeriesView` in a module of its own, added to the list
`idcfs.mount` gives the catalog view. Files beside the tiles of a level directory
(`tissue.txt`: `tissue.TissueView`) come from a `LevelFiles` the DICOM-levels view is given.
"""

from __future__ import annotations

from typing import Protocol

from idcfs.catalog.base import SeriesEntry
from idcfs.fs.nodes import Node
from idcfs.fs.views.tile_names import TileNames
from idcfs.slide.model import Level, Slide, TileGrid


class SeriesView(Protocol):
    """Nodes a series directory shows for one slide."""

    def series_nodes(self, slide: Slide, entry: SeriesEntry) -> list[Node]: ...


class LevelFiles(Protocol):
    """Files beside the tiles of a level directory, or of a plane/path directory in it.

    `grids` are those the directory shows: its own tiles (one grid, `in_subdirectories`
    False) or one subdirectory each (`level-N/` of a slide with several planes or paths,
    True); `names` names tiles as the listing does (`--tile-name`)."""

    def level_files(self, slide: Slide, level: Level, grids: list[TileGrid],
                    in_subdirectories: bool, names: TileNames) -> list[Node]: ...
