"""The catalog's shape: `collections/<collection>/<study>/<series>/` and
`studies/<study>/<series>/`, plus whatever extra files the root holds (statistics).

Entering a series directory loads its slide (one metadata call, kept by the slide
store) and lists the nodes each series view gives for it, in order.
"""

from __future__ import annotations

from collections.abc import Sequence

from idcfs.catalog.base import Catalog, SeriesEntry
from idcfs.fetch.slides import SlideStore
from idcfs.fs.nodes import DirNode, Node, StaticFile, json_bytes
from idcfs.fs.views import SeriesView


class CatalogView:
    """Lists the root, collections, studies and series of a catalog."""

    def __init__(
        self,
        catalog: Catalog,
        slides: SlideStore,
        series_views: Sequence[SeriesView],
        root_files: Sequence[Node] = (),
    ) -> None:
        self.catalog = catalog
        self.slides = slides
        self.series_views = list(series_views)
        self.root_files = list(root_files)

    def root_children(self) -> list[Node]:
        children: list[Node] = []
        if self.catalog.has_collections():
            children.append(DirNode("collections", self._collections))
        children.append(DirNode("studies", lambda: self._studies(None)))
        return children + self.root_files

    def _collections(self) -> list[Node]:
        return [
            DirNode(collection_id, lambda c=collection_id: self._collection(c))
            for collection_id in self.catalog.collections()
        ]

    def _collection(self, collection_id: str) -> list[Node]:
        info = self.catalog.collection_info(collection_id) or {}
        return [StaticFile("collection.json", json_bytes(info)), *self._studies(collection_id)]

    def _studies(self, collection_id: str | None) -> list[Node]:
        return [
            DirNode(study_uid, lambda s=study_uid: self._series_list(s, collection_id))
            for study_uid in self.catalog.studies(collection_id)
        ]

    def _series_list(self, study_uid: str, collection_id: str | None) -> list[Node]:
        return [
            DirNode(entry.series_uid, lambda e=entry: self._series(e))
            for entry in self.catalog.series(study_uid, collection_id)
        ]

    def _series(self, entry: SeriesEntry) -> list[Node]:
        slide = self.slides.get(entry.study_uid, entry.series_uid)
        return [node for view in self.series_views for node in view.series_nodes(slide, entry)]
