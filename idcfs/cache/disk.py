"""The optional persistent cache (`--cache-dir`): tiles and series metadata across mounts.

Built on diskcache (SQLite, eviction within a byte limit, safe for threads and
processes). Values under 1 MiB (every tile) live in the SQLite file itself, larger ones
(series metadata) in files of their own: one query per tile read, no file to open,
which halves the cost of a warm read from disk. Each value carries its length, the
time it was stored and a CRC-32 of its content; an entry that fails the check is
dropped and the caller fetches it again. (CRC-32 finds torn writes and flipped bits,
the failures of a private 0700 directory, in 9 us per tile against SHA-256's 22 us.)

The threads of one mount take turns through a lock of their own, over one SQLite
connection (`_OneConnection`). (Left to SQLite, threads that collide wait in its busy
handler, which sleeps 1, 2, 5, 10... ms: stalls of up to 70 ms in a read of a level from
disk, when read-ahead batches met.) diskcache itself opens a connection in every thread
that uses it, each with its descriptors (the database and its WAL file), page cache and
memory map, and a mount's FUSE worker threads (up to 64, started and ended by trio) all
read tiles: 14 connections in a soak, 21 descriptors more after it than before
(docs/PERFORMANCE.md), since SQLite keeps the database descriptor of a closed
connection while other connections of the process hold locks on the file. Handing
every call to one thread of the cache's own instead cost 75 us a read (32 -> 113 us).

The directory is private: created 0700, and an existing one is used only when it belongs
to this user and nobody else can write to it (`CacheDirError` otherwise: another user's
files would be served as tiles). Every file in it is 0600 whatever the umask: the
database is created 0600 before SQLite opens it (SQLite gives its journal files the
database's mode, and would otherwise create it 0644), and diskcache's value files are
made 0600 as they are written (`_PrivateDisk`).

Eviction is LRU at one-hour resolution: diskcache evicts the least recently *stored*
entries, and an entry read more than an hour after it was stored is stored again.
(diskcache's own LRU policy writes to SQLite on every read: 640 us per read, against
18 us, which made warm reads from disk three times slower.)
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import stat
import struct
import threading
import time
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import diskcache

from idcfs.errors import IdcfsError

log = logging.getLogger(__name__)

HEADER = struct.Struct(">4sQdI")  # magic, content length, stored at, CRC-32 of content
MAGIC = b"IDC3"
REFRESH_S = 3600.0
LARGEST_IN_DATABASE = 1 << 20
# SQLite's page cache and memory map of the connection (diskcache's defaults: 32 MiB and
# 64 MiB): a tile cache read once per open needs little of either, and the kernel's page
# cache holds the database's hot pages anyway.
SQLITE_CACHE_PAGES = 256
SQLITE_MMAP_BYTES = 4 << 20
PRIVATE_DIRECTORY = 0o700
PRIVATE_FILE = 0o600
DATABASE = "cache.db"  # diskcache's file name


class CacheDirError(IdcfsError):
    """A cache directory that must not be used: another user's, writable by others, or
    not a directory."""


def seal(data: bytes, stored_at: float | None = None) -> bytes:
    """data with its length, storage time and checksum in front."""
    when = time.time() if stored_at is None else stored_at
    return HEADER.pack(MAGIC, len(data), when, zlib.crc32(data)) + data


def unseal(stored: bytes) -> tuple[bytes, float] | None:
    """(content, time stored) of a sealed value, or None when it is damaged."""
    if len(stored) < HEADER.size:
        return None
    magic, length, stored_at, checksum = HEADER.unpack_from(stored)
    data = stored[HEADER.size :]
    if magic != MAGIC or len(data) != length or zlib.crc32(data) != checksum:
        return None
    return data, stored_at


def private_directory(directory: Path) -> None:
    """Make `directory` a cache only this user can read or change: create it 0700, or
    check an existing one (this user's, not writable by group or others) and make it
    and everything in it private. CacheDirError says why it cannot be used."""
    try:
        directory.mkdir(mode=PRIVATE_DIRECTORY, parents=True, exist_ok=True)
        info = directory.stat()
    except OSError as error:
        raise CacheDirError(f"cache directory {directory}: {error.strerror}") from None
    if info.st_uid != os.geteuid():
        raise CacheDirError(f"cache directory {directory} belongs to uid {info.st_uid}, "
                            f"not to this user (uid {os.geteuid()}): refused")
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise CacheDirError(f"cache directory {directory} is writable by group or others "
                            f"(mode {stat.S_IMODE(info.st_mode):o}): refused")
    try:
        _make_private(directory)
        descriptor = os.open(directory / DATABASE, os.O_CREAT | os.O_WRONLY, PRIVATE_FILE)
        os.close(descriptor)
    except OSError as error:
        raise CacheDirError(f"cache directory {directory}: {error.strerror}") from None


def _make_private(directory: Path) -> None:
    """Mode 0700 for `directory` and the directories in it, 0600 for its files (a cache
    written before these modes were kept, or copied in). A file that goes meanwhile
    (another process of the mount evicting it) is skipped."""
    os.chmod(directory, PRIVATE_DIRECTORY)
    for folder, folders, files in os.walk(directory):
        for names, mode in ((folders, PRIVATE_DIRECTORY), (files, PRIVATE_FILE)):
            for path in (os.path.join(folder, name) for name in names):
                if not os.path.islink(path):  # not followed: it may point anywhere
                    with contextlib.suppress(FileNotFoundError):
                        os.chmod(path, mode)


class _PrivateDisk(diskcache.Disk):
    """diskcache's storage of values in files of their own, each made 0600 (and its two
    levels of directories 0700) as it is written, whatever the umask."""

    def __init__(self, directory: str, **settings: Any) -> None:
        super().__init__(directory, **settings)
        self.root = directory

    def store(self, value: Any, read: bool, key: Any = diskcache.UNKNOWN) -> tuple[Any, ...]:
        size, mode, filename, stored = super().store(value, read, key)
        if filename is not None:
            path = os.path.join(self.root, filename)
            os.chmod(path, PRIVATE_FILE)
            inner = os.path.dirname(path)
            os.chmod(inner, PRIVATE_DIRECTORY)
            os.chmod(os.path.dirname(inner), PRIVATE_DIRECTORY)
        return size, mode, filename, stored


class _OneConnection(diskcache.Cache):
    """diskcache's Cache over one SQLite connection for every thread of the process, not
    one per thread. Only for callers that never use it at once (`DiskCache`'s lock): a
    diskcache transaction then never meets another thread's on the connection."""

    _shared: sqlite3.Connection | None = None
    _shared_pid = 0

    @property
    def _con(self) -> sqlite3.Connection:  # diskcache's per-thread connection, replaced
        if self._shared is None or self._shared_pid != os.getpid():  # new, or forked
            self._shared = sqlite3.connect(os.path.join(self.directory, DATABASE),
                                           timeout=self.timeout, isolation_level=None,
                                           check_same_thread=False)
            self._shared_pid = os.getpid()
            self._apply_settings()
        return self._shared

    def _apply_settings(self) -> None:
        """The per-connection pragmas stored in the Settings table, as diskcache applies
        them to each new connection (the table is missing while the cache is created)."""
        assert self._shared is not None
        try:
            settings = self._shared.execute("SELECT key, value FROM Settings").fetchall()
        except sqlite3.OperationalError:
            return
        for key, value in settings:
            if key.startswith("sqlite_"):
                self.reset(key, value, update=False)

    def close(self) -> None:
        if self._shared is not None:
            self._shared.close()
            self._shared = None


class DiskCache:
    """A bounded, checked, persistent byte store keyed by strings."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        private_directory(directory)
        self.directory = directory
        self.max_bytes = max_bytes
        self._store = _OneConnection(
            str(directory),
            disk=_PrivateDisk,
            size_limit=max_bytes,
            eviction_policy="least-recently-stored",
            statistics=False,
            disk_min_file_size=LARGEST_IN_DATABASE,
            sqlite_cache_size=SQLITE_CACHE_PAGES,
            sqlite_mmap_size=SQLITE_MMAP_BYTES,
        )
        self.dropped = 0
        self._lock = threading.Lock()

    def get(self, key: str) -> bytes | None:
        """The sound entry under `key`, or None."""
        with self._lock:
            return self._get(key)

    def get_many(self, keys: Sequence[str]) -> dict[str, bytes]:
        """The sound entries among `keys`."""
        with self._lock:
            found = {key: self._get(key) for key in keys}
        return {key: data for key, data in found.items() if data is not None}

    def put(self, key: str, data: bytes) -> None:
        with self._lock:
            self._put(key, data)

    def delete(self, key: str) -> None:
        """Drop the entry under `key`, if any (what it held is known to be stale)."""
        with self._lock:
            try:
                self._store.delete(key)
            except Exception as error:  # a broken database: the entry is checked when read
                log.warning("disk cache: cannot drop %s (%s)", key, error)

    def holds(self, keys: Sequence[str]) -> set[str]:
        """The keys among `keys` that have an entry, without reading it (a prefetch skips
        what is there; a damaged entry is found when read, and fetched again then)."""
        with self._lock:
            try:
                return {key for key in keys if key in self._store}
            except Exception as error:  # a broken database: nothing counts as held
                log.warning("disk cache: cannot look up entries (%s)", error)
                return set()

    def _get(self, key: str) -> bytes | None:
        try:
            stored = self._store.get(key)
        except Exception as error:  # a broken file must not fail the read
            log.warning("disk cache: cannot read %s (%s); fetching again", key, error)
            stored = None
        if stored is None:
            return None
        opened = unseal(bytes(stored))
        if opened is None:
            self.dropped += 1
            log.warning("disk cache: damaged entry %s dropped; fetching again", key)
            try:
                self._store.delete(key)
            except Exception as error:  # dropped at the next write of the key, then
                log.warning("disk cache: cannot drop %s (%s)", key, error)
            return None
        data, stored_at = opened
        if time.time() - stored_at > REFRESH_S:
            self._put(key, data)  # recently used again: keep it from eviction
        return data

    def _put(self, key: str, data: bytes) -> None:
        try:
            self._store.set(key, seal(data))
        except Exception as error:  # a full or read-only disk must not fail the read
            log.warning("disk cache: cannot store %s (%s)", key, error)

    def close(self) -> None:
        with self._lock:
            self._store.close()

