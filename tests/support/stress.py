"""Load with an oracle (issue 12, 3): many readers through a real mount while the relay
injects faults, every read checked against frames fetched straight from the server.

Shared by the suite's stress test (tests/e2e/test_stress.py) and the soak benchmark
(benchmarks/soak.py). The pieces:

- `write_stress_slides`: a few TILED_FULL JPEG pyramids (their tiles are the stored
  frames, so the oracle is exact bytes, not a likeness).
- `oracle`: every tile's expected bytes, by path below the mount, from frames fetched
  from the server directly (tests/support/expected.py, dicomweb-client, no relay).
- `inject_fault_mix`: several fault modes on frame requests whose hits add up to the
  asked rate (5xx, 429 with Retry-After, resets, stalls shorter than the deadline, a
  body cut, fewer parts, a garbage part, a wrong Content-Length).
- `run_load`: readers as threads, each open/read/close of one tile file at a time;
  walkers read one level's tiles in listing order, random readers pick any tile of any
  slide. Every read is tallied: exact, wrong bytes, EIO, any other errno, and a hang
  (longer than the deadline and a margin, or never returning).
- `DaemonProbe`: the daemon's RSS (VmRSS, VmHWM), open fds and threads from /proc.
- `run_stress`: all of it in order, and the checks after the load (faults cleared:
  `ls` of the root at once, every tile exact once more), as a `StressReport`.
"""

from __future__ import annotations

import errno
import os
import random
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from idcfs.cli import parse_size, size_or_zero
from tests.support.expected import frames_by_path
from tests.support.file_layouts import add_tiff_personality
from tests.support.relay import Fault, FaultMode, HttpRelay
from tests.support.rewritten import served_tiles
from tests.support.s3server import lay_out_bucket
from tests.support.slides import GeneratedSlide, write_pyramid

FRAMES = "/frames/"
FAULTED = {"dicomweb": FRAMES, "bucket": ".dcm"}
"""By source, what the requests the faults hit have in their path: DICOMweb's frame
requests; a bucket's ranged GETs of the DICOM files (its listings are left alone)."""
TILE = 256
LS_LIMIT_S = 1.0
TRIO_IDLE_S = 11.0  # trio ends a worker thread idle for 10 s (trio._core._thread_cache)
PROGRESS_EVERY_S = 10.0
EIO_LINE = "EIO on"


@dataclass(frozen=True)
class StressSettings:
    """One stress run: how many readers of each kind, for how long, which faults."""

    readers: int = 64
    walkers: int = 32  # of `readers`; the rest read random tiles
    seconds: float = 60.0
    fault_rate: float = 0.1  # of frame requests, all modes together
    timeout_s: float = 3.0  # the mount's --timeout
    margin_s: float = 2.0  # a read longer than timeout_s + margin_s is a hang
    seed: int = 12
    cache_size: str = "2M"  # smaller than the tiles read: evicted tiles are fetched again
    readahead_size: str = "2M"
    max_connections: int = 8
    sample_every_s: float = 1.0
    extra_options: tuple[str, ...] = ()  # more mount options, e.g. ("--cache-dir", DIR)
    source: str = "dicomweb"  # a key of FAULTED: what the mount reads through the relay

    @property
    def hang_s(self) -> float:
        return self.timeout_s + self.margin_s

    def mount_options(self) -> list[str]:
        return ["--timeout", str(self.timeout_s), "--cache-size", self.cache_size,
                "--readahead-size", self.readahead_size,
                "--max-connections", str(self.max_connections), *self.extra_options]


    def memory_bound_bytes(self) -> int:
        """What the daemon's RSS must stay within: --cache-size + --readahead-size + 200 MB."""
        return parse_size(self.cache_size) + size_or_zero(self.readahead_size) + (200 << 20)


# -- slides and the oracle ---------------------------------------------------------


def write_stress_slides(out_dir: Path, count: int = 3, columns: int = 12,
                        rows: int = 8) -> list[GeneratedSlide]:
    """`count` JPEG (YBR) pyramids of two levels: columns x rows tiles, then a quarter."""
    return [_stress_pyramid(out_dir, index, columns, rows) for index in range(count)]


def _stress_pyramid(out_dir: Path, index: int, columns: int, rows: int,
                    offset_table: bool = False) -> GeneratedSlide:
    return write_pyramid(out_dir, f"stress{index}", width=columns * TILE, height=rows * TILE,
                         levels=2, codec="jpeg_ybr", offset_table=offset_table)


BUCKET_LAYOUTS = ("tiff", "bot", "scan")
"""The stress slides of a bucket, one per way its frames are found: the TIFF tags of a
dual-personality file (most of IDC), a Basic Offset Table, a scan of the items."""


def write_bucket_stress_slides(out_dir: Path, bucket_root: Path, bucket: str,
                               columns: int = 12, rows: int = 8) -> list[GeneratedSlide]:
    """The stress slides in each of `BUCKET_LAYOUTS`, laid out as IDC's buckets hold
    files (`<bucket_root>/<bucket>/<series uuid>/<instance uuid>.dcm`, UUIDs derived
    from the UIDs); their `files` stay in `out_dir`, for the oracle."""
    slides, series = [], {}
    for index, layout in enumerate(BUCKET_LAYOUTS):
        slide = _stress_pyramid(out_dir, index, columns, rows, offset_table=layout == "bot")
        if layout == "tiff":
            for path in slide.files:
                add_tiff_personality(path)
        series[_uuid_of(slide.series_uid)] = {
            _uuid_of(f"{slide.series_uid}/{path.name}"): path.read_bytes() for path in slide.files}
        slides.append(slide)
    lay_out_bucket(bucket_root, bucket, series)
    return slides


def _uuid_of(name: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_OID, name))


def file_oracle(slides: list[GeneratedSlide]) -> dict[str, bytes]:
    """What `oracle` gives, read from the slides' files themselves (a bucket's mount)."""
    return {f"studies/{slide.study_uid}/{slide.series_uid}/{relative}": tile
            for slide in slides for relative, tile in served_tiles(slide.files).items()}


def oracle(url: str, slides: list[GeneratedSlide]) -> dict[str, bytes]:
    """Every tile's expected bytes by its path below the mount root
    (studies/<study>/<series>/level-N/C_R.jpg), fetched from `url` directly."""
    expected = {}
    for slide in slides:
        prefix = f"studies/{slide.study_uid}/{slide.series_uid}"
        for relative, frame in frames_by_path(url, slide, False).items():
            expected[f"{prefix}/{relative}"] = frame
    return expected


def levels_in_listing_order(root: Path, expected: dict[str, bytes]) -> list[list[str]]:
    """Each level directory's tiles in readdir order (as cp and tar walk them); listing
    also makes the daemon load every series before the load starts."""
    folders = sorted({path.rsplit("/", 1)[0] for path in expected})
    levels = []
    for folder in folders:
        names = os.listdir(root / folder)
        levels.append([f"{folder}/{name}" for name in names if f"{folder}/{name}" in expected])
    return levels


# -- faults ------------------------------------------------------------------------

def fault_mix(stall_s: float, source: str = "dicomweb") -> list[tuple[FaultMode, dict[str, Any]]]:
    """The modes a stress run mixes, with their options; stalls last `stall_s`, shorter
    than the deadline, so a retry may still succeed. No 429 without Retry-After: that
    is the quota's answer, which pauses the whole mount (tests/e2e/test_faults.py).
    A bucket gets what S3 and a WAN give a ranged GET: 500, 503 SlowDown, resets, a
    stall and a short body; multipart faults and 429 are DICOMweb's."""
    stall = (FaultMode.STALL, {"hold_s": stall_s})
    short = (FaultMode.WRONG_LENGTH, {"length_delta": -100})
    if source == "bucket":
        slow_down = (b"<Error><Code>SlowDown</Code>"
                     b"<Message>Please reduce your request rate.</Message></Error>")
        return [(FaultMode.ANSWER, {"status": 500}),
                (FaultMode.ANSWER, {"status": 503, "body": slow_down,
                                    "headers": {"Content-Type": "application/xml"}}),
                (FaultMode.RESET, {}), (FaultMode.RESET_MID_BODY, {}), stall, short]
    return [
        (FaultMode.ANSWER, {"status": 500}),
        (FaultMode.ANSWER, {"status": 503}),
        (FaultMode.ANSWER, {"status": 429, "headers": {"Retry-After": "1"}}),
        (FaultMode.RESET, {}),
        (FaultMode.RESET_MID_BODY, {}),
        stall,
        (FaultMode.CUT_MULTIPART, {}),
        (FaultMode.FEWER_PARTS, {}),
        (FaultMode.GARBAGE_PART, {"label": "image/jpeg"}),
        short,
    ]


def inject_fault_mix(relay: HttpRelay, rate: float, seed: int, stall_s: float,
                     source: str = "dicomweb") -> list[Fault]:
    """Every mode of `fault_mix` on the source's data requests (`FAULTED`). The relay
    tries its faults in turn, each hitting with its own seeded chance, so k faults at
    1 - (1 - rate)^(1/k) each hit `rate` of the requests in all, the modes about
    equally often."""
    modes = fault_mix(stall_s, source)
    each = 1 - (1 - rate) ** (1 / len(modes))
    return [relay.inject_fault(mode, None, FAULTED[source], rate=each, seed=seed + index,
                               **options)
            for index, (mode, options) in enumerate(modes)]


# -- the daemon's resources --------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """The daemon at one moment: memory (kB), open file descriptors, threads."""

    at_s: float
    rss_kb: int
    hwm_kb: int
    fds: int
    threads: int
    rss_anon_kb: int = 0  # of rss_kb: the heap and other private memory
    rss_file_kb: int = 0  # of rss_kb: mapped files (libraries, SQLite's mapping)


class DaemonProbe:
    """Reads /proc/<pid> of the daemon; keeps samples taken in the background."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples: list[Sample] = []
        self._started = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample(self) -> Sample:
        status = Path(f"/proc/{self.pid}/status").read_text()
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        return Sample(
            at_s=time.monotonic() - self._started,
            rss_kb=int(fields["VmRSS"].split()[0]),
            hwm_kb=int(fields["VmHWM"].split()[0]),
            fds=len(os.listdir(f"/proc/{self.pid}/fd")),
            threads=len(os.listdir(f"/proc/{self.pid}/task")),
            rss_anon_kb=int(fields["RssAnon"].split()[0]),
            rss_file_kb=int(fields["RssFile"].split()[0]),
        )

    def thread_names(self) -> Counter[str]:
        """How many of the daemon's threads have each OS name (trio names its workers)."""
        names: Counter[str] = Counter()
        for task in os.listdir(f"/proc/{self.pid}/task"):
            try:
                names[Path(f"/proc/{self.pid}/task/{task}/comm").read_text().strip()] += 1
            except OSError:
                continue  # the thread ended meanwhile
        return names

    def start(self, every_s: float) -> None:
        def run() -> None:
            while not self._stop.wait(every_s):
                self.samples.append(self.sample())

        self._stop.clear()
        self._thread = threading.Thread(target=run, name="daemon-probe", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


# -- readers -----------------------------------------------------------------------


@dataclass
class Tally:
    """What the readers saw; updated under one lock by every reader."""

    ok: int = 0
    eio: int = 0
    other_errors: Counter[str] = field(default_factory=Counter)
    wrong_reads: int = 0
    wrong_bytes: int = 0
    hangs: int = 0
    slowest_s: float = 0.0
    examples: list[str] = field(default_factory=list)  # the first few bad reads, for a message
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def reads(self) -> int:
        return self.ok + self.eio + self.wrong_reads + sum(self.other_errors.values())

    def add(self, path: str, read: Read, expected: bytes, hang_s: float) -> None:
        data, error, seconds = read.data, read.error, read.seconds
        with self._lock:
            self.slowest_s = max(self.slowest_s, seconds)
            if seconds > hang_s:
                self.hangs += 1
                outcome = errno.errorcode.get(error, str(error)) if error else "no error"
                self._note(f"{path}: {seconds:.1f} s (open {read.open_s:.1f} s), {outcome}, "
                           f"ended {time.strftime('%H:%M:%S')}")
            if error == errno.EIO:
                self.eio += 1
            elif error is not None:
                self.other_errors[errno.errorcode.get(error, str(error))] += 1
                self._note(f"{path}: {errno.errorcode.get(error, error)}")
            elif data == expected:
                self.ok += 1
            else:
                self.wrong_reads += 1
                self.wrong_bytes += differing_bytes(data or b"", expected)
                self._note(f"{path}: {len(data or b'')} bytes, {len(expected)} expected")

    def add_hung(self, count: int) -> None:
        with self._lock:
            self.hangs += count
            self._note(f"{count} readers still in a read at the end")

    def _note(self, line: str) -> None:
        if len(self.examples) < 10:
            self.examples.append(line)


def differing_bytes(data: bytes, expected: bytes) -> int:
    """Positions that differ, counting a length difference as that many bytes."""
    common = min(len(data), len(expected))
    if data[:common] == expected[:common]:
        return abs(len(data) - len(expected))
    return sum(a != b for a, b in zip(data, expected, strict=False)) + abs(
        len(data) - len(expected))


@dataclass(frozen=True)
class Read:
    """One open/read/close of a tile file: its bytes or errno, and how long each took."""

    data: bytes | None
    error: int | None
    seconds: float
    open_s: float  # of `seconds`, the open() alone


def read_tile(path: Path) -> Read:
    """open, read to the end, close."""
    start = time.monotonic()
    opened = start
    try:
        with open(path, "rb") as handle:
            opened = time.monotonic()
            data: bytes | None = handle.read()
        error = None
    except OSError as failure:
        data, error = None, failure.errno
    return Read(data, error, time.monotonic() - start, opened - start)


class Readers:
    """`settings.readers` threads reading tiles under `root` until `stop()`."""

    def __init__(self, root: Path, expected: dict[str, bytes], levels: list[list[str]],
                 settings: StressSettings) -> None:
        self.root = root
        self.expected = expected
        self.levels = levels
        self.settings = settings
        self.tally = Tally()
        self._paths = sorted(expected)
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for index in range(self.settings.readers):
            rng = random.Random(self.settings.seed * 1000 + index)
            walker = index < self.settings.walkers
            target = self._walk if walker else self._pick
            kind = "walker" if walker else "random"
            thread = threading.Thread(target=target, args=(rng,), daemon=True,
                                      name=f"stress-{kind}-{index}")
            self._threads.append(thread)
            thread.start()

    def stop(self) -> int:
        """Ask every reader to stop after its current read; wait for that read's deadline
        and margin at most. Returns how many are still in a read (hung)."""
        self._stopping.set()
        end = time.monotonic() + self.settings.hang_s + 1.0
        for thread in self._threads:
            thread.join(timeout=max(0.0, end - time.monotonic()))
        hung = sum(thread.is_alive() for thread in self._threads)
        if hung:
            self.tally.add_hung(hung)
        return hung

    def _read(self, relative: str) -> None:
        self.tally.add(relative, read_tile(self.root / relative), self.expected[relative],
                       self.settings.hang_s)

    def _walk(self, rng: random.Random) -> None:
        """Whole levels in listing order, a random level each time, from its start."""
        while not self._stopping.is_set():
            for relative in rng.choice(self.levels):
                if self._stopping.is_set():
                    return
                self._read(relative)

    def _pick(self, rng: random.Random) -> None:
        while not self._stopping.is_set():
            self._read(rng.choice(self._paths))


# -- one run -----------------------------------------------------------------------


@dataclass
class StressReport:
    """Everything a stress run measured (the test asserts on it, the soak prints it)."""

    settings: StressSettings
    tiles: int
    seconds: float
    tally: Tally
    frame_requests: int
    faults_injected: int
    faults_by_mode: dict[str, int]
    before: Sample
    after: Sample
    peak: Sample  # the largest of each figure over every sample
    threads_before: Counter[str]
    threads_after: Counter[str]
    ls_seconds: float
    recheck: Tally
    log: LogSummary

    @property
    def peak_rss_kb(self) -> int:
        """VmHWM, or the largest VmRSS sampled when higher (the kernel updates its RSS
        counters in batches, and the high-water mark from them)."""
        return max(self.after.hwm_kb, self.peak.rss_kb)

    @property
    def reads_per_s(self) -> float:
        return self.tally.reads / self.seconds if self.seconds else 0.0

    def lines(self) -> list[str]:
        tally, recheck = self.tally, self.recheck
        return [
            f"readers {self.settings.readers} ({self.settings.walkers} walkers), "
            f"{self.seconds:.0f} s, --timeout {self.settings.timeout_s} "
            f"--cache-size {self.settings.cache_size} "
            f"--readahead-size {self.settings.readahead_size}",
            f"reads {tally.reads} ({self.reads_per_s:.1f}/s): exact {tally.ok}, "
            f"EIO {tally.eio}, other errno {dict(tally.other_errors)}, "
            f"wrong reads {tally.wrong_reads}, wrong bytes {tally.wrong_bytes}, "
            f"hangs {tally.hangs}, slowest {tally.slowest_s:.2f} s",
            f"{'frame requests' if self.settings.source == 'dicomweb' else 'ranged GETs'} "
            f"{self.frame_requests}, faults injected {self.faults_injected} "
            f"({self.faults_injected / max(1, self.frame_requests):.1%}): {self.faults_by_mode}",
            f"peak RSS {self.peak_rss_kb / 1024:.1f} MB; RSS before "
            f"{self.before.rss_kb / 1024:.1f} MB, after {self.after.rss_kb / 1024:.1f} MB "
            f"({self.after.rss_anon_kb / 1024:.1f} anonymous, "
            f"{self.after.rss_file_kb / 1024:.1f} mapped files)",
            f"fds before {self.before.fds}, peak {self.peak.fds}, after {self.after.fds}",
            f"threads before {self.before.threads}, peak {self.peak.threads}, "
            f"after {self.after.threads} ({dict(self.threads_after)})",
            f"daemon log: {self.log.eio_lines} EIO lines, {self.log.unexpected} unexpected, "
            f"{self.log.tracebacks} tracebacks",
            f"after the load: ls of the root {self.ls_seconds * 1000:.0f} ms; every tile "
            f"read again: exact {recheck.ok} of {recheck.reads}, EIO {recheck.eio}, "
            f"wrong {recheck.wrong_reads}, other {dict(recheck.other_errors)}",
            *(f"bad read: {line}" for line in tally.examples + recheck.examples),
        ]


def peak_of(samples: list[Sample]) -> Sample:
    return Sample(max(s.at_s for s in samples), max(s.rss_kb for s in samples),
                  max(s.hwm_kb for s in samples), max(s.fds for s in samples),
                  max(s.threads for s in samples), max(s.rss_anon_kb for s in samples),
                  max(s.rss_file_kb for s in samples))


def time_ls(root: Path) -> float:
    """Seconds `ls` of the mount root takes (bounded: a hang shows as the bound)."""
    start = time.monotonic()
    try:
        subprocess.run(["ls", str(root)], capture_output=True, check=True, timeout=30)
    except subprocess.TimeoutExpired:
        return 30.0
    return time.monotonic() - start


def reread_all(root: Path, expected: dict[str, bytes], hang_s: float) -> Tally:
    """Every tile once, four at a time, tallied like the load's reads."""
    tally = Tally()
    paths = sorted(expected)

    def read_share(share: list[str]) -> None:
        for relative in share:
            tally.add(relative, read_tile(root / relative), expected[relative], hang_s)

    threads = [threading.Thread(target=read_share, args=(paths[index::4],), daemon=True)
               for index in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=hang_s * len(paths))
    return tally


def run_stress(root: Path, pid: int, relay: HttpRelay, expected: dict[str, bytes],
               settings: StressSettings, log_file: Path,
               progress: Callable[[str], None] | None = None) -> StressReport:
    """Sample the daemon, list every level, run the load with faults for
    `settings.seconds`, clear the faults, wait for trio's idle worker threads to end,
    sample again, time `ls` of the root, read every tile again, and read the log."""
    probe = DaemonProbe(pid)
    before, threads_before = probe.sample(), probe.thread_names()
    levels = levels_in_listing_order(root, expected)
    faulted = FAULTED[settings.source]
    requests_before = relay.count(faulted)
    faults = inject_fault_mix(relay, settings.fault_rate, settings.seed,
                              stall_s=settings.timeout_s / 2, source=settings.source)
    readers = Readers(root, expected, levels, settings)
    probe.start(settings.sample_every_s)
    start = time.monotonic()
    readers.start()
    while (left := settings.seconds - (time.monotonic() - start)) > 0:
        time.sleep(min(PROGRESS_EVERY_S, left))
        if progress is not None:
            progress(f"{time.monotonic() - start:.0f} s: {readers.tally.reads} reads, "
                     f"{sum(fault.served for fault in faults)} faults, "
                     f"{probe.samples[-1] if probe.samples else ''}")
    readers.stop()
    seconds = time.monotonic() - start
    relay.clear_faults()
    probe.stop()
    frame_requests = relay.count(faulted) - requests_before
    time.sleep(TRIO_IDLE_S)
    after, threads_after = probe.sample(), probe.thread_names()
    ls_seconds = time_ls(root)
    recheck = reread_all(root, expected, settings.hang_s)
    by_mode: Counter[str] = Counter()
    for fault in faults:
        label = fault.mode.value + (f"-{fault.status}" if fault.mode is FaultMode.ANSWER else "")
        by_mode[label] += fault.served
    return StressReport(
        settings=settings, tiles=len(expected), seconds=seconds, tally=readers.tally,
        frame_requests=frame_requests, faults_injected=sum(by_mode.values()),
        faults_by_mode=dict(by_mode), before=before, after=after,
        peak=peak_of([before, *probe.samples, after]), threads_before=threads_before,
        threads_after=threads_after, ls_seconds=ls_seconds, recheck=recheck,
        log=LogSummary.of(log_file.read_text() if log_file.exists() else ""),
    )


@dataclass(frozen=True)
class LogSummary:
    """What the daemon's log says about failures: every EIO has a line saying why; an
    EIO from an exception idcfs does not raise itself is logged as 'unexpected' with a
    traceback, which is a bug even though the reader got EIO."""

    eio_lines: int
    unexpected: int
    tracebacks: int

    @classmethod
    def of(cls, text: str) -> LogSummary:
        lines = text.splitlines()
        return cls(sum(EIO_LINE in line for line in lines),
                   sum(EIO_LINE in line and ": unexpected " in line for line in lines),
                   sum(line.startswith("Traceback") for line in lines))

def pool_allowance(settings: StressSettings) -> tuple[int, int]:
    """How many more (threads, fds) the daemon may hold after a load than before it,
    with nothing leaked: its bounded pools start their threads on first use and keep
    them (the `idcfs-fetch` pool: one per connection; `idcfs-readahead`: at most 4), and
    urllib3 keeps up to one idle keep-alive socket per connection. Two more of each for
    a connection being replaced or a worker thread ending as the sample is taken."""
    return settings.max_connections + 4 + 2, settings.max_connections + 2


def failed_checks(report: StressReport) -> list[str]:
    """The conditions of issue 12, 3 that a run broke (none: it passed)."""
    tally, settings = report.tally, report.settings
    extra_threads, extra_fds = pool_allowance(settings)
    checks = {
        "wrong bytes": tally.wrong_reads == 0,
        f"hangs (reads over {settings.hang_s:.0f} s or never back)": tally.hangs == 0,
        "errno other than EIO": not tally.other_errors,
        "RSS over --cache-size + --readahead-size + 200 MB":
            report.peak_rss_kb * 1024 <= settings.memory_bound_bytes(),
        f"threads grew beyond {extra_threads}":
            report.after.threads <= report.before.threads + extra_threads,
        f"fds grew beyond {extra_fds}": report.after.fds <= report.before.fds + extra_fds,
        f"ls of the root over {LS_LIMIT_S} s": report.ls_seconds <= LS_LIMIT_S,
        "an EIO without a log line saying why": report.log.eio_lines >= tally.eio,
        "unexpected exceptions in the daemon's log":
            report.log.unexpected == report.log.tracebacks == 0,
        "a tile not exact once the faults stopped":
            report.recheck.ok == report.tiles,
    }
    return [name for name, passed in checks.items() if not passed]
