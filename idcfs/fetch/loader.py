"""Tile bytes on demand: cache first, then one batched DICOMweb request per instance.

Concurrent requests for the same frame share one fetch (single-flight). Frames are
converted to the served JPEG bytes (`idcfs.tiles.convert`) before they are cached,
so a cached tile costs no CPU to serve again.
"""

from __future__ import annotations

import logging
import sys
from collections import defaultdict
from collections.abc import Hashable, Iterable, Sequence
from concurrent.futures import Future

import numpy as np

from idcfs.cache.memory import ByteLRU
from idcfs.errors import DecodeError
from idcfs.fetch.dicomweb import DicomWebClient, Frame
from idcfs.singleflight import SingleFlight, wait
from idcfs.slide.model import AssociatedImage, FrameRef, InstanceInfo, Slide
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
    ) -> None:
        self.client = client
        self.cache = cache
        self.quality = quality
        self.max_frames_per_request = max_frames_per_request
        self._flights: SingleFlight[bytes] = SingleFlight()

    def tile(self, slide: Slide, frame: FrameRef) -> bytes:
        """The served bytes of one tile."""
        cached = self.cache.get(tile_key(slide, frame))
        if cached is not None:
            return cached
        return self.tiles(slide, [frame])[frame]

    def cached(self, slide: Slide, frame: FrameRef) -> bytes | None:
        return self.cache.get(tile_key(slide, frame))

    def tiles(self, slide: Slide, frames: Sequence[FrameRef]) -> dict[FrameRef, bytes]:
        """Served bytes of several tiles, fetching the missing ones in batches."""
        results: dict[FrameRef, bytes] = {}
        owned: dict[FrameRef, Future[bytes]] = {}
        shared: dict[FrameRef, Future[bytes]] = {}
        for frame in frames:
            cached = self.cache.get(tile_key(slide, frame))
            if cached is not None:
                results[frame] = cached
                continue
            future, owner = self._flights.claim(tile_key(slide, frame))
            (owned if owner else shared)[frame] = future
        try:
            self._fetch_owned(slide, owned)
        finally:
            self._release(slide, owned)
        for frame, future in {**owned, **shared}.items():
            results[frame] = wait(future, self._flights.wait_timeout)
        return results

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

    def _fetch_owned(self, slide: Slide, owned: dict[FrameRef, Future[bytes]]) -> None:
        for instance_uid, numbers in _group_by_instance(owned):
            info = slide.instances[instance_uid]
            for batch in _chunks(numbers, self.max_frames_per_request):
                raw = self.client.frames(slide.study_uid, slide.series_uid, instance_uid, batch)
                for number, frame in zip(batch, raw, strict=True):
                    ref = FrameRef(instance_uid, number)
                    data = self._convert(frame, info, ref)
                    self.cache.put(tile_key(slide, ref), data)
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
