"""`--tile-name TEMPLATE`: what a template may be, and the names it gives."""

from __future__ import annotations

import pytest

from idcfs.fs.views.tile_names import DEFAULT_TEMPLATE, TileNames, check_template


@pytest.mark.parametrize("template", [
    DEFAULT_TEMPLATE, "{row:04d}_{col:04d}.jpg", "{col:x}-{row:X}.jpeg", "r{row:>5}c{col}.jpg",
    "tile {row:03} {col:03}.jpg",
])
def test_good_templates_pass(template: str) -> None:
    assert check_template(template) == template


@pytest.mark.parametrize(("template", "reason"), [
    ("{row}.jpg", "lacks {col}"),
    ("{col}{row}.jpg", "gives two tiles the name"),
    ("{col:1>3}_{row}.jpg", "gives two tiles the name"),  # a digit as fill character
    ("{col}_{row}.png", "end in .jpg or .jpeg"),
    ("{col}/{row}.jpg", "not a file name"),
    ("{col:/>3}_{row}.jpg", "not a file name"),
    ("{col}_{row}_{plane}.jpg", "unknown field {plane}"),
    ("{0}_{1}.jpg", "unknown field {0}"),
    ("{col!r}_{row}.jpg", "no conversion"),
    ("{col:{row}}_{row}.jpg", "nested field"),
    ("{col:c}_{row}.jpg", "not a whole-number format"),
    ("{col:.2f}_{row}.jpg", "not a whole-number format"),
    ("{col_{row}.jpg", "not a format string"),
    ("{col:0300d}_{row}.jpg", "longer than 255 bytes"),
])
def test_bad_templates_say_why_in_one_line(template: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason.replace("{", r"\{").replace(".", r"\.")) as caught:
        check_template(template)
    assert "\n" not in str(caught.value)


def test_names_are_the_template_formatted() -> None:
    assert TileNames().name(3, 12) == "3_12.jpg"
    assert TileNames("{row:04d}_{col:04d}.jpg").name(3, 12) == "0012_0003.jpg"
    with pytest.raises(ValueError):
        TileNames("{col}{row}.jpg")
