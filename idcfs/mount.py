"""The composition root: every part of a mount is built here, and closed here.

source → slide store → tile caches → loader → read-ahead → page-cache fillers → views →
tree → FUSE adapter, each given what it uses through its constructor. `Mounted` owns the
order of shutdown. Adding a frame source or a view is one line here.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyfuse3
import trio

from idcfs.cache.disk import CacheDirError, DiskCache
from idcfs.cache.memory import ByteLRU
from idcfs.cache.tiles import TileCache
from idcfs.catalog.base import Catalog
from idcfs.control.server import ControlServer
from idcfs.errors import IdcfsError, without_credentials
from idcfs.fetch.coalesce import CoalesceSettings
from idcfs.fetch.loader import TileLoader
from idcfs.fetch.prefetch import Prefetcher
from idcfs.fetch.readahead import ReadAhead, ReadAheadSettings
from idcfs.fetch.regions import RegionReader
from idcfs.fetch.slides import SlideStore
from idcfs.fetch.tissue import TissueMasks
from idcfs.fs.nodes import TileFileIndex
from idcfs.fs.statistics import MountStatistics
from idcfs.fs.tree import Tree
from idcfs.fs.views import SeriesView
from idcfs.fs.views.catalog import CatalogView
from idcfs.fs.views.deepzoom import DeepZoomView
from idcfs.fs.views.dicom_files import DicomFilesView
from idcfs.fs.views.dicom_levels import DicomLevelsView
from idcfs.fs.views.iiif import IiifView
from idcfs.fs.views.tile_names import DEFAULT_TEMPLATE, TileNames
from idcfs.fs.views.tissue import TissueView
from idcfs.fuse.adapter import IdcfsOperations
from idcfs.fuse.diskfill import DiskPageFiller
from idcfs.fuse.openfiles import OpenFiles
from idcfs.fuse.pagecache import PageCacheFiller
from idcfs.fuse.readiness import Readiness, ServiceNotifier
from idcfs.metrics import Metrics
from idcfs.source.auth import AuthOptions, AuthSetupError, build_auth
from idcfs.source.base import FrameSource, InstanceFiles
from idcfs.source.dicomweb import DEFAULT_TIMEOUT_S, ClientSettings, DicomWebClient
from idcfs.source.files import (
    FileFrameSource,
    FileSourceSettings,
    HeaderReader,
    idc_series_files,
)
from idcfs.source.folder import FolderCatalog
from idcfs.source.objects import BucketSettings, HttpBucketStore, LocalFolderStore, ObjectStore
from idcfs.source.quota import IDC_QUOTA_URL, QuotaWatcher
from idcfs.tiles.convert import DEFAULT_QUALITY

log = logging.getLogger(__name__)

IDC_PROXY_URL = (
    "https://proxy.imaging.datacommons.cancer.gov/current/"
    "viewer-only-no-downloads-see-tinyurl-dot-com-slash-3j3d9jyp/dicomWeb"
)
IDC_MAX_CONNECTIONS = 16
IDC_BUCKET = "idc-open-data"
BUCKET_ENDPOINTS = {"aws": "https://s3.amazonaws.com", "gcs": "https://storage.googleapis.com"}
FUSE_MAX_TASKS = 128


class SetupError(IdcfsError):
    """A problem found before serving: reported as one line, exit code 2."""


@dataclass
class MountConfig:
    """Everything `idcfs mount` was asked for."""

    mountpoint: Path
    url: str | None = None
    catalog: str | None = None
    collections: list[str] = field(default_factory=list)
    query: str | None = None
    cache_bytes: int = 1 << 30
    quality: int = DEFAULT_QUALITY
    max_connections: int = 8
    fuse_options: list[str] = field(default_factory=list)
    cache_dir: Path | None = None
    disk_cache_bytes: int = 10 << 30
    readahead_bytes: int = 64 << 20
    timeout: float = DEFAULT_TIMEOUT_S  # the deadline of every open and read (seconds)
    source: str | None = None  # aws, gcs or proxy (IDC); None: aws, or DICOMweb with --url
    s3_endpoint: str | None = None  # another S3-compatible endpoint for the buckets
    files: str | None = None  # a folder, s3://bucket/prefix or gs://bucket/prefix
    auth: AuthOptions = field(default_factory=AuthOptions)  # credentials for DICOMweb
    tile_name: str = DEFAULT_TEMPLATE  # --tile-name: the file name of each tile
    quota_url: str | None = None  # a proxy's /quota_usage (default: IDC's, for its proxy)
    iiif_base_url: str | None = None  # --iiif-base-url: where the root is served, for ids
    deepzoom: bool = True  # slide.dzi and slide_files/ (--no-deepzoom: not shown)
    iiif: bool = True  # iiif/ (--no-iiif)
    tissue: bool = True  # tissue.txt and tissue-mask.png (--no-tissue)

    @property
    def source_kind(self) -> str:
        """Where frames come from: "dicomweb", "aws", "gcs" or "files"."""
        if self.files:
            return "files"
        if self.url or self.source == "proxy":
            return "dicomweb"
        return self.source or "aws"

    @property
    def server_url(self) -> str:
        return self.url or IDC_PROXY_URL

    @property
    def uses_idc_index(self) -> bool:
        if self.files:
            return False
        return self.url is None or self.catalog == "idc" or bool(self.collections or self.query)

    @property
    def is_idc_proxy(self) -> bool:
        return self.server_url.startswith(IDC_PROXY_URL.split("/current/")[0])

    @property
    def connection_limit(self) -> int:
        if self.is_idc_proxy:
            return min(self.max_connections, IDC_MAX_CONNECTIONS)
        return self.max_connections

    @property
    def quota_endpoint(self) -> str | None:
        """Where the quota state is asked for: only for a DICOMweb proxy that has one."""
        if self.source_kind != "dicomweb":
            return None
        return self.quota_url or (IDC_QUOTA_URL if self.is_idc_proxy else None)


def build_catalog(config: MountConfig, client: DicomWebClient | None) -> Catalog:
    """The catalog the options ask for; SetupError with a one-line reason otherwise."""
    try:
        if config.uses_idc_index:
            from idcfs.catalog.idc_index import IdcIndexCatalog

            return IdcIndexCatalog(collections=config.collections or None, query=config.query)
        if config.catalog:
            from idcfs.catalog.user_file import FileCatalog

            return FileCatalog(Path(config.catalog))
    except ValueError as error:
        raise SetupError(str(error).splitlines()[0] if str(error) else repr(error)) from None
    if client is None:
        raise SetupError("a catalog is needed: --catalog FILE or the IDC index")
    from idcfs.catalog.qido import QidoCatalog

    return QidoCatalog(client)


@dataclass
class Mounted:
    """Every long-lived part of one mount, and the order they start and stop in."""

    operations: IdcfsOperations
    source: FrameSource
    loader: TileLoader
    tiles: TileCache
    disk: DiskCache | None = None
    readahead: ReadAhead | None = None
    page_filler: PageCacheFiller | None = None
    disk_filler: DiskPageFiller | None = None
    statistics: Callable[[], dict[str, Any]] = dict  # what the statistics file shows
    control: ControlServer | None = None
    quota: QuotaWatcher | None = None

    def session_opened(self) -> None:
        """The FUSE session exists: notifications to the kernel may start."""
        if self.control is not None:
            self.control.start()
        if self.quota is not None:
            self.quota.start()
        if self.page_filler is not None:
            self.page_filler.start()
        if self.disk_filler is not None:
            self.disk_filler.start()

    def ready(self) -> None:
        """The mount answers: a source with a warm-up (`FileFrameSource.warm_up`) starts
        it, on a thread of its own, off every request's path."""
        warm_up = getattr(self.source, "warm_up", None)
        if warm_up is not None:
            warm_up()

    def session_closing(self) -> None:
        """The FUSE session is about to close: notifications must stop first."""
        if self.page_filler is not None:
            self.page_filler.stop()
        if self.disk_filler is not None:
            self.disk_filler.stop()

    def close(self) -> None:
        """After unmount: read-ahead, then demand requests, then the size index (written
        into the disk cache, so before it closes), the disk cache and the source."""
        if self.control is not None:
            self.control.close()  # first: no prefetch starts a batch past this
        if self.readahead is not None:
            self.readahead.close()
        self.loader.close()
        self.tiles.flush()
        if self.disk is not None:
            self.disk.close()
        if self.quota is not None:
            self.quota.close()
        self.source.close()


def connect_source(config: MountConfig, metrics: Metrics) -> DicomWebClient:
    """The DICOMweb server, checked to answer; SetupError with one line otherwise."""
    settings = ClientSettings(max_connections=config.connection_limit, timeout=config.timeout)
    try:
        auth = build_auth(config.auth, metrics)
    except AuthSetupError as error:
        raise SetupError(str(error)) from None
    try:
        client = DicomWebClient(config.server_url, settings, metrics, auth)
        client.check_reachable()
    except IdcfsError as error:
        shown = without_credentials(config.server_url)
        raise SetupError(f"cannot reach DICOMweb server {shown}: {error}") from None
    return client


def open_disk_cache(config: MountConfig) -> DiskCache | None:
    """The `--cache-dir` cache, if asked for; SetupError when the directory is unsafe."""
    if config.cache_dir is None:
        return None
    try:
        return DiskCache(config.cache_dir, config.disk_cache_bytes)
    except CacheDirError as error:
        raise SetupError(str(error)) from None


def bucket_store(config: MountConfig, scheme: str, bucket: str) -> HttpBucketStore:
    """The bucket `bucket` of AWS (scheme s3/aws, or --s3-endpoint) or GCS (gs/gcs)."""
    if scheme in ("s3", "aws"):
        endpoint = config.s3_endpoint or BUCKET_ENDPOINTS["aws"]
    else:
        endpoint = BUCKET_ENDPOINTS["gcs"]
    settings = BucketSettings(max_connections=config.max_connections, call_timeout=config.timeout)
    try:
        return HttpBucketStore(endpoint, bucket, settings)
    except ValueError as error:
        raise SetupError(f"--s3-endpoint: {error}") from None


def files_store(config: MountConfig) -> tuple[ObjectStore, str]:
    """The store and key prefix of --files LOCATION."""
    location = config.files or ""
    scheme, found, rest = location.partition("://")
    if not found:
        folder = Path(location).expanduser()
        if not folder.is_dir():
            raise SetupError(f"--files {location}: not a folder")
        return LocalFolderStore(folder.resolve()), ""
    if scheme not in ("s3", "gs"):
        raise SetupError(f"--files {location}: use a folder, s3://bucket/prefix or "
                         "gs://bucket/prefix")
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise SetupError(f"--files {location}: no bucket named")
    return bucket_store(config, scheme, bucket), prefix


def check_store(store: ObjectStore, config: MountConfig, prefix: str = "") -> None:
    """One listing page, so a wrong endpoint or bucket fails the mount in one line."""
    try:
        store.probe(prefix, time.monotonic() + config.timeout)
    except IdcfsError as error:
        raise SetupError(f"cannot read {store.description}: {error}") from None


def connect(config: MountConfig, metrics: Metrics,
            disk: DiskCache | None) -> tuple[FrameSource, Catalog]:
    """The frame source and the catalog the options ask for, checked to answer."""
    kind = config.source_kind
    if kind == "dicomweb":
        client = connect_source(config, metrics)
        return client, build_catalog(config, client)
    settings = FileSourceSettings(timeout=config.timeout, parallel_reads=config.max_connections)
    if kind == "files":
        store, prefix = files_store(config)
        check_store(store, config, prefix)
        headers = HeaderReader(store, disk)
        folder = FolderCatalog(store, headers, prefix, config.timeout)
        try:
            folder.scan()
        except IdcfsError as error:
            raise SetupError(f"cannot read the files in {config.files}: {error}") from None
        return FileFrameSource(store, folder, disk, settings, headers), folder
    catalog = build_catalog(config, None)
    store = bucket_store(config, kind, IDC_BUCKET)
    check_store(store, config)
    series_files = idc_series_files(store, catalog, IDC_BUCKET)
    return FileFrameSource(store, series_files, disk, settings), catalog


def build_mount(config: MountConfig) -> Mounted:
    """Check the server and build every part of the mount."""
    metrics = Metrics()
    disk = open_disk_cache(config)
    try:
        client, catalog = connect(config, metrics, disk)
    except BaseException:
        if disk is not None:
            disk.close()
        raise
    tiles = TileCache(ByteLRU(config.cache_bytes), ByteLRU(config.readahead_bytes), disk,
                      config.quality, metrics)
    loader = TileLoader(client, tiles, metrics, quality=config.quality,
                        demand=_demand_settings(config),
                        wait_s=config.timeout)
    open_files = OpenFiles()
    tile_index = TileFileIndex()
    page_filler = disk_filler = readahead = None
    if config.readahead_bytes > 0:
        page_filler = PageCacheFiller(tile_index, open_files.is_open, metrics)
        if disk is not None:
            disk_filler = DiskPageFiller(tile_index, open_files.is_open, loader, disk, metrics)
        workers = max(1, min(4, config.connection_limit // 2))
        readahead = ReadAhead(
            loader, metrics, ReadAheadSettings(workers=workers),
            on_landed=page_filler.offer, take_over=disk_filler.take if disk_filler else None,
        )
    views = _series_views(config, client, loader, tile_index, readahead, metrics)
    quota = QuotaWatcher(config.quota_endpoint) if config.quota_endpoint else None
    statistics = MountStatistics(metrics, client, config.source_kind, quota)
    slides = SlideStore(client, disk, wait_s=config.timeout)
    catalog_view = CatalogView(catalog, slides, views, [statistics.file()])
    tree = Tree(catalog_view.root_children, catalog_view.revision_ns())
    operations = IdcfsOperations(tree, open_files, metrics, timeout=config.timeout)
    prefetcher = None if disk is None else Prefetcher(loader, metrics,
                                                      max(1, config.connection_limit // 2))
    control = ControlServer(config.mountpoint, tree, prefetcher, metrics, config.timeout)
    return Mounted(operations, client, loader, tiles, disk, readahead, page_filler, disk_filler,
                   statistics.document, control, quota)


def _series_views(config: MountConfig, client: FrameSource, loader: TileLoader,
                  tile_index: TileFileIndex, readahead: ReadAhead | None,
                  metrics: Metrics) -> list[SeriesView]:
    """What a series directory shows: slide.json, images and levels always; the tissue
    lists, DeepZoom and IIIF views unless turned off (`--no-tissue`, `--no-deepzoom`,
    `--no-iiif`); `dicom/` with a source of files. One region reader serves them all."""
    regions = RegionReader(loader, metrics, wait_s=config.timeout)
    tissue = (TissueView(TissueMasks(regions, loader.tiles, metrics, wait_s=config.timeout))
              if config.tissue else None)
    views: list[SeriesView] = [DicomLevelsView(loader, tile_index, readahead,
                                               tile_names=TileNames(config.tile_name),
                                               level_files=tissue)]
    if tissue is not None:
        views.append(tissue)
    if config.deepzoom:
        views.append(DeepZoomView(loader, regions, tile_index))
    if isinstance(client, InstanceFiles):  # files by ranges: dicom/<uid>.dcm too
        views.append(DicomFilesView(client, metrics))
    if config.iiif:
        views.append(IiifView(regions, config.iiif_base_url))
    return views


def _demand_settings(config: MountConfig) -> CoalesceSettings:
    if config.source_kind == "dicomweb":
        return CoalesceSettings(workers=config.connection_limit)
    return CoalesceSettings.for_byte_ranges(config.connection_limit)


def fuse_options(config: MountConfig) -> set[str]:
    options = set(pyfuse3.default_options)
    options |= {"subtype=idcfs", "ro"}
    options |= {option for option in config.fuse_options if option}
    if not any(option.startswith("fsname=") for option in options):  # mount(8) gives SOURCE
        options.add("fsname=idcfs")
    return options


def serve(config: MountConfig, on_ready: Callable[[], None]) -> None:
    """Mount, call on_ready once the root answers (and tell systemd: READY=1), and serve
    until unmounted or SIGINT/SIGTERM."""
    mounted = build_mount(config)
    try:
        pyfuse3.init(mounted.operations, str(config.mountpoint), fuse_options(config))
    except RuntimeError as error:
        mounted.close()
        raise SetupError(f"cannot mount {config.mountpoint}: {error}") from None
    log.info("mounted %s from %s", config.mountpoint, mounted.source.description)
    mounted.session_opened()
    def ready() -> None:
        on_ready()
        mounted.ready()

    readiness = Readiness(config.mountpoint, ready, ServiceNotifier.from_environment(),
                          mounted.statistics, config.timeout)
    try:
        trio.run(main_until_signal, readiness.run)
    finally:
        readiness.notifier.stopping()
        mounted.session_closing()
        pyfuse3.close(unmount=True)
        mounted.close()
        log.info("unmounted %s", config.mountpoint)
    if readiness.failure is not None:
        raise SetupError(readiness.failure)


async def main_until_signal(
    beside: Callable[[trio.CancelScope], Awaitable[None]] | None = None,
) -> None:
    """Run the FUSE loop until it ends or SIGINT/SIGTERM/SIGHUP arrives (and `beside`,
    given the loop's cancel scope, alongside it)."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_stop_on_signal, nursery.cancel_scope)
        if beside is not None:
            nursery.start_soon(beside, nursery.cancel_scope)
        await pyfuse3.main(min_tasks=4, max_tasks=FUSE_MAX_TASKS)
        nursery.cancel_scope.cancel()


async def _stop_on_signal(scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        async for received in signals:
            log.info("signal %s: unmounting", signal.Signals(received).name)
            scope.cancel()
            return
