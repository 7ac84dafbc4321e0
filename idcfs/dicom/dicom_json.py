"""Reading values out of DICOM JSON objects (PS3.18 F.2).

Shape: `{"0020000D": {"vr": "UI", "Value": [...]}}`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from idcfs.errors import MetadataError

DicomJson = Mapping[str, Any]

# VL Whole Slide Microscopy Image Storage
WSI_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"


def values(element_map: DicomJson, tag: str) -> list[Any]:
    """All values of `tag`, or an empty list."""
    element = element_map.get(tag)
    if not isinstance(element, Mapping):
        return []
    return list(element.get("Value") or [])


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


def parse_json_list(body: bytes, what: str) -> list[dict[str, Any]]:
    """A DICOM JSON list from an answer body (empty body: empty list); MetadataError if bad."""
    if not body.strip():
        return []
    try:
        parsed = json.loads(body)
    except ValueError as error:
        raise MetadataError(f"{what}: answer is not JSON ({error})") from error
    if not isinstance(parsed, list):
        raise MetadataError(f"{what}: answer is not a JSON list")
    return parsed
