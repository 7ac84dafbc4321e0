"""What the FUSE adapter counts: opens and releases, reads and bytes served, content
requests of files made from frames, the page cache seen from the daemon, and every
error reply by kind (docs/SEMANTICS.md, "Statistics").

The page cache: every open reaches the daemon (tiles are opened with `keep_cache`), but
a read the kernel can answer from its page cache does not. So a handle of a cached file
released without any read having reached the daemon was served by the page cache (or
read nothing), and one with reads was not: `page_cache.hits` and `.misses`; handles of
direct-I/O files (the statistics file) never use it: `page_cache.bypassed`.
"""

from __future__ import annotations

import errno

import pyfuse3

from idcfs.errors import (
    DecodeError,
    FetchError,
    MetadataError,
    QuotaExhaustedError,
    RegionTooLarge,
)
from idcfs.fuse.openfiles import OpenFile, OpenFiles
from idcfs.metrics import Metrics


class FuseCounts:
    """The adapter's counters; called on the event loop (each counter has its lock)."""

    def __init__(self, metrics: Metrics, open_files: OpenFiles) -> None:
        self.opens = metrics.counter("fuse.opens")
        self.releases = metrics.counter("fuse.releases")
        metrics.gauge("fuse.open_handles", open_files.count)
        self.reads = metrics.counter("fuse.reads_served")
        self.bytes = metrics.counter("fuse.bytes_served")
        self.content_requests = metrics.counter("fuse.fetched_file_requests")
        self.page_cache_hits = metrics.counter("page_cache.hits")
        self.page_cache_misses = metrics.counter("page_cache.misses")
        self.page_cache_bypassed = metrics.counter("page_cache.bypassed")
        self.stored_with_open = metrics.counter("page_cache.stored_with_open")
        self.errors = metrics.histogram("errors")

    def error(self, code: int, cause: str = "") -> pyfuse3.FUSEError:
        """The error reply `code`, counted under its name and, for EIO, its cause."""
        name = errno.errorcode.get(code, str(code))
        self.errors.add(f"{name}: {cause}" if cause else name)
        return pyfuse3.FUSEError(code)

    def released(self, opened: OpenFile) -> None:
        self.releases.add()
        if not opened.page_cached:
            self.page_cache_bypassed.add()
        else:
            (self.page_cache_misses if opened.reads else self.page_cache_hits).add()


def eio_cause(error: BaseException) -> str:
    """Why a failure is EIO, as the statistics name it."""
    if isinstance(error, QuotaExhaustedError):
        return "quota"
    if isinstance(error, FetchError):
        return "server"
    if isinstance(error, DecodeError):
        return "decode"
    if isinstance(error, MetadataError):
        return "metadata"
    if isinstance(error, RegionTooLarge):
        return "too large"
    return "unexpected"
