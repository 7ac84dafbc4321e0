"""The DICOMweb source's wire helpers: multipart bodies and the quota's reset time."""

from __future__ import annotations

import pytest

from idcfs.errors import FetchError
from idcfs.source.dicomweb import next_utc_midnight
from idcfs.source.multipart import parse_content_type, split_multipart


def test_multipart_split_and_truncation() -> None:
    body = (b"--XyZ\r\nContent-Type: application/octet-stream; transfer-syntax=1.2.3\r\n\r\n"
            b"\xff\xd8one\r\n--XyZ\r\nContent-Type: application/octet-stream\r\n\r\n"
            b"two\r\n--XyZ--\r\n")
    parts = split_multipart(body, "XyZ")
    assert [part.content for part in parts] == [b"\xff\xd8one", b"two"]
    assert parse_content_type(parts[0].content_type)[1]["transfer-syntax"] == "1.2.3"
    with pytest.raises(FetchError):
        split_multipart(body[:60], "XyZ")


def test_next_utc_midnight() -> None:
    assert next_utc_midnight(86400 * 10 + 5) == 86400 * 11
