"""DICOM files rewritten in place, as a user regenerating a slide would: the same UIDs,
the same size, other frames at other offsets (tests of changed files, issue 13)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import pydicom
from pydicom.encaps import encapsulate, encapsulate_extended, generate_frames

from idcfs.dicom.frames import strip_jpeg_padding
from tests.support.expected import expected_tiles, read_headers


def stored_frames(path: Path) -> list[bytes]:
    """The frames of an encapsulated file as stored, frame 1 first."""
    ds = pydicom.dcmread(path)
    return list(generate_frames(ds.PixelData, number_of_frames=int(ds.NumberOfFrames)))


def reverse_frames(path: Path) -> list[bytes]:
    """Rewrite `path` in place (same inode, same size, a later mtime) with its frames in
    the reverse order and its offset table to match: a stale frame index would cut
    frames at the old offsets. Returns the new frames, frame 1 first."""
    ds = pydicom.dcmread(path)
    before = path.stat()
    frames = list(reversed(stored_frames(path)))
    if len(frames) < 2 or len({len(frame) for frame in frames}) < 2:
        raise ValueError(f"{path}: needs frames of different lengths to move offsets")
    if "ExtendedOffsetTable" in ds:
        ds.PixelData, ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths = (
            encapsulate_extended(frames))
    else:
        ds.PixelData = encapsulate(frames, has_bot=_has_bot(ds.PixelData))
    with path.open("r+b") as handle:  # in place: the same inode, only the mtime tells
        ds.save_as(handle, enforce_file_format=True)
        handle.truncate()
    if path.stat().st_size != before.st_size:
        raise AssertionError(f"{path}: rewritten at another size")
    os.utime(path, ns=(before.st_atime_ns, max(before.st_mtime_ns + 1_000_000,
                                                path.stat().st_mtime_ns)))
    return frames


def _has_bot(pixel_data: bytes) -> bool:
    """Whether the first item (the Basic Offset Table) has a length."""
    return int.from_bytes(pixel_data[4:8], "little") > 0


def served_tiles(files: Iterable[Path]) -> dict[str, bytes]:
    """Every level tile path of a series of files (JPEG baseline: served as stored,
    without DICOM's pad byte) with its bytes, read from the files themselves."""
    paths = list(files)
    frames = {str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID):
              stored_frames(path) for path in paths}
    return {tile.relative_path: strip_jpeg_padding(frames[tile.instance_uid][tile.frame_number - 1])
            for tile in expected_tiles(read_headers(paths), nested=False)}
