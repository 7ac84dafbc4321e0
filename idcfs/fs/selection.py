"""Which stored tiles paths in a mount stand for (`idcfs prefetch PATH...`).

Each path is resolved through the tree as the kernel's lookups would resolve it
(directories on the way are listed, a series' metadata loaded once), then walked in
listing order: every file below it that serves a stored frame as it is
(`FileNode.stored_frame`: tiles, and labels, overviews, thumbnails stored as one frame)
is wanted once, however many paths or views lead to it. `level` keeps only the tiles of
that pyramid level (`level-N/`). A path that does not exist is NotFoundError before
anything is walked; a directory that cannot be listed (a server failure, never turned
into "not found") is a failure of its path, and the walk goes on with the others.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from idcfs.errors import IdcfsError, NotFoundError
from idcfs.fetch.prefetch import Failure, WantedTile
from idcfs.fs.nodes import DirNode, FileNode, Node
from idcfs.fs.tree import Tree
from idcfs.slide.model import FrameRef, Slide

Listed = Callable[[int], None]  # told how many tiles were found, after each directory


@dataclass
class Selection:
    """The tiles wanted, in walking order, and the paths that could not be walked."""

    tiles: list[WantedTile] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    _seen: set[tuple[str, FrameRef]] = field(default_factory=set)
    _levels: dict[str, dict[str, int]] = field(default_factory=dict)

    def add(self, slide: Slide, frame: FrameRef, path: str, level: int | None) -> None:
        key = (slide.series_uid, frame)
        if key in self._seen or (level is not None and self._level_of(slide, frame) != level):
            return
        self._seen.add(key)
        self.tiles.append(WantedTile(slide, frame, path))

    def _level_of(self, slide: Slide, frame: FrameRef) -> int | None:
        levels = self._levels.get(slide.series_uid)
        if levels is None:
            levels = self._levels[slide.series_uid] = {
                tile.frame.instance_uid: level.index
                for level in slide.levels for grid in level.grids for tile in grid.tiles[:1]
            }
        return levels.get(frame.instance_uid)


def select_tiles(
    tree: Tree,
    paths: Sequence[str],
    level: int | None = None,
    stop: threading.Event | None = None,
    on_listed: Listed | None = None,
) -> Selection:
    """The stored tiles under `paths` (relative to the mount's root); may block.
    NotFoundError names a path that is not in the mount."""
    starts: list[tuple[Node, str]] = []
    selection = Selection()
    for path in paths:
        clean = "/".join(name for name in path.split("/") if name not in ("", "."))
        try:
            starts.append((tree.resolve(clean), clean))
        except (NotFoundError, NotADirectoryError):
            raise NotFoundError(f"{clean}: no such file or directory in the mount") from None
        except IdcfsError as error:
            selection.failures.append(Failure(clean, f"cannot be looked up: {error}"))
    for node, path in starts:
        _walk(tree, node, path, selection, level, stop or threading.Event(), on_listed)
    return selection


def _walk(tree: Tree, start: Node, path: str, selection: Selection, level: int | None,
          stop: threading.Event, on_listed: Listed | None) -> None:
    """Depth first, in listing order (a series: its files, then level-0, level-1...)."""
    stack = [(start, path)]
    while stack and not stop.is_set():
        node, where = stack.pop()
        if isinstance(node, FileNode):
            stored = node.stored_frame()
            if stored is not None:
                selection.add(*stored, where, level)
            continue
        if not isinstance(node, DirNode):
            continue
        try:
            children = tree.children(node.inode)
        except IdcfsError as error:
            selection.failures.append(Failure(where or ".", f"cannot be listed: {error}"))
            continue
        stack += [(child, f"{where}/{child.name}" if where else child.name)
                  for child in reversed(children)]
        if on_listed is not None:
            on_listed(len(selection.tiles))
