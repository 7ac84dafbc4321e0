"""The optional persistent cache (`--cache-dir`): tiles and series metadata across mounts.

Built on diskcache (SQLite index + files, LRU eviction within a byte limit, safe for
threads and processes). Each value carries its length and a SHA-256 of its content;
an entry that fails the check is dropped and the caller fetches it again.
"""

from __future__ import annotations

import hashlib
import logging
import os
import struct
from pathlib import Path

import diskcache

log = logging.getLogger(__name__)

HEADER = struct.Struct(">4sQ32s")  # magic, content length, sha256 of content
MAGIC = b"IDC1"


def seal(data: bytes) -> bytes:
    """data with its length and checksum in front."""
    return HEADER.pack(MAGIC, len(data), hashlib.sha256(data).digest()) + data


def unseal(stored: bytes) -> bytes | None:
    """The content of a sealed value, or None when it is damaged."""
    if len(stored) < HEADER.size:
        return None
    magic, length, digest = HEADER.unpack_from(stored)
    data = stored[HEADER.size :]
    if magic != MAGIC or len(data) != length or hashlib.sha256(data).digest() != digest:
        return None
    return data


class DiskCache:
    """A bounded, checked, persistent byte store keyed by strings."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(directory, 0o700)
        self.directory = directory
        self._store = diskcache.Cache(
            str(directory),
            size_limit=max_bytes,
            eviction_policy="least-recently-used",
            statistics=False,
        )
        self.dropped = 0

    def get(self, key: str) -> bytes | None:
        try:
            stored = self._store.get(key)
        except Exception as error:  # a broken file must not fail the read
            log.warning("disk cache: cannot read %s (%s); fetching again", key, error)
            stored = None
        if stored is None:
            return None
        data = unseal(bytes(stored))
        if data is None:
            self.dropped += 1
            log.warning("disk cache: damaged entry %s dropped; fetching again", key)
            self._store.delete(key)
        return data

    def put(self, key: str, data: bytes) -> None:
        try:
            self._store.set(key, seal(data))
        except Exception as error:  # a full or read-only disk must not fail the read
            log.warning("disk cache: cannot store %s (%s)", key, error)

    def close(self) -> None:
        self._store.close()
