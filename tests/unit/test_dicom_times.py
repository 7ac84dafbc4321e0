"""A series' time from its DICOM dates and times (the mtime idcfs shows): formats, zones,
the order of preference, and values that are not dates."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from idcfs.dicom.times import fields_time_ns, series_time_ns, time_ns


def at(*parts: int, zone: dt.tzinfo = dt.UTC) -> int:
    moment = dt.datetime(*parts, tzinfo=zone)
    return int(moment.timestamp()) * 10**9 + moment.microsecond * 1000


def element(vr: str, value: str) -> dict[str, Any]:
    return {"vr": vr, "Value": [value]}


@pytest.mark.parametrize(("date", "time", "offset", "expected"), [
    ("20240102", "030405", None, at(2024, 1, 2, 3, 4, 5)),
    ("20240102", "030405.25", None, at(2024, 1, 2, 3, 4, 5, 250000)),
    ("20240102", "0304", None, at(2024, 1, 2, 3, 4)),
    ("20240102", "03:04:05", None, at(2024, 1, 2, 3, 4, 5)),  # ACR-NEMA
    ("2024.01.02", None, None, at(2024, 1, 2)),
    ("2022-05-17", None, None, at(2022, 5, 17)),  # ISO, as the IDC index gives it
    ("20240102", "030405", "-0500", at(2024, 1, 2, 8, 4, 5)),
    ("20240102", "030405", "+0130", at(2024, 1, 2, 1, 34, 5)),
    ("20240102", "250000", None, at(2024, 1, 2)),  # a bad time: midnight
    ("20240102", "030405", "EST", at(2024, 1, 2, 3, 4, 5)),  # a bad zone: UTC
])
def test_dates_times_and_zones(date: str, time: str | None, offset: str | None,
                               expected: int) -> None:
    assert time_ns(date, time, offset) == expected


@pytest.mark.parametrize("date", [None, "", "2024", "20241302", "20240230", "yesterday", True])
def test_what_is_not_a_date_reads_as_absent(date: Any) -> None:
    assert time_ns(date, "120000") is None


def test_content_date_wins_then_series_then_study_newest_instance_first() -> None:
    older = {"00080023": element("DA", "20200101"), "00080033": element("TM", "120000"),
             "00080020": element("DA", "20250101")}
    newer = {"00080023": element("DA", "20210101")}
    only_study = {"00080020": element("DA", "20260101")}
    assert series_time_ns([older, newer, only_study]) == at(2021, 1, 1)
    assert series_time_ns([{"00080021": element("DA", "20190101")}, only_study]) == at(2019, 1, 1)
    assert series_time_ns([only_study]) == at(2026, 1, 1)
    assert series_time_ns([{"00080023": element("DA", "garbage")}]) is None
    assert series_time_ns([]) is None


def test_catalog_fields_by_keyword() -> None:
    assert fields_time_ns({"StudyDate": "2011-05-19", "SeriesDate": "2012-01-01"}) == at(2012, 1, 1)
    assert fields_time_ns({"StudyDate": 20110519}) == at(2011, 5, 19)  # a CSV's number
    assert fields_time_ns({"StudyDate": None, "PatientID": "x"}) is None
