"""The credentials a DICOMweb server is sent: `--header`, `--bearer-token-file`, `--auth google`.

`RequestAuth.headers` gives the headers of one request attempt: the `--header` ones and
those of at most one token source. Both token sources are cheap on the request path:

- `BearerTokenFile` stats its file (a few microseconds) and reads it again only when
  the file changed (inode, size, mtime or ctime), so a token rotated by another
  program is used from the next request on. A file caught empty or unreadable in the
  middle of a rotation keeps the last token (and says so once).
- `GoogleToken` uses Application Default Credentials (google-auth): the access token
  is kept and refreshed only when google-auth calls it stale (3 min 45 s before it
  expires) or invalid. A stale token is refreshed by one request thread while the
  others go on with it; only when it is invalid do they wait (bounded by their
  deadline) for the one refresh. A failed refresh is not tried again for
  `REFRESH_RETRY_S`, so a token endpoint that is down does not get a request per read.

Nothing here logs, raises or renders a token or a header value: messages name the
option (`description`), the file, or the header's name.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import urllib3

from idcfs.errors import FetchError, IdcfsError
from idcfs.metrics import Metrics

log = logging.getLogger(__name__)

GOOGLE_SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)  # Healthcare API: either
TOKEN_REQUEST_TIMEOUT_S = 10.0  # one request to a token endpoint, at most
REFRESH_RETRY_S = 5.0  # after a failed refresh, requests fail (or use the old token) this long
HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 token
HEADER_VALUE = re.compile(r"[\x20-\x7e\t]*")  # visible ASCII, spaces and tabs
TOKEN = re.compile(r"[\x21-\x7e]+")  # one word of visible ASCII (RFC 6750 b64token and more)
OWN_HEADERS = frozenset({"accept", "host", "connection", "content-length", "transfer-encoding"})


class AuthSetupError(IdcfsError):
    """Credentials that cannot be used at all (the mount fails in one line, exit 2)."""


@dataclass(frozen=True)
class AuthOptions:
    """What the command line asked to send. `headers` stay out of repr: their values
    may be secrets."""

    google: bool = False
    token_file: Path | None = None
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)

    @property
    def asked(self) -> bool:
        return self.google or self.token_file is not None or bool(self.headers)

    def problem(self, url_has_credentials: bool = False) -> str | None:
        """Why these options cannot go together, or None. Two sources of one
        Authorization header would leave it to chance which one the server sees."""
        named = [name for name, _ in self.headers if name.lower() == "authorization"]
        givers = [option for option, given in (
            ("--auth google", self.google), ("--bearer-token-file", self.token_file),
            ("--header Authorization", named), ("credentials in the URL", url_has_credentials),
        ) if given]
        if len(givers) > 1:
            return f"{givers[0]} and {givers[1]} both set the Authorization header; use one"
        return None


def parse_header(text: str) -> tuple[str, str]:
    """('Name', 'value') of `--header 'Name: value'`; ValueError (naming no value) if bad."""
    name, colon, value = text.partition(":")
    name, value = name.strip(), value.strip()
    if not colon or not HEADER_NAME.fullmatch(name):
        raise ValueError("wants 'Name: value' (a header name, a colon, its value)")
    if name.lower() in OWN_HEADERS:
        raise ValueError(f"{name} is set by idcfs itself")
    if not HEADER_VALUE.fullmatch(value):
        raise ValueError(f"the value of {name} holds characters a header cannot carry")
    return name, value


class TokenSource(Protocol):
    """Headers carrying a token that can change during a mount."""

    description: str

    def headers(self, wait_s: float) -> dict[str, str]: ...


class RequestAuth:
    """The headers every request carries: the `--header` ones and a token source's."""

    def __init__(self, fixed: Mapping[str, str], token: TokenSource | None = None) -> None:
        self._fixed = dict(fixed)
        self._token = token
        shown = [f"--header {name}" for name in self._fixed]
        self.description = ", ".join(([token.description] if token else []) + shown)

    def headers(self, wait_s: float) -> dict[str, str]:
        """The headers of one attempt; FetchError when no token can be had in `wait_s`."""
        if self._token is None:
            return dict(self._fixed)
        return {**self._fixed, **self._token.headers(wait_s)}

    def refused_hint(self) -> str:
        return f"the server refused the credentials sent ({self.description})"


def build_auth(options: AuthOptions, metrics: Metrics) -> RequestAuth | None:
    """The credentials `options` ask for, checked to be usable now; AuthSetupError."""
    if not options.asked:
        return None
    token: TokenSource | None = None
    if options.token_file is not None:
        token = BearerTokenFile(options.token_file, metrics)
    elif options.google:
        token = GoogleToken(metrics)
    return RequestAuth(dict(options.headers), token)


def no_credentials_hint() -> str:
    return ("the server wants credentials: --auth google, --bearer-token-file FILE or "
            "--header 'Name: value'")


# -- --bearer-token-file ----------------------------------------------------------------


class BearerTokenFile:
    """`Authorization: Bearer <the file's content>`, read again whenever the file changes."""

    def __init__(self, path: Path, metrics: Metrics) -> None:
        self.path = path.expanduser().absolute()
        self.description = f"--bearer-token-file {self.path}"
        self._lock = threading.Lock()
        self._seen: tuple[int, ...] | None = None
        self._unusable_seen: tuple[int, ...] | None = None
        self._tokens = metrics.counter("auth.tokens_obtained")
        try:
            state = self._file_state()
            self._token = self._read()
        except ValueError as error:
            raise AuthSetupError(f"{self.description}: {error}") from None
        self._seen = state
        self._tokens.add()

    def headers(self, wait_s: float) -> dict[str, str]:
        self._follow_changes()
        return {"Authorization": f"Bearer {self._token}"}

    def _follow_changes(self) -> None:
        try:
            state = self._file_state()
        except ValueError as error:
            self._keep_last_token(None, str(error))
            return
        if state == self._seen:
            return
        with self._lock:
            if state == self._seen:
                return
            try:
                token = self._read()
            except ValueError as error:
                self._keep_last_token(state, str(error))
                return
            self._seen, self._unusable_seen = state, None
            if token != self._token:
                self._token = token
                self._tokens.add()
                log.info("%s changed: its new token is sent from now on", self.path)

    def _file_state(self) -> tuple[int, ...]:
        try:
            status = os.stat(self.path)
        except OSError as error:
            raise ValueError(f"cannot read it ({error.strerror})") from None
        return (status.st_ino, status.st_size, status.st_mtime_ns, status.st_ctime_ns)

    def _read(self) -> str:
        """The token in the file (surrounding white space dropped); ValueError."""
        try:
            text = self.path.read_bytes().decode("ascii").strip()
        except OSError as error:
            raise ValueError(f"cannot read it ({error.strerror})") from None
        except UnicodeDecodeError:
            raise ValueError("not a token (not ASCII)") from None
        if not text:
            raise ValueError("empty")
        if not TOKEN.fullmatch(text):
            raise ValueError("not a token (one word of visible ASCII characters)")
        return text

    def _keep_last_token(self, state: tuple[int, ...] | None, reason: str) -> None:
        """Say once per change of the file that its last good token is still sent."""
        if state is not None:
            self._seen = state
        key = state or (-1,)
        if key != self._unusable_seen:
            self._unusable_seen = key
            log.warning("%s: %s; the token read before is still sent", self.path, reason)


# -- --auth google ----------------------------------------------------------------------


class _DeadlineRequest:
    """google-auth's urllib3 transport with every token request's timeout cut to the
    time the refreshing reader has left (google-auth retries on its own: up to 3
    attempts with 1-2 s pauses, which must not outlast the read's deadline)."""

    def __init__(self, transport: Any) -> None:
        self._transport = transport
        self.until = 0.0

    def __call__(self, url: str, method: str = "GET", body: Any = None,
                 headers: Any = None, timeout: float | None = None, **kwargs: Any) -> Any:
        from google.auth.exceptions import TransportError

        left = self.until - time.monotonic()
        if left <= 0:
            raise TransportError("no time left for the token request")
        limit = min(left, timeout or TOKEN_REQUEST_TIMEOUT_S, TOKEN_REQUEST_TIMEOUT_S)
        return self._transport(url, method=method, body=body, headers=headers,
                               timeout=limit, **kwargs)


class GoogleToken:
    """An OAuth access token from Application Default Credentials, kept until stale."""

    def __init__(self, metrics: Metrics) -> None:
        try:
            import google.auth
            import google.auth.transport.urllib3
            from google.auth.credentials import TokenState
            from google.auth.exceptions import DefaultCredentialsError
        except ImportError:
            raise AuthSetupError("--auth google needs the google-auth package: "
                                 "pip install 'idcfs[google]'") from None
        # Its DEBUG request log would carry the token endpoint's answers: never shown.
        logging.getLogger("google").setLevel(logging.WARNING)
        try:
            self._credentials, _project = google.auth.default(scopes=list(GOOGLE_SCOPES))
        except DefaultCredentialsError as error:
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
            raise AuthSetupError(f"--auth google: no Application Default Credentials "
                                 f"({first_line})") from None
        pool = urllib3.PoolManager(retries=False, timeout=TOKEN_REQUEST_TIMEOUT_S)
        self._request = _DeadlineRequest(google.auth.transport.urllib3.Request(pool))
        kind = type(self._credentials).__module__.rpartition(".")[2]
        self.description = f"--auth google ({kind} credentials)"
        self._states = TokenState
        self._lock = threading.Lock()
        self._retry_after = 0.0
        self._failure = ""
        self._tokens = metrics.counter("auth.tokens_obtained")

    def headers(self, wait_s: float) -> dict[str, str]:
        state = self._credentials.token_state
        if state is self._states.STALE:
            self._refresh_stale(wait_s)
        elif state is self._states.INVALID:
            self._refresh_invalid(wait_s)
        headers: dict[str, str] = {}
        self._credentials.apply(headers)  # Authorization, and the quota project if any
        return headers

    def _refresh_stale(self, wait_s: float) -> None:
        """Refresh a token that still works, unless another thread is at it already."""
        if not self._lock.acquire(blocking=False):
            return
        try:
            if self._credentials.token_state is self._states.STALE and not self._pausing():
                self._refresh(wait_s, still_valid=True)
        finally:
            self._lock.release()

    def _refresh_invalid(self, wait_s: float) -> None:
        """Wait (at most `wait_s`) for one thread to get a token; FetchError if none."""
        if not self._lock.acquire(timeout=max(wait_s, 0.0)):
            raise FetchError(f"no Google access token within {wait_s:.1f} s (being fetched)")
        try:
            if self._credentials.token_state is not self._states.INVALID:
                return
            if self._pausing():
                raise FetchError(self._failure)
            self._refresh(wait_s, still_valid=False)
        finally:
            self._lock.release()

    def _pausing(self) -> bool:
        return time.monotonic() < self._retry_after

    def _refresh(self, wait_s: float, still_valid: bool) -> None:
        from google.auth.exceptions import GoogleAuthError

        self._request.until = time.monotonic() + wait_s
        try:
            self._credentials.refresh(self._request)
        except GoogleAuthError as error:
            self._retry_after = time.monotonic() + REFRESH_RETRY_S
            self._failure = f"cannot get a Google access token ({_one_line(error)})"
            if still_valid:
                log.warning("%s; the current one is sent until it expires", self._failure)
                return
            log.error("%s; requests fail with EIO (tried again in %g s)",
                      self._failure, REFRESH_RETRY_S)
            raise FetchError(self._failure) from None
        self._tokens.add()
        expiry = self._credentials.expiry
        log.info("Google access token obtained (valid until %s UTC)",
                 expiry.strftime("%Y-%m-%d %H:%M:%S") if expiry else "no expiry")


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:300]}"
