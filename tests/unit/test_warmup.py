"""The warm-up of entering a series (idcfs/source/warmup.py): it runs the header, listing
and slide paths, sends nothing, takes no lock a request needs, gives way to a request,
and a failure in it is logged and harmless."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from idcfs.slide.parse import parse_slide
from idcfs.source import warmup
from idcfs.source.dicomfile import _walked_header, read_header
from idcfs.source.files import FileFrameSource, HeaderReader
from idcfs.source.folder import FolderCatalog
from idcfs.source.objects import LocalFolderStore

IDC_STYLE = Path(__file__).parent.parent / "data" / "idc-style"
WAIT_S = 30.0


def folder_source() -> tuple[FileFrameSource, FolderCatalog, LocalFolderStore]:
    store = LocalFolderStore(IDC_STYLE)
    headers = HeaderReader(store)
    catalog = FolderCatalog(store, headers)
    return FileFrameSource(store, catalog, headers=headers), catalog, store


def requests(store: LocalFolderStore) -> int:
    return sum(store.statistics()["requests"].values())


def test_the_built_header_reads_as_a_whole_slide_instance() -> None:
    data = warmup.warm_header()
    # read by the walk, not left to dcmread: the warm-up runs what real headers run
    assert _walked_header(data, len(data)) is not None
    assert b"\x48\x00\x08\x00SQ\x00\x00\xff\xff\xff\xff" not in data  # a sequence of
    assert b"\x00\x52\x29\x92SQ\x00\x00\xff\xff\xff\xff" in data  # each length kind
    header = read_header(lambda start, length: data[start : start + length], len(data))
    assert header.encapsulated and header.frame_count == 1
    assert header.dicom_json["00080008"]["Value"] == ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
    assert header.dicom_json["00280008"] == {"vr": "IS", "Value": [1]}
    shared = header.dicom_json["52009229"]["Value"][0]
    assert shared["00289110"]["Value"][0]["00280030"]["Value"] == [0.0005, 0.0005]
    slide = parse_slide("1.2.826.0.1.3680043.8.498.1.1", "1.2.826.0.1.3680043.8.498.1.2",
                        [header.dicom_json])
    assert len(slide.levels) == 1


def test_the_warm_up_runs_every_round_unless_stopped() -> None:
    asked: list[int] = []

    def never() -> bool:
        asked.append(1)
        return False

    assert warmup.warm_up(never, rounds=3) is True
    assert len(asked) == 3 * 3  # before each step (listing, answer headers, header) of each round
    assert warmup.warm_up(lambda: True, rounds=3) is False


def test_the_source_warms_up_without_a_request_or_a_lock_a_request_needs() -> None:
    source, _, store = folder_source()
    before = requests(store)
    try:
        # the locks entering a series and reading frames take, held throughout
        with source._lock, source.headers._lock:
            running = source.warm_up()
            assert running.finished.wait(WAIT_S)
        assert running.completed
        assert source.warm_up() is running  # once a mount
        assert requests(store) == before  # nothing sent, nothing read
    finally:
        source.close()


def test_a_request_stops_the_warm_up(monkeypatch: pytest.MonkeyPatch) -> None:
    source, catalog, _ = folder_source()
    entry = catalog.series(catalog.studies()[0])[0]
    monkeypatch.setattr(warmup, "ROUNDS", 10**9)  # would run for hours
    try:
        running = source.warm_up()
        found = source.series_metadata(entry.study_uid, entry.series_uid)
        assert found
        assert running.finished.wait(WAIT_S)
        assert not running.completed
    finally:
        source.close()


def test_a_failing_warm_up_is_logged_and_harmless(monkeypatch: pytest.MonkeyPatch,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("injected")

    monkeypatch.setattr(warmup, "read_header", broken)
    source, catalog, _ = folder_source()
    try:
        with caplog.at_level(logging.WARNING, logger="idcfs.source.warmup"):
            running = source.warm_up()
            assert running.finished.wait(WAIT_S)
        assert not running.completed
        assert "warming up the header path failed" in caplog.text
        assert "injected" in caplog.text
        entry = catalog.series(catalog.studies()[0])[0]
        assert source.series_metadata(entry.study_uid, entry.series_uid)  # reads on
    finally:
        source.close()
