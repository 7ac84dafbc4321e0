"""A loopback OAuth 2.0 token endpoint for google-auth's service-account flow.

`--auth google` is tested with google-auth's real code: `google.auth.default()` reads a
service-account key file (`GOOGLE_APPLICATION_CREDENTIALS`) whose `token_uri` is this
server, signs a JWT with the key and POSTs it here (the jwt-bearer grant). The server
checks the assertion's signature against the key's public half and its audience, then
issues `ya29.test-N-<random>` tokens that last `lifetime_s`. It counts every request
(`token_requests`), keeps the tokens it issued (`issued`, `issued_at`), and can refuse the next
requests (400 invalid_grant, as for a disabled account: google-auth does not retry
it) or stall them (a token endpoint that does not answer).
"""

from __future__ import annotations

import json
import secrets
import threading
import time
import urllib.parse
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.support.service import Service

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
CLIENT_EMAIL = "idcfs-test@idcfs-test.iam.gserviceaccount.com"
GOOGLE_AUDIENCE = "https://oauth2.googleapis.com/token"  # signed for, wherever it is posted


def rsa_key_pair() -> tuple[str, str]:
    """(private key PEM, public key PEM) of a fresh 2048-bit RSA key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return private.decode(), public.decode()


class _TokenHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _TokenHttpServer

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the record is `TokenServer.token_requests`."""

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        form = urllib.parse.parse_qs(self.rfile.read(length).decode())
        status, answer = self.server.owner.answer(form)
        body = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _TokenHttpServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, owner: TokenServer) -> None:
        self.owner = owner
        super().__init__(("127.0.0.1", 0), _TokenHandler)


class TokenServer(Service):
    """The token endpoint, on a free loopback port, serving from a background thread.

    `on_issue(token)` is called for each token issued (e.g. to let a relay accept it).
    """

    def __init__(self, lifetime_s: float = 3600.0,
                 on_issue: Callable[[str], None] | None = None) -> None:
        self.lifetime_s = lifetime_s
        self.on_issue = on_issue
        self.private_key, self.public_key = rsa_key_pair()
        self.issued: list[str] = []
        self.issued_at: list[float] = []  # time.monotonic() of each
        self.token_requests = 0
        self.refusing = 0  # answer the next N requests 400 invalid_grant
        self.stall_s = 0.0  # wait this long before answering
        self._lock = threading.Lock()
        self._server: _TokenHttpServer | None = None
        self.port = 0

    @property
    def token_uri(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    def start(self) -> TokenServer:
        self._server = _TokenHttpServer(self)
        self.port = int(self._server.server_address[1])
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                         name=f"TokenServer:{self.port}", daemon=True).start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()

    def write_key_file(self, path: Path) -> Path:
        """A service-account key file (as the Cloud console makes) pointing here."""
        info = {
            "type": "service_account", "project_id": "idcfs-test",
            "private_key_id": secrets.token_hex(20), "private_key": self.private_key,
            "client_email": CLIENT_EMAIL, "client_id": "1234567890",
            "token_uri": self.token_uri,
        }
        path.write_text(json.dumps(info))
        path.chmod(0o600)
        return path

    def answer(self, form: dict[str, list[str]]) -> tuple[int, dict[str, Any]]:
        """The token endpoint's status and JSON answer to one POST."""
        with self._lock:
            self.token_requests += 1
            refuse = self.refusing > 0
            self.refusing -= refuse
        if self.stall_s:
            time.sleep(self.stall_s)
        if refuse:
            return 400, {"error": "invalid_grant", "error_description": "account disabled"}
        if form.get("grant_type") != [JWT_BEARER]:
            return 400, {"error": "unsupported_grant_type"}
        try:
            self._check_assertion(form.get("assertion", [""])[0])
        except ValueError as error:
            return 400, {"error": "invalid_grant", "error_description": str(error)}
        with self._lock:
            token = f"ya29.test-{len(self.issued) + 1}-{secrets.token_hex(12)}"
            self.issued.append(token)
            self.issued_at.append(time.monotonic())
        if self.on_issue is not None:
            self.on_issue(token)
        return 200, {"access_token": token, "expires_in": int(self.lifetime_s),
                     "token_type": "Bearer"}

    def _check_assertion(self, assertion: str) -> None:
        """The JWT is signed by the key file's key, by its account, for Google's token
        endpoint (the audience google-auth always signs for, whatever its token_uri)."""
        from google.auth import jwt

        claims = jwt.decode(assertion, certs=self.public_key, audience=GOOGLE_AUDIENCE)
        if claims.get("iss") != CLIENT_EMAIL or "scope" not in claims:
            raise ValueError(f"unexpected claims {sorted(claims)}")
