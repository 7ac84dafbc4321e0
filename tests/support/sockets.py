"""What a process is connected to and how a path is mounted, read from /proc.

`inet_peers(pid)`: the remote address of every IPv4/IPv6 socket the process holds (its
descriptors' socket inodes looked up in its network namespace's tcp/udp tables), so a
test can check a daemon talks to nothing but its server. `mount_options(path)`: the
options the kernel shows for a mount (per-mount and superblock ones, e.g. allow_other).
"""

from __future__ import annotations

import os
import socket
import struct
from pathlib import Path

INET_TABLES = ("tcp", "tcp6", "udp", "udp6")


def inet_peers(pid: int) -> set[tuple[str, int]]:
    """(address, port) of the far end of each IPv4/IPv6 socket of process `pid`;
    ('0.0.0.0', 0) or ('::', 0) for a socket connected to nothing."""
    inodes = _socket_inodes(pid)
    peers = set()
    for table in INET_TABLES:
        path = Path(f"/proc/{pid}/net/{table}")
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            if len(fields) > 9 and fields[9] in inodes:
                peers.add(_address(fields[2]))
    return peers


def _socket_inodes(pid: int) -> set[str]:
    found = set()
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            found.add(target[len("socket:[") : -1])
    return found


def _address(text: str) -> tuple[str, int]:
    """'0100007F:1F90' (IPv4) or 32 hex digits:port (IPv6), as /proc/net/* writes them:
    the address in 32-bit words of host byte order."""
    host, _, port = text.partition(":")
    words = [int(host[index : index + 8], 16) for index in range(0, len(host), 8)]
    packed = b"".join(struct.pack("=I", word) for word in words)
    family = socket.AF_INET if len(packed) == 4 else socket.AF_INET6
    return socket.inet_ntop(family, packed), int(port, 16)


def mount_options(path: Path) -> set[str]:
    """Every option /proc/self/mountinfo shows for the mount at `path` (empty when none)."""
    target = str(path)
    with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as mounts:
        for line in mounts:
            before, _, after = line.partition(" - ")
            fields, super_fields = before.split(), after.split()
            if len(fields) > 5 and fields[4] == target:
                options = fields[5].split(",")
                options += super_fields[2].split(",") if len(super_fields) > 2 else []
                return set(options)
    return set()
