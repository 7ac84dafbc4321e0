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
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future

from idcfs.cache.tiles import TileCache, tile_key
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
        self._demand = RequestCoalescer(self._fetch_for_reading, self.abandon_claimed, demand)
        self._frames_fetched = metrics.counter("frames_fetched")
        self._frames_per_request = metrics.histogram("frames_per_request")

    # -- reads ------------------------------------------------------------------------

    def tile(self, slide: Slide, frame: FrameRef) -> bytes:
        """The served bytes of one tile (may block on disk or network)."""
        found = self.tiles.for_reading(slide, frame)
        if found is not None:
            return found
        future, claim = self._claims.claim(tile_key(slide, frame))
        if claim is not None:
            self._load(slide, frame, claim)
        data = wait(future, self._claims.wait_timeout)
        if claim is None:
            self.tiles.for_reading(slide, frame)  # a tile read ahead and now read: keep it
        return data

    def in_flight(self, slide: Slide, frame: FrameRef) -> Future[bytes] | None:
        """The future of a tile being read from disk or fetched, else None."""
        return self._claims.running(tile_key(slide, frame))

    def cached(self, slide: Slide, frame: FrameRef) -> bytes | None:
        """A tile from memory (a staged tile moves to the memory cache), never blocking."""
        return self.tiles.for_reading(slide, frame)

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
            return cached
        data = self._claims.run(key, lambda: self._stitch(slide, image, info))
        self.tiles.memory.put(key, data)
        return data

    def associated_frame(self, slide: Slide, image: AssociatedImage) -> FrameRef | None:
        """The one stored frame an associated image is served as, unless it is stitched
        from several (kept in memory only)."""
        if _is_single_tile(image, slide.instances[image.instance_uid]):
            return image.tiles[0].frame
        return None

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

    def _load(self, slide: Slide, frame: FrameRef, claim: Claim[bytes]) -> None:
        """A claimed tile from memory (read ahead just now) or disk, else queued for a
        request shared with other readers of the instance."""
        try:
            data = self.tiles.for_reading(slide, frame)
            if data is None:
                data = self.tiles.from_disk(slide, [frame], staged=False).get(frame)
        except Exception as error:
            claim.fail(error)
            raise
        if data is None:
            self._demand.submit(slide, {frame: claim})
        else:
            claim.resolve(data)

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
        frames = self.source.frames(info, numbers)
        if info.transfer_syntax is None and frames:
            self.syntaxes.learn(info.uid, frames[0].transfer_syntax)
        self._frames_fetched.add(len(frames))
        self._frames_per_request.add(len(frames))
        return frames

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
