"""A catalog read from the server itself with QIDO-RS (the core `--url` mode)."""

from __future__ import annotations

import threading
from collections import defaultdict
from typing import Protocol

from idcfs.catalog.base import FlatCatalog, SeriesEntry


class SeriesSearch(Protocol):
    def search_wsi_series(self) -> list[SeriesEntry]: ...


class QidoCatalog(FlatCatalog):
    """Every series with whole-slide instances, searched once on first use and kept.

    Its revision is the newest series time the search found (None before it ran: the
    root's mtime must not wait for a search)."""

    def __init__(self, search: SeriesSearch) -> None:
        self._search = search
        self._lock = threading.Lock()
        self._by_study: dict[str, list[SeriesEntry]] | None = None

    def studies(self, collection_id: str | None = None) -> list[str]:
        return sorted(self._series_by_study())

    def series(self, study_uid: str, collection_id: str | None = None) -> list[SeriesEntry]:
        return list(self._series_by_study().get(study_uid, []))

    def _series_by_study(self) -> dict[str, list[SeriesEntry]]:
        with self._lock:
            if self._by_study is None:
                grouped: dict[str, list[SeriesEntry]] = defaultdict(list)
                for entry in self._search.search_wsi_series():
                    grouped[entry.study_uid].append(entry)
                self._by_study = dict(grouped)
            return self._by_study

    def revision_ns(self) -> int | None:
        with self._lock:
            searched = self._by_study
        times = [entry.time_ns for entries in (searched or {}).values() for entry in entries
                 if entry.time_ns is not None]
        return max(times, default=None)
