"""The ceiling for warm reads: a minimal in-memory pyfuse3 filesystem serving files of
given sizes from one directory, with exact sizes, long timeouts and the page cache kept
(what idcfs does for a tile it has in memory), minus everything idcfs adds.

    python benchmarks/memfs.py MOUNTPOINT FILES_JSON     (serves until SIGTERM)

FILES_JSON is a list of sizes (files `0.jpg`, `1.jpg`, ...) or of [name, size] pairs
(the names and sizes of a level's tiles, in listing order).
"""

from __future__ import annotations

import errno
import json
import os
import stat
import sys

import pyfuse3
import trio

from idcfs.mount import main_until_signal

ROOT = pyfuse3.ROOT_INODE
TIMEOUT = 3600.0


class MemoryFs(pyfuse3.Operations):
    def __init__(self, files: list[tuple[str, int]]) -> None:
        super().__init__()
        self.files = {ROOT + 1 + i: os.urandom(size) for i, (_, size) in enumerate(files)}
        self.names = {name.encode(): ROOT + 1 + i for i, (name, _) in enumerate(files)}

    def _attr(self, inode: int) -> pyfuse3.EntryAttributes:
        entry = pyfuse3.EntryAttributes()
        entry.st_ino = inode
        entry.entry_timeout = entry.attr_timeout = TIMEOUT
        if inode == ROOT:
            entry.st_mode, entry.st_size = stat.S_IFDIR | 0o555, 0
        else:
            entry.st_mode, entry.st_size = stat.S_IFREG | 0o444, len(self.files[inode])
        entry.st_blocks = -(-entry.st_size // 512)
        return entry

    async def getattr(self, inode, ctx=None):  # type: ignore[no-untyped-def]
        return self._attr(inode)

    async def lookup(self, parent, name, ctx=None):  # type: ignore[no-untyped-def]
        if parent != ROOT or name not in self.names:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attr(self.names[name])

    async def opendir(self, inode, ctx):  # type: ignore[no-untyped-def]
        return inode

    async def readdir(self, fh, start_id, token):  # type: ignore[no-untyped-def]
        items = list(self.names.items())
        for index in range(start_id, len(items)):
            name, inode = items[index]
            if not pyfuse3.readdir_reply(token, name, self._attr(inode), index + 1):
                return

    async def open(self, inode, flags, ctx):  # type: ignore[no-untyped-def]
        return pyfuse3.FileInfo(fh=inode, keep_cache=True)

    async def read(self, fh, off, size):  # type: ignore[no-untyped-def]
        return self.files[fh][off : off + size]


def main() -> None:
    mountpoint, files_json = sys.argv[1], sys.argv[2]
    with open(files_json) as handle:
        listed = json.load(handle)
    files = [(f"{i}.jpg", item) if isinstance(item, int) else (str(item[0]), int(item[1]))
             for i, item in enumerate(listed)]
    pyfuse3.init(MemoryFs(files), mountpoint, {"fsname=memfs", "ro"})
    try:
        trio.run(main_until_signal)
    finally:
        pyfuse3.close(unmount=True)


if __name__ == "__main__":
    main()
