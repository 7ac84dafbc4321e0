"""Tissue-aware tile lists through a real mount over a real Orthanc of this module's own
(tests/support/tissue_slides.py: tissue only in a known disc and rectangle), counted at a
relay: tissue.txt of every level lists every tile with tissue and, on the levels with
enough tiles for a percentage (0 and 1), at most 5 % of the background tiles; computing
it fetches frames of one low-resolution instance only (level-1, 1024 pixels wide: the
coarsest with a long side of 1,024); listing sends nothing; the mask is kept on disk
across mounts; a failed read is EIO with a log line, not a missing file."""

from __future__ import annotations

import errno
import io
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from tests.support.fixtures import orthanc_holding
from tests.support.mounting import series_dir, stop_mount
from tests.support.orthanc import OrthancServer
from tests.support.relay import HttpRelay
from tests.support.tissue_slides import TissueSlide, tissue_brightfield, tissue_fluorescence

MASK_LEVEL = 1  # level-1 (1024 x 768): the coarsest whose long side has 1,024 pixels
BACKGROUND_SHARE = 0.05  # of a level's background tiles, at most, in its tissue.txt
COUNTED_LEVELS = (0, 1)  # levels 2 and 3 have 2 and 1 background tiles: no percentage


@pytest.fixture(scope="module")
def slides(tmp_path_factory: pytest.TempPathFactory) -> dict[str, TissueSlide]:
    folder = tmp_path_factory.mktemp("tissue-slides")
    made = [tissue_brightfield(folder), tissue_fluorescence(folder)]
    return {made_slide.slide.name: made_slide for made_slide in made}


@pytest.fixture(scope="module")
def server(slides: dict[str, TissueSlide]) -> Iterator[OrthancServer]:
    files = [path for tissue in slides.values() for path in tissue.slide.files]
    with orthanc_holding(files) as orthanc:
        yield orthanc


@pytest.fixture
def relay(server: OrthancServer) -> Iterator[HttpRelay]:
    with HttpRelay(server.host, server.port) as proxy:
        proxy.reset()
        yield proxy


def _frame_requests_by_instance(relay: HttpRelay, tissue: TissueSlide) -> dict[int, int]:
    return {level.index: relay.count(f"/instances/{level.instance_uids[0]}/frames")
            for level in tissue.slide.levels}


def _listed(folder: Path, level: int) -> list[str]:
    return (folder / f"level-{level}" / "tissue.txt").read_text().splitlines()


@pytest.mark.parametrize("name", ["tissue_brightfield", "tissue_fluorescence"])
def test_tissue_lists_hold_every_tissue_tile_from_low_resolution_frames(
    name: str, slides: dict[str, TissueSlide], relay: HttpRelay, mount_idcfs,  # type: ignore[no-untyped-def]
) -> None:
    tissue = slides[name]
    folder = series_dir(mount_idcfs(relay.url + "/dicom-web").path, tissue.slide)
    assert "tissue-mask.png" in os.listdir(folder)
    relay.reset()
    for level in tissue.slide.levels:  # ls -l of each level: sizes without a request
        subprocess.run(["ls", "-l", str(folder / f"level-{level.index}")], check=True,
                       capture_output=True)
    assert relay.count() == 0

    listed = {level.index: _listed(folder, level.index) for level in tissue.slide.levels}
    requests = _frame_requests_by_instance(relay, tissue)
    assert requests[MASK_LEVEL] > 0
    assert relay.count("/frames/") == requests[MASK_LEVEL], requests
    for index, names in listed.items():
        truth = tissue.truth(index)
        chosen = set(names)
        assert len(chosen) == len(names)
        assert chosen <= set(os.listdir(folder / f"level-{index}"))
        missed = [cell for cell, holds in truth.items()
                  if holds and f"{cell[0]}_{cell[1]}.jpg" not in chosen]
        assert missed == [], f"level-{index}: tissue tiles not listed"
        background = [cell for cell, holds in truth.items() if holds is False]
        wrongly = [cell for cell in background if f"{cell[0]}_{cell[1]}.jpg" in chosen]
        if index in COUNTED_LEVELS:
            assert len(wrongly) <= BACKGROUND_SHARE * len(background), (index, wrongly)
        assert names == sorted(names, key=lambda tile: _frame_order(tile, truth))

    with Image.open(io.BytesIO((folder / "tissue-mask.png").read_bytes())) as mask:
        assert mask.size == (1024, 768)
    assert relay.count("/frames/") == requests[MASK_LEVEL]  # the mask was kept


def _frame_order(tile: str, truth: dict[tuple[int, int], bool | None]) -> int:
    column, row = (int(part) for part in tile.removesuffix(".jpg").split("_"))
    return list(truth).index((column, row))  # truth is row by row, as TILED_FULL frames


def test_tissue_mask_is_kept_on_disk_across_mounts_with_tile_names(
    slides: dict[str, TissueSlide], relay: HttpRelay, mount_idcfs, tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    tissue = slides["tissue_fluorescence"]
    options = ("--cache-dir", str(tmp_path / "cache"), "--tile-name", "{row:03d}-{col:03d}.jpg")
    first = mount_idcfs(relay.url + "/dicom-web", *options)
    listed = _listed(series_dir(first.path, tissue.slide), 0)
    assert listed and all(name.endswith(".jpg") and len(name) == 11 for name in listed)
    stop_mount(first)
    relay.reset()
    second = mount_idcfs(relay.url + "/dicom-web", *options)
    folder = series_dir(second.path, tissue.slide)
    assert _listed(folder, 0) == listed
    assert set(listed) <= set(os.listdir(folder / "level-0"))
    assert relay.count("/frames/") == 0


def test_a_failed_mask_is_eio_with_a_log_line_then_recovers(
    slides: dict[str, TissueSlide], relay: HttpRelay, mount_idcfs,  # type: ignore[no-untyped-def]
) -> None:
    tissue = slides["tissue_brightfield"]
    mount = mount_idcfs(relay.url + "/dicom-web", "--timeout", "5")
    folder = series_dir(mount.path, tissue.slide)
    os.listdir(folder / "level-0")
    relay.inject(503, times=None, path_contains="/frames/")
    with pytest.raises(OSError) as failed:
        (folder / "level-0" / "tissue.txt").read_bytes()
    assert failed.value.errno == errno.EIO
    assert "EIO on open tissue.txt" in mount.log()
    relay.clear_faults()
    assert _listed(folder, 0)
