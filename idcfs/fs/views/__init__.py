"""Views: what the directories of a mount show, built from nodes (`idcfs.fs.nodes`).

- `catalog.CatalogView`: the root (`collections/`, `studies/`), studies and series
  directories from the catalog; a series directory holds what every series view gives.
- `dicom_levels.DicomLevelsView`: a series as `slide.json`, label/overview/thumbnail
  and one directory per pyramid level (per focal plane and optical path when there are
  several), one JPEG per stored tile.

A new layout (DeepZoom) is a new `SeriesView` in a module of its own, added to the list
`idcfs.mount` gives the catalog view.
"""

from __future__ import annotations

from typing import Protocol

from idcfs.catalog.base import SeriesEntry
from idcfs.fs.nodes import Node
from idcfs.slide.model import Slide


class SeriesView(Protocol):
    """Nodes a series directory shows for one slide."""

    def series_nodes(self, slide: Slide, entry: SeriesEntry) -> list[Node]: ...
