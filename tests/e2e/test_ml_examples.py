"""The ML loader recipe (issue 15, 5): examples/multiprocessing_tiles.py and
examples/torch_tiles.py run as a user runs them, 8 workers over a real mount of an
Orthanc of this module's own, and every tile they yield equals the frame fetched from
Orthanc directly (dicomweb-client), decoded by Pillow. The torch example is skipped,
saying why, only when torch is not installed.

The slides are JPEG (YBR) ones, served as stored: a plain pyramid, a sparse level and
two focal planes (plane directories). The server is this module's own, so a walk of
`studies/` finds exactly these.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import io
import json
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.support.expected import frames_by_path
from tests.support.fixtures import orthanc_holding
from tests.support.mounting import named, series_dir
from tests.support.orthanc import OrthancServer
from tests.support.slides import GeneratedSlide, generate_test_slides
from tests.support.tissue_slides import TissueSlide, tissue_brightfield

EXAMPLES = Path(__file__).parents[2] / "examples"
SLIDE_NAMES = ["jpeg_ybr", "sparse", "focal_planes"]
NESTED = {"focal_planes": True}  # tiles one directory deeper, one per plane
TILE = 256  # every tile of these slides is stored 256 x 256 (edges padded)
NO_TORCH = "torch is not installed (optional: pip install torch); its example is not run"


@dataclass(frozen=True)
class Yielded:
    path: Path
    digest: str
    shape: str


@pytest.fixture(scope="module")
def slides(tmp_path_factory: pytest.TempPathFactory) -> list[GeneratedSlide]:
    return generate_test_slides(tmp_path_factory.mktemp("ml-slides"), SLIDE_NAMES)


@pytest.fixture(scope="module")
def server(slides: list[GeneratedSlide]):  # type: ignore[no-untyped-def]
    with orthanc_holding(path for slide in slides for path in slide.files) as orthanc:
        yield orthanc


@pytest.fixture(scope="module")
def tissue(tmp_path_factory: pytest.TempPathFactory) -> TissueSlide:
    """A slide with tissue only in a known disc and rectangle (tiles of 128)."""
    return tissue_brightfield(tmp_path_factory.mktemp("ml-tissue"))


@pytest.fixture(scope="module")
def tissue_server(tissue: TissueSlide):  # type: ignore[no-untyped-def]
    with orthanc_holding(tissue.slide.files) as orthanc:
        yield orthanc


def expected_pixels(server: OrthancServer, mount: Path, slides: list[GeneratedSlide],
                    level: str = "level-0/") -> dict[Path, np.ndarray]:
    """Every tile of `level` of every slide, by its path in the mount: the stored frame
    fetched from Orthanc directly, decoded by Pillow."""
    found = {}
    for slide in slides:
        frames = frames_by_path(server.dicomweb_url, slide, NESTED.get(slide.name, False))
        for relative, frame in frames.items():
            if relative.startswith(level):
                path = series_dir(mount, slide) / relative
                found[path] = np.asarray(Image.open(io.BytesIO(frame)).convert("RGB"))
    return found


def run_example(script: str, mount: Path, manifest: Path, *options: str, size: int = TILE) -> str:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / script), str(mount), "--manifest", str(manifest),
         "--size", str(size), *options],
        capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def read_manifest(manifest: Path) -> list[Yielded]:
    lines = manifest.read_text().splitlines()
    return [Yielded(Path(path), digest, shape)
            for path, digest, shape in (line.split("\t") for line in lines)]


def assert_each_epoch_yields(yielded: list[Yielded], expected: dict[Path, np.ndarray],
                             epochs: int, tile: int = TILE) -> None:
    """Every expected tile `epochs` times, no other, each as the server's frame."""
    assert Counter(item.path for item in yielded) == {path: epochs for path in expected}
    for item in yielded:
        pixels = expected[item.path]
        assert item.shape == f"{tile}x{tile}x3" and pixels.shape == (tile, tile, 3)
        assert item.digest == _sha256(pixels), f"{item.path} differs from the server's frame"


@pytest.mark.parametrize("script", ["multiprocessing_tiles.py", "torch_tiles.py"])
def test_example_yields_every_tile_as_the_server_stores_it(
    script, server, slides, mount_idcfs, tmp_path,  # type: ignore[no-untyped-def]
) -> None:
    if script.startswith("torch") and importlib.util.find_spec("torch") is None:
        pytest.skip(NO_TORCH)
    mount = mount_idcfs(server.dicomweb_url)
    output = run_example(script, mount.path, tmp_path / "manifest.tsv",
                         "--order", "random", "--epochs", "2", "--workers", "8")
    expected = expected_pixels(server, mount.path, slides)
    yielded = read_manifest(tmp_path / "manifest.tsv")
    assert_each_epoch_yields(yielded, expected, epochs=2)
    first, second = yielded[: len(expected)], yielded[len(expected):]
    assert {item.path for item in first} == set(expected), "an epoch mixed with the next"
    assert [item.path for item in first] != [item.path for item in second], "not reshuffled"
    assert output.count(" tiles/s ") == 2, output


@pytest.mark.parametrize("script", ["multiprocessing_tiles.py", "torch_tiles.py"])
def test_sequential_order_is_frame_order_of_the_catalogs_series(
    script, server, slides, mount_idcfs, tmp_path,  # type: ignore[no-untyped-def]
) -> None:
    if script.startswith("torch") and importlib.util.find_spec("torch") is None:
        pytest.skip(NO_TORCH)
    chosen = [slide for slide in slides if slide.name in ("jpeg_ybr", "focal_planes")]
    catalog = tmp_path / "cohort.csv"
    with catalog.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["StudyInstanceUID", "SeriesInstanceUID"])
        writer.writerows([slide.study_uid, slide.series_uid] for slide in chosen)
    mount = mount_idcfs(server.dicomweb_url)
    run_example(script, mount.path, tmp_path / "manifest.tsv", "--catalog", str(catalog),
                "--order", "sequential", "--level", "1", "--workers", "8", "--batch-size", "2")
    expected = expected_pixels(server, mount.path, chosen, level="level-1/")
    yielded = read_manifest(tmp_path / "manifest.tsv")
    assert_each_epoch_yields(yielded, expected, epochs=1)
    assert [item.path for item in yielded] == list(expected), "not in frame order"


def test_listing_the_paths_fetches_no_frame(server, slides, mount_idcfs) -> None:  # type: ignore[no-untyped-def]
    """The paths come from listings and slide.json: an epoch pays for its tiles, the
    listing for none. `--mpp` picks each slide's level nearest a resolution."""
    mount = mount_idcfs(server.dicomweb_url)
    sys.path.insert(0, str(EXAMPLES))
    try:
        import tile_paths
    finally:
        sys.path.remove(str(EXAMPLES))
    base = json.loads((series_dir(mount.path, slides[0]) / "slide.json").read_text())
    finest_um = sum(base["levels"][0]["pixel_spacing_mm"]) * 500
    parser = argparse.ArgumentParser()
    tile_paths.add_options(parser)
    paths = tile_paths.selected_paths(parser.parse_args(
        ["--mpp", str(finest_um * 2.2), str(mount.path)]))
    statistics = json.loads((mount.path / ".idcfs-stats.json").read_text())
    assert statistics["frames_fetched"] == 0, statistics
    by_series = {slide.series_uid: slide.name for slide in slides}
    levels = {(by_series[path.relative_to(mount.path).parts[2]],
               path.relative_to(mount.path).parts[3]) for path in paths}
    # downsample 2 is nearest 2.2; the sparse slide has level 0 alone
    assert levels == {("jpeg_ybr", "level-1"), ("focal_planes", "level-1"),
                      ("sparse", "level-0")}, levels
    expected = expected_pixels(server, mount.path, slides, level="level-1/")
    expected |= expected_pixels(server, mount.path, [named(slides, "sparse")], level="level-0/")
    assert sorted(paths) == sorted(expected)


def test_tissue_tiles_are_those_tissue_txt_names(
    tissue, tissue_server, mount_idcfs, tmp_path,  # type: ignore[no-untyped-def]
) -> None:
    """--tiles tissue: exactly the tiles level-0/tissue.txt names (every tile with
    tissue among them, most of the background left out), each as the server stores it."""
    mount = mount_idcfs(tissue_server.dicomweb_url)
    level = series_dir(mount.path, tissue.slide) / "level-0"
    run_example("multiprocessing_tiles.py", mount.path, tmp_path / "manifest.tsv",
                "--tiles", "tissue", "--order", "sequential", "--workers", "8", size=128)
    listed = (level / "tissue.txt").read_text().splitlines()
    every = expected_pixels(tissue_server, mount.path, [tissue.slide])
    expected = {level / name: every[level / name] for name in listed}
    yielded = read_manifest(tmp_path / "manifest.tsv")
    assert_each_epoch_yields(yielded, expected, epochs=1, tile=128)
    truth = tissue.truth(0)
    with_tissue = {level / f"{column}_{row}.jpg" for (column, row), held in truth.items() if held}
    background = {level / f"{column}_{row}.jpg" for (column, row), held in truth.items()
                  if held is False}
    assert with_tissue <= expected.keys(), "a tile with tissue is missing"
    assert len(background & expected.keys()) <= 0.05 * len(background)


def _sha256(pixels: np.ndarray) -> str:
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(pixels).tobytes()).hexdigest()
