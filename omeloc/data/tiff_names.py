"""File names of HCS TIFF exports: the instruments' naming schemes (presets) and what a name says.

A pattern is a regular expression matched against whole file names; its named groups say
what each part is:

- ``well`` (``B7``, ``B07``, ``b07``) or ``row`` + ``column``; a row is letters (``B``) or a
  number (``2`` or ``02`` = ``B``), a column a number;
- ``channel`` (a name, or an index when ``stain`` names it) and ``stain``;
- ``field`` or ``site``; ``plane`` or ``z``; ``time``, ``timepoint`` or ``t`` (numbers);
- other groups (``plate``, ...) are ignored.

The presets follow the documented export names of the instruments:

- ``phenix``: PerkinElmer/Revvity Opera Phenix and Operetta (Harmony), e.g.
  ``r03c03f03p01-ch1sk1fk1fl1.tiff``: row 3 (= C), column 3, field 3, plane 1, channel 1,
  time point 1 (``sk``); the format of the JUMP Cell Painting plates.
- ``imagexpress``: Molecular Devices ImageXpress (MetaXpress), e.g.
  ``Plate1_B02_s1_w1.tif`` with an optional GUID after the wavelength (``..._w1{GUID}.tif``);
  ``_s`` and ``_w`` are left out for one site or one wavelength; thumbnails (``_thumb``)
  are skipped.
- ``cellvoyager``: Yokogawa CellVoyager CV7000/CV8000, e.g.
  ``W1_B03_T0001F001L01A01Z01C01.tif``: time, field, timeline, action, plane, channel.
- ``nf1``: the NF1 Cell Painting export in ``shared/data`` (``B7_01_2_3_GFP_001.tif``).
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass

from omeloc.errors import InputError

__all__ = [
    "DEFAULT_PATTERN",
    "NF1_PATTERN",
    "PRESETS",
    "NameParts",
    "Preset",
    "matching_presets",
    "name_parts",
    "row_name",
]

#: File names of the NF1 Cell Painting export, e.g. ``B7_01_2_3_GFP_001.tif``.
NF1_PATTERN = (
    r"(?P<well>[A-P]\d{1,2})_01_(?P<channel>[1-3])_(?P<site>\d)_(?P<stain>DAPI|GFP|RFP)_001\.tif"
)
DEFAULT_PATTERN = (
    r"(?P<well>[A-Pa-p]\d{1,2})_\d+_(?P<channel>\d+)_(?P<site>\d+)_(?"
    r"P<stain>[A-Za-z0-9]+)_\d+\.tiff?"
)

_GUID = r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}"


@dataclass(frozen=True)
class Preset:
    """A naming scheme: the pattern of its file names, and the names to skip (thumbnails)."""

    pattern: str
    skip: str | None = None


#: The naming schemes ``--preset`` knows (see the module docstring).
PRESETS: dict[str, Preset] = {
    "phenix": Preset(
        r"r(?P<row>\d{1,3})c(?P<column>\d{1,3})f(?P<field>\d{1,4})p(?P<plane>\d{1,4})"
        r"-ch(?P<channel>\d{1,3})sk(?P<time>\d{1,5})fk\d+fl\d+\.tiff?"
    ),
    "imagexpress": Preset(
        rf"(?P<plate>.+?)_(?P<well>[A-Za-z]{{1,2}}\d{{2,3}})(?:_s(?P<site>\d{{1,4}}))?"
        rf"(?:_w(?P<channel>\d{{1,2}}))?(?:{_GUID})?\.tiff?",
        skip=r".*_thumb.*",
    ),
    "cellvoyager": Preset(
        r"(?P<plate>.+)_(?P<well>[A-Za-z]{1,2}\d{2,3})_T(?P<time>\d{4})F(?P<field>\d{3})"
        r"L\d{2}A\d{2}Z(?P<plane>\d{2})C(?P<channel>\d{2})\.tiff?"
    ),
    "nf1": Preset(NF1_PATTERN),
}


@dataclass(frozen=True)
class NameParts:
    """What one file name says: its well, field, channel (``None`` when the file holds all), time
    and plane."""

    row: str
    column: str
    field: str
    channel_key: str | None
    channel_label: str | None
    time: int | None
    plane: int | None


def row_name(text: str, file: str) -> str:
    """A plate row as NGFF names it: letters, upper case; a number counts from 1 = ``A`` (27 =
    ``AA``).

    Examples
    --------
    >>> row_name("03", "f.tif"), row_name("b", "f.tif"), row_name("27", "f.tif")
    ('C', 'B', 'AA')
    """
    if text.isdigit() and int(text) >= 1:
        n, letters = int(text), ""
        while n:
            n, rem = divmod(n - 1, 26)
            letters = string.ascii_uppercase[rem] + letters
        return letters
    if text.isalpha() and text.isascii() and 1 <= len(text) <= 2:
        return text.upper()
    raise InputError(
        f"Cannot read a plate row from {text!r} in {file}. Expected letters (B) or a number from 1 "
        "(02)."
    )


def _column_name(text: str, file: str) -> str:
    if not text.isdigit() or int(text) < 1:
        raise InputError(
            f"Cannot read a plate column from {text!r} in {file}. Expected a number from 1 (e.g. "
            "07)."
        )
    return str(int(text))


def _well(groups: dict[str, str], file: str) -> tuple[str, str]:
    if "well" in groups:
        m = re.fullmatch(r"([A-Za-z]{1,2})0*(\d{1,3})", groups["well"])
        if not m:
            raise InputError(
                f"Cannot read a well name from {groups['well']!r} in {file}. Expected e.g. B7 or "
                "B07."
            )
        return row_name(m.group(1), file), _column_name(m.group(2), file)
    column = groups.get("column", groups.get("col"))
    if "row" in groups and column is not None:
        return row_name(groups["row"], file), _column_name(column, file)
    raise InputError(
        "The pattern needs a named group 'well' (or 'row' and 'column'). Add (?P<well>...) to "
        "--pattern."
    )


def _number(groups: dict[str, str], names: tuple[str, ...], file: str) -> int | None:
    for name in names:
        if name in groups:
            if not groups[name].isdigit():
                raise InputError(
                    f"Expected a number for group {name!r} in {file}. Got {groups[name]!r} instead."
                )
            return int(groups[name])
    return None


def name_parts(match: re.Match[str], file: str) -> NameParts:
    """What the pattern's named groups say about ``file`` (see the module docstring)."""
    groups = {k: v for k, v in match.groupdict().items() if v is not None}
    row, column = _well(groups, file)
    field = groups.get("field", groups.get("site", "0"))
    field = str(int(field)) if field.isdigit() else field
    key = groups.get("channel", groups.get("stain"))
    return NameParts(
        row=row,
        column=column,
        field=field,
        channel_key=key,
        channel_label=groups.get("stain", key),
        time=_number(groups, ("time", "timepoint", "t"), file),
        plane=_number(groups, ("plane", "z"), file),
    )


def matching_presets(name: str) -> list[str]:
    """The presets whose pattern matches file name ``name`` (to say which export a folder holds)."""
    return [k for k, p in PRESETS.items() if re.fullmatch(p.pattern, name)]
