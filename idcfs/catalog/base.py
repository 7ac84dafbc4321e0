"""What exists: the catalog interface every source of series lists implements.

A catalog answers "which studies and series are there", never "what is inside a
series" (that is the slide model's job, from DICOMweb series metadata).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from idcfs.dicom.times import fields_time_ns


@dataclass(frozen=True)
class SeriesEntry:
    """One slide series as a catalog knows it."""

    study_uid: str
    series_uid: str
    collection_id: str | None = None
    # Catalog fields merged into the series' slide.json (collection, PatientID,
    # licence, source DOI, IDC data version, ...). JSON-serialisable values only.
    fields: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)
    # When the series was made, as the catalog knows it (idcfs.dicom.times), for the
    # mtime of its directory; None: from `fields` (StudyDate, ...) if they have a date.
    time_ns: int | None = field(default=None, compare=False)

    def made_ns(self) -> int | None:
        """The series' time from the catalog: `time_ns`, else from its fields."""
        return self.time_ns if self.time_ns is not None else fields_time_ns(self.fields)


class Catalog(Protocol):
    """A read-only listing of slide series.

    Implementations must be safe to call from several threads at once and may
    block (network, database); the filesystem calls them off its event loop.
    Methods return lists in a stable, sorted order.
    """

    def has_collections(self) -> bool:
        """True when the catalog groups series into collections (a `collections/` tree)."""
        ...

    def collections(self) -> list[str]:
        """All collection ids, sorted. Empty when has_collections() is False."""
        ...

    def collection_info(self, collection_id: str) -> dict[str, Any] | None:
        """JSON-serialisable facts for collection.json; None when the collection is unknown."""
        ...

    def studies(self, collection_id: str | None = None) -> list[str]:
        """StudyInstanceUIDs, sorted; only those of `collection_id` when it is given."""
        ...

    def series(self, study_uid: str, collection_id: str | None = None) -> list[SeriesEntry]:
        """The slide series of one study (restricted to a collection when given), sorted by UID."""
        ...


def revision_ns(catalog: Catalog) -> int | None:
    """When the catalog's content was last revised (the IDC index's data release, a
    user's catalog file's modification, the newest series a search found), for the mtime
    of the directories it makes; None when it cannot tell without a request. A catalog
    tells by an optional `revision_ns()` method; it must never block on the network."""
    tell = getattr(catalog, "revision_ns", None)
    return tell() if callable(tell) else None


class FlatCatalog:
    """The collection half of a `Catalog` for one that has none (a QIDO-RS search, the
    headers of a folder of files): only `studies/` is shown."""

    def has_collections(self) -> bool:
        return False

    def collections(self) -> list[str]:
        return []

    def collection_info(self, collection_id: str) -> dict[str, Any] | None:
        return None
