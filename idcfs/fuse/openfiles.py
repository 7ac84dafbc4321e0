"""Which files are open: the adapter records opens and releases, the page-cache fillers
ask before storing (a store into a file being read could wait on that very read).

All calls come from the FUSE event loop except `is_open` (filler threads): a dict
lookup, safe under the GIL without a lock.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class OpenFile:
    """An open handle: the file, the size the kernel holds, and the content (None when
    the kernel was given it before the open: loaded at the first read that comes);
    `reads` that reached the daemon, of a file the kernel keeps in its page cache
    (`page_cached`: not direct I/O) - for the statistics."""

    inode: int
    shown_size: int
    content: bytes | None
    failed: bool = False
    page_cached: bool = False
    reads: int = 0


class OpenFiles:
    """Open handles by number, and how many are open per inode."""

    def __init__(self) -> None:
        self._handles: dict[int, OpenFile] = {}
        self._per_inode: dict[int, int] = {}
        self._next_handle = 1

    def add(self, opened: OpenFile) -> int:
        """Record an open; its handle number."""
        handle = self._next_handle
        self._next_handle += 1
        self._handles[handle] = opened
        self._per_inode[opened.inode] = self._per_inode.get(opened.inode, 0) + 1
        return handle

    def get(self, handle: int) -> OpenFile | None:
        return self._handles.get(handle)

    def remove(self, handle: int) -> OpenFile | None:
        """Forget a handle; the handle it was (None when unknown)."""
        opened = self._handles.pop(handle, None)
        if opened is None:
            return None
        remaining = self._per_inode.pop(opened.inode) - 1
        if remaining:
            self._per_inode[opened.inode] = remaining
        return opened

    def count(self) -> int:
        """How many handles are open."""
        return len(self._handles)

    def is_open(self, inode: int) -> bool:
        """Whether a file is open (through any handle)."""
        return inode in self._per_inode
