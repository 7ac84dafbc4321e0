"""The slide model: a series as levels of tile grids, each tile a frame of an instance.

Pure data, built once from series metadata by `idcfs.slide.parse`; nothing here
touches the network.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, NamedTuple, overload

from idcfs.dicom.pixels import PixelFormat


class FrameRef(NamedTuple):
    """One stored frame: the instance that holds it and its 1-based number there.

    A named tuple, as `TilePosition`: a slide has one per frame (hundreds of thousands
    for a large one), made when a series is entered, and a tuple is made in half the
    time of a frozen dataclass."""

    instance_uid: str
    number: int


@dataclass(frozen=True)
class InstanceInfo:
    """What the tile layer needs of one instance to turn its frames into JPEG files."""

    uid: str
    image_type: tuple[str, ...]
    pixels: PixelFormat
    transfer_syntax: str | None
    frame_count: int
    total_width: int
    total_height: int
    location: str = ""  # where the frame source finds the instance; opaque to all else
    # What the tile caches key its tiles by, besides its UID and frame numbers: a digest
    # of the file's version for sources whose files can be rewritten under the same SOP
    # Instance UID (DICOM forbids it; regenerating tools do it), "" otherwise.
    revision: str = ""

    @property
    def flavour(self) -> str:
        """VOLUME, LABEL, OVERVIEW or THUMBNAIL (the third ImageType value)."""
        return self.image_type[2].upper() if len(self.image_type) > 2 else "VOLUME"


class TilePosition(NamedTuple):
    """A tile at zero-based column and row, and the frame that holds it."""

    column: int
    row: int
    frame: FrameRef

    @property
    def file_name(self) -> str:
        return f"{self.column}_{self.row}.jpg"


class TileRun(Sequence[TilePosition]):
    """The tiles of a grid that one TILED_FULL instance fills alone: `cells` cells in
    frame order from `first_cell` (column fastest), frames from `first_number`.

    Its length is known at once; the tuples are made on first use (a listing, a read
    ahead, a render), once, under a lock: entering a series of 200,000 frames must not
    cost a tuple per frame. Equal to a list of the same tiles."""

    def __init__(self, instance_uid: str, columns: int, first_cell: int, cells: int,
                 first_number: int) -> None:
        self.instance_uid = instance_uid
        self.columns = columns
        self.first_cell = first_cell
        self.cells = cells  # not `count`: that is Sequence.count(value), kept callable
        self.first_number = first_number
        self._tiles: list[TilePosition] | None = None
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self.cells

    @property
    def is_made(self) -> bool:
        """Whether the tiles have been made (a listing, a read ahead... used them)."""
        return self._tiles is not None

    @overload
    def __getitem__(self, index: int) -> TilePosition: ...

    @overload
    def __getitem__(self, index: slice) -> list[TilePosition]: ...

    def __getitem__(self, index: int | slice) -> TilePosition | list[TilePosition]:
        return self._made()[index]

    def __iter__(self) -> Iterator[TilePosition]:
        return iter(self._made())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, TileRun | list):
            return self._made() == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # mutable-looking, as a list

    def __repr__(self) -> str:
        return (f"TileRun({self.instance_uid!r}, columns={self.columns}, "
                f"cells {self.first_cell}+{self.cells}, frames from {self.first_number})")

    def _made(self) -> list[TilePosition]:
        made = self._tiles
        if made is None:
            with self._lock:
                made = self._tiles
                if made is None:
                    made = self._tiles = self._make()
        return made

    def _make(self) -> list[TilePosition]:
        """The tiles; `tuple.__new__` is what the named tuples' own constructors call,
        without their Python frame: a third less time per tile."""
        uid, columns, number = self.instance_uid, self.columns, self.first_number - self.first_cell
        new = tuple.__new__
        return [new(TilePosition, (cell % columns, cell // columns,
                                   new(FrameRef, (uid, number + cell))))
                for cell in range(self.first_cell, self.first_cell + self.cells)]


@dataclass
class TileGrid:
    """The tiles of one focal plane and optical path of a level, in frame order: a list,
    or a `TileRun` made on first use."""

    plane_index: int
    optical_path: str
    tiles: Sequence[TilePosition] = field(default_factory=list)

    @property
    def key(self) -> tuple[int, str]:
        """(plane_index, optical_path): what names this grid across the levels."""
        return self.plane_index, self.optical_path

    @property
    def directory_name(self) -> str:
        safe_path = self.optical_path.replace("/", "_") or "none"
        return f"plane-{self.plane_index}_path-{safe_path}"


@dataclass
class Level:
    """One pyramid level: its size, tiling and one grid per plane/path combination."""

    index: int
    width: int
    height: int
    tile_width: int
    tile_height: int
    downsample: float
    pixel_spacing_mm: tuple[float, float] | None
    grids: list[TileGrid]
    instance_uids: tuple[str, ...] = ()  # the instances the level's frames come from

    @property
    def columns(self) -> int:
        return -(-self.width // self.tile_width)

    @property
    def rows(self) -> int:
        return -(-self.height // self.tile_height)

    @property
    def directory_name(self) -> str:
        return f"level-{self.index}"

    def grid(self, key: tuple[int, str]) -> TileGrid | None:
        """The grid of that (plane_index, optical_path), if the level has one."""
        return next((grid for grid in self.grids if grid.key == key), None)

    def describe(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "directory": self.directory_name,
            "width": self.width,
            "height": self.height,
            "tile_width": self.tile_width,
            "tile_height": self.tile_height,
            "columns": self.columns,
            "rows": self.rows,
            "downsample": self.downsample,
            "pixel_spacing_mm": list(self.pixel_spacing_mm) if self.pixel_spacing_mm else None,
            "tile_count": sum(len(grid.tiles) for grid in self.grids),
        }


@dataclass(frozen=True)
class AssociatedImage:
    """A label, overview or thumbnail image: one instance, maybe tiled over frames."""

    kind: str
    instance_uid: str
    tiles: tuple[TilePosition, ...]

    @property
    def file_name(self) -> str:
        return f"{self.kind}.jpg"


SERIES_FACTS = ("PatientID", "ContainerIdentifier", "SeriesDescription")
"""Attributes of the series' own metadata slide.json shows with any source (the slide
label is ContainerIdentifier)."""


@dataclass
class Slide:
    """A whole-slide series: levels in decreasing resolution plus associated images.

    `time_ns` is when the series was made (`idcfs.dicom.times`: content, series or study
    date and time), None when its metadata has no date; `facts` holds SERIES_FACTS as
    the metadata gives them (None when absent)."""

    study_uid: str
    series_uid: str
    instances: dict[str, InstanceInfo]
    levels: list[Level]
    associated: list[AssociatedImage]
    focal_planes: list[float | None]
    optical_paths: list[str]
    time_ns: int | None = None
    facts: dict[str, Any] = field(default_factory=dict)

    @cached_property
    def revision(self) -> str:
        """What the slide's computed files (renders, tissue mask) are keyed by besides
        its series: a digest of its instances' revisions (`InstanceInfo.revision`), so a
        file rewritten under the same UIDs, or one added or removed, gets them computed
        afresh; "" when no instance has one (DICOMweb, IDC), whose keys stay as before."""
        if not any(info.revision for info in self.instances.values()):
            return ""
        revisions = "\n".join(sorted(f"{uid}#{info.revision}"
                                     for uid, info in self.instances.items()))
        return hashlib.blake2b(revisions.encode(), digest_size=8).hexdigest()

    @property
    def has_plane_directories(self) -> bool:
        """True when tiles live in one subdirectory per plane/path combination."""
        return len(self.focal_planes) > 1 or len(self.optical_paths) > 1

    def levels_with(self, key: tuple[int, str]) -> list[Level]:
        """The levels that have a grid of that (plane_index, optical_path), finest first."""
        return [level for level in self.levels if level.grid(key) is not None]

    def describe(self, learned_syntaxes: Mapping[str, str] | None = None) -> dict[str, Any]:
        """The content of slide.json (before catalog fields are added). An instance
        whose metadata has no transfer syntax shows the one `learned_syntaxes` (by
        SOPInstanceUID) has for it, learned from its frames, or None."""
        learned = learned_syntaxes or {}
        syntaxes = {uid: info.transfer_syntax or learned.get(uid)
                    for uid, info in self.instances.items()}
        return {
            "StudyInstanceUID": self.study_uid,
            "SeriesInstanceUID": self.series_uid,
            **{name: self.facts.get(name) for name in SERIES_FACTS},
            "levels": [level.describe() for level in self.levels],
            "focal_planes": [
                {"index": index, "z_offset_um": z} for index, z in enumerate(self.focal_planes)
            ],
            "optical_paths": self.optical_paths,
            "tile_directories": self._tile_directories(),
            "photometric_interpretation": self._distinct(lambda i: i.pixels.photometric),
            "transfer_syntax": sorted({syntax for syntax in syntaxes.values() if syntax}),
            "image_types": self._distinct(lambda i: "\\".join(i.image_type)),
            "associated_images": [image.file_name for image in self.associated],
            "instances": self._describe_instances(syntaxes),
        }

    def syntaxes_known(self) -> bool:
        """Whether the metadata gives every instance's transfer syntax (then slide.json
        never changes)."""
        return all(info.transfer_syntax for info in self.instances.values())

    def _describe_instances(self, syntaxes: Mapping[str, str | None]) -> list[dict[str, Any]]:
        """Each instance: its level (None for label, overview, thumbnail), kind, frame
        count and transfer syntax, with where that came from ("metadata", "frames", or
        None while unknown); levels first, then by UID."""
        level_of = {uid: level.index for level in self.levels for uid in level.instance_uids}
        described = []
        for uid, info in self.instances.items():
            source = None
            if info.transfer_syntax:
                source = "metadata"
            elif syntaxes.get(uid):
                source = "frames"
            described.append({
                "SOPInstanceUID": uid, "level": level_of.get(uid), "kind": info.flavour,
                "frames": info.frame_count, "transfer_syntax": syntaxes.get(uid),
                "transfer_syntax_from": source,
            })
        return sorted(described, key=lambda item: (item["level"] is None, item["level"] or 0,
                                                   item["SOPInstanceUID"]))

    def _tile_directories(self) -> list[str]:
        if not self.has_plane_directories:
            return []
        names = {grid.directory_name for level in self.levels for grid in level.grids}
        return sorted(names)

    def _distinct(self, value_of: Any) -> list[Any]:
        values = {value_of(info) for info in self.instances.values()}
        return sorted(value for value in values if value)
