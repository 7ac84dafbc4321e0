"""A file header's DICOM JSON, made from pydicom's raw elements (`_json_of` in
idcfs.source.dicomfile), is exactly what pydicom's own path gives: the elements kept in
a `Dataset` and converted by `Dataset.to_json_dict`, bulk values left out. Compared
over every generated slide, the file layouts, the real and IDC-style files, and
datasets made here for the odd cases (character sets, PN, DS/IS, binary VRs, AT, UN,
empty values, VM > 1, nested and undefined-length sequences, implicit VR and big
endian)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import BytesLengthException
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from idcfs.source.dicomfile import (
    _CONVERTED,
    _HEADER_TAGS,
    BULK_THRESHOLD,
    _json_of,
    forget_converted,
)
from tests.support.fixtures import header_corpus
from tests.support.slides import GeneratedSlide

DROPPED = "dropped"


def pydicom_json(dataset: Dataset, wanted: dict[int, Any] | None) -> dict[str, Any]:
    """The reference: pydicom's `Dataset` and `to_json_dict`, as idcfs converted headers
    before `_json_of` (the elements `wanted` names kept in a dataset of their own)."""
    kept = dataset if wanted is None else _kept(dataset, wanted)
    tree = kept.to_json_dict(bulk_data_threshold=BULK_THRESHOLD,
                             bulk_data_element_handler=lambda _element: DROPPED)
    _drop_bulk(tree)
    return tree


def _kept(dataset: Dataset, wanted: dict[int, Any]) -> Dataset:
    kept = Dataset()
    for tag in dataset.keys():  # noqa: SIM118 (iterating a Dataset converts every element)
        if tag not in wanted:
            continue
        element = dataset[tag]
        if wanted[tag] is not None and element.VR == "SQ":
            items = [_kept(item, wanted[tag]) for item in element.value or ()]
            element = DataElement(tag, "SQ", DicomSequence(items))
        kept.add(element)
    return kept


def _drop_bulk(tree: dict[str, Any]) -> None:
    for tag in list(tree):
        if tree[tag].get("BulkDataURI") == DROPPED:
            del tree[tag]
        elif tree[tag].get("vr") == "SQ":
            for item in tree[tag].get("Value") or ():
                _drop_bulk(item)


def both(data: bytes, wanted: dict[int, Any] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the new conversion, the reference) of a file's header, each from its own read:
    pydicom's path converts the dataset's raw elements in place."""
    def read() -> Dataset:
        return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True)

    return _json_of(read(), wanted, ["iso8859"]), pydicom_json(read(), wanted)


def assert_same(data: bytes, what: object) -> None:
    for wanted in (_HEADER_TAGS, None):
        new, reference = both(data, wanted)
        assert new == reference, what
        assert list(new) == list(reference), what  # the same order too


def test_every_file_of_the_corpus(test_slides: list[GeneratedSlide], tmp_path: Path) -> None:
    """Generated slides, every file layout, the real and IDC-style files."""
    for data, what in header_corpus(test_slides, tmp_path):
        assert_same(data, what)


def _file(dataset: Dataset, syntax: str) -> bytes:
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.TransferSyntaxUID = syntax
    dataset.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.77.1.6"
    dataset.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    out = io.BytesIO()
    pydicom.dcmwrite(out, dataset, enforce_file_format=True,
                     little_endian=syntax != ExplicitVRBigEndian,
                     implicit_vr=syntax == ImplicitVRLittleEndian)
    return out.getvalue()


def _item(**values: Any) -> Dataset:
    item = Dataset()
    for keyword, value in values.items():
        setattr(item, keyword, value)
    return item


def odd_dataset(charset: str | list[str] | None) -> Dataset:
    ds = Dataset()
    if charset is not None:
        ds.SpecificCharacterSet = charset
    ds.ImageType = ["DERIVED", "PRIMARY", "VOLUME", "NONE"]  # VM > 1
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.77.1.6"
    ds.SOPInstanceUID = "1.2.3.4"
    ds.StudyDate = ""  # empty
    ds.SeriesTime = "101010.123"
    ds.SeriesDescription = "Sérié µ"
    ds.StudyDescription = ""
    ds.PatientID = "Ünïcode"
    ds.PatientName = "Yamada^Tarou=山田^太郎=やまだ^たろう"
    ds.ReferringPhysicianName = ["A^B", "C^D"]  # PN, VM 2
    ds.OperatorsName = ""
    ds.Manufacturer = "M"
    ds.ContainerIdentifier = "C 1"
    ds.SeriesNumber = "7"  # IS
    ds.SamplesPerPixel = 3
    ds.NumberOfFrames = "12"
    ds.Rows, ds.Columns = 256, 256
    ds.BitsAllocated, ds.BitsStored, ds.PixelRepresentation = 8, 8, 0
    ds.WindowCenter = ["40", "1.5e2", "-3"]  # DS, VM 3
    ds.WindowWidth = "400.0"
    ds.ImagedVolumeWidth = 1.25  # FL
    ds.ImagedVolumeHeight = 2.5
    ds.TotalPixelMatrixColumns, ds.TotalPixelMatrixRows = 1024, 768  # UL
    ds.add_new(0x00209311, "CS", "TILED_FULL")
    ds.add_new(0x00480302, "UL", [1, 2])  # UL, VM 2
    ds.add_new(0x00480303, "UL", None)  # empty number
    ds.add_new(0x00209228, "UL", 1)
    ds.add_new(0x00280006, "US", 0)
    ds.add_new(0x00083002, "UI", "1.2.840.10008.1.2.4.50")
    ds.add_new(0x00400512, "LO", "")
    # sequences: empty, items cut to their tags, nested, items of their own charset
    ds.add_new(0x00480105, "SQ", DicomSequence([
        _item(OpticalPathIdentifier="1", OpticalPathDescription="skipped",
              ICCProfile=b"\x01" * 2000),  # bulk, and not kept
        _item(OpticalPathIdentifier="2", ICCProfile=b"\x02" * 10)]))
    ds.add_new(0x00480008, "SQ", DicomSequence([]))
    shared = _item()
    shared.add_new(0x00289110, "SQ", DicomSequence([
        _item(PixelSpacing=["0.000250", "0.00025"], SliceThickness="1")]))
    shared.add_new(0x00480207, "SQ", DicomSequence([_item(OpticalPathIdentifier="1")]))
    ds.add_new(0x52009229, "SQ", DicomSequence([shared]))
    frame = _item()
    frame.add_new(0x0048021A, "SQ", DicomSequence([_item(
        ColumnPositionInTotalImagePixelMatrix=1, RowPositionInTotalImagePixelMatrix=257,
        XOffsetInSlideCoordinateSystem="1.5", ZOffsetInSlideCoordinateSystem="0")]))
    ds.add_new(0x52009230, "SQ", DicomSequence([frame, _item()]))
    # outside HEADER_TAGS, seen when every element is converted (`wanted` None)
    ds.add_new(0x00080060, "CS", "SM")
    ds.add_new(0x00081115, "SQ", DicomSequence([_item(
        ReferencedSOPInstanceUID="1.2", SpecificCharacterSet="ISO_IR 100",
        StudyComments="Grüße")]))
    ds.add_new(0x00200032, "DS", ["-1", "2.0", "3e-1"])
    ds.add_new(0x00280106, "US", 3)  # US or SS in the dictionary
    ds.add_new(0x00281101, "US", [256, 0, 16])  # a LUT descriptor
    ds.add_new(0x00209165, "AT", [0x00209056, 0x00209057])  # AT, VM 2
    ds.add_new(0x00209167, "AT", 0x00209056)
    ds.add_new(0x00480102, "DS", None)  # empty DS
    ds.add_new(0x0040A30A, "DS", "")
    ds.add_new(0x00186011, "SQ", None)
    ds.add_new(0x00189219, "SS", -2)
    ds.add_new(0x00186020, "SL", -70000)
    ds.add_new(0x00081163, "FD", [0.1, 2.0])
    ds.add_new(0x00720082, "SV", [-(2 ** 40), 5])
    ds.add_new(0x0008040C, "UV", 2 ** 40)
    ds.add_new(0x00080054, "AE", ["AE1", "AE2"])
    ds.add_new(0x00101010, "AS", "042Y")
    ds.add_new(0x0008002A, "DT", "20240101101010.5")
    ds.add_new(0x00081190, "UR", "http://x/y z")
    ds.add_new(0x00204000, "LT", "line one\\still one")  # LT keeps backslashes
    ds.add_new(0x00400280, "ST", "s t ")
    ds.add_new(0x00081080, "LO", ["one", "", "three"])  # an empty value among others
    ds.add_new(0x00080119, "UC", "UC a")
    ds.add_new(0x0008030E, "UT", "ütf " * 10)
    ds.add_new(0x00660023, "OW", b"\x01\x02" * 10)
    ds.add_new(0x0008041B, "OB", b"\x01\x02\x03")  # odd: padded by the writer
    ds.add_new(0x00181638, "OF", b"\x00\x00\x80\x3f" * 4)
    ds.add_new(0x003A032E, "OD", b"\x00" * 8 * 200)  # bulk
    ds.add_new(0x00660040, "OL", b"\x05\x00\x00\x00")
    ds.add_new(0x00720081, "OV", b"")  # empty binary
    ds.add_new(0x0072006D, "UN", b"\x10\x20\x30\x40")  # UN in the dictionary too
    ds.add_new(0x00080030, "UN", b"101010")  # UN of a known tag: pydicom uses its VR
    ds.add_new(0x00091010, "LO", "private")
    ds.add_new(0x00091011, "UN", b"abcd")  # UN of a private tag without its creator
    return ds


CHARSETS = [None, "ISO_IR 100", "ISO_IR 192", ["ISO 2022 IR 6", "ISO 2022 IR 87"], ""]


@pytest.mark.parametrize("charset", CHARSETS, ids=str)
@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian,
                                    ExplicitVRBigEndian])
def test_odd_elements(charset: str | list[str] | None, syntax: str) -> None:
    ds = odd_dataset(charset)
    if charset == ["ISO 2022 IR 6", "ISO 2022 IR 87"]:
        ds.SeriesDescription = ds.PatientID = "ascii"  # what that set can encode
        ds.add_new(0x0008030E, "UT", "ascii")
    elif charset in (None, "", "ISO_IR 100"):
        ds.PatientName = "Yamada^Tarou"
    assert_same(_file(ds, syntax), (charset, syntax))


def test_undefined_length_sequences_and_items() -> None:
    ds = odd_dataset("ISO_IR 192")
    for tag in (0x00480105, 0x52009229, 0x52009230, 0x00081115):
        ds[tag].is_undefined_length = True
        for item in ds[tag].value:
            item.is_undefined_length_sequence_item = True
    data = _file(ds, ExplicitVRLittleEndian)
    assert b"\xfe\xff\xdd\xe0" in data  # a sequence delimiter: undefined lengths written
    assert_same(data, "undefined lengths")


def test_a_wrong_length_is_an_error_either_way() -> None:
    """An FD value of 4 bytes: pydicom's path raises; so does the new one (the caller
    makes it a MetadataError)."""
    data = _file(odd_dataset(None), ExplicitVRLittleEndian)
    columns = b"\x48\x00\x06\x00UL\x04\x00"  # TotalPixelMatrixColumns
    assert data.count(columns) == 1
    broken = data.replace(columns, b"\x48\x00\x06\x00FD\x04\x00")
    with pytest.raises(BytesLengthException):
        pydicom_json(pydicom.dcmread(io.BytesIO(broken)), _HEADER_TAGS)
    with pytest.raises(BytesLengthException):
        _json_of(pydicom.dcmread(io.BytesIO(broken)), _HEADER_TAGS, ["iso8859"])


def test_elements_converted_before_give_the_same_json_and_share_nothing() -> None:
    """Each element's JSON is kept by what it is made from (`_CONVERTED`): a header read
    again gives the reference's JSON from the kept values, and a change to one header's
    JSON shows in no other."""
    data = _file(odd_dataset("ISO_IR 100"), ExplicitVRLittleEndian)
    forget_converted()
    first, reference = both(data, None)
    assert _CONVERTED  # kept
    second, _ = both(data, None)
    assert first == second == reference
    for tree in (first, second):  # share no list or dict with each other or the kept
        for element in tree.values():
            element.get("Value", [None]).append("changed")
            element["vr"] = "changed"
    third, _ = both(data, None)
    assert third == reference
