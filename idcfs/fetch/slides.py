"""Slides by series: one series-metadata request each, parsed once and kept.

With a disk cache the metadata answer also survives a remount.
"""

from __future__ import annotations

import logging
import threading
from typing import Protocol

from idcfs.cache.disk import DiskCache
from idcfs.dicom.dicom_json import parse_json_list
from idcfs.fetch.claims import SingleFlight
from idcfs.slide.model import Slide
from idcfs.slide.parse import parse_slide

log = logging.getLogger(__name__)


class MetadataSource(Protocol):
    def series_metadata_json(self, study_uid: str, series_uid: str) -> bytes: ...


class SlideStore:
    """Thread-safe cache of parsed slides; failures are not cached (retried next time)."""

    def __init__(self, source: MetadataSource, disk: DiskCache | None = None) -> None:
        self._source = source
        self._disk = disk
        self._slides: dict[tuple[str, str], Slide] = {}
        self._lock = threading.Lock()
        self._flights: SingleFlight[Slide] = SingleFlight()

    def get(self, study_uid: str, series_uid: str) -> Slide:
        key = (study_uid, series_uid)
        with self._lock:
            slide = self._slides.get(key)
        if slide is not None:
            return slide
        return self._flights.run(key, lambda: self._load(study_uid, series_uid))

    def _load(self, study_uid: str, series_uid: str) -> Slide:
        disk_key = f"metadata/{study_uid}/{series_uid}"
        cached = self._disk.get(disk_key) if self._disk else None
        body = cached if cached is not None else self._source.series_metadata_json(
            study_uid, series_uid
        )
        slide = parse_slide(study_uid, series_uid, parse_json_list(body, "series metadata"))
        if cached is None and self._disk:
            self._disk.put(disk_key, body)
        with self._lock:
            self._slides[(study_uid, series_uid)] = slide
        log.info("series %s: %d levels, %d instances", series_uid, len(slide.levels),
                 len(slide.instances))
        return slide
