"""Unit tests of how `idcfs mount` picks its frame source: --source, --s3-endpoint,
--files and --url, and the one-line refusals of combinations that would ignore one."""

from __future__ import annotations

from pathlib import Path

import pytest

from idcfs.cli import main
from idcfs.mount import MountConfig, SetupError, bucket_store, files_store
from idcfs.source.objects import HttpBucketStore, LocalFolderStore


def config(**options: object) -> MountConfig:
    return MountConfig(mountpoint=Path("/nonexistent"), **options)  # type: ignore[arg-type]


def test_idc_comes_from_the_aws_bucket_by_default() -> None:
    assert config().source_kind == "aws"
    assert config(source="gcs").source_kind == "gcs"
    assert config(source="proxy").source_kind == "dicomweb"
    assert config(url="http://127.0.0.1:1/dicom-web").source_kind == "dicomweb"
    assert config(files="/data").source_kind == "files"
    assert config().uses_idc_index and not config(files="/data").uses_idc_index


def test_bucket_endpoints() -> None:
    aws = bucket_store(config(), "aws", "idc-open-data")
    assert aws.description == "bucket idc-open-data at https://s3.amazonaws.com"
    gcs = bucket_store(config(), "gs", "idc-open-data")
    assert gcs.description == "bucket idc-open-data at https://storage.googleapis.com"
    mirror = bucket_store(config(s3_endpoint="http://user:secret@127.0.0.1:9000"), "s3", "b")
    assert mirror.description == "bucket b at http://127.0.0.1:9000"
    with pytest.raises(SetupError, match="--s3-endpoint"):
        bucket_store(config(s3_endpoint="ftp://x"), "s3", "b")


def test_files_locations(tmp_path: Path) -> None:
    store, prefix = files_store(config(files=str(tmp_path)))
    assert isinstance(store, LocalFolderStore) and prefix == ""
    store, prefix = files_store(config(files="s3://bucket/some/prefix/"))
    assert isinstance(store, HttpBucketStore) and store.bucket == "bucket"
    assert prefix == "some/prefix/"
    store, prefix = files_store(config(files="gs://idc-open-data/abc"))
    assert "storage.googleapis.com" in store.description and prefix == "abc"
    for bad in (str(tmp_path / "missing"), "ftp://x/y", "s3://"):
        with pytest.raises(SetupError, match="--files"):
            files_store(config(files=bad))


@pytest.mark.parametrize("arguments", [
    ["--files", "/data", "--url", "http://127.0.0.1:1/dicom-web"],
    ["--files", "/data", "--collection", "tcga_brca"],
    ["--files", "/data", "--source", "gcs"],
    ["--files", "/data", "--s3-endpoint", "http://127.0.0.1:1"],
    ["--url", "http://127.0.0.1:1/dicom-web", "--source", "aws"],
    ["--source", "gcs", "--s3-endpoint", "http://127.0.0.1:1"],
    ["--source", "nowhere"],
])
def test_clashing_source_options_are_one_line_and_exit_2(
        arguments: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(["mount", *arguments, str(tmp_path)])
    assert stopped.value.code == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and error.startswith("idcfs: error:"), error
