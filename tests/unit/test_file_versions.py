"""A file rewritten in place is never served from what was kept about its old version
(issue 13): locations carry the object's version, the header, frame index, series
metadata, tile and computed-file keys follow it, and a file changed during a mount is an error that
drops its series, never bytes cut at old offsets. Against a real folder
(`LocalFolderStore`) and the disk cache; the bucket's If-Match is in test_objects.py."""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import pytest

from idcfs.cache.disk import DiskCache
from idcfs.cache.memory import ByteLRU
from idcfs.cache.tiles import TileCache, tile_key
from idcfs.errors import FetchError, NotFoundError
from idcfs.fetch.loader import TileLoader
from idcfs.fetch.regions import Region, RegionReader
from idcfs.fetch.slides import SlideStore
from idcfs.fetch.tissue import TissueMasks
from idcfs.metrics import Metrics
from idcfs.slide.model import FrameRef, Slide
from idcfs.source.base import ChangingSeries
from idcfs.source.files import (
    FileFrameSource,
    HeaderReader,
    location_of,
    parse_location,
    revision_of,
)
from idcfs.source.folder import FolderCatalog
from idcfs.source.objects import LocalFolderStore, ObjectChanged, ObjectInfo
from tests.support.rewritten import reverse_frames, stored_frames
from tests.support.slides import generate_test_slides


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return generate_test_slides(tmp_path / "files", names=["jpeg_ybr"])[0].folder


class Mounted:
    """What one mount of `--files FOLDER --cache-dir DISK` builds of the file source."""

    def __init__(self, root: Path, disk: DiskCache) -> None:
        self.store = LocalFolderStore(root)
        headers = HeaderReader(self.store, disk)
        self.catalog = FolderCatalog(self.store, headers)
        self.source = FileFrameSource(self.store, self.catalog, disk, headers=headers)
        self.slides = SlideStore(self.source, disk)
        self.study_uid = self.catalog.studies()[0]
        self.series_uid = self.catalog.series(self.study_uid)[0].series_uid

    def slide(self) -> Slide:
        return self.slides.get(self.study_uid, self.series_uid)

    def frames(self, uid: str, numbers: list[int]) -> list[bytes]:
        return [frame.data for frame in self.source.frames(self.slide().instances[uid], numbers)]

    def reads(self) -> int:
        return self.store.statistics()["requests"].get("read", 0)


def largest(folder: Path) -> Path:
    return max(folder.iterdir(), key=lambda path: path.stat().st_size)


def uid_of(slide: Slide, path: Path, root: Path) -> str:
    key = path.relative_to(root).as_posix()
    return next(uid for uid, info in slide.instances.items()
                if parse_location(info.location).key == key)


@pytest.mark.parametrize("info", [
    ObjectInfo("a/b.dcm", 12),
    ObjectInfo("a#1/b#2.dcm", 0),
    ObjectInfo("a/b.dcm", 12, "1700000000123456789:42"),
    ObjectInfo("a#1/b#2", 9, '2025-01-02T03:04:05.000Z|"9b2c#|%20 x"'),
    ObjectInfo("a/7", 7, ""),
])
def test_locations_round_trip_with_and_without_versions(info: ObjectInfo) -> None:
    assert parse_location(location_of(info)) == info


def test_an_unversioned_location_is_what_it_was() -> None:
    """IDC's index names objects without a version: their cached headers, frame indexes
    and tiles keep the keys they had."""
    assert location_of(ObjectInfo("s/i.dcm", 5)) == "s/i.dcm#5"
    assert revision_of(ObjectInfo("s/i.dcm", 5)) == ""
    assert revision_of(ObjectInfo("s/i.dcm", 5, "1:2")) != revision_of(ObjectInfo("s/i.dcm", 5,
                                                                                   "1:3"))


def test_a_file_rewritten_at_the_same_size_is_read_again_after_a_remount(
        folder: Path, tmp_path: Path) -> None:
    disk = DiskCache(tmp_path / "cache", 1 << 30)
    first = Mounted(folder.parent, disk)
    path = largest(folder)
    uid = uid_of(first.slide(), path, folder.parent)
    count = len(stored_frames(path))
    assert first.frames(uid, list(range(1, count + 1))) == stored_frames(path)
    old = first.slide()
    new_frames = reverse_frames(path)

    again = Mounted(folder.parent, disk)
    assert again.frames(uid, list(range(1, count + 1))) == new_frames
    new = again.slide()
    assert new.instances[uid].location != old.instances[uid].location
    assert new.instances[uid].revision != old.instances[uid].revision != ""
    unchanged = [other for other in new.instances if other != uid]
    assert unchanged and all(new.instances[other] == old.instances[other] for other in unchanged)
    disk.close()


def test_an_unchanged_folder_is_served_from_the_disk_cache_after_a_remount(
        folder: Path, tmp_path: Path) -> None:
    disk = DiskCache(tmp_path / "cache", 1 << 30)
    first = Mounted(folder.parent, disk)
    uid = uid_of(first.slide(), largest(folder), folder.parent)
    first.frames(uid, [1])
    again = Mounted(folder.parent, disk)
    before = again.reads()
    again.slide()
    again.source.frame_size_hints(again.slide().instances[uid])
    assert again.reads() == before  # headers, metadata and the frame index: all kept
    disk.close()


def test_tile_keys_follow_the_file_version(folder: Path, tmp_path: Path) -> None:
    disk = DiskCache(tmp_path / "cache", 1 << 30)
    tiles = TileCache(ByteLRU(1 << 20), ByteLRU(1 << 20), disk, 90, Metrics())
    first = Mounted(folder.parent, disk)
    path = largest(folder)
    old = first.slide()
    uid = uid_of(old, path, folder.parent)
    other = next(other for other in old.instances if other != uid)
    reverse_frames(path)
    new = Mounted(folder.parent, disk).slide()
    changed, kept = FrameRef(uid, 1), FrameRef(other, 1)
    assert tiles.disk_key(new, changed) != tiles.disk_key(old, changed)
    assert tile_key(new, changed) != tile_key(old, changed)
    assert tiles.disk_key(new, kept) == tiles.disk_key(old, kept)  # its tiles stay cached
    tiles.keep(old, changed, b"old tile", staged=False)
    assert tiles.for_reading(new, changed) is None
    assert tiles.from_disk(new, [changed], staged=False) == {}
    disk.close()


def with_revisions(slide: Slide, revision_of_uid: dict[str, str]) -> Slide:
    """The slide with these instances' revisions (the others' are "")."""
    return dataclasses.replace(slide, instances={
        uid: dataclasses.replace(info, revision=revision_of_uid.get(uid, ""))
        for uid, info in slide.instances.items()})


def test_computed_files_are_keyed_by_the_slides_revision_and_unrevised_keys_are_as_before(
        folder: Path, tmp_path: Path) -> None:
    """A render and a tissue mask, computed for real into the disk cache, for the slide
    without revisions (DICOMweb, IDC: today's exact keys, so an existing cache hits) and
    for two slides that differ only in one instance's revision (each computed anew)."""
    disk = DiskCache(tmp_path / "cache", 1 << 30)
    listed = Mounted(folder.parent, disk)
    slide = listed.slide()
    uid = uid_of(slide, largest(folder), folder.parent)
    slides = [with_revisions(slide, {}), with_revisions(slide, {uid: "a"}),
              with_revisions(slide, {uid: "b"})]
    assert slides[0].revision == "" and "" != slides[1].revision != slides[2].revision
    series = slide.series_uid
    bare = [f"region/{series}/deepzoom/7/0_0.jpeg/0/1/0,0,1000,700/125x88/q97",
            f"tissue-mask/{series}/v1"]
    for number, revised in enumerate(slides, start=1):
        metrics = Metrics()  # a fresh memory cache, as a remount has
        tiles = TileCache(ByteLRU(32 << 20), ByteLRU(8 << 20), disk, 97, metrics)
        reader = RegionReader(TileLoader(listed.source, tiles, metrics), metrics)
        reader.jpeg(revised, (0, "1"), Region(0, 0, 1000, 700), 125, 88, "deepzoom/7/0_0.jpeg")
        TissueMasks(reader, tiles, metrics).png(revised)
        assert metrics.value("regions.rendered") == 1  # not the other slides' from disk
        assert metrics.value("tissue_masks.computed") == 1
        keys = [f"{key}/r{revised.revision}" if revised.revision else key for key in bare]
        assert disk.holds(keys) == set(keys), number
    assert disk.holds(bare) == set(bare)
    disk.close()


def test_a_file_changed_during_a_mount_is_an_error_and_its_series_is_read_again(
        folder: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    disk = DiskCache(tmp_path / "cache", 1 << 30)
    mounted = Mounted(folder.parent, disk)
    assert isinstance(mounted.source, ChangingSeries)
    path = largest(folder)
    old = mounted.slide()
    uid = uid_of(old, path, folder.parent)
    assert mounted.frames(uid, [1]) == stored_frames(path)[:1]
    new_frames = reverse_frames(path)
    with caplog.at_level(logging.WARNING), pytest.raises(ObjectChanged) as raised:
        mounted.frames(uid, [2, 3])
    assert isinstance(raised.value, FetchError) and not isinstance(raised.value, NotFoundError)
    assert "changed since it was listed" in caplog.text
    with pytest.raises(ObjectChanged):  # the old location never gives bytes again
        mounted.source.frames(old.instances[uid], [2])
    new = mounted.slide()  # dropped: listed and read again
    assert new is not old
    assert new.instances[uid].location != old.instances[uid].location
    count = len(new_frames)
    assert mounted.frames(uid, list(range(1, count + 1))) == new_frames
    assert Mounted(folder.parent, disk).frames(uid, list(range(1, count + 1))) == new_frames
    disk.close()


def test_a_header_read_of_a_changed_file_is_an_error(folder: Path, tmp_path: Path) -> None:
    """A file changed between the listing and its header read (no disk cache)."""
    store = LocalFolderStore(folder.parent)
    headers = HeaderReader(store)
    listed = store.list("")[0]
    path = folder.parent / listed.key
    reverse_frames(path)
    with pytest.raises(ObjectChanged):
        headers.header(listed, time.monotonic() + 5.0)
