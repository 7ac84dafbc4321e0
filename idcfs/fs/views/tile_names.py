"""Tile file names from `--tile-name TEMPLATE` (docs/LAYOUT.md): a `str.format` template
over `{col}` and `{row}` (zero-based), each with an optional integer format spec, e.g.
`{row:04d}_{col:04d}.jpg`, so that tools sorting names (`ls`, shell globs, `montage
*.jpg`) see the tiles row by row. The default keeps `<col>_<row>.jpg`.

A template is checked once, at startup (`check_template`): it names both fields and no
other, formats whole numbers, and gives names that are file names ending in `.jpg` or
`.jpeg`, different for different tiles. Uniqueness is checked over every tile of a
128 x 128 grid and a few far ones: whatever spec a template uses, two tiles it names
alike (`{col}{row}.jpg`: 1_11 and 11_1, or a digit as fill character) meet there.
"""

from __future__ import annotations

import string

DEFAULT_TEMPLATE = "{col}_{row}.jpg"
FIELDS = ("col", "row")
EXTENSIONS = (".jpg", ".jpeg")
CHECKED_GRID = 128  # every (col, row) below this is named at startup
FAR_VALUES = (999, 1000, 9999, 10000, 65535, 99999, 100000)
NAME_MAX_BYTES = 255
INTEGER_TYPES = "dxXob"  # presentation types whose output is a file-name-safe number


def check_template(template: str) -> str:
    """`template` when it makes good tile names; ValueError with a one-line reason."""
    _check_fields(template)
    names: set[str] = set()
    values = [*range(CHECKED_GRID), *FAR_VALUES]
    for col in values:
        for row in values:
            name = _checked_name(template, col, row)
            if name in names:
                raise ValueError(f"{template!r} gives two tiles the name {name!r} (one is col "
                                 f"{col}, row {row}); separate the fields, e.g. "
                                 "'{row:04d}_{col:04d}.jpg'")
            names.add(name)
    return template


class TileNames:
    """The file name of each tile: `name(col, row)`, from a checked template."""

    def __init__(self, template: str = DEFAULT_TEMPLATE) -> None:
        self.template = template if template == DEFAULT_TEMPLATE else check_template(template)

    def name(self, col: int, row: int) -> str:
        return self.template.format(col=col, row=row)


def _check_fields(template: str) -> None:
    """Both fields and no other, each with an integer spec and no conversion."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as error:
        raise ValueError(f"{template!r} is not a format string: {error}") from None
    used = []
    for _, field, spec, conversion in parsed:
        if field is None:
            continue
        if field not in FIELDS:
            raise ValueError(f"{template!r}: unknown field {{{field}}}; use {{col}} and {{row}}")
        if conversion or "{" in (spec or ""):
            raise ValueError(f"{template!r}: {{{field}}} may take a format spec such as "
                             ":04d, no conversion or nested field")
        if spec and spec[-1].isalpha() and spec[-1] not in INTEGER_TYPES:
            raise ValueError(f"{template!r}: {{{field}:{spec}}} is not a whole-number "
                             f"format (use one of {', '.join(INTEGER_TYPES)})")
        used.append(field)
    missing = [name for name in FIELDS if name not in used]
    if missing:
        raise ValueError(f"{template!r} lacks {{{missing[0]}}}: every tile needs its own name")


def _checked_name(template: str, col: int, row: int) -> str:
    try:
        name = template.format(col=col, row=row)
    except (ValueError, TypeError) as error:
        raise ValueError(f"{template!r}: {error}") from None
    if "/" in name or "\0" in name or name in (".", ".."):
        raise ValueError(f"{template!r} makes {name!r}, not a file name")
    if len(name.encode()) > NAME_MAX_BYTES:
        raise ValueError(f"{template!r} makes names longer than {NAME_MAX_BYTES} bytes")
    if not name.endswith(EXTENSIONS):
        raise ValueError(f"{template!r} makes {name!r}: tile names end in .jpg or .jpeg")
    return name
