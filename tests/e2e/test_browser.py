"""Slides of a real mount (against the real Orthanc) looked at in a real browser:
OpenSeadragon in headless Chromium opens a series as DeepZoom (`slide.dzi`) and as a
IIIF tile source (`iiif/info.json`, with `--iiif-base-url` set to where the mount's root
is served) through `idcfs view`'s server, moves to three views (the whole slide, a
middle scale at the centre, full resolution at the bottom-right corner) and each
screenshot is compared with the same view rendered from wsidicom's `read_region` on
the slide's own files: PSNR at least `MIN_PSNR_DB` (33 dB; how it was set is in
test_browser_harness.py). Every request the page made must have been answered 200.
On every layout of the test slides; a slide with several planes or paths is looked at
in its last plane/path (the first is what a wrong choice would show).

Measured (overview / middle / edge, dB): DeepZoom 40.5/46.3/53.7 (jpeg_ybr),
41.2/48.5/47.2 (jpeg_rgb), 40.4/46.4/45.4 (jpeg2000), 37.4/45.7/54.6 (sparse),
41.2/54.9/55.8 (focal_planes, plane 1), 43.5/44.0/60.6 (optical_paths, path 2); IIIF
within 0.1-3 dB of these. The other focal plane scores 29.3-29.7: below the threshold.

Screenshots stay in the test's tmp folder (named in a failure's message).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from idcfs.tiles.convert import psnr
from tests.support import browser
from tests.support.browser import (
    MIN_PSNR_DB,
    Browser,
    PageServer,
    reference_view,
    views_of,
)
from tests.support.mounting import Mount, named, run_idcfs, series_dir, stop_mount
from tests.support.orthanc import OrthancServer
from tests.support.slides import GeneratedSlide

LAYOUTS = ["jpeg_ybr", "jpeg_rgb", "jpeg2000", "sparse", "focal_planes", "optical_paths"]


@dataclass(frozen=True)
class Service:
    """One image of a series as a tile source: its file in the series directory (a
    .dzi or an info.json), and the wsidicom plane (z) and optical path it shows."""

    layout: str
    source: str
    z: float | None
    path: str | None




@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PageServer]:
    """The page server over the (future) mountpoint: its port is the mount's base URL."""
    root = tmp_path_factory.mktemp("browser") / "mnt"
    root.mkdir()
    with PageServer(root) as server:
        yield server


@pytest.fixture(scope="module")
def mounted(orthanc: OrthancServer, served: PageServer,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mount]:
    state = tmp_path_factory.mktemp("browser-mount")
    path = served.server.root
    result = run_idcfs("mount", "--url", orthanc.dicomweb_url, "--iiif-base-url", served.url,
                       "--log-file", str(state / "idcfs.log"),
                       "--pid-file", str(state / "idcfs.pid"), str(path))
    assert result.returncode == 0, result.stderr
    mount = Mount(path, state / "idcfs.log", int((state / "idcfs.pid").read_text()))
    yield mount
    stop_mount(mount)


def last_plane(slide: GeneratedSlide, kind: str) -> Service:
    """The tile source of `slide`'s last focal plane and optical path, named as in
    docs/LAYOUT.md (`kind`: "deepzoom" or "iiif")."""
    base = slide.levels[0]
    planes, paths = base.focal_planes_um, base.optical_paths
    single = len(planes) == 1 and len(paths) == 1
    suffix = "" if single else f"-plane-{len(planes) - 1}_path-{paths[-1]}"
    source = f"slide{suffix}.dzi" if kind == "deepzoom" else f"iiif{suffix}/info.json"
    return (Service(slide.name, source, None, None) if single
            else Service(slide.name, source, planes[-1], paths[-1]))


def look(chromium: Browser, served: PageServer, mounted: Mount, slide: GeneratedSlide,
         source: Path, service: Service, artifacts: Path) -> list[str]:
    """Open `source` (a file of the mount) in the viewer, take the three views and
    compare each with wsidicom's; the scores, as lines."""
    artifacts.mkdir(parents=True, exist_ok=True)
    served.reset()
    url = "/" + source.relative_to(mounted.path).as_posix()
    lines, failures = [], []
    with chromium.viewer(served.server.page_url(url)) as page:
        base = slide.levels[0]
        assert page.wait_open() == (base.width, base.height)
        for name, wanted in views_of(base.width, base.height).items():
            shown = page.show(wanted)
            seen = page.screenshot(artifacts / f"{name}.png")
            expected = reference_view(slide.folder, shown, browser.VIEW_SIZE, z=service.z,
                                      path=service.path)
            score = psnr(seen, expected)
            lines.append(f"{service.layout} {service.source} {name}: {score:.1f} dB")
            if score < MIN_PSNR_DB:
                failures.append(lines[-1])
        errors = list(page.errors)
    hits = served.hits()
    refused = [hit for hit in hits if hit.status != 200]
    tiles = [hit for hit in hits if hit.path.endswith((".jpg", ".jpeg"))]
    where = f"screenshots in {artifacts}; mount log {mounted.log_file}"
    assert not refused, (refused, where)
    assert tiles, (hits, where)
    assert not errors, (errors, where)
    assert not failures, (failures, f"threshold {MIN_PSNR_DB} dB", where)
    return lines


@pytest.mark.parametrize("kind", ["deepzoom", "iiif"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_slide_in_a_browser_shows_what_wsidicom_reads(
        layout: str, kind: str, chromium: Browser, served: PageServer, mounted: Mount,
        test_slides: list[GeneratedSlide], tmp_path: Path) -> None:
    slide = named(test_slides, layout)
    service = last_plane(slide, kind)
    source = series_dir(mounted.path, slide) / service.source
    print("; ".join(look(chromium, served, mounted, slide, source, service,
                         tmp_path / "screenshots")))
