"""The IIIF view's names and info.json: region and size syntax (IIIF Image API 3.0,
level 1), clipping at the image's edge, scale factors from the pyramid, the service
id, and the tree it answers over an in-memory source with the real region reader."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from idcfs.cache.memory import ByteLRU
from idcfs.cache.tiles import TileCache
from idcfs.catalog.base import SeriesEntry
from idcfs.cli import main
from idcfs.errors import NotFoundError
from idcfs.fetch.loader import TileLoader
from idcfs.fetch.regions import Region, RegionReader
from idcfs.fetch.slides import SlideStore
from idcfs.fs.nodes import DirNode, FileNode, Node
from idcfs.fs.tree import Tree
from idcfs.fs.views.catalog import CatalogView
from idcfs.fs.views.iiif import (
    IiifView,
    check_base_url,
    info_document,
    parse_region,
    parse_size,
    scale_factors,
)
from idcfs.fs.views.rendered import RenderedFile
from idcfs.metrics import Metrics
from idcfs.slide.model import Level
from idcfs.tiles.convert import DEFAULT_QUALITY
from tests.support.memory_source import MemorySource
from tests.support.slides import GeneratedSlide

W, H = 1000, 700


@pytest.mark.parametrize(("text", "region"), [
    ("full", Region(0, 0, W, H)),
    ("square", Region(150, 0, 700, 700)),
    ("0,0,256,256", Region(0, 0, 256, 256)),
    ("900,600,200,200", Region(900, 600, 100, 100)),  # clipped at the edge
    ("999,699,5000,5000", Region(999, 699, 1, 1)),
])
def test_regions_in_full_resolution_pixels_are_clipped_to_the_image(
        text: str, region: Region) -> None:
    assert parse_region(text, W, H) == region


@pytest.mark.parametrize("text", [
    "1000,0,10,10", "0,700,10,10",  # entirely outside
    "0,0,0,10", "0,0,10,0",  # empty
    "pct:0,0,50,50", "0,0,10", "0,0,10,10,10", "-1,0,10,10", "0.5,0,10,10", "FULL", "",
    " 0,0,10,10",
])
def test_a_region_that_cannot_be_is_no_name(text: str) -> None:
    assert parse_region(text, W, H) is None


REGION = Region(100, 100, 400, 300)


@pytest.mark.parametrize(("text", "size"), [
    ("max", (400, 300)),
    ("200,", (200, 150)),
    (",150", (200, 150)),
    ("133,", (133, 100)),  # 99.75 rounded
    ("1,", (1, 1)),  # never 0 high
    ("400,300", (400, 300)),
    ("10,300", (10, 300)),  # w,h may change the aspect ratio
])
def test_sizes_of_level_1(text: str, size: tuple[int, int]) -> None:
    assert parse_size(text, REGION) == size


@pytest.mark.parametrize("text", [
    "401,", ",301", "401,300",  # upscaling, without ^ or with it
    "^max", "^800,", "!200,200", "pct:50", "0,", ",0", "0,0", ",", "", "full", "200",
    "200,,", "a,b",
])
def test_a_size_that_cannot_be_is_no_name(text: str) -> None:
    assert parse_size(text, REGION) is None


def level(index: int, width: int, height: int, downsample: float, tile: int = 256) -> Level:
    return Level(index, width, height, tile, tile, downsample, None, [])


def test_scale_factors_reach_one_tile_without_gaps_and_stop_past_the_stored_levels() -> None:
    pyramid = [level(0, 1000, 700, 1.0), level(1, 500, 350, 2.0), level(2, 250, 175, 4.0)]
    assert scale_factors(pyramid, 256, 256) == [1, 2, 4]  # 250 x 175 fits one tile
    odd = [level(0, 1001, 701, 1.0), level(1, 500, 350, 2.002)]  # within 1 % of 2
    assert scale_factors(odd, 256, 256) == [1, 2, 4]
    large = [level(0, 100_000, 80_000, 1.0), level(1, 25_000, 20_000, 4.0)]
    assert scale_factors(large, 256, 256) == [1, 2, 4, 8, 16]  # 4 x the coarsest
    single = [level(0, 320, 240, 1.0)]
    assert scale_factors(single, 128, 128) == [1, 2, 4]


def test_info_json_is_a_level_1_image_service_with_the_pyramids_tiles() -> None:
    pyramid = [level(0, 1000, 700, 1.0), level(1, 500, 350, 2.0)]
    info = info_document("http://localhost:8000/studies/1.2/3.4/iiif", pyramid)
    assert info == {
        "@context": "http://iiif.io/api/image/3/context.json",
        "id": "http://localhost:8000/studies/1.2/3.4/iiif",
        "type": "ImageService3",
        "protocol": "http://iiif.io/api/image",
        "profile": "level1",
        "width": 1000,
        "height": 700,
        "tiles": [{"width": 256, "scaleFactors": [1, 2, 4]}],
        "extraFeatures": ["regionByPx", "regionSquare", "sizeByW", "sizeByH", "sizeByWh"],
    }
    oblong = [Level(0, 1000, 700, 512, 256, 1.0, None, [])]
    assert info_document("x", oblong)["tiles"] == [
        {"width": 512, "height": 256, "scaleFactors": [1, 2, 4]}]


def test_the_base_url_is_checked_and_loses_its_trailing_slash() -> None:
    assert check_base_url("http://localhost:8000/") == "http://localhost:8000"
    assert check_base_url("https://example.org/slides/mnt") == "https://example.org/slides/mnt"
    for bad in ("localhost:8000", "ftp://host", "http://", "http://host/?a=1", "http://h/#x"):
        with pytest.raises(ValueError, match="--iiif-base-url"):
            check_base_url(bad)


def test_a_bad_base_url_on_the_command_line_is_one_line_and_exit_2(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(["mount", "--url", "http://127.0.0.1:1/dicom-web", "--iiif-base-url",
              "localhost:8000", str(tmp_path)])
    assert stopped.value.code == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "--iiif-base-url" in error, error


# -- the view in a tree, with the real region reader over an in-memory source ---------


@dataclass
class IiifTree:
    tree: Tree
    source: MemorySource
    series: str

    def node(self, path: str) -> Node:
        return self.tree.resolve(f"{self.series}/{path}")

    def names(self, path: str) -> list[str]:
        return [child.name for child in self.tree.children(self.node(path).inode)]


@pytest.fixture
def iiif_tree(test_slides: list[GeneratedSlide]) -> Iterator[IiifTree]:
    yield tree_of(test_slides, "jpeg_ybr", "http://localhost:8000/")


def tree_of(slides: list[GeneratedSlide], name: str, base_url: str | None) -> IiifTree:
    slide = next(slide for slide in slides if slide.name == name)
    source = MemorySource(slide.files)
    metrics = Metrics()
    tiles = TileCache(ByteLRU(32 << 20), ByteLRU(1 << 20), None, DEFAULT_QUALITY, metrics)
    reader = RegionReader(TileLoader(source, tiles, metrics), metrics)
    base = check_base_url(base_url) if base_url else None

    class OneSeries:
        def has_collections(self) -> bool:
            return False

        def studies(self, collection_id: str | None = None) -> list[str]:
            return [slide.study_uid]

        def series(self, study_uid: str, collection_id: str | None = None) -> list[SeriesEntry]:
            return [SeriesEntry(slide.study_uid, slide.series_uid)]

    view = CatalogView(OneSeries(), SlideStore(source), [IiifView(reader, base)])  # type: ignore[arg-type]
    return IiifTree(Tree(view.root_children), source,
                    f"studies/{slide.study_uid}/{slide.series_uid}")


def test_a_series_lists_iiif_with_info_json_only_and_listing_fetches_no_frame(
        iiif_tree: IiifTree) -> None:
    assert iiif_tree.names("") == ["iiif"]
    assert iiif_tree.names("iiif") == ["info.json"]
    info = json.loads(_content(iiif_tree.node("iiif/info.json")))
    assert info["id"] == f"http://localhost:8000/{iiif_tree.series}/iiif"
    assert (info["width"], info["height"]) == (1000, 700)
    assert iiif_tree.names("iiif/full") == []  # sizes are answered, not listed
    assert iiif_tree.names("iiif/full/max") == ["0"]
    assert iiif_tree.names("iiif/full/max/0") == ["default.jpg"]
    assert isinstance(iiif_tree.node("iiif/0,0,10,10/5,5/0/default.jpg"), RenderedFile)
    assert iiif_tree.source.requests == []


@pytest.mark.parametrize("path", [
    "iiif/nowhere", "iiif/2000,0,10,10", "iiif/full/2000,", "iiif/full/^max",
    "iiif/full/max/90", "iiif/full/max/0/gray.jpg", "iiif/full/max/0/default.png",
    "iiif/full/max/0/default.jpg/more",
])
def test_names_that_are_no_iiif_request_are_enoent(iiif_tree: IiifTree, path: str) -> None:
    with pytest.raises((NotFoundError, NotADirectoryError)):
        iiif_tree.node(path)


def test_a_region_file_is_the_region_rendered_and_the_same_render_twice(
        iiif_tree: IiifTree) -> None:
    image = _image(iiif_tree.node("iiif/900,600,500,500/max/0/default.jpg"))
    assert image.size == (100, 100)  # clipped
    sent = len(iiif_tree.source.requests)
    assert sent > 0
    again = iiif_tree.node("iiif/900,600,100,100/100,100/0/default.jpg")  # the same region
    assert _image(again).size == (100, 100)
    assert len(iiif_tree.source.requests) == sent
    assert _image(iiif_tree.node("iiif/full/250,/0/default.jpg")).size == (250, 175)


def test_without_a_base_url_the_id_is_the_path_from_the_mounts_root(
        test_slides: list[GeneratedSlide]) -> None:
    tree = tree_of(test_slides, "focal_planes", None)
    names = tree.names("")
    assert names == ["iiif-plane-0_path-1", "iiif-plane-1_path-1"]
    info = json.loads(_content(tree.node(f"{names[1]}/info.json")))
    assert info["id"] == f"/{tree.series}/{names[1]}"
    assert info["tiles"][0]["scaleFactors"] == [1, 2, 4]


def _content(node: Node) -> bytes:
    assert isinstance(node, FileNode)
    return node.content()


def _image(node: Node) -> Image.Image:
    assert not isinstance(node, DirNode)
    image = Image.open(io.BytesIO(_content(node)))
    assert image.format == "JPEG" and np.asarray(image).size
    return image
