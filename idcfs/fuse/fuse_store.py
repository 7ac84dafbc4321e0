"""FUSE's store notification, written straight to the session's `/dev/fuse` descriptor.

pyfuse3 offers `notify_store`, but only in the process that runs the session. The
disk page filler (`idcfs.fuse.diskfill`) stores from a helper process instead, which
inherits the session's descriptor: its disk reads and stores then never compete with
the FUSE loop for this process's GIL. The message is the kernel's own ABI
(`linux/fuse.h`, FUSE_NOTIFY_STORE, since Linux 2.6.36): an output header with the
notification code in place of an error and a zero `unique`, the store arguments, then
the data, all in one write.
"""

from __future__ import annotations

import os
import struct

FUSE_NOTIFY_STORE = 4
OUT_HEADER = struct.Struct("<IiQ")  # total length, notification code, unique (0)
STORE_ARGS = struct.Struct("<QQII")  # node id (the inode), offset, size, padding
FUSE_DEVICE = "/dev/fuse"


def session_fd() -> int | None:
    """The descriptor of this process's one FUSE session, or None when there is not
    exactly one (then nothing is stored from outside the process)."""
    found = []
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") == FUSE_DEVICE:
                found.append(int(name))
        except OSError:
            continue
    return found[0] if len(found) == 1 else None


def store(fd: int, inode: int, data: bytes) -> None:
    """Put `data` in the kernel's page cache as the content of `inode` from offset 0;
    OSError as the kernel returns it (ENOENT: an inode the kernel does not hold)."""
    length = OUT_HEADER.size + STORE_ARGS.size + len(data)
    head = OUT_HEADER.pack(length, FUSE_NOTIFY_STORE, 0) + STORE_ARGS.pack(inode, 0, len(data), 0)
    written = os.writev(fd, [head, data])
    if written != length:
        raise OSError(f"short write to {FUSE_DEVICE}: {written} of {length} bytes")
