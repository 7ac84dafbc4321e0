"""The control socket's messages: one JSON object per line, UTF-8, both ways.

The client sends one request line and reads event lines until the daemon closes the
connection; closing its end is how a client stops what it asked for (Ctrl-C).

Request: {"command": "prefetch", "paths": [path in the mount, ...], "level": N | null,
"max_bytes": N | null}.

Events, in order: "started" {timeout: the mount's --timeout}, then "listing" {tiles}
while paths are walked, "progress" {the tally} after the plan, after each batch and at
least every second, "failed" {path, reason} per tile or directory left out, and last
"done" {the tally}; or a single "refused" {message} for a request that cannot be
carried out (the client's usage error, exit code 2).
"""

from __future__ import annotations

import json
from typing import Any

MAX_LINE = 1 << 20  # a request (its paths) or an event, at most

Message = dict[str, Any]


class ProtocolError(Exception):
    """A line that is not a JSON object within MAX_LINE bytes."""


def encode(message: Message) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def decode(line: bytes) -> Message:
    if len(line) > MAX_LINE or not line.endswith(b"\n"):
        raise ProtocolError("a line too long, or cut short")
    try:
        message = json.loads(line)
    except ValueError as error:
        raise ProtocolError(f"not JSON: {error}") from None
    if not isinstance(message, dict):
        raise ProtocolError("not a JSON object")
    return message
