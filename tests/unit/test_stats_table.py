"""`idcfs stats` tables of documents the DICOMweb e2e test does not make: a bucket
source's, a mount that served nothing yet, a quota pause, a quota answer that failed."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from idcfs.commands.stats import StatsError, read_statistics, run, table


def labels(text: str) -> list[str]:
    return [line.split()[0] for line in text.splitlines() if line and not line[0].isspace()]


def test_a_bucket_source_shows_its_requests_by_kind() -> None:
    document = {
        "source": {"kind": "aws", "description": "S3 bucket idc-open-data",
                   "requests": {"list": 3, "read": 40}, "retries": 1,
                   "bytes_received": 5 << 20},
        "frame_requests": {"sent": 10, "failed": 0, "in_flight": 2, "bytes_received": 1 << 20,
                           "latency": {"count": 10, "p50_ms": 20.0, "p90_ms": 30.0,
                                       "p99_ms": 41.5, "mean_ms": 22.0, "max_ms": 42.0}},
        "frames_fetched": 64,
        "tile_reads": {"memory": 1, "staged": 0, "waited": 0, "disk": 0, "source": 3,
                       "failed": 0},
        "memory_cache": {"lookups": 4, "hits": 1, "misses": 3, "bytes": 2048,
                         "max_bytes": 1 << 30},
    }
    text = table(document, Path("/mnt/idc"))
    assert "requests       list 3, read 40; retries 1, 5.0 MB received" in text
    assert "p99 41.5 ms" in text and "(10 requests)" in text
    assert "memory 25.0 %  staged 0.0 %  waited 0.0 %  disk 0.0 %  source 75.0 %" in text
    assert "25.0 % hits (1 of 4 lookups); 2.0 KB of 1.0 GB" in text
    assert "quota" not in labels(text) and "server" not in labels(text)


def test_a_mount_that_served_nothing_yet() -> None:
    text = table({})
    assert "tile reads     none yet" in text
    assert "latency        no frame request yet" in text
    assert "- hits (0 of 0 lookups)" in text
    assert "errors         none" in text


def test_the_quota_pause_and_a_failed_quota_ask_are_shown() -> None:
    document = {"source": {"kind": "dicomweb", "description": "DICOMweb https://proxy",
                           "quota_exhausted_until": "2025-01-03T00:00:00+00:00"},
                "quota": {"requests": 2, "error": "HTTP 503", "url": "https://proxy/q"}}
    text = table(document)
    assert "exhausted: no request is sent until 2025-01-03T00:00:00+00:00" in text
    assert "quota          not known yet" in text
    assert "last ask failed: HTTP 503" in text


def test_json_is_the_file_as_is_and_a_bad_file_is_one_line(tmp_path: Path) -> None:
    document = {"requests_sent": 3, "errors": {"ENOENT": 2}}
    (tmp_path / ".idcfs-stats.json").write_text(json.dumps(document))
    out = io.StringIO()
    run(tmp_path, as_json=True, watch=False, out=out)
    assert json.loads(out.getvalue()) == document
    (tmp_path / ".idcfs-stats.json").write_text("[1, 2")
    with pytest.raises(StatsError, match="is not an idcfs statistics file"):
        read_statistics(tmp_path)
