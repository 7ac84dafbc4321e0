"""Slides by series: the source's series metadata, parsed once and kept.

One metadata call per series (DICOMweb: one request; files: a listing and a header read
per instance). With a disk cache the metadata also survives a remount, together with
each instance's location in the source. For a source whose files can be rewritten
(`ChangingSeries`, `--files`) it is keyed by the series' files as listed too, and
dropped when the source finds a file changed since it was listed.
"""

from __future__ import annotations

import json
import logging
import threading

from idcfs.cache.disk import DiskCache
from idcfs.dicom.dicom_json import first_value
from idcfs.fetch.claims import DEFAULT_WAIT_S, Claims
from idcfs.slide.model import Slide
from idcfs.slide.parse import parse_slide
from idcfs.source.base import ChangingSeries, FrameSource, InstanceMetadata

log = logging.getLogger(__name__)

DISK_KEY_VERSION = "metadata-v3"


class SlideStore:
    """Thread-safe cache of parsed slides; failures are not cached (retried next time).

    A caller that finds the series being loaded by another waits at most `wait_s` (the
    mount's --timeout), like the loader's waiters: the loading call has that deadline
    on its own request, so a longer wait would only outlast the reader's."""

    def __init__(
        self, source: FrameSource, disk: DiskCache | None = None, wait_s: float = DEFAULT_WAIT_S
    ) -> None:
        self._source = source
        self._disk = disk
        self._slides: dict[tuple[str, str], Slide] = {}
        self._lock = threading.Lock()
        self._claims: Claims[Slide] = Claims(wait_timeout=wait_s)
        if isinstance(source, ChangingSeries):
            source.on_series_changed(self.forget)

    def get(self, study_uid: str, series_uid: str) -> Slide:
        key = (study_uid, series_uid)
        with self._lock:
            slide = self._slides.get(key)
        if slide is not None:
            return slide
        return self._claims.run(key, lambda: self._load(study_uid, series_uid))

    def forget(self, study_uid: str, series_uid: str) -> None:
        """Drop the series' slide and its metadata on disk (a file of it changed since it
        was listed): the next `get` asks the source again. Nodes already made from the
        slide keep it."""
        disk_key = self._disk_key(study_uid, series_uid)
        with self._lock:
            self._slides.pop((study_uid, series_uid), None)
        if self._disk is not None:
            self._disk.delete(disk_key)
        log.info("series %s: metadata dropped, a file of it changed", series_uid)

    def _disk_key(self, study_uid: str, series_uid: str) -> str:
        # keyed by source too: the locations in it are the source's (a WADO-RS path, an
        # object key), so one --cache-dir can serve DICOMweb and file mounts in turn;
        # and by the series' files as listed, when they can change
        key = f"{DISK_KEY_VERSION}/{self._source.description}/{study_uid}/{series_uid}"
        if isinstance(self._source, ChangingSeries):
            version = self._source.series_version(study_uid, series_uid)
            if version is not None:
                key = f"{key}/{version}"
        return key

    def _load(self, study_uid: str, series_uid: str) -> Slide:
        disk_key = self._disk_key(study_uid, series_uid)
        instances = self._from_disk(disk_key)
        fetched = instances is None
        if instances is None:
            instances = self._source.series_metadata(study_uid, series_uid)
        slide = parse_slide(
            study_uid, series_uid, [item.dicom for item in instances],
            {_uid(item): item.location for item in instances},
            {_uid(item): item.revision for item in instances if item.revision},
        )
        if fetched and self._disk is not None:
            self._disk.put(disk_key, json.dumps([item.to_json() for item in instances]).encode())
        with self._lock:
            self._slides[(study_uid, series_uid)] = slide
        log.info("series %s: %d levels, %d instances", series_uid, len(slide.levels),
                 len(slide.instances))
        return slide

    def _from_disk(self, disk_key: str) -> list[InstanceMetadata] | None:
        body = self._disk.get(disk_key) if self._disk is not None else None
        if body is None:
            return None
        try:
            return [InstanceMetadata.from_json(item) for item in json.loads(body)]
        except (ValueError, TypeError) as error:
            log.warning("disk cache: unreadable metadata %s (%s); fetching again", disk_key, error)
            return None


def _uid(item: InstanceMetadata) -> str:
    return str(first_value(item.dicom, "00080018", ""))
