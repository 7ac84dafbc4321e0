"""Frames straight from DICOM files by byte ranges: IDC's open buckets, any S3-compatible
bucket, or a local folder (issue 13).

A `FileFrameSource` holds an `ObjectStore` (`idcfs.source.objects`) and a `SeriesFiles`
(which objects hold a series' instances). Entering a series costs one listing (none
when IDC's `sm_instance_index` names its files: `IndexedSeriesFiles`) and one header
read per instance, all in parallel; the header is parsed by pydicom into DICOM
JSON (`idcfs.source.dicomfile`), so the slide model comes out as it does from DICOMweb.
An instance's frame index (offset tables, TIFF tags or a scan) is built when a level of
it is listed if that takes no scan (`frame_size_hints`: the sizes its tiles show), else
on its first frame read, and kept (in memory and, with `--cache-dir`, on disk), so it is
built once; a scan is never made for a listing. A batch of frames is one ranged GET per
run of consecutive frames (bounded in bytes), the runs of a batch in flight together.

An instance's location is `<key>#<size>`, or `<key>#<size>#v=<version>` when the listing
gave the object a version (`ObjectInfo.version`: a bucket's LastModified and ETag, a
local file's mtime and inode): the object as it was listed, so a remount served from the
disk cache needs no listing, and a file rewritten since, even at the same size, is never
read through a stale header or frame index (both are keyed by the location). Reads of a
versioned object check that version (If-Match and the answer's ETag, the open file's
mtime and inode); a changed object is EIO with a log line, and what was kept about it
and its series is dropped (`FileFrameSource._changed`), never served as another
version's bytes.

Frames are returned as stored, as DICOMweb returns them; the tile layer removes DICOM's
pad byte so a served JPEG ends at its EOI whatever the source (`idcfs.dicom.frames`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote, unquote

from idcfs.catalog.base import Catalog, SeriesEntry
from idcfs.dicom.dicom_json import first_value
from idcfs.errors import FetchError, MetadataError
from idcfs.slide.model import InstanceInfo
from idcfs.source.base import Frame, FrameSizeHints, InstanceMetadata
from idcfs.source.dicomfile import (
    SCAN_RANGE,
    FileHeader,
    FrameIndex,
    FramePosition,
    ScanNeeded,
    frame_bytes,
    frame_index,
    read_header,
)
from idcfs.source.objects import ObjectChanged, ObjectInfo, ObjectMissing, ObjectStore
from idcfs.source.threads import started_pool
from idcfs.source.warmup import WarmUp

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 30.0
MAX_RUN_BYTES = 8 * 1024 * 1024  # one ranged GET covers consecutive frames up to this
MERGE_GAP = 4096  # frames this close (item headers, pad bytes) share one GET
HEADER_DISK_KEY = "file-header-v2"  # v2: the DICOM JSON cut to HEADER_TAGS
INDEX_DISK_KEY = "frame-index-v2"
DICOM_SUFFIXES = (".dcm", ".dicom")


class KeyValueStore(Protocol):
    """Where headers and frame indexes survive a remount (the disk cache, if any)."""

    def get(self, key: str) -> bytes | None: ...

    def put(self, key: str, data: bytes) -> None: ...


class SeriesFiles(Protocol):
    """Which objects of the store hold the instances of a series."""

    def series_objects(self, study_uid: str, series_uid: str,
                       deadline: float) -> list[ObjectInfo]:
        """The series' instance files; FetchError when the store has none for it (the
        catalog said it exists: EIO, never ENOENT, as for a series a DICOMweb server
        lacks)."""
        ...


@dataclass(frozen=True)
class FileSourceSettings:
    """Limits of a `FileFrameSource` (seconds, bytes, threads)."""

    timeout: float = DEFAULT_TIMEOUT_S  # the deadline of one call (listing + headers, a batch)
    parallel_reads: int = 16  # header reads and runs in flight at once
    max_run_bytes: int = MAX_RUN_BYTES


VERSION_MARK = "v="  # a location's last part: the version, quoted (no '#' left in it)


def location_of(info: ObjectInfo) -> str:
    """`<key>#<size>`, then `#v=<version>` when the object has one (a key may hold '#':
    the parts are taken from the end, and a size is all digits, a version never)."""
    where = f"{info.key}#{info.size}"
    if info.version is None:
        return where
    return f"{where}#{VERSION_MARK}{quote(info.version, safe='')}"


def parse_location(location: str) -> ObjectInfo:
    """Inverse of `location_of`; FetchError for anything else."""
    rest, _, last = location.rpartition("#")
    version = None
    if last.startswith(VERSION_MARK):
        version = unquote(last[len(VERSION_MARK):])
        rest, _, last = rest.rpartition("#")
    if not rest or not last.isdigit():
        raise FetchError(f"not a file location: {location!r}")
    return ObjectInfo(rest, int(last), version)


def revision_of(info: ObjectInfo) -> str:
    """What tiles of the object are keyed by besides their instance and frame number
    (`InstanceInfo.revision`): a short digest of its size and version, so a file
    rewritten under the same SOP Instance UID (which DICOM forbids, and regenerating
    tools do) never serves tiles kept from its old version; "" without a version."""
    if info.version is None:
        return ""
    return hashlib.blake2b(f"{info.size}#{info.version}".encode(), digest_size=8).hexdigest()


def series_version_of(objects: Sequence[ObjectInfo]) -> str | None:
    """A digest of a series' objects as listed (keys, sizes, versions): what its cached
    metadata is keyed by, so a remount after a file changed reads its header again;
    None when no object has a version."""
    if all(info.version is None for info in objects):
        return None
    names = "\n".join(sorted(location_of(info) for info in objects))
    return hashlib.blake2b(names.encode(), digest_size=8).hexdigest()


@dataclass(frozen=True)
class _Run:
    """One ranged GET: bytes [start, end) holding the frames `numbers` (1-based)."""

    start: int
    end: int
    numbers: tuple[int, ...]


def plan_runs(index: Sequence[FramePosition], numbers: Sequence[int],
              max_bytes: int = MAX_RUN_BYTES, gap: int = MERGE_GAP) -> list[_Run]:
    """Group the frames asked into runs of nearby frames, each at most `max_bytes`
    (a single frame larger than that is a run of its own)."""
    runs: list[_Run] = []
    for number in sorted(set(numbers)):
        position = index[number - 1]
        last = runs[-1] if runs else None
        if (last is not None and 0 <= position.start - last.end <= gap
                and position.end - last.start <= max_bytes):
            runs[-1] = _Run(last.start, position.end, (*last.numbers, number))
        else:
            runs.append(_Run(position.start, position.end, (number,)))
    return runs


class FileFrameSource:
    """A `FrameSource` over DICOM instance files in an object store."""

    def __init__(self, store: ObjectStore, series_files: SeriesFiles,
                 kept: KeyValueStore | None = None,
                 settings: FileSourceSettings | None = None,
                 headers: HeaderReader | None = None) -> None:
        self.store = store
        self.series_files = series_files
        self.settings = settings or FileSourceSettings()
        self.headers = headers or HeaderReader(store, kept)
        self._kept = kept
        self._indexes: dict[str, FrameIndex] = {}
        self._index_locks: dict[str, threading.Lock] = {}
        self._changed_locations: set[str] = set()
        # told when a file of a series changed: the slide store, and the series files
        # when they keep listings (`--files`: list that series again)
        forget_series = getattr(series_files, "forget_series", None)
        self._listeners: list[Callable[[str, str], None]] = (
            [forget_series] if forget_series is not None else [])
        self._lock = threading.Lock()
        self._pool = started_pool(self.settings.parallel_reads, "idcfs-ranges")
        self._warm_up: WarmUp | None = None

    def warm_up(self) -> WarmUp:
        """Warm the code of entering a series on a thread of its own (`warmup.py`), once
        the mount answers; any request to this source stops it before its next step."""
        if self._warm_up is None:
            self._warm_up = WarmUp()
            self._warm_up.start()
        return self._warm_up

    def _requested(self) -> None:
        """A request arrived: the warm-up, if running, gives way."""
        if self._warm_up is not None:
            self._warm_up.stop()

    @property
    def description(self) -> str:
        return f"DICOM files in {self.store.description}"

    def statistics(self) -> dict[str, Any]:
        return self.store.statistics()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.store.close()

    # -- series ---------------------------------------------------------------------

    def series_version(self, study_uid: str, series_uid: str) -> str | None:
        """The series' files as listed, digested (`series_version_of`), when the series
        files know them without a request (`--files`: listed at mount); else None."""
        version = getattr(self.series_files, "series_version", None)
        return version(study_uid, series_uid) if version is not None else None

    def on_series_changed(self, listener: Callable[[str, str], None]) -> None:
        """Call `listener(study_uid, series_uid)` when a file of the series is found
        changed since it was listed (the slide store drops its metadata)."""
        self._listeners.append(listener)

    def series_metadata(self, study_uid: str, series_uid: str) -> list[InstanceMetadata]:
        """List the series' files and read every header, in parallel."""
        self._requested()
        deadline = self._deadline()
        self.store.preconnect(self._header_connections(study_uid, series_uid))
        objects = self.series_files.series_objects(study_uid, series_uid, deadline)
        try:
            headers = self._series_headers(objects, deadline, (study_uid, series_uid))
        except ObjectMissing as missing:
            relist = getattr(self.series_files, "listed_after_missing", None)
            if relist is None:
                raise
            objects = relist(study_uid, series_uid, deadline, missing)
            headers = self._series_headers(objects, deadline, (study_uid, series_uid))
        found = [
            InstanceMetadata(location_of(info), header.dicom_json, revision_of(info))
            for info, header in zip(objects, headers, strict=True)
            if first_value(header.dicom_json, "0020000E", "") in (series_uid, "")
        ]
        if not found:
            raise FetchError(f"series {series_uid}: no instance files in "
                             f"{self.store.description}")
        return found

    def _header_connections(self, study_uid: str, series_uid: str) -> int:
        """Connections to open while the series is listed, for its header reads: one a
        header read to come (`header_reads_ahead` of the series files: the catalog's
        instance count; none when the headers are kept), at most `parallel_reads`; each
        more is a connection set up (a TLS handshake to a bucket) for nothing."""
        ahead = getattr(self.series_files, "header_reads_ahead", None)
        count = ahead(study_uid, series_uid) if ahead is not None else None
        most = self.settings.parallel_reads
        return most if count is None else max(0, min(most, count))

    def _series_headers(self, objects: Sequence[ObjectInfo], deadline: float,
                        series: tuple[str, str]) -> list[FileHeader]:
        def header(info: ObjectInfo) -> FileHeader:
            return self._header(info, deadline, series)

        return self._map(header, objects)

    # -- frames ---------------------------------------------------------------------

    def frames(self, instance: InstanceInfo, numbers: Sequence[int]) -> list[Frame]:
        """Frames `numbers` (1-based) as stored: one ranged GET per run, runs in parallel."""
        deadline = self._deadline()
        info = parse_location(instance.location)
        header, index = self._indexed(info, deadline)
        for number in numbers:
            if not 1 <= number <= len(index):
                raise FetchError(f"{info.key}: frame {number} of {len(index)}")
        runs = plan_runs(index, numbers, self.settings.max_run_bytes)
        bodies = self._map(lambda run: self._read(info, run.start, run.end - run.start,
                                                  deadline), runs)
        by_number: dict[int, bytes] = {}
        for run, body in zip(runs, bodies, strict=True):
            for number in run.numbers:
                by_number[number] = frame_bytes(body, run.start, index[number - 1])
        return [Frame(by_number[number], header.transfer_syntax) for number in numbers]

    def frame_size_hints(self, instance: InstanceInfo) -> FrameSizeHints | None:
        """The stored length of every frame, from the instance's frame index, built now
        if it takes no scan (offset tables, TIFF tags: a few small reads, never a frame);
        None when only a scan would tell, or the file cannot be indexed now."""
        info = parse_location(instance.location)
        try:
            header, index = self._indexed(info, self._deadline(), allow_scan=False)
        except ScanNeeded:
            return None
        except FetchError as error:
            log.info("%s: no frame sizes before the first read (%s)", info.key, error)
            return None
        if index.method == "native":
            return None
        return FrameSizeHints(tuple(position.content_bound for position in index),
                              index.first_head, header.transfer_syntax)

    def instance_file_size(self, instance: InstanceInfo) -> int:
        """The size of the instance's file, as listed (for `dicom/<uid>.dcm`)."""
        return parse_location(instance.location).size

    def read_instance_file(self, instance: InstanceInfo, start: int, length: int) -> bytes:
        """Bytes of the instance's file as stored; fewer only at its end."""
        info = parse_location(instance.location)
        length = max(0, min(length, info.size - start))
        return self._read(info, start, length, self._deadline())

    # -- plumbing -------------------------------------------------------------------

    def _indexed(self, info: ObjectInfo, deadline: float,
                 allow_scan: bool = True) -> tuple[FileHeader, FrameIndex]:
        header = self._header(info, deadline)
        name = location_of(info)
        with self._lock:
            index = self._indexes.get(name)
            lock = self._index_locks.setdefault(name, threading.Lock())
        if index is not None:
            return header, index
        if not lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise FetchError(f"{info.key}: frame index not ready by the deadline")
        try:
            with self._lock:
                index = self._indexes.get(name)
            if index is None:
                index = self._build_index(info, header, deadline, allow_scan)
                with self._lock:
                    self._indexes[name] = index
            return header, index
        finally:
            lock.release()

    def _build_index(self, info: ObjectInfo, header: FileHeader, deadline: float,
                     allow_scan: bool = True) -> FrameIndex:
        disk_key = f"{INDEX_DISK_KEY}/{self.store.description}/{location_of(info)}"
        kept = self._kept.get(disk_key) if self._kept is not None else None
        if kept is not None:
            try:
                return FrameIndex.from_bytes(kept)
            except FetchError as error:
                log.warning("%s: %s; building it again", info.key, error)
        began = time.monotonic()
        reads = ScanAhead(lambda start, length: self._read(info, start, length, deadline),
                           info.size, self._pool, self.settings.parallel_reads)
        try:
            index = frame_index(reads, info.size, header, allow_scan=allow_scan)
        finally:
            reads.close()
        log.debug("%s: %d frames located (%s) in %.3f s", info.key, len(index), index.method,
                  time.monotonic() - began)
        if self._kept is not None:
            self._kept.put(disk_key, index.to_bytes())
        return index

    def _read(self, info: ObjectInfo, start: int, length: int, deadline: float) -> bytes:
        self._requested()
        try:
            return self.store.read(info.key, start, length, deadline, info.version)
        except ObjectChanged as error:
            self._changed(info, error)
            raise

    def _header(self, info: ObjectInfo, deadline: float,
                series: tuple[str, str] | None = None) -> FileHeader:
        try:
            return self.headers.header(info, deadline)
        except ObjectChanged as error:
            self._changed(info, error, series)
            raise

    def _changed(self, info: ObjectInfo, error: ObjectChanged,
                 series: tuple[str, str] | None = None) -> None:
        """`info` is not the object that was listed: drop its frame index and header
        (kept under its old location, they are never asked for again once the series
        is listed anew), and tell the series files and the slide store, once, so
        that the series is listed and read again when it is next entered. Reads through
        the old location go on failing (EIO): their version check fails every time."""
        name = location_of(info)
        with self._lock:
            self._indexes.pop(name, None)
            first = name not in self._changed_locations
            self._changed_locations.add(name)
        header = self.headers.forget(info)
        if not first:
            return
        if series is None and header is not None:
            series = (str(first_value(header.dicom_json, "0020000D", "")),
                      str(first_value(header.dicom_json, "0020000E", "")))
        log.warning("%s; what was kept about it and its series is dropped: its tiles not "
                    "read yet are EIO in this mount, and the series is listed and read "
                    "again when it is next entered (after a remount)", error)
        if series is None or not all(series):
            return
        for listener in self._listeners:
            listener(*series)

    def _map(self, work: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        """`work` over `items`, the first on the calling thread (which would only wait),
        the others on the read pool; the first error."""
        if not items:
            return []
        futures = [self._pool.submit(work, item) for item in items[1:]]
        first = work(items[0])
        return [first, *(future.result() for future in futures)]

    def _deadline(self) -> float:
        return time.monotonic() + self.settings.timeout


class ScanAhead:
    """Reads for building a frame index, with a scan's reads fetched ahead in parallel.

    A file without offset tables is indexed by walking its item headers front to back in
    `SCAN_RANGE` reads (`idcfs.source.dicomfile`), one after the other: on a link of
    limited bandwidth per connection, or far away, that walk took most of a level's
    first `cp -r`. Here a read of at least `SCAN_RANGE` bytes is served from aligned
    blocks of that size, the next `ahead` blocks already being read on the pool, so
    the walk parses one block while the following ones arrive. Blocks behind the walk
    are dropped; smaller reads (headers, offset tables, TIFF tags) go straight through.
    Every block read keeps the caller's deadline.
    """

    def __init__(self, read: Callable[[int, int], bytes], size: int,
                 pool: ThreadPoolExecutor, ahead: int, block: int = SCAN_RANGE) -> None:
        self._read, self._size, self._pool = read, size, pool
        self._ahead, self._block = max(1, ahead), block
        self._blocks: dict[int, Future[bytes]] = {}

    def __call__(self, start: int, length: int) -> bytes:
        if length < self._block:
            return self._read(start, length)
        first, last = start // self._block, (start + length - 1) // self._block
        for number in list(self._blocks):
            if number < first:
                self._blocks.pop(number).cancel()
        for number in range(first, last + 1 + self._ahead):
            if number * self._block < self._size and number not in self._blocks:
                self._blocks[number] = self._pool.submit(
                    self._read, number * self._block,
                    min(self._block, self._size - number * self._block))
        data = b"".join(self._blocks[number].result() for number in range(first, last + 1))
        offset = start - first * self._block
        return data[offset : offset + length]

    def close(self) -> None:
        """Give up the blocks still being read ahead."""
        for future in self._blocks.values():
            future.cancel()
        self._blocks.clear()


class HeaderReader:
    """Instance headers by object, read once: kept in memory and in `kept` (keyed by the
    store and the object's location: key, size and version, so a changed file is read
    again)."""

    def __init__(self, store: ObjectStore, kept: KeyValueStore | None = None) -> None:
        self.store = store
        self._kept = kept
        self._headers: dict[str, FileHeader] = {}
        self._lock = threading.Lock()

    def forget(self, info: ObjectInfo) -> FileHeader | None:
        """Drop the header kept in memory for `info` (changed since it was listed); the
        header as it was, from memory or the disk cache, if kept."""
        name = location_of(info)
        with self._lock:
            header = self._headers.pop(name, None)
        return header if header is not None else self._kept_header(name)

    def header(self, info: ObjectInfo, deadline: float) -> FileHeader:
        name = location_of(info)
        with self._lock:
            header = self._headers.get(name)
        if header is None:
            header = self._kept_header(name) or self._read_header(info, deadline)
            with self._lock:
                self._headers[name] = header
        return header

    def _kept_header(self, name: str) -> FileHeader | None:
        body = self._kept.get(self._disk_key(name)) if self._kept is not None else None
        if body is None:
            return None
        try:
            return FileHeader.from_json(json.loads(body))
        except (ValueError, MetadataError) as error:
            log.warning("disk cache: unreadable header of %s (%s); reading it again", name,
                        error)
            return None

    def _read_header(self, info: ObjectInfo, deadline: float) -> FileHeader:
        def read(start: int, length: int) -> bytes:
            return self.store.read(info.key, start, length, deadline, info.version)

        try:
            header = read_header(read, info.size)
        except MetadataError as error:
            raise MetadataError(f"{info.key}: {error}") from error
        if self._kept is not None:
            self._kept.put(self._disk_key(location_of(info)), json.dumps(header.to_json()).encode())
        return header

    def _disk_key(self, name: str) -> str:
        return f"{HEADER_DISK_KEY}/{self.store.description}/{name}"


# --------------------------------------------------------------------------- where series are


class PrefixSeriesFiles:
    """Series found by a key prefix the catalog gives (IDC: `<crdc_series_uuid>/`).

    The objects are taken without their listed versions: IDC never rewrites an object
    under a `crdc_instance_uuid` (new data gets a new UUID), so a version would only
    make the same object's header, index and tiles kept under two keys, one when
    `sm_instance_index` names it (no version) and one when it was listed, and send an
    If-Match with every read for nothing."""

    def __init__(self, store: ObjectStore, prefix_of: Callable[[str, str], str],
                 count_of: Callable[[str, str], int | None] | None = None) -> None:
        self.store = store
        self.prefix_of = prefix_of
        self.count_of = count_of

    def header_reads_ahead(self, study_uid: str, series_uid: str) -> int | None:
        """How many header reads entering the series will send: one per instance file
        the catalog says it has (IDC's `instanceCount`); None when it does not say."""
        return self.count_of(study_uid, series_uid) if self.count_of is not None else None

    def series_objects(self, study_uid: str, series_uid: str,
                       deadline: float) -> list[ObjectInfo]:
        prefix = self.prefix_of(study_uid, series_uid)
        objects = [ObjectInfo(info.key, info.size)
                   for info in self.store.list(prefix, deadline) if _is_dicom(info)]
        if not objects:
            raise FetchError(f"series {series_uid}: nothing under {prefix!r} in "
                             f"{self.store.description}")
        return objects


InstanceLookup = Callable[[str, float], list[tuple[str, int]] | None]


class IndexedSeriesFiles:
    """Series whose instance files an index names, so entering one sends no listing:
    IDC's `sm_instance_index` gives each instance's `crdc_instance_uuid` (its object is
    `<crdc_series_uuid>/<crdc_instance_uuid>.dcm`) and `instance_size`.

    `instances_of(series_uid, timeout)` gives (uuid, size) pairs, or None (the index has
    no row for the series, or is not ready within the timeout): then the prefix is
    listed. When an object the index names is missing (the index and the bucket out of
    step), `FileFrameSource` calls `listed_after_missing`: the prefix is listed, once,
    with a log line, and that series is listed from then on; never ENOENT.
    """

    def __init__(self, listed: PrefixSeriesFiles, instances_of: InstanceLookup) -> None:
        self.listed = listed
        self.instances_of = instances_of
        self._stale: set[str] = set()
        self._lock = threading.Lock()

    def header_reads_ahead(self, study_uid: str, series_uid: str) -> int | None:
        return self.listed.header_reads_ahead(study_uid, series_uid)

    def series_objects(self, study_uid: str, series_uid: str,
                       deadline: float) -> list[ObjectInfo]:
        with self._lock:
            stale = series_uid in self._stale
        # Waiting for the index to load takes at most half the time left: the other
        # half is for the listing and the header reads if it is not ready.
        named = None if stale else self.instances_of(
            series_uid, max(0.0, deadline - time.monotonic()) / 2)
        if not named:
            return self.listed.series_objects(study_uid, series_uid, deadline)
        prefix = self.listed.prefix_of(study_uid, series_uid)
        return [ObjectInfo(f"{prefix}{uuid}.dcm", size) for uuid, size in named]

    def listed_after_missing(self, study_uid: str, series_uid: str, deadline: float,
                             missing: ObjectMissing) -> list[ObjectInfo]:
        """The series' files by listing its prefix, after `missing`."""
        with self._lock:
            self._stale.add(series_uid)
        log.warning("series %s: an instance the instance index names is missing (%s); "
                    "the index and the bucket are out of step: listing the series",
                    series_uid, missing)
        return self.listed.series_objects(study_uid, series_uid, deadline)


def idc_series_files(store: ObjectStore, catalog: Catalog,
                     bucket: str) -> PrefixSeriesFiles | IndexedSeriesFiles:
    """Where IDC's series are in `bucket`: named by the catalog's instance index when it
    has one (`IdcIndexCatalog.series_instances`, from a downloaded sm_instance_index),
    else found by listing each series' prefix."""
    listed = PrefixSeriesFiles(store, idc_bucket_prefix(catalog, bucket),
                               idc_instance_count(catalog))
    views = getattr(catalog, "views", {})
    if getattr(catalog, "instance_table", None) is None:
        return listed
    log.info("instance files named by %s: entering a series sends no listing",
             views.get("sm_instance_index", "sm_instance_index"))
    return IndexedSeriesFiles(listed, catalog.series_instances)  # type: ignore[attr-defined]


def idc_bucket_prefix(catalog: Catalog, bucket: str) -> Callable[[str, str], str]:
    """The key prefix of an IDC series in `bucket`, from the index's `series_aws_url`
    (`s3://idc-open-data/<crdc_series_uuid>/*`); the GCS bucket uses the same keys."""

    def prefix_of(study_uid: str, series_uid: str) -> str:
        entry = _indexed_entry(catalog, study_uid, series_uid)
        return _prefix_from_url(str(entry.fields.get("series_aws_url") or ""), series_uid,
                                bucket)

    return prefix_of


def idc_instance_count(catalog: Catalog) -> Callable[[str, str], int | None]:
    """The index's `instanceCount` of a series (None when it has none): how many
    connections the header reads after its listing will want (`preconnect`)."""

    def count_of(study_uid: str, series_uid: str) -> int | None:
        try:
            count = _indexed_entry(catalog, study_uid, series_uid).fields.get("instanceCount")
            return int(count) if count is not None else None
        except (MetadataError, TypeError, ValueError):
            return None

    return count_of


def _indexed_entry(catalog: Catalog, study_uid: str, series_uid: str) -> SeriesEntry:
    for entry in catalog.series(study_uid):
        if entry.series_uid == series_uid:
            return entry
    raise MetadataError(f"series {series_uid} is not in the index")


def _prefix_from_url(url: str, series_uid: str, bucket: str) -> str:
    if not url.startswith("s3://"):
        raise MetadataError(f"series {series_uid}: the index gives no bucket URL")
    named_bucket, _, path = url[len("s3://"):].partition("/")
    if named_bucket != bucket:
        raise MetadataError(f"series {series_uid} is in bucket {named_bucket}, not {bucket}")
    return path.rstrip("*")


def _is_dicom(info: ObjectInfo) -> bool:
    name = info.key.rpartition("/")[2].lower()
    return name.endswith(DICOM_SUFFIXES) or "." not in name
