"""SlideStore: one metadata load per series, and waiters bounded by the mount's --timeout."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from idcfs.errors import FetchError
from idcfs.fetch.slides import SlideStore
from idcfs.slide.model import Slide
from idcfs.source.base import InstanceMetadata
from tests.support.memory_source import MemorySource
from tests.support.slides import GeneratedSlide, generate_test_slides

WAIT_S = 0.2


class HeldMetadataSource(MemorySource):
    """A MemorySource whose series metadata waits until the test lets it go."""

    def __init__(self, files: list[Path]) -> None:
        super().__init__(files)
        self.entered = threading.Event()
        self.go_on = threading.Event()

    def series_metadata(self, study_uid: str, series_uid: str) -> list[InstanceMetadata]:
        self.entered.set()
        assert self.go_on.wait(30), "the test never let the metadata load go on"
        return super().series_metadata(study_uid, series_uid)


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> GeneratedSlide:
    return generate_test_slides(tmp_path_factory.mktemp("slides"), ["jpeg_rgb"])[0]


def test_a_waiter_gives_up_after_the_mount_timeout_while_the_load_goes_on(
    generated: GeneratedSlide,
) -> None:
    source = HeldMetadataSource(generated.files)
    store = SlideStore(source, wait_s=WAIT_S)
    loaded: list[Slide] = []
    loader = threading.Thread(
        target=lambda: loaded.append(store.get(generated.study_uid, generated.series_uid)))
    loader.start()
    try:
        assert source.entered.wait(10)
        with pytest.raises(FetchError, match=f"gave up waiting {WAIT_S:g} s"):
            store.get(generated.study_uid, generated.series_uid)
    finally:
        source.go_on.set()
        loader.join(10)
    assert loaded and loaded[0].series_uid == generated.series_uid
    assert store.get(generated.study_uid, generated.series_uid) is loaded[0]
    assert source.metadata_requests == 1



class OtherSource(MemorySource):
    """The same slides from another source: another description, other locations."""

    @property
    def description(self) -> str:
        return "another memory"


def test_kept_metadata_is_the_source_s_own(generated: GeneratedSlide, tmp_path: Path) -> None:
    from idcfs.cache.disk import DiskCache

    disk = DiskCache(tmp_path / "cache", 1 << 30)
    try:
        first = MemorySource(generated.files)
        SlideStore(first, disk).get(generated.study_uid, generated.series_uid)
        again = MemorySource(generated.files)
        SlideStore(again, disk).get(generated.study_uid, generated.series_uid)
        assert again.metadata_requests == 0  # same source: from the disk cache
        other = OtherSource(generated.files)
        SlideStore(other, disk).get(generated.study_uid, generated.series_uid)
        assert other.metadata_requests == 1  # its locations are not the first one's
    finally:
        disk.close()
