"""`idcfs view`'s server on a folder: files as a static server serves them, the viewer
page, OpenSeadragon sent to its pinned release, a missing name 404 but an unreadable
file 502 (a mount's EIO is never "not found"), set-up errors one line and exit 2."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import urllib3

from idcfs.commands.view import OPENSEADRAGON_CDN, ViewerServer, slide_in


@pytest.fixture
def site(tmp_path: Path) -> Path:
    series = tmp_path / "studies" / "1.2" / "3.4"
    (series / "iiif").mkdir(parents=True)
    (series / "slide.dzi").write_text("<Image/>")
    (series / "iiif" / "info.json").write_text("{}")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")  # ELOOP: an error, not a missing name
    return tmp_path


@pytest.fixture
def server(site: Path) -> Iterator[ViewerServer]:
    heard: list[tuple[str, int]] = []
    running = ViewerServer(site, ("127.0.0.1", 0), None, lambda *hit: heard.append(hit))
    running.heard = heard  # type: ignore[attr-defined]
    thread = threading.Thread(target=running.serve_forever, daemon=True)
    thread.start()
    yield running
    running.shutdown()
    running.server_close()
    thread.join(timeout=10)


def get(server: ViewerServer, path: str) -> urllib3.BaseHTTPResponse:
    return urllib3.request("GET", server.url.rstrip("/") + path, redirect=False, timeout=10)


def test_files_the_page_and_openseadragon(server: ViewerServer) -> None:
    dzi = get(server, "/studies/1.2/3.4/slide.dzi")
    assert (dzi.status, dzi.data, dzi.headers["Content-Length"]) == (200, b"<Image/>", "8")
    page = get(server, "/.idcfs-viewer/?slide=/studies/1.2/3.4/slide.dzi")
    assert page.status == 200 and b"OpenSeadragon(" in page.data
    script = get(server, "/.idcfs-viewer/openseadragon.min.js")
    assert (script.status, script.headers["Location"]) == (
        302, OPENSEADRAGON_CDN + "openseadragon.min.js")
    assert "6.1.1" in OPENSEADRAGON_CDN
    assert get(server, "/studies/1.2/").status == 200  # a listing, as http.server gives
    assert (get(server, "/studies/nothing.dzi").status, get(server, "/loop").status) == (
        404, 502)
    assert [status for _, status in server.heard] == [200, 200, 302, 200, 404, 502]


def test_the_slide_a_path_names(site: Path) -> None:
    series = site / "studies" / "1.2" / "3.4"
    assert slide_in(series, site) == "/studies/1.2/3.4/slide.dzi"
    (series / "slide.dzi").unlink()
    assert slide_in(series, site) == "/studies/1.2/3.4/iiif/info.json"
    assert slide_in(series / "iiif" / "info.json", site) == "/studies/1.2/3.4/iiif/info.json"
    assert slide_in(site / "studies", site) is None


def test_a_path_that_does_not_exist_is_one_line_and_exit_2(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "idcfs", "view", str(tmp_path / "no")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "No such file" in result.stderr
