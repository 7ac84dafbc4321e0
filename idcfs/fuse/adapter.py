"""The thin pyfuse3 adapter: FUSE requests to `Tree` calls, exceptions to errno.

Anything that may block (catalog, series metadata, frames) runs in a worker thread;
answers already in memory (listed directories, cached tiles, open files) are served
on the event loop without a thread hop, and an open of a tile that read-ahead is
fetching waits for it on the event loop too. Getting a file's content has one deadline
(`timeout`, `--timeout`): however it is slow (the network, a queue, a shared fetch, a
read-ahead batch), an open or a read then fails with EIO and one log line.

Size scheme (docs/SEMANTICS.md): a tile not fetched yet shows a placeholder size (or,
held in the disk cache, its size from the cache's index); `open()` fetches it and, when
the content's size is not the one shown, tells the kernel to forget the cached
attributes, so the `fstat`, reads and `mmap` that follow see the exact size; the page
cache is kept (`keep_cache`).

A `RangedFile` (an instance file, `dicom/<uid>.dcm`) is never fetched whole: `open()`
reads nothing, and each read that reaches the daemon asks the node for that range only,
in a worker thread, within the same deadline; the page cache keeps what was read.

Tiles read ahead are stored into the kernel's page cache before they are opened
(`idcfs.fuse.pagecache`, `idcfs.fuse.diskfill`), so their reads do not come here; the
fillers are built and started by `idcfs.mount`, and learn which files are open from the
`OpenFiles` this adapter keeps.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
from collections.abc import Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, TypeVar

import pyfuse3
import trio

from idcfs.errors import DecodeError, FetchError, MetadataError, NotFoundError, RegionTooLarge
from idcfs.fetch.claims import DEFAULT_WAIT_S
from idcfs.fs.nodes import FetchedFile, FileNode, Node, RangedFile
from idcfs.fs.tree import Attributes, Tree
from idcfs.fuse.counts import FuseCounts, eio_cause
from idcfs.fuse.openfiles import OpenFile, OpenFiles
from idcfs.fuse.releases import ReleaseBacklog
from idcfs.metrics import Histogram, Metrics

if TYPE_CHECKING:
    import outcome  # trio's own; only its type is named here

log = logging.getLogger(__name__)

T = TypeVar("T")
LONG_TIMEOUT = 3600.0
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
BLOCK_SIZE = 512
DEFAULT_TIMEOUT_S = DEFAULT_WAIT_S  # the default --timeout


def to_fuse_error(error: BaseException, what: str,
                  errors: Histogram | None = None) -> pyfuse3.FUSEError:
    """The errno a failure becomes, logging the reason for server and decode failures;
    counted in `errors` by kind (a FUSEError passed through was counted when made)."""
    if isinstance(error, pyfuse3.FUSEError):
        return error
    if isinstance(error, NotFoundError):
        code, kind = errno.ENOENT, "ENOENT"
    elif isinstance(error, NotADirectoryError):
        code, kind = errno.ENOTDIR, "ENOTDIR"
    else:
        code, kind = errno.EIO, f"EIO: {eio_cause(error)}"
        if isinstance(error, FetchError | DecodeError | MetadataError | RegionTooLarge):
            log.error("EIO on %s: %s", what, error)
        else:
            log.exception("EIO on %s: unexpected %s", what, type(error).__name__,
                          exc_info=error)
    if errors is not None:
        errors.add(kind)
    return pyfuse3.FUSEError(code)


class IdcfsOperations(pyfuse3.Operations):
    """pyfuse3 operations over a `Tree`; read-only."""

    supports_dot_lookup = False
    enable_writeback_cache = False
    enable_acl = False

    def __init__(
        self, tree: Tree, open_files: OpenFiles, metrics: Metrics, worker_threads: int = 64,
        timeout: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        super().__init__()
        self.tree = tree
        self.timeout = timeout
        self._open = open_files
        self._limiter = trio.CapacityLimiter(worker_threads)
        self._uid = os.getuid()
        self._gid = os.getgid()
        self._counts = FuseCounts(metrics, open_files)
        self._releases = ReleaseBacklog(open_files, metrics)

    # -- helpers --------------------------------------------------------------------

    async def _blocking(self, what: str, call: Callable[[], T], abandon: bool = False) -> T:
        """`call()` in a worker thread; with `abandon`, a cancelled caller stops waiting
        (the thread runs on to its own bounded end, and its result is dropped)."""
        try:
            return await in_worker_thread(call, self._limiter, abandon)
        except Exception as error:
            raise self._fuse_error(error, what) from None

    def _fuse_error(self, error: BaseException, what: str) -> pyfuse3.FUSEError:
        return to_fuse_error(error, what, self._counts.errors)

    def _entry(self, node: Node) -> pyfuse3.EntryAttributes:
        return self._to_entry(self.tree.attributes(node))

    def _to_entry(self, attributes: Attributes) -> pyfuse3.EntryAttributes:
        entry = pyfuse3.EntryAttributes()
        entry.st_ino = attributes.inode
        entry.generation = 0
        entry.entry_timeout = LONG_TIMEOUT
        entry.attr_timeout = 0 if attributes.volatile else LONG_TIMEOUT
        if attributes.is_dir:
            entry.st_mode = stat.S_IFDIR | 0o555
            entry.st_nlink = 2
        else:
            entry.st_mode = stat.S_IFREG | 0o444
            entry.st_nlink = 1
        entry.st_size = attributes.size
        entry.st_blksize = 128 * 1024
        entry.st_blocks = -(-attributes.size // BLOCK_SIZE)
        entry.st_uid = self._uid
        entry.st_gid = self._gid
        entry.st_atime_ns = entry.st_mtime_ns = entry.st_ctime_ns = attributes.mtime_ns
        return entry

    def _node(self, inode: int) -> Node:
        try:
            return self.tree.node(inode)
        except Exception as error:
            raise self._fuse_error(error, f"inode {inode}") from None

    # -- lookups and listings ------------------------------------------------------

    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        text = os.fsdecode(name)
        try:
            node = self.tree.lookup_cached(parent_inode, text)
        except Exception as error:
            raise self._fuse_error(error, f"lookup {text}") from None
        if node is None:
            node = await self._blocking(
                f"lookup {text}", lambda: self.tree.lookup(parent_inode, text)
            )
        return self._entry(node)

    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._entry(self._node(inode))

    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        if not self._node(inode).is_dir:
            raise self._counts.error(errno.ENOTDIR)
        return inode

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        children = await self._blocking(f"readdir inode {fh}", lambda: self.tree.children(fh))
        for index in range(start_id, len(children)):
            child = children[index]
            name = os.fsencode(child.name)
            if not pyfuse3.readdir_reply(token, name, self._entry(child), index + 1):
                return

    async def releasedir(self, fh: int) -> None:
        return None

    # -- files ---------------------------------------------------------------------

    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        if flags & WRITE_FLAGS:
            raise self._counts.error(errno.EROFS)
        node = self._node(inode)
        if not isinstance(node, FileNode):
            raise self._counts.error(errno.EISDIR)
        await self._releases.before_open()
        node.note_open()
        shown_size = node.size()[0]
        if isinstance(node, RangedFile):
            return self._opened(OpenFile(inode, shown_size, None, page_cached=True))
        data = await self._content_at_open(node)
        if data is not None and len(data) != shown_size:
            _forget_cached_attributes(inode)
        elif data is not None and not node.direct_io:
            self._store_with_open(inode, data)
        return self._opened(OpenFile(inode, shown_size, data, page_cached=not node.direct_io),
                            direct_io=node.direct_io)

    def _store_with_open(self, inode: int, data: bytes) -> None:
        """Give the kernel's page cache the content of a file being opened, before the
        open is answered, so the reads that follow are served there instead of by one
        more request each. Only when the kernel holds exactly this size (the caller
        checked) and no handle of the file is open: a store waits for a page a read has
        locked, and such a read waits for this event loop; without an open handle no
        read of the file can be under way."""
        if self._open.is_open(inode):
            return
        try:
            pyfuse3.notify_store(inode, 0, data)
        except OSError as error:  # not known to the kernel (yet), or no stores at all
            log.debug("no page-cache store for inode %d at open: %s", inode, error)
            return
        self._counts.stored_with_open.add()

    def _opened(self, opened: OpenFile, direct_io: bool = False) -> pyfuse3.FileInfo:
        handle = self._open.add(opened)
        self._counts.opens.add()
        return pyfuse3.FileInfo(fh=handle, keep_cache=not direct_io, direct_io=direct_io)

    async def _content_at_open(self, node: FileNode) -> bytes | None:
        """What an open keeps: the content (at hand, being fetched, or fetched now), or
        None for a file whose content the kernel was given already."""
        data = node.cached_content()
        if data is not None and isinstance(node, FetchedFile):
            self._counts.content_requests.add()
        if data is None and not node.filled:
            data = await self._content_by_deadline(node, f"open {node.name} (inode {node.inode})")
        return data

    async def _content_by_deadline(self, node: FileNode, what: str) -> bytes:
        """A file's content: the fetch under way for it, if one is, else (also when that
        fetch failed) fetched now, all within one `timeout`; on expiry EIO and one log
        line, which also says why a fetch it waited for failed."""
        waiting = "its fetch"
        if isinstance(node, FetchedFile):
            self._counts.content_requests.add()
        with trio.move_on_after(self.timeout):
            future = node.pending()
            if future is not None:
                waiting = "the fetch under way for it (another reader's, or read-ahead's)"
                await _until_done(future)
                if future.exception() is None:
                    return node.content_waited_for(future)
                waiting = f"its own fetch, the one under way failed ({future.exception()})"
            return await self._blocking(what, node.content, abandon=True)
        log.error("EIO on %s: no answer within the %g s deadline, waiting for %s",
                  what, self.timeout, waiting)
        raise self._counts.error(errno.EIO, "deadline")

    async def read(self, fh: int, off: int, size: int) -> bytes:
        opened = self._open.get(fh)
        if opened is None:
            raise self._counts.error(errno.EBADF)
        self._counts.reads.add()
        opened.reads += 1
        if opened.content is None:
            node = self._node(opened.inode)
            if isinstance(node, RangedFile):
                return self._served(await self._range_by_deadline(node, off, size))
            opened.content = await self._content_as_shown(opened)
        return self._served(opened.content[off : off + size])

    def _served(self, data: bytes) -> bytes:
        self._counts.bytes.add(len(data))
        return data

    async def _range_by_deadline(self, node: RangedFile, off: int, size: int) -> bytes:
        """Bytes [off, off + size) of a file read by ranges (b"" past its end), within
        `timeout`; on expiry EIO and one log line."""
        if off >= node.exact_size:
            return b""
        what = f"read {node.name} (inode {node.inode}) bytes {off}+{size}"
        with trio.move_on_after(self.timeout):
            return await self._blocking(what, lambda: node.read(off, size), abandon=True)
        log.error("EIO on %s: no answer within the %g s deadline", what, self.timeout)
        raise self._counts.error(errno.EIO, "deadline")

    async def _content_as_shown(self, opened: OpenFile) -> bytes:
        """The content of a file opened without it (the kernel had it then, and has
        dropped it since). EIO, for this and every later read of the handle, when it is
        no longer the size the kernel was shown: a short or padded copy is worse."""
        node = self._node(opened.inode)
        if opened.failed or not isinstance(node, FileNode):
            raise self._counts.error(errno.EIO, "size changed")
        what = f"read {node.name} (inode {opened.inode})"
        data = await self._content_by_deadline(node, what)
        if len(data) != opened.shown_size:
            opened.failed = True
            node.filled = False
            log.error("%s: %d bytes now, not the %d shown at open: EIO (open it again)",
                      what, len(data), opened.shown_size)
            _forget_cached_attributes(opened.inode)
            raise self._counts.error(errno.EIO, "size changed")
        return data

    async def release(self, fh: int) -> None:
        opened = self._open.remove(fh)
        if opened is not None:
            self._counts.released(opened)
            self._releases.released()

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        data = pyfuse3.StatvfsData()
        data.f_bsize = data.f_frsize = BLOCK_SIZE
        data.f_namemax = 255
        return data

    async def access(self, inode: int, mode: int, ctx: pyfuse3.RequestContext) -> bool:
        return not mode & os.W_OK

    # flush, fsync, getxattr and listxattr are left to pyfuse3's defaults (ENOSYS): the
    # kernel then stops sending them, saving a round trip per close() and per `ls -l` entry.

    async def forget(self, inode_list: list[tuple[int, int]]) -> None:
        """Nodes answered on lookup (not listed) are dropped once the kernel forgets
        them; listed ones stay (`Tree.forget`)."""
        self.tree.forget(inode_list)


async def in_worker_thread(call: Callable[[], T], limiter: trio.CapacityLimiter,
                           abandon: bool) -> T:
    """`call()` in one of trio's cached worker threads, at most `limiter`'s many at once;
    with `abandon`, a cancelled caller stops waiting (the thread runs on, its result is
    dropped). What `trio.to_thread.run_sync` does, less what a cold tile open paid for
    and never used (~0.1 ms of the event loop's CPU each): a scheduler pass when the
    limiter has room, a copy of the context, and renaming the thread (two prctl calls)
    around every job."""
    borrower = object()  # the thread's, released when it ends, even when abandoned
    try:
        limiter.acquire_on_behalf_of_nowait(borrower)
    except trio.WouldBlock:
        await limiter.acquire_on_behalf_of(borrower)
    task = trio.lowlevel.current_task()
    token = trio.lowlevel.current_trio_token()
    waiting: list[trio.lowlevel.Task | None] = [task]

    def report(result: outcome.Outcome[T]) -> None:  # on the event loop
        limiter.release_on_behalf_of(borrower)
        if waiting[0] is not None:
            trio.lowlevel.reschedule(waiting[0], result)

    def deliver(result: outcome.Outcome[T]) -> None:  # in the worker thread
        with contextlib.suppress(trio.RunFinishedError):  # the caller is long gone
            token.run_sync_soon(report, result)

    try:
        trio.lowlevel.start_thread_soon(call, deliver)
    except BaseException:
        limiter.release_on_behalf_of(borrower)
        raise

    def abort(_: Any) -> trio.lowlevel.Abort:
        if not abandon:
            return trio.lowlevel.Abort.FAILED  # woken by `report`, then cancelled
        waiting[0] = None
        return trio.lowlevel.Abort.SUCCEEDED

    return await trio.lowlevel.wait_task_rescheduled(abort)


async def _until_done(future: Future[bytes]) -> None:
    """Wait on the event loop (no thread) until a fetch's future is done; the caller
    bounds the wait."""
    if future.done():
        return
    token = trio.lowlevel.current_trio_token()
    done = trio.Event()

    def wake(_: Future[bytes]) -> None:
        with contextlib.suppress(trio.RunFinishedError):
            token.run_sync_soon(done.set)

    future.add_done_callback(wake)
    await done.wait()


def _forget_cached_attributes(inode: int) -> None:
    """Make the kernel ask for a tile's attributes again: the size it was shown (a
    placeholder, or a size index entry that no longer holds) is not the content's."""
    try:
        pyfuse3.invalidate_inode(inode, attr_only=True)
    except OSError as error:
        log.debug("cannot invalidate inode %d: %s", inode, error)


async def _read_only(self: IdcfsOperations, *_args: Any) -> None:
    raise self._counts.error(errno.EROFS)


for _name in (
    "setattr", "mknod", "mkdir", "unlink", "rmdir", "symlink", "rename", "link",
    "create", "write", "setxattr", "removexattr",
):  # fmt: skip
    setattr(IdcfsOperations, _name, _read_only)
