"""The filesystem's core: directories and files as nodes with inode numbers.

No FUSE import here (the adapter in `idcfs.fuse.adapter` is thin). Methods that may
block on the network are plain blocking calls; the adapter runs them in threads.
Directories list their children once and keep them; a failed listing is not kept.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from idcfs.catalog.base import Catalog, SeriesEntry
from idcfs.errors import NotFoundError
from idcfs.fetch.loader import TileLoader
from idcfs.fetch.readahead import ReadAhead
from idcfs.fetch.slides import SlideStore
from idcfs.slide.model import AssociatedImage, FrameRef, Level, Slide, TileGrid

ROOT_INODE = 1
STATS_FILE = ".idcfs-stats.json"


@dataclass(frozen=True)
class Attributes:
    """What stat shows of a node. `size_exact` is False for a tile not fetched yet;
    `volatile` is True for a file whose size changes (never cache its attributes)."""

    inode: int
    is_dir: bool
    size: int
    size_exact: bool
    mtime_ns: int
    volatile: bool = False


class Node:
    """A directory or a file in the tree."""

    is_dir = False

    def __init__(self, name: str) -> None:
        self.name = name
        self.inode = 0  # set by Tree.adopt


class FileNode(Node):
    """A regular file whose bytes may have to be fetched."""

    direct_io = False  # True for a file whose content changes (no page cache)
    filled = False  # the kernel's page cache was given the content: an open needs none

    def size(self) -> tuple[int, bool]:
        """(size in bytes, whether it is exact)."""
        raise NotImplementedError

    def content(self) -> bytes:
        """The whole file; may block on the network."""
        raise NotImplementedError

    def cached_content(self) -> bytes | None:
        """The whole file when it is at hand without blocking, else None."""
        return None

    def note_open(self) -> None:
        """Called on every open, before the content is asked for (read-ahead hook)."""

    def pending(self) -> Future[bytes] | None:
        """The future of the content while it is being fetched, if it is."""
        return None


class StaticFile(FileNode):
    """A file whose bytes are known when it is created (slide.json, collection.json)."""

    def __init__(self, name: str, data: bytes) -> None:
        super().__init__(name)
        self.data = data

    def size(self) -> tuple[int, bool]:
        return len(self.data), True

    def content(self) -> bytes:
        return self.data

    def cached_content(self) -> bytes | None:
        return self.data


class LiveFile(FileNode):
    """A small file computed afresh at every open (the statistics file)."""

    direct_io = True

    def __init__(self, name: str, render: Callable[[], bytes]) -> None:
        super().__init__(name)
        self.render = render

    def size(self) -> tuple[int, bool]:
        return len(self.render()), False

    def content(self) -> bytes:
        return self.render()

    def cached_content(self) -> bytes | None:
        return self.render()


class FetchedFile(FileNode):
    """A file made from frames: a placeholder size until first fetched, then exact."""

    def __init__(self, name: str, placeholder: int) -> None:
        super().__init__(name)
        self.placeholder = placeholder
        self.exact_size: int | None = None

    def size(self) -> tuple[int, bool]:
        if self.exact_size is None:
            return self.placeholder, False
        return self.exact_size, True

    def content(self) -> bytes:
        data = self.fetch()
        self.exact_size = len(data)
        return data

    def cached_content(self) -> bytes | None:
        data = self.peek()
        if data is not None:
            self.exact_size = len(data)
        return data

    def fetch(self) -> bytes:
        raise NotImplementedError

    def peek(self) -> bytes | None:
        raise NotImplementedError


class TileFile(FetchedFile):
    """One tile of a level: one frame of an instance, at `index` in its grid's order."""

    def __init__(
        self, tree: Tree, slide: Slide, grid: TileGrid, index: int, placeholder: int
    ) -> None:
        self.tile = grid.tiles[index]
        super().__init__(self.tile.file_name, placeholder)
        self.slide = slide
        self.grid = grid
        self.index = index
        self.loader = tree.loader
        self.readahead = tree.readahead

    def note_open(self) -> None:
        if self.readahead is not None:
            self.readahead.on_open(self.slide, self.grid.tiles, self.index)

    def fetch(self) -> bytes:
        return self.loader.tile(self.slide, self.tile.frame)

    def pending(self) -> Future[bytes] | None:
        return self.loader.in_flight(self.slide, self.tile.frame)

    def peek(self) -> bytes | None:
        return self.loader.cached(self.slide, self.tile.frame)

    def read_ahead_unread(self) -> bool:
        """Whether read-ahead fetched this tile and it was not opened since."""
        return self.loader.is_staged(self.slide, self.tile.frame)


class AssociatedFile(FetchedFile):
    """label.jpg, overview.jpg or thumbnail.jpg."""

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


class DirNode(Node):
    """A directory whose children are computed on first use."""

    is_dir = True

    def __init__(self, name: str, list_children: Callable[[], list[Node]]) -> None:
        super().__init__(name)
        self._list_children = list_children
        self._children: dict[str, Node] | None = None
        self._lock = threading.Lock()

    def loaded_children(self) -> dict[str, Node] | None:
        return self._children

    def load(self, adopt: Callable[[Node], None]) -> dict[str, Node]:
        with self._lock:
            if self._children is None:
                nodes = self._list_children()
                for node in nodes:
                    adopt(node)
                self._children = {node.name: node for node in nodes}
            return self._children


class Tree:
    """All nodes of one mount, by inode; thread-safe."""

    def __init__(
        self,
        catalog: Catalog,
        slides: SlideStore,
        loader: TileLoader,
        readahead: ReadAhead | None = None,
        placeholder_size: Callable[[int, int, int], int] | None = None,
    ) -> None:
        self.catalog = catalog
        self.slides = slides
        self.loader = loader
        self.readahead = readahead
        self.mtime_ns = time.time_ns()
        self._placeholder = placeholder_size or default_placeholder
        self._nodes: dict[int, Node] = {}
        self._tile_files: dict[tuple[str, FrameRef], list[TileFile]] = {}
        self._reporters: dict[str, Callable[[], dict[str, Any]]] = {}
        self._lock = threading.Lock()
        root = DirNode("", self._root_children)
        self.adopt(root)
        assert root.inode == ROOT_INODE

    # -- queries used by the adapter -------------------------------------------------

    def node(self, inode: int) -> Node:
        try:
            return self._nodes[inode]
        except KeyError:
            raise NotFoundError(f"no inode {inode}") from None

    def children(self, inode: int) -> list[Node]:
        """The entries of a directory in listing order; may block."""
        directory = self._directory(inode)
        return list(directory.load(self.adopt).values())

    def lookup(self, parent_inode: int, name: str) -> Node:
        """A child by name; NotFoundError when absent; may block."""
        found = self._directory(parent_inode).load(self.adopt).get(name)
        if found is None:
            raise NotFoundError(name)
        return found

    def lookup_cached(self, parent_inode: int, name: str) -> Node | None:
        """A child by name when the directory is already listed; never blocks."""
        children = self._directory(parent_inode).loaded_children()
        if children is None:
            return None
        found = children.get(name)
        if found is None:
            raise NotFoundError(name)
        return found

    def tile_files(self, slide: Slide, frame: FrameRef) -> list[TileFile]:
        """The files of a tile in the directories listed so far (a series can be listed
        under collections/ and under studies/)."""
        return self._tile_files.get((slide.series_uid, frame), [])

    def add_statistics(self, key: str, report: Callable[[], dict[str, Any]]) -> None:
        """Show `report()` under `key` in the statistics file."""
        self._reporters[key] = report

    def attributes(self, node: Node) -> Attributes:
        if isinstance(node, FileNode):
            size, exact = node.size()
            return Attributes(node.inode, False, size, exact, self.mtime_ns, node.direct_io)
        return Attributes(node.inode, True, 0, True, self.mtime_ns)

    def adopt(self, node: Node) -> None:
        with self._lock:
            node.inode = len(self._nodes) + ROOT_INODE
            self._nodes[node.inode] = node

    def _directory(self, inode: int) -> DirNode:
        node = self.node(inode)
        if not isinstance(node, DirNode):
            raise NotADirectoryError(inode)
        return node

    # -- the tree's shape ------------------------------------------------------------

    def _root_children(self) -> list[Node]:
        children: list[Node] = []
        if self.catalog.has_collections():
            children.append(DirNode("collections", self._collections))
        children.append(DirNode("studies", lambda: self._studies(None)))
        children.append(LiveFile(STATS_FILE, lambda: json_bytes(self.statistics())))
        return children

    def statistics(self) -> dict[str, Any]:
        """Counters of this mount (the hidden /.idcfs-stats.json)."""
        loader = self.loader
        return {
            "requests_sent": loader.client.requests_sent,
            "frames_fetched": loader.frames_fetched,
            "frames_per_request": dict(sorted(loader.frames_per_request.items())),
            "memory_cache": {"hits": loader.cache.hits, "misses": loader.cache.misses,
                             "bytes": loader.cache.current_bytes,
                             "max_bytes": loader.cache.max_bytes},
            "readahead_staged_bytes": loader.staged.current_bytes,
            "readahead_scheduled_tiles": self.readahead.scheduled_tiles if self.readahead else 0,
            "disk_cache_hits": loader.disk_hits,
            **{key: report() for key, report in self._reporters.items()},
        }

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
        description = {**dict(entry.fields), **slide.describe()}
        nodes: list[Node] = [StaticFile("slide.json", json_bytes(description))]
        for image in slide.associated:
            info = slide.instances[image.instance_uid]
            placeholder = self._placeholder(info.total_width, info.total_height, 3)
            nodes.append(AssociatedFile(slide, image, self.loader, placeholder))
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
        placeholder = self._placeholder(level.tile_width, level.tile_height, 3)
        count = len(grid.tiles)
        nodes = [TileFile(self, slide, grid, index, placeholder) for index in range(count)]
        for node in nodes:  # tiles in the disk cache: their size is known before an open
            node.exact_size = self.loader.known_size(slide, node.tile.frame)
            self._tile_files.setdefault((slide.series_uid, node.tile.frame), []).append(node)
        return nodes


def default_placeholder(width: int, height: int, samples: int) -> int:
    """The size shown for a file not fetched yet: its uncompressed size, an upper bound
    for practically every JPEG of it, so a tool that trusts a stale size sees a short
    read (an error) rather than silently missing bytes."""
    return width * height * samples


def json_bytes(value: dict[str, Any]) -> bytes:
    return (json.dumps(value, indent=2, sort_keys=True, default=str) + "\n").encode()
