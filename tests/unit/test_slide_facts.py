"""What slide.json shows from the metadata itself (any server): PatientID,
ContainerIdentifier, SeriesDescription, each instance's transfer syntax (or the one its
frames named), each focal plane's Z, and the series' time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from idcfs.cache.disk import DiskCache
from idcfs.fetch.syntaxes import LearnedSyntaxes
from idcfs.slide.parse import parse_slide
from tests.unit.test_parse import element, instance

JPEG = "1.2.840.10008.1.2.4.50"


def spacing_mm(value: float) -> dict[str, Any]:
    """Shared functional groups giving SpacingBetweenSlices (mm)."""
    measures = {"00289110": element("SQ", {"00180088": element("DS", value)})}
    return {"52009229": element("SQ", measures)}


def test_tiled_full_planes_take_their_z_from_the_spacing_between_slices() -> None:
    two_planes = instance("1.1", 512, 256, 4, **{"00480303": element("UL", 2)},
                          **spacing_mm(0.0025))
    smaller = instance("1.2", 256, 128, 2, **{"00480303": element("UL", 2)},
                       **spacing_mm(0.0025))
    slide = parse_slide("s", "r", [two_planes, smaller])
    assert slide.focal_planes == [0.0, 2.5]
    assert [grid.plane_index for level in slide.levels for grid in level.grids] == [0, 1, 0, 1]


def test_tiled_full_planes_without_spacing_are_known_by_order_only() -> None:
    meta = instance("2.1", 512, 256, 4, **{"00480303": element("UL", 2)}, **spacing_mm(0))
    assert parse_slide("s", "r", [meta]).focal_planes == [None, None]


def test_series_facts_time_and_each_instances_syntax() -> None:
    level = instance("3.2", 256, 256, 1, **{
        "00100020": element("LO", "patient-1"), "00400512": element("LO", "SLIDE-1"),
        "0008103E": element("LO", "H&E"), "00080023": element("DA", "20240102"),
        "00080033": element("TM", "030405")})
    label = instance("3.1", 100, 50, 1, "LABEL", **{"00020010": element("UI", JPEG),
                                                    "00080020": element("DA", "20300101")})
    slide = parse_slide("s", "r", [level, label])
    described = slide.describe({"3.2": JPEG})
    assert (described["PatientID"], described["ContainerIdentifier"],
            described["SeriesDescription"]) == ("patient-1", "SLIDE-1", "H&E")
    assert [(item["SOPInstanceUID"], item["level"], item["kind"], item["transfer_syntax"],
             item["transfer_syntax_from"]) for item in described["instances"]] == [
        ("3.2", 0, "VOLUME", JPEG, "frames"), ("3.1", None, "LABEL", JPEG, "metadata")]
    assert not slide.syntaxes_known()
    assert slide.describe()["instances"][0]["transfer_syntax"] is None
    assert slide.time_ns == 1704164645 * 10**9  # the content date wins over a study date


def test_what_frames_taught_survives_a_remount_through_the_disk_cache(tmp_path: Path) -> None:
    disk = DiskCache(tmp_path / "cache", 1 << 20)
    learned = LearnedSyntaxes(disk)
    learned.learn("1.2", None)
    learned.learn("1.3", JPEG)
    assert learned.of(["1.2", "1.3"]) == {"1.3": JPEG}
    after = LearnedSyntaxes(disk)
    assert after.of(["1.3"]) == {}  # of() never reads the disk
    after.recall(["1.2", "1.3"])
    assert after.of(["1.2", "1.3"]) == {"1.3": JPEG}
    disk.close()
