"""The seam between the loader and wherever frames come from.

A `FrameSource` answers two questions: what the instances of a series are (their DICOM
JSON, each with a `location` only the source itself understands), and what the stored
bytes of some frames of one instance are. DICOMweb (`idcfs.source.dicomweb`) is one
source; DICOM files read by byte ranges are another. Everything above (slide store,
loader, read-ahead, caches, the tree) holds a `FrameSource` and nothing more specific,
as wsidicom's web and file image data sit behind one interface and mountpoint-s3's file
system is generic over its object client.

Promises every source keeps:
- `frames` returns exactly one `Frame` per number asked, in the order asked, or raises
  `FetchError` (the server or the file could not give them) - never a partial list.
- Every call is bounded in time (the source's own timeouts) and thread-safe.
- A transient failure is a `FetchError`, never a `NotFoundError`.

A source whose instances are files (`idcfs.source.files`) also satisfies
`InstanceFiles`: their sizes and bytes by ranges, for `dicom/<SOPInstanceUID>.dcm`.
DICOMweb does not (a server's instance, retrieved whole, is not the stored file).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from idcfs.dicom.dicom_json import DicomJson
from idcfs.slide.model import InstanceInfo


@dataclass(frozen=True)
class Frame:
    """One frame as stored, with the transfer syntax its source declared (if any)."""

    data: bytes
    transfer_syntax: str | None


@dataclass(frozen=True)
class InstanceMetadata:
    """One instance of a series: its DICOM JSON, where the source finds it again, and
    its revision (`InstanceInfo.revision`: "" unless the source's files can change)."""

    location: str
    dicom: DicomJson
    revision: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"location": self.location, "dicom": dict(self.dicom),
                **({"revision": self.revision} if self.revision else {})}

    @classmethod
    def from_json(cls, value: Any) -> InstanceMetadata:
        """Inverse of `to_json`; ValueError when `value` is not of that shape."""
        if not isinstance(value, dict) or not isinstance(value.get("dicom"), dict):
            raise ValueError("not an instance metadata record")
        return cls(str(value.get("location", "")), value["dicom"],
                   str(value.get("revision", "")))


class FrameSource(Protocol):
    """Where series metadata and stored frames come from; thread-safe, blocking."""

    @property
    def description(self) -> str:
        """What the log says this source is (no credentials)."""
        ...

    def series_metadata(self, study_uid: str, series_uid: str) -> list[InstanceMetadata]:
        """Every instance of a series; FetchError when the source cannot say."""
        ...

    def frames(self, instance: InstanceInfo, numbers: Sequence[int]) -> list[Frame]:
        """Frames `numbers` (1-based) of one instance as stored, in the order asked."""
        ...

    def close(self) -> None:
        """Release connections; no call is made after this."""
        ...

    def statistics(self) -> dict[str, Any]:
        """Counters for the statistics file (requests sent, bytes received...)."""
        ...


@dataclass(frozen=True)
class FrameSizeHints:
    """What a source knows of an instance's frames before fetching any: each frame's
    stored length (exact, or an upper bound: a DICOM pad byte, several fragments), and
    the first frame's first bytes (its JPEG header, from which the tile layer tells the
    size of the JPEG it will serve)."""

    lengths: tuple[int, ...]  # frame 1 first
    first_head: bytes
    transfer_syntax: str | None


@runtime_checkable
class FrameSizes(Protocol):
    """A source that can tell frame sizes before fetching them (DICOM files, by their
    frame index); thread-safe, blocking, bounded by the source's deadline."""

    def frame_size_hints(self, instance: InstanceInfo) -> FrameSizeHints | None:
        """The instance's frame lengths, or None when the source cannot tell cheaply."""
        ...


@runtime_checkable
class ChangingSeries(Protocol):
    """A source whose series' files can be rewritten under the same UIDs (a user's
    folder or bucket, `--files`): what the slide store keys a series' metadata by, and
    how it hears that a file changed since it was listed."""

    def series_version(self, study_uid: str, series_uid: str) -> str | None:
        """What changes when a file of the series changes, known without a request;
        None when the source cannot tell without one."""
        ...

    def on_series_changed(self, listener: Callable[[str, str], None]) -> None:
        """Call `listener(study_uid, series_uid)` when a file of the series is found
        changed since it was listed."""
        ...


@runtime_checkable
class InstanceFiles(Protocol):
    """A source whose instances are stored files, readable by ranges; thread-safe,
    blocking, each call bounded by the source's deadline."""

    def instance_file_size(self, instance: InstanceInfo) -> int:
        """The size of the instance's file, as listed (no request)."""
        ...

    def read_instance_file(self, instance: InstanceInfo, start: int, length: int) -> bytes:
        """Bytes of the instance's file as stored; fewer than `length` only at its end;
        FetchError when the file cannot be read."""
        ...
