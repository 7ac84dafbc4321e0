"""Fixtures for tests against a real Orthanc: generated slides, the server, an HTTP relay.

tests/conftest.py imports `test_slides`, `orthanc` and `relay` from here. Everything is
skipped (with the reason) only when the Orthanc binary or its DICOMweb plugin is missing.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support.file_layouts import write_layouts
from tests.support.orthanc import OrthancServer, orthanc_available
from tests.support.relay import HttpRelay
from tests.support.slides import GeneratedSlide, generate_test_slides

REAL_DATA = Path(__file__).parent.parent / "data" / "real"
NO_ORTHANC = "Orthanc or its DICOMweb plugin (Debian packages orthanc, orthanc-dicomweb) missing"


def real_files() -> list[Path]:
    """The real DICOM files kept in tests/data/real."""
    return sorted(REAL_DATA.glob("*.dcm"))


def idc_style_files() -> list[Path]:
    """The converter-made slide kept in tests/data/idc-style (its README says how)."""
    return sorted((REAL_DATA.parent / "idc-style").glob("DCM_*"))


def header_corpus(slides: list[GeneratedSlide], folder: Path) -> Iterator[tuple[bytes, object]]:
    """(file bytes, what it is) of every DICOM file the header tests read: the generated
    slides, every file layout (written into `folder`), the real and IDC-style files."""
    for slide in slides:
        for path in slide.files:
            yield path.read_bytes(), path
    for name, layout in write_layouts(folder).items():
        yield layout.path.read_bytes(), name
    files = [*real_files(), *idc_style_files()]
    assert files, "tests/data holds no real or IDC-style files"
    for path in files:
        yield path.read_bytes(), path


@pytest.fixture(scope="session")
def test_slides(tmp_path_factory: pytest.TempPathFactory) -> list[GeneratedSlide]:
    """Every generated test slide, written once per session."""
    return generate_test_slides(tmp_path_factory.mktemp("slides"))


@contextmanager
def orthanc_holding(files: Iterable[Path]) -> Iterator[OrthancServer]:
    """A running Orthanc of its own holding `files` (the test is skipped, saying why,
    when Orthanc is not installed); stopped on leaving."""
    if not orthanc_available():
        pytest.skip(NO_ORTHANC)
    with OrthancServer() as server:
        server.upload(list(files))
        yield server


@pytest.fixture(scope="session")
def orthanc(test_slides: list[GeneratedSlide]) -> Iterator[OrthancServer]:
    """A running Orthanc holding every generated slide and every real test file."""
    with orthanc_holding([*(path for slide in test_slides for path in slide.files),
                          *real_files()]) as server:
        yield server


@pytest.fixture
def relay(orthanc: OrthancServer) -> Iterator[HttpRelay]:
    """A counting, fault-injecting HttpRelay in front of the session's Orthanc."""
    with HttpRelay(orthanc.host, orthanc.port) as proxy:
        proxy.reset()
        yield proxy
