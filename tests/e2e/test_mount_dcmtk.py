"""dcmtk (Debian's `dcmtk`) opening `dicom/<SOPInstanceUID>.dcm` straight from a real
`--files` mount (issue 13 §5): dcmdump of every instance equals dcmdump of the original
file, a frame decoded by dcmj2pnm from the mount equals the same frame decoded from the
file, and what dcmtk pulls through the mount, counted by the mount's statistics file.

What dcmtk reads (measured here, stated in docs/SEMANTICS.md): its header dump
(`dcmdump +sb PixelData`) costs a range or two; but dcmdata parses the whole data set
when it loads a file, Pixel Data included: it walks every fragment's item header
(an 8 KiB read at each), so a full dcmdump, or dcmj2pnm decoding one frame, pulls the
whole file through the mount (as it goes, by ranges, each byte about once), not one
frame.

Two slides: a generated 3-level pyramid with a Basic Offset Table (tests/support/slides.py
`jpeg_ybr`) and a real converter-made one (tests/data/idc-style: PixelMed's TIFFToDicom,
no offset table, files without a suffix)."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from tests.support.mounting import Mount, run_idcfs, stop_mount
from tests.support.slides import generate_test_slides

IDC_STYLE = Path(__file__).parent.parent / "data" / "idc-style"
STATS_FILE = ".idcfs-stats.json"
TOOLS = ("dcmdump", "dcmj2pnm")

pytestmark = pytest.mark.skipif(any(shutil.which(tool) is None for tool in TOOLS),
                                reason="dcmtk (Debian package dcmtk) missing")


@pytest.fixture(scope="module")
def originals(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """SOPInstanceUID -> original file, of both slides, under one folder."""
    root = tmp_path_factory.mktemp("files")
    generate_test_slides(root, names=["jpeg_ybr"])
    shutil.copytree(IDC_STYLE, root / "idc-style", ignore=shutil.ignore_patterns("*.md"))
    found = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            found[str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)] = path
    return found


def start_mount(workdir: Path, folder: Path) -> Mount:
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "mnt"
    path.mkdir()
    log_file, pid_file = workdir / "idcfs.log", workdir / "idcfs.pid"
    result = run_idcfs("mount", "--log-file", str(log_file), "--pid-file", str(pid_file),
                       "--files", str(folder), str(path))
    assert result.returncode == 0, result.stderr
    return Mount(path, log_file, int(pid_file.read_text()))


@pytest.fixture
def fresh_mount(originals: dict[str, Path], tmp_path: Path) -> Iterator[Mount]:
    """A mount of its own: nothing of its files in the kernel's page cache yet."""
    mount = start_mount(tmp_path, _root(originals))
    yield mount
    stop_mount(mount)


def _root(originals: dict[str, Path]) -> Path:
    return next(iter(originals.values())).parent.parent


def mounted_file(mount: Path, uid: str) -> Path:
    found = list((mount / "studies").glob(f"*/*/dicom/{uid}.dcm"))
    assert len(found) == 1, uid
    return found[0]


def pulled(mount: Path) -> tuple[int, int]:
    """(range reads, bytes read) of instance files since the mount started."""
    counts = json.loads((mount / STATS_FILE).read_text()).get("instance_files", {})
    return counts.get("range_reads", 0), counts.get("bytes_read", 0)


def dcmdump(*arguments: str | Path) -> str:
    done = subprocess.run(["dcmdump", *map(str, arguments)], capture_output=True, text=True,
                          timeout=60, check=True)
    return done.stdout


def decoded_frame(path: Path, number: int, out: Path) -> np.ndarray:
    """Frame `number` (1-based) of `path` as dcmj2pnm decodes it, as pixels."""
    subprocess.run(["dcmj2pnm", "--frame", str(number), "+on", str(path), str(out)],
                   capture_output=True, timeout=60, check=True)
    with Image.open(out) as image:
        return np.asarray(image)


def frame_count(path: Path) -> int:
    return int(getattr(pydicom.dcmread(path, stop_before_pixels=True), "NumberOfFrames", 1))


def largest(originals: dict[str, Path]) -> tuple[str, Path]:
    return max(originals.items(), key=lambda item: item[1].stat().st_size)


# ------------------------------------------------------------------------ same answers


def test_dcmdump_of_every_mounted_instance_equals_the_original(
        originals: dict[str, Path], fresh_mount: Mount) -> None:
    for uid, original in originals.items():
        served = mounted_file(fresh_mount.path, uid)
        assert dcmdump(served) == dcmdump(original), original.name
        assert dcmdump("+sb", "PixelData", served) == dcmdump("+sb", "PixelData", original)


def test_a_frame_dcmj2pnm_decodes_from_the_mount_is_the_frame_from_the_file(
        originals: dict[str, Path], fresh_mount: Mount, tmp_path: Path) -> None:
    for uid, original in originals.items():
        frames = frame_count(original)
        for number in sorted({1, (frames + 1) // 2, frames}):
            served = decoded_frame(mounted_file(fresh_mount.path, uid), number,
                                   tmp_path / "served.png")
            expected = decoded_frame(original, number, tmp_path / "original.png")
            assert np.array_equal(served, expected), f"{original.name} frame {number}"


# ------------------------------------------------------------------------ what it pulls


def test_dcmdump_of_the_header_pulls_a_range_or_two_not_the_file(
        originals: dict[str, Path], fresh_mount: Mount) -> None:
    uid, original = largest(originals)
    served = mounted_file(fresh_mount.path, uid)
    assert pulled(fresh_mount.path) == (0, 0)
    assert dcmdump("+sb", "PixelData", served) == dcmdump("+sb", "PixelData", original)
    range_reads, bytes_read = pulled(fresh_mount.path)
    assert 1 <= range_reads <= 3
    assert bytes_read <= 128 * 1024 < original.stat().st_size // 8


def test_one_frame_through_dcmtk_pulls_the_file_once_as_dcmdata_walks_every_item(
        originals: dict[str, Path], fresh_mount: Mount, tmp_path: Path) -> None:
    """Measured, not wished: dcmdata parses the whole data set on load, reading at every
    fragment's item header, so decoding one frame pulls the whole file through the mount,
    by ranges as dcmtk goes, each byte about once (never once per frame, never on
    open). If a dcmtk release stops walking the items, this test says so."""
    uid, original = largest(originals)
    size = original.stat().st_size
    frames = frame_count(original)
    served = mounted_file(fresh_mount.path, uid)
    with served.open("rb"):
        assert pulled(fresh_mount.path) == (0, 0)  # an open reads nothing
    number = frames // 2
    assert np.array_equal(decoded_frame(served, number, tmp_path / "served.png"),
                          decoded_frame(original, number, tmp_path / "original.png"))
    range_reads, bytes_read = pulled(fresh_mount.path)
    assert 0.9 * size <= bytes_read <= 1.25 * size, (bytes_read, size)
    assert range_reads < frames / 4  # blocks of several fragments, not a range per item
    decoded_frame(served, frames, tmp_path / "served.png")  # another frame: page cache
    assert pulled(fresh_mount.path)[1] <= 1.25 * size
