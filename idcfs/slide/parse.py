"""Building a `Slide` from the DICOM JSON metadata of a series' instances.

Handles TILED_FULL (frame order: column fastest, then row, focal plane, optical
path) and TILED_SPARSE (per-frame plane positions), concatenations (frame offsets),
several focal planes and optical paths, and LABEL / OVERVIEW / THUMBNAIL images.

Metadata comes from a server and may be anything. An instance whose description is
unusable (missing or non-numeric sizes, zero or negative sizes, absurd frame counts,
positions that are not numbers, a multi-frame level without TotalPixelMatrixColumns/
Rows) is never laid out by a guess: a level (VOLUME) instance makes the whole series a
MetadataError naming it, since a pyramid shown without one of its levels, or with a
level short of a concatenation part, would pass for the real one for the life of the
mount; an unusable label, overview or thumbnail is skipped with a warning (the rest of
the slide is right without it). A series with no usable instance is a MetadataError.
Frames placed outside their instance's grid are dropped with a warning.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any, NamedTuple

from idcfs.dicom.dicom_json import (
    WSI_SOP_CLASS,
    DicomJson,
    decimal_number,
    first_item,
    first_value,
    values,
    whole_number,
)
from idcfs.dicom.pixels import PixelFormat
from idcfs.dicom.times import series_time_ns
from idcfs.errors import MetadataError
from idcfs.slide.model import (
    SERIES_FACTS,
    AssociatedImage,
    FrameRef,
    InstanceInfo,
    Level,
    Slide,
    TileGrid,
    TilePosition,
    TileRun,
)

log = logging.getLogger(__name__)

ASSOCIATED_KINDS = ("label", "overview", "thumbnail")

SHARED_GROUPS = "52009229"
PER_FRAME_GROUPS = "52009230"
PLANE_POSITION = "0048021A"
OPTICAL_PATH_ID_SEQ = "00480207"
OPTICAL_PATH_ID = "00480106"
TOTAL_PIXEL_MATRIX_ORIGIN = "00480008"
Z_OFFSET = "0040074A"
PIXEL_MEASURES = "00289110"
SPACING_BETWEEN_SLICES = "00180088"
FACT_TAGS = {"PatientID": "00100020", "ContainerIdentifier": "00400512",
             "SeriesDescription": "0008103E"}

MAX_FRAMES = 1 << 22
"""Frames one instance may have (IDC's largest have a few hundred thousand): a bogus
NumberOfFrames of 10**12 must not turn into a loop that never ends."""
Z_DECIMALS = 3
"""Z offsets (µm) are compared rounded to the nanometre, as wsidicom does: a level
written as 0.00025 and one computed as 0.000249999 are the same plane."""

PlaneKey = tuple[int, float]
UNKNOWN_PLANE: PlaneKey = (2, 0.0)
"""The plane of a single-plane instance that gives no Z: it is the same plane as the
slide's one known Z if there is exactly one, else plane (1, 0.0), the first of the
instances whose planes are known only by their TILED_FULL order (keys (1, index))."""


class Placement(NamedTuple):
    """Where one frame sits: plane key, optical path, tile column and row."""

    plane_key: PlaneKey
    optical_path: str
    column: int
    row: int
    frame: FrameRef


class Layer(NamedTuple):
    """The frames of a TILED_FULL instance on one focal plane and optical path: `count`
    cells of its grid from `first_cell` (column fastest), frames from `first_number`."""

    plane_key: PlaneKey
    optical_path: str
    first_cell: int
    count: int
    first_number: int


class FullFrames(NamedTuple):
    """A TILED_FULL instance's frames as layers, in frame order: where each frame sits
    follows from its number, so none is laid out one by one until a grid needs it."""

    uid: str
    columns: int
    layers: list[Layer]


InstanceFrames = list[Placement] | FullFrames
"""An instance's frames: TILED_SPARSE as placements, TILED_FULL as layers."""


def parse_slide(
    study_uid: str,
    series_uid: str,
    metadata: Sequence[DicomJson],
    locations: Mapping[str, str] | None = None,
    revisions: Mapping[str, str] | None = None,
) -> Slide:
    """The slide model of a series; MetadataError when it holds no usable WSI instance.

    `locations` (by SOPInstanceUID) is where the frame source finds each instance,
    `revisions` (by SOPInstanceUID) its `InstanceInfo.revision`."""
    where = locations or {}
    readable = [found for meta in metadata if _is_wsi(meta)
                for found in _readable_instance(series_uid, meta, where, revisions or {})]
    kept = {info.uid for info, _, _ in readable}
    described = sorted((meta for meta in metadata if first_value(meta, "00080018") in kept),
                       key=lambda meta: str(first_value(meta, "00080018")))
    if not readable:
        raise MetadataError(f"series {series_uid} has no usable whole-slide image instances")
    infos = {info.uid: info for info, _, _ in readable}
    placements = {info.uid: frames for info, frames, _ in readable}
    spacing = {info.uid: mm for info, _, mm in readable}
    volumes = [info for info in infos.values() if info.flavour == "VOLUME"]
    keys = {key for info in volumes for key in _frame_keys(placements[info.uid])}
    plane_index, focal_planes = _plane_index({plane_key for plane_key, _ in keys})
    paths = sorted({path for _, path in keys}, key=_natural)
    return Slide(
        study_uid=study_uid,
        series_uid=series_uid,
        instances=infos,
        levels=_levels(volumes, placements, plane_index, spacing),
        associated=_associated(infos, placements),
        focal_planes=focal_planes,
        optical_paths=paths,
        time_ns=series_time_ns(described),
        facts=_series_facts(described),
    )


def _series_facts(described: Sequence[DicomJson]) -> dict[str, Any]:
    """SERIES_FACTS from the first instance (in UID order) that has each, else None."""
    facts: dict[str, Any] = {}
    for name in SERIES_FACTS:
        found = (first_value(meta, FACT_TAGS[name]) for meta in described)
        facts[name] = next((str(value).strip() for value in found
                            if isinstance(value, str | int) and str(value).strip()), None)
    return facts


def _readable_instance(
    series_uid: str, meta: DicomJson, locations: Mapping[str, str],
    revisions: Mapping[str, str],
) -> list[tuple[InstanceInfo, InstanceFrames, tuple[float, float] | None]]:
    """[(facts, frame placements, pixel spacing)] of an instance. When its description
    is unusable (every reader raises ValueError for bad values): MetadataError for a
    level instance, [] with a warning for an associated image."""
    try:
        info = read_instance(meta)
        info = replace(info, location=locations.get(info.uid, ""),
                       revision=revisions.get(info.uid, ""))
        return [(info, instance_frames(meta, info), _pixel_spacing(meta))]
    except ValueError as error:
        uid = first_value(meta, "00080018")
        if _flavour(meta) == "VOLUME":
            raise MetadataError(
                f"series {series_uid}: level instance {uid} cannot be laid out: {error}"
            ) from None
        log.warning("instance %s skipped: %s", uid, error)
        return []


def _flavour(meta: DicomJson) -> str:
    """VOLUME, LABEL, OVERVIEW or THUMBNAIL, as `InstanceInfo.flavour` reads it."""
    image_type = [str(value) for value in values(meta, "00080008")]
    return image_type[2].upper() if len(image_type) > 2 else "VOLUME"


def read_instance(meta: DicomJson) -> InstanceInfo:
    """The per-instance facts the tile layer needs; ValueError when they are unusable."""
    pixels = PixelFormat.from_dicom_json(meta)
    uid = first_value(meta, "00080018")
    if not isinstance(uid, str) or not uid.strip():
        raise ValueError(f"SOPInstanceUID is {uid!r}, not a UID")
    image_type = tuple(str(value) for value in values(meta, "00080008"))
    frame_count = _count(meta, "00280008", "NumberOfFrames", MAX_FRAMES)
    width, height = _total_size(meta, pixels, frame_count, image_type)
    return InstanceInfo(
        uid=uid,
        image_type=image_type,
        pixels=pixels,
        transfer_syntax=_transfer_syntax(meta),
        frame_count=frame_count,
        total_width=width,
        total_height=height,
    )


def _count(meta: DicomJson, tag: str, name: str, maximum: int) -> int:
    """A count attribute (absent or 0: 1, as before), at most `maximum`; else ValueError."""
    count = whole_number(first_value(meta, tag, 1), name, 0) or 1
    if count > maximum:
        raise ValueError(f"{name} is {count}, more than the {maximum} idcfs accepts")
    return count


def _total_size(
    meta: DicomJson, pixels: PixelFormat, frame_count: int, image_type: tuple[str, ...]
) -> tuple[int, int]:
    """TotalPixelMatrixColumns/Rows. A single frame without them is the whole image; a
    multi-frame instance without them has no layout, so ValueError rather than a guess.

    A single-frame LABEL/OVERVIEW/THUMBNAIL whose matrix is larger than its frame (some
    converters write the slide's size there) is the frame: that is all it holds.
    """
    width_value, height_value = first_value(meta, "00480006"), first_value(meta, "00480007")
    if width_value is None or height_value is None:
        if frame_count > 1:
            raise ValueError(f"{frame_count} frames but no TotalPixelMatrixColumns/Rows")
        return pixels.columns, pixels.rows
    width = whole_number(width_value, "TotalPixelMatrixColumns", 1)
    height = whole_number(height_value, "TotalPixelMatrixRows", 1)
    associated = len(image_type) > 2 and image_type[2].upper() != "VOLUME"
    if associated and frame_count == 1 and (width > pixels.columns or height > pixels.rows):
        log.warning(
            "instance %s: one %dx%d frame for a %dx%d matrix; the image is the frame",
            first_value(meta, "00080018"), pixels.columns, pixels.rows, width, height,
        )
        return pixels.columns, pixels.rows
    return width, height


def frame_placements(meta: DicomJson, info: InstanceInfo) -> Iterator[Placement]:
    """Every frame of an instance with its position, in frame order (`instance_frames`,
    one by one)."""
    return _placements(instance_frames(meta, info))


def instance_frames(meta: DicomJson, info: InstanceInfo) -> InstanceFrames:
    """Where an instance's frames sit: TILED_SPARSE placements, TILED_FULL layers.

    TILED_SPARSE, or no DimensionOrganizationType at all while every frame has a
    position (older converters), takes the per-frame positions; TILED_FULL the order.
    ValueError when TILED_SPARSE frames lack their positions (no layout to guess).
    """
    per_frame = values(meta, PER_FRAME_GROUPS)
    organization = str(first_value(meta, "00209311", "")).strip().upper()
    sparse = organization == "TILED_SPARSE" or (
        not organization and _all_positioned(per_frame, info.frame_count)
    )
    if sparse and len(per_frame) < info.frame_count:
        raise ValueError(f"TILED_SPARSE with {len(per_frame)} per-frame positions for "
                         f"{info.frame_count} frames")
    if sparse:
        return list(_inside_grid(info, _sparse_placements(meta, info, per_frame)))
    return _full_frames(meta, info)


def _all_positioned(per_frame: Sequence[Any], frame_count: int) -> bool:
    return frame_count > 1 and len(per_frame) >= frame_count and all(
        first_value(first_item(item, PLANE_POSITION), "0048021E") is not None
        for item in per_frame[:frame_count]
    )


def _full_frames(meta: DicomJson, info: InstanceInfo) -> FullFrames:
    """The layers of a TILED_FULL instance: frame i (0-based, after the concatenation
    offset) is cell i % cells of layer i // cells (plane + planes * path)."""
    columns = -(-info.total_width // info.pixels.columns)
    rows = -(-info.total_height // info.pixels.rows)
    planes = _count(meta, "00480303", "TotalPixelMatrixFocalPlanes", MAX_FRAMES)
    paths = _instance_optical_paths(meta)
    cells = columns * rows
    offset = _frame_offset(meta, info, cells * planes * len(paths))
    z = _single_plane_z(meta)
    spacing_um = _plane_spacing_um(meta) if planes > 1 else None
    usable = max(0, min(info.frame_count, cells * planes * len(paths) - offset))
    if usable < info.frame_count:
        log.warning("instance %s: %d of its %d frames lie beyond its %dx%d grid; ignored",
                    info.uid, info.frame_count - usable, info.frame_count, columns, rows)
    plane_keys = [_plane_key(plane, planes, z, spacing_um) for plane in range(planes)]
    end = offset + usable
    layers = []
    for layer in range(offset // cells, -(-end // cells)):
        start, stop = max(offset, layer * cells), min(end, (layer + 1) * cells)
        if stop > start:
            layers.append(Layer(plane_keys[layer % planes], paths[layer // planes],
                                start - layer * cells, stop - start, start - offset + 1))
    return FullFrames(info.uid, columns, layers)


def _placements(frames: InstanceFrames) -> Iterator[Placement]:
    """An instance's frames one by one, in frame order."""
    if isinstance(frames, list):
        yield from frames
        return
    uid, columns = frames.uid, frames.columns
    for plane_key, path, first_cell, count, first_number in frames.layers:
        number = first_number - first_cell
        for cell in range(first_cell, first_cell + count):  # kept lean: one pass per frame
            yield Placement(plane_key, path, cell % columns, cell // columns,
                            FrameRef(uid, number + cell))


def _frame_keys(frames: InstanceFrames) -> set[tuple[PlaneKey, str]]:
    """The (plane key, optical path) pairs an instance has frames on."""
    if isinstance(frames, list):
        return {(p.plane_key, p.optical_path) for p in frames}
    return {(layer.plane_key, layer.optical_path) for layer in frames.layers}


def _plane_key(plane: int, planes: int, z: float | None, spacing_um: float | None) -> PlaneKey:
    """The key of focal plane `plane` of a TILED_FULL instance: its Z when known."""
    if spacing_um is not None:
        return (0, _rounded_z((z or 0.0) + plane * spacing_um))
    if planes > 1:
        return (1, float(plane))
    return (0, z) if z is not None else UNKNOWN_PLANE


def _frame_offset(meta: DicomJson, info: InstanceInfo, grid_frames: int) -> int:
    """ConcatenationFrameOffsetNumber, or 0 for an instance that holds its whole grid by
    itself: ez-wsi's test_wsi.dcm is a one-frame label marked as part 5 of a
    concatenation at offset 12, which would put its only frame beyond its 1x1 grid."""
    offset = whole_number(first_value(meta, "00209228", 0) or 0, "ConcatenationFrameOffset", 0)
    if offset and info.frame_count == grid_frames:
        log.warning("instance %s holds all %d frames of its grid; its concatenation frame "
                    "offset %d is ignored", info.uid, grid_frames, offset)
        return 0
    return offset


def _single_plane_z(meta: DicomJson) -> float | None:
    """The Z of a one-plane TILED_FULL instance (of the first plane of several): its
    shared plane position, else the Z of its TotalPixelMatrixOriginSequence (where
    wsidicom also looks)."""
    shared = _z_offset(first_item(meta, SHARED_GROUPS, PLANE_POSITION))
    return shared if shared is not None else _z_offset(first_item(meta, TOTAL_PIXEL_MATRIX_ORIGIN))


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
        column = whole_number(column_position, "ColumnPositionInTotalImagePixelMatrix")
        row = whole_number(row_position, "RowPositionInTotalImagePixelMatrix")
        z = _z_offset(position)
        path = first_value(first_item(item, OPTICAL_PATH_ID_SEQ), OPTICAL_PATH_ID, default_path)
        yield Placement(
            (0, z) if z is not None else UNKNOWN_PLANE,
            str(path),
            (column - 1) // info.pixels.columns,
            (row - 1) // info.pixels.rows,
            FrameRef(info.uid, local + 1),
        )


def _inside_grid(info: InstanceInfo, placements: Iterator[Placement]) -> Iterator[Placement]:
    """The placements whose tile lies in the instance's grid; a warning for the others
    (a position outside the total pixel matrix would name a tile no listing has)."""
    columns = -(-info.total_width // info.pixels.columns)
    rows = -(-info.total_height // info.pixels.rows)
    outside = 0
    for placement in placements:
        if 0 <= placement.column < columns and 0 <= placement.row < rows:
            yield placement
        else:
            outside += 1
    if outside:
        log.warning("instance %s: %d frames positioned outside its %dx%d grid; ignored",
                    info.uid, outside, columns, rows)


def _plane_index(keys: set[PlaneKey]) -> tuple[dict[PlaneKey, int], list[float | None]]:
    """Each plane key's focal plane index, and each plane's Z (None when unknown).

    Planes are one plane when their Z is the same, or unknown in a single-plane
    instance while the slide knows just one Z: a pyramid mixing TILED_SPARSE levels at
    Z 0 with TILED_FULL levels that give no Z is one focal plane. Planes known only by
    their TILED_FULL order (several in one instance, no Z) keep their own indices.
    """
    known = sorted(key for key in keys if key[0] == 0)
    unknown_is = known[0] if len(known) == 1 else (1, 0.0)
    resolved = {key: unknown_is if key == UNKNOWN_PLANE else key for key in keys}
    ordered = sorted(set(resolved.values()))
    position = {key: index for index, key in enumerate(ordered)}
    index = {key: position[resolved[key]] for key in keys}
    return index, [key[1] if key[0] == 0 else None for key in ordered]


def _levels(
    volumes: list[InstanceInfo],
    placements: dict[str, InstanceFrames],
    plane_index: dict[PlaneKey, int],
    spacing: dict[str, tuple[float, float] | None],
) -> list[Level]:
    by_size: dict[tuple[int, int, int, int], list[InstanceInfo]] = defaultdict(list)
    for info in volumes:
        tile = (info.pixels.columns, info.pixels.rows)
        by_size[(info.total_width, info.total_height, *tile)].append(info)
    sizes = sorted(by_size, key=lambda size: (-size[0], -size[1], size[2], size[3]))
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
                instance_uids=tuple(member.uid for member in members),
            )
        )
    return levels


def _grids(
    members: list[InstanceInfo],
    placements: dict[str, InstanceFrames],
    plane_index: dict[PlaneKey, int],
) -> list[TileGrid]:
    """A level's grids, in plane then natural path order. A grid one TILED_FULL layer
    fills alone is a `TileRun`; the others (TILED_SPARSE, concatenation parts, layers
    that meet) are laid out frame by frame, the first frame of a cell winning."""
    runs = _runs(members, placements, plane_index)
    grids: dict[tuple[int, str], dict[tuple[int, int], TilePosition]] = defaultdict(dict)
    for info in members:
        found = placements[info.uid]
        if isinstance(found, FullFrames):
            found = found._replace(layers=[
                layer for layer in found.layers
                if (plane_index[layer.plane_key], layer.optical_path) not in runs])
        cells: dict[tuple[PlaneKey, str], dict[tuple[int, int], TilePosition]] = {}
        for plane_key, path, column, row, frame in _placements(found):
            cell = cells.get((plane_key, path))
            if cell is None:
                cell = cells[(plane_key, path)] = grids[(plane_index[plane_key], path)]
            cell.setdefault((row, column), TilePosition(column, row, frame))
    ordered_keys = sorted({*grids, *runs}, key=lambda key: (key[0], _natural(key[1])))
    return [
        TileGrid(plane, path, runs[(plane, path)] if (plane, path) in runs else
                 [grids[(plane, path)][cell] for cell in sorted(grids[(plane, path)])])
        for plane, path in ordered_keys
    ]


def _runs(
    members: list[InstanceInfo],
    placements: dict[str, InstanceFrames],
    plane_index: dict[PlaneKey, int],
) -> dict[tuple[int, str], TileRun]:
    """The grids of a level one TILED_FULL layer fills alone, as `TileRun`s: its cells
    are distinct and in frame order, so they need no laying out."""
    feeds: dict[tuple[int, str], list[tuple[FullFrames, Layer] | None]] = defaultdict(list)
    for info in members:
        found = placements[info.uid]
        if isinstance(found, FullFrames):
            for layer in found.layers:
                feeds[(plane_index[layer.plane_key], layer.optical_path)].append((found, layer))
        else:
            for key in {(plane_index[plane_key], path) for plane_key, path in _frame_keys(found)}:
                feeds[key].append(None)
    runs = {}
    for key, fed in feeds.items():
        if len(fed) == 1 and fed[0] is not None:
            frames, layer = fed[0]
            runs[key] = TileRun(frames.uid, frames.columns, layer.first_cell, layer.count,
                                layer.first_number)
    return runs


def _associated(
    infos: dict[str, InstanceInfo], placements: dict[str, InstanceFrames]
) -> list[AssociatedImage]:
    images = []
    for kind in ASSOCIATED_KINDS:
        candidates = sorted(
            (info for info in infos.values() if info.flavour == kind.upper()),
            key=lambda info: (-info.total_width * info.total_height, info.uid),
        )
        if candidates:
            uid = candidates[0].uid
            tiles = tuple(TilePosition(p.column, p.row, p.frame)
                          for p in _placements(placements[uid]))
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
    paths = whole_number(first_value(meta, "00480302", 1) or 1, "NumberOfOpticalPaths", 0)
    if shared is not None and paths <= 1:
        return [str(shared)]
    return identifiers or ["1"]


def _z_offset(position: DicomJson) -> float | None:
    """ZOffsetInSlideCoordinateSystem (µm) rounded to Z_DECIMALS; None when absent."""
    z = first_value(position, Z_OFFSET)
    if z is None or z == "":
        return None
    return _rounded_z(decimal_number(z, "ZOffsetInSlideCoordinateSystem"))


def _plane_spacing_um(meta: DicomJson) -> float | None:
    """The distance between the focal planes of a TILED_FULL instance in µm: shared
    PixelMeasures SpacingBetweenSlices (mm), as wsidicom reads it; None when absent,
    zero, negative or not a number (the planes are then known by their order only)."""
    value = first_value(first_item(meta, SHARED_GROUPS, PIXEL_MEASURES), SPACING_BETWEEN_SLICES)
    try:
        spacing = decimal_number(value, "SpacingBetweenSlices") if value is not None else 0.0
    except ValueError:
        return None
    return spacing * 1000 if spacing > 0 else None


def _rounded_z(z_um: float) -> float:
    return round(z_um, Z_DECIMALS) + 0.0


def _pixel_spacing(meta: DicomJson) -> tuple[float, float] | None:
    """(row, column) spacing in mm, None when absent, not numbers or not positive: it
    is only shown in slide.json, so bad values must not cost the instance."""
    try:
        spacing = values(first_item(meta, SHARED_GROUPS, "00289110"), "00280030")
        if len(spacing) == 2:
            found = (decimal_number(spacing[0], "PixelSpacing"),
                     decimal_number(spacing[1], "PixelSpacing"))
        else:
            found = _spacing_from_volume(meta)
    except ValueError:
        return None
    return found if found is not None and min(found) > 0 else None


def _spacing_from_volume(meta: DicomJson) -> tuple[float, float] | None:
    width_mm = first_value(meta, "00480001")
    height_mm = first_value(meta, "00480002")
    columns = first_value(meta, "00480006")
    rows = first_value(meta, "00480007")
    if not (width_mm and height_mm and columns and rows):
        return None
    return (decimal_number(height_mm, "ImagedVolumeHeight") / whole_number(rows, "Rows", 1),
            decimal_number(width_mm, "ImagedVolumeWidth") / whole_number(columns, "Columns", 1))


def _transfer_syntax(meta: DicomJson) -> str | None:
    syntax = first_value(meta, "00020010") or first_value(meta, "00083002")
    return (syntax.strip() or None) if isinstance(syntax, str) else None


def _natural(text: str) -> tuple[int, int | str]:
    """Numeric identifiers in numeric order ("2" before "10"); ASCII digits only, as
    str.isdigit() accepts "²", which int() refuses."""
    return (0, int(text)) if text.isascii() and text.isdigit() else (1, text)
