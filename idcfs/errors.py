"""Exceptions shared by the layers (the filesystem adapter maps them to errno values),
and the one helper that keeps credentials out of their messages."""

from __future__ import annotations


class IdcfsError(Exception):
    """Base class of every error idcfs raises on purpose."""


class NotFoundError(IdcfsError):
    """A path or object that does not exist (ENOENT). Never used for server trouble."""


class FetchError(IdcfsError):
    """The server could not give what was asked (EIO): HTTP error, timeout, bad answer."""


class QuotaExhaustedError(FetchError):
    """The server said its quota is spent (HTTP 429); no request is sent until reset."""


class MetadataError(IdcfsError):
    """Series metadata that cannot be read or lacks what the slide model needs (EIO)."""


class DecodeError(IdcfsError):
    """A frame could not be decoded or converted to JPEG (EIO)."""


class RegionTooLarge(IdcfsError):
    """A region whose render would need more stored pixels than idcfs decodes for one
    file (EIO with a log line saying how many): refused before anything is fetched, so
    one request cannot take the daemon's memory."""


def without_credentials(url: str) -> str:
    """`url` without its user:password@ part: what messages, logs and statistics may show
    of a server's address (a URL's credentials are sent to its server, never shown)."""
    scheme, separator, rest = url.partition("://")
    if not separator:
        return url.rpartition("@")[2]
    authority, slash, path = rest.partition("/")
    return f"{scheme}://{authority.rpartition('@')[2]}{slash}{path}"
