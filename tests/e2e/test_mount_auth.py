"""Private DICOMweb stores (docs/SEMANTICS.md, "Credentials"), through real mounts.

The relay in front of the real Orthanc plays a server that wants credentials: it
answers 401 to every request without the header value it accepts (`require_header`),
and counts those answers. Each test mounts with one kind of credentials, reads through
the catalog (QIDO-RS), slide.json and tiles, and then looks for the secret in
everything idcfs shows: the debug log, every slide.json, the statistics file, the
disk cache and the error lines.

- `--header 'Name: value'` is sent with every request.
- `--bearer-token-file`: the file is rotated during the session and reads go on; a
  token the server refuses makes each read EIO after exactly one request (no retry
  loop), with one log line saying why; without credentials the mount fails in one line.
- `--auth google`: google-auth's real service-account flow against a loopback token
  endpoint (tests/support/tokenserver.py); the token is renewed once it is stale, one
  token request for the whole session otherwise.
"""

from __future__ import annotations

import errno
import json
import time
from collections.abc import Iterable
from pathlib import Path

import pytest

from idcfs.errors import FetchError
from idcfs.metrics import Metrics
from idcfs.source.auth import BearerTokenFile, RequestAuth
from idcfs.source.dicomweb import DicomWebClient
from tests.support.expected import tile_paths
from tests.support.mounting import Mount, named, run_idcfs, series_dir, stop_mount
from tests.support.relay import HttpRelay
from tests.support.tokenserver import TokenServer

STATS = ".idcfs-stats.json"
API_KEY = "k-7f3a9c-private"
TOKENS = ("tok-one-4d2b", "tok-two-9e1f", "tok-three-c3a0")
STALE_AFTER_S = 4.0


def unmount(mount: Mount) -> None:
    result = run_idcfs("unmount", str(mount.path))
    assert result.returncode == 0, result.stderr
    stop_mount(mount)


def read_everything(mount: Mount, slide_dir: Path, level: str) -> dict[str, bytes]:
    """What a user sees: every slide.json, a level's tiles, the statistics file."""
    shown = {str(path): path.read_bytes() for path in mount.path.glob("studies/*/*/slide.json")}
    assert len(shown) >= 2, "the mount lists no series"
    tiles = sorted(tile_paths(slide_dir / level))
    assert tiles and all(tile.read_bytes()[:2] == b"\xff\xd8" for tile in tiles)
    shown[STATS] = (mount.path / STATS).read_bytes()
    return shown


def assert_nowhere(secrets: Iterable[str], shown: dict[str, bytes]) -> None:
    for secret in secrets:
        for where, data in shown.items():
            assert secret.encode() not in data, f"{secret!r} shown in {where}"


def cache_files(cache: Path) -> dict[str, bytes]:
    return {str(path): path.read_bytes() for path in cache.rglob("*") if path.is_file()}


def test_a_header_is_sent_with_every_request(
    relay: HttpRelay, mount_idcfs, test_slides, tmp_path: Path
) -> None:
    relay.require_header("X-Api-Key", API_KEY)
    cache = tmp_path / "cache"
    mount = mount_idcfs(relay.url + "/dicom-web", "--header", f"X-Api-Key: {API_KEY}",
                        "--header", "X-Tenant: pathology", "--debug",
                        "--cache-dir", str(cache))
    shown = read_everything(mount, series_dir(mount.path, named(test_slides, "jpeg_ybr")),
                            "level-1")
    statistics = json.loads(shown[STATS])
    unmount(mount)

    assert relay.refused == 0 and relay.count("/instances?") and relay.count("/frames/")
    assert {headers.get("X-Api-Key") for headers in relay.headers} == {API_KEY}
    assert {headers.get("X-Tenant") for headers in relay.headers} == {"pathology"}
    assert "--header X-Api-Key" in statistics["source"]["auth"]
    shown.update({"the debug log": mount.log().encode(), **cache_files(cache)})
    assert_nowhere([API_KEY], shown)


def test_a_rotated_token_file_keeps_reads_working_and_a_refused_one_is_eio(
    relay: HttpRelay, mount_idcfs, test_slides, tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKENS[0] + "\n")
    relay.require_header("Authorization", f"Bearer {TOKENS[0]}")
    mount = mount_idcfs(relay.url + "/dicom-web", "--bearer-token-file", str(token_file),
                        "--readahead-size", "0", "--debug", "--timeout", "5")
    slide_dir = series_dir(mount.path, named(test_slides, "jpeg_ybr"))
    shown = read_everything(mount, slide_dir, "level-2")

    # Rotation: the server accepts the new token, the file gets it, the old one is dropped.
    relay.require_header("Authorization", f"Bearer {TOKENS[0]}", f"Bearer {TOKENS[1]}")
    rotated = tmp_path / "token.new"
    rotated.write_text(TOKENS[1])
    rotated.replace(token_file)
    relay.require_header("Authorization", f"Bearer {TOKENS[1]}")
    shown.update({f"after rotation {k}": v
                  for k, v in read_everything(mount, slide_dir, "level-1").items()})
    assert relay.refused == 0
    assert relay.headers[-1].get("Authorization") == f"Bearer {TOKENS[1]}"

    # The server stops accepting it: every read is EIO after one request, never a loop.
    relay.require_header("Authorization", f"Bearer {TOKENS[2]}")
    tiles = sorted(tile_paths(slide_dir / "level-0"))[:3]
    for number, tile in enumerate(tiles, start=1):
        with pytest.raises(OSError) as failure:
            tile.read_bytes()
        assert failure.value.errno == errno.EIO
        assert relay.refused == number
    log = mount.log()
    assert log.count("HTTP 401 from") == 1, log  # once per run of refusals
    assert "the server refused the credentials sent (--bearer-token-file" in log
    assert log.count("not retried") >= len(tiles) + 1  # the run's line and each EIO line

    token_file.write_text(TOKENS[2])  # the right token again: the same tiles read
    assert all(tile.read_bytes()[:2] == b"\xff\xd8" for tile in tiles)
    assert relay.refused == len(tiles)
    shown[STATS] = (mount.path / STATS).read_bytes()
    assert json.loads(shown[STATS])["auth"]["refused"] == len(tiles)
    unmount(mount)
    shown["the debug log"] = mount.log().encode()
    assert_nowhere(TOKENS, shown)


@pytest.mark.parametrize("rotated_meanwhile", [True, False])
def test_a_refused_request_is_sent_again_only_with_a_new_token(
    relay: HttpRelay, tmp_path: Path, rotated_meanwhile: bool
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKENS[0])
    relay.require_header("Authorization", f"Bearer {TOKENS[1]}")
    if rotated_meanwhile:  # the server switched first; the file follows while in flight
        relay.on_refusal = lambda: token_file.write_text(TOKENS[1])
    auth = RequestAuth({}, BearerTokenFile(token_file, Metrics()))
    client = DicomWebClient(relay.url + "/dicom-web", metrics=Metrics(), auth=auth)
    try:
        if rotated_meanwhile:
            client.check_reachable()
        else:
            with pytest.raises(FetchError, match="HTTP 401"):
                client.check_reachable()
    finally:
        client.close()
    assert relay.refused == 1
    assert len(relay.requests) == (2 if rotated_meanwhile else 1)


def test_without_credentials_the_mount_fails_in_one_line_after_one_request(
    relay: HttpRelay, tmp_path: Path
) -> None:
    relay.require_header("Authorization", f"Bearer {TOKENS[0]}")
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    result = run_idcfs("mount", "--url", relay.url + "/dicom-web", "--log-file",
                       str(tmp_path / "idcfs.log"), str(mountpoint))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "HTTP 401" in lines[0], result.stderr
    assert "--bearer-token-file FILE" in lines[0] and "not retried" in lines[0]
    assert relay.refused == 1 and len(relay.requests) == 1


@pytest.mark.parametrize("options", [
    ["--header", f"X-Api-Key {API_KEY}"],
    ["--header", f"Host: {API_KEY}"],
    ["--bearer-token-file", "/nonexistent/token"],
    ["--auth", "google", "--bearer-token-file", "/run/token"],
])
def test_bad_credential_options_are_one_line_without_the_secret(
    relay: HttpRelay, tmp_path: Path, options: list[str]
) -> None:
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    result = run_idcfs("mount", "--url", relay.url + "/dicom-web", *options,
                       "--log-file", str(tmp_path / "idcfs.log"), str(mountpoint))
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert API_KEY not in result.stderr + result.stdout
    assert relay.requests == []  # refused before anything is sent


def test_credentials_are_only_for_a_dicomweb_server(tmp_path: Path) -> None:
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    for source in (["--files", str(tmp_path)], []):  # a folder; IDC's bucket by default
        result = run_idcfs("mount", *source, "--header", f"X-Api-Key: {API_KEY}",
                           "--log-file", str(tmp_path / "idcfs.log"), str(mountpoint))
        assert result.returncode == 2, result.stderr
        assert result.stderr.count("\n") == 1 and "for a DICOMweb server" in result.stderr
        assert API_KEY not in result.stderr


def test_google_credentials_are_renewed_once_stale(
    relay: HttpRelay, mount_idcfs, test_slides, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("google.auth")
    from google.auth import _helpers as google_helpers

    accepted: list[str] = []

    def accept(token: str) -> None:  # a real server takes every token within its lifetime
        accepted.append(f"Bearer {token}")
        relay.require_header("Authorization", *accepted)

    relay.require_header("Authorization", "Bearer none-issued-yet")
    lifetime = google_helpers.REFRESH_THRESHOLD.total_seconds() + STALE_AFTER_S
    with TokenServer(lifetime_s=lifetime, on_issue=accept) as tokens:
        key_file = tokens.write_key_file(tmp_path / "service-account.json")
        monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key_file))
        mount = mount_idcfs(relay.url + "/dicom-web", "--auth", "google", "--debug")
        slide_dir = series_dir(mount.path, named(test_slides, "jpeg_ybr"))
        shown = read_everything(mount, slide_dir, "level-2")
        # One token for the mount, the catalog and the reads (another only if they took
        # longer than a token stays fresh: a slow machine gets no false failure).
        spent = time.monotonic() - tokens.issued_at[0]
        assert 1 <= tokens.token_requests <= 1 + int(spent / STALE_AFTER_S)
        time.sleep(max(0.0, tokens.issued_at[-1] + STALE_AFTER_S + 0.5 - time.monotonic()))
        before = tokens.token_requests
        assert (slide_dir / "level-0" / "0_0.jpg").read_bytes()[:2] == b"\xff\xd8"
        assert tokens.token_requests == before + 1  # the first request once stale renews
        assert relay.headers[-1].get("Authorization") == f"Bearer {tokens.issued[-1]}"
        shown.update({f"when stale {k}": v
                      for k, v in read_everything(mount, slide_dir, "level-1").items()})
        statistics = json.loads((mount.path / STATS).read_text())
        unmount(mount)

    assert len(tokens.issued) == tokens.token_requests and relay.refused == 0
    assert relay.headers[0].get("Authorization") == f"Bearer {tokens.issued[0]}"
    assert statistics["requests_sent"] > 10 * tokens.token_requests
    assert statistics["auth"]["tokens_obtained"] == tokens.token_requests
    assert statistics["source"]["auth"] == "--auth google (service_account credentials)"
    shown["the debug log"] = mount.log().encode()
    key_body = tokens.private_key.splitlines()[5]
    assert_nowhere([*tokens.issued, key_body], shown)
