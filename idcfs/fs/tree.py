"""The filesystem's core: nodes by inode number, lookups, listings and attributes.

No FUSE import here (the adapter in `idcfs.fuse.adapter` is thin), and no layout: what
the root holds and what a series directory shows come from views (`idcfs.fs.views`),
composed in `idcfs.mount`. Methods that may block on the network are plain blocking
calls; the adapter runs them in threads. Directories list their children once and keep
them; a failed listing is not kept. Every node's mtime is known when it is listed (its
own, else its directory's), so a stat never waits for anything.

Names a directory does not list but answers (`DirNode.answer`: IIIF requests) become
nodes on lookup, adopted like listed ones; the tree counts the kernel's lookups of each
and drops it (with what it listed below it) when the kernel forgets it, so a viewer
asking for many regions does not grow the tree without bound. Listed nodes are kept for
the mount's life, as before. Inode numbers are never reused.
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
        self._next_inode = ROOT_INODE
        self._answered: dict[tuple[int, str], Node] = {}  # (directory's inode, name)
        self._answered_as: dict[int, tuple[int, str]] = {}  # inode -> its key above
        self._lookups: dict[int, int] = {}  # the kernel's lookup count of answered nodes
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

    def lookup(self, parent_inode: int, name: str, counted: bool = True) -> Node:
        """A child by name, listed or answered; NotFoundError when absent; may block.
        `counted`: the kernel's lookup (it will forget it), not the tree's own walk."""
        directory = self._directory(parent_inode)
        found = directory.load(self.adopt).get(name)
        if found is None:
            found = self._answer(directory, name, counted)
        if found is None:
            raise NotFoundError(name)
        return found

    def lookup_cached(self, parent_inode: int, name: str) -> Node | None:
        """The kernel's lookup of a child by name when the directory is already listed;
        never blocks (a name answered is parsed, not fetched)."""
        directory = self._directory(parent_inode)
        children = directory.loaded_children()
        if children is None:
            return None
        found = children.get(name)
        if found is None:
            found = self._answer(directory, name, counted=True)
        if found is None:
            raise NotFoundError(name)
        return found

    def forget(self, inode_list: list[tuple[int, int]]) -> None:
        """The kernel forgets inodes: an answered node whose count falls to zero is
        dropped, with the nodes listed below it (the kernel forgets children before
        their directory). Listed nodes are kept. Never raises."""
        with self._lock:
            for inode, count in inode_list:
                left = self._lookups.get(inode)
                if left is None:
                    continue
                if left > count:
                    self._lookups[inode] = left - count
                else:
                    self._drop(inode)

    def answered_count(self) -> int:
        """How many answered nodes the tree holds (kept while the kernel knows them)."""
        with self._lock:
            return len(self._answered)

    def _answer(self, directory: DirNode, name: str, counted: bool) -> Node | None:
        """The node `directory` answers for a name it did not list, the same one while
        the kernel knows it; None when it refuses the name."""
        if directory.answer is None:
            return None
        key = (directory.inode, name)
        with self._lock:
            found = self._answered.get(key)
            if found is not None:
                self._count(found, counted)
                return found
        made = directory.answer(name)
        if made is None:
            return None
        if made.mtime_ns is None:
            made.mtime_ns = directory.mtime_ns
        with self._lock:
            found = self._answered.setdefault(key, made)
            if found is made:
                self._adopt_locked(made)
                self._answered_as[made.inode] = key
                self._lookups[made.inode] = 0
            self._count(found, counted)
        return found

    def _count(self, node: Node, counted: bool) -> None:
        """One more kernel lookup of an answered node (under the lock)."""
        if counted:
            self._lookups[node.inode] += 1

    def _drop(self, inode: int) -> None:
        """Forget an answered node and what it listed (under the lock)."""
        node = self._nodes.pop(inode, None)
        self._lookups.pop(inode, None)
        key = self._answered_as.pop(inode, None)
        if key is not None:
            self._answered.pop(key, None)
        pending = [node] if isinstance(node, DirNode) else []
        while pending:
            listed = pending.pop().loaded_children() or {}
            for child in listed.values():
                self._nodes.pop(child.inode, None)
                if isinstance(child, DirNode):
                    pending.append(child)

    def resolve(self, path: str) -> Node:
        """The node at `path`, names separated by "/" from the root (as in the mount);
        NotFoundError when one is absent (".." included: the tree has no parents),
        NotADirectoryError when one on the way is a file; may block (lists directories
        on the way, as lookups would)."""
        node = self.node(ROOT_INODE)
        for name in path.split("/"):
            if name in ("", "."):
                continue
            node = self.lookup(node.inode, name, counted=False)
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
            self._adopt_locked(node)

    def _adopt_locked(self, node: Node) -> None:
        node.inode = self._next_inode
        self._next_inode += 1
        self._nodes[node.inode] = node

    def _directory(self, inode: int) -> DirNode:
        node = self.node(inode)
        if not isinstance(node, DirNode):
            raise NotADirectoryError(inode)
        return node
