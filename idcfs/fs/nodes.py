"""The nodes of the tree: directories listed on first use, and files of every kind.

No FUSE import here. Views (`idcfs.fs.views`) build these nodes; the tree
(`idcfs.fs.tree`) numbers them and answers the adapter. A file's content may have to be
fetched: `content()` may block, `cached_content()` never does. A `RangedFile` has no
content as a whole: it is read by ranges, as the kernel asks (`read()` may block).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from idcfs.cache.memory import ByteLRU
from idcfs.errors import FetchError
from idcfs.fetch.loader import TileLoader
from idcfs.slide.model import FrameRef, Slide


class Node:
    """A directory or a file in the tree.

    `mtime_ns` is when its data was made (docs/SEMANTICS.md, "Timestamps"); None takes
    the directory's it is listed in, when that lists it."""

    is_dir = False

    def __init__(self, name: str) -> None:
        self.name = name
        self.inode = 0  # set by Tree.adopt
        self.mtime_ns: int | None = None


class FileNode(Node):
    """A regular file whose bytes may have to be fetched."""

    direct_io = False  # True for a file whose content changes (no page cache)
    filled = False  # the kernel's page cache was given the content: an open needs none

    def size(self) -> tuple[int, bool]:
        """(size in bytes, whether it is exact)."""
        raise NotImplementedError

    def content(self) -> bytes:
        """The whole file; may block on the network."""
        raise NotImplementedError

    def cached_content(self) -> bytes | None:
        """The whole file when it is at hand without blocking, else None."""
        return None

    def note_open(self) -> None:
        """Called on every open, before the content is asked for (read-ahead hook)."""

    def pending(self) -> Future[bytes] | None:
        """The future of the content while it is being fetched, if it is."""
        return None

    def stored_frame(self) -> tuple[Slide, FrameRef] | None:
        """The one stored frame this file serves as it is (what `idcfs prefetch` puts in
        the disk cache for it), if it is one."""
        return None

    def content_waited_for(self, future: Future[bytes]) -> bytes:
        """The content, once the fetch `pending()` gave has succeeded."""
        return future.result()


class StaticFile(FileNode):
    """A file whose bytes are known when it is created (slide.json, collection.json)."""

    def __init__(self, name: str, data: bytes) -> None:
        super().__init__(name)
        self.data = data

    def size(self) -> tuple[int, bool]:
        return len(self.data), True

    def content(self) -> bytes:
        return self.data

    def cached_content(self) -> bytes | None:
        return self.data


class LiveFile(FileNode):
    """A small file computed afresh at every open (the statistics file). Its mtime is
    the moment it is looked at, unless it is `dated`: then it has an mtime like any
    node (a slide.json that learns transfer syntaxes from frames)."""

    direct_io = True

    def __init__(self, name: str, render: Callable[[], bytes], dated: bool = False) -> None:
        self.dated = dated
        super().__init__(name)
        self.render = render

    @property  # type: ignore[override]
    def mtime_ns(self) -> int | None:
        return self._mtime_ns if self.dated else time.time_ns()

    @mtime_ns.setter
    def mtime_ns(self, value: int | None) -> None:
        self._mtime_ns = value

    def size(self) -> tuple[int, bool]:
        return len(self.render()), False

    def content(self) -> bytes:
        return self.render()

    def cached_content(self) -> bytes | None:
        return self.render()


MIN_RANGE = 64 * 1024  # the least a read fetches: a tile and the kernel's small reads after it
SCAN_AFTER = 512 * 1024  # contiguous reads make a scan once they have covered this much
SCAN_FIRST_BLOCK = 256 * 1024  # the first range of a scan; each next one doubles...
SCAN_MAX_BLOCK = 8 * 1024 * 1024  # ...up to this
SCAN_KEPT_BLOCKS = 8  # blocks a file remembers (their bytes live in `blocks`)


class RangedFile(FileNode):
    """A large file of exact, known size whose bytes are read by ranges as the kernel
    asks, never whole (`dicom/<SOPInstanceUID>.dcm`): opening a 2 GB instance costs
    nothing, a tool's random access costs one range per read that reaches the daemon,
    and the kernel's page cache keeps what was read (the file never changes).

    A scan is cheaper: the kernel never asks more than 128 KiB at a time, so a tool
    walking a whole file (OpenSlide and wsidicom read every item header of a Pixel Data
    without offset table, as IDC's TCGA files are) would cost one request per 128 KiB.
    Once contiguous reads have covered 512 KiB (a random read of a tile, even split by
    the kernel into a few contiguous requests, stays below that), each next read not
    already fetched fetches a block of 256 KiB, doubling at each one up to 8 MiB; the
    block's bytes wait in `blocks` (a bounded LRU shared by all files) for the reads
    that follow, and reads that arrive while it is being fetched wait for it. Any other
    read fetches exactly what it asks.

    `read_range(start, length)` blocks (the source's deadline bounds it, and so every
    wait here) and gives fewer bytes than asked only at the end of the file."""

    def __init__(self, name: str, exact_size: int, read_range: Callable[[int, int], bytes],
                 blocks: ByteLRU | None = None) -> None:
        super().__init__(name)
        self.exact_size = exact_size
        self._read_range = read_range
        self._blocks = blocks
        self._lock = threading.Lock()
        self._stream_start = -1  # where the current run of contiguous reads began
        self._stream_end = -1  # where the last read ended
        self._block_size = 0  # the last block of the scan under way (0: none)
        self._kept: list[tuple[int, int]] = []  # [start, end) of recent blocks, newest last
        self._fetching: dict[tuple[int, int], Future[bytes]] = {}

    def size(self) -> tuple[int, bool]:
        return self.exact_size, True

    def read(self, offset: int, length: int) -> bytes:
        """Bytes [offset, offset + length) cut at the end of the file (b"" past it).
        FetchError when the source gives fewer bytes than the file was listed with: a
        file that shrank since must not look like a short one."""
        wanted = max(0, min(length, self.exact_size - offset))
        if wanted == 0:
            return b""
        with self._lock:
            start, found = self._covering(offset, wanted)
            fetch = found is None
            if found is None:
                start, size = offset, self._range_size(offset, wanted)
                found = self._fetching[(start, start + size)] = Future()
            if offset != self._stream_end:
                self._stream_start = offset
            self._stream_end = offset + wanted
        if fetch:
            self._fetch(start, size, found, keep=size > wanted)
        block = found.result() if isinstance(found, Future) else found
        data = block[offset - start : offset - start + wanted]
        if len(data) != wanted:
            raise FetchError(f"{self.name}: {len(data)} bytes at offset {offset}, not "
                             f"{wanted}: the file is no longer its listed {self.exact_size} "
                             "bytes")
        return data

    def content(self) -> bytes:
        raise NotImplementedError(f"{self.name} is read by ranges, never whole")

    def _covering(self, offset: int, wanted: int) -> tuple[int, bytes | Future[bytes] | None]:
        """A block holding [offset, offset + wanted): being fetched, or kept (under the
        lock)."""
        end = offset + wanted
        for (start, stop), future in self._fetching.items():
            if start <= offset and end <= stop:
                return start, future
        for start, stop in reversed(self._kept):
            if start <= offset and end <= stop and self._blocks is not None:
                data = self._blocks.get((self, start))
                if data is not None:
                    return start, data
        return 0, None

    def _range_size(self, offset: int, wanted: int) -> int:
        """What to fetch for a read not covered: a growing block when it continues a
        run of contiguous reads long enough to be a scan, else exactly what it asks
        (under the lock)."""
        scanning = offset == self._stream_end and offset - self._stream_start >= SCAN_AFTER
        if self._blocks is None:
            return wanted
        if not scanning:
            self._block_size = 0
            return max(wanted, min(MIN_RANGE, self.exact_size - offset))
        self._block_size = min(max(2 * self._block_size, SCAN_FIRST_BLOCK), SCAN_MAX_BLOCK)
        return max(wanted, min(self._block_size, self.exact_size - offset))

    def _fetch(self, start: int, size: int, future: Future[bytes], keep: bool) -> None:
        """Fetch a range into `future` (its readers wait on it); `keep` a scan's block
        for the reads that follow."""
        try:
            data = self._read_range(start, size)
        except BaseException as error:
            future.set_exception(error)
        else:
            future.set_result(data)
            if keep and self._blocks is not None:
                self._blocks.put((self, start), data)
                with self._lock:
                    self._kept = [*self._kept[-(SCAN_KEPT_BLOCKS - 1):], (start, start + size)]
        finally:
            with self._lock:
                self._fetching.pop((start, start + size), None)


class FetchedFile(FileNode):
    """A file made from frames: a placeholder size until first fetched, then exact."""

    def __init__(self, name: str, placeholder: int) -> None:
        super().__init__(name)
        self.placeholder = placeholder
        self.exact_size: int | None = None

    def size(self) -> tuple[int, bool]:
        if self.exact_size is None:
            return self.placeholder, False
        return self.exact_size, True

    def content(self) -> bytes:
        data = self.fetch()
        self.exact_size = len(data)
        return data

    def cached_content(self) -> bytes | None:
        data = self.peek()
        if data is not None:
            self.exact_size = len(data)
        return data

    def fetch(self) -> bytes:
        raise NotImplementedError

    def peek(self) -> bytes | None:
        raise NotImplementedError


class TileFile(FetchedFile):
    """A file holding one served tile: one stored frame of a slide, through the loader.

    `on_open` is the view's read-ahead hook (which grid, which position)."""

    def __init__(
        self,
        name: str,
        slide: Slide,
        frame: FrameRef,
        loader: TileLoader,
        placeholder: int,
        on_open: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(name, placeholder)
        self.slide = slide
        self.frame = frame
        self.loader = loader
        self._on_open = on_open
        self.exact_size = loader.known_size(slide, frame)  # disk-cached: known before open

    def note_open(self) -> None:
        if self._on_open is not None:
            self._on_open()

    def fetch(self) -> bytes:
        return self.loader.tile(self.slide, self.frame)

    def pending(self) -> Future[bytes] | None:
        return self.loader.in_flight(self.slide, self.frame)

    def stored_frame(self) -> tuple[Slide, FrameRef] | None:
        return self.slide, self.frame

    def content_waited_for(self, future: Future[bytes]) -> bytes:
        data = self.loader.waited(self.slide, self.frame, future)
        self.exact_size = len(data)
        return data

    def peek(self) -> bytes | None:
        return self.loader.cached(self.slide, self.frame)

    def read_ahead_unread(self) -> bool:
        """Whether read-ahead fetched this tile and it was not opened since."""
        return self.loader.tiles.is_staged(self.slide, self.frame)


class TileFileIndex:
    """The files of each tile in the directories listed so far (a series can be listed
    under collections/ and under studies/, and a tile can be in several views): the
    page-cache fillers store a tile into each file the kernel knows."""

    def __init__(self) -> None:
        self._files: dict[tuple[str, FrameRef], list[TileFile]] = {}
        self._lock = threading.Lock()

    def add(self, node: TileFile) -> None:
        with self._lock:
            self._files.setdefault((node.slide.series_uid, node.frame), []).append(node)

    def files(self, slide: Slide, frame: FrameRef) -> list[TileFile]:
        with self._lock:
            return list(self._files.get((slide.series_uid, frame), ()))


class DirNode(Node):
    """A directory whose children are computed on first use.

    With `answer`, it also has children it does not list: `answer(name)` makes the node
    a name stands for (an IIIF request, `iiif/0,0,512,512/256,/0/default.jpg`), or gives
    None for a name that cannot exist (ENOENT). It must not block (parse the name, build
    nodes; fetch nothing): lookups call it on the event loop. The tree adopts what it
    answers and drops it again when the kernel forgets it (`Tree.forget`)."""

    is_dir = True

    def __init__(self, name: str, list_children: Callable[[], list[Node]],
                 answer: Callable[[str], Node | None] | None = None) -> None:
        super().__init__(name)
        self._list_children = list_children
        self.answer = answer
        self._children: dict[str, Node] | None = None
        self._lock = threading.Lock()

    def loaded_children(self) -> dict[str, Node] | None:
        return self._children

    def load(self, adopt: Callable[[Node], None]) -> dict[str, Node]:
        with self._lock:
            if self._children is None:
                nodes = self._list_children()
                for node in nodes:
                    if node.mtime_ns is None:
                        node.mtime_ns = self.mtime_ns
                    adopt(node)
                self._children = {node.name: node for node in nodes}
            return self._children


def default_placeholder(width: int, height: int, samples: int) -> int:
    """The size shown for a file not fetched yet: its uncompressed size, an upper bound
    for practically every JPEG of it, so a tool that trusts a stale size sees a short
    read (an error) rather than silently missing bytes."""
    return width * height * samples


def json_bytes(value: dict[str, Any]) -> bytes:
    return (json.dumps(value, indent=2, sort_keys=True, default=str) + "\n").encode()
