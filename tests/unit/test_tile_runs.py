"""Grids made on first use (`TileRun`): the same tiles, in the same order, and the same
slide.json as laying out every frame one by one, which entering a series no longer does
for TILED_FULL instances."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from idcfs.dicom.dicom_json import DicomJson, first_value
from idcfs.slide.model import FrameRef, Slide, TileGrid, TilePosition, TileRun
from idcfs.slide.parse import _natural, _plane_index, frame_placements, parse_slide, read_instance
from idcfs.source.dicomfile import read_header
from tests.support.slides import GeneratedSlide
from tests.unit.test_parse import element, instance, plane_position

CONCATENATION_OFFSET = "00209228"


def header_json(path: Path) -> DicomJson:
    data = path.read_bytes()
    return read_header(lambda start, length: data[start:start + length], len(data)).dicom_json


def frame_by_frame(slide: Slide, metadata: list[DicomJson]) -> Slide:
    """The slide with every grid laid out as before `TileRun`: each volume frame placed
    (`frame_placements`), instances in UID order, the first frame of a cell winning."""
    placements = {}
    for meta in metadata:
        uid = first_value(meta, "00080018")
        if uid in slide.instances and slide.instances[uid].flavour == "VOLUME":
            placements[uid] = list(frame_placements(meta, read_instance(meta)))
    plane_index, _ = _plane_index({p.plane_key for found in placements.values() for p in found})
    levels = []
    for level in slide.levels:
        cells: dict[tuple[int, str], dict[tuple[int, int], TilePosition]] = defaultdict(dict)
        for uid in sorted(level.instance_uids):
            for p in placements[uid]:
                cells[(plane_index[p.plane_key], p.optical_path)].setdefault(
                    (p.row, p.column), TilePosition(p.column, p.row, p.frame))
        keys = sorted(cells, key=lambda key: (key[0], _natural(key[1])))
        grids = [TileGrid(plane, path, [cells[(plane, path)][cell]
                                        for cell in sorted(cells[(plane, path)])])
                 for plane, path in keys]
        levels.append(replace(level, grids=grids))
    return replace(slide, levels=levels)


def runs_of(slide: Slide) -> list[TileRun]:
    return [grid.tiles for level in slide.levels for grid in level.grids
            if isinstance(grid.tiles, TileRun)]


def assert_same_as_frame_by_frame(metadata: list[DicomJson]) -> Slide:
    slide = parse_slide("s", "r", metadata)
    described = slide.describe()  # before any tile is made: from lengths alone
    assert not any(run.is_made for run in runs_of(slide))
    expected = frame_by_frame(slide, metadata)
    assert described == expected.describe()
    assert [[(grid.plane_index, grid.optical_path, list(grid.tiles)) for grid in level.grids]
            for level in slide.levels] == [
        [(grid.plane_index, grid.optical_path, grid.tiles) for grid in level.grids]
        for level in expected.levels]
    return slide


def test_every_generated_slide_matches_frame_by_frame(
    test_slides: list[GeneratedSlide],
) -> None:
    lazy = {}
    for generated in test_slides:
        slide = assert_same_as_frame_by_frame([header_json(path) for path in generated.files])
        lazy[generated.name] = len(runs_of(slide))
    assert lazy["sparse"] == 0  # TILED_SPARSE: laid out frame by frame
    assert lazy["focal_planes"] > 1 and lazy["optical_paths"] > 1
    assert all(count > 0 for name, count in lazy.items() if name != "sparse")


def paths(*identifiers: str) -> dict[str, Any]:
    items = [{"00480106": element("SH", identifier)} for identifier in identifiers]
    return {"00480302": element("UL", len(identifiers)), "00480105": element("SQ", *items)}


LAYOUTS = {
    "one instance": [instance("1.1", 768, 512, 6)],
    "fewer frames than cells": [instance("1.1", 768, 512, 4)],
    "frames beyond the grid": [instance("1.1", 768, 512, 8)],
    "concatenation": [instance("1.1", 768, 512, 4),
                      instance("1.2", 768, 512, 2, **{CONCATENATION_OFFSET: element("UL", 4)})],
    "one part of a concatenation": [
        instance("1.2", 768, 512, 3, **{CONCATENATION_OFFSET: element("UL", 2)})],
    "planes by order": [instance("1.1", 512, 256, 5, **{"00480303": element("UL", 3)})],
    "two paths": [instance("1.1", 512, 256, 4, **paths("2", "10"))],
    "one path twice": [instance("1.1", 512, 256, 4, **paths("1", "1"))],
    "two instances of one level": [instance("1.1", 512, 256, 2), instance("1.2", 512, 256, 2)],
    "sparse beside full": [
        instance("1.1", 768, 512, 6),
        instance("1.2", 768, 512, 2, **{
            "00209311": element("CS", "TILED_SPARSE"),
            "52009230": element("SQ", plane_position(1, 1, 0.0), plane_position(257, 257, 0.0)),
        })],
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_layouts_match_frame_by_frame(layout: str) -> None:
    assert_same_as_frame_by_frame(LAYOUTS[layout])


def test_a_grid_one_layer_fills_is_a_run_and_others_are_laid_out() -> None:
    alone = parse_slide("s", "r", LAYOUTS["one part of a concatenation"])
    assert [(run.first_cell, run.cells, run.first_number) for run in runs_of(alone)] == [
        (2, 3, 1)]
    for shared in ("concatenation", "one path twice", "sparse beside full"):
        assert runs_of(parse_slide("s", "r", LAYOUTS[shared])) == []


class SlowRun(TileRun):
    """A run whose making takes long enough for every thread to ask for it meanwhile."""

    makes = 0

    def _make(self) -> list[TilePosition]:
        SlowRun.makes += 1
        time.sleep(0.05)
        return super()._make()


def test_first_use_from_many_threads_makes_the_tiles_once() -> None:
    run = SlowRun("1.1", 3, 0, 6, 1)
    start = threading.Barrier(8)
    seen: list[list[TilePosition]] = []

    def use() -> None:
        start.wait()
        seen.append(run[0:6])

    threads = [threading.Thread(target=use) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert SlowRun.makes == 1
    assert seen == [[TilePosition(column, row, FrameRef("1.1", 1 + column + 3 * row))
                     for row in range(2) for column in range(3)]] * 8
    assert run.is_made and len(run) == 6 and run[-1] == seen[0][-1] and list(run) == seen[0]
