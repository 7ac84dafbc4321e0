"""The credential sources of `idcfs.source.auth`, each against the real thing it reads:
`--header` parsing, a token file rotated on disk, and google-auth's real service-account
flow against a loopback token endpoint (`tests/support/tokenserver.py`)."""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from idcfs.errors import FetchError
from idcfs.metrics import Metrics
from idcfs.source.auth import (
    AuthOptions,
    AuthSetupError,
    BearerTokenFile,
    GoogleToken,
    RequestAuth,
    parse_header,
)
from tests.support.tokenserver import TokenServer

google_auth = pytest.importorskip("google.auth")
from google.auth import _helpers as google_helpers  # noqa: E402  (after the skip)

SECRET = "s3cr3t-value"
STALE_AFTER_S = 1.0  # a token google-auth calls stale this long after it is issued


# -- --header ---------------------------------------------------------------------------


def test_a_header_is_a_name_and_a_value() -> None:
    assert parse_header("X-Api-Key:  k-1 ") == ("X-Api-Key", "k-1")
    assert parse_header("Authorization: Bearer a.b.c") == ("Authorization", "Bearer a.b.c")


@pytest.mark.parametrize("text", [f"X-Api-Key {SECRET}", f"X Key: {SECRET}", f"Accept: {SECRET}",
                                  f"X-Key: {SECRET}\r\nHost: elsewhere", f": {SECRET}"])
def test_a_bad_header_is_refused_without_showing_its_value(text: str) -> None:
    with pytest.raises(ValueError) as refused:
        parse_header(text)
    assert SECRET not in str(refused.value)


def test_one_authorization_header_at_most() -> None:
    token_file = Path("/run/token")
    assert AuthOptions(headers=(("X-Api-Key", "k"),), token_file=token_file).problem() is None
    assert "both set the Authorization" in str(AuthOptions(google=True, token_file=token_file)
                                                .problem())
    with_header = AuthOptions(headers=(("authorization", "Basic x"),), google=True)
    assert with_header.problem() is not None
    assert AuthOptions(token_file=token_file).problem(url_has_credentials=True) is not None
    assert "Basic" not in repr(with_header)  # header values stay out of repr


# -- --bearer-token-file ----------------------------------------------------------------


def test_a_token_file_is_read_again_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("token-1\n")
    metrics = Metrics()
    auth = RequestAuth({"X-Other": "o"}, BearerTokenFile(path, metrics))
    assert auth.headers(1.0) == {"X-Other": "o", "Authorization": "Bearer token-1"}
    replacement = tmp_path / "token.new"
    replacement.write_text("token-2")
    replacement.replace(path)  # rotated atomically: another inode
    assert auth.headers(1.0)["Authorization"] == "Bearer token-2"
    path.write_text("token-3")  # rewritten in place: same inode, new mtime and size
    assert auth.headers(1.0)["Authorization"] == "Bearer token-3"
    assert metrics.value("auth.tokens_obtained") == 3
    assert "--bearer-token-file" in auth.description and "token-3" not in auth.description


def test_an_unusable_token_file_keeps_the_last_token(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "token"
    path.write_text(SECRET)
    token = BearerTokenFile(path, Metrics())
    path.write_text("")  # caught in the middle of a rewrite
    with caplog.at_level(logging.WARNING, "idcfs.source.auth"):
        for _ in range(3):
            assert token.headers(1.0) == {"Authorization": f"Bearer {SECRET}"}
        path.unlink()
        assert token.headers(1.0) == {"Authorization": f"Bearer {SECRET}"}
    warnings = [record.getMessage() for record in caplog.records]
    assert len(warnings) == 2 and "empty" in warnings[0], warnings  # once per change
    assert all(SECRET not in line for line in warnings)


@pytest.mark.parametrize("content", [None, "", "two words", "caf\u00e9"])
def test_a_token_file_that_cannot_be_used_fails_the_setup(
    tmp_path: Path, content: str | None
) -> None:
    path = tmp_path / "token"
    if content is not None:
        path.write_text(content)
    with pytest.raises(AuthSetupError) as refused:
        BearerTokenFile(path, Metrics())
    assert str(path) in str(refused.value)
    assert content is None or not content or content not in str(refused.value)


# -- --auth google ----------------------------------------------------------------------


@pytest.fixture
def token_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TokenServer]:
    """A token endpoint and the Application Default Credentials pointing at it."""
    with TokenServer() as server:
        key_file = server.write_key_file(tmp_path / "service-account.json")
        monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key_file))
        yield server


def bearer(headers: dict[str, str]) -> str:
    """The Authorization header's value (google-auth names it in lower case)."""
    return {name.lower(): value for name, value in headers.items()}["authorization"]


def stale_soon(server: TokenServer) -> None:
    """Issue tokens google-auth will call stale STALE_AFTER_S after they arrive."""
    server.lifetime_s = google_helpers.REFRESH_THRESHOLD.total_seconds() + STALE_AFTER_S


def test_google_gets_one_token_for_many_concurrent_readers(token_server: TokenServer) -> None:
    google = GoogleToken(Metrics())
    seen: list[dict[str, str]] = []

    def read() -> None:
        seen.append(bearer(google.headers(5.0)))

    threads = [threading.Thread(target=read) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert token_server.token_requests == 1
    assert seen == [f"Bearer {token_server.issued[0]}"] * 8
    for _ in range(100):
        google.headers(5.0)
    assert token_server.token_requests == 1  # kept, not asked for on every request
    assert "service_account" in google.description


def test_google_renews_a_stale_token_once_before_it_expires(token_server: TokenServer) -> None:
    stale_soon(token_server)
    metrics = Metrics()
    google = GoogleToken(metrics)
    first = bearer(google.headers(5.0))
    time.sleep(STALE_AFTER_S + 0.2)
    threads = [threading.Thread(target=lambda: [google.headers(5.0) for _ in range(25)])
               for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert token_server.token_requests == 2
    assert bearer(google.headers(5.0)) == f"Bearer {token_server.issued[1]}" != first
    assert metrics.value("auth.tokens_obtained") == 2


def test_a_refused_token_request_is_not_repeated_for_every_read(
    token_server: TokenServer, caplog: pytest.LogCaptureFixture
) -> None:
    token_server.refusing = 1
    google = GoogleToken(Metrics())
    with caplog.at_level(logging.ERROR, "idcfs.source.auth"), pytest.raises(FetchError) as failed:
        google.headers(5.0)
    assert "cannot get a Google access token" in str(failed.value)
    assert "cannot get a Google access token" in caplog.text
    for _ in range(20):
        with pytest.raises(FetchError):
            google.headers(5.0)
    assert token_server.token_requests == 1


def test_a_token_request_waits_no_longer_than_the_read(token_server: TokenServer) -> None:
    token_server.stall_s = 3.0
    google = GoogleToken(Metrics())
    start = time.monotonic()
    with pytest.raises(FetchError):
        google.headers(0.5)
    assert time.monotonic() - start < 2.5  # bounded by the deadline, not the stall


def test_no_application_default_credentials_fail_the_setup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    with pytest.raises(AuthSetupError) as refused:
        GoogleToken(Metrics())
    message = str(refused.value)
    assert message.startswith("--auth google: no Application Default Credentials")
    assert "\n" not in message and "missing.json" in message


def test_without_google_auth_installed_the_setup_names_the_extra(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "google.auth", None)  # as if not installed
    with pytest.raises(AuthSetupError, match=r"pip install 'idcfs\[google\]'"):
        GoogleToken(Metrics())
