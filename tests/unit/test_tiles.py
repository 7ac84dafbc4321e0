"""Unit tests of idcfs.tiles: stored DICOM frames to served JPEG files (no server)."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import imagecodecs
import numpy as np
import pytest
from PIL import Image
from pydicom.pixels import convert_color_space
from pydicom.pixels.encoders import RLELosslessEncoder

from idcfs.dicom.frames import strip_jpeg_padding
from idcfs.dicom.pixels import PixelFormat
from idcfs.tiles.convert import (
    DEFAULT_QUALITY,
    TileDecodeError,
    decode_frame,
    encode_jpeg,
    psnr,
    served_jpeg,
    to_8bit,
)
from idcfs.tiles.jpeg_markers import jpeg_info, with_rgb_app14

BASELINE = "1.2.840.10008.1.2.4.50"
EXTENDED = "1.2.840.10008.1.2.4.51"
LOSSLESS = "1.2.840.10008.1.2.4.70"
JPEG_LS = "1.2.840.10008.1.2.4.80"
J2K_LOSSLESS = "1.2.840.10008.1.2.4.90"
J2K = "1.2.840.10008.1.2.4.91"
HTJ2K_LOSSLESS = "1.2.840.10008.1.2.4.201"
RLE = "1.2.840.10008.1.2.5"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
BIG_ENDIAN = "1.2.840.10008.1.2.2"
DEFLATED = "1.2.840.10008.1.2.1.99"
SIZE = 256
MIN_PSNR = 40.0
REAL_DIR = Path(__file__).parent.parent / "data" / "real"


# -- synthetic tiles ----------------------------------------------------------------


def _field(rng: np.random.Generator, cell: int, size: int = SIZE) -> np.ndarray:
    """Smooth random field in [0, 1]: coarse noise upsampled bicubically."""
    coarse = (rng.random((max(2, size // cell),) * 2) * 255).astype(np.uint8)
    smooth = Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(smooth, dtype=np.float64) / 255.0


def tissue(seed: int = 0, grain: float = 4.0, size: int = SIZE) -> np.ndarray:
    """H&E-like RGB tile: background, pink stroma, purple nuclei, sensor grain."""
    rng = np.random.default_rng(seed)
    mask = np.clip((_field(rng, 64, size) - 0.35) * 6, 0, 1)[..., None]
    nuclei = (np.clip((_field(rng, 6, size) - 0.6) * 5, 0, 1) * mask[..., 0])[..., None]
    stroma = _field(rng, 12, size)[..., None]
    pink = np.array([225.0, 140, 185]) * (1 - stroma) + np.array([200.0, 110, 170]) * stroma
    image = np.array([242.0, 240, 245]) * (1 - mask) + pink * mask
    image = image * (1 - nuclei) + np.array([85.0, 55, 135]) * nuclei
    image += rng.normal(0, grain, (size, size, 1)) + rng.normal(0, grain / 2, (size, size, 3))
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def fluorescence(seed: int = 0, bits: int = 12, signed: bool = False) -> np.ndarray:
    """Single-channel tile of `bits` bits: dark background, bright cells, shot-like grain."""
    rng = np.random.default_rng(seed)
    top = (1 << bits) - 1
    cells = np.clip((_field(rng, 8) - 0.45) * 3, 0, 1)
    values = top * (0.05 + 0.8 * cells * _field(rng, 32)) + rng.normal(0, top * 0.01, cells.shape)
    values = np.clip(np.rint(values), 0, top)
    if signed:
        return (values - (1 << (bits - 1))).astype(np.int16)
    return values.astype(np.uint16)


def rgb_format(photometric: str = "RGB", planar: int = 0) -> PixelFormat:
    return PixelFormat(SIZE, SIZE, 3, 8, 8, 0, photometric, planar)


def mono_format(bits: int = 12, signed: bool = False, **extra: object) -> PixelFormat:
    photometric = str(extra.pop("photometric", "MONOCHROME2"))
    return PixelFormat(SIZE, SIZE, 1, 16, bits, int(signed), photometric, **extra)  # type: ignore[arg-type]


def pillow_jpeg(image: Image.Image, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", **options)
    return buffer.getvalue()


def decoded(jpeg: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(jpeg)))


def rgb_components_jpeg(rgb: np.ndarray, jfif: bool) -> bytes:
    """A JPEG whose three components hold R, G, B (as DICOM RGB frames do), component
    ids 1-2-3, no APP14; with or without the JFIF APP0 that Pillow writes."""
    image = Image.frombytes("YCbCr", (rgb.shape[1], rgb.shape[0]), rgb.tobytes())
    data = pillow_jpeg(image, quality=95, subsampling=0)
    assert data[2:4] == b"\xff\xe0" and data[6:11] == b"JFIF\0"
    if jfif:
        return data
    app0_end = 4 + struct.unpack_from(">H", data, 4)[0]
    return data[:2] + data[app0_end:]


def scan_data(jpeg: bytes) -> bytes:
    """Everything from the SOS marker on: the entropy-coded data."""
    return jpeg[jpeg.index(b"\xff\xda") :]


# -- rule 1: YBR / MONOCHROME2 baseline JPEG served as stored ------------------------


@pytest.mark.parametrize("syntax", [BASELINE, None])
def test_ybr_jpeg_is_served_byte_for_byte(syntax: str | None) -> None:
    frame = pillow_jpeg(Image.fromarray(tissue(1)), quality=80)  # YCbCr 4:2:0, JFIF
    for photometric in ("YBR_FULL_422", "YBR_FULL"):
        assert served_jpeg(frame, rgb_format(photometric), syntax) == frame


def test_monochrome2_jpeg_is_served_byte_for_byte() -> None:
    frame = pillow_jpeg(Image.fromarray(tissue(2)[..., 1]), quality=85)
    pixels = PixelFormat(SIZE, SIZE, 1, 8, 8, 0, "MONOCHROME2")
    assert served_jpeg(frame, pixels, BASELINE) == frame
    assert served_jpeg(frame, pixels, None) == frame


def test_padded_ybr_jpeg_is_served_as_stored_up_to_its_eoi() -> None:
    stored = pillow_jpeg(Image.fromarray(tissue(3)), quality=80)
    frame = stored + b"\0"  # DICOM's pad byte, which DICOMweb servers return
    assert served_jpeg(frame, rgb_format("YBR_FULL_422"), BASELINE) == stored
    assert served_jpeg(stored, rgb_format("YBR_FULL_422"), BASELINE) == stored


# -- rule 2: RGB baseline JPEG gets an Adobe APP14 ------------------------------------


@pytest.mark.parametrize("jfif", [False, True])
@pytest.mark.parametrize("syntax", [BASELINE, None])
def test_rgb_jpeg_gets_app14_and_decodes_to_right_colours(jfif: bool, syntax: str | None) -> None:
    source = tissue(4)
    frame = rgb_components_jpeg(source, jfif=jfif)
    wrong = np.abs(decoded(frame).astype(float) - source).mean()
    assert wrong > 20, "the fixture must look wrong to a decoder that assumes YCbCr"

    served = served_jpeg(frame, rgb_format("RGB"), syntax)

    info = jpeg_info(served)
    assert info is not None and info.has_app14 and info.adobe_transform == 0
    assert not info.has_jfif
    assert scan_data(served) == scan_data(frame), "no re-encoding"
    assert len(served) == len(frame) + 16 - (18 if jfif else 0)
    error = np.abs(decoded(served).astype(float) - source)
    assert error.mean() < 2.0 and np.percentile(error, 99) < 10
    assert psnr(decoded(served), source) > 40
    rgb = decode_frame(frame, rgb_format("RGB"), syntax)
    assert np.abs(rgb.astype(float) - source).mean() < 2.0


def test_rgb_jpeg_with_app14_is_served_unchanged() -> None:
    source = tissue(5)
    frame = imagecodecs.jpeg8_encode(source, level=95, colorspace="RGB", outcolorspace="RGB")
    assert jpeg_info(frame).has_app14  # type: ignore[union-attr]
    served = served_jpeg(frame, rgb_format("RGB"), BASELINE)
    assert served == frame
    assert np.abs(decoded(served).astype(float) - source).mean() < 2.0


def test_with_rgb_app14_drops_jfif_next_to_an_existing_app14() -> None:
    frame = rgb_components_jpeg(tissue(6), jfif=True)
    adobe = b"\xff\xee\x00\x0eAdobe\x00\x64\x00\x00\x00\x00\x00"  # transform 0
    both = frame[:2] + adobe + frame[2:]
    info = jpeg_info(both)
    assert info is not None and info.has_app14 and info.has_jfif
    fixed = with_rgb_app14(both)
    assert jpeg_info(fixed) == jpeg_info(with_rgb_app14(frame))
    assert fixed == with_rgb_app14(frame)


@pytest.mark.parametrize("kind", ["rgb_jfif", "rgb", "rgb_app14", "ybr"])
def test_frames_sharing_a_header_are_served_as_each_alone(kind: str) -> None:
    """The header of the frames before is remembered (`_RecentHeads`): each frame's
    bytes are still exactly what parsing its own header gives, and a truncated one that
    starts with a remembered header still raises."""
    def frame_of(seed: int) -> bytes:
        source = tissue(seed)
        if kind == "rgb_app14":
            return imagecodecs.jpeg8_encode(source, level=95, colorspace="RGB",
                                            outcolorspace="RGB")
        if kind == "ybr":
            return pillow_jpeg(Image.fromarray(source), quality=90)
        return rgb_components_jpeg(source, jfif=kind == "rgb_jfif")

    pixels = rgb_format("YBR_FULL_422" if kind == "ybr" else "RGB")
    frames = [frame_of(seed) for seed in (11, 12, 13)]
    sos = frames[0].index(b"\xff\xda")
    assert all(frame[:sos] == frames[0][:sos] for frame in frames), "one header"
    expected = [frame if kind == "ybr" else with_rgb_app14(frame) for frame in frames]
    for _ in range(2):
        assert [served_jpeg(frame + b"\x00", pixels, BASELINE) for frame in frames] == expected
    with pytest.raises(TileDecodeError, match="truncated"):
        served_jpeg(frames[1][: len(frames[1]) // 2], pixels, BASELINE)
    other = pillow_jpeg(Image.fromarray(tissue(14)[:128]), quality=80)  # another header
    assert served_jpeg(other, rgb_format("YBR_FULL_422"), BASELINE) == other


def test_jpeg_info_reads_the_frame_header() -> None:
    frame = pillow_jpeg(Image.fromarray(tissue(7)[:100, :60]), quality=80)
    info = jpeg_info(frame)
    assert info is not None
    assert (info.sof_marker, info.precision, info.components) == (0xC0, 8, 3)
    assert (info.width, info.height) == (60, 100)
    assert info.has_jfif and not info.has_app14 and info.is_baseline_8bit and info.is_complete
    assert jpeg_info(b"not a jpeg") is None
    assert jpeg_info(frame[:20]) is None


# -- rule 3: decoded and re-encoded ----------------------------------------------------


def _served_psnr(frame: bytes, pixels: PixelFormat, syntax: str | None) -> float:
    """PSNR of the served JPEG against the decoded source after the same 8-bit scaling."""
    served = served_jpeg(frame, pixels, syntax)
    assert served[:2] == b"\xff\xd8"
    reference = to_8bit(decode_frame(frame, pixels, syntax), pixels)
    image = decoded(served)
    assert image.shape == reference.shape
    assert served_jpeg(frame, pixels, syntax) == served, "deterministic output"
    return psnr(image, reference)


def _colour_cases() -> dict[str, tuple[bytes, PixelFormat, str, float]]:
    """name -> (frame, pixel format, transfer syntax, max abs error of decode vs source)."""
    rgb = tissue(10)
    ybr = convert_color_space(rgb, "RGB", "YBR_FULL")
    native = dict(
        rows=SIZE,
        columns=SIZE,
        samples_per_pixel=3,
        bits_allocated=8,
        bits_stored=8,
        pixel_representation=0,
        photometric_interpretation="RGB",
        planar_configuration=0,
        number_of_frames=1,
    )
    return {
        "j2k_lossy": (imagecodecs.jpeg2k_encode(rgb, level=45), rgb_format("YBR_ICT"), J2K, 40),
        "j2k_lossless": (
            imagecodecs.jpeg2k_encode(rgb, reversible=True),
            rgb_format("YBR_RCT"),
            J2K_LOSSLESS,
            0,
        ),
        "htj2k_lossless": (
            imagecodecs.htj2k_encode(rgb, reversible=True),
            rgb_format("YBR_RCT"),
            HTJ2K_LOSSLESS,
            0,
        ),
        "jpeg_ls": (imagecodecs.jpegls_encode(rgb), rgb_format(), JPEG_LS, 0),
        "jpeg_lossless": (
            imagecodecs.jpeg8_encode(rgb, lossless=True, predictor=1),
            rgb_format(),
            LOSSLESS,
            0,
        ),
        "rle": (
            RLELosslessEncoder.encode(rgb.tobytes(), **native, byteorder="<"),
            rgb_format(),
            RLE,
            0,
        ),
        "native_rgb": (rgb.tobytes(), rgb_format(), EXPLICIT_LE, 0),
        "native_implicit": (rgb.tobytes(), rgb_format(), IMPLICIT_LE, 0),
        "native_ybr_full": (ybr.tobytes(), rgb_format("YBR_FULL"), EXPLICIT_LE, 2),
        "native_planar": (
            np.ascontiguousarray(rgb.transpose(2, 0, 1)).tobytes(),
            rgb_format(planar=1),
            EXPLICIT_LE,
            0,
        ),
    }


COLOUR_CASES = _colour_cases()


@pytest.mark.parametrize("name", sorted(COLOUR_CASES))
@pytest.mark.parametrize("known_syntax", [True, False], ids=["syntax", "sniffed"])
def test_colour_frames_are_decoded_and_reencoded(name: str, known_syntax: bool) -> None:
    frame, pixels, syntax, tolerance = COLOUR_CASES[name]
    used_syntax = syntax if known_syntax else None
    source = tissue(10)
    array = decode_frame(frame, pixels, used_syntax)
    assert array.shape == source.shape and array.dtype == np.uint8
    assert np.abs(array.astype(int) - source).max() <= tolerance
    assert _served_psnr(frame, pixels, used_syntax) >= MIN_PSNR


def test_native_ybr_full_422_is_upsampled_to_rgb() -> None:
    rgb = tissue(11)
    ybr = convert_color_space(rgb, "RGB", "YBR_FULL").astype(np.float64)
    pairs = ybr.reshape(SIZE, SIZE // 2, 2, 3)
    packed = np.concatenate([pairs[..., 0], pairs[:, :, :, 1:].mean(axis=2)], axis=-1)
    frame = np.rint(packed).astype(np.uint8).tobytes()  # Y0 Y1 Cb Cr per pixel pair
    array = decode_frame(frame, rgb_format("YBR_FULL_422"), EXPLICIT_LE)
    assert array.shape == rgb.shape
    assert psnr(array, rgb) > 30  # chroma was halved horizontally
    assert _served_psnr(frame, rgb_format("YBR_FULL_422"), EXPLICIT_LE) >= MIN_PSNR


def test_deflated_syntax_frame_is_inflated_when_needed() -> None:
    rgb = tissue(12, size=64)
    pixels = PixelFormat(64, 64, 3, 8, 8)
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    deflated = deflater.compress(rgb.tobytes()) + deflater.flush()
    for frame in (rgb.tobytes(), deflated):
        assert np.array_equal(decode_frame(frame, pixels, DEFLATED), rgb)


@pytest.mark.parametrize("syntax", [EXTENDED, None])
def test_12bit_extended_jpeg_is_reencoded(syntax: str | None) -> None:
    source = fluorescence(12, bits=12)
    frame = imagecodecs.jpeg8_encode(source, level=95, bitspersample=12)
    assert jpeg_info(frame).precision == 12  # type: ignore[union-attr]
    pixels = mono_format(bits=12)
    array = decode_frame(frame, pixels, syntax)
    assert array.dtype == np.uint16 and np.abs(array.astype(int) - source).mean() < 8
    assert _served_psnr(frame, pixels, syntax) >= MIN_PSNR
    assert Image.open(io.BytesIO(served_jpeg(frame, pixels, syntax))).mode == "L"


def _mono_cases() -> dict[str, tuple[bytes, PixelFormat, str]]:
    grey12 = fluorescence(20, bits=12)
    grey16 = fluorescence(21, bits=16)
    signed = fluorescence(22, bits=16, signed=True)
    signed12 = fluorescence(23, bits=12, signed=True)
    twos12 = (signed12.astype(np.uint16) & 0x0FFF).astype(np.uint16)
    window = {"window_center": 1800.0, "window_width": 2400.0}
    return {
        "native16": (grey16.astype("<u2").tobytes(), mono_format(16), EXPLICIT_LE),
        "native12": (grey12.astype("<u2").tobytes(), mono_format(12), EXPLICIT_LE),
        "native12_window": (grey12.astype("<u2").tobytes(), mono_format(12, **window), EXPLICIT_LE),
        "big_endian": (grey16.astype(">u2").tobytes(), mono_format(16), BIG_ENDIAN),
        "signed16": (signed.astype("<i2").tobytes(), mono_format(16, True), EXPLICIT_LE),
        "signed12_jpeg_ls": (imagecodecs.jpegls_encode(twos12), mono_format(12, True), JPEG_LS),
        "signed16_j2k": (
            imagecodecs.jpeg2k_encode(signed, reversible=True),
            mono_format(16, True),
            J2K_LOSSLESS,
        ),
        "j2k16_window": (
            imagecodecs.jpeg2k_encode(grey12, reversible=True),
            mono_format(12, **window),
            J2K_LOSSLESS,
        ),
        "jpeg_lossless16": (
            imagecodecs.jpeg8_encode(grey16, lossless=True, predictor=6, bitspersample=16),
            mono_format(16),
            LOSSLESS,
        ),
        "monochrome1": (
            grey12.astype("<u2").tobytes(),
            mono_format(12, photometric="MONOCHROME1"),
            EXPLICIT_LE,
        ),
    }


MONO_CASES = _mono_cases()
MONO_SOURCES = {
    "native16": fluorescence(21, bits=16),
    "big_endian": fluorescence(21, bits=16),
    "jpeg_lossless16": fluorescence(21, bits=16),
    "signed16": fluorescence(22, bits=16, signed=True),
    "signed16_j2k": fluorescence(22, bits=16, signed=True),
    "signed12_jpeg_ls": fluorescence(23, bits=12, signed=True),
}


def _mono_case_ids() -> list[tuple[str, bool]]:
    """Every case with its syntax known, and sniffed; not big endian sniffed: byte order
    cannot be sniffed (an unknown syntax means little endian)."""
    return [(name, known) for name in sorted(MONO_CASES) for known in (True, False)
            if known or MONO_CASES[name][2] != BIG_ENDIAN]


@pytest.mark.parametrize(("name", "known_syntax"), _mono_case_ids(),
                         ids=lambda value: value if isinstance(value, str) else
                         ("syntax" if value else "sniffed"))
def test_single_channel_frames_become_greyscale_jpegs(name: str, known_syntax: bool) -> None:
    frame, pixels, syntax = MONO_CASES[name]
    used_syntax = syntax if known_syntax else None
    array = decode_frame(frame, pixels, used_syntax)
    source = MONO_SOURCES.get(name, fluorescence(20, bits=12))
    assert array.shape == (SIZE, SIZE)
    assert np.array_equal(array, source), "lossless frames decode exactly"
    assert _served_psnr(frame, pixels, used_syntax) >= MIN_PSNR
    assert Image.open(io.BytesIO(served_jpeg(frame, pixels, used_syntax))).mode == "L"


def test_window_is_used_when_given() -> None:
    pixels = mono_format(12, window_center=1000.0, window_width=1000.0)
    values = np.array([[0, 499, 500, 1000, 1499, 1500, 4095]], dtype=np.uint16)
    assert to_8bit(values, pixels).tolist() == [[0, 0, 0, 128, 255, 255, 255]]
    full = to_8bit(values, mono_format(12))
    assert full.tolist() == [[0, 31, 31, 62, 93, 93, 255]]


def test_monochrome1_is_inverted() -> None:
    frame, pixels, syntax = MONO_CASES["monochrome1"]
    as_mono2 = to_8bit(decode_frame(frame, pixels, syntax), mono_format(12))
    served = decoded(served_jpeg(frame, pixels, syntax))
    assert psnr(served, 255 - as_mono2) >= MIN_PSNR
    eight_bit = PixelFormat(2, 2, 1, 8, 8, 0, "MONOCHROME1")
    assert to_8bit(np.array([[0, 10], [200, 255]], np.uint8), eight_bit).tolist() == [
        [255, 245],
        [55, 0],
    ]


@pytest.mark.parametrize(
    "pixels",
    [
        mono_format(16),
        mono_format(12),
        mono_format(16, True),
        mono_format(16, window_center=30000.0, window_width=20000.0),
        mono_format(16, True, window_center=-100.0, window_width=5000.0),
    ],
    ids=["u16", "u12", "s16", "u16_window", "s16_window"],
)
def test_scaling_keeps_the_order_of_values(pixels: PixelFormat) -> None:
    if pixels.signed:
        ramp = np.arange(-32768, 32768, dtype=np.int32).astype(np.int16)
    else:
        ramp = np.arange(0, 1 << pixels.bits_stored, dtype=np.uint32).astype(np.uint16)
    scaled = to_8bit(ramp.reshape(1, -1), pixels)[0]
    assert scaled.dtype == np.uint8
    assert np.all(np.diff(scaled.astype(int)) >= 0)
    assert scaled[0] == 0 and scaled[-1] == 255
    shuffled = np.random.default_rng(0).permutation(ramp)
    order = np.argsort(shuffled, kind="stable")
    assert np.all(np.diff(to_8bit(shuffled[None], pixels)[0][order].astype(int)) >= 0)


def test_signed_16bit_spans_the_full_range() -> None:
    values = np.array([[-32768, -1, 0, 32767]], dtype=np.int16)
    assert to_8bit(values, mono_format(16, True)).tolist() == [[0, 127, 128, 255]]


def test_default_quality_keeps_grainy_tissue_above_40db() -> None:
    scores = []
    for seed in range(4):
        source = tissue(100 + seed, grain=4.0)
        scores.append(psnr(decoded(encode_jpeg(source)), source))
    assert min(scores) >= MIN_PSNR, scores
    grey = tissue(104, grain=4.0)[..., 0]
    assert psnr(decoded(encode_jpeg(grey)), grey) >= MIN_PSNR
    assert 90 <= DEFAULT_QUALITY <= 100


def test_encode_jpeg_is_444_deterministic_and_checks_its_input() -> None:
    source = tissue(30, size=64)
    data = encode_jpeg(source, quality=90)
    assert data == encode_jpeg(source.copy(), quality=90)
    assert Image.open(io.BytesIO(data)).layer == [(1, 1, 1, 0), (2, 1, 1, 1), (3, 1, 1, 1)]
    with pytest.raises(ValueError):
        encode_jpeg(source.astype(np.uint16))
    with pytest.raises(ValueError):
        encode_jpeg(source, quality=0)


# -- errors ------------------------------------------------------------------------------


def _truncated_cases() -> dict[str, tuple[bytes, PixelFormat, str]]:
    rgb = tissue(40)
    ybr_jpeg = pillow_jpeg(Image.fromarray(rgb), quality=90)
    cases: dict[str, tuple[bytes, PixelFormat, str]] = {
        "baseline_ybr": (ybr_jpeg, rgb_format("YBR_FULL_422"), BASELINE),
        "baseline_rgb": (rgb_components_jpeg(rgb, jfif=False), rgb_format(), BASELINE),
    }
    for name, (frame, pixels, syntax, _) in COLOUR_CASES.items():
        if not name.startswith("native"):
            cases[name] = (frame, pixels, syntax)
    return cases


TRUNCATED_CASES = _truncated_cases()


@pytest.mark.parametrize("name", sorted(TRUNCATED_CASES))
@pytest.mark.parametrize("known_syntax", [True, False], ids=["syntax", "sniffed"])
@pytest.mark.parametrize("keep", [0.5, 0.9])
def test_truncated_frames_raise(name: str, known_syntax: bool, keep: float) -> None:
    frame, pixels, syntax = TRUNCATED_CASES[name]
    cut = frame[: int(len(frame) * keep)]
    with pytest.raises(TileDecodeError):
        served_jpeg(cut, pixels, syntax if known_syntax else None)
    with pytest.raises(TileDecodeError):
        decode_frame(cut, pixels, syntax if known_syntax else None)


@pytest.mark.parametrize(
    ("frame", "syntax", "reason"),
    [
        (b"\x00\x01garbage" * 100, None, "unrecognised frame"),
        (b"\x00\x01garbage" * 100, BASELINE, "no readable frame header"),
        (b"\x12" * (SIZE * SIZE * 3 - 7), EXPLICIT_LE, "bytes"),
        (b"\xff\xd8\xff\xc0\x00\x11" + b"\x00" * 40, None, "JPEG frame is truncated"),
        (b"\xff\x4f\xff\x51" + b"\x00" * 60 + b"\xff\xd9", J2K, "JPEG 2000"),
        (b"\x03\x00\x00\x00\x40" + b"\x00" * 200, RLE, "RLE"),
    ],
    ids=["garbage", "garbage_jpeg", "short_native", "bad_header", "bad_j2k", "bad_rle"],
)
def test_corrupt_frames_raise_with_a_reason(frame: bytes, syntax: str | None, reason: str) -> None:
    with pytest.raises(TileDecodeError, match=reason):
        served_jpeg(frame, rgb_format(), syntax)


def test_frame_larger_than_its_tile_raises() -> None:
    """Smaller frames are cropped edge frames (served at their size); larger are refused."""
    frame = pillow_jpeg(Image.fromarray(tissue(41, size=300)), quality=90)
    with pytest.raises(TileDecodeError, match="300x300"):
        decode_frame(frame, rgb_format("YBR_FULL_422"), BASELINE)


def test_video_syntax_is_refused() -> None:
    with pytest.raises(TileDecodeError, match="video"):
        served_jpeg(b"\x00" * 100, rgb_format(), "1.2.840.10008.1.2.4.102")


# -- PixelFormat from DICOM JSON ------------------------------------------------------------


def test_pixel_format_from_dicom_json() -> None:
    instance = {
        "00280010": {"vr": "US", "Value": [512]},
        "00280011": {"vr": "US", "Value": [256]},
        "00280002": {"vr": "US", "Value": [1]},
        "00280004": {"vr": "CS", "Value": ["MONOCHROME2"]},
        "00280100": {"vr": "US", "Value": [16]},
        "00280101": {"vr": "US", "Value": [12]},
        "00280103": {"vr": "US", "Value": [1]},
        "52009229": {
            "vr": "SQ",
            "Value": [
                {
                    "00289132": {
                        "vr": "SQ",
                        "Value": [
                            {
                                "00281050": {"vr": "DS", "Value": ["2048", "100"]},
                                "00281051": {"vr": "DS", "Value": [4096.5]},
                            }
                        ],
                    }
                }
            ],
        },
    }
    pixels = PixelFormat.from_dicom_json(instance)
    assert pixels == PixelFormat(512, 256, 1, 16, 12, 1, "MONOCHROME2", 0, 2048.0, 4096.5)
    assert pixels.frame_bytes == 512 * 256 * 2


def test_pixel_format_defaults() -> None:
    minimal = {
        "00280010": {"vr": "US", "Value": [8]},
        "00280011": {"vr": "US", "Value": [4]},
        "00280002": {"vr": "US", "Value": [3]},
    }
    pixels = PixelFormat.from_dicom_json(minimal)
    assert pixels == PixelFormat(8, 4, 3, 8, 8, 0, "RGB", 0, None, None)
    with pytest.raises(ValueError):
        PixelFormat.from_dicom_json({})


# -- real files (copied by the lead into tests/data/real; skipped when absent) --------------


def _real_frames(name: str) -> tuple[list[bytes], PixelFormat, str, np.ndarray]:
    pydicom = pytest.importorskip("pydicom")
    path = REAL_DIR / name
    if not path.exists():
        pytest.skip(f"{path} is absent")
    dataset = pydicom.dcmread(path)
    pixels = PixelFormat(
        dataset.Rows,
        dataset.Columns,
        dataset.SamplesPerPixel,
        dataset.BitsAllocated,
        dataset.BitsStored,
        dataset.PixelRepresentation,
        dataset.PhotometricInterpretation,
        int(dataset.get("PlanarConfiguration", 0)),
    )
    count = int(dataset.get("NumberOfFrames", 1))
    syntax = str(dataset.file_meta.TransferSyntaxUID)
    if dataset.file_meta.TransferSyntaxUID.is_encapsulated:
        frames = list(pydicom.encaps.generate_frames(dataset.PixelData, number_of_frames=count))
    else:
        size = pixels.frame_bytes
        frames = [dataset.PixelData[i * size : (i + 1) * size] for i in range(count)]
    shape = (pixels.rows, pixels.columns, pixels.samples_per_pixel)
    if pixels.samples_per_pixel == 1:
        shape = shape[:2]
    expected = dataset.pixel_array.reshape(count, *shape)  # pydicom converts YBR to RGB
    return frames, pixels, syntax, expected


def test_real_camelyon_jpeg_frames_are_served_as_stored() -> None:
    frames, pixels, syntax, expected = _real_frames(
        "ezwsi__multiframe_camelyon_challenge_image.dcm"
    )
    for index, frame in enumerate(frames):
        assert served_jpeg(frame, pixels, syntax) == strip_jpeg_padding(frame)
        assert served_jpeg(frame, pixels, None) == strip_jpeg_padding(frame)
        assert np.array_equal(decode_frame(frame, pixels, None), expected[index])


@pytest.mark.parametrize(
    "name",
    [
        "highdicom__sm_image.dcm",
        "highdicom__sm_image_grayscale.dcm",
        "highdicom__sm_image_jpegls.dcm",
        "highdicom__sm_image_jpegls_nobot.dcm",
    ],
)
def test_real_highdicom_frames_decode_like_pydicom(name: str) -> None:
    frames, pixels, syntax, expected = _real_frames(name)
    for index, frame in enumerate(frames):
        for used in (syntax, None):
            assert np.array_equal(decode_frame(frame, pixels, used), expected[index])
            assert _served_psnr(frame, pixels, used) >= 35  # 10x10 tiles of sharp edges


def test_an_enormous_composed_image_is_refused_before_any_memory_is_taken() -> None:
    from idcfs.tiles.compose import MAX_CANVAS_PIXELS, Piece, compose

    frame = pillow_jpeg(Image.fromarray(tissue(3)), quality=80)
    pieces = [Piece(0, 0, frame, BASELINE)]
    side = int(MAX_CANVAS_PIXELS ** 0.5) + 1
    with pytest.raises(TileDecodeError, match="Mpx"):
        compose(pieces, rgb_format("YBR_FULL_422"), side, side)
    with pytest.raises(TileDecodeError, match="cannot compose"):
        compose(pieces, rgb_format("YBR_FULL_422"), 70000, 10)
    assert compose(pieces, rgb_format("YBR_FULL_422"), 300, 200).shape[:2] == (200, 300)
