"""A real browser on a slide: `idcfs view`'s server over a folder, headless Chromium
(driven by Playwright) showing it in OpenSeadragon, and the same view rendered from
wsidicom's `read_region` to compare with.

`scripts/test.sh` installs Debian's chromium and OpenSeadragon (npm, into `.node/`);
`missing()` says which is absent so a test can skip saying why. Only loopback is ever
asked: every request the page makes elsewhere is aborted by the browser context.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
from PIL import Image

from idcfs.commands.view import ViewerServer

REPO = Path(__file__).resolve().parents[2]
OPENSEADRAGON_DIR = REPO / ".node" / "node_modules" / "openseadragon" / "build" / "openseadragon"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]
VIEW_SIZE = (320, 240)  # the viewer element, CSS pixels (device scale factor 1)
LOAD_TIMEOUT_MS = 60_000
BACKGROUND = (0, 0, 0)  # the page's background, seen around a slide that does not fill it
MIN_PSNR_DB = 33.0
"""A view scores at least this against wsidicom's. Measured: correct views 34.1-43.9 dB
(a static pyramid, test_browser_harness.py) and 37.4-57.6 (the mount's views,
test_browser.py); wrong ones at most 29.7 (the other focal plane), 27.5 (a level 8x too
coarse), 22.9 (colours swapped), 19.7 (2 screen pixels off)."""


@pytest.fixture(scope="module")
def chromium() -> Iterator[Browser]:
    """One headless Chromium for a test module; the module is skipped, saying why, when
    the browser, OpenSeadragon or Playwright is missing."""
    reason = missing()
    if reason:
        pytest.skip(reason)
    with Browser() as opened:
        yield opened


def missing() -> str | None:
    """Why the browser test cannot run here (None: it can)."""
    if not CHROMIUM.exists():
        return f"{CHROMIUM} missing (Debian package chromium; scripts/test.sh installs it)"
    if not (OPENSEADRAGON_DIR / "openseadragon.min.js").exists():
        return f"OpenSeadragon missing in {OPENSEADRAGON_DIR} (scripts/test.sh installs it)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Python package playwright missing (pip install -e '.[test]')"
    return None


@dataclass(frozen=True)
class Rect:
    """An image rectangle in full-resolution pixels (floats: a view's bounds)."""

    x: float
    y: float
    width: float
    height: float


@dataclass(frozen=True)
class Hit:
    """One request the server answered."""

    path: str
    status: int


class PageServer:
    """`idcfs view`'s server over `root` on a free loopback port, in a thread of its own,
    with OpenSeadragon from `.node/`; `hits` lists every request and its status."""

    def __init__(self, root: Path) -> None:
        self._lock = threading.Lock()
        self._hits: list[Hit] = []
        self.server = ViewerServer(root, ("127.0.0.1", 0), OPENSEADRAGON_DIR, self._heard)
        self._thread = threading.Thread(target=self.server.serve_forever,
                                        name="test-viewer-server", daemon=True)

    def __enter__(self) -> PageServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=10)

    def _heard(self, path: str, status: int) -> None:
        with self._lock:
            self._hits.append(Hit(path, status))

    @property
    def url(self) -> str:
        return self.server.url

    def hits(self) -> list[Hit]:
        with self._lock:
            return list(self._hits)

    def reset(self) -> None:
        with self._lock:
            self._hits.clear()


class ViewerPage:
    """One open viewer page: move it to an image rectangle, take its picture."""

    def __init__(self, page) -> None:  # type: ignore[no-untyped-def]
        self.page = page
        self.errors: list[str] = []
        page.on("pageerror", lambda error: self.errors.append(str(error)))

    def wait_open(self) -> tuple[int, int]:
        """Wait until the tile source opened; its full-resolution (width, height)."""
        self.page.wait_for_function(
            "() => window.viewer && viewer.world.getItemCount() > 0 "
            "&& viewer.world.getItemAt(0).getFullyLoaded()", timeout=LOAD_TIMEOUT_MS)
        self.page.evaluate("() => viewer.controls.forEach((control) => control.setVisible(false))")
        width, height = self.page.evaluate(
            "() => { const s = viewer.world.getItemAt(0).getContentSize();"
            " return [s.x, s.y]; }")
        return int(width), int(height)

    def show(self, rect: Rect) -> Rect:
        """Fit `rect` in the viewer at once, wait (bounded) until every tile it needs is
        drawn, and give the image rectangle the viewer really shows (it keeps its aspect
        ratio, so one side grows)."""
        shown = self.page.evaluate(_SHOW_SCRIPT, [rect.x, rect.y, rect.width, rect.height,
                                                  LOAD_TIMEOUT_MS])
        return Rect(*shown)

    def screenshot(self, path: Path) -> np.ndarray:
        """The viewer element as RGB pixels, kept as a PNG at `path`."""
        self.page.locator("#viewer").screenshot(path=str(path), animations="disabled")
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))


_SHOW_SCRIPT = """
async ([x, y, width, height, timeoutMs]) => {
  const frame = () => new Promise((resolve) => requestAnimationFrame(() => resolve()));
  const item = viewer.world.getItemAt(0);
  viewer.viewport.fitBounds(item.imageToViewportRectangle(x, y, width, height), true);
  const deadline = performance.now() + timeoutMs;
  for (let i = 0; i < 3; i++) await frame();
  while (!item.getFullyLoaded() || viewer.world.needsDraw()) {
    if (performance.now() > deadline) throw new Error("the view did not load in time");
    await frame();
  }
  for (let i = 0; i < 3; i++) await frame();
  const bounds = item.viewportToImageRectangle(viewer.viewport.getBounds(true));
  return [bounds.x, bounds.y, bounds.width, bounds.height];
}
"""


class Browser:
    """Headless Chromium (Debian's, never a download) with a new empty profile."""

    def __enter__(self) -> Browser:
        from playwright.sync_api import sync_playwright

        self._playwright = sync_playwright().start()
        try:
            self._browser = self._playwright.chromium.launch(
                executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS, headless=True)
        except BaseException:
            self._playwright.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._browser.close()
        self._playwright.stop()

    @contextmanager
    def viewer(self, page_url: str) -> Iterator[ViewerPage]:
        """The viewer page at `page_url` in a context of its own (loopback only)."""
        context = self._browser.new_context(viewport={"width": VIEW_SIZE[0],
                                                      "height": VIEW_SIZE[1]},
                                            device_scale_factor=1)
        context.route("**/*", _loopback_only)
        try:
            page = context.new_page()
            viewer = ViewerPage(page)
            page.goto(page_url, timeout=LOAD_TIMEOUT_MS)
            yield viewer
        finally:
            context.close()


def _loopback_only(route) -> None:  # type: ignore[no-untyped-def]
    host = urlsplit(route.request.url).hostname
    if host in ("127.0.0.1", "localhost", "::1"):
        route.continue_()
    else:
        route.abort()


# --------------------------------------------------------------------------- reference


def views_of(width: int, height: int) -> dict[str, Rect]:
    """The three views of an image of (width, height): the whole of it, a middle scale
    (the geometric mean of the overview's and 1) at the centre, and full resolution at
    the bottom-right corner (the cropped edge tiles)."""
    view_width, view_height = VIEW_SIZE
    middle = math.sqrt(max(width / view_width, height / view_height, 1.0))
    middle_width, middle_height = view_width * middle, view_height * middle
    return {
        "overview": Rect(0, 0, width, height),
        "middle": Rect((width - middle_width) / 2, (height - middle_height) / 2,
                       middle_width, middle_height),
        "edge": Rect(width - view_width, height - view_height, view_width, view_height),
    }


def reference_view(folder: Path, shown: Rect, size: tuple[int, int], *,
                   z: float | None = None, path: str | None = None,
                   coarser: int = 1) -> np.ndarray:
    """The image rectangle `shown` rendered from wsidicom's `read_region` on the slide's
    own files at `size` (width, height): from the smallest stored level fine enough
    (downsample <= the view's scale), resized with Lanczos; outside the image, the page's
    black. `coarser` > 1 renders it that many times smaller and scales it up again: the
    view a wrong, too coarse level would give (to measure the threshold against)."""
    from wsidicom import WsiDicom

    if coarser > 1:
        small = reference_view(folder, shown, (size[0] // coarser, size[1] // coarser),
                               z=z, path=path)
        return np.asarray(Image.fromarray(small).resize(size, Image.Resampling.BILINEAR))
    width, height = size
    with WsiDicom.open(folder) as wsi:
        base = wsi.levels.base_level.size
        wanted = shown.width / width
        levels = [level for level in wsi.levels if base.width / level.size.width <= wanted * 1.01]
        level = max(levels, key=lambda candidate: base.width / candidate.size.width,
                    default=wsi.levels.base_level)
        scale_x = base.width / level.size.width
        scale_y = base.height / level.size.height
        box = (shown.x / scale_x, shown.y / scale_y, (shown.x + shown.width) / scale_x,
               (shown.y + shown.height) / scale_y)
        left, top = math.floor(box[0]) - 2, math.floor(box[1]) - 2
        right, bottom = math.ceil(box[2]) + 2, math.ceil(box[3]) + 2
        canvas = Image.new("RGB", (right - left, bottom - top), BACKGROUND)
        inside = (max(left, 0), max(top, 0), min(right, level.size.width),
                  min(bottom, level.size.height))
        if inside[2] > inside[0] and inside[3] > inside[1]:
            region = wsi.read_region((inside[0], inside[1]), level.level,
                                     (inside[2] - inside[0], inside[3] - inside[1]), z=z,
                                     path=path)
            canvas.paste(region.convert("RGB"), (inside[0] - left, inside[1] - top))
    view = canvas.resize(size, Image.Resampling.LANCZOS,
                         box=(box[0] - left, box[1] - top, box[2] - left, box[3] - top))
    return np.asarray(view)


def shifted(rect: Rect, pixels: float, size: tuple[int, int]) -> Rect:
    """`rect` moved right and down by `pixels` screen pixels at a view of `size`."""
    step = rect.width / size[0] * pixels
    return Rect(rect.x + step, rect.y + step, rect.width, rect.height)
