"""What a mount should show for a slide, worked out independently from its DICOM files
(pydicom) and from the server directly (dicomweb-client), not through idcfs."""

from __future__ import annotations

import math
import os
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
from dicomweb_client.api import DICOMwebClient

from idcfs.dicom.frames import strip_jpeg_padding

WSI_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"
AS_STORED = (("application/octet-stream", "*"),)


@dataclass(frozen=True)
class ExpectedTile:
    """A tile file's path below the series directory and the frame it must hold."""

    relative_path: str
    instance_uid: str
    frame_number: int


def read_headers(files: Iterable[Path]) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(path, stop_before_pixels=True) for path in files]


def volume_instances(datasets: list[pydicom.Dataset]) -> list[pydicom.Dataset]:
    return [ds for ds in datasets if str(ds.ImageType[2]).upper() == "VOLUME"]


def level_of(ds: pydicom.Dataset, volumes: list[pydicom.Dataset]) -> int:
    widths = sorted({int(v.TotalPixelMatrixColumns) for v in volumes}, reverse=True)
    return widths.index(int(ds.TotalPixelMatrixColumns))


def expected_tiles(datasets: list[pydicom.Dataset], nested: bool) -> Iterator[ExpectedTile]:
    """Every tile file of every level, from TILED_FULL order or per-frame positions."""
    volumes = volume_instances(datasets)
    for ds in volumes:
        level = f"level-{level_of(ds, volumes)}"
        for plane, path, column, row, number in _frame_positions(ds):
            folder = f"{level}/plane-{plane}_path-{path}" if nested else level
            yield ExpectedTile(f"{folder}/{column}_{row}.jpg", ds.SOPInstanceUID, number)


def _frame_positions(ds: pydicom.Dataset) -> Iterator[tuple[int, str, int, int, int]]:
    columns = math.ceil(ds.TotalPixelMatrixColumns / ds.Columns)
    rows = math.ceil(ds.TotalPixelMatrixRows / ds.Rows)
    paths = getattr(ds, "OpticalPathSequence", None)
    path = str(paths[0].OpticalPathIdentifier) if paths else "1"
    if getattr(ds, "DimensionOrganizationType", "") == "TILED_SPARSE":
        for index, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
            position = item.PlanePositionSlideSequence[0]
            column = (int(position.ColumnPositionInTotalImagePixelMatrix) - 1) // ds.Columns
            row = (int(position.RowPositionInTotalImagePixelMatrix) - 1) // ds.Rows
            yield 0, path, column, row, index + 1
        return
    for index in range(int(ds.NumberOfFrames)):
        plane = index // (columns * rows)
        yield plane, path, index % columns, (index // columns) % rows, index + 1


def direct_frames(
    url: str, study_uid: str, series_uid: str, instance_uid: str, numbers: list[int]
) -> list[bytes]:
    """Frames exactly as stored, fetched with dicomweb-client (not idcfs)."""
    client = DICOMwebClient(url)
    return client.retrieve_instance_frames(
        study_uid, series_uid, instance_uid, frame_numbers=numbers, media_types=AS_STORED
    )


def wsi_series_on_server(url: str) -> set[tuple[str, str]]:
    client = DICOMwebClient(url)
    found = set()
    for instance in client.search_for_instances(fields=["00080016"]):
        if instance.get("00080016", {}).get("Value", [None])[0] == WSI_SOP_CLASS:
            found.add((instance["0020000D"]["Value"][0], instance["0020000E"]["Value"][0]))
    return found


def frames_by_path(url: str, slide, nested: bool) -> dict[str, bytes]:  # type: ignore[no-untyped-def]
    """Every expected tile path with its frame as stored on the server, without DICOM's
    pad byte after the EOI (a served JPEG ends at its EOI, docs/SEMANTICS.md)."""
    tiles = list(expected_tiles(read_headers(slide.files), nested))
    by_instance = defaultdict(list)
    for tile in tiles:
        by_instance[tile.instance_uid].append(tile)
    found = {}
    for instance_uid, members in by_instance.items():
        numbers = [tile.frame_number for tile in members]
        frames = direct_frames(url, slide.study_uid, slide.series_uid, instance_uid, numbers)
        pairs = zip(members, frames, strict=True)
        found.update({tile.relative_path: strip_jpeg_padding(frame) for tile, frame in pairs})
    return found


def tile_names(level: Path) -> list[str]:
    """The tile files of a level (or plane/path) directory in readdir order: what it
    lists but `tissue.txt`."""
    return [name for name in os.listdir(level) if name.endswith((".jpg", ".jpeg"))]


def tile_paths(level: Path) -> list[Path]:
    """`tile_names` as paths."""
    return [level / name for name in tile_names(level)]
