"""The browser harness proves itself on a static DeepZoom pyramid written here with
Pillow (as `vips dzsave` lays it out) from a generated slide's own pixels: OpenSeadragon
in headless Chromium, served by `idcfs view`'s server, against wsidicom's `read_region`.

It also measures the comparison's threshold each run: a correct view must score at or
above `tests/e2e/tests/support/browser.py`'s MIN_PSNR_DB and views that are wrong in the ways a
tile view goes wrong must score below it:
- shifted by 2 screen pixels (an off-by-one tile origin or a crop at the wrong edge),
- colours swapped (RGB read as BGR, or YBR taken for RGB),
- drawn from a level 4x too coarse (the wrong level served, or upsampled).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from PIL import Image

from idcfs.tiles.convert import psnr
from tests.support import browser
from tests.support.browser import (
    MIN_PSNR_DB,
    Browser,
    PageServer,
    reference_view,
    shifted,
    views_of,
)
from tests.support.slides import GeneratedSlide, generate_test_slides

TILE = 254
SHIFT_PX = 2
COARSER = 8




@pytest.fixture(scope="module", params=["jpeg_ybr", "jpeg_rgb"])
def slide(request: pytest.FixtureRequest,
          tmp_path_factory: pytest.TempPathFactory) -> GeneratedSlide:
    (generated,) = generate_test_slides(tmp_path_factory.mktemp("harness"), [request.param])
    return generated


def write_deepzoom(pixels: Image.Image, out: Path, tile: int = TILE) -> Path:
    """`out/slide.dzi` and `out/slide_files/<level>/<col>_<row>.jpeg` of `pixels`, as
    DeepZoom numbers them (level 0 is 1x1, each next one twice the size, edge tiles
    cropped to the image, no overlap)."""
    width, height = pixels.size
    top = math.ceil(math.log2(max(width, height)))
    for level in range(top + 1):
        factor = 2 ** (top - level)
        size = (math.ceil(width / factor), math.ceil(height / factor))
        scaled = pixels.resize(size, Image.Resampling.LANCZOS)
        folder = out / "slide_files" / str(level)
        folder.mkdir(parents=True)
        for row in range(math.ceil(size[1] / tile)):
            for column in range(math.ceil(size[0] / tile)):
                box = (column * tile, row * tile, min((column + 1) * tile, size[0]),
                       min((row + 1) * tile, size[1]))
                scaled.crop(box).save(folder / f"{column}_{row}.jpeg", quality=95)
    (out / "slide.dzi").write_text(
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<Image xmlns="http://schemas.microsoft.com/deepzoom/2008" Format="jpeg" '
        f'Overlap="0" TileSize="{tile}"><Size Width="{width}" Height="{height}"/></Image>\n')
    return out / "slide.dzi"


def test_a_static_deepzoom_pyramid_matches_wsidicom_and_wrong_views_do_not(
        chromium: Browser, slide: GeneratedSlide, tmp_path: Path) -> None:
    from wsidicom import WsiDicom

    with WsiDicom.open(slide.folder) as wsi:
        size = wsi.levels.base_level.size
        base = wsi.read_region((0, 0), 0, (size.width, size.height)).convert("RGB")
    site = tmp_path / "site"
    write_deepzoom(base, site)
    with PageServer(site) as server, \
            chromium.viewer(server.server.page_url("/slide.dzi")) as page:
        assert page.wait_open() == (size.width, size.height)
        scores = []
        for name, wanted in views_of(size.width, size.height).items():
            shown = page.show(wanted)
            seen = page.screenshot(tmp_path / f"{name}.png")
            expected = reference_view(slide.folder, shown, browser.VIEW_SIZE)
            right = psnr(seen, expected)
            moved = psnr(seen, reference_view(slide.folder, shifted(shown, SHIFT_PX,
                                                                    browser.VIEW_SIZE),
                                              browser.VIEW_SIZE))
            swapped = psnr(seen, expected[..., ::-1])
            coarse = psnr(seen, reference_view(slide.folder, shown, browser.VIEW_SIZE,
                                               coarser=COARSER))
            scores.append((name, right, moved, swapped, coarse))
        failed = [hit for hit in server.hits() if hit.status != 200]
    print("\n".join(f"{name}: right {right:.1f} dB, shifted {moved:.1f}, colours "
                    f"swapped {swapped:.1f}, {COARSER}x coarser {coarse:.1f}"
                    for name, right, moved, swapped, coarse in scores))
    assert not failed, failed
    assert not page.errors, page.errors
    for name, right, moved, swapped, coarse in scores:
        assert right >= MIN_PSNR_DB, (name, right, f"screenshots kept in {tmp_path}")
        assert max(moved, swapped, coarse) < MIN_PSNR_DB, (name, moved, swapped, coarse,
                                                             tmp_path)
