"""Tile bytes through a real mount, checked against frames fetched straight from Orthanc."""

from __future__ import annotations

import io
import mmap
import shutil
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from idcfs.tiles.convert import psnr
from idcfs.tiles.jpeg_markers import header_segments
from tests.support.expected import expected_tiles, frames_by_path, read_headers
from tests.support.fixtures import REAL_DATA
from tests.support.mounting import named, series_dir

APP14 = 0xEE


@pytest.fixture
def mounted(orthanc, mount_idcfs):  # type: ignore[no-untyped-def]
    return mount_idcfs(orthanc.dicomweb_url)


def without_app14(data: bytes) -> bytes:
    for segment in header_segments(data):
        if segment.marker == APP14:
            return data[: segment.start] + data[segment.end :]
    return data


@pytest.mark.parametrize(
    ("name", "nested"),
    [("jpeg_ybr", False), ("sparse", False), ("focal_planes", True), ("optical_paths", True)],
)
def test_jpeg_tiles_are_the_stored_frames(mounted, orthanc, test_slides, name, nested) -> None:
    slide = named(test_slides, name)
    folder = series_dir(mounted.path, slide)
    for relative, frame in frames_by_path(orthanc.dicomweb_url, slide, nested).items():
        assert (folder / relative).read_bytes() == frame, relative


def test_real_camelyon_tiles_are_the_stored_frames(mounted, orthanc) -> None:
    path = REAL_DATA / "ezwsi__multiframe_camelyon_challenge_image.dcm"
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    slide = type("Real", (), {"files": [path], "study_uid": ds.StudyInstanceUID,
                              "series_uid": ds.SeriesInstanceUID})
    folder = series_dir(mounted.path, slide)
    expected = frames_by_path(orthanc.dicomweb_url, slide, False)
    assert len(expected) == 15
    for relative, frame in expected.items():
        assert (folder / relative).read_bytes() == frame


def test_rgb_tiles_gain_app14_and_decode_in_true_colours(mounted, orthanc, test_slides) -> None:
    slide = named(test_slides, "jpeg_rgb")
    folder = series_dir(mounted.path, slide)
    for relative, frame in frames_by_path(orthanc.dicomweb_url, slide, False).items():
        served = (folder / relative).read_bytes()
        assert any(s.marker == APP14 for s in header_segments(served)), relative
        assert without_app14(served) == frame, "only the APP14 marker may be added"
        true_rgb = _decode_as_rgb_components(frame)
        shown = np.asarray(Image.open(folder / relative).convert("RGB"))
        assert psnr(shown, true_rgb) > 45, relative
        naive = np.asarray(Image.open(io.BytesIO(frame)).convert("RGB"))
        assert psnr(naive, true_rgb) < 30, "test slide must really need the marker"


def _decode_as_rgb_components(frame: bytes) -> np.ndarray:
    import imagecodecs

    return imagecodecs.jpeg8_decode(frame, colorspace="RGB", outcolorspace="RGB")


@pytest.mark.parametrize("name", ["jpeg2000", "jpeg2000_lossless", "uncompressed16"])
def test_transcoded_tiles_keep_40_db(mounted, orthanc, test_slides, name) -> None:
    slide = named(test_slides, name)
    folder = series_dir(mounted.path, slide)
    sources = _decoded_source_frames(slide.files)
    for tile in expected_tiles(read_headers(slide.files), False):
        served = Image.open(folder / tile.relative_path)
        assert served.format == "JPEG"
        source = sources[tile.instance_uid][tile.frame_number - 1]
        shown = np.asarray(served)
        assert shown.shape[:2] == source.shape[:2]
        assert psnr(shown, source) >= 40, tile.relative_path


def _decoded_source_frames(files: list[Path]) -> dict[str, np.ndarray]:
    """Pixels decoded by pydicom (not idcfs), scaled to 8 bits by the window if any."""
    decoded = {}
    for path in files:
        ds = pydicom.dcmread(path)
        if str(ds.ImageType[2]).upper() != "VOLUME":
            continue
        array = ds.pixel_array.reshape(int(ds.NumberOfFrames), ds.Rows, ds.Columns, -1)
        if ds.BitsAllocated > 8:
            low = float(ds.WindowCenter) - 0.5 - (float(ds.WindowWidth) - 1) / 2
            array = np.clip(np.rint((array - low) / (float(ds.WindowWidth) - 1) * 255), 0, 255)
        decoded[ds.SOPInstanceUID] = array.astype(np.uint8).squeeze(-1) if array.shape[-1] == 1 \
            else array.astype(np.uint8)
    return decoded


def test_every_tool_gets_exact_bytes(mounted, orthanc, test_slides, tmp_path) -> None:
    """cat, cp, tar, rsync, open().read(), shutil.copy, mmap and Pillow, each on tiles
    nobody has read yet, get exactly the stored bytes; stat then shows the exact size."""
    slide = named(test_slides, "jpeg_ybr")
    folder = series_dir(mounted.path, slide)
    expected = frames_by_path(orthanc.dicomweb_url, slide, False)
    level1 = sorted(p for p in expected if p.startswith("level-1/"))
    level0 = sorted(p for p in expected if p.startswith("level-0/"))
    readers = {
        "cat": lambda p: subprocess.run(["cat", str(p)], capture_output=True, check=True).stdout,
        "cp": lambda p: _via_copy(["cp", str(p), str(tmp_path / "cp.jpg")], tmp_path / "cp.jpg"),
        "rsync": lambda p: _via_copy(["rsync", str(p), str(tmp_path / "rs.jpg")],
                                     tmp_path / "rs.jpg"),
        "read": _read_with_open,
        "shutil": lambda p: Path(shutil.copy(p, tmp_path / "sh.jpg")).read_bytes(),
        "mmap": _read_with_mmap,
        "pillow": lambda p: _pillow_check(p, expected),
    }
    for (tool, reader), relative in zip(readers.items(), level0, strict=False):
        assert reader(folder / relative) == expected[relative], tool
        assert (folder / relative).stat().st_size == len(expected[relative]), tool
    _check_tar(folder, level1, expected, tmp_path)


def _via_copy(command: list[str], target: Path) -> bytes:
    subprocess.run(command, check=True, capture_output=True)
    return target.read_bytes()


def _read_with_open(path: Path) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


def _read_with_mmap(path: Path) -> bytes:
    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as m:
        return bytes(m)


def _pillow_check(path: Path, expected: dict[str, bytes]) -> bytes:
    with Image.open(path) as image:
        image.load()
        assert image.size == (256, 256)
    return path.read_bytes()


def _check_tar(folder: Path, level1: list[str], expected: dict[str, bytes], tmp: Path) -> None:
    archive = tmp / "level1.tar"
    subprocess.run(["tar", "cf", str(archive), "-C", str(folder), "level-1"], check=True)
    with tarfile.open(archive) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()
                   if m.isfile() and m.name.endswith(".jpg")}
    assert members == {relative: expected[relative] for relative in level1}


def test_associated_images_decode(mounted, test_slides) -> None:
    folder = series_dir(mounted.path, named(test_slides, "jpeg_ybr"))
    for name in ("label.jpg", "overview.jpg", "thumbnail.jpg"):
        with Image.open(folder / name) as image:
            image.load()
            assert image.format == "JPEG"
        assert (folder / name).stat().st_size == len((folder / name).read_bytes())
