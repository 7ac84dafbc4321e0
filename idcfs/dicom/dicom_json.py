"""Reading values out of DICOM JSON objects (PS3.18 F.2).

Shape: `{"0020000D": {"vr": "UI", "Value": [...]}}`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from idcfs.errors import MetadataError

DicomJson = Mapping[str, Any]

# VL Whole Slide Microscopy Image Storage
WSI_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"


def values(element_map: DicomJson, tag: str) -> list[Any]:
    """All values of `tag`, or an empty list.

    Tolerant of shapes a server should not send (a non-object where an item belongs, a
    "Value" that is not an array): they read as absent, so no caller meets a stray
    AttributeError or iterates over a string's characters.
    """
    if not isinstance(element_map, Mapping):
        return []
    element = element_map.get(tag)
    if not isinstance(element, Mapping):
        return []
    found = element.get("Value")
    return list(found) if isinstance(found, list) else []


def first_value(element_map: DicomJson, tag: str, default: Any = None) -> Any:
    """The first value of `tag`, or `default`."""
    found = values(element_map, tag)
    return found[0] if found else default


def first_item(element_map: DicomJson, *sequence_tags: str) -> DicomJson:
    """Follow nested sequences through their first items; an empty dict when absent."""
    current: DicomJson = element_map
    for tag in sequence_tags:
        item = first_value(current, tag)
        if not isinstance(item, Mapping):
            return {}
        current = item
    return current


def whole_number(value: Any, what: str, minimum: int | None = None) -> int:
    """`value` (a JSON number or a numeric string, as IS/US/UL values come) as an int.

    Raises ValueError naming `what` for anything else: a fraction, NaN, infinity, a
    bool, a non-numeric string, or a value below `minimum`. Callers that skip a broken
    instance catch ValueError only, so every bad shape must end up as one.
    """
    number = _as_number(value)
    if number is None or (isinstance(number, float) and not number.is_integer()):
        raise ValueError(f"{what} is {value!r}, not a whole number")
    result = int(number)
    if minimum is not None and result < minimum:
        raise ValueError(f"{what} is {result}, less than {minimum}")
    return result


def decimal_number(value: Any, what: str) -> float:
    """A finite DS/FD value (JSON number or string; the first of a backslash list)."""
    number = _as_number(value.split("\\")[0] if isinstance(value, str) else value)
    if number is None:
        raise ValueError(f"{what} is {value!r}, not a finite number")
    return float(number)


def _as_number(value: Any) -> int | float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        text = value.strip()
        try:
            value = int(text)
        except ValueError:
            try:
                value = float(text)
            except ValueError:
                return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    return None


def parse_json_list(body: bytes, what: str) -> list[dict[str, Any]]:
    """A list of DICOM JSON objects from an answer body (empty body: empty list).

    MetadataError when the body is not JSON (including nesting too deep for the parser),
    not a list, or holds something other than objects.
    """
    if not body.strip():
        return []
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError) as error:
        raise MetadataError(f"{what}: answer is not JSON ({error})") from error
    if not isinstance(parsed, list):
        raise MetadataError(f"{what}: answer is not a JSON list")
    if not all(isinstance(item, dict) for item in parsed):
        raise MetadataError(f"{what}: answer is a JSON list of something other than objects")
    return parsed
