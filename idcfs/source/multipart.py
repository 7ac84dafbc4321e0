"""Splitting a DICOMweb multipart/related answer into its parts.

Hand-written rather than `email.parser`: frames are binary and can be tens of MB in
one answer; the stdlib parser decodes to text and copies several times. This is a
single pass of `bytes.find`, and it refuses a truncated message instead of guessing.
"""

from __future__ import annotations

from dataclasses import dataclass
from email.message import Message

from idcfs.errors import FetchError


@dataclass(frozen=True)
class Part:
    """One body part: its headers (lower-case names) and its content."""

    headers: dict[str, str]
    content: bytes

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")


def parse_content_type(value: str) -> tuple[str, dict[str, str]]:
    """Return (media type, parameters) of a Content-Type header value."""
    message = Message()
    message["content-type"] = value
    params = {key.lower(): val for key, val in message.get_params(failobj=[])[1:]}
    return message.get_content_type(), params


def split_multipart(body: bytes, boundary: str) -> list[Part]:
    """Split a complete multipart body; raise FetchError when it is malformed or cut short.

    The boundary comes from the server's Content-Type header: one that is empty or not
    ASCII (RFC 2046 allows 1-70 ASCII characters) is a malformed answer too.
    """
    if not boundary or not boundary.isascii():
        raise FetchError(f"multipart answer with an unusable boundary {boundary!r}")
    delimiter = b"--" + boundary.encode("ascii")
    position = body.find(delimiter)
    if position < 0:
        raise FetchError("multipart answer without its boundary")
    position += len(delimiter)
    parts: list[Part] = []
    while not body.startswith(b"--", position):
        part, position = _read_part(body, position, delimiter)
        parts.append(part)
    return parts


def _read_part(body: bytes, position: int, delimiter: bytes) -> tuple[Part, int]:
    line_end = body.find(b"\r\n", position)
    header_end = body.find(b"\r\n\r\n", line_end)
    if line_end < 0 or header_end < 0:
        raise FetchError("multipart answer cut short in a part's headers")
    headers = _parse_headers(body[line_end + 2 : header_end])
    content_start = header_end + 4
    content_end = body.find(b"\r\n" + delimiter, content_start)
    if content_end < 0:
        raise FetchError("multipart answer cut short in a part's content")
    return Part(headers, body[content_start:content_end]), content_end + 2 + len(delimiter)


def _parse_headers(block: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in block.decode("latin-1").split("\r\n"):
        name, _, value = line.partition(":")
        if name.strip():
            headers[name.strip().lower()] = value.strip()
    return headers
