"""When a series was made, from its DICOM dates and times: the mtime idcfs shows.

A series' time is its newest ContentDate/ContentTime, else its newest SeriesDate/
SeriesTime, else its newest StudyDate/StudyTime (the first pair any instance has wins,
so one instance with a content date outranks others with only a study date). DICOM
dates and times carry no zone: they are read as UTC unless TimezoneOffsetFromUTC
(0008,0201) gives one, so the same data shows the same mtime on every machine. A value
that is not a date or a time reads as absent: a bad date must never cost a slide.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Mapping
from typing import Any

from idcfs.dicom.dicom_json import DicomJson, first_value

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
TIMEZONE_OFFSET = "00080201"
# (date tag, time tag, keyword of the date, keyword of the time), in order of preference
DATE_TIME_PAIRS = (
    ("00080023", "00080033", "ContentDate", "ContentTime"),
    ("00080021", "00080031", "SeriesDate", "SeriesTime"),
    ("00080020", "00080030", "StudyDate", "StudyTime"),
)
DATE_PATTERN = re.compile(r"(\d{4})[.-]?(\d{2})[.-]?(\d{2})")  # DA, ACR-NEMA, ISO 8601
TIME_PATTERN = re.compile(r"(\d{2})(?::?(\d{2})(?::?(\d{2})(?:\.(\d{1,6}))?)?)?")
OFFSET_PATTERN = re.compile(r"([+-])(\d{2})(\d{2})")


def time_ns(date: Any, time: Any = None, offset: Any = None) -> int | None:
    """Nanoseconds since the epoch of a DICOM date (DA, or ISO 8601 as catalogs give it)
    at a time of day (TM) and zone (TimezoneOffsetFromUTC, "+HHMM"). None when `date`
    is absent or not a date; a time or offset that is absent or malformed reads as
    midnight and UTC."""
    if isinstance(date, int) and not isinstance(date, bool):
        date = str(date)  # a CSV catalog's 20240102, read as a number
    day = DATE_PATTERN.fullmatch(date.strip()) if isinstance(date, str) else None
    if day is None:
        return None
    try:
        moment = dt.datetime(int(day[1]), int(day[2]), int(day[3]), tzinfo=_zone(offset))
    except ValueError:  # month 13, day 32
        return None
    return (moment + _time_of_day(time) - EPOCH) // dt.timedelta(microseconds=1) * 1000


def _time_of_day(time: Any) -> dt.timedelta:
    """A TM value (HH, HHMM, HHMMSS, HHMMSS.FFFFFF, or with colons) after midnight; zero
    when absent or malformed."""
    clock = TIME_PATTERN.fullmatch(time.strip()) if isinstance(time, str) else None
    if clock is None:
        return dt.timedelta(0)
    hour, minute, second = (int(part or 0) for part in clock.groups()[:3])
    if hour > 23 or minute > 59 or second > 60:
        return dt.timedelta(0)
    micro = int((clock[4] or "0").ljust(6, "0"))
    return dt.timedelta(hours=hour, minutes=minute, seconds=second, microseconds=micro)


def series_time_ns(instances: Iterable[DicomJson]) -> int | None:
    """The time of a series from its instances' DICOM JSON (the rule above); None when
    no instance has a usable date."""
    listed = list(instances)
    for date_tag, time_tag, _, _ in DATE_TIME_PAIRS:
        found = [time_ns(first_value(meta, date_tag), first_value(meta, time_tag),
                         first_value(meta, TIMEZONE_OFFSET)) for meta in listed]
        known = [moment for moment in found if moment is not None]
        if known:
            return max(known)
    return None


def fields_time_ns(fields: Mapping[str, Any]) -> int | None:
    """The same rule over a catalog's fields, keyed by keyword (StudyDate, ...)."""
    offset = fields.get("TimezoneOffsetFromUTC")
    for _, _, date_name, time_name in DATE_TIME_PAIRS:
        moment = time_ns(fields.get(date_name), fields.get(time_name), offset)
        if moment is not None:
            return moment
    return None


def _zone(offset: Any) -> dt.tzinfo:
    """The zone of a TimezoneOffsetFromUTC value; UTC when absent or malformed."""
    found = OFFSET_PATTERN.fullmatch(offset.strip()) if isinstance(offset, str) else None
    if found is None or int(found[2]) > 14 or int(found[3]) > 59:
        return dt.UTC
    minutes = int(found[2]) * 60 + int(found[3])
    return dt.timezone(dt.timedelta(minutes=-minutes if found[1] == "-" else minutes))
