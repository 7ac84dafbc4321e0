"""`idcfs stats` on a real mount of the real Orthanc, behind the counting relay.

One mixed workload (ls -lR, cp -r of a level, a read-ahead walk, random reads, re-reads
past a small memory cache into the disk cache, a retried request and a failing one, both
injected by the relay), then the sums of docs/SEMANTICS.md "Statistics" are checked on
`idcfs stats --json`, several against what the relay itself received. The relay also
answers `/quota_usage` as IDC's proxy does (ImagingDataCommons/ThrottleProxy's shape): a
real HTTP endpoint on the server's address, asked through `--quota-url`.
"""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.mounting import Mount, idcfs_command, named, run_idcfs, series_dir
from tests.support.relay import HttpRelay

USER, PASSWORD = "statsuser", "statssecret"
QUOTA_ANSWER = {"ip": "127.0.0.1", "bytes_used": 123456789, "fraction_used": 0.125,
                "date": "2025-01-02"}
REST_TIMEOUT_S = 20.0
WATCH_TIMEOUT_S = 10.0
FRAMES = "/frames/"


def stats_json(mount: Mount) -> dict[str, Any]:
    result = run_idcfs("stats", "--json", str(mount.path), timeout=30)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def at_rest(mount: Mount) -> dict[str, Any]:
    """The statistics once nothing is in flight: no frame request, no HTTP request, no
    read-ahead batch queued, the same counts twice in a row."""
    deadline = time.monotonic() + REST_TIMEOUT_S
    previous: dict[str, Any] | None = None
    while time.monotonic() < deadline:
        shown = stats_json(mount)
        busy = (shown["frame_requests"]["in_flight"], shown["http"]["in_flight"],
                shown["readahead"]["batches_queued"])
        counts = (shown["requests_sent"], shown["tile_reads"], shown["readahead"])
        if busy == (0, 0, 0) and previous is not None and counts == previous:
            return shown
        previous = counts if busy == (0, 0, 0) else None
        time.sleep(0.3)
    pytest.fail("the mount did not come to rest")


def grid_order(names: list[str]) -> list[str]:
    """Tile names (<col>_<row>.jpg) in the grid's order, row by row (tissue.txt left out)."""
    tiles = [name for name in names if name.endswith(".jpg")]
    return sorted(tiles, key=lambda name: [int(part) for part in name[:-4].split("_")][::-1])


def read_tile(path: Path) -> int | None:
    """The errno of reading a file, or None when it read."""
    try:
        path.read_bytes()
    except OSError as error:
        return error.errno
    return None


@pytest.fixture
def stats_mount(relay: HttpRelay, mount_idcfs, tmp_path: Path) -> Mount:  # type: ignore[no-untyped-def]
    relay.inject(200, None, "/quota_usage", body=json.dumps(QUOTA_ANSWER).encode(),
                 headers={"Content-Type": "application/json"})
    url = relay.url.replace("://", f"://{USER}:{PASSWORD}@") + "/dicom-web"
    return mount_idcfs(url, "--quota-url", relay.url + "/quota_usage",
                       "--cache-dir", str(tmp_path / "cache"), "--cache-size", "96K",
                       "--timeout", "10")


def test_counters_add_up_after_a_mixed_workload(
        stats_mount: Mount, relay: HttpRelay, test_slides, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    mount = stats_mount
    ybr = series_dir(mount.path, named(test_slides, "jpeg_ybr"))
    rgb = series_dir(mount.path, named(test_slides, "jpeg_rgb"))
    j2k = series_dir(mount.path, named(test_slides, "jpeg2000"))
    listing = subprocess.run(["ls", "-lR", str(mount.path / "studies")], capture_output=True,
                             timeout=120)
    assert listing.returncode == 0 and b"slide.json" in listing.stdout, listing.stderr
    copied = subprocess.run(["cp", "-r", str(ybr / "level-1"), str(tmp_path / "copy")],
                            capture_output=True, timeout=120)
    assert copied.returncode == 0, copied.stderr
    walk = grid_order(os.listdir(ybr / "level-0"))
    for name in walk:  # in grid order from the first tile: a read-ahead walk
        assert read_tile(ybr / "level-0" / name) is None
    walking = stats_json(mount)["readahead"]
    assert walking["streams"] >= 1 and walking["scheduled_tiles"] > 0, walking

    tiles = sorted(os.listdir(rgb / "level-0"))
    chosen = random.Random(14).sample(tiles, 4)
    for name in chosen:  # random reads, each read again at once (from memory)
        assert read_tile(rgb / "level-0" / name) is None
        assert read_tile(rgb / "level-0" / name) is None
    for name in walk[:3]:  # past the 96K memory cache: from the disk cache
        assert read_tile(ybr / "level-0" / name) is None
    at_rest(mount)
    untouched = grid_order(os.listdir(j2k / "level-0"))  # backwards: no read-ahead
    relay.inject(500, 1, FRAMES)  # retried, then served
    assert read_tile(j2k / "level-0" / untouched[-1]) is None
    relay.inject(403, 1, FRAMES)  # not retried: EIO
    assert read_tile(j2k / "level-0" / untouched[len(untouched) // 2]) == errno.EIO

    shown = at_rest(mount)
    check_sums(shown, relay)
    check_the_rest(shown, relay)
    text = json.dumps(shown)
    assert PASSWORD not in text and USER not in text

    table = run_idcfs("stats", str(mount.path), timeout=30)
    assert table.returncode == 0, table.stderr
    check_table(table.stdout, stats_json(mount))


def check_sums(shown: dict[str, Any], relay: HttpRelay) -> None:
    """docs/SEMANTICS.md, "Statistics": the identities, at rest."""
    http, frames = shown["http"], shown["frame_requests"]
    quota_asks = relay.count("/quota_usage")
    # what the server received = what the client says it sent
    assert relay.count() - quota_asks == shown["requests_sent"], relay.requests
    assert shown["requests_sent"] == sum(http["requests"].values()) + http["retries"]
    assert relay.count(FRAMES) == http["requests"]["frames"] + http["retries"]
    # a frame request is counted once in the loader and once in the client
    assert http["requests"]["frames"] == frames["sent"]
    per_request = {int(size): count for size, count in shown["frames_per_request"].items()}
    assert sum(per_request.values()) == frames["sent"] - frames["failed"]
    assert frames["latency"]["count"] == frames["sent"] - frames["failed"]
    assert shown["frames_fetched"] == sum(size * count for size, count in per_request.items())
    # every content request of a tile ends as one tile read, counted by where it came from
    reads = shown["tile_reads"]
    assert sum(reads.values()) == shown["fuse"]["fetched_file_requests"]
    memory = shown["memory_cache"]
    assert memory["hits"] + memory["misses"] == memory["lookups"] == sum(reads.values())
    assert memory["hits"] == reads["memory"]
    disk = shown["disk_cache"]
    assert disk["hits"] + disk["misses"] == disk["lookups"]
    assert disk["hits"] == reads["disk"] + shown["readahead"]["landed_from_disk"]
    ahead = shown["readahead"]
    assert ahead["scheduled_tiles"] == (ahead["landed_from_disk"] + ahead["landed_from_source"]
                                        + ahead["failed"] + ahead["abandoned"])
    fuse, page = shown["fuse"], shown["page_cache"]
    assert fuse["opens"] == fuse["releases"] + fuse["open_handles"]
    assert page["hits"] + page["misses"] + page["bypassed"] == fuse["releases"]


def check_the_rest(shown: dict[str, Any], relay: HttpRelay) -> None:
    """The faults, the hits the workload must have made, the source and the quota."""
    http, frames, reads = shown["http"], shown["frame_requests"], shown["tile_reads"]
    assert http["failed"] == {"HTTP 403": 1} and http["retries"] >= 1
    assert frames["failed"] == 1 and reads["failed"] == 1
    assert shown["errors"].get("EIO: server") == 1, shown["errors"]
    assert "EIO: deadline" not in shown["errors"]
    assert reads["source"] > 0 and reads["staged"] + reads["waited"] > 0
    assert reads["disk"] > 0 and reads["memory"] > 0
    assert shown["page_cache"]["hits"] > 0
    latency = frames["latency"]
    assert 0 < latency["p50_ms"] <= latency["p90_ms"] <= latency["p99_ms"] <= latency["max_ms"]
    assert shown["fuse"]["bytes_served"] > 0 and http["bytes_received"] > 0
    source = shown["source"]
    assert source["kind"] == "dicomweb"
    assert source["server"] == relay.url + "/dicom-web"
    quota = shown["quota"]
    assert quota["fraction_used"] == QUOTA_ANSWER["fraction_used"]
    assert quota["bytes_used"] == QUOTA_ANSWER["bytes_used"] and "ip" not in quota
    assert quota["requests"] == relay.count("/quota_usage") == 1  # at most once a minute
    assert shown["uptime_s"] > 0 and shown["started_at"]


def check_table(table: str, shown: dict[str, Any]) -> None:
    labels = [line.split()[0] for line in table.splitlines() if line and not line[0].isspace()]
    for label in ("mount", "source", "server", "quota", "requests", "frame", "latency",
                  "tile", "memory", "disk", "page", "read-ahead", "files", "errors"):
        assert label in labels, table
    assert f"{shown['requests_sent']} sent" in table
    assert "12.5 % of today's quota used" in table
    assert "p50 " in table and "p99 " in table
    assert "HTTP 403 1" in table and "EIO: server 1" in table
    assert PASSWORD not in table


def test_watch_refreshes_until_interrupted(stats_mount: Mount) -> None:
    watcher = subprocess.Popen(idcfs_command("stats", "--watch", str(stats_mount.path)),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert watcher.stdout is not None
        shown, deadline = 0, time.monotonic() + WATCH_TIMEOUT_S
        while shown < 3 and time.monotonic() < deadline:
            line = watcher.stdout.readline()
            shown += line.startswith("mount ")
        assert shown == 3, "the table was not printed three times"
        watcher.send_signal(signal.SIGINT)
        _, errors = watcher.communicate(timeout=WATCH_TIMEOUT_S)
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait()
    assert watcher.returncode == 0 and "Traceback" not in errors, errors


def test_stats_of_a_directory_that_is_no_mount_is_one_line(tmp_path: Path) -> None:
    result = run_idcfs("stats", str(tmp_path), timeout=30)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"idcfs: error: {tmp_path} is not an idcfs mount (no .idcfs-stats.json)"]
