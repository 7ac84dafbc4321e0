"""The filesystem's core: nodes by inode number, lookups, listings and attributes.

No FUSE import here (the adapter in `idcfs.fuse.adapter` is thin), and no layout: what
the root holds and what a series directory shows come from views (`idcfs.fs.views`),
composed in `idcfs.mount`. Methods that may block on the network are plain blocking
calls; the adapter runs them in threads. Directories list their children once and keep
them; a failed listing is not kept. Every node's mtime is known when it is listed (its
own, else its directory's), so a stat never waits for anything.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from idcfs.errors import NotFoundError
from idcfs.fs.nodes import DirNode, FileNode, Node

ROOT_INODE = 1
FALLBACK_MTIME_NS = 315_532_800 * 10**9
"""1980-01-01T00:00:00Z: the mtime of what neither its data nor its catalog dates (a
series without any date, the root of a DICOMweb mount): fixed, so every remount and
machine shows the same, and the earliest time a ZIP archive can store."""


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


class Tree:
    """All nodes of one mount, by inode; thread-safe."""

    def __init__(self, root_children: Callable[[], list[Node]],
                 mtime_ns: int | None = None) -> None:
        self.mtime_ns = FALLBACK_MTIME_NS if mtime_ns is None else mtime_ns
        self._nodes: dict[int, Node] = {}
        self._lock = threading.Lock()
        root = DirNode("", root_children)
        root.mtime_ns = self.mtime_ns
        self.adopt(root)
        assert root.inode == ROOT_INODE

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

    def resolve(self, path: str) -> Node:
        """The node at `path`, names separated by "/" from the root (as in the mount);
        NotFoundError when one is absent (".." included: the tree has no parents),
        NotADirectoryError when one on the way is a file; may block (lists directories
        on the way, as lookups would)."""
        node = self.node(ROOT_INODE)
        for name in path.split("/"):
            if name in ("", "."):
                continue
            node = self.lookup(node.inode, name)
        return node

    def attributes(self, node: Node) -> Attributes:
        """What stat shows; a node's mtime is its own, else (a node nobody listed: not
        in the tree) the root's."""
        mtime = node.mtime_ns if node.mtime_ns is not None else self.mtime_ns
        if isinstance(node, FileNode):
            size, exact = node.size()
            return Attributes(node.inode, False, size, exact, mtime, node.direct_io)
        return Attributes(node.inode, True, 0, True, mtime)

    def adopt(self, node: Node) -> None:
        with self._lock:
            node.inode = len(self._nodes) + ROOT_INODE
            self._nodes[node.inode] = node

    def _directory(self, inode: int) -> DirNode:
        node = self.node(inode)
        if not isinstance(node, DirNode):
            raise NotADirectoryError(inode)
        return node
