"""The disk page filler's helper process (`idcfs.fuse.diskfill` starts and feeds it).

    python -m idcfs.fuse.diskfill_process FUSE_FD CACHE_DIR CACHE_BYTES

Requests on stdin, one JSON line each: [[disk key, size, [inode, ...]], ...]. Each
tile that is sound in the disk cache (length and checksum, as `DiskCache.get` checks)
and exactly `size` bytes is stored into the page cache of each of its inodes the kernel
holds. The answer on stdout, one JSON line: the inodes stored. The process ends at the
end of its input (the daemon closed it, or died), or at the first store the kernel
refuses for another reason than an unknown inode.
"""

from __future__ import annotations

import errno
import json
import signal
import sys
from pathlib import Path
from typing import Any

from idcfs.cache.disk import DiskCache
from idcfs.fuse.fuse_store import store


def fill(disk: DiskCache, fd: int, request: list[list[Any]]) -> list[int]:
    """Store the tiles `request` names; the inodes stored."""
    stored = []
    for key, size, inodes in request:
        data = disk.get(key)
        if data is None or len(data) != size:
            continue
        for inode in inodes:
            try:
                store(fd, inode, data)
            except FileNotFoundError:  # not looked up yet, or forgotten
                continue
            stored.append(inode)
    return stored


def serve(disk: DiskCache, fd: int) -> None:
    """Answer requests from stdin until it ends."""
    for line in sys.stdin.buffer:
        stored = fill(disk, fd, json.loads(line))
        sys.stdout.write(json.dumps(stored) + "\n")
        sys.stdout.flush()


def main() -> None:
    for ending in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(ending, signal.SIG_IGN)  # sent to the whole group: the daemon ends it
    fd, directory, max_bytes = int(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    disk = DiskCache(directory, max_bytes)
    try:
        serve(disk, fd)
    except OSError as error:
        code = errno.errorcode.get(error.errno or 0, "")
        print(f"idcfs disk page filler: cannot store ({code} {error})", file=sys.stderr)
        sys.exit(1)
    finally:
        disk.close()


if __name__ == "__main__":
    main()
