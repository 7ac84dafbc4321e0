"""A catalog made from the DICOM files themselves (`idcfs mount --files LOCATION`).

LOCATION is a local folder, `s3://bucket/prefix` or `gs://bucket/prefix`: everything
under it is listed once, and the header of every DICOM file is read (in parallel, kept
by the `HeaderReader`, so with `--cache-dir` a remount reads none again). Series are
grouped by their own Study and Series Instance UIDs, so a folder that s5cmd or idc-index
filled gives the same `studies/<study>/<series>/` tree as IDC. Files that are not DICOM
(a README, a manifest) are skipped with a log line; a file that cannot be read because
of the server fails the scan (EIO at mount), never silently shrinks the tree.

Each file is kept as listed, with its version (`ObjectInfo.version`), so a file
rewritten since a previous mount is read again, whatever its size. A file found changed
during the mount (`forget_series`) makes its series' files listed again when the
series is next asked for.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import defaultdict
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from idcfs.catalog.base import FlatCatalog, SeriesEntry
from idcfs.dicom.dicom_json import first_value
from idcfs.dicom.times import series_time_ns
from idcfs.errors import FetchError, MetadataError
from idcfs.source.dicomfile import FileHeader
from idcfs.source.files import HeaderReader, series_version_of
from idcfs.source.objects import ObjectInfo, ObjectStore

log = logging.getLogger(__name__)

WSI_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"
SCAN_THREADS = 16
# Header attributes copied into slide.json, as the IDC index gives them for IDC series.
SERIES_FIELDS = {
    "PatientID": "00100020", "StudyDate": "00080020", "StudyDescription": "00081030",
    "SeriesDescription": "0008103E", "SeriesNumber": "00200011", "Manufacturer": "00080070",
    "ManufacturerModelName": "00081090", "ContainerIdentifier": "00400512",
}
Key = tuple[str, str]  # (study, series)


class FolderCatalog(FlatCatalog):
    """A `Catalog` and a `SeriesFiles` over the DICOM files under one prefix of a store."""

    def __init__(self, store: ObjectStore, headers: HeaderReader, prefix: str = "",
                 timeout: float = 30.0) -> None:
        self.store = store
        self.headers = headers
        self.prefix = prefix
        self.timeout = timeout
        self._series: dict[Key, list[ObjectInfo]] = {}
        self._fields: dict[Key, dict[str, Any]] = {}
        self._times: dict[Key, int | None] = {}
        self._studies: dict[str, list[str]] = {}
        self._stale: set[Key] = set()
        self._lock = threading.Lock()
        self._scanned = False

    # -- the scan ---------------------------------------------------------------------

    def scan(self) -> None:
        """List the prefix and read every header; FetchError when the store fails."""
        with self._lock:
            if self._scanned:
                return
            objects = self.store.list(self.prefix, time.monotonic() + self.timeout)
            with ThreadPoolExecutor(SCAN_THREADS, "idcfs-scan") as pool:
                headers = list(pool.map(self._header_or_none, objects))
            self._group(zip(objects, headers, strict=True))
            self._scanned = True
        log.info("%s: %d series in %d studies from %d files", self.store.description,
                 len(self._series), len(self._studies), len(objects))

    def _header_or_none(self, info: ObjectInfo) -> FileHeader | None:
        try:
            return self.headers.header(info, time.monotonic() + self.timeout)
        except MetadataError as error:
            log.info("%s: skipped, not a DICOM WSI file (%s)", info.key, error)
            return None

    def _group(self, found: Iterable[tuple[ObjectInfo, FileHeader | None]]) -> None:
        series: dict[Key, list[ObjectInfo]] = defaultdict(list)
        wsi: dict[Key, list[dict[str, Any]]] = defaultdict(list)
        for info, header in found:
            if header is None:
                continue
            meta = header.dicom_json
            key = (str(first_value(meta, "0020000D", "")), str(first_value(meta, "0020000E", "")))
            if not all(key):
                log.info("%s: skipped, no Study or Series Instance UID", info.key)
                continue
            series[key].append(info)
            if first_value(meta, "00080016") == WSI_SOP_CLASS:
                wsi[key].append(meta)
                self._fields.setdefault(key, _series_fields(meta))
        self._series = {key: files for key, files in series.items() if key in wsi}
        self._times = {key: series_time_ns(metas) for key, metas in wsi.items()}
        studies: dict[str, list[str]] = defaultdict(list)
        for study, series_uid in sorted(self._series):
            studies[study].append(series_uid)
        self._studies = dict(studies)

    # -- Catalog ------------------------------------------------------------------------

    def studies(self, collection_id: str | None = None) -> list[str]:
        self.scan()
        return sorted(self._studies) if collection_id is None else []

    def series(self, study_uid: str, collection_id: str | None = None) -> list[SeriesEntry]:
        self.scan()
        if collection_id is not None:
            return []
        return [
            SeriesEntry(study_uid, series_uid, None, self._fields.get((study_uid, series_uid), {}),
                        self._times.get((study_uid, series_uid)))
            for series_uid in self._studies.get(study_uid, [])
        ]

    def revision_ns(self) -> int | None:
        """The newest series' time (its headers' dates), once scanned (at mount)."""
        return max((moment for moment in self._times.values() if moment is not None),
                   default=None)

    # -- SeriesFiles --------------------------------------------------------------------

    def series_objects(self, study_uid: str, series_uid: str,
                       deadline: float) -> list[ObjectInfo]:
        self.scan()
        key = (study_uid, series_uid)
        with self._lock:
            files = self._series.get(key)
            stale = key in self._stale
        if not files:
            raise FetchError(f"series {series_uid}: no files under {self.prefix!r}")
        return self._listed_again(key, files, deadline) if stale else list(files)

    def header_reads_ahead(self, study_uid: str, series_uid: str) -> int | None:
        """0: the scan read every header, and they are kept (`HeaderReader`); None for a
        series found changed, whose files are listed and read again."""
        with self._lock:
            stale = (study_uid, series_uid) in self._stale
        return None if stale else 0

    def series_version(self, study_uid: str, series_uid: str) -> str | None:
        """The series' files as listed, digested; None before a scan found them."""
        self.scan()
        with self._lock:
            files = self._series.get((study_uid, series_uid))
        return series_version_of(files) if files else None

    def forget_series(self, study_uid: str, series_uid: str) -> None:
        """A file of the series changed since it was listed: list its files again when
        the series is next asked for."""
        with self._lock:
            self._stale.add((study_uid, series_uid))

    def _listed_again(self, key: Key, files: list[ObjectInfo],
                      deadline: float) -> list[ObjectInfo]:
        """The series' files as they are now: one listing of the folder that holds
        them all (files added since the scan are found at the next mount)."""
        shared = os.path.commonprefix([info.key for info in files]).rpartition("/")[0]
        listed = {info.key: info for info in
                  self.store.list(f"{shared}/" if shared else "", deadline)}
        now = [listed[info.key] for info in files if info.key in listed]
        if not now:
            raise FetchError(f"series {key[1]}: its files are gone from {self.store.description}")
        with self._lock:
            self._series[key] = now
            self._stale.discard(key)
        log.info("series %s: %d files listed again", key[1], len(now))
        return now


def _series_fields(meta: dict[str, Any]) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for name, tag in SERIES_FIELDS.items():
        value = first_value(meta, tag)
        if isinstance(value, dict):
            value = value.get("Alphabetic")
        if value not in (None, ""):
            fields[name] = value
    return fields
