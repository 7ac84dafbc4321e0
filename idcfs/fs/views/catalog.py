"""The catalog's shape: `collections/<collection>/<study>/<series>/` and
`studies/<study>/<series>/`, plus whatever extra files the root holds (statistics).

Entering a series directory loads its slide (one metadata call, kept by the slide
store) and lists the nodes each series view gives for it, in order.

Times (docs/SEMANTICS.md): `collections/`, `studies/`, collections and studies show the
catalog's revision when it is known at their listing (else the root's); a series
directory the series' time as the catalog knows it (else its study's); everything in
it the series' time from its metadata (else the directory's). Each is fixed when the
node is made, before anything is fetched, and never changes.
"""

from __future__ import annotations

from collections.abc import Sequence

from idcfs.catalog.base import Catalog, SeriesEntry, revision_ns
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

    def revision_ns(self) -> int | None:
        """The catalog's revision time, if it can tell now (the root's mtime)."""
        return revision_ns(self.catalog)

    def root_children(self) -> list[Node]:
        children: list[Node] = []
        if self.catalog.has_collections():
            children.append(DirNode("collections", self._collections))
        children.append(DirNode("studies", lambda: self._studies(None)))
        return self._dated(children) + self.root_files

    def _dated(self, directories: list[Node]) -> list[Node]:
        """Catalog directories, given the catalog's revision time when it is known."""
        revised = revision_ns(self.catalog)
        for directory in directories:
            directory.mtime_ns = revised
        return directories

    def _collections(self) -> list[Node]:
        return self._dated([
            DirNode(collection_id, lambda c=collection_id: self._collection(c))
            for collection_id in self.catalog.collections()
        ])

    def _collection(self, collection_id: str) -> list[Node]:
        info = self.catalog.collection_info(collection_id) or {}
        return [StaticFile("collection.json", json_bytes(info)), *self._studies(collection_id)]

    def _studies(self, collection_id: str | None) -> list[Node]:
        return self._dated([
            DirNode(study_uid, lambda s=study_uid: self._series_list(s, collection_id))
            for study_uid in self.catalog.studies(collection_id)
        ])

    def _series_list(self, study_uid: str, collection_id: str | None) -> list[Node]:
        directories: list[Node] = []
        for entry in self.catalog.series(study_uid, collection_id):
            directory = DirNode(entry.series_uid, lambda e=entry: self._series(e))
            directory.mtime_ns = entry.made_ns()
            directories.append(directory)
        return directories

    def _series(self, entry: SeriesEntry) -> list[Node]:
        slide = self.slides.get(entry.study_uid, entry.series_uid)
        nodes = [node for view in self.series_views for node in view.series_nodes(slide, entry)]
        for node in nodes:
            if node.mtime_ns is None:
                node.mtime_ns = slide.time_ns
        return nodes
