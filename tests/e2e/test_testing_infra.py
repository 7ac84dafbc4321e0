"""The test infrastructure itself: generated slides, the real Orthanc, and both relays."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.encaps import generate_frames

from tests.support.fixtures import real_files
from tests.support.orthanc import OrthancServer
from tests.support.relay import FaultMode, HttpRelay, TcpLatencyRelay
from tests.support.slides import (
    APP0,
    APP14,
    SOF0,
    SPARSE_TILES,
    GeneratedSlide,
    generate_test_slides,
    jpeg_segments,
    write_pyramid,
)

AS_STORED = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'


def named(slides: list[GeneratedSlide], name: str) -> GeneratedSlide:
    return next(slide for slide in slides if slide.name == name)


def http_get(port: int, path: str, accept: str | None = None) -> tuple[int, str, bytes]:
    """(status, Content-Type, body) of one GET on 127.0.0.1:port."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", path, headers={"Accept": accept} if accept else {})
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type", ""), response.read()
    finally:
        connection.close()


def multipart_parts(content_type: str, body: bytes) -> list[bytes]:
    """The payloads of a multipart/related body (a deliberately small parser)."""
    boundary = content_type.split("boundary=")[1].split(";")[0].strip('"').encode()
    parts = body.split(b"--" + boundary)[1:-1]
    return [part.split(b"\r\n\r\n", 1)[1][: -len(b"\r\n")] for part in parts]


def stored_frames(path: Path) -> list[bytes]:
    """The frames of a file as bytes, straight from its Pixel Data."""
    ds = pydicom.dcmread(path)
    count = int(getattr(ds, "NumberOfFrames", 1))
    if ds.file_meta.TransferSyntaxUID.is_encapsulated:
        return list(generate_frames(ds.PixelData, number_of_frames=count))
    size = len(ds.PixelData) // count
    return [ds.PixelData[i * size : (i + 1) * size] for i in range(count)]


# --------------------------------------------------------------------------- slides


def test_every_file_decodes_and_matches_its_layout(test_slides: list[GeneratedSlide]) -> None:
    for slide in test_slides:
        by_uid = {uid: level for level in slide.levels for uid in level.instance_uids}
        for path in slide.files:
            ds = pydicom.dcmread(path)
            assert ds.pixel_array.size > 0, path
            assert (ds.StudyInstanceUID, ds.SeriesInstanceUID) == (slide.study_uid,
                                                                    slide.series_uid)
            level = by_uid.get(ds.SOPInstanceUID)
            if level is None:
                assert ds.ImageType[2] in ("LABEL", "OVERVIEW", "THUMBNAIL"), path
                continue
            assert (ds.TotalPixelMatrixColumns, ds.TotalPixelMatrixRows) == (level.width,
                                                                              level.height)
            assert (ds.Columns, ds.Rows) == (level.tile_width, level.tile_height)
            assert ds.file_meta.TransferSyntaxUID == level.transfer_syntax
            assert ds.NumberOfFrames == level.frames_per_instance


def test_generation_is_deterministic(tmp_path: Path, test_slides: list[GeneratedSlide]) -> None:
    again = generate_test_slides(tmp_path, ["jpeg_ybr", "sparse", "jpeg2000"])
    for slide in again:
        first = named(test_slides, slide.name)
        assert (slide.study_uid, slide.series_uid) == (first.study_uid, first.series_uid)
        assert [p.read_bytes() for p in slide.files] == [p.read_bytes() for p in first.files]


def test_expected_slide_shapes(test_slides: list[GeneratedSlide]) -> None:
    ybr = named(test_slides, "jpeg_ybr")
    assert [(lv.width, lv.height, lv.columns, lv.rows) for lv in ybr.levels] == [
        (1000, 700, 4, 3), (500, 350, 2, 2), (250, 175, 1, 1)]
    assert [image.kind for image in ybr.associated] == ["LABEL", "OVERVIEW", "THUMBNAIL"]
    assert named(test_slides, "focal_planes").levels[0].focal_planes_um == (0.0, 2.5)
    paths = named(test_slides, "optical_paths").levels
    assert all(level.optical_paths == ("1", "2") for level in paths)
    assert not named(test_slides, "jpeg_rgb").associated


def test_rgb_frames_carry_no_colour_hint(test_slides: list[GeneratedSlide]) -> None:
    """No JFIF / Adobe marker and component ids 1, 2, 3: decoders must be told it is RGB."""
    for path in named(test_slides, "jpeg_rgb").files:
        for frame in stored_frames(path):
            markers = {marker for marker, _, _ in jpeg_segments(frame)}
            assert frame[:2] == b"\xff\xd8" and not markers & {APP0, APP14}
            start = next(s for marker, s, _ in jpeg_segments(frame) if marker == SOF0)
            assert [frame[start + 10 + 3 * i] for i in range(3)] == [1, 2, 3]
        ds = pydicom.dcmread(path)
        assert ds.PhotometricInterpretation == "RGB"
        assert ds.pixel_array.reshape(-1, 3).std(axis=0).min() > 30  # strongly coloured


def test_sparse_positions_and_missing_tiles(test_slides: list[GeneratedSlide]) -> None:
    slide = named(test_slides, "sparse")
    ds = pydicom.dcmread(slide.files[0], stop_before_pixels=True)
    assert ds.DimensionOrganizationType == "TILED_SPARSE"
    found = [
        ((int(p.ColumnPositionInTotalImagePixelMatrix) - 1) // ds.Columns,
         (int(p.RowPositionInTotalImagePixelMatrix) - 1) // ds.Rows)
        for p in (item.PlanePositionSlideSequence[0]
                  for item in ds.PerFrameFunctionalGroupsSequence)
    ]
    assert found == list(SPARSE_TILES) == list(slide.levels[0].tiles or ())
    assert found != sorted(found, key=lambda cr: (cr[1], cr[0])), "not row-major"
    assert len(found) < slide.levels[0].columns * slide.levels[0].rows


def test_tiles_differ(test_slides: list[GeneratedSlide]) -> None:
    for slide in test_slides:
        for path in slide.files:
            frames = stored_frames(path)
            assert len(set(frames)) == len(frames), path


def test_wsidicom_opens_every_slide(test_slides: list[GeneratedSlide]) -> None:
    wsidicom = pytest.importorskip("wsidicom")
    for slide in test_slides:
        with wsidicom.WsiDicom.open(slide.folder) as wsi:
            sizes = [(level.size.width, level.size.height) for level in wsi.levels]
            assert sizes == [(level.width, level.height) for level in slide.levels]
            base = wsi.levels[0]
            assert sorted(base.focal_planes) == list(slide.levels[0].focal_planes_um)
            assert sorted(base.optical_paths) == list(slide.levels[0].optical_paths)
            tile = wsi.read_tile(0, (0, 0), z=base.focal_planes[0], path=base.optical_paths[0])
            assert tile.size[0] > 0


def test_write_pyramid_builds_levels(tmp_path: Path) -> None:
    slide = write_pyramid(tmp_path, "small", width=1100, height=600, levels=2)
    assert [(lv.columns, lv.rows) for lv in slide.levels] == [(5, 3), (3, 2)]
    ds = pydicom.dcmread(slide.files[0])
    assert ds.NumberOfFrames == 15 and ds.pixel_array.shape == (15, 256, 256, 3)
    assert len(set(stored_frames(slide.files[0]))) == 15


# --------------------------------------------------------------------------- Orthanc


def test_uploads_are_visible_through_qido(orthanc: OrthancServer,
                                          test_slides: list[GeneratedSlide]) -> None:
    status, _, body = http_get(orthanc.port, "/dicom-web/series?Modality=SM&limit=1000")
    assert status == 200
    shown = {(item["0020000D"]["Value"][0], item["0020000E"]["Value"][0])
             for item in json.loads(body)}
    assert {(slide.study_uid, slide.series_uid) for slide in test_slides} <= shown
    real = {(ds.StudyInstanceUID, ds.SeriesInstanceUID)
            for ds in (pydicom.dcmread(p, stop_before_pixels=True) for p in real_files())}
    assert real <= shown


def test_series_metadata_lists_every_instance(orthanc: OrthancServer,
                                              test_slides: list[GeneratedSlide]) -> None:
    for slide in test_slides:
        path = f"/dicom-web/studies/{slide.study_uid}/series/{slide.series_uid}/metadata"
        status, _, body = http_get(orthanc.port, path)
        assert status == 200
        uids = {item["00080018"]["Value"][0] for item in json.loads(body)}
        expected = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID
                    for p in slide.files}
        assert uids == expected, slide.name


def test_frames_come_back_as_stored(orthanc: OrthancServer,
                                    test_slides: list[GeneratedSlide]) -> None:
    for slide in test_slides:
        for path in slide.files:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            frames = stored_frames(path)
            numbers = sorted({1, len(frames)})
            url = (f"/dicom-web/studies/{slide.study_uid}/series/{slide.series_uid}"
                   f"/instances/{ds.SOPInstanceUID}/frames/{','.join(map(str, numbers))}")
            status, content_type, body = http_get(orthanc.port, url, AS_STORED)
            assert status == 200, (path, body[:200])
            served = multipart_parts(content_type, body)
            assert served == [frames[n - 1] for n in numbers], path


def test_upload_tolerates_already_stored(orthanc: OrthancServer,
                                         test_slides: list[GeneratedSlide]) -> None:
    orthanc.upload(named(test_slides, "jpeg_rgb").files[:1])
    orthanc.upload(real_files()[:1])


# --------------------------------------------------------------------------- HttpRelay


def test_relay_forwards_byte_for_byte_and_counts(relay: HttpRelay,
                                                 orthanc: OrthancServer) -> None:
    direct = http_get(orthanc.port, "/system")
    relayed = http_get(relay.port, "/system")
    assert relayed == direct
    http_get(relay.port, "/dicom-web/studies")
    assert relay.requests == [("GET", "/system"), ("GET", "/dicom-web/studies")]
    assert relay.count("/dicom-web/") == 1 and relay.count("") == 2
    relay.reset()
    assert relay.requests == [] and relay.count() == 0


def test_relay_passes_frames_intact(relay: HttpRelay, test_slides: list[GeneratedSlide]) -> None:
    slide = named(test_slides, "sparse")
    uid = slide.levels[0].instance_uids[0]
    url = (f"/dicom-web/studies/{slide.study_uid}/series/{slide.series_uid}"
           f"/instances/{uid}/frames/1,2,3,4,5,6,7,8")
    status, content_type, body = http_get(relay.port, url, AS_STORED)
    assert status == 200
    assert multipart_parts(content_type, body) == stored_frames(slide.files[0])
    assert relay.count("/frames/") == 1


def test_relay_keeps_connections_alive(relay: HttpRelay) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", relay.port, timeout=30)
    try:
        for _ in range(5):
            connection.request("GET", "/system")
            response = connection.getresponse()
            assert response.status == 200 and not response.will_close
            response.read()
    finally:
        connection.close()
    assert relay.count("/system") == 5


def test_relay_injects_429_with_html_then_recovers(relay: HttpRelay) -> None:
    relay.inject(429, times=2, path_contains="/studies", body=b"<html>quota</html>")
    assert http_get(relay.port, "/system")[0] == 200  # does not match: forwarded
    for _ in range(2):
        status, content_type, body = http_get(relay.port, "/dicom-web/studies")
        assert (status, body) == (429, b"<html>quota</html>")
        assert content_type.startswith("text/html")
    assert http_get(relay.port, "/dicom-web/studies")[0] == 200
    assert relay.count("/studies") == 3


def test_relay_injects_500_and_reset_clears_faults(relay: HttpRelay) -> None:
    relay.inject(500, times=10, path_contains="/frames/", headers={"Retry-After": "1"})
    assert http_get(relay.port, "/dicom-web/x/frames/1")[0] == 500
    relay.reset()
    assert http_get(relay.port, "/system")[0] == 200
    assert http_get(relay.port, "/dicom-web/x/frames/1")[0] != 500


def test_relay_answers_502_when_upstream_is_down() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
    with HttpRelay("127.0.0.1", dead_port) as relay:
        status, _, body = http_get(relay.port, "/system")
    assert status == 502 and b"upstream" in body


def test_relay_latency_is_added(relay: HttpRelay) -> None:
    relay.latency_s = 0.05
    started = time.monotonic()
    assert http_get(relay.port, "/system")[0] == 200
    assert time.monotonic() - started >= 0.05


def sparse_frames_url(slide: GeneratedSlide, numbers: str = "1,2,3") -> str:
    uid = slide.levels[0].instance_uids[0]
    return (f"/dicom-web/studies/{slide.study_uid}/series/{slide.series_uid}"
            f"/instances/{uid}/frames/{numbers}")


def test_relay_cuts_and_thins_multipart_answers(relay: HttpRelay,
                                               test_slides: list[GeneratedSlide]) -> None:
    url = sparse_frames_url(named(test_slides, "sparse"))
    stored = multipart_parts(*http_get(relay.port, url, AS_STORED)[1:])
    relay.inject_fault(FaultMode.CUT_MULTIPART, 1, "/frames/")
    _, content_type, cut = http_get(relay.port, url, AS_STORED)
    boundary = content_type.split("boundary=")[1].split(";")[0].strip('"').encode()
    assert cut.endswith(stored[-1]) and boundary + b"--" not in cut
    relay.inject_fault(FaultMode.FEWER_PARTS, 1, "/frames/")
    assert multipart_parts(*http_get(relay.port, url, AS_STORED)[1:]) == stored[:2]
    fault = relay.inject_fault(FaultMode.GARBAGE_PART, 1, "/frames/", label="image/jpeg")
    _, content_type, garbage = http_get(relay.port, url, AS_STORED)
    parts = multipart_parts(content_type, garbage)
    assert parts[1:] == stored[1:] and parts[0] != stored[0] and len(parts[0]) == len(stored[0])
    assert b"Content-Type: image/jpeg\r\n" in garbage and fault.served == 1


def test_relay_resets_stalls_and_drips(relay: HttpRelay) -> None:
    relay.inject_fault(FaultMode.RESET, 1, "/system")
    with pytest.raises((ConnectionError, http.client.HTTPException)):
        http_get(relay.port, "/system")
    relay.inject_fault(FaultMode.STALL, 1, "/system", hold_s=5.0)
    connection = http.client.HTTPConnection("127.0.0.1", relay.port, timeout=0.5)
    connection.request("GET", "/system")
    with pytest.raises(TimeoutError):
        connection.getresponse()
    connection.close()
    relay.inject_fault(FaultMode.DRIP, 1, "/system", drip_bytes_per_s=10.0)
    connection = http.client.HTTPConnection("127.0.0.1", relay.port, timeout=5)
    connection.request("GET", "/system")
    response = connection.getresponse()
    start = time.monotonic()
    assert len(response.read(5)) == 5 and time.monotonic() - start >= 0.4
    connection.close()


def test_relay_sends_a_wrong_content_length_then_closes(relay: HttpRelay) -> None:
    relay.inject_fault(FaultMode.WRONG_LENGTH, 1, "/system", length_delta=50)
    with pytest.raises(http.client.IncompleteRead):
        http_get(relay.port, "/system")


def test_relay_drops_json_attributes(relay: HttpRelay) -> None:
    relay.inject_fault(FaultMode.DROP_TAGS, 1, "/studies", drop_tags=("0020000D",))
    status, _, body = http_get(relay.port, "/dicom-web/studies")
    assert status == 200 and all("0020000D" not in study for study in json.loads(body))


def test_relay_faults_a_seeded_fraction(relay: HttpRelay) -> None:
    def run() -> list[int]:
        relay.clear_faults()
        relay.inject_fault(FaultMode.ANSWER, None, "/system", status=503, rate=0.5, seed=3)
        return [http_get(relay.port, "/system")[0] for _ in range(12)]

    first, second = run(), run()
    assert first == second and {200, 503} == set(first)


# --------------------------------------------------------------------------- TCP relay


def _timed_gets(port: int, count: int) -> list[float]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    durations = []
    try:
        for _ in range(count):
            started = time.monotonic()
            connection.request("GET", "/system")
            response = connection.getresponse()
            response.read()
            assert response.status == 200
            durations.append(time.monotonic() - started)
    finally:
        connection.close()
    return durations


def test_tcp_relay_adds_round_trips(orthanc: OrthancServer) -> None:
    rtt = 0.05
    with TcpLatencyRelay("127.0.0.1", orthanc.port, rtt) as relay:
        first, second = _timed_gets(relay.port, 2)
        assert first >= 2 * rtt * 0.95, "connection set-up plus one request"
        assert second >= rtt * 0.95
        assert relay.connections == 1
        assert relay.bytes_up > 0 and relay.bytes_down > 0


def test_tcp_relay_serves_concurrent_connections(orthanc: OrthancServer) -> None:
    results: list[float] = []
    with TcpLatencyRelay("127.0.0.1", orthanc.port, 0.02) as relay:
        threads = [threading.Thread(target=lambda: results.extend(_timed_gets(relay.port, 3)))
                   for _ in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert relay.connections == 16
    assert len(results) == 48 and min(results) >= 0.02 * 0.95


def test_tcp_relay_carries_large_bodies_intact(orthanc: OrthancServer,
                                               test_slides: list[GeneratedSlide]) -> None:
    slide = named(test_slides, "jpeg_ybr")
    path = slide.files[0]
    uid = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
    numbers = ",".join(str(n) for n in range(1, 13))
    url = (f"/dicom-web/studies/{slide.study_uid}/series/{slide.series_uid}"
           f"/instances/{uid}/frames/{numbers}")
    with TcpLatencyRelay("127.0.0.1", orthanc.port, 0.0) as relay:
        status, content_type, body = http_get(relay.port, url, AS_STORED)
    assert status == 200
    assert multipart_parts(content_type, body) == stored_frames(path)
    assert relay.bytes_down >= len(body)


def _serve_bytes_once(payload: bytes) -> tuple[socket.socket, threading.Thread]:
    """A loopback listener that sends `payload` to each of two clients, then closes."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        for _ in range(2):
            client, _ = listener.accept()
            with client:
                client.sendall(payload)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener, thread


def _receive_all(port: int) -> tuple[bytes, float]:
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        chunks = []
        while chunk := sock.recv(1 << 20):
            chunks.append(chunk)
    return b"".join(chunks), time.monotonic() - started


def test_tcp_relay_caps_each_connection_bandwidth() -> None:
    """Each of two connections at once through a capped relay gets at most the cap,
    with its bytes intact."""
    payload = np.random.default_rng(7).bytes(600_000)
    listener, thread = _serve_bytes_once(payload)
    with listener, TcpLatencyRelay("127.0.0.1", listener.getsockname()[1], 0.0,
                                   bytes_per_s=2_000_000) as relay:
        results: list[tuple[bytes, float]] = []
        readers = [threading.Thread(target=lambda: results.append(_receive_all(relay.port)))
                   for _ in range(2)]
        for reader in readers:
            reader.start()
        for reader in readers:
            reader.join(timeout=60)
    thread.join(timeout=10)
    assert [body for body, _ in results] == [payload, payload]
    assert min(seconds for _, seconds in results) >= 0.3 * 0.95, "600 kB at 2 MB/s"


def test_tcp_relay_refuses_a_bandwidth_of_zero() -> None:
    with pytest.raises(ValueError, match="bandwidth"):
        TcpLatencyRelay("127.0.0.1", 1, 0.0, bytes_per_s=0)


def test_sixteen_bit_window_is_set(test_slides: list[GeneratedSlide]) -> None:
    ds = pydicom.dcmread(named(test_slides, "uncompressed16").files[0])
    assert ds.BitsAllocated == 16 and ds.PhotometricInterpretation == "MONOCHROME2"
    pixels = ds.pixel_array
    low = float(ds.WindowCenter) - float(ds.WindowWidth) / 2
    high = float(ds.WindowCenter) + float(ds.WindowWidth) / 2
    assert low <= float(np.percentile(pixels, 1)) and float(np.percentile(pixels, 99)) <= high
