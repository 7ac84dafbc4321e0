"""The image pixel description of a DICOM instance (PS3.3 C.7.6.3), from its DICOM JSON."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from idcfs.dicom.dicom_json import first_item, first_value, whole_number

ROWS = "00280010"
COLUMNS = "00280011"
SAMPLES_PER_PIXEL = "00280002"
PHOTOMETRIC = "00280004"
PLANAR_CONFIGURATION = "00280006"
BITS_ALLOCATED = "00280100"
BITS_STORED = "00280101"
PIXEL_REPRESENTATION = "00280103"
WINDOW_CENTER = "00281050"
WINDOW_WIDTH = "00281051"
SHARED_GROUPS = "52009229"
PER_FRAME_GROUPS = "52009230"
FRAME_VOI_LUT = "00289132"


@dataclass(frozen=True)
class PixelFormat:
    """How the pixels of one frame are laid out (Image Pixel module)."""

    rows: int
    columns: int
    samples_per_pixel: int
    bits_allocated: int
    bits_stored: int
    pixel_representation: int = 0
    photometric: str = "RGB"
    planar_configuration: int = 0
    window_center: float | None = None
    window_width: float | None = None

    @property
    def signed(self) -> bool:
        return self.pixel_representation == 1

    @property
    def bytes_per_sample(self) -> int:
        return max(1, (self.bits_allocated + 7) // 8)

    @property
    def frame_bytes(self) -> int:
        """Length of one uncompressed frame (YBR_FULL_422: two samples per pixel)."""
        samples = self.rows * self.columns * self.samples_per_pixel
        if self.photometric == "YBR_FULL_422":
            samples = samples * 2 // 3
        if self.bits_allocated == 1:
            return (samples + 7) // 8
        return samples * self.bytes_per_sample

    @classmethod
    def from_dicom_json(cls, instance: Mapping[str, Any]) -> PixelFormat:
        """Read the description from a DICOM JSON (PS3.18 F.2) instance metadata object.

        Raises ValueError (naming the attribute) when Rows/Columns are missing, or when a
        value is not a number or out of its range: a tile size of 0, 5 samples or 70
        allocated bits describe no frame we could cut or decode, and guessing would show
        a wrong layout. A value of 0 where 0 is meaningless reads as absent, as before.
        The VOI window is taken from the top level, else from the Frame VOI LUT of the
        shared (then first per-frame) functional groups, where multi-frame images keep it.
        """
        rows = _int(instance, ROWS, "Rows", 1, 65535)
        columns = _int(instance, COLUMNS, "Columns", 1, 65535)
        if rows is None or columns is None:
            raise ValueError("instance metadata has no Rows/Columns")
        spp = _int(instance, SAMPLES_PER_PIXEL, "SamplesPerPixel", 0, 4) or 1
        if spp not in (1, 3):
            raise ValueError(f"SamplesPerPixel is {spp}; a slide frame has 1 or 3")
        allocated = _int(instance, BITS_ALLOCATED, "BitsAllocated", 0, 64) or 8
        stored = _int(instance, BITS_STORED, "BitsStored", 0, allocated) or allocated
        photometric = str(first_value(instance, PHOTOMETRIC) or "")
        default_photometric = "RGB" if spp == 3 else "MONOCHROME2"
        center, width = _window(instance)
        return cls(
            rows=rows,
            columns=columns,
            samples_per_pixel=spp,
            bits_allocated=allocated,
            bits_stored=stored,
            pixel_representation=_int(instance, PIXEL_REPRESENTATION, "PixelRepresentation",
                                      0, 1) or 0,
            photometric=photometric.strip().upper() or default_photometric,
            planar_configuration=_int(instance, PLANAR_CONFIGURATION, "PlanarConfiguration",
                                      0, 1) or 0,
            window_center=center,
            window_width=width,
        )


def _window(instance: Mapping[str, Any]) -> tuple[float | None, float | None]:
    places = (
        instance,
        first_item(instance, SHARED_GROUPS, FRAME_VOI_LUT),
        first_item(instance, PER_FRAME_GROUPS, FRAME_VOI_LUT),
    )
    for place in places:
        center = _float(place, WINDOW_CENTER)
        width = _float(place, WINDOW_WIDTH)
        if center is not None and width is not None and width > 0:
            return center, width
    return None, None


def _int(
    element_map: Mapping[str, Any], tag: str, name: str, minimum: int, maximum: int
) -> int | None:
    """An integer attribute within [minimum, maximum], None when absent; else ValueError."""
    value = first_value(element_map, tag)
    if value is None or value == "":
        return None
    number = whole_number(value, name, minimum)
    if number > maximum:
        raise ValueError(f"{name} is {number}, more than {maximum}")
    return number


def _float(element_map: Mapping[str, Any], tag: str) -> float | None:
    """A DS value (JSON number or string); the first of several, as PS3.3 C.11.2.1.2 says."""
    value = first_value(element_map, tag)
    if isinstance(value, str):
        value = value.split("\\")[0].strip()
    try:
        number = None if value is None or value == "" else float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if number is not None and math.isfinite(number) else None
