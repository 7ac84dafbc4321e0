"""Deterministic, small DICOM whole-slide images for tests and benchmarks.

`generate_test_slides(out_dir)` writes a fixed set of VL Whole Slide Microscopy Image
Storage series (JPEG baseline YCbCr and RGB, JPEG 2000 lossy and lossless, TILED_SPARSE,
two focal planes, two optical paths, 16-bit uncompressed), each described by a
`GeneratedSlide` (UIDs, files, levels, associated images). `write_pyramid(...)` writes
one large JPEG pyramid quickly for benchmarks.

Everything is deterministic: UIDs are hashed from the slide name, pixels come from a
numpy generator seeded by the slide name, and the encoders are called with fixed
settings. Pixel content is a tissue-like colour texture (smooth blobs plus a little
grain) so tiles differ from each other and lossy-compression checks are meaningful.
"""

from __future__ import annotations

import functools
import io
import math
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image, ImageDraw, ImageFilter
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import UID, generate_uid

WSI_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JPEG2000_LOSSLESS = "1.2.840.10008.1.2.4.90"
JPEG2000 = "1.2.840.10008.1.2.4.91"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
UID_ROOT = "1.2.826.0.1.3680043.8.498."  # pydicom's root, used with hashed suffixes
FIXED_DATE = "20240102"
FIXED_TIME = "030405"
ORIGIN_MM = (20.0, 40.0)
BASE_SPACING_MM = 0.0005
SLICE_THICKNESS_MM = 0.001
FOCAL_PLANE_SPACING_MM = 0.0025

VOLUME_ORIGINAL = ("ORIGINAL", "PRIMARY", "VOLUME", "NONE")
VOLUME_RESAMPLED = ("DERIVED", "PRIMARY", "VOLUME", "RESAMPLED")
LABEL = ("ORIGINAL", "PRIMARY", "LABEL", "NONE")
OVERVIEW = ("ORIGINAL", "PRIMARY", "OVERVIEW", "NONE")
THUMBNAIL = ("DERIVED", "PRIMARY", "THUMBNAIL", "RESAMPLED")

# JPEG markers touched when making "RGB without APP14" frames.
SOF0, SOS, APP0, APP14 = 0xC0, 0xDA, 0xE0, 0xEE


# --------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class LevelLayout:
    """One pyramid level as written: geometry, encoding, planes, paths, instances.

    `tiles` lists the (column, row) of every frame of a TILED_SPARSE level in stored
    frame order (the same in each instance of the level); None for TILED_FULL, where
    every tile exists in column-fastest, then row, then focal-plane order.
    """

    index: int
    width: int
    height: int
    tile_width: int
    tile_height: int
    transfer_syntax: str
    photometric: str
    organization: str
    pixel_spacing_mm: float
    focal_planes_um: tuple[float, ...]
    optical_paths: tuple[str, ...]
    instance_uids: tuple[str, ...]
    frames_per_instance: int
    tiles: tuple[tuple[int, int], ...] | None = None

    @property
    def columns(self) -> int:
        return math.ceil(self.width / self.tile_width)

    @property
    def rows(self) -> int:
        return math.ceil(self.height / self.tile_height)


@dataclass(frozen=True)
class AssociatedLayout:
    """A single-frame LABEL, OVERVIEW or THUMBNAIL instance."""

    kind: str
    width: int
    height: int
    transfer_syntax: str
    photometric: str
    instance_uid: str


@dataclass
class GeneratedSlide:
    """One generated series: its UIDs, its files, and what they hold."""

    name: str
    study_uid: str
    series_uid: str
    files: list[Path] = field(default_factory=list)
    levels: list[LevelLayout] = field(default_factory=list)
    associated: list[AssociatedLayout] = field(default_factory=list)

    @property
    def folder(self) -> Path:
        """The directory holding this slide's files (one directory per slide)."""
        return self.files[0].parent

    def describe(self) -> str:
        """A plain-text summary of the layout, one line per level / associated image."""
        lines = [f"{self.name}: study {self.study_uid} series {self.series_uid}"]
        for level in self.levels:
            sparse = f", tiles {list(level.tiles)}" if level.tiles is not None else ""
            lines.append(
                f"  level-{level.index}: {level.width}x{level.height}, tile "
                f"{level.tile_width}x{level.tile_height} ({level.columns}x{level.rows}), "
                f"{level.organization}, {level.transfer_syntax} {level.photometric}, planes "
                f"{list(level.focal_planes_um)} um, paths {list(level.optical_paths)}{sparse}"
            )
        for image in self.associated:
            lines.append(f"  {image.kind.lower()}: {image.width}x{image.height}, "
                         f"{image.transfer_syntax} {image.photometric}")
        return "\n".join(lines)


# --------------------------------------------------------------------------- codecs


@dataclass(frozen=True)
class Codec:
    """How frames are encoded: transfer syntax, photometric, sample layout, encoder."""

    transfer_syntax: str
    photometric: str
    samples: int
    encode: Callable[[np.ndarray], bytes]
    bits_allocated: int = 8
    bits_stored: int = 8
    lossy_method: str | None = None

    @property
    def encapsulated(self) -> bool:
        return self.transfer_syntax != EXPLICIT_VR_LITTLE_ENDIAN


def _pillow_jpeg(pixels: np.ndarray, quality: int = 90, **options: object) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=quality, **options)
    return buffer.getvalue()


def _jpeg_ycbcr(pixels: np.ndarray) -> bytes:
    return _pillow_jpeg(pixels, subsampling="4:2:2")


def _jpeg_grey(pixels: np.ndarray) -> bytes:
    return _pillow_jpeg(pixels)


def _jpeg_rgb_components(pixels: np.ndarray) -> bytes:
    """RGB components (no colour transform), as many scanners write them: no JFIF or
    Adobe marker and component ids 1, 2, 3, so a generic decoder wrongly assumes YCbCr."""
    encoded = _pillow_jpeg(pixels, subsampling="4:4:4", keep_rgb=True)
    return renumber_components(strip_app_markers(encoded, (APP0, APP14)))


def _j2k(reversible: bool) -> Callable[[np.ndarray], bytes]:
    import imagecodecs

    def encode(pixels: np.ndarray) -> bytes:
        level = None if reversible else 50  # lossy: target PSNR 50 dB
        return bytes(imagecodecs.jpeg2k_encode(
            pixels, level=level, codecformat="J2K", reversible=reversible, mct=True
        ))

    return encode


def _raw(pixels: np.ndarray) -> bytes:
    return pixels.astype("<u2" if pixels.dtype == np.uint16 else pixels.dtype).tobytes()


def jpeg_segments(data: bytes) -> Iterator[tuple[int, int, int]]:
    """(marker, start, end) of each header segment from SOI up to and including SOS."""
    position = 2
    while position + 4 <= len(data):
        marker = data[position + 1]
        end = position + 2 + int.from_bytes(data[position + 2 : position + 4], "big")
        yield marker, position, end
        if marker == SOS:
            return
        position = end


def strip_app_markers(data: bytes, markers: Sequence[int]) -> bytes:
    """The JPEG without the given APPn header segments (entropy data untouched)."""
    kept = [data[:2]]
    last_end = 2
    for marker, start, end in jpeg_segments(data):
        if marker not in markers:
            kept.append(data[start:end])
        last_end = end
    return b"".join(kept) + data[last_end:]


def renumber_components(data: bytes) -> bytes:
    """Set the component ids of SOF0 and SOS to 1, 2, 3 (libjpeg writes 'R','G','B')."""
    out = bytearray(data)
    for marker, start, _ in jpeg_segments(data):
        if marker == SOF0:
            count = out[start + 9]
            for index in range(count):
                out[start + 10 + 3 * index] = index + 1
        elif marker == SOS:
            count = out[start + 4]
            for index in range(count):
                out[start + 5 + 2 * index] = index + 1
    return bytes(out)


CODECS: dict[str, Codec] = {
    "jpeg_ybr": Codec(JPEG_BASELINE, "YBR_FULL_422", 3, _jpeg_ycbcr,
                      lossy_method="ISO_10918_1"),
    "jpeg_rgb": Codec(JPEG_BASELINE, "RGB", 3, _jpeg_rgb_components,
                      lossy_method="ISO_10918_1"),
    "jpeg_grey": Codec(JPEG_BASELINE, "MONOCHROME2", 1, _jpeg_grey,
                       lossy_method="ISO_10918_1"),
    "j2k": Codec(JPEG2000, "YBR_ICT", 3, _j2k(reversible=False), lossy_method="ISO_15444_1"),
    "j2k_lossless": Codec(JPEG2000_LOSSLESS, "YBR_RCT", 3, _j2k(reversible=True)),
    "raw16": Codec(EXPLICIT_VR_LITTLE_ENDIAN, "MONOCHROME2", 1, _raw, 16, 16),
}


# --------------------------------------------------------------------------- pixels


def _rng(*keys: object) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(repr(keys).encode()))


def smooth_field(rng: np.random.Generator, width: int, height: int, scale: int) -> np.ndarray:
    """Smooth noise in [0, 1] with blobs about `scale` pixels across (float32, HxW)."""
    cells = (height // scale + 4, width // scale + 4)
    small = rng.random(cells, dtype=np.float32)
    size = (cells[1] * scale, cells[0] * scale)
    grown = Image.fromarray(small).resize(size, Image.Resampling.BICUBIC)
    field_ = np.asarray(grown)[scale : scale + height, scale : scale + width]
    low, high = float(field_.min()), float(field_.max())
    return ((field_ - low) / max(high - low, 1e-6)).astype(np.float32)


def _smoothstep(values: np.ndarray, low: float, high: float) -> np.ndarray:
    t = np.clip((values - low) / (high - low), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def _to_uint8(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def tissue_texture(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """H&E-like RGB: pale background, pink stroma islands, purple nuclei, light grain."""
    tissue = _smoothstep(smooth_field(rng, width, height, 160), 0.3, 0.55)[..., None]
    stroma = smooth_field(rng, width, height, 40)[..., None]
    nuclei = _smoothstep(smooth_field(rng, width, height, 9), 0.6, 0.8)[..., None]
    background = np.array([240, 236, 238], np.float32)
    eosin = np.array([236, 150, 186], np.float32) * (1 - stroma) + np.array(
        [196, 84, 146], np.float32) * stroma
    haematoxylin = np.array([72, 44, 126], np.float32)
    colour = background + tissue * (eosin - background)
    colour += tissue * nuclei * (haematoxylin - colour)
    grain = rng.normal(0.0, 1.5, (height, width, 1)).astype(np.float32)
    return _to_uint8(colour + grain)


def vivid_texture(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Strongly saturated RGB blobs of every hue (a wrong colour transform is obvious)."""
    hue = (smooth_field(rng, width, height, 70) * 600) % 256
    saturation = 170 + 85 * smooth_field(rng, width, height, 30)
    value = 150 + 105 * smooth_field(rng, width, height, 25)
    channels = [Image.fromarray(_to_uint8(c)) for c in (hue, saturation, value)]
    return np.asarray(Image.merge("HSV", channels).convert("RGB"))


def fluorescence_texture(
    rng: np.random.Generator, width: int, height: int, kind: str
) -> np.ndarray:
    """Dark-background MONOCHROME2 channel: nuclei spots ("nuclei") or membranes."""
    if kind == "nuclei":
        signal = _smoothstep(smooth_field(rng, width, height, 8), 0.55, 0.8)
    else:
        ridges = 1 - np.abs(2 * smooth_field(rng, width, height, 30) - 1)
        signal = ridges**6
    grain = rng.normal(0.0, 1.5, (height, width)).astype(np.float32)
    return _to_uint8(12 + 220 * signal + grain)


def grey16_texture(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Values 500..3800 (12 significant bits) of a smooth grey image in uint16."""
    coarse = smooth_field(rng, width, height, 50)
    fine = smooth_field(rng, width, height, 10)
    values = 500 + 3300 * (0.7 * coarse + 0.3 * fine) + rng.normal(0.0, 8.0, (height, width))
    return np.clip(np.rint(values), 0, 4095).astype(np.uint16)


def label_image(text: str, width: int = 300, height: int = 120) -> np.ndarray:
    """A white slide label with a bar-code-like stripe pattern and the slide's name."""
    image = Image.new("RGB", (width, height), (250, 250, 246))
    draw = ImageDraw.Draw(image)
    rng = _rng("label", text)
    x = 10
    while x < width - 10:
        bar = int(rng.integers(1, 5))
        draw.rectangle((x, 10, x + bar - 1, 50), fill=(20, 20, 20))
        x += bar + int(rng.integers(1, 4))
    draw.text((10, 65), text, fill=(10, 10, 120))
    draw.text((10, 90), "idcfs test slide", fill=(120, 10, 10))
    return np.asarray(image)


def resize(pixels: np.ndarray, width: int, height: int) -> np.ndarray:
    """Downsample an 8-bit image (Lanczos)."""
    return np.array(Image.fromarray(pixels).resize((width, height), Image.Resampling.LANCZOS))


def blur(pixels: np.ndarray, radius: float) -> np.ndarray:
    """A defocused copy (what another focal plane of the same field looks like)."""
    return np.asarray(Image.fromarray(pixels).filter(ImageFilter.GaussianBlur(radius)))


def cut_tiles(
    pixels: np.ndarray, tile_width: int, tile_height: int
) -> dict[tuple[int, int], np.ndarray]:
    """Every full-size tile keyed by (column, row); edge tiles padded with the first
    pixel's value (the background), as scanners pad them."""
    height, width = pixels.shape[:2]
    columns, rows = math.ceil(width / tile_width), math.ceil(height / tile_height)
    padding = [(0, rows * tile_height - height), (0, columns * tile_width - width)]
    padding += [(0, 0)] * (pixels.ndim - 2)
    fill = pixels[(0, 0)]
    padded = np.empty((rows * tile_height, columns * tile_width, *pixels.shape[2:]), pixels.dtype)
    padded[...] = fill
    padded[:height, :width] = pixels
    return {
        (column, row): padded[row * tile_height : (row + 1) * tile_height,
                              column * tile_width : (column + 1) * tile_width]
        for row in range(rows) for column in range(columns)
    }


# --------------------------------------------------------------------------- datasets


def stable_uid(*keys: object) -> str:
    """A UID hashed from the keys: the same keys always give the same UID."""
    return str(generate_uid(prefix=UID_ROOT, entropy_srcs=["idcfs", *map(str, keys)]))


@dataclass(frozen=True)
class SlideIdentity:
    """UIDs and identifiers shared by every instance of one slide."""

    name: str
    study_uid: str
    series_uid: str
    frame_of_reference_uid: str
    dimension_organization_uid: str
    specimen_uid: str

    @classmethod
    def for_name(cls, name: str) -> SlideIdentity:
        return cls(name, *(stable_uid(name, part) for part in (
            "study", "series", "frame-of-reference", "dimension-organization", "specimen")))

    def instance_uid(self, label: str) -> str:
        return stable_uid(self.name, "instance", label)


@dataclass(frozen=True)
class OpticalPath:
    """One optical path: brightfield (colour) or fluorescence at a wavelength (nm)."""

    identifier: str = "1"
    description: str = "Brightfield"
    wavelength_nm: float | None = None


BRIGHTFIELD = OpticalPath()


@dataclass
class InstanceSpec:
    """Everything needed to write one instance, its frames already encoded.

    `positions` (TILED_SPARSE only) holds each frame's (column, row); TILED_FULL frames
    are in column-fastest, row, then focal-plane order.
    """

    identity: SlideIdentity
    label: str
    instance_number: int
    codec: Codec
    image_type: tuple[str, ...]
    width: int
    height: int
    tile_width: int
    tile_height: int
    spacing_mm: float
    frames: list[bytes]
    optical_path: OpticalPath = BRIGHTFIELD
    focal_planes: int = 1
    positions: list[tuple[int, int]] | None = None
    offset_table: bool = True
    window: tuple[float, float] | None = None
    omit: tuple[str, ...] = ()  # keywords left out of the dataset (metadata a model lacks)

    @property
    def uid(self) -> str:
        return self.identity.instance_uid(self.label)

    @property
    def organization(self) -> str:
        return "TILED_FULL" if self.positions is None else "TILED_SPARSE"

    @property
    def flavour(self) -> str:
        return self.image_type[2]


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _item(**elements: object) -> Dataset:
    item = Dataset()
    for keyword, value in elements.items():
        setattr(item, keyword, value)
    return item


def _add_patient_study_series(ds: Dataset, spec: InstanceSpec) -> None:
    identity = spec.identity
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = WSI_SOP_CLASS
    ds.SOPInstanceUID = spec.uid
    ds.PatientName = f"IDCFS^{identity.name}"
    ds.PatientID = f"idcfs-{identity.name}"
    ds.PatientBirthDate, ds.PatientSex = "", "O"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = identity.study_uid, identity.series_uid
    ds.StudyDate, ds.StudyTime, ds.StudyID = FIXED_DATE, FIXED_TIME, identity.name[:16]
    ds.AccessionNumber, ds.ReferringPhysicianName = "", ""
    ds.StudyDescription = f"idcfs generated slide {identity.name}"
    ds.Modality, ds.SeriesNumber = "SM", 1
    ds.SeriesDescription = identity.name
    ds.FrameOfReferenceUID = identity.frame_of_reference_uid
    ds.PositionReferenceIndicator = "SLIDE_CORNER"
    ds.Manufacturer, ds.ManufacturerModelName = "idcfs", "synthetic"
    ds.DeviceSerialNumber, ds.SoftwareVersions = "0001", "tests.support.slides"
    ds.InstanceNumber = spec.instance_number
    ds.ContentDate, ds.ContentTime = FIXED_DATE, FIXED_TIME
    ds.AcquisitionDateTime = FIXED_DATE + FIXED_TIME


def _add_image_pixel(ds: Dataset, spec: InstanceSpec) -> None:
    codec = spec.codec
    ds.ImageType = list(spec.image_type)
    ds.SamplesPerPixel = codec.samples
    ds.PhotometricInterpretation = codec.photometric
    if codec.samples > 1:
        ds.PlanarConfiguration = 0
    ds.Rows, ds.Columns = spec.tile_height, spec.tile_width
    ds.BitsAllocated, ds.BitsStored = codec.bits_allocated, codec.bits_stored
    ds.HighBit, ds.PixelRepresentation = codec.bits_stored - 1, 0
    ds.NumberOfFrames = len(spec.frames)
    ds.BurnedInAnnotation = "YES" if spec.flavour == "LABEL" else "NO"
    ds.SpecimenLabelInImage = "YES" if spec.flavour in ("LABEL", "OVERVIEW") else "NO"
    ds.LossyImageCompression = "01" if codec.lossy_method else "00"
    if codec.lossy_method:
        ds.LossyImageCompressionMethod = codec.lossy_method
        ds.LossyImageCompressionRatio = _compression_ratio(spec)
    if codec.photometric == "MONOCHROME2":
        ds.PresentationLUTShape = "IDENTITY"
    if spec.window is not None:
        ds.WindowCenter, ds.WindowWidth = spec.window


def _compression_ratio(spec: InstanceSpec) -> str:
    raw = len(spec.frames) * spec.tile_width * spec.tile_height * spec.codec.samples
    return f"{raw / max(1, sum(map(len, spec.frames))):.2f}"[:16]


def _add_wsi_image(ds: Dataset, spec: InstanceSpec) -> None:
    ds.DimensionOrganizationType = spec.organization
    ds.TotalPixelMatrixColumns, ds.TotalPixelMatrixRows = spec.width, spec.height
    ds.TotalPixelMatrixFocalPlanes = spec.focal_planes
    ds.NumberOfOpticalPaths = 1
    ds.TotalPixelMatrixOriginSequence = [_item(
        XOffsetInSlideCoordinateSystem=ORIGIN_MM[0], YOffsetInSlideCoordinateSystem=ORIGIN_MM[1])]
    ds.ImageOrientationSlide = [1, 0, 0, 0, 1, 0]
    ds.ImagedVolumeWidth = round(spec.width * spec.spacing_mm, 6)
    ds.ImagedVolumeHeight = round(spec.height * spec.spacing_mm, 6)
    ds.ImagedVolumeDepth = SLICE_THICKNESS_MM * 1000 * spec.focal_planes
    ds.VolumetricProperties = "VOLUME"
    ds.FocusMethod, ds.ExtendedDepthOfField = "AUTO", "NO"
    ds.AcquisitionContextSequence = []
    ds.DimensionOrganizationSequence = [
        _item(DimensionOrganizationUID=spec.identity.dimension_organization_uid)]
    ds.DimensionIndexSequence = [_dimension_index(spec, keyword) for keyword in (
        "ColumnPositionInTotalImagePixelMatrix", "RowPositionInTotalImagePixelMatrix")]


def _dimension_index(spec: InstanceSpec, keyword: str) -> Dataset:
    """One dimension of the tile grid: a plane-position attribute, for the per-frame
    DimensionIndexValues of TILED_SPARSE frames."""
    return _item(
        DimensionIndexPointer=pydicom.datadict.tag_for_keyword(keyword),
        FunctionalGroupPointer=pydicom.datadict.tag_for_keyword("PlanePositionSlideSequence"),
        DimensionOrganizationUID=spec.identity.dimension_organization_uid,
    )


def _add_functional_groups(ds: Dataset, spec: InstanceSpec) -> None:
    measures = _item(PixelSpacing=[spec.spacing_mm, spec.spacing_mm],
                     SliceThickness=SLICE_THICKNESS_MM)
    if spec.focal_planes > 1:
        measures.SpacingBetweenSlices = FOCAL_PLANE_SPACING_MM
    shared = _item(
        PixelMeasuresSequence=[measures],
        WholeSlideMicroscopyImageFrameTypeSequence=[_item(FrameType=list(spec.image_type))],
        OpticalPathIdentificationSequence=[
            _item(OpticalPathIdentifier=spec.optical_path.identifier)],
    )
    ds.SharedFunctionalGroupsSequence = [shared]
    if spec.positions is not None:
        ds.PerFrameFunctionalGroupsSequence = [
            _frame_position(spec, column, row) for column, row in spec.positions]


def _frame_position(spec: InstanceSpec, column: int, row: int) -> Dataset:
    first_column, first_row = column * spec.tile_width + 1, row * spec.tile_height + 1
    position = _item(
        ColumnPositionInTotalImagePixelMatrix=first_column,
        RowPositionInTotalImagePixelMatrix=first_row,
        XOffsetInSlideCoordinateSystem=round(
            ORIGIN_MM[0] + (first_column - 1) * spec.spacing_mm, 6),
        YOffsetInSlideCoordinateSystem=round(ORIGIN_MM[1] + (first_row - 1) * spec.spacing_mm, 6),
        ZOffsetInSlideCoordinateSystem=0.0,
    )
    content = _item(DimensionIndexValues=[column + 1, row + 1])
    return _item(PlanePositionSlideSequence=[position], FrameContentSequence=[content])


def _add_optical_path(ds: Dataset, spec: InstanceSpec) -> None:
    path = spec.optical_path
    item = _item(OpticalPathIdentifier=path.identifier, OpticalPathDescription=path.description)
    if path.wavelength_nm is None:
        item.IlluminationTypeCodeSequence = [
            _code("111744", "DCM", "Brightfield illumination")]
        item.IlluminationColorCodeSequence = [_code("414298005", "SCT", "Full Spectrum")]
    else:
        item.IlluminationTypeCodeSequence = [
            _code("111743", "DCM", "Epifluorescence illumination")]
        item.IlluminationWaveLength = path.wavelength_nm
    if spec.codec.samples == 3:
        item.ICCProfile = _srgb_profile()
    ds.OpticalPathSequence = [item]


@functools.cache
def _srgb_profile() -> bytes:
    """Little CMS's sRGB profile with a fixed creation date (it stamps the current time)."""
    from PIL import ImageCms

    profile = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    profile[24:36] = b"".join(n.to_bytes(2, "big") for n in (2024, 1, 2, 3, 4, 5))
    return bytes(profile) + b"\0" * (len(profile) % 2)


def _add_specimen(ds: Dataset, spec: InstanceSpec) -> None:
    identity = spec.identity
    ds.ContainerIdentifier = f"SLIDE-{identity.name}"
    ds.IssuerOfTheContainerIdentifierSequence = []
    ds.ContainerTypeCodeSequence = [_code("433466003", "SCT", "Microscope slide")]
    ds.SpecimenDescriptionSequence = [_item(
        SpecimenIdentifier=f"SPECIMEN-{identity.name}",
        SpecimenUID=identity.specimen_uid,
        IssuerOfTheSpecimenIdentifierSequence=[],
        SpecimenPreparationSequence=[],
    )]


def _add_pixel_data(ds: Dataset, spec: InstanceSpec) -> None:
    if spec.codec.encapsulated:
        ds.PixelData = encapsulate(spec.frames, has_bot=spec.offset_table)
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
    else:
        ds.PixelData = b"".join(spec.frames)
        ds["PixelData"].VR = "OW" if spec.codec.bits_allocated > 8 else "OB"


def build_dataset(spec: InstanceSpec) -> Dataset:
    """The complete VL Whole Slide Microscopy Image dataset with file meta."""
    ds = Dataset()
    for add in (_add_patient_study_series, _add_image_pixel, _add_wsi_image,
                _add_functional_groups, _add_optical_path, _add_specimen, _add_pixel_data):
        add(ds, spec)
    for keyword in spec.omit:
        delattr(ds, keyword)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(WSI_SOP_CLASS)
    meta.MediaStorageSOPInstanceUID = UID(spec.uid)
    meta.TransferSyntaxUID = UID(spec.codec.transfer_syntax)
    ds.file_meta = meta
    return ds


def write_instance(spec: InstanceSpec, path: Path) -> Path:
    """Write one instance as a DICOM Part 10 file."""
    build_dataset(spec).save_as(path, enforce_file_format=True)
    return path


# --------------------------------------------------------------------------- slides


class SlideWriter:
    """Writes the instances of one slide into `out_dir/<name>/` and records its layout."""

    def __init__(self, out_dir: Path, name: str) -> None:
        self.identity = SlideIdentity.for_name(name)
        self.folder = out_dir / name
        self.folder.mkdir(parents=True, exist_ok=True)
        self.slide = GeneratedSlide(name, self.identity.study_uid, self.identity.series_uid)

    def _write(self, spec: InstanceSpec) -> None:
        path = self.folder / f"{len(self.slide.files) + 1:02d}_{spec.label}.dcm"
        self.slide.files.append(write_instance(spec, path))

    def _spec(
        self, label: str, codec: Codec, image_type: tuple[str, ...], **fields: object
    ) -> InstanceSpec:
        number = len(self.slide.files) + 1
        return InstanceSpec(self.identity, label, number, codec, image_type, **fields)  # type: ignore[arg-type]

    def add_level(
        self,
        index: int,
        planes: Sequence[np.ndarray],
        codec: Codec,
        tile: int = 256,
        sparse: Sequence[tuple[int, int]] | None = None,
        **options: object,
    ) -> None:
        """One VOLUME instance: all `planes` (same size) of one optical path, TILED_FULL
        unless `sparse` lists the (column, row) of the tiles to store, in that order.
        `options` go to `add_encoded_level` (path, offset_table, window, omit)."""
        height, width = planes[0].shape[:2]
        tiles = [cut_tiles(plane, tile, tile) for plane in planes]
        order = list(sparse) if sparse is not None else list(tiles[0])
        frames = [codec.encode(grid[position]) for grid in tiles for position in order]
        self.add_encoded_level(index, frames, (width, height), tile, codec,
                               focal_planes=len(planes), sparse=sparse, **options)  # type: ignore[arg-type]

    def add_encoded_level(
        self,
        index: int,
        frames: list[bytes],
        size: tuple[int, int],
        tile: int,
        codec: Codec,
        *,
        focal_planes: int = 1,
        sparse: Sequence[tuple[int, int]] | None = None,
        path: OpticalPath = BRIGHTFIELD,
        offset_table: bool = True,
        window: tuple[float, float] | None = None,
        omit: tuple[str, ...] = (),
    ) -> None:
        """Write one VOLUME instance from frames already encoded with `codec` (`omit`:
        attribute keywords to leave out)."""
        spec = self._spec(
            f"level{index}_path{path.identifier}", codec,
            VOLUME_ORIGINAL if index == 0 else VOLUME_RESAMPLED,
            width=size[0], height=size[1], tile_width=tile, tile_height=tile,
            spacing_mm=BASE_SPACING_MM * 2**index, frames=frames, optical_path=path,
            focal_planes=focal_planes, positions=list(sparse) if sparse is not None else None,
            offset_table=offset_table, window=window, omit=omit,
        )
        self._write(spec)
        self._record_level(index, spec)

    def _record_level(self, index: int, spec: InstanceSpec) -> None:
        """Add the instance to its level's layout (a new level, or one more path)."""
        existing = next((level for level in self.slide.levels if level.index == index), None)
        if existing is not None:
            merged = replace(existing, optical_paths=(*existing.optical_paths,
                                                      spec.optical_path.identifier),
                             instance_uids=(*existing.instance_uids, spec.uid))
            self.slide.levels[self.slide.levels.index(existing)] = merged
            return
        planes = tuple(FOCAL_PLANE_SPACING_MM * 1000 * i for i in range(spec.focal_planes))
        self.slide.levels.append(LevelLayout(
            index, spec.width, spec.height, spec.tile_width, spec.tile_height,
            spec.codec.transfer_syntax, spec.codec.photometric, spec.organization,
            spec.spacing_mm, planes, (spec.optical_path.identifier,), (spec.uid,),
            len(spec.frames), tuple(spec.positions) if spec.positions is not None else None,
        ))

    def add_associated(self, image_type: tuple[str, ...], pixels: np.ndarray, codec: Codec,
                       spacing_mm: float) -> None:
        """A single-frame LABEL / OVERVIEW / THUMBNAIL instance holding the whole image."""
        height, width = pixels.shape[:2]
        kind = image_type[2]
        spec = self._spec(kind.lower(), codec, image_type, width=width, height=height,
                          tile_width=width, tile_height=height, spacing_mm=spacing_mm,
                          frames=[codec.encode(pixels)])
        self._write(spec)
        self.slide.associated.append(AssociatedLayout(
            kind, width, height, codec.transfer_syntax, codec.photometric, spec.uid))

    def add_pyramid(self, base: np.ndarray, levels: int, codec: Codec, tile: int = 256,
                    **options: object) -> None:
        """Levels 0..levels-1 of one plane, each half the size of the one before."""
        height, width = base.shape[:2]
        for index in range(levels):
            scaled = base if index == 0 else resize(base, width >> index, height >> index)
            self.add_level(index, [scaled], codec, tile, **options)  # type: ignore[arg-type]


def _jpeg_ybr(out_dir: Path) -> GeneratedSlide:
    writer = SlideWriter(out_dir, "jpeg_ybr")
    base = tissue_texture(_rng("jpeg_ybr"), 1000, 700)
    writer.add_pyramid(base, 3, CODECS["jpeg_ybr"])
    overview = resize(base, 400, 280)
    overview[:, :120] = resize(label_image("jpeg_ybr"), 120, 280)
    spacing = BASE_SPACING_MM * 1000 / 400
    writer.add_associated(LABEL, label_image("jpeg_ybr"), CODECS["jpeg_ybr"], 0.05)
    writer.add_associated(OVERVIEW, overview, CODECS["jpeg_ybr"], spacing)
    writer.add_associated(THUMBNAIL, resize(base, 200, 140), CODECS["jpeg_ybr"],
                          BASE_SPACING_MM * 5)
    return writer.slide


def _jpeg_rgb(out_dir: Path) -> GeneratedSlide:
    writer = SlideWriter(out_dir, "jpeg_rgb")
    base = vivid_texture(_rng("jpeg_rgb"), 700, 500)
    writer.add_pyramid(base, 2, CODECS["jpeg_rgb"], offset_table=False)
    return writer.slide


def _jpeg2000(out_dir: Path) -> GeneratedSlide:
    writer = SlideWriter(out_dir, "jpeg2000")
    writer.add_pyramid(tissue_texture(_rng("jpeg2000"), 600, 400), 2, CODECS["j2k"])
    return writer.slide


def _jpeg2000_lossless(out_dir: Path) -> GeneratedSlide:
    writer = SlideWriter(out_dir, "jpeg2000_lossless")
    base = tissue_texture(_rng("jpeg2000_lossless"), 320, 240)
    writer.add_pyramid(base, 1, CODECS["j2k_lossless"], tile=128, offset_table=False)
    return writer.slide


SPARSE_TILES = ((1, 0), (0, 1), (1, 1), (2, 1), (1, 2), (2, 0), (3, 1), (2, 2))
"""Stored tiles of the `sparse` slide (column, row) in frame order: 8 of the 4x3 grid,
column-major-ish; (0, 0), (3, 0), (0, 2) and (3, 2) are absent."""


def _sparse(out_dir: Path) -> GeneratedSlide:
    writer = SlideWriter(out_dir, "sparse")
    base = tissue_texture(_rng("sparse"), 1000, 700)
    writer.add_level(0, [base], CODECS["jpeg_ybr"], sparse=SPARSE_TILES, offset_table=False)
    return writer.slide


def _focal_planes(out_dir: Path) -> GeneratedSlide:
    writer = SlideWriter(out_dir, "focal_planes")
    sharp = tissue_texture(_rng("focal_planes"), 600, 400)
    planes = [sharp, blur(sharp, 2.5)]
    writer.add_level(0, planes, CODECS["jpeg_ybr"])
    writer.add_level(1, [resize(plane, 300, 200) for plane in planes], CODECS["jpeg_ybr"])
    return writer.slide


FLUORESCENCE_PATHS = (
    OpticalPath("1", "DAPI-like nuclei", 405.0),
    OpticalPath("2", "membrane stain", 561.0),
)


def _optical_paths(out_dir: Path) -> GeneratedSlide:
    writer = SlideWriter(out_dir, "optical_paths")
    for path, kind in zip(FLUORESCENCE_PATHS, ("nuclei", "membrane"), strict=True):
        base = fluorescence_texture(_rng("optical_paths", kind), 512, 384, kind)
        writer.add_pyramid(base, 2, CODECS["jpeg_grey"], path=path, offset_table=False)
    writer.slide.levels.sort(key=lambda level: level.index)
    return writer.slide


def _uncompressed16(out_dir: Path) -> GeneratedSlide:
    writer = SlideWriter(out_dir, "uncompressed16")
    base = grey16_texture(_rng("uncompressed16"), 300, 200)
    writer.add_level(0, [base], CODECS["raw16"], tile=128, window=(2150.0, 3300.0))
    return writer.slide


def converter_quirks(out_dir: Path) -> GeneratedSlide:
    """A pyramid as converters write them (issue 12, 4c); not in RECIPES, so the shared
    Orthanc and the tests that count its slides never see it.

    level-0: 600x400, TILED_SPARSE JPEG (YBR) with per-frame positions at Z 0 (6 tiles
    of 256). level-1: 300x200, TILED_FULL lossless JPEG 2000 without any Z, its edge
    frames cropped to the image as wsidicomizer's `add_missing_levels` stores them
    (3x2 tiles of 128: the right column 44 wide, the bottom row 72 high). One focal
    plane, one optical path.
    """
    writer = SlideWriter(out_dir, "converter_quirks")
    base = tissue_texture(_rng("converter_quirks"), 600, 400)
    jpeg = CODECS["jpeg_ybr"]
    tiles = cut_tiles(base, 256, 256)
    positions = sorted(tiles, key=lambda cell: (cell[1], cell[0]))
    writer.add_encoded_level(0, [jpeg.encode(tiles[cell]) for cell in positions], (600, 400),
                             256, jpeg, sparse=positions, offset_table=False)
    small = resize(base, 300, 200)
    j2k = CODECS["j2k_lossless"]
    cropped = [j2k.encode(small[row * 128 : (row + 1) * 128, column * 128 : (column + 1) * 128])
               for row in range(2) for column in range(3)]
    writer.add_encoded_level(1, cropped, (300, 200), 128, j2k)
    return writer.slide


def missing_matrix(out_dir: Path) -> GeneratedSlide:
    """A pyramid whose level-1 lacks what the slide model needs (issue 12, 5): level-0
    is 512x512 TILED_FULL JPEG in 4 tiles of 256; level-1, 256x256 in 4 TILED_FULL
    tiles of 128, has no TotalPixelMatrixColumns/Rows, so its frames have no layout.
    Not in RECIPES: the shared Orthanc, whose slides other tests count, never sees it."""
    writer = SlideWriter(out_dir, "missing_matrix")
    base = tissue_texture(_rng("missing_matrix"), 512, 512)
    writer.add_level(0, [base], CODECS["jpeg_ybr"])
    writer.add_level(1, [resize(base, 256, 256)], CODECS["jpeg_ybr"], tile=128,
                     omit=("TotalPixelMatrixColumns", "TotalPixelMatrixRows"))
    return writer.slide


RECIPES: dict[str, Callable[[Path], GeneratedSlide]] = {
    "jpeg_ybr": _jpeg_ybr,
    "jpeg_rgb": _jpeg_rgb,
    "jpeg2000": _jpeg2000,
    "jpeg2000_lossless": _jpeg2000_lossless,
    "sparse": _sparse,
    "focal_planes": _focal_planes,
    "optical_paths": _optical_paths,
    "uncompressed16": _uncompressed16,
}


def generate_test_slides(out_dir: Path, names: Sequence[str] | None = None) -> list[GeneratedSlide]:
    """Write the test slides (all, or those named) into `out_dir/<name>/`; one series each."""
    out_dir.mkdir(parents=True, exist_ok=True)
    return [RECIPES[name](out_dir) for name in (names or list(RECIPES))]


# --------------------------------------------------------------------------- benchmark


def write_pyramid(
    out_dir: Path,
    name: str = "large",
    *,
    width: int = 16384,
    height: int = 12288,
    tile: int = 256,
    levels: int = 1,
    codec: str = "jpeg_ybr",
    offset_table: bool = False,
) -> GeneratedSlide:
    """A large TILED_FULL pyramid for benchmarks, written fast: one instance per level.

    Level k is (width >> k) x (height >> k) in `tile`-square tiles (the defaults give
    64 x 48 = 3,072 JPEG tiles, a 45 MB instance, in about 4 s). Tiles are crops of one
    2048-pixel texture at per-tile offsets, so every tile differs, but lower levels are
    not true downsamples of level 0. `codec` is a key of `CODECS`; IDC's files have no
    basic offset table, hence `offset_table=False` by default.
    """
    writer = SlideWriter(out_dir, name)
    chosen = CODECS[codec]
    atlas = texture_atlas(chosen, name)
    for index in range(levels):
        level_width, level_height = max(1, width >> index), max(1, height >> index)
        frames = [chosen.encode(atlas_tile(atlas, column, row, index, tile))
                  for row in range(math.ceil(level_height / tile))
                  for column in range(math.ceil(level_width / tile))]
        writer.add_encoded_level(index, frames, (level_width, level_height), tile, chosen,
                                 offset_table=offset_table)
    return writer.slide


def atlas_tile(atlas: np.ndarray, column: int, row: int, level: int, tile: int) -> np.ndarray:
    """A tile-sized crop of the texture atlas at an offset unique to (column, row) for
    grids up to 1,792 x 1,792 tiles (the strides are prime to the span), shifted per level."""
    span_y, span_x = atlas.shape[0] - tile, atlas.shape[1] - tile
    x = (column * 173 + level * 31) % span_x
    y = (row * 131 + column * 37 + level * 17) % span_y
    return atlas[y : y + tile, x : x + tile]


def texture_atlas(codec: Codec, seed: str, size: int = 2048) -> np.ndarray:
    """A square tissue texture in the sample layout `codec` expects (RGB, grey, 16-bit)."""
    rgb = tissue_texture(_rng("atlas", seed), size, size)
    if codec.samples == 3:
        return rgb
    grey = rgb[..., 1]
    return grey.astype(np.uint16) * 16 if codec.bits_allocated > 8 else grey


def write_pyramid_level(
    out_dir: Path, name: str, width: int, height: int, tile: int = 256, levels: int = 1
) -> GeneratedSlide:
    """The benchmark's entry point: `write_pyramid` with the size given positionally.

    write_pyramid_level(out_dir, name, width, height, tile=256, levels=1) -> GeneratedSlide
    writes one TILED_FULL JPEG (YBR_FULL_422) instance per level, no offset table.
    """
    return write_pyramid(out_dir, name, width=width, height=height, tile=tile, levels=levels)
