"""The one error the tiles package raises on purpose."""

from __future__ import annotations

from idcfs.errors import DecodeError


class TileDecodeError(DecodeError):
    """A frame that cannot be decoded or converted to JPEG; the message says why."""
