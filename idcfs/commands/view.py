"""`idcfs view PATH`: look at a slide of a mount in a web browser.

A static HTTP server (the standard library's, one thread per connection) serves the
idcfs mount PATH is in at `/`, read-only, exactly as `python -m http.server -d MNT`
would, plus a viewer page at `/.idcfs-viewer/` (OpenSeadragon over the series'
DeepZoom `slide.dzi` or IIIF `iiif/info.json`; no name of a mount starts with a dot
but the statistics file's). OpenSeadragon itself is served from `--openseadragon DIR`
(the `build/openseadragon/` folder of its npm package) when given, else the page's
browser is sent to the pinned release on jsDelivr. A file the mount cannot read
(EIO: the server or a decode failed) is answered 502 with the reason, never 404,
which is kept for names that do not exist.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import shutil
import sys
from collections.abc import Callable
from functools import partial
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from importlib.resources import files
from pathlib import Path
from typing import BinaryIO
from urllib.parse import quote

from idcfs.cli import fail
from idcfs.fuse.mountpoint import IDCFS_FSTYPE, mount_entry

VIEWER_PREFIX = "/.idcfs-viewer/"
OPENSEADRAGON_VERSION = "6.1.1"
OPENSEADRAGON_CDN = (f"https://cdn.jsdelivr.net/npm/openseadragon@{OPENSEADRAGON_VERSION}"
                     "/build/openseadragon/")
DEFAULT_PORT = 8000
MISSING = (errno.ENOENT, errno.ENOTDIR, errno.ENAMETOOLONG)
RequestLog = Callable[[str, int], None]

log = logging.getLogger(__name__)


def add_parser(commands: argparse._SubParsersAction) -> None:
    """The `view` command's arguments (a subcommand of `idcfs`)."""
    parser = commands.add_parser(
        "view", help="serve a mount over HTTP with a slide viewer page",
        description="Serve the idcfs mount PATH is in over HTTP (read-only, as any static "
        "web server would) with an OpenSeadragon page, and print the address that shows "
        "PATH's slide: a series directory (its first .dzi, else iiif/info.json), a .dzi "
        "or an info.json. Runs until Ctrl-C.")
    parser.add_argument("path", type=Path, metavar="PATH")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help=f"TCP port to listen on (default {DEFAULT_PORT}; 0: any free)")
    parser.add_argument("--bind", default="127.0.0.1", metavar="ADDRESS",
                        help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--openseadragon", type=Path, metavar="DIR",
                        help="serve OpenSeadragon from DIR (its npm package's "
                        "build/openseadragon/) instead of sending browsers to jsDelivr")


def run(args: argparse.Namespace) -> None:
    """Serve until Ctrl-C; set-up errors are one line and exit code 2."""
    try:
        given = Path(os.path.realpath(args.path, strict=True))
    except OSError as error:
        fail(f"{args.path}: {error.strerror}")
    if args.openseadragon and not (args.openseadragon / "openseadragon.min.js").is_file():
        fail(f"--openseadragon {args.openseadragon}: no openseadragon.min.js there")
    root = served_root(given)
    try:
        server = ViewerServer(root, (args.bind, args.port), args.openseadragon)
    except OSError as error:
        fail(f"cannot listen on {args.bind}:{args.port}: {error.strerror}")
    print(f"serving {root} at {server.url}")
    print(f"open {server.page_url(slide_in(given, root))}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def served_root(path: Path) -> Path:
    """The root of the idcfs mount `path` is in; else `path` itself (its folder, for a
    file), so any folder of DeepZoom or IIIF files can be viewed too."""
    for candidate in (path, *path.parents):
        entry = mount_entry(candidate)
        if entry is not None and entry.fstype == IDCFS_FSTYPE:
            return candidate
    return path if path.is_dir() else path.parent


def slide_in(path: Path, root: Path) -> str | None:
    """The URL path of the tile source `path` names: itself when it is a file, a
    directory's first `.dzi`, else its first `iiif*/info.json` (one per plane/path:
    docs/LAYOUT.md); None when it names none. Listing a series fetches nothing."""
    if path.is_dir():
        found = sorted(path.glob("*.dzi")) or sorted(path.glob("iiif*/info.json"))
        if not found:
            return None
        path = found[0]
    elif not path.is_file():
        return None
    return "/" + quote(path.relative_to(root).as_posix())


class ViewerServer(ThreadingHTTPServer):
    """The mount's files at `/` and the viewer page under VIEWER_PREFIX; `on_request`,
    when given, hears every request's path and status (the browser test's log)."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, root: Path, address: tuple[str, int],
                 openseadragon: Path | None = None, on_request: RequestLog | None = None):
        self.root = root
        self.openseadragon = openseadragon
        self.on_request = on_request
        super().__init__(address, partial(ViewerHandler, directory=str(root)))

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/"

    def page_url(self, slide: str | None) -> str:
        page = self.url.rstrip("/") + VIEWER_PREFIX
        return page if slide is None else f"{page}?slide={quote(slide, safe='/')}"


class ViewerHandler(SimpleHTTPRequestHandler):
    """GET and HEAD only (the base class answers 501 to the rest); keep-alive."""

    protocol_version = "HTTP/1.1"
    server: ViewerServer

    def send_head(self) -> BinaryIO | None:  # type: ignore[override]
        path = self.path.split("?", 1)[0].split("#", 1)[0]
        if path.startswith(VIEWER_PREFIX):
            return self._viewer_file(path.removeprefix(VIEWER_PREFIX))
        local = self.translate_path(self.path)
        if os.path.isdir(local):
            return super().send_head()  # the redirect to "/" or the listing
        try:
            content = open(local, "rb")  # noqa: SIM115 - the base class copies and closes it
        except OSError as error:
            return self._unreadable(error)
        self._send_file_headers(content, self.guess_type(local))
        return content

    def _viewer_file(self, name: str) -> BinaryIO | None:
        if name in ("", "index.html"):
            page = files("idcfs.commands").joinpath("viewer.html").open("rb")
            self._send_file_headers(page, "text/html; charset=utf-8")
            return page
        osd = self.server.openseadragon
        if osd is None:
            self.send_response(HTTPStatus.FOUND)
            self.send_header("Location", OPENSEADRAGON_CDN + name)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        local = Path(osd, *[part for part in name.split("/") if part not in ("", ".", "..")])
        try:
            content = open(local, "rb")  # noqa: SIM115
        except OSError as error:
            return self._unreadable(error)
        self._send_file_headers(content, self.guess_type(str(local)))
        return content

    def _send_file_headers(self, content: BinaryIO, content_type: str) -> None:
        try:
            size = os.fstat(content.fileno()).st_size  # exact once open (SEMANTICS.md)
        except (OSError, AttributeError):
            size = len(content.read())
            content.seek(0)
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(size))
        self.end_headers()

    def _unreadable(self, error: OSError) -> None:
        if error.errno in MISSING:
            self.send_error(HTTPStatus.NOT_FOUND, "No such file")
        else:
            log.warning("%s: %s", self.path, error.strerror or error)
            self.send_error(HTTPStatus.BAD_GATEWAY, f"The mount could not read it: "
                            f"{error.strerror or error}")
        return None

    def copyfile(self, source: BinaryIO, outputfile: BinaryIO) -> None:  # type: ignore[override]
        try:
            shutil.copyfileobj(source, outputfile)
        except OSError as error:  # the answer is cut short: the browser sees a failed load
            log.warning("%s: %s", self.path, error.strerror or error)
            self.close_connection = True

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        status = code.value if isinstance(code, HTTPStatus) else code
        if self.server.on_request is not None:
            self.server.on_request(self.path, int(status) if str(status).isdigit() else 0)
        self.log_message('"%s" %s', self.requestline, status)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - base's name
        print(f"{self.address_string()} {format % args}", file=sys.stderr)
