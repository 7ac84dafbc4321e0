"""A catalog read from the server itself with QIDO-RS (the core `--url` mode)."""

from __future__ import annotations

import threading
from collections import defaultdict
from typing import Protocol

from idcfs.catalog.base import FlatCatalog, SeriesEntry


class SeriesSearch(Protocol):
    def search_wsi_series(self) -> list[tuple[str, str]]: ...


class QidoCatalog(FlatCatalog):
    """Every series with whole-slide instances, searched once on first use and kept."""

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
                for study_uid, series_uid in self._search.search_wsi_series():
                    grouped[study_uid].append(SeriesEntry(study_uid, series_uid))
                self._by_study = dict(grouped)
            return self._by_study
