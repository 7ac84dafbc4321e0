"""Property-based tests of every parser that takes a server's bytes (issue 12, 4).

For any input (random bytes, random JSON-like structures, valid inputs cut short, with
bits flipped, values of the wrong type, tags missing, sizes zero, negative or huge) each
parser returns a value or raises the project's own error: FetchError (multipart),
MetadataError (JSON, slide model), TileDecodeError (frames). Nothing else may escape,
and nothing may hang: every example has a deadline. Where a round trip makes sense
(multipart built from parts, stored JPEG frames, layouts of valid metadata) it is
checked too.

Examples are derandomized, so a run is reproducible; IDCFS_PROPERTY_SCALE=10 runs ten
times as many (random) examples when hunting for new failures.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import struct
import zlib
from typing import Any

import imagecodecs
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from idcfs.dicom.dicom_json import parse_json_list
from idcfs.dicom.pixels import PixelFormat
from idcfs.errors import FetchError, MetadataError
from idcfs.slide.model import Slide
from idcfs.slide.parse import parse_slide
from idcfs.source.multipart import Part, parse_content_type, split_multipart
from idcfs.tiles.convert import decode_frame, served_growth, served_jpeg, to_8bit
from idcfs.tiles.errors import TileDecodeError
from idcfs.tiles.jpeg_markers import (
    SOI,
    ends_with_marker,
    header_segments,
    jpeg_info,
    with_rgb_app14,
)
from idcfs.tiles.sniff import SYNTAX_CODECS, Codec, j2k_size, looks_like_rle, sniff_codec

SCALE = max(1, int(os.environ.get("IDCFS_PROPERTY_SCALE", "1")))
RANDOM = SCALE > 1


def limits(examples: int, deadline_ms: int = 2000) -> settings:
    """Few examples (the whole file runs in well under a minute), a deadline per example
    against hangs, no example database left in the work tree."""
    return settings(
        max_examples=examples * SCALE,
        deadline=deadline_ms,
        database=None,
        derandomize=not RANDOM,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


WSI = "1.2.840.10008.5.1.4.1.1.77.1.6"
BASELINE = "1.2.840.10008.1.2.4.50"
JPEG_LS = "1.2.840.10008.1.2.4.80"
J2K = "1.2.840.10008.1.2.4.90"
RLE = "1.2.840.10008.1.2.5"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
DEFLATED = "1.2.840.10008.1.2.1.99"
SYNTAXES = [None, "", "1.2.3.4", "1.2.840.10008.1.2.4.100", *SYNTAX_CODECS]


# -- mutations ----------------------------------------------------------------------


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    """`data` cut short, with bits flipped, bytes inserted or a span zeroed."""
    kind = draw(st.sampled_from(["truncate", "flip", "insert", "zero", "tail"]))
    if not data:
        return data
    at = draw(st.integers(0, len(data) - 1))
    if kind == "truncate":
        return data[:at]
    if kind == "flip":
        flips = draw(st.lists(st.tuples(st.integers(0, len(data) - 1), st.integers(0, 7)),
                              min_size=1, max_size=8))
        out = bytearray(data)
        for position, bit in flips:
            out[position] ^= 1 << bit
        return bytes(out)
    if kind == "insert":
        return data[:at] + draw(st.binary(min_size=1, max_size=16)) + data[at:]
    if kind == "zero":
        return data[:at] + bytes(min(16, len(data) - at)) + data[at + 16 :]
    return data[at:]


# -- multipart ------------------------------------------------------------------------

BOUNDARY_CHARS = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ'()+_,-./:=?"
boundaries = st.text(BOUNDARY_CHARS, min_size=1, max_size=70)
header_names = st.text("abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=12).filter(
    lambda name: name.strip("-") == name)
header_values = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=30)


def build_multipart(parts: list[tuple[dict[str, str], bytes]], boundary: str) -> bytes:
    """A multipart/related body as a DICOMweb server writes it."""
    pieces = [b"preamble\r\n"]
    for headers, content in parts:
        lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        pieces.append(b"--" + boundary.encode() + b"\r\n" + lines.encode() + b"\r\n" + content
                      + b"\r\n")
    pieces.append(b"--" + boundary.encode() + b"--\r\n")
    return b"".join(pieces)


@st.composite
def multipart_parts(draw: st.DrawFn) -> tuple[list[tuple[dict[str, str], bytes]], str]:
    boundary = draw(boundaries)
    delimiter = b"\r\n--" + boundary.encode()
    contents = st.binary(max_size=300).filter(lambda data: delimiter not in data + b"\r\n")
    parts = draw(st.lists(st.tuples(st.dictionaries(header_names, header_values, max_size=3),
                                    contents), min_size=1, max_size=5))
    return parts, boundary


@limits(200)
@given(multipart_parts())
def test_multipart_round_trip(case: tuple[list[tuple[dict[str, str], bytes]], str]) -> None:
    parts, boundary = case
    split = split_multipart(build_multipart(parts, boundary), boundary)
    assert split == [Part({k.lower(): v.strip() for k, v in h.items()}, c) for h, c in parts]


@limits(200)
@given(multipart_parts(), st.data())
def test_multipart_cut_short_is_a_fetch_error(case: Any, data: st.DataObject) -> None:
    """Every prefix that ends before the close delimiter is refused, never half-read."""
    parts, boundary = case
    body = build_multipart(parts, boundary)
    closing = body.rindex(b"--" + boundary.encode() + b"--") + len(boundary) + 4
    cut = data.draw(st.integers(0, closing - 1))
    with pytest.raises(FetchError):
        split_multipart(body[:cut], boundary)


@limits(300)
@given(st.one_of(st.binary(max_size=400), multipart_parts().flatmap(
    lambda case: mutated(build_multipart(*case)))), st.one_of(boundaries, st.text(max_size=8)))
def test_multipart_any_body_gives_parts_or_fetch_error(body: bytes, boundary: str) -> None:
    try:
        parts = split_multipart(body, boundary)
    except FetchError:
        return
    assert all(isinstance(part.content, bytes) for part in parts)
    assert sum(len(part.content) for part in parts) <= len(body)


@limits(300)
@given(st.one_of(st.text(max_size=80), st.builds(
    lambda media, params: media + "".join(f"; {k}={v}" for k, v in params),
    st.sampled_from(["multipart/related", "application/octet-stream", "", "x"]),
    st.lists(st.tuples(st.text(max_size=10), st.text(max_size=10)), max_size=4))))
def test_content_type_any_text_gives_a_type_and_parameters(value: str) -> None:
    media_type, params = parse_content_type(value)
    assert isinstance(media_type, str)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in params.items())


def test_multipart_boundary_that_is_not_ascii_is_a_fetch_error() -> None:
    with pytest.raises(FetchError, match="boundary"):
        split_multipart(b"--\xe9\r\n\r\nx\r\n--\xe9--", "\xe9")


# -- DICOM JSON -----------------------------------------------------------------------

TAGS = [
    "00080016", "00080018", "00080008", "00280010", "00280011", "00280002", "00280100",
    "00280101", "00280103", "00280004", "00280006", "00280008", "00480006", "00480007",
    "00209311", "52009230", "52009229", "0048021A", "0048021E", "0048021F", "0040074A",
    "00480303", "00480302", "00209228", "00480105", "00480106", "00480207", "00020010",
    "00083002", "00281050", "00281051", "00480001", "00480002", "00480008", "00289110",
    "00280030",
]
VRS = ["UI", "CS", "US", "UL", "IS", "DS", "FD", "SQ", "SL", "LO", "OB", "xx"]
ODD_NUMBERS = [0, -1, -256, 1, 2**31, 2**32 + 1, 2**64, 10**30, 1.5, -0.0, 1e308]
ODD_STRINGS = ["", " ", "abc", "1.5", "-1", "0", "1e999", "NaN", "inf", "²", "256", "\\",
               "TILED_SPARSE", "TILED_FULL", WSI, "VOLUME", "LABEL", "YBR_FULL_422", "RGB"]
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.sampled_from(ODD_NUMBERS),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(ODD_STRINGS),
    st.text(max_size=12),
)
json_like = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.sampled_from([*TAGS, "vr", "Value", "x"]), children, max_size=4),
    max_leaves=24,
)
elements = st.one_of(
    json_like,
    st.fixed_dictionaries({"vr": st.sampled_from(VRS)}, optional={"Value": st.one_of(
        st.lists(json_like, max_size=3), json_like)}),
)
random_instances = st.dictionaries(st.sampled_from(TAGS), elements, max_size=16)


def element(vr: str, *values: Any) -> dict[str, Any]:
    return {"vr": vr, "Value": list(values)}


def position(column: int, row: int, z: float | None = None) -> dict[str, Any]:
    place = {"0048021E": element("SL", column), "0048021F": element("SL", row)}
    if z is not None:
        place["0040074A"] = element("DS", z)
    return {"0048021A": element("SQ", place)}


@st.composite
def valid_instance(draw: st.DrawFn, uid: str) -> dict[str, Any]:
    """A usable instance: TILED_FULL (maybe several planes, maybe a concatenation part)
    or TILED_SPARSE (random positions and Z), any flavour, small grids."""
    tile_w, tile_h = draw(st.integers(8, 512)), draw(st.integers(8, 512))
    columns, rows = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    width = draw(st.integers((columns - 1) * tile_w + 1, columns * tile_w))
    height = draw(st.integers((rows - 1) * tile_h + 1, rows * tile_h))
    flavour = draw(st.sampled_from(["VOLUME", "VOLUME", "LABEL", "OVERVIEW", "THUMBNAIL"]))
    meta = {
        "00080016": element("UI", WSI), "00080018": element("UI", uid),
        "00080008": element("CS", "ORIGINAL", "PRIMARY", flavour, "NONE"),
        "00280010": element("US", tile_h), "00280011": element("US", tile_w),
        "00280002": element("US", 3), "00280100": element("US", 8),
        "00280004": element("CS", draw(st.sampled_from(["YBR_FULL_422", "RGB"]))),
        "00480006": element("UL", width), "00480007": element("UL", height),
    }
    if draw(st.booleans()):
        cells = [(c, r) for r in range(rows) for c in range(columns)]
        chosen = draw(st.lists(st.sampled_from(cells), min_size=1, max_size=len(cells) * 2))
        zs = draw(st.lists(st.sampled_from([None, 0.0, 2.5, -1.0]), min_size=len(chosen),
                           max_size=len(chosen)))
        meta["00209311"] = element("CS", "TILED_SPARSE")
        meta["52009230"] = element("SQ", *(position(c * tile_w + 1, r * tile_h + 1, z)
                                           for (c, r), z in zip(chosen, zs, strict=True)))
        meta["00280008"] = element("IS", len(chosen))
    else:
        planes = draw(st.integers(1, 3))
        meta["00209311"] = element("CS", "TILED_FULL")
        meta["00480303"] = element("UL", planes)
        meta["00280008"] = element("IS", draw(st.integers(1, columns * rows * planes)))
        if draw(st.booleans()):
            meta["52009229"] = element("SQ", {"0048021A": element("SQ", {
                "0040074A": element("DS", draw(st.sampled_from([0.0, 1.0, "0.0"])))})})
    return meta


GARBAGE = st.one_of(json_like, st.sampled_from(ODD_NUMBERS), st.sampled_from(ODD_STRINGS))


@st.composite
def mutated_instance(draw: st.DrawFn, meta: dict[str, Any]) -> dict[str, Any]:
    """A valid instance with some tags deleted, their values or VRs replaced by garbage,
    their Value arrays emptied, or a per-frame position broken."""
    meta = json.loads(json.dumps(meta))
    for _ in range(draw(st.integers(1, 4))):
        tag = draw(st.sampled_from(sorted(meta)))
        how = draw(st.sampled_from(["delete", "value", "vr", "empty", "element", "frame"]))
        if how in ("value", "vr", "empty") and not isinstance(meta[tag], dict):
            how = "element"
        if how == "delete":
            del meta[tag]
        elif how == "value":
            meta[tag]["Value"] = [draw(GARBAGE)]
        elif how == "vr":
            meta[tag]["vr"] = draw(st.sampled_from(VRS))
        elif how == "empty":
            meta[tag].pop("Value", None)
        elif how == "element":
            meta[tag] = draw(GARBAGE)
        elif "52009230" in meta and isinstance(meta["52009230"], dict):
            frames = meta["52009230"].get("Value") or [{}]
            frames[draw(st.integers(0, len(frames) - 1))] = draw(GARBAGE)
    return meta


def assert_consistent(slide: Slide) -> None:
    """What the filesystem relies on: positive sizes, tiles inside their grid, frame
    numbers of the instance, plane indices that exist, slide.json strict JSON."""
    for level in slide.levels:
        assert level.width >= 1 and level.height >= 1
        assert level.tile_width >= 1 and level.tile_height >= 1
        for grid in level.grids:
            assert 0 <= grid.plane_index < len(slide.focal_planes)
            assert grid.optical_path in slide.optical_paths
            for tile in grid.tiles:
                assert 0 <= tile.column < level.columns and 0 <= tile.row < level.rows
                frames = slide.instances[tile.frame.instance_uid].frame_count
                assert 1 <= tile.frame.number <= frames
            names = [tile.file_name for tile in grid.tiles]
            assert len(names) == len(set(names))
    for image in slide.associated:
        assert image.instance_uid in slide.instances
    json.dumps(slide.describe(), allow_nan=False)


def parsed_or_metadata_error(metadata: list[Any]) -> Slide | None:
    try:
        slide = parse_slide("s", "r", metadata)
    except MetadataError:
        return None
    assert_consistent(slide)
    return slide


@limits(300)
@given(st.binary(max_size=300) | json_like.map(lambda v: json.dumps(v).encode()))
def test_json_list_any_body_gives_objects_or_metadata_error(body: bytes) -> None:
    try:
        parsed = parse_json_list(body, "metadata")
    except MetadataError:
        return
    assert isinstance(parsed, list) and all(isinstance(item, dict) for item in parsed)


def test_json_list_nested_too_deep_is_a_metadata_error() -> None:
    with pytest.raises(MetadataError):
        parse_json_list(b"[" * 100_000, "metadata")


@limits(200)
@given(st.lists(st.one_of(random_instances, json_like), max_size=4))
def test_slide_from_random_metadata_is_a_slide_or_metadata_error(metadata: list[Any]) -> None:
    parsed_or_metadata_error(metadata)


@limits(200)
@given(st.lists(st.integers(0, 9), min_size=1, max_size=4).flatmap(
    lambda ids: st.tuples(*(valid_instance(f"1.{i}").flatmap(mutated_instance) for i in ids))))
def test_slide_from_mutated_metadata_is_a_slide_or_metadata_error(metadata: Any) -> None:
    parsed_or_metadata_error(list(metadata))


@limits(200)
@given(st.lists(st.integers(0, 9), min_size=1, max_size=4, unique=True).flatmap(
    lambda ids: st.tuples(*(valid_instance(f"1.{i}") for i in ids))))
def test_slide_from_valid_metadata_keeps_every_frame_in_the_grid(metadata: Any) -> None:
    slide = parsed_or_metadata_error(list(metadata))
    assert slide is not None
    for meta in metadata:
        uid = meta["00080018"]["Value"][0]
        info = slide.instances[uid]
        assert (info.total_width, info.total_height) == (
            meta["00480006"]["Value"][0], meta["00480007"]["Value"][0]) or info.flavour != "VOLUME"


@limits(100)
@given(st.data())
def test_sparse_at_z0_and_full_without_z_are_one_plane(data: st.DataObject) -> None:
    """Levels that mix TILED_SPARSE at one Z with TILED_FULL giving no Z: one plane."""
    z = data.draw(st.sampled_from([0.0, 1.5, -2.0]))
    sparse = {**data.draw(valid_instance("1.1")), "00209311": element("CS", "TILED_SPARSE"),
              "00280008": element("IS", 1), "52009230": element("SQ", position(1, 1, z))}
    sparse["00080008"] = element("CS", "ORIGINAL", "PRIMARY", "VOLUME", "NONE")
    full = data.draw(valid_instance("1.2"))
    full.update({"00209311": element("CS", "TILED_FULL"), "00480303": element("UL", 1),
                 "00080008": element("CS", "DERIVED", "PRIMARY", "VOLUME", "RESAMPLED")})
    full.pop("52009229", None)
    slide = parse_slide("s", "r", [sparse, full])
    assert slide.focal_planes == [z]
    assert not slide.has_plane_directories


@limits(300)
@given(st.one_of(random_instances, valid_instance("1.1").flatmap(mutated_instance)))
def test_pixel_format_is_valid_or_a_value_error(meta: dict[str, Any]) -> None:
    try:
        pixels = PixelFormat.from_dicom_json(meta)
    except ValueError:
        return
    assert 1 <= pixels.rows <= 65535 and 1 <= pixels.columns <= 65535
    assert pixels.samples_per_pixel in (1, 3)
    assert 1 <= pixels.bits_stored <= pixels.bits_allocated <= 64
    assert pixels.frame_bytes >= 0
    for value in (pixels.window_center, pixels.window_width):
        assert value is None or math.isfinite(value)


# -- JPEG markers ---------------------------------------------------------------------


def pillow_jpeg(pixels: np.ndarray, **options: Any) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", **options)
    return buffer.getvalue()


@st.composite
def images(draw: st.DrawFn, channels: int = 3, max_side: int = 48) -> np.ndarray:
    height, width = draw(st.integers(1, max_side)), draw(st.integers(1, max_side))
    seed = draw(st.integers(0, 2**32 - 1))
    shape = (height, width, channels) if channels > 1 else (height, width)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


@st.composite
def baseline_jpegs(draw: st.DrawFn) -> bytes:
    grey = draw(st.booleans())
    pixels = draw(images(1 if grey else 3))
    options: dict[str, Any] = {"quality": draw(st.integers(30, 95))}
    if not grey:
        options["subsampling"] = draw(st.sampled_from([0, 1, 2]))
    return pillow_jpeg(pixels, **options)


jpeg_like = st.one_of(
    st.binary(max_size=200),
    st.binary(max_size=200).map(lambda data: SOI + data),
    baseline_jpegs(),
    baseline_jpegs().flatmap(mutated),
)


@limits(300)
@given(jpeg_like)
def test_marker_walk_never_raises(data: bytes) -> None:
    segments = list(header_segments(data))
    assert all(0 <= s.start < s.end <= len(data) for s in segments)
    info = jpeg_info(data)
    assert info is None or info.components >= 0
    ends_with_marker(data, b"\xff\xd9")
    try:
        fixed = with_rgb_app14(data)
    except TileDecodeError:
        assert info is None
        return
    assert jpeg_info(fixed) is not None


@limits(100)
@given(baseline_jpegs())
def test_app14_keeps_the_scan_and_is_idempotent(frame: bytes) -> None:
    fixed = with_rgb_app14(frame)
    info = jpeg_info(fixed)
    assert info is not None and info.has_app14 and not info.has_jfif
    assert with_rgb_app14(fixed) == fixed
    scan = list(header_segments(frame))[-1].end
    assert fixed.endswith(frame[scan:])


# -- frames ---------------------------------------------------------------------------


@st.composite
def pixel_formats(draw: st.DrawFn) -> PixelFormat:
    """Descriptions PixelFormat.from_dicom_json accepts: small tiles, any layout."""
    samples = draw(st.sampled_from([1, 3]))
    allocated = draw(st.sampled_from([1, 8, 16, 32]))
    photometric = draw(st.sampled_from(
        ["MONOCHROME2", "MONOCHROME1", "PALETTE COLOR"] if samples == 1
        else ["RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "XYZ"]))
    return PixelFormat(
        rows=draw(st.integers(1, 64)), columns=draw(st.integers(1, 64)),
        samples_per_pixel=samples, bits_allocated=allocated,
        bits_stored=draw(st.integers(1, allocated)),
        pixel_representation=draw(st.integers(0, 1)), photometric=photometric,
        planar_configuration=draw(st.integers(0, 1)),
        window_center=draw(st.none() | st.floats(-1e6, 1e6)),
        window_width=draw(st.none() | st.floats(1e-3, 1e6)),
    )


def encoded_frames(pixels: np.ndarray) -> dict[str, tuple[bytes, str]]:
    """One frame of `pixels` (uint8 HxWx3) in each codec family idcfs decodes."""
    rle = _rle_frame(pixels)
    return {
        "jpeg": (pillow_jpeg(pixels, quality=90), BASELINE),
        "j2k": (bytes(imagecodecs.jpeg2k_encode(pixels, codecformat="J2K", reversible=True)),
                J2K),
        "jpegls": (bytes(imagecodecs.jpegls_encode(pixels)), JPEG_LS),
        "rle": (rle, RLE),
        "native": (pixels.tobytes(), EXPLICIT_LE),
        "deflated": (zlib.compress(pixels.tobytes())[2:-4], DEFLATED),
    }


def _rle_frame(pixels: np.ndarray) -> bytes:
    from pydicom.pixels.encoders import RLELosslessEncoder

    height, width = pixels.shape[:2]
    return bytes(RLELosslessEncoder.encode(
        pixels.tobytes(), rows=height, columns=width, samples_per_pixel=3, bits_allocated=8,
        bits_stored=8, pixel_representation=0, photometric_interpretation="RGB",
        planar_configuration=0, number_of_frames=1, byteorder="<"))


@st.composite
def frames_and_formats(draw: st.DrawFn) -> tuple[bytes, PixelFormat, str | None]:
    """Random bytes, or a valid frame of any codec mutated, with a random description
    and transfer syntax (often the right ones, so decoding gets deep)."""
    pixels = draw(images(3, max_side=24))
    height, width = pixels.shape[:2]
    frame, syntax = encoded_frames(pixels)[draw(st.sampled_from(
        ["jpeg", "j2k", "jpegls", "rle", "native", "deflated"]))]
    right = PixelFormat(height, width, 3, 8, 8, 0, "RGB")
    frame = draw(st.one_of(st.just(frame), mutated(frame), st.binary(max_size=300)))
    pixel_format = draw(st.one_of(st.just(right), pixel_formats()))
    return frame, pixel_format, draw(st.one_of(st.just(syntax), st.sampled_from(SYNTAXES)))


@limits(400, deadline_ms=5000)
@given(frames_and_formats())
def test_any_frame_is_served_as_a_jpeg_or_a_tile_decode_error(
    case: tuple[bytes, PixelFormat, str | None],
) -> None:
    frame, pixels, syntax = case
    try:
        served = served_jpeg(frame, pixels, syntax)
    except TileDecodeError:
        return
    assert served.startswith(SOI)


@limits(300, deadline_ms=5000)
@given(frames_and_formats())
def test_any_frame_decodes_within_its_tile_or_raises_tile_decode_error(
    case: tuple[bytes, PixelFormat, str | None],
) -> None:
    frame, pixels, syntax = case
    try:
        array = decode_frame(frame, pixels, syntax)
    except TileDecodeError:
        return
    assert array.ndim in (2, 3) and 1 <= array.shape[0] <= pixels.rows
    assert 1 <= array.shape[1] <= pixels.columns
    assert to_8bit(array, pixels).dtype == np.uint8


@limits(300)
@given(st.binary(max_size=300), pixel_formats())
def test_sniffing_any_bytes_names_a_codec_or_raises(frame: bytes, pixels: PixelFormat) -> None:
    assert isinstance(looks_like_rle(frame), bool)
    size = j2k_size(frame)
    assert size is None or min(size) >= 0
    with contextlib.suppress(TileDecodeError):
        assert isinstance(sniff_codec(frame, pixels), Codec)


@limits(150)
@given(baseline_jpegs(), st.sampled_from(["YBR_FULL_422", "YBR_FULL", None]))
def test_stored_jpeg_keeps_its_bytes(frame: bytes, syntax_photometric: str | None) -> None:
    """YBR and MONOCHROME2 baseline frames are served byte for byte; RGB ones gain only
    the APP14 marker (PIL writes its frames as YCbCr; the marker is what is checked)."""
    info = jpeg_info(frame)
    assert info is not None
    grey = info.components == 1
    photometric = "MONOCHROME2" if grey else (syntax_photometric or "YBR_FULL_422")
    pixels = PixelFormat(info.height, info.width, 1 if grey else 3, 8, 8, 0, photometric)
    assert served_jpeg(frame, pixels, BASELINE) == frame
    assert served_jpeg(frame, pixels, None) == frame
    if not grey:
        rgb = PixelFormat(info.height, info.width, 3, 8, 8, 0, "RGB")
        assert served_jpeg(frame, rgb, BASELINE) == with_rgb_app14(frame)


@limits(150)
@given(baseline_jpegs(), st.sampled_from(["RGB", "YBR_FULL_422"]), st.booleans(),
       st.integers(0, 4096))
def test_served_size_is_foretold_from_the_header(frame: bytes, photometric: str,
                                                 with_app14: bool, cut: int) -> None:
    """The size a listing shows for a frame not fetched yet (its stored length plus
    `served_growth` of its first bytes) is the size `served_jpeg` serves, whatever the
    frame's APP segments; when the bytes held end before SOS it is not guessed."""
    info = jpeg_info(frame)
    assert info is not None
    if info.components == 1:
        photometric = "MONOCHROME2"
    if with_app14:
        frame = with_rgb_app14(frame)
    pixels = PixelFormat(info.height, info.width, info.components, 8, 8, 0, photometric)
    head = frame[:cut]
    growth = served_growth(head, pixels, BASELINE)
    scan = list(header_segments(frame))[-1].end
    if cut >= scan:
        assert growth is not None
    if growth is not None:
        assert len(frame) + growth == len(served_jpeg(frame, pixels, BASELINE))


@limits(60, deadline_ms=5000)
@given(images(3, max_side=40), st.data())
def test_lossless_frames_decode_to_their_pixels(pixels: np.ndarray, data: st.DataObject) -> None:
    """Round trip of every lossless codec, cropped or not: decode_frame gives the pixels."""
    height, width = pixels.shape[:2]
    tile = PixelFormat(height + data.draw(st.integers(0, 8)), width + data.draw(
        st.integers(0, 8)), 3, 8, 8, 0, "RGB")
    for name, (frame, syntax) in encoded_frames(pixels).items():
        if name == "jpeg":
            continue  # lossy
        if name in ("native", "deflated", "rle") and (tile.rows, tile.columns) != (height, width):
            continue  # uncompressed and RLE frames always have the tile's size
        assert np.array_equal(decode_frame(frame, tile, syntax), pixels), name


def test_j2k_size_reads_the_siz_segment() -> None:
    frame = bytes(imagecodecs.jpeg2k_encode(np.zeros((7, 9, 3), np.uint8), codecformat="J2K"))
    assert j2k_size(frame) == (9, 7)
    jp2 = bytes(imagecodecs.jpeg2k_encode(np.zeros((7, 9, 3), np.uint8), codecformat="JP2"))
    assert j2k_size(jp2) == (9, 7)
    assert j2k_size(b"\xff\x4f\xff\x51" + b"\0" * 10) is None


def test_a_header_claiming_a_huge_image_is_refused_before_decoding() -> None:
    """A corrupt SOF saying 65535x65535 must not make libjpeg allocate 12 GB."""
    frame = bytearray(pillow_jpeg(np.zeros((16, 16, 3), np.uint8)))
    sof = next(s for s in header_segments(bytes(frame)) if s.marker == 0xC0)
    struct.pack_into(">HH", frame, sof.start + 5, 65535, 65535)
    pixels = PixelFormat(256, 256, 3, 8, 8, 0, "RGB", 0)
    with pytest.raises(TileDecodeError, match="65535x65535"):
        decode_frame(bytes(frame), pixels, BASELINE)
    with pytest.raises(TileDecodeError, match="larger than the metadata"):
        served_jpeg(bytes(frame), PixelFormat(256, 256, 3, 8, 8, 0, "YBR_FULL_422"), BASELINE)


def test_a_deflate_bomb_is_not_inflated_whole() -> None:
    bomb = zlib.compress(b"\0" * (64 << 20))[2:-4]
    with pytest.raises(TileDecodeError, match="bytes"):
        decode_frame(bomb, PixelFormat(16, 16, 3, 8, 8, 0, "RGB"), DEFLATED)
