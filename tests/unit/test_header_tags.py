"""A file header's DICOM JSON keeps only `HEADER_TAGS`: every attribute the slide model
and the tree of --files read is in that list, and what it keeps is what pydicom's whole
conversion gave."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydicom
import pytest

from idcfs.dicom.dicom_json import first_value
from idcfs.source.dicomfile import HEADER_TAGS, FileHeader, read_header
from idcfs.source.folder import FolderCatalog
from idcfs.source.objects import LocalFolderStore, ObjectInfo
from tests.support.fixtures import real_files
from tests.support.slides import GeneratedSlide
from tests.unit.test_tile_runs import header_json

IDC_STYLE = sorted((Path(__file__).parent.parent / "data" / "idc-style").glob("DCM_*"))


class OnlyTags(dict[str, Any]):
    """DICOM JSON that fails the test when a reader asks for a tag `allowed` lacks; the
    items of its sequences are held to their own lists."""

    def __init__(self, tree: dict[str, Any], allowed: dict[str, Any]) -> None:
        super().__init__({tag: _held(element, allowed.get(tag)) for tag, element in tree.items()})
        self.allowed = allowed

    def _check(self, tag: object) -> None:
        assert tag in self.allowed, f"{tag} is read but HEADER_TAGS lacks it"

    def get(self, tag: str, default: Any = None) -> Any:
        self._check(tag)
        return super().get(tag, default)

    def __getitem__(self, tag: str) -> Any:
        self._check(tag)
        return super().__getitem__(tag)

    def __contains__(self, tag: object) -> bool:
        self._check(tag)
        return super().__contains__(tag)


def _held(element: Any, allowed: dict[str, Any] | None) -> Any:
    if allowed is None or not isinstance(element.get("Value"), list):
        return element
    return {**element, "Value": [OnlyTags(item, allowed) if isinstance(item, dict) else item
                                 for item in element["Value"]]}


def full_json(path: Path) -> dict[str, Any]:
    """pydicom's conversion of the whole header, as idcfs made it before HEADER_TAGS."""
    dataset = pydicom.dcmread(path, stop_before_pixels=True)
    return dataset.to_json_dict(bulk_data_threshold=1024,
                                bulk_data_element_handler=lambda _element: "bulk")


def cut(tree: dict[str, Any], allowed: dict[str, Any]) -> dict[str, Any]:
    kept = {}
    for tag, element in tree.items():
        if tag not in allowed or element.get("BulkDataURI"):
            continue
        inner = allowed[tag]
        if inner is not None and isinstance(element.get("Value"), list):
            element = {**element, "Value": [cut(item, inner) for item in element["Value"]]}
        kept[tag] = element
    return kept


def slide_files(test_slides: list[GeneratedSlide]) -> list[Path]:
    return [path for slide in test_slides for path in slide.files]


def test_the_header_keeps_what_the_whole_conversion_gave(
    test_slides: list[GeneratedSlide],
) -> None:
    for path in [*slide_files(test_slides), *real_files(), *IDC_STYLE]:
        kept = header_json(path)
        assert kept.pop("00020010")["Value"] == [
            str(pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)]
        assert kept == cut(full_json(path), HEADER_TAGS), path


def test_the_slide_model_reads_only_header_tags(test_slides: list[GeneratedSlide]) -> None:
    from idcfs.slide.parse import parse_slide

    for slide in test_slides:
        strict = [OnlyTags(full_json(path), HEADER_TAGS) for path in slide.files]
        parse_slide(slide.study_uid, slide.series_uid, strict).describe()
    for path in [*real_files(), *IDC_STYLE]:
        parse_slide("s", "r", [OnlyTags(full_json(path), HEADER_TAGS)]).describe()


def test_the_files_tree_reads_only_header_tags(
    test_slides: list[GeneratedSlide], tmp_path: Path,
) -> None:
    catalog = FolderCatalog(LocalFolderStore(tmp_path), headers=None)  # type: ignore[arg-type]
    found = []
    for index, path in enumerate(slide_files(test_slides)):
        data = path.read_bytes()
        header = read_header(lambda start, length, data=data: data[start:start + length],
                             len(data))
        strict = FileHeader(**{**header.__dict__,
                               "dicom_json": OnlyTags(full_json(path), HEADER_TAGS)})
        found.append((ObjectInfo(f"{index}.dcm", len(data)), strict))
    catalog._group(found)
    catalog._scanned = True  # the headers above are its scan
    entries = [entry for study in catalog.studies() for entry in catalog.series(study)]
    assert len(entries) == len(test_slides)
    assert all(entry.fields.get("PatientID") for entry in entries)


@pytest.mark.parametrize("tag", ["00100010", "00080060"])
def test_a_tag_outside_the_list_fails(tag: str) -> None:
    with pytest.raises(AssertionError, match="HEADER_TAGS lacks it"):
        first_value(OnlyTags({}, HEADER_TAGS), tag)
