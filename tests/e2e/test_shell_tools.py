"""At home with the shell tools (issue 14, section 6), through real mounts of the real
Orthanc (and of a folder of files): mtimes from the data, the same after a remount, so
a second `rsync -a` copies nothing and fetches no frame; `--tile-name` for tools that
sort names; slide.json with what the metadata has, with any server."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.expected import frames_by_path
from tests.support.mounting import named, run_idcfs, series_dir, stop_mount
from tests.support.slides import FIXED_DATE, FIXED_TIME, JPEG_BASELINE

DATA_TIME_NS = int(dt.datetime.strptime(FIXED_DATE + FIXED_TIME, "%Y%m%d%H%M%S")
                   .replace(tzinfo=dt.UTC).timestamp()) * 10**9  # content date/time, as UTC
FALLBACK_NS = 315_532_800 * 10**9  # 1980-01-01T00:00:00Z: the root of a DICOMweb mount
ROW_MAJOR = "{row:04d}_{col:04d}.jpg"
SHELL_ENV = {**os.environ, "LC_ALL": "C.UTF-8"}


def mtimes(folder: Path) -> dict[str, int]:
    """The mtime of every entry below `folder` (and of `folder`), by relative path."""
    found = {".": folder.stat().st_mtime_ns}
    for root, directories, files in os.walk(folder):
        for name in directories + files:
            path = Path(root) / name
            found[str(path.relative_to(folder))] = path.stat().st_mtime_ns
    return found


def rsync(source: Path, target: Path) -> list[str]:
    """`rsync -a --itemize-changes source/ target`: the changes it made, one per line."""
    done = subprocess.run(["rsync", "-a", "--itemize-changes", f"{source}/", str(target)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def shell(command: str, cwd: Path) -> list[str]:
    done = subprocess.run(["sh", "-c", command], cwd=cwd, capture_output=True, text=True,
                          env=SHELL_ENV, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


# --------------------------------------------------------------------------- timestamps


def test_rsync_after_a_remount_copies_nothing_and_fetches_no_frame(
    relay, mount_idcfs, test_slides, tmp_path: Path,
) -> None:
    slide = named(test_slides, "jpeg_ybr")
    options = ("--cache-dir", str(tmp_path / "cache"))
    first = mount_idcfs(relay.url + "/dicom-web", *options)
    level = series_dir(first.path, slide) / "level-1"
    shown = mtimes(series_dir(first.path, slide))
    around = {name: (first.path / name).stat().st_mtime_ns
              for name in ("studies", f"studies/{slide.study_uid}")}
    copied = rsync(level, tmp_path / "copy")
    assert sum(line.startswith(">f+++++++++") for line in copied) == 2 * 2 + 1  # tiles, tissue.txt
    stop_mount(first)

    second = mount_idcfs(relay.url + "/dicom-web", *options)
    frames_before = relay.count("/frames")
    assert rsync(series_dir(second.path, slide) / "level-1", tmp_path / "copy") == []
    assert relay.count("/frames") == frames_before
    assert mtimes(series_dir(second.path, slide)) == shown
    assert {name: (second.path / name).stat().st_mtime_ns for name in around} == around
    assert set(shown.values()) == {DATA_TIME_NS}  # the series' content date and time
    assert around["studies"] == FALLBACK_NS  # nothing dates it before the search
    assert {path.stat().st_mtime_ns for path in (tmp_path / "copy").iterdir()} == {DATA_TIME_NS}


def test_a_series_directory_has_its_time_before_it_is_entered(
    relay, mount_idcfs, test_slides,
) -> None:
    slide = named(test_slides, "focal_planes")
    mounted = mount_idcfs(relay.url + "/dicom-web")
    assert series_dir(mounted.path, slide).stat().st_mtime_ns == DATA_TIME_NS
    assert relay.count("/metadata") == 0  # from the search: no series metadata was read


# --------------------------------------------------------------------------- tile names


def test_tile_names_template_makes_sorted_names_row_major(
    orthanc, mount_idcfs, test_slides,
) -> None:
    slide = named(test_slides, "jpeg_ybr")
    mounted = mount_idcfs(orthanc.dicomweb_url, "--tile-name", ROW_MAJOR)
    level = series_dir(mounted.path, slide) / "level-0"
    row_major = [ROW_MAJOR.format(col=col, row=row) for row in range(3) for col in range(4)]
    assert shell("ls", level) == [*row_major, "tissue.txt"]  # sorted by name
    assert shell("ls -U", level) == [*row_major, "tissue.txt"]  # frame order, row by row
    assert shell("printf '%s\\n' *.jpg", level) == row_major  # a glob, as montage sees it
    expected = frames_by_path(orthanc.dicomweb_url, slide, nested=False)
    assert (level / "0001_0002.jpg").read_bytes() == expected["level-0/2_1.jpg"]
    assert not (level / "2_1.jpg").exists()


def test_tile_names_template_applies_inside_plane_directories(
    orthanc, mount_idcfs, test_slides,
) -> None:
    slide = named(test_slides, "focal_planes")
    mounted = mount_idcfs(orthanc.dicomweb_url, "--tile-name", "r{row}-c{col}.jpeg")
    plane = series_dir(mounted.path, slide) / "level-1" / "plane-1_path-1"
    assert [entry.name for entry in os.scandir(plane)] == ["r0-c0.jpeg", "r0-c1.jpeg",
                                                           "tissue.txt"]
    expected = frames_by_path(orthanc.dicomweb_url, slide, nested=True)
    assert (plane / "r0-c1.jpeg").read_bytes() == expected["level-1/plane-1_path-1/1_0.jpg"]


@pytest.mark.parametrize("template", [
    "{row}.jpg", "{col}{row}.jpg", "{col}_{row}.png", "{col}/{row}.jpg", "{col}_{row}_{z}.jpg",
    "{col:s}_{row}.jpg", "{col_{row}.jpg",
])
def test_a_bad_tile_name_template_is_one_line_and_exit_2(template: str, tmp_path: Path) -> None:
    done = run_idcfs("mount", "--url", "http://127.0.0.1:9/dicom-web", "--tile-name", template,
                     str(tmp_path))
    assert done.returncode == 2
    assert len(done.stderr.splitlines()) == 1 and "--tile-name" in done.stderr


# --------------------------------------------------------------------------- slide.json


def slide_json(folder: Path) -> dict:
    return json.loads((folder / "slide.json").read_text())


def test_slide_json_from_orthanc_metadata_learns_syntaxes_from_frames(
    orthanc, mount_idcfs, test_slides, tmp_path: Path,
) -> None:
    slide = named(test_slides, "focal_planes")
    options = ("--cache-dir", str(tmp_path / "cache"))
    mounted = mount_idcfs(orthanc.dicomweb_url, *options)
    folder = series_dir(mounted.path, slide)
    described = slide_json(folder)
    assert (described["PatientID"], described["ContainerIdentifier"],
            described["SeriesDescription"]) == ("idcfs-focal_planes", "SLIDE-focal_planes",
                                                "focal_planes")
    assert described["focal_planes"] == [{"index": 0, "z_offset_um": 0.0},
                                         {"index": 1, "z_offset_um": 2.5}]
    # Orthanc's metadata has no file meta group: no syntax until a frame names it
    assert [(item["level"], item["transfer_syntax"], item["transfer_syntax_from"])
            for item in described["instances"]] == [(0, None, None), (1, None, None)]
    assert described["transfer_syntax"] == []
    (folder / "level-1" / "plane-0_path-1" / "0_0.jpg").read_bytes()
    learned = slide_json(folder)
    assert [(item["level"], item["transfer_syntax"], item["transfer_syntax_from"])
            for item in learned["instances"]] == [(0, None, None),
                                                  (1, JPEG_BASELINE, "frames")]
    assert learned["transfer_syntax"] == [JPEG_BASELINE]
    assert (folder / "slide.json").stat().st_mtime_ns == DATA_TIME_NS
    stop_mount(mounted)
    again = mount_idcfs(orthanc.dicomweb_url, *options)  # learned once, kept on disk
    assert slide_json(series_dir(again.path, slide))["instances"] == learned["instances"]


def test_slide_json_from_files_carries_the_same_facts(
    mount_idcfs, test_slides, tmp_path: Path,
) -> None:
    slide = named(test_slides, "focal_planes")
    shutil.copytree(slide.folder, tmp_path / "files")
    mounted = mount_idcfs(None, "--files", str(tmp_path / "files"))
    folder = series_dir(mounted.path, slide)
    described = slide_json(folder)
    assert (described["PatientID"], described["ContainerIdentifier"],
            described["SeriesDescription"]) == ("idcfs-focal_planes", "SLIDE-focal_planes",
                                                "focal_planes")
    assert [plane["z_offset_um"] for plane in described["focal_planes"]] == [0.0, 2.5]
    assert {(item["transfer_syntax"], item["transfer_syntax_from"])
            for item in described["instances"]} == {(JPEG_BASELINE, "metadata")}
    assert set(mtimes(folder).values()) == {DATA_TIME_NS}
    assert (mounted.path / "studies").stat().st_mtime_ns == DATA_TIME_NS  # newest series
