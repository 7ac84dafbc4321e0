"""The IIIF view through a real mount against the real Orthanc: regions at the stored
levels' scales equal wsidicom's read_region of the same files, names that are no IIIF
request are ENOENT, regions are clipped at the edge, info.json carries the base URL,
listing sends no frame request, `cp` of a region path works, and a region too large
for the bound is EIO with a log line (on a slide of 8448 x 8448 in an Orthanc of this
module's own, so the shared server's slides stay as other tests count them)."""

from __future__ import annotations

import errno
import io
import json
import os
import subprocess
from collections.abc import Iterator

import numpy as np
import pytest
from PIL import Image
from wsidicom import WsiDicom

from idcfs.fetch.regions import MAX_SOURCE_PIXELS
from idcfs.tiles.convert import psnr
from tests.support.fixtures import orthanc_holding
from tests.support.mounting import named, series_dir
from tests.support.orthanc import OrthancServer
from tests.support.relay import HttpRelay
from tests.support.slides import GeneratedSlide, write_pyramid

BASE_URL = "http://localhost:8000"
MIN_PSNR = 40.0
LARGE_SIDE = 8448  # 17 x 17 tiles of 512: 75.5 Mpx of stored tiles at level 0


@pytest.fixture
def mounted(relay: HttpRelay, mount_idcfs):  # type: ignore[no-untyped-def]
    return mount_idcfs(relay.url + "/dicom-web", "--iiif-base-url", BASE_URL + "/")


@pytest.fixture
def ybr(test_slides: list[GeneratedSlide]) -> GeneratedSlide:
    return named(test_slides, "jpeg_ybr")  # 1000 x 700; levels at 1, 2, 4


@pytest.fixture
def wsi(ybr: GeneratedSlide) -> Iterator[WsiDicom]:
    with WsiDicom.open(ybr.files[0].parent) as slide:
        yield slide


def frame_requests(relay: HttpRelay) -> list[str]:
    return [path for _, path in relay.requests if "/frames/" in path]


def rgb(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_listing_a_series_and_reading_info_json_send_no_frame_request(
        mounted, relay, ybr) -> None:  # type: ignore[no-untyped-def]
    folder = series_dir(mounted.path, ybr)
    assert "iiif" in os.listdir(folder)
    assert os.listdir(folder / "iiif") == ["info.json"]
    info = json.loads((folder / "iiif" / "info.json").read_text())
    path = f"studies/{ybr.study_uid}/{ybr.series_uid}/iiif"
    assert info["id"] == f"{BASE_URL}/{path}"
    assert (info["type"], info["protocol"], info["profile"]) == (
        "ImageService3", "http://iiif.io/api/image", "level1")
    assert info["@context"] == "http://iiif.io/api/image/3/context.json"
    assert (info["width"], info["height"]) == (1000, 700)
    assert info["tiles"] == [{"width": 256, "scaleFactors": [1, 2, 4]}]
    assert {"regionByPx", "sizeByW", "sizeByH", "sizeByWh"} <= set(info["extraFeatures"])
    os.stat(folder / "iiif" / "0,0,256,256" / "128," / "0" / "default.jpg")  # a lookup
    assert frame_requests(relay) == []


@pytest.mark.parametrize(("name", "level", "location", "size"), [
    ("256,128,400,300/max", 0, (256, 128), (400, 300)),  # scale 1: level-0
    ("200,100,600,400/300,", 1, (100, 50), (300, 200)),  # scale 2: level-1
    ("full/,175", 2, (0, 0), (250, 175)),  # scale 4: level-2
    ("900,600,500,500/max", 0, (900, 600), (100, 100)),  # clipped at the corner
    ("0,640,4000,100/,30", 1, (0, 320), (500, 30)),  # clipped, then at level-1's scale
])
def test_regions_equal_wsidicoms_read_region(
        mounted, ybr, wsi, name, level, location, size) -> None:  # type: ignore[no-untyped-def]
    data = (series_dir(mounted.path, ybr) / "iiif" / name / "0" / "default.jpg").read_bytes()
    shown = rgb(data)
    expected = np.asarray(wsi.read_region(location, level, size).convert("RGB"))
    assert shown.shape == expected.shape
    assert psnr(shown, expected) >= MIN_PSNR, name


def test_cp_of_the_seeds_region_path_works_and_a_second_read_sends_nothing(
        mounted, relay, ybr, wsi, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The seed's read_region(location=(1000, 1000), level=4, size=(500, 500)) is
    iiif/16000,16000,8000,8000/500,500/...; on this slide, location (100, 50) on
    level-1 at 200 x 150 is iiif/200,100,400,300/200,150/0/default.jpg."""
    source = series_dir(mounted.path, ybr) / "iiif/200,100,400,300/200,150/0/default.jpg"
    copied = tmp_path / "region.jpg"
    subprocess.run(["cp", str(source), str(copied)], check=True, timeout=60)
    expected = np.asarray(wsi.read_region((100, 50), 1, (200, 150)).convert("RGB"))
    assert psnr(rgb(copied.read_bytes()), expected) >= MIN_PSNR
    sent = len(relay.requests)
    assert source.read_bytes() == copied.read_bytes()
    assert len(relay.requests) == sent


NO_REQUESTS = [
    "pct:0,0,50,50/max/0/default.jpg",  # level 2
    "0,0,100/max/0/default.jpg",
    "1000,0,10,10/max/0/default.jpg",  # entirely outside
    "0,0,0,10/max/0/default.jpg",
    "full/1001,/0/default.jpg",  # upscaling
    "full/^max/0/default.jpg",
    "full/!100,100/0/default.jpg",
    "full/max/90/default.jpg",
    "full/max/0/gray.jpg",
    "full/max/0/default.png",
]


def test_names_that_are_no_iiif_request_are_enoent(mounted, relay, ybr) -> None:  # type: ignore[no-untyped-def]
    service = series_dir(mounted.path, ybr) / "iiif"
    for name in NO_REQUESTS:  # one mount for all: each is its own lookup
        with pytest.raises(FileNotFoundError):
            os.stat(service / name)
    assert frame_requests(relay) == []


def test_a_slide_with_several_planes_has_one_service_each(mounted, test_slides) -> None:  # type: ignore[no-untyped-def]
    slide = named(test_slides, "focal_planes")
    folder = series_dir(mounted.path, slide)
    services = sorted(name for name in os.listdir(folder) if name.startswith("iiif"))
    assert services == ["iiif-plane-0_path-1", "iiif-plane-1_path-1"]
    sharp, blurred = (rgb((folder / name / "full/150,/0/default.jpg").read_bytes())
                      for name in services)
    assert sharp.shape == blurred.shape == (100, 150, 3)
    assert psnr(sharp, blurred) < 40  # two planes, two images


@pytest.fixture(scope="module")
def large_slide(tmp_path_factory: pytest.TempPathFactory) -> GeneratedSlide:
    return write_pyramid(tmp_path_factory.mktemp("large"), "iiif_large", width=LARGE_SIDE,
                         height=LARGE_SIDE, tile=512)


@pytest.fixture(scope="module")
def large_server(large_slide: GeneratedSlide) -> Iterator[OrthancServer]:
    with orthanc_holding(large_slide.files) as server:
        yield server


def test_a_region_above_the_bound_is_eio_with_a_log_line(
        large_server, large_slide, mount_idcfs) -> None:  # type: ignore[no-untyped-def]
    assert LARGE_SIDE ** 2 > MAX_SOURCE_PIXELS
    mount = mount_idcfs(large_server.dicomweb_url)
    service = series_dir(mount.path, large_slide) / "iiif"
    info = json.loads((service / "info.json").read_text())
    assert (info["width"], info["height"]) == (LARGE_SIDE, LARGE_SIDE)
    assert info["id"] == f"/studies/{large_slide.study_uid}/{large_slide.series_uid}/iiif"
    huge = service / "full" / "max" / "0" / "default.jpg"
    with pytest.raises(OSError) as refused:
        huge.read_bytes()
    assert refused.value.errno == errno.EIO
    assert "more than the" in mount.log() and "EIO" in mount.log()
    small = rgb((service / "0,0,1024,1024/256,/0/default.jpg").read_bytes())
    assert small.shape == (256, 256, 3)  # the same slide answers a region within bound
