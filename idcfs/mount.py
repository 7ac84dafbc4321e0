"""Wiring one mount together and serving it until unmount or a signal.

catalog → slide store → tile loader (DICOMweb client + cache) → tree → FUSE adapter.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pyfuse3
import trio

from idcfs.cache.disk import DiskCache
from idcfs.cache.memory import ByteLRU
from idcfs.catalog.base import Catalog
from idcfs.errors import IdcfsError
from idcfs.fetch.coalesce import CoalesceSettings
from idcfs.fetch.loader import TileLoader
from idcfs.fetch.readahead import ReadAhead, ReadAheadSettings
from idcfs.fetch.slides import SlideStore
from idcfs.fs.tree import Tree
from idcfs.fuse.adapter import IdcfsOperations
from idcfs.source.dicomweb import ClientSettings, DicomWebClient
from idcfs.tiles.convert import DEFAULT_QUALITY

log = logging.getLogger(__name__)

IDC_PROXY_URL = (
    "https://proxy.imaging.datacommons.cancer.gov/current/"
    "viewer-only-no-downloads-see-tinyurl-dot-com-slash-3j3d9jyp/dicomWeb"
)
IDC_MAX_CONNECTIONS = 16
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

    @property
    def server_url(self) -> str:
        return self.url or IDC_PROXY_URL

    @property
    def uses_idc_index(self) -> bool:
        return self.url is None or self.catalog == "idc" or bool(self.collections or self.query)

    @property
    def connection_limit(self) -> int:
        if self.server_url.startswith(IDC_PROXY_URL.split("/current/")[0]):
            return min(self.max_connections, IDC_MAX_CONNECTIONS)
        return self.max_connections


def build_catalog(config: MountConfig, client: DicomWebClient) -> Catalog:
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
    from idcfs.catalog.qido import QidoCatalog

    return QidoCatalog(client)


def build_operations(config: MountConfig) -> IdcfsOperations:
    """Check the server, build every layer, and return the FUSE operations."""
    client = DicomWebClient(
        config.server_url, ClientSettings(max_connections=config.connection_limit)
    )
    try:
        client.check_reachable()
    except IdcfsError as error:
        raise SetupError(f"cannot reach DICOMweb server {config.server_url}: {error}") from None
    catalog = build_catalog(config, client)
    disk = DiskCache(config.cache_dir, config.disk_cache_bytes) if config.cache_dir else None
    loader = TileLoader(
        client,
        ByteLRU(config.cache_bytes),
        quality=config.quality,
        staged=ByteLRU(config.readahead_bytes),
        disk=disk,
        demand=CoalesceSettings(workers=config.connection_limit),
    )
    readahead = None
    if config.readahead_bytes > 0:
        workers = max(1, min(4, config.connection_limit // 2))
        readahead = ReadAhead(loader, ReadAheadSettings(workers=workers))
    tree = Tree(catalog, SlideStore(client, disk), loader, readahead)
    return IdcfsOperations(tree)


def fuse_options(config: MountConfig) -> set[str]:
    options = set(pyfuse3.default_options)
    options |= {"fsname=idcfs", "subtype=idcfs", "ro"}
    options |= {option for option in config.fuse_options if option}
    return options


def serve(config: MountConfig, on_ready: Callable[[], None]) -> None:
    """Mount, call on_ready, and serve until unmounted or SIGINT/SIGTERM."""
    operations = build_operations(config)
    try:
        pyfuse3.init(operations, str(config.mountpoint), fuse_options(config))
    except RuntimeError as error:
        raise SetupError(f"cannot mount {config.mountpoint}: {error}") from None
    log.info("mounted %s from %s", config.mountpoint, config.server_url)
    operations.session_opened()
    on_ready()
    try:
        trio.run(main_until_signal)
    finally:
        operations.session_closing()
        pyfuse3.close(unmount=True)
        _close(operations)
        log.info("unmounted %s", config.mountpoint)


def _close(operations: IdcfsOperations) -> None:
    tree = operations.tree
    if tree.readahead is not None:
        tree.readahead.close()
    tree.loader.close()  # writes the size index: before the disk cache closes
    if tree.loader.disk is not None:
        tree.loader.disk.close()
    tree.loader.client.close()


async def main_until_signal() -> None:
    """Run the FUSE loop until it ends or SIGINT/SIGTERM/SIGHUP arrives."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_stop_on_signal, nursery.cancel_scope)
        await pyfuse3.main(min_tasks=4, max_tasks=FUSE_MAX_TASKS)
        nursery.cancel_scope.cancel()


async def _stop_on_signal(scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        async for received in signals:
            log.info("signal %s: unmounting", signal.Signals(received).name)
            scope.cancel()
            return
