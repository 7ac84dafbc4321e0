"""One generated JPEG slide on a real Orthanc of its own, for the e2e modules that need
no more (mount(8) and fstab, the systemd unit, install.sh). A module takes the fixtures
by assigning them (`slide = one_slide.slide`, `server = one_slide.server`)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.expected import frames_by_path
from tests.support.fixtures import orthanc_holding
from tests.support.orthanc import OrthancServer
from tests.support.slides import GeneratedSlide, generate_test_slides


@pytest.fixture(scope="module")
def slide(tmp_path_factory: pytest.TempPathFactory) -> GeneratedSlide:
    (generated,) = generate_test_slides(tmp_path_factory.mktemp("one-slide"), ["jpeg_ybr"])
    return generated


@pytest.fixture(scope="module")
def server(slide: GeneratedSlide) -> Iterator[OrthancServer]:
    with orthanc_holding(slide.files) as orthanc:
        yield orthanc


def stored_tile(server: OrthancServer, slide: GeneratedSlide, tile: str) -> bytes:
    """A tile as stored, fetched straight from Orthanc (`tile`: its path in a series)."""
    return frames_by_path(server.dicomweb_url, slide, nested=False)[tile]
