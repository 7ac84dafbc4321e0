"""A slide as converters write them, through a real mount over its own Orthanc (issue 12, 4c).

`converter_quirks` (tests/support/slides.py): a TILED_SPARSE JPEG level at Z 0 and a
TILED_FULL JPEG 2000 level with no Z whose edge frames are cropped to the image, as
wsidicomizer's `add_missing_levels` writes them. It must show as one focal plane (tiles
directly in level-N/) and every cropped edge tile must be a JPEG of the size it holds.
The slide goes to an Orthanc of this module's own, so the session's shared server, whose
slides other tests count, never holds it.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from pathlib import Path

import imagecodecs
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.encaps import generate_frames

from idcfs.dicom.frames import strip_jpeg_padding
from idcfs.tiles.convert import psnr
from tests.support.fixtures import orthanc_holding
from tests.support.mounting import series_dir
from tests.support.orthanc import OrthancServer
from tests.support.slides import GeneratedSlide, converter_quirks


@pytest.fixture(scope="module")
def quirks_slide(tmp_path_factory: pytest.TempPathFactory) -> GeneratedSlide:
    return converter_quirks(tmp_path_factory.mktemp("quirks"))


@pytest.fixture(scope="module")
def quirks_server(quirks_slide: GeneratedSlide) -> Iterator[OrthancServer]:
    with orthanc_holding(quirks_slide.files) as server:
        yield server


@pytest.fixture
def folder(quirks_server, quirks_slide, mount_idcfs) -> Path:  # type: ignore[no-untyped-def]
    return series_dir(mount_idcfs(quirks_server.dicomweb_url).path, quirks_slide)


def stored_frames(path: Path) -> list[bytes]:
    """The frames as stored, without DICOM's pad byte (a served JPEG ends at its EOI)."""
    ds = pydicom.dcmread(path)
    return [strip_jpeg_padding(frame) for frame in
            generate_frames(ds.PixelData, number_of_frames=int(ds.NumberOfFrames))]


def test_mixed_sparse_and_full_levels_are_one_focal_plane(folder: Path) -> None:
    assert sorted(os.listdir(folder)) == ["level-0", "level-1", "slide.json", "tissue-mask.png"]
    names = [f"{column}_{row}.jpg" for row in range(2) for column in range(3)] + ["tissue.txt"]
    assert os.listdir(folder / "level-0") == names
    assert os.listdir(folder / "level-1") == names
    described = json.loads((folder / "slide.json").read_text())
    assert described["focal_planes"] == [{"index": 0, "z_offset_um": 0.0}]
    assert described["tile_directories"] == []


def test_sparse_jpeg_tiles_are_the_stored_frames(folder: Path, quirks_slide) -> None:  # type: ignore[no-untyped-def]
    frames = stored_frames(quirks_slide.files[0])
    positions = quirks_slide.levels[0].tiles
    for (column, row), frame in zip(positions, frames, strict=True):
        assert (folder / "level-0" / f"{column}_{row}.jpg").read_bytes() == frame


def test_cropped_jpeg2000_edge_tiles_are_served_at_their_size(folder: Path, quirks_slide) -> None:  # type: ignore[no-untyped-def]
    frames = stored_frames(quirks_slide.files[1])
    for index, frame in enumerate(frames):
        column, row = index % 3, index // 3
        source = np.asarray(imagecodecs.jpeg2k_decode(frame))
        served = (folder / "level-1" / f"{column}_{row}.jpg").read_bytes()
        shown = np.asarray(Image.open(io.BytesIO(served)).convert("RGB"))
        size = (72 if row else 128, 44 if column == 2 else 128, 3)
        assert shown.shape == source.shape == size
        assert psnr(shown, source) >= 40
