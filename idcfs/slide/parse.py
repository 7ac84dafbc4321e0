"""Building a `Slide` from the DICOM JSON metadata of a series' instances.

Handles TILED_FULL (frame order: column fastest, then row, focal plane, optical
path) and TILED_SPARSE (per-frame plane positions), concatenations (frame offsets),
several focal planes and optical paths, and LABEL / OVERVIEW / THUMBNAIL images.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from idcfs.dicom.dicom_json import WSI_SOP_CLASS, DicomJson, first_item, first_value, values
from idcfs.dicom.pixels import PixelFormat
from idcfs.errors import MetadataError
from idcfs.slide.model import (
    AssociatedImage,
    FrameRef,
    InstanceInfo,
    Level,
    Slide,
    TileGrid,
    TilePosition,
)

log = logging.getLogger(__name__)

ASSOCIATED_KINDS = ("label", "overview", "thumbnail")

SHARED_GROUPS = "52009229"
PER_FRAME_GROUPS = "52009230"
PLANE_POSITION = "0048021A"
OPTICAL_PATH_ID_SEQ = "00480207"
OPTICAL_PATH_ID = "00480106"


@dataclass(frozen=True)
class Placement:
    """Where one frame sits: plane key, optical path, tile column and row."""

    plane_key: tuple[int, float]
    optical_path: str
    column: int
    row: int
    frame: FrameRef


def parse_slide(
    study_uid: str,
    series_uid: str,
    metadata: Sequence[DicomJson],
    locations: Mapping[str, str] | None = None,
) -> Slide:
    """The slide model of a series; MetadataError when it holds no usable WSI instance.

    `locations` (by SOPInstanceUID) is where the frame source finds each instance."""
    where = locations or {}
    pairs = [(info, meta) for meta in metadata if _is_wsi(meta)
             for info in _readable_instance(meta, where)]
    if not pairs:
        raise MetadataError(f"series {series_uid} has no whole-slide image instances")
    infos = {info.uid: info for info, _ in pairs}
    placements = {info.uid: list(frame_placements(meta, info)) for info, meta in pairs}
    spacing = {info.uid: _pixel_spacing(meta) for info, meta in pairs}
    volumes = [info for info in infos.values() if info.flavour == "VOLUME"]
    plane_keys = sorted({p.plane_key for info in volumes for p in placements[info.uid]})
    paths = sorted({p.optical_path for info in volumes for p in placements[info.uid]}, key=_natural)
    plane_index = {key: index for index, key in enumerate(plane_keys)}
    return Slide(
        study_uid=study_uid,
        series_uid=series_uid,
        instances=infos,
        levels=_levels(volumes, placements, plane_index, spacing),
        associated=_associated(infos, placements),
        focal_planes=[key[1] if key[0] == 0 else None for key in plane_keys],
        optical_paths=paths,
    )


def _readable_instance(meta: DicomJson, locations: Mapping[str, str]) -> list[InstanceInfo]:
    """[the instance's facts], or [] (with a warning) when its pixel description is unusable."""
    try:
        info = read_instance(meta)
        return [replace(info, location=locations.get(info.uid, ""))]
    except (ValueError, TypeError) as error:
        log.warning("instance %s skipped: %s", first_value(meta, "00080018"), error)
        return []


def read_instance(meta: DicomJson) -> InstanceInfo:
    """The per-instance facts the tile layer needs."""
    pixels = PixelFormat.from_dicom_json(meta)
    return InstanceInfo(
        uid=str(first_value(meta, "00080018")),
        image_type=tuple(str(value) for value in values(meta, "00080008")),
        pixels=pixels,
        transfer_syntax=_transfer_syntax(meta),
        frame_count=int(first_value(meta, "00280008", 1)),
        total_width=int(first_value(meta, "00480006", pixels.columns)),
        total_height=int(first_value(meta, "00480007", pixels.rows)),
    )


def frame_placements(meta: DicomJson, info: InstanceInfo) -> Iterator[Placement]:
    """Every frame of an instance with its position, in frame order."""
    per_frame = values(meta, PER_FRAME_GROUPS)
    sparse = str(first_value(meta, "00209311", "")).upper() == "TILED_SPARSE"
    if sparse and len(per_frame) < info.frame_count:
        log.warning("instance %s: TILED_SPARSE without per-frame positions; skipped", info.uid)
        return
    if sparse:
        yield from _sparse_placements(meta, info, per_frame)
    else:
        yield from _full_placements(meta, info)


def _full_placements(meta: DicomJson, info: InstanceInfo) -> Iterator[Placement]:
    columns = -(-info.total_width // info.pixels.columns)
    rows = -(-info.total_height // info.pixels.rows)
    planes = int(first_value(meta, "00480303", 1) or 1)
    paths = _instance_optical_paths(meta)
    shared_z = _z_offset(first_item(meta, SHARED_GROUPS, PLANE_POSITION))
    offset = int(first_value(meta, "00209228", 0) or 0)
    for local in range(info.frame_count):
        index = offset + local
        plane = (index // (columns * rows)) % planes
        path = paths[min(index // (columns * rows * planes), len(paths) - 1)]
        plane_key = (0, shared_z) if shared_z is not None and planes == 1 else (1, float(plane))
        frame = FrameRef(info.uid, local + 1)
        yield Placement(plane_key, path, index % columns, (index // columns) % rows, frame)


def _sparse_placements(
    meta: DicomJson, info: InstanceInfo, per_frame: Sequence[Mapping[str, Any]]
) -> Iterator[Placement]:
    default_path = _instance_optical_paths(meta)[0]
    for local, item in enumerate(per_frame[: info.frame_count]):
        position = first_item(item, PLANE_POSITION)
        column_position = first_value(position, "0048021E")
        row_position = first_value(position, "0048021F")
        if column_position is None or row_position is None:
            continue
        z = _z_offset(position)
        path = first_value(first_item(item, OPTICAL_PATH_ID_SEQ), OPTICAL_PATH_ID, default_path)
        yield Placement(
            (0, z) if z is not None else (1, 0.0),
            str(path),
            (int(column_position) - 1) // info.pixels.columns,
            (int(row_position) - 1) // info.pixels.rows,
            FrameRef(info.uid, local + 1),
        )


def _levels(
    volumes: list[InstanceInfo],
    placements: dict[str, list[Placement]],
    plane_index: dict[tuple[int, float], int],
    spacing: dict[str, tuple[float, float] | None],
) -> list[Level]:
    by_size: dict[tuple[int, int], list[InstanceInfo]] = defaultdict(list)
    for info in volumes:
        by_size[(info.total_width, info.total_height)].append(info)
    sizes = sorted(by_size, key=lambda size: (-size[0], -size[1]))
    base_width = sizes[0][0] if sizes else 1
    levels = []
    for index, size in enumerate(sizes):
        members = sorted(by_size[size], key=lambda info: info.uid)
        grids = _grids(members, placements, plane_index)
        first = members[0]
        levels.append(
            Level(
                index=index,
                width=size[0],
                height=size[1],
                tile_width=first.pixels.columns,
                tile_height=first.pixels.rows,
                downsample=round(base_width / size[0], 4),
                pixel_spacing_mm=next((spacing[m.uid] for m in members if spacing[m.uid]), None),
                grids=grids,
            )
        )
    return levels


def _grids(
    members: list[InstanceInfo],
    placements: dict[str, list[Placement]],
    plane_index: dict[tuple[int, float], int],
) -> list[TileGrid]:
    grids: dict[tuple[int, str], dict[tuple[int, int], TilePosition]] = defaultdict(dict)
    for info in members:
        for placement in placements[info.uid]:
            cell = grids[(plane_index[placement.plane_key], placement.optical_path)]
            tile = TilePosition(placement.column, placement.row, placement.frame)
            cell.setdefault((placement.row, placement.column), tile)
    ordered_keys = sorted(grids, key=lambda key: (key[0], _natural(key[1])))
    return [
        TileGrid(plane, path, [grids[(plane, path)][cell] for cell in sorted(grids[(plane, path)])])
        for plane, path in ordered_keys
    ]


def _associated(
    infos: dict[str, InstanceInfo], placements: dict[str, list[Placement]]
) -> list[AssociatedImage]:
    images = []
    for kind in ASSOCIATED_KINDS:
        candidates = sorted(
            (info for info in infos.values() if info.flavour == kind.upper()),
            key=lambda info: (-info.total_width * info.total_height, info.uid),
        )
        if candidates:
            uid = candidates[0].uid
            tiles = tuple(TilePosition(p.column, p.row, p.frame) for p in placements[uid])
            images.append(AssociatedImage(kind, uid, tiles))
    return images


def _is_wsi(meta: DicomJson) -> bool:
    sop_class = first_value(meta, "00080016")
    return (sop_class in (None, WSI_SOP_CLASS)) and first_value(meta, "00080018") is not None


def _instance_optical_paths(meta: DicomJson) -> list[str]:
    identifiers = [
        str(first_value(item, OPTICAL_PATH_ID))
        for item in values(meta, "00480105")
        if first_value(item, OPTICAL_PATH_ID) is not None
    ]
    shared = first_value(first_item(meta, SHARED_GROUPS, OPTICAL_PATH_ID_SEQ), OPTICAL_PATH_ID)
    if shared is not None and int(first_value(meta, "00480302", 1) or 1) == 1:
        return [str(shared)]
    return identifiers or ["1"]


def _z_offset(position: DicomJson) -> float | None:
    z = first_value(position, "0040074A")
    return float(z) if z is not None else None


def _pixel_spacing(meta: DicomJson) -> tuple[float, float] | None:
    spacing = values(first_item(meta, SHARED_GROUPS, "00289110"), "00280030")
    if len(spacing) == 2:
        return (float(spacing[0]), float(spacing[1]))
    width_mm = first_value(meta, "00480001")
    height_mm = first_value(meta, "00480002")
    columns = first_value(meta, "00480006")
    rows = first_value(meta, "00480007")
    if width_mm and height_mm and columns and rows:
        return (float(height_mm) / int(rows), float(width_mm) / int(columns))
    return None


def _transfer_syntax(meta: DicomJson) -> str | None:
    syntax = first_value(meta, "00020010") or first_value(meta, "00083002")
    return str(syntax) if syntax else None


def _natural(text: str) -> tuple[int, int | str]:
    return (0, int(text)) if text.isdigit() else (1, text)
