"""The coordinator of a tile's read: memory → staging → disk → claim → source → convert.

Each step is a call into its own module: the tiers in `idcfs.cache.tiles`, claims in
`idcfs.fetch.claims`, the frame source behind `idcfs.source.base.FrameSource`, demand
requests shared between readers in `idcfs.fetch.coalesce`, conversion to the served
JPEG in `idcfs.tiles.convert` and stitching in `idcfs.tiles.compose`. A tile is claimed
before its disk read, so however many ask, it is read from disk or fetched once.
Frames are converted before they are cached: a cached tile costs no CPU to serve again.

The claim rule: every path that takes a `Claim` ends it (resolve, fail or release),
including the error paths; `fetch_claimed` and `_fetch_for_reading` do so for whole
batches.

Counting (docs/SEMANTICS.md, "Statistics"): each tile read a reader finishes is counted
once, by where it was served from (`tile_reads.*`); the memory lookups shown are those
reads, not every internal look into the LRU (a read looks there up to three times).
Each call to the source is a frame request: counted when sent, when it fails, while in
flight, and its duration (percentiles) when it succeeds.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future

from idcfs.cache.tiles import Found, TileCache, tile_key
from idcfs.errors import DecodeError
from idcfs.fetch.claims import DEFAULT_WAIT_S, Claim, Claims, fail_all, release_all, wait
from idcfs.fetch.coalesce import CoalesceSettings, RequestCoalescer
from idcfs.fetch.syntaxes import LearnedSyntaxes
from idcfs.metrics import Metrics
from idcfs.slide.model import AssociatedImage, FrameRef, InstanceInfo, Slide
from idcfs.source.base import Frame, FrameSizes, FrameSource
from idcfs.tiles.compose import Piece, composed_jpeg
from idcfs.tiles.convert import DEFAULT_QUALITY, TileDecodeError, served_growth, served_jpeg

log = logging.getLogger(__name__)

MAX_FRAMES_PER_REQUEST = 64
SERVED_FROM = ("memory", "staged", "waited", "disk", "source")  # where a tile read ends

TileClaims = dict[FrameRef, Claim[bytes]]
KeepTile = Callable[[Slide, FrameRef, bytes], None]  # where a fetched tile is kept
WarmResult = dict[FrameRef, int | Exception]  # a prefetched tile's size, or why it failed


class TileLoader:
    """Tiles on demand and for read-ahead; thread-safe, blocking."""

    def __init__(
        self,
        source: FrameSource,
        tiles: TileCache,
        metrics: Metrics,
        quality: int = DEFAULT_QUALITY,
        max_frames_per_request: int = MAX_FRAMES_PER_REQUEST,
        demand: CoalesceSettings | None = None,
        wait_s: float = DEFAULT_WAIT_S,
    ) -> None:
        """`wait_s` bounds a reader's wait for a tile someone else fetches (the mount's
        deadline, `--timeout`)."""
        self.source = source
        self.tiles = tiles
        self.quality = quality
        self.max_frames_per_request = max_frames_per_request
        self._claims: Claims[bytes] = Claims(wait_s)
        self.syntaxes = LearnedSyntaxes(tiles.disk)  # for instances whose metadata has none
        self._demand = RequestCoalescer(self._fetch_for_reading, self._abandon_demand, demand)
        self._frames_fetched = metrics.counter("frames_fetched")
        self._frames_per_request = metrics.histogram("frames_per_request")
        self._reads = {where: metrics.counter(f"tile_reads.{where}")
                       for where in (*SERVED_FROM, "failed")}
        self._requests = FrameRequestCounts(metrics)
        self._readahead = ReadAheadCounts(metrics)
        metrics.gauge("memory_cache", self._memory_statistics)

    # -- reads ------------------------------------------------------------------------

    def tile(self, slide: Slide, frame: FrameRef) -> bytes:
        """The served bytes of one tile (may block on disk or network)."""
        found = self.tiles.lookup(slide, frame)
        if found is not None:
            return self._served(found.tier, found.data)
        future, claim = self._claims.claim(tile_key(slide, frame))
        where = "waited"
        try:
            if claim is not None:
                where = self._load(slide, frame, claim)
            data = wait(future, self._claims.wait_timeout)
        except Exception:
            self._reads["failed"].add()
            raise
        if claim is None:
            self.tiles.for_reading(slide, frame)  # a tile read ahead and now read: keep it
        return self._served(where, data)

    def waited(self, slide: Slide, frame: FrameRef, future: Future[bytes]) -> bytes:
        """The tile of a fetch under way (`in_flight`) that the caller waited for and
        that succeeded; a tile read ahead moves to memory."""
        data = self.tiles.for_reading(slide, frame)
        return self._served("waited", data if data is not None else future.result())

    def in_flight(self, slide: Slide, frame: FrameRef) -> Future[bytes] | None:
        """The future of a tile being read from disk or fetched, else None."""
        return self._claims.running(tile_key(slide, frame))

    def cached(self, slide: Slide, frame: FrameRef) -> bytes | None:
        """A tile from memory (a staged tile moves to the memory cache), never blocking;
        counted as a read only when found (a miss is followed by `waited` or `tile`)."""
        found = self.tiles.lookup(slide, frame)
        return None if found is None else self._served(found.tier, found.data)

    def holds(self, slide: Slide, frame: FrameRef) -> bool:
        """Whether a tile is in memory (cached or staged) or being fetched."""
        return self.tiles.in_memory(slide, frame) or self.in_flight(slide, frame) is not None

    def associated(self, slide: Slide, image: AssociatedImage) -> bytes:
        """A label / overview / thumbnail as one JPEG, stitched when stored as tiles."""
        info = slide.instances[image.instance_uid]
        single = self.associated_frame(slide, image)
        if single is not None:
            return self.tile(slide, single)
        key = (slide.series_uid, image.instance_uid, "stitched")
        cached = self.tiles.memory.get(key)
        if cached is not None:
            return self._served("memory", cached)
        try:
            data = self._claims.run(key, lambda: self._stitch(slide, image, info))
        except Exception:
            self._reads["failed"].add()
            raise
        self.tiles.memory.put(key, data)
        return self._served("source", data)

    def associated_frame(self, slide: Slide, image: AssociatedImage) -> FrameRef | None:
        """The one stored frame an associated image is served as, unless it is stitched
        from several (kept in memory only)."""
        if _is_single_tile(image, slide.instances[image.instance_uid]):
            return image.tiles[0].frame
        return None

    def stored_frames(self, slide: Slide, frames: Sequence[FrameRef]) -> dict[FrameRef, Frame]:
        """The stored frames themselves, neither converted nor kept: a render
        (`idcfs.fetch.regions`) decodes them once and caches what it made of them, and a
        served tile of a JPEG 2000 frame would be one more lossy generation. One counted
        request per instance per batch of up to `max_frames_per_request`, as stitching."""
        found: dict[FrameRef, Frame] = {}
        for instance_uid, numbers in _group_by_instance(frames):
            info = slide.instances[instance_uid]
            for batch in _chunks(numbers, self.max_frames_per_request):
                for number, frame in zip(batch, self._fetch(info, batch), strict=True):
                    found[FrameRef(instance_uid, number)] = frame
        return found

    # -- read-ahead -------------------------------------------------------------------

    def claim_for_prefetch(self, slide: Slide, frames: Sequence[FrameRef]) -> TileClaims:
        """Claim tiles nobody has or fetches (never blocks); the caller must pass the
        result to `fetch_claimed` or `abandon_claimed`. Readers of a claimed tile wait for
        that fetch instead of sending their own request."""
        owned: TileClaims = {}
        for frame in frames:
            if self.tiles.in_memory(slide, frame):
                continue
            _, claim = self._claims.claim(tile_key(slide, frame))
            if claim is not None:
                owned[frame] = claim
        return owned

    def fetch_claimed(self, slide: Slide, owned: TileClaims) -> None:
        """Fetch claimed tiles into the staging area (disk cache first); ends every claim."""
        on_disk: dict[FrameRef, bytes] = {}
        try:
            on_disk = self.tiles.from_disk(slide, list(owned), staged=True)
            for frame, data in on_disk.items():
                owned[frame].resolve(data)
            network = {frame: claim for frame, claim in owned.items() if not claim.done}
            self._fetch_into(slide, network, self._keep_staged)
        except Exception as error:
            fail_all(owned.values(), error)
            raise
        finally:
            release_all(owned.values(), "tile not fetched")
            self._readahead.ended(owned, len(on_disk))

    # -- prefetch (idcfs prefetch) ----------------------------------------------------

    def warm_disk(self, slide: Slide, frames: Sequence[FrameRef]) -> WarmResult:
        """Put tiles into the disk cache, in one request per batch, the read-ahead path:
        each tile nobody fetches is claimed (a reader of it waits for this request), one
        being fetched by someone else is waited for (it lands on disk too), and one on
        disk by now is left alone. Fetched tiles are kept on disk only. Blocks; returns
        each tile's size, or the error that kept it out; ends every claim it takes."""
        owned: TileClaims = {}
        others: dict[FrameRef, Future[bytes]] = {}
        for frame in frames:
            future, claim = self._claims.claim(tile_key(slide, frame))
            if claim is None:
                others[frame] = future
            else:
                owned[frame] = claim
        try:
            for frame, data in self.tiles.read_disk(slide, list(owned)).items():
                owned[frame].resolve(data)  # landed since the caller looked
            network = {frame: claim for frame, claim in owned.items() if not claim.done}
            self._fetch_into(slide, network, self.tiles.keep_on_disk)
        except Exception as error:  # every tile of the batch carries it
            fail_all(owned.values(), error)
        finally:
            release_all(owned.values(), "tile not fetched")
        futures = {frame: claim.future for frame, claim in owned.items()} | others
        return {frame: _size_or_error(future, self._claims.wait_timeout)
                for frame, future in futures.items()}

    def abandon_claimed(self, slide: Slide, owned: TileClaims) -> None:
        """Give claimed tiles up unfetched (unmount); a waiting reader gets an error."""
        release_all(owned.values(), "read-ahead abandoned at unmount")
        self._readahead.abandoned.add(len(owned))

    def size_hints(self, slide: Slide, instance_uid: str) -> tuple[int, ...] | None:
        """The served size of every tile of an instance before any is fetched (frame 1
        first), from a source that knows its frames' stored lengths (DICOM files): an
        upper bound, exact unless a frame has a pad byte, several fragments or another
        header than the instance's first frame. None when the source cannot tell."""
        if not isinstance(self.source, FrameSizes):
            return None
        info = slide.instances[instance_uid]
        hints = self.source.frame_size_hints(info)
        if hints is None or len(hints.lengths) != info.frame_count:
            return None
        growth = served_growth(hints.first_head, info.pixels,
                               info.transfer_syntax or hints.transfer_syntax)
        if growth is None:
            return None
        return tuple(length + growth for length in hints.lengths)

    def known_size(self, slide: Slide, frame: FrameRef) -> int | None:
        """The size of a tile the disk cache holds (from its size index), else None."""
        return self.tiles.known_size(slide, frame)

    def close(self) -> None:
        """Stop sending demand requests (readers still waiting get an error)."""
        self._demand.close()

    # -- steps ------------------------------------------------------------------------

    def _served(self, where: str, data: bytes) -> bytes:
        self._reads[where].add()
        return data

    def _load(self, slide: Slide, frame: FrameRef, claim: Claim[bytes]) -> str:
        """A claimed tile from memory (read ahead just now) or disk, else queued for a
        request shared with other readers of the instance; says which it was."""
        try:
            found: Found | None = self.tiles.lookup(slide, frame)
            where = found.tier if found is not None else "disk"
            data = found.data if found is not None else (
                self.tiles.from_disk(slide, [frame], staged=False).get(frame))
        except Exception as error:
            claim.fail(error)
            raise
        if data is None:
            self._demand.submit(slide, {frame: claim})
            return "source"
        claim.resolve(data)
        return where

    def _abandon_demand(self, slide: Slide, owned: TileClaims) -> None:
        release_all(owned.values(), "demand request abandoned at unmount")

    def _fetch_for_reading(self, slide: Slide, owned: TileClaims) -> None:
        try:
            self._fetch_into(slide, owned, self._keep_read)
        except Exception as error:
            fail_all(owned.values(), error)
            raise
        finally:
            release_all(owned.values(), "tile not fetched")

    def _keep_staged(self, slide: Slide, frame: FrameRef, data: bytes) -> None:
        self.tiles.keep(slide, frame, data, staged=True)

    def _keep_read(self, slide: Slide, frame: FrameRef, data: bytes) -> None:
        self.tiles.keep(slide, frame, data, staged=False)

    def _fetch_into(self, slide: Slide, owned: TileClaims, keep: KeepTile) -> None:
        """Fetch, convert, keep and resolve claimed tiles, one request per batch."""
        for instance_uid, numbers in _group_by_instance(owned):
            info = slide.instances[instance_uid]
            for batch in _chunks(numbers, self.max_frames_per_request):
                frames = self._fetch(info, batch)
                for number, frame in zip(batch, frames, strict=True):
                    ref = FrameRef(instance_uid, number)
                    data = self._convert(frame, info, ref)
                    keep(slide, ref, data)
                    owned[ref].resolve(data)

    def _fetch(self, info: InstanceInfo, numbers: list[int]) -> list[Frame]:
        """One frame request: the only call of `source.frames`, so every one is counted."""
        requests = self._requests
        requests.sent.add()
        requests.in_flight.add()
        started = time.monotonic()
        try:
            frames = self.source.frames(info, numbers)
        except BaseException:
            requests.failed.add()
            raise
        finally:
            requests.in_flight.add(-1)
        requests.latency.add(time.monotonic() - started)
        requests.bytes.add(sum(len(frame.data) for frame in frames))
        if info.transfer_syntax is None and frames:
            self.syntaxes.learn(info.uid, frames[0].transfer_syntax)
        self._frames_fetched.add(len(frames))
        self._frames_per_request.add(len(frames))
        return frames

    def _memory_statistics(self) -> dict[str, int]:
        """The memory cache as readers see it: one lookup per tile read."""
        lookups = sum(counter.value for counter in self._reads.values())
        hits = self._reads["memory"].value
        memory = self.tiles.memory
        return {"lookups": lookups, "hits": hits, "misses": lookups - hits,
                "bytes": memory.current_bytes, "max_bytes": memory.max_bytes}

    def _convert(self, frame: Frame, info: InstanceInfo, ref: FrameRef) -> bytes:
        syntax = frame.transfer_syntax or info.transfer_syntax
        try:
            return served_jpeg(frame.data, info.pixels, syntax, self.quality)
        except TileDecodeError as error:
            raise DecodeError(f"instance {ref.instance_uid} frame {ref.number}: {error}") from error

    def _stitch(self, slide: Slide, image: AssociatedImage, info: InstanceInfo) -> bytes:
        numbers = [tile.frame.number for tile in image.tiles]
        frames: list[Frame] = []
        for batch in _chunks(numbers, self.max_frames_per_request):
            frames += self._fetch(info, batch)
        tile_h, tile_w = info.pixels.rows, info.pixels.columns
        pieces = [
            Piece(tile.row * tile_h, tile.column * tile_w, frame.data,
                  frame.transfer_syntax or info.transfer_syntax)
            for tile, frame in zip(image.tiles, frames, strict=True)
        ]
        try:
            return composed_jpeg(pieces, info.pixels, info.total_width, info.total_height,
                                 self.quality)
        except TileDecodeError as error:
            raise DecodeError(f"{image.kind} of {slide.series_uid}: {error}") from error


def _size_or_error(future: Future[bytes], timeout: float) -> int | Exception:
    try:
        return len(wait(future, timeout))
    except Exception as error:
        return error


class FrameRequestCounts:
    """Calls of the source's `frames` (`frame_requests.*`)."""

    def __init__(self, metrics: Metrics) -> None:
        self.sent = metrics.counter("frame_requests.sent")
        self.failed = metrics.counter("frame_requests.failed")
        self.in_flight = metrics.counter("frame_requests.in_flight")
        self.bytes = metrics.counter("frame_requests.bytes_received")
        self.latency = metrics.latency("frame_requests.latency")


class ReadAheadCounts:
    """How each tile read-ahead claimed ended (`readahead.*`): landed from the disk
    cache or the source, failed, or abandoned at unmount."""

    def __init__(self, metrics: Metrics) -> None:
        self.from_disk = metrics.counter("readahead.landed_from_disk")
        self.from_source = metrics.counter("readahead.landed_from_source")
        self.failed = metrics.counter("readahead.failed")
        self.abandoned = metrics.counter("readahead.abandoned")

    def ended(self, owned: TileClaims, from_disk: int) -> None:
        landed = sum(claim.future.exception() is None for claim in owned.values())
        self.from_disk.add(from_disk)
        self.from_source.add(landed - from_disk)
        self.failed.add(len(owned) - landed)


def _is_single_tile(image: AssociatedImage, info: InstanceInfo) -> bool:
    return len(image.tiles) == 1 and (
        info.pixels.columns >= info.total_width and info.pixels.rows >= info.total_height
    )


def _group_by_instance(frames: Iterable[FrameRef]) -> list[tuple[str, list[int]]]:
    grouped: dict[str, list[int]] = defaultdict(list)
    for frame in frames:
        grouped[frame.instance_uid].append(frame.number)
    return [(uid, sorted(numbers)) for uid, numbers in grouped.items()]


def _chunks(numbers: list[int], size: int) -> Iterable[list[int]]:
    for start in range(0, len(numbers), size):
        yield numbers[start : start + size]
