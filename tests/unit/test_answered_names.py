"""Names a directory answers without listing them (`DirNode.answer`): found on lookup,
refused as ENOENT, the same node while the kernel knows it, dropped with what it
listed when the kernel forgets it, and never a reused inode number."""

from __future__ import annotations

import pytest

from idcfs.errors import NotFoundError
from idcfs.fs.nodes import DirNode, Node, StaticFile
from idcfs.fs.tree import ROOT_INODE, Tree


def numbers(name: str) -> Node | None:
    """Answers names that are whole numbers: a directory listing `n.txt`."""
    if not name.isdigit():
        return None
    return DirNode(name, lambda: [StaticFile(f"{name}.txt", name.encode())])


def tree_with_answers() -> tuple[Tree, int]:
    tree = Tree(lambda: [DirNode("answers", lambda: [StaticFile("listed", b"x")], numbers)])
    return tree, tree.lookup(ROOT_INODE, "answers").inode


def test_an_answered_name_is_found_and_a_refused_one_is_enoent() -> None:
    tree, answers = tree_with_answers()
    assert [node.name for node in tree.children(answers)] == ["listed"]  # never listed
    found = tree.lookup(answers, "42")
    assert found.is_dir and tree.node(found.inode) is found
    assert tree.lookup_cached(answers, "42") is found
    assert [node.name for node in tree.children(found.inode)] == ["42.txt"]
    with pytest.raises(NotFoundError):
        tree.lookup(answers, "forty-two")
    with pytest.raises(NotFoundError):
        tree.lookup_cached(answers, "forty-two")
    with pytest.raises(NotFoundError):  # a directory without answers refuses any name
        tree.lookup(ROOT_INODE, "42")


def test_forget_drops_an_answered_node_and_its_listing_when_the_count_reaches_zero() -> None:
    tree, answers = tree_with_answers()
    first = tree.lookup(answers, "7")
    assert tree.lookup(answers, "7") is first  # looked up twice by the kernel
    listed = tree.lookup(first.inode, "7.txt")
    tree.forget([(listed.inode, 1)])  # a listed node: kept
    assert tree.node(listed.inode) is listed
    tree.forget([(first.inode, 1)])
    assert tree.node(first.inode) is first and tree.answered_count() == 1
    tree.forget([(first.inode, 1)])
    assert tree.answered_count() == 0
    for gone in (first.inode, listed.inode):
        with pytest.raises(NotFoundError):
            tree.node(gone)
    again = tree.lookup(answers, "7")
    assert again is not first and again.inode > listed.inode  # numbers are never reused


def test_the_trees_own_walk_does_not_count_as_a_kernel_lookup() -> None:
    tree, answers = tree_with_answers()
    walked = tree.resolve("answers/9/9.txt")
    assert walked.name == "9.txt"
    looked_up = tree.lookup(answers, "9")
    tree.forget([(looked_up.inode, 1)])  # the kernel's one lookup: dropped
    assert tree.answered_count() == 0
    tree.forget([(ROOT_INODE, 5), (12345, 1)])  # listed and unknown inodes: ignored
    assert tree.node(ROOT_INODE).name == ""
