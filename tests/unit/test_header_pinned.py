"""A file header's `to_json` stays what it was: users' disk caches hold them (a changed
form would be a changed header to every mount that reads its cache). The digests were
computed by main's `read_header` before the header walk (commit d2d612e, dcmread's
path), over the generated layouts, the files in tests/data and the warm-up's header
(that one as warmup.py now builds it)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from idcfs.source.dicomfile import forget_converted, read_header
from idcfs.source.warmup import warm_header
from tests.support.file_layouts import write_layouts
from tests.support.fixtures import real_files

DATA = Path(__file__).parent.parent / "data"
PINNED = {
    "bot": "01a486a4ffd2b62d",
    "eot": "0cf984c546b3856d",
    "tiff": "3c300ab6dcd421a0",
    "tiff_classic": "06651f2ad98e8929",
    "tiff_wrong_offsets": "3f6572e9552ff20a",
    "scan": "574a9d194494ae05",
    "multi_fragment": "a97d65779415e81f",
    "multi_fragment_scan": "0b2a281bc226ec86",
    "odd_frames": "32fbf5d8b3fc8a4f",
    "sparse_long_header": "1feede336d56810c",
    "jpeg2000": "85a2f785f42fc657",
    "native": "73b27ee69fc8f461",
    "ezwsi__multiframe_camelyon_challenge_image.dcm": "7e18b805062ad77b",
    "ezwsi__test.dcm": "e1da09b5ec3d629a",
    "ezwsi__test_wsi.dcm": "312eed950a0b629e",
    "highdicom__sm_image.dcm": "9001061e8f60339f",
    "highdicom__sm_image_control.dcm": "9001061e8f60339f",
    "highdicom__sm_image_dots.dcm": "5ef78f84c9c3ad60",
    "highdicom__sm_image_grayscale.dcm": "34a4c55eeaa120e4",
    "highdicom__sm_image_grayscale_reversed.dcm": "6f6492df7a2f8405",
    "highdicom__sm_image_jpegls.dcm": "5cf6191272f4e15c",
    "highdicom__sm_image_jpegls_nobot.dcm": "246af2f546d805d6",
    "highdicom__sm_image_numbers.dcm": "29cfa60f0a2ef3bd",
    "DCM_0": "7f7de8dc9ff41b0f",
    "DCM_1": "edfc6d3e5201829c",
    "DCM_2": "cf1af541b6608bdf",
    "DCM_3": "f819f539d124af36",
    "DCM_4": "48a2427396f095a0",
    "DCM_5": "8aa916faa02ab6c1",
    "warm-up": "318814fd2159db2b",  # with its origin sequence of defined length
}


def digest(data: bytes) -> str:
    header = read_header(lambda start, length: data[start : start + length], len(data))
    text = json.dumps(header.to_json())  # key order included
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def inputs(tmp_path: Path) -> dict[str, bytes]:
    found = {name: layout.path.read_bytes()
             for name, layout in write_layouts(tmp_path).items()}
    for path in [*real_files(), *sorted((DATA / "idc-style").glob("DCM_*"))]:
        found[path.name] = path.read_bytes()
    found["warm-up"] = warm_header()
    return found


def test_headers_are_as_pinned(tmp_path: Path) -> None:
    found = inputs(tmp_path)
    assert set(found) == set(PINNED)
    for remembered in (False, True):  # converting each element, then from the kept JSON
        if not remembered:
            forget_converted()
        assert {name: digest(data) for name, data in found.items()} == PINNED, remembered
