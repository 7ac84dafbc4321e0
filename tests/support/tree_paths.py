"""Walking a `Tree` (no FUSE) by paths, for unit tests of views."""

from __future__ import annotations

from idcfs.fs.nodes import FileNode, Node
from idcfs.fs.tree import ROOT_INODE, Tree


class PathWalk:
    """`node`, `names` and `file` by path from the root of `self.tree`, as lookups and
    listings through the kernel would reach them."""

    tree: Tree

    def node(self, path: str) -> Node:
        node = self.tree.node(ROOT_INODE)
        for name in filter(None, path.split("/")):
            node = self.tree.lookup(node.inode, name)
        return node

    def names(self, path: str) -> list[str]:
        return [child.name for child in self.tree.children(self.node(path).inode)]

    def file(self, path: str) -> FileNode:
        node = self.node(path)
        assert isinstance(node, FileNode)
        return node
