"""A file whose content the region reader renders: a DeepZoom tile that is no stored
tile, a IIIF region at a size. Both views serve the same kind of file, so it is here."""

from __future__ import annotations

from concurrent.futures import Future

from idcfs.fetch.regions import GridKey, Region, RegionReader
from idcfs.fs.nodes import FetchedFile
from idcfs.slide.model import Slide


class RenderedFile(FetchedFile):
    """A region of a slide at a size, rendered on first read and kept like a tile
    (`RegionReader.jpeg`); its placeholder size until then, its exact size after."""

    def __init__(self, name: str, placeholder: int, reader: RegionReader, slide: Slide,
                 grid_key: GridKey, region: Region, size: tuple[int, int], key: str) -> None:
        """`key` names the render in the caches."""
        super().__init__(name, placeholder)
        self._request = (slide, grid_key, region, size[0], size[1], key)
        self._reader = reader

    def fetch(self) -> bytes:
        return self._reader.jpeg(*self._request)

    def peek(self) -> bytes | None:
        return self._reader.cached(*self._request)

    def pending(self) -> Future[bytes] | None:
        return self._reader.in_flight(*self._request)

    def content_waited_for(self, future: Future[bytes]) -> bytes:
        data = self._reader.waited(future)
        self.exact_size = len(data)
        return data
