"""Tile bytes on demand: caches first, then one batched DICOMweb request per instance.

Concurrent requests for the same frame share one fetch (single-flight). Frames are
converted to the served JPEG bytes (`idcfs.tiles.convert`) before they are cached,
so a cached tile costs no CPU to serve again.

Where a tile can be: the memory cache (tiles that were read), the staging area (tiles
read ahead and not read yet: a separate bounded LRU, so read-ahead never evicts what
readers use; a read moves a tile to the memory cache), and the disk cache.
"""

from __future__ import annotations

import logging
import sys
from collections import Counter, defaultdict
from collections.abc import Hashable, Iterable, Sequence
from concurrent.futures import Future

import numpy as np

from idcfs.cache.disk import DiskCache
from idcfs.cache.memory import ByteLRU
from idcfs.cache.sizes import TileSizes
from idcfs.errors import DecodeError, FetchError
from idcfs.fetch.claims import SingleFlight, wait
from idcfs.fetch.coalesce import CoalesceSettings, RequestCoalescer
from idcfs.slide.model import AssociatedImage, FrameRef, InstanceInfo, Slide
from idcfs.source.dicomweb import DicomWebClient, Frame
from idcfs.tiles.convert import (
    DEFAULT_QUALITY,
    TileDecodeError,
    decode_frame,
    encode_jpeg,
    served_jpeg,
    to_8bit,
)

log = logging.getLogger(__name__)

MAX_FRAMES_PER_REQUEST = 64


def tile_key(slide: Slide, frame: FrameRef) -> Hashable:
    """The cache key of one served tile."""
    return (slide.series_uid, frame.instance_uid, frame.number)


class TileLoader:
    """Fetches, converts and caches tiles; thread-safe, blocking."""

    def __init__(
        self,
        client: DicomWebClient,
        cache: ByteLRU,
        quality: int = DEFAULT_QUALITY,
        max_frames_per_request: int = MAX_FRAMES_PER_REQUEST,
        staged: ByteLRU | None = None,
        disk: DiskCache | None = None,
        demand: CoalesceSettings | None = None,
    ) -> None:
        self.client = client
        self.cache = cache
        self.staged = staged if staged is not None else ByteLRU(64 << 20)
        self.disk = disk
        self.sizes = TileSizes(disk) if disk is not None else None
        self.quality = quality
        self.max_frames_per_request = max_frames_per_request
        self._flights: SingleFlight[bytes] = SingleFlight()
        self._demand = RequestCoalescer(self._fetch_for_reading, self.abandon_claimed, demand)
        self.frames_fetched = 0
        self.frames_per_request: Counter[int] = Counter()
        self.disk_hits = 0

    def tile(self, slide: Slide, frame: FrameRef) -> bytes:
        """The served bytes of one tile (may block on disk or network).

        From memory; else from a fetch already under way (read-ahead); else from the
        disk cache; else in a request shared with other readers of the same instance
        (`RequestCoalescer`). The tile is claimed before the disk is read, so a tile is
        read from disk or fetched once however many ask."""
        found = self.cached(slide, frame)
        if found is not None:
            return found
        future, owner = self._flights.claim(tile_key(slide, frame))
        if owner:
            self._load(slide, frame, future)
        data = wait(future, self._flights.wait_timeout)
        if not owner:
            self.cached(slide, frame)  # a tile read ahead and now read: keep it
        return data

    def in_flight(self, slide: Slide, frame: FrameRef) -> Future[bytes] | None:
        """The future of a tile being read from disk or fetched, else None."""
        return self._flights.running(tile_key(slide, frame))

    def cached(self, slide: Slide, frame: FrameRef) -> bytes | None:
        """A tile from memory (a staged tile moves to the memory cache), never blocking."""
        key = tile_key(slide, frame)
        found = self.cache.get(key)
        if found is None:
            found = self.staged.pop(key)
            if found is not None:
                self.cache.put(key, found)
        return found

    def holds(self, slide: Slide, frame: FrameRef) -> bool:
        """Whether a tile is in memory (cached or staged) or being fetched."""
        key = tile_key(slide, frame)
        return key in self.cache or key in self.staged or self._flights.running(key) is not None

    def is_staged(self, slide: Slide, frame: FrameRef) -> bool:
        """Whether a tile was read ahead and not read since."""
        return tile_key(slide, frame) in self.staged

    def claim_for_prefetch(
        self, slide: Slide, frames: Sequence[FrameRef]
    ) -> dict[FrameRef, Future[bytes]]:
        """Claim tiles nobody has or fetches (never blocks); the caller must pass the
        result to `fetch_claimed` or `abandon_claimed`. Readers of a claimed tile wait for
        that fetch instead of sending their own request."""
        owned: dict[FrameRef, Future[bytes]] = {}
        for frame in frames:
            key = tile_key(slide, frame)
            if key in self.cache or key in self.staged:
                continue
            future, owner = self._flights.claim(key)
            if owner:
                owned[frame] = future
        return owned

    def fetch_claimed(self, slide: Slide, owned: dict[FrameRef, Future[bytes]]) -> None:
        """Fetch claimed tiles into the staging area (disk cache first); always resolves."""
        try:
            on_disk = self._staged_from_disk(slide, list(owned))
            network: dict[FrameRef, Future[bytes]] = {}
            for frame, future in owned.items():
                data = on_disk.get(frame)
                if data is None:
                    network[frame] = future
                else:
                    future.set_result(data)
            self._fetch_owned(slide, network, self.staged)
        finally:
            self._release(slide, owned)

    def known_size(self, slide: Slide, frame: FrameRef) -> int | None:
        """The size of a tile the disk cache holds (from its size index), else None."""
        if self.sizes is None:
            return None
        return self.sizes.get(self._instance_key(slide, frame), frame.number)

    def close(self) -> None:
        """Stop sending demand requests (readers still waiting get an error); write the
        disk cache's size index."""
        self._demand.close()
        if self.sizes is not None:
            self.sizes.flush()

    def abandon_claimed(self, slide: Slide, owned: dict[FrameRef, Future[bytes]]) -> None:
        """Give claimed tiles up unfetched (shutdown); a waiting reader gets an error."""
        try:
            raise FetchError("read-ahead abandoned at unmount")
        except FetchError:
            self._release(slide, owned)

    def _from_disk(self, slide: Slide, frame: FrameRef) -> bytes | None:
        if self.disk is None:
            return None
        data = self.disk.get(self.disk_key(slide, frame))
        if data is not None:
            self._found_on_disk(slide, frame, data, self.cache)
        return data

    def _staged_from_disk(self, slide: Slide, frames: list[FrameRef]) -> dict[FrameRef, bytes]:
        if self.disk is None:
            return {}
        keys = {self.disk_key(slide, frame): frame for frame in frames}
        found = {keys[key]: data for key, data in self.disk.get_many(list(keys)).items()}
        for frame, data in found.items():
            self._found_on_disk(slide, frame, data, self.staged)
        return found

    def _found_on_disk(self, slide: Slide, frame: FrameRef, data: bytes, target: ByteLRU) -> None:
        self.disk_hits += 1
        target.put(tile_key(slide, frame), data)
        self._note_size(slide, frame, data)

    def _to_disk(self, slide: Slide, frame: FrameRef, data: bytes) -> None:
        if self.disk is not None:
            self.disk.put(self.disk_key(slide, frame), data)
            self._note_size(slide, frame, data)

    def _note_size(self, slide: Slide, frame: FrameRef, data: bytes) -> None:
        if self.sizes is not None:
            self.sizes.note(self._instance_key(slide, frame), frame.number, len(data))

    def disk_key(self, slide: Slide, frame: FrameRef) -> str:
        return f"tile/{slide.series_uid}/{frame.instance_uid}/{frame.number}/q{self.quality}"

    def _instance_key(self, slide: Slide, frame: FrameRef) -> str:
        return f"{slide.series_uid}/{frame.instance_uid}/q{self.quality}"

    def _load(self, slide: Slide, frame: FrameRef, future: Future[bytes]) -> None:
        """Resolve a claimed tile from memory (read ahead just now) or disk, or queue it
        for a request."""
        try:
            data = self.cached(slide, frame) or self._from_disk(slide, frame)
        except BaseException:
            self._release(slide, {frame: future})
            raise
        if data is None:
            self._demand.submit(slide, {frame: future})
        else:
            future.set_result(data)
            self._flights.finish(tile_key(slide, frame))

    def _fetch_for_reading(self, slide: Slide, owned: dict[FrameRef, Future[bytes]]) -> None:
        try:
            self._fetch_owned(slide, owned, self.cache)
        finally:
            self._release(slide, owned)

    def associated(self, slide: Slide, image: AssociatedImage) -> bytes:
        """A label / overview / thumbnail as one JPEG, stitched when stored as tiles."""
        info = slide.instances[image.instance_uid]
        if _is_single_tile(image, info):
            return self.tile(slide, image.tiles[0].frame)
        key = (slide.series_uid, image.instance_uid, "stitched")
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        data = self._flights.run(key, lambda: self._stitch(slide, image, info))
        self.cache.put(key, data)
        return data

    # -- fetching -----------------------------------------------------------------

    def _fetch_owned(
        self, slide: Slide, owned: dict[FrameRef, Future[bytes]], target: ByteLRU
    ) -> None:
        for instance_uid, numbers in _group_by_instance(owned):
            info = slide.instances[instance_uid]
            for batch in _chunks(numbers, self.max_frames_per_request):
                raw = self.client.frames(slide.study_uid, slide.series_uid, instance_uid, batch)
                self.frames_fetched += len(raw)
                self.frames_per_request[len(raw)] += 1
                for number, frame in zip(batch, raw, strict=True):
                    ref = FrameRef(instance_uid, number)
                    data = self._convert(frame, info, ref)
                    target.put(tile_key(slide, ref), data)
                    self._to_disk(slide, ref, data)
                    owned[ref].set_result(data)

    def _convert(self, frame: Frame, info: InstanceInfo, ref: FrameRef) -> bytes:
        syntax = frame.transfer_syntax or info.transfer_syntax
        try:
            return served_jpeg(frame.data, info.pixels, syntax, self.quality)
        except TileDecodeError as error:
            raise DecodeError(f"instance {ref.instance_uid} frame {ref.number}: {error}") from error

    def _release(self, slide: Slide, owned: dict[FrameRef, Future[bytes]]) -> None:
        error: BaseException | None = None
        for ref, future in owned.items():
            if not future.done():
                error = error or _current_error() or RuntimeError("tile not fetched")
                future.set_exception(error)
            self._flights.finish(tile_key(slide, ref))

    def _stitch(self, slide: Slide, image: AssociatedImage, info: InstanceInfo) -> bytes:
        numbers = [tile.frame.number for tile in image.tiles]
        raw: list[Frame] = []
        for batch in _chunks(numbers, self.max_frames_per_request):
            raw += self.client.frames(slide.study_uid, slide.series_uid, info.uid, batch)
        canvas: np.ndarray | None = None
        tile_h, tile_w = info.pixels.rows, info.pixels.columns
        for tile, frame in zip(image.tiles, raw, strict=True):
            try:
                syntax = frame.transfer_syntax or info.transfer_syntax
                pixels = decode_frame(frame.data, info.pixels, syntax)
            except TileDecodeError as error:
                raise DecodeError(f"{image.kind} of {slide.series_uid}: {error}") from error
            if canvas is None:
                shape = (info.total_height + tile_h, info.total_width + tile_w, *pixels.shape[2:])
                canvas = np.zeros(shape, dtype=pixels.dtype)
            top, left = tile.row * tile_h, tile.column * tile_w
            canvas[top : top + pixels.shape[0], left : left + pixels.shape[1]] = pixels
        if canvas is None:
            raise DecodeError(f"{image.kind} of {slide.series_uid} has no frames")
        cropped = canvas[: info.total_height, : info.total_width]
        return encode_jpeg(to_8bit(cropped, info.pixels), self.quality)


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


def _current_error() -> BaseException | None:
    return sys.exc_info()[1]
