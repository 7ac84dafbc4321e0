"""The quota watcher against a loopback HTTP server answering `/quota_usage` as IDC's
proxy does: asked once at start, then at most once an interval and only when the
statistics were read since the last answer; a bad answer keeps the last good one."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from idcfs.source.quota import QuotaWatcher

ANSWER = {"ip": "10.1.2.3", "bytes_used": 1000, "fraction_used": 0.5, "date": "2025-01-02"}
INTERVAL_S = 0.3


class QuotaServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), QuotaHandler)
        self.answers: list[tuple[int, bytes]] = []
        self.asked = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/quota_usage"


class QuotaHandler(BaseHTTPRequestHandler):
    server: QuotaServer

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""

    def do_GET(self) -> None:
        self.server.asked += 1
        status, body = self.server.answers.pop(0) if self.server.answers else (
            200, json.dumps(ANSWER).encode())
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def server() -> Iterator[QuotaServer]:
    quota_server = QuotaServer()
    thread = threading.Thread(target=quota_server.serve_forever, daemon=True)
    thread.start()
    yield quota_server
    quota_server.shutdown()
    quota_server.server_close()


def wait_for(condition: Any, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "not within the time"
        time.sleep(0.02)


def test_asked_at_start_then_only_when_read_after_the_interval(server: QuotaServer) -> None:
    watcher = QuotaWatcher(server.url, interval_s=INTERVAL_S)
    watcher.start()
    try:
        wait_for(lambda: "fraction_used" in watcher.statistics())
        shown = watcher.statistics()
        assert (shown["fraction_used"], shown["bytes_used"], shown["date"]) == (0.5, 1000,
                                                                                 "2025-01-02")
        assert "ip" not in shown and shown["error"] is None and shown["requests"] == 1
        for _ in range(5):  # read often within the interval: no new request...
            watcher.statistics()
        assert server.asked == 1
        wait_for(lambda: server.asked == 2)  # ...one once the interval is over
        time.sleep(3 * INTERVAL_S)
        assert server.asked == 2  # nobody read it since: nothing sent
        watcher.statistics()
        wait_for(lambda: server.asked == 3)
    finally:
        watcher.close()


def test_a_bad_answer_keeps_the_last_good_one_and_says_why(server: QuotaServer) -> None:
    server.answers = [(200, json.dumps(ANSWER).encode()), (500, b"busy"), (200, b"<html>")]
    watcher = QuotaWatcher(server.url, interval_s=0.05)
    watcher.start()
    try:
        wait_for(lambda: watcher.statistics().get("error") == "HTTP 500")
        assert watcher.statistics()["fraction_used"] == 0.5
        wait_for(lambda: (watcher.statistics().get("error") or "").startswith("Expecting"))
        assert watcher.statistics()["fraction_used"] == 0.5
    finally:
        watcher.close()


def test_an_unreachable_proxy_is_an_error_not_a_hang() -> None:
    watcher = QuotaWatcher("http://127.0.0.1:9/quota_usage", timeout_s=1.0)
    watcher.start()
    try:
        wait_for(lambda: watcher.statistics()["error"] is not None)
        assert "fraction_used" not in watcher.statistics()
    finally:
        started = time.monotonic()
        watcher.close()
        assert time.monotonic() - started < 3
