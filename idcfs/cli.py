"""The `idcfs` command: mount (in the background by default) and unmount.

Every usage or set-up error is one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import select
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from idcfs import __version__
from idcfs.commands import mount_helper
from idcfs.commands import stats as stats_command
from idcfs.errors import without_credentials
from idcfs.fuse import mountpoint as mountpoints
from idcfs.fuse.mountpoint import MountpointError, is_mounted
from idcfs.source.auth import AuthOptions, parse_header

SOURCES = ("aws", "gcs", "proxy")  # where IDC frames come from (idcfs.mount.connect)

if TYPE_CHECKING:
    from collections.abc import Callable

    from idcfs.mount import MountConfig

USAGE_ERROR = 2
READY_TIMEOUT = 120.0
SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
DEFAULT_LOG = Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local/state")) / "idcfs"


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are a single line and exit code 2."""

    def error(self, message: str) -> NoReturn:
        fail(message)


def fail(message: str) -> NoReturn:
    print(f"idcfs: error: {message}", file=sys.stderr)
    raise SystemExit(USAGE_ERROR)


def parse_size(text: str) -> int:
    """Bytes from '512M', '2G', '1.5G', '100000' (binary units; a trailing B/iB is allowed)."""
    size = size_or_zero(text)
    if size <= 0:
        raise argparse.ArgumentTypeError(f"bad size {text!r}: must be more than 0")
    return size


def size_or_zero(text: str) -> int:
    """Like parse_size, but 0 is allowed (it turns a feature off)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*", text.upper())
    if not match:
        raise argparse.ArgumentTypeError(f"bad size {text!r} (examples: 512M, 2G)")
    return int(float(match.group(1)) * SIZE_UNITS[match.group(2)])


def quality(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 100:
        raise argparse.ArgumentTypeError(f"bad JPEG quality {text!r} (1-100)")
    return int(text)


def positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"bad number {text!r} (a whole number >= 1)")
    return int(text)


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"bad time {text!r} (seconds, more than 0)")
    return value


def header(text: str) -> tuple[str, str]:
    try:
        return parse_header(text)
    except ValueError as error:  # the message names no value: it may be a secret
        raise argparse.ArgumentTypeError(str(error)) from None


def http_url(text: str) -> str:
    """A DICOMweb base URL: http:// or https:// and a host (a bare host:port is refused
    here, in one line, rather than failing later as a server that cannot be reached)."""
    if not re.match(r"https?://[^/\s]", text.strip(), re.IGNORECASE):
        shown = without_credentials(text)
        example = f" (e.g. http://{shown})" if "://" not in text else ""
        raise argparse.ArgumentTypeError(
            f"bad URL {shown!r}: a DICOMweb URL starts with http:// or https://{example}")
    return text


def tile_template(text: str) -> str:
    from idcfs.fs.views.tile_names import check_template

    try:
        return check_template(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def iiif_base_url(text: str) -> str:
    from idcfs.fs.views.iiif import check_base_url

    try:
        return check_base_url(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="idcfs",
        description="Mount DICOM whole-slide images from NCI Imaging Data Commons (IDC) or "
        "any DICOMweb server as a read-only tree of directories and JPEG tiles.",
        epilog="mount(8) and fstab: `mount -t fuse.idcfs SOURCE MOUNTPOINT -o ro,NAME=VALUE...` "
        "(SOURCE: idc or a DICOMweb URL; every mount option as name=value) runs "
        "`idcfs SOURCE MOUNTPOINT -o OPTIONS`.",
    )
    parser.add_argument("--version", action="version", version=version_text())
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_mount_parser(commands)
    unmount = commands.add_parser("unmount", help="unmount an idcfs mount",
                                  description="Unmount an idcfs mount (fusermount3 -u).")
    unmount.add_argument("mountpoint", type=Path, metavar="MOUNTPOINT")
    unmount.add_argument("-z", "--lazy", action="store_true",
                         help="detach now even while a process still uses the mount (a "
                         "shell sitting in it); it goes once the last one lets go")
    from idcfs.commands import prefetch, view  # here: they use this module's helpers

    prefetch.add_parser(commands)
    view.add_parser(commands)
    stats_command.add_parser(commands)
    return parser


def _add_mount_parser(commands: argparse._SubParsersAction) -> None:
    mount = commands.add_parser(
        "mount",
        help="mount slides (IDC by default)",
        description="Mount slide-microscopy series as MOUNTPOINT/studies/<study>/<series>/ "
        "(and MOUNTPOINT/collections/<id>/... with a catalog). By default: all of IDC, "
        "the tree read from the offline IDC index, the frames read by byte ranges from "
        "IDC's open AWS bucket (no quota). Returns once the mount is ready and serves in "
        "the background, unless --foreground.",
    )
    mount.add_argument("mountpoint", type=Path, metavar="MOUNTPOINT")
    mount.add_argument("--source", choices=SOURCES, default=None,
                       help="where IDC's frames come from: its AWS bucket (default), its "
                       "GCS bucket, or its DICOMweb proxy (a daily quota)")
    mount.add_argument("--s3-endpoint", metavar="URL",
                       help="an S3-compatible endpoint holding IDC's bucket layout (a "
                       "mirror), or the endpoint of --files s3://...")
    mount.add_argument("--files", metavar="LOCATION",
                       help="serve the DICOM files under a folder, s3://bucket/prefix or "
                       "gs://bucket/prefix; the tree comes from their headers")
    mount.add_argument("--quota-url", metavar="URL",
                       help="a DICOMweb proxy's quota state (IDC's /quota_usage answer), "
                       "shown by `idcfs stats` (default: IDC's, with --source proxy)")
    mount.add_argument("--url", type=http_url,
                       help="DICOMweb base URL, e.g. http://127.0.0.1:8042/dicom-web "
                       "(default: IDC's public proxy)")
    mount.add_argument("--auth", choices=("google",),
                       help="google: Application Default Credentials (google-auth) for a "
                       "Google Cloud Healthcare DICOMweb store; the token is renewed before "
                       "it expires")
    mount.add_argument("--bearer-token-file", type=Path, metavar="FILE",
                       help="send 'Authorization: Bearer <the file's content>', read again "
                       "whenever the file changes")
    mount.add_argument("--header", action="append", type=header, default=[],
                       metavar="'NAME: VALUE'", help="send this header with every request to "
                       "the DICOMweb server (repeatable; visible in ps: prefer "
                       "--bearer-token-file for a secret)")
    mount.add_argument("--catalog", metavar="FILE",
                       help="parquet or CSV of series (StudyInstanceUID, SeriesInstanceUID, "
                       "optional collection_id); 'idc' means the bundled IDC index. "
                       "Default with --url: search the server with QIDO-RS")
    mount.add_argument("--collection", action="append", default=[], metavar="ID",
                       help="only this IDC collection (repeatable)")
    mount.add_argument("--query", metavar="SQL",
                       help="DuckDB SQL over the IDC index (table 'index') returning "
                       "StudyInstanceUID and SeriesInstanceUID: mount exactly those series")
    mount.add_argument("--cache-size", type=parse_size, default="1G", metavar="SIZE",
                       help="memory cache for tiles, e.g. 512M, 2G (default 1G)")
    mount.add_argument("--cache-dir", type=Path, metavar="DIR",
                       help="persistent disk cache of tiles and series metadata (mode 0700); "
                       "survives remounts")
    mount.add_argument("--disk-cache-size", type=parse_size, default="10G", metavar="SIZE",
                       help="bound of the disk cache, LRU (default 10G)")
    mount.add_argument("--readahead-size", type=size_or_zero, default="64M", metavar="SIZE",
                       help="memory for tiles read ahead of sequential readers and not read "
                       "yet (default 64M; 0 turns read-ahead off)", dest="readahead_size")
    mount.add_argument("--quality", type=quality, default=None, metavar="Q",
                       help="JPEG quality for tiles that must be re-encoded "
                       "(non-JPEG transfer syntaxes; default 97, 4:4:4 chroma)")
    mount.add_argument("--max-connections", type=positive_int, default=8, metavar="N",
                       help="concurrent HTTP requests to the server (default 8; at most 16 "
                       "for IDC)")
    mount.add_argument("--timeout", type=seconds, default=None, metavar="SECONDS",
                       help="the longest an open() or read() waits on the server, retries "
                       "included, before it fails with EIO (default 30)")
    mount.add_argument("--tile-name", type=tile_template, default=None, metavar="TEMPLATE",
                       help="file name of each tile: a format string with {col} and {row}, "
                       "e.g. '{row:04d}_{col:04d}.jpg' so sorted names are row by row "
                       "(default '{col}_{row}.jpg')")
    mount.add_argument("--iiif-base-url", type=iiif_base_url, default=None, metavar="URL",
                       help="the URL the mount's root is served at, for the id of each "
                       "iiif/info.json (default: ids are paths from the root)")
    for view, what in (("deepzoom", "slide.dzi and slide_files/ (DeepZoom)"),
                       ("iiif", "iiif/ (IIIF Image API)"),
                       ("tissue", "tissue.txt and tissue-mask.png")):
        mount.add_argument(f"--no-{view}", dest=view, action="store_false",
                           help=f"do not show {what} in series directories, e.g. for "
                           "`cp -r`/`rsync` of tiles only")
    mount.add_argument("-f", "--foreground", action="store_true",
                       help="serve in the foreground until SIGINT/SIGTERM, then unmount")
    mount.add_argument("-o", dest="fuse_options", action="append", default=[],
                       metavar="OPTIONS", help="FUSE mount options, comma-separated "
                       "(e.g. allow_other; nonempty mounts over a directory that is "
                       "not empty)")
    mount.add_argument("--log-file", type=Path, metavar="FILE",
                       help="log file (default: stderr in the foreground, else "
                       f"{DEFAULT_LOG}/idcfs.log)")
    mount.add_argument("--pid-file", type=Path, metavar="FILE",
                       help="write the serving process's PID here once mounted")
    mount.add_argument("--debug", action="store_true", help="log every request")


def version_text() -> str:
    try:
        from idcfs.catalog.idc_index import idc_data_version

        data_version = idc_data_version()
    except Exception as error:  # the version line must never fail
        data_version = f"unavailable ({error})"
    return f"idcfs {__version__} (IDC index data {data_version})"


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    try:  # mount(8)'s call through mount.fuse3: `idcfs SOURCE MOUNTPOINT -o OPTIONS`
        arguments = mount_helper.as_command(parser, sys.argv[1:] if argv is None else argv)
    except mount_helper.HelperCallError as error:
        fail(str(error))
    args = parser.parse_args(arguments)
    if args.command == "unmount":
        unmount(args.mountpoint, args.lazy)
    elif args.command == "prefetch":
        from idcfs.commands import prefetch

        raise SystemExit(prefetch.run(args))
    elif args.command == "view":
        from idcfs.commands import view

        view.run(args)
    elif args.command == "stats":
        try:
            stats_command.run(args.mountpoint, args.json, args.watch)
        except stats_command.StatsError as error:
            fail(str(error))
    else:
        mount(args)


def unmount(mountpoint: Path, lazy: bool = False) -> None:
    path = mountpoints.absolute(mountpoint)
    if not is_mounted(path):
        fail(f"{mountpoint} is not mounted")
    try:
        note = mountpoints.unmount(path, lazy)
    except MountpointError as error:
        fail(str(error))
    if note:
        print(f"idcfs: {note}", file=sys.stderr)


def mount(args: argparse.Namespace) -> None:
    from idcfs.mount import MountConfig

    options = [option for group in args.fuse_options for option in group.split(",")]
    try:
        prepared = mountpoints.prepare(args.mountpoint, options)
    except MountpointError as error:
        fail(str(error))
    if prepared.note:
        print(f"idcfs: {prepared.note}", file=sys.stderr)
    mountpoint = prepared.path
    if args.query and args.catalog not in (None, "idc"):
        fail("--query works on the IDC index; it cannot be combined with --catalog FILE")
    _check_source_options(args)
    config = MountConfig(
        mountpoint=mountpoint,
        url=args.url,
        catalog=args.catalog,
        collections=args.collection,
        query=args.query,
        cache_bytes=args.cache_size,
        max_connections=args.max_connections,
        fuse_options=prepared.fuse_options,
        cache_dir=args.cache_dir.resolve() if args.cache_dir else None,
        disk_cache_bytes=args.disk_cache_size,
        readahead_bytes=args.readahead_size,
        source=args.source,
        s3_endpoint=args.s3_endpoint,
        files=args.files,
        auth=AuthOptions(args.auth == "google", args.bearer_token_file, tuple(args.header)),
        quota_url=args.quota_url,
        iiif_base_url=args.iiif_base_url,
        deepzoom=args.deepzoom,
        iiif=args.iiif,
        tissue=args.tissue,
    )
    _check_auth_options(config)
    if args.quality is not None:
        config.quality = args.quality
    if args.timeout is not None:
        config.timeout = args.timeout
    if args.tile_name is not None:
        config.tile_name = args.tile_name
    if args.foreground:
        _configure_logging(args.log_file, args.debug)
        _serve_or_fail(config, on_ready=lambda: _write_pid(args.pid_file))
    else:
        log_file = args.log_file or DEFAULT_LOG / "idcfs.log"
        _serve_in_background(config, log_file, args.debug, args.pid_file)


def _check_source_options(args: argparse.Namespace) -> None:
    """One source per mount: refuse combinations that would silently ignore an option."""
    if args.files:
        clashing = [name for name, value in (("--url", args.url), ("--catalog", args.catalog),
                                             ("--collection", args.collection),
                                             ("--query", args.query),
                                             ("--source", args.source)) if value]
        if clashing:
            fail(f"--files makes its own tree; it cannot be combined with {clashing[0]}")
        if args.s3_endpoint and not args.files.startswith("s3://"):
            fail("--s3-endpoint works with --files s3://...")
    if args.quota_url and not (args.url or args.source == "proxy"):
        fail("--quota-url is a DICOMweb proxy's; use it with --url or --source proxy")
    if args.quota_url and not args.quota_url.startswith(("http://", "https://")):
        fail(f"--quota-url {args.quota_url}: not an http(s) URL")
    if args.url and args.source in ("aws", "gcs"):
        fail(f"--url is a DICOMweb server; it cannot be combined with --source {args.source}")
    if args.s3_endpoint and (args.url or args.source in ("gcs", "proxy")):
        fail("--s3-endpoint is for IDC's AWS bucket layout; drop --url / --source")


def _check_auth_options(config: MountConfig) -> None:
    """Credentials are for a DICOMweb server, and one Authorization header at most."""
    if config.auth.asked and config.source_kind != "dicomweb":
        fail("--auth, --bearer-token-file and --header are for a DICOMweb server "
             "(--url, or --source proxy)")
    problem = config.auth.problem(without_credentials(config.server_url) != config.server_url)
    if problem:
        fail(problem)


def _serve_or_fail(config: MountConfig, on_ready: Callable[[], None]) -> None:
    from idcfs.mount import SetupError, serve

    try:
        serve(config, on_ready)
    except SetupError as error:
        fail(str(error))


def _write_pid(pid_file: Path | None) -> None:
    if pid_file is not None:
        pid_file.write_text(f"{os.getpid()}\n")


def _serve_in_background(
    config: MountConfig, log_file: Path, debug: bool, pid_file: Path | None
) -> None:
    """Fork; the child mounts and reports over a pipe; the parent exits once it is ready."""
    read_end, write_end = os.pipe()
    if os.fork() > 0:
        os.close(write_end)
        raise SystemExit(_await_child(read_end))
    os.close(read_end)
    os.setsid()
    _configure_logging(log_file, debug)
    from idcfs.mount import SetupError, serve

    def ready() -> None:
        _write_pid(pid_file)
        os.write(write_end, b"ok\n")
        _detach_stdio()

    try:
        serve(config, ready)
    except SetupError as error:
        os.write(write_end, f"{error}\n".encode())
        os._exit(USAGE_ERROR)
    except BaseException as error:
        logging.getLogger("idcfs").exception("daemon stopped")
        os.write(write_end, f"{type(error).__name__}: {error}\n".encode())
        os._exit(1)
    os._exit(0)


def _await_child(read_end: int) -> int:
    ready, _, _ = select.select([read_end], [], [], READY_TIMEOUT)
    message = os.read(read_end, 4096).decode(errors="replace").strip() if ready else ""
    if message == "ok":
        return 0
    print(f"idcfs: error: {message or 'mount did not become ready'}", file=sys.stderr)
    return USAGE_ERROR


def _detach_stdio() -> None:
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)


def _configure_logging(log_file: Path | None, debug: bool) -> None:
    handler: logging.Handler
    if log_file is None:
        handler = logging.StreamHandler(sys.stderr)
    else:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(log_file)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    logging.getLogger("urllib3").setLevel(logging.WARNING)


if __name__ == "__main__":
    main()
