"""Import a folder of per-well, per-channel TIFFs into an OME-Zarr HCS plate.

File names are parsed with a regular expression whose named groups say what each part
is: ``well`` (``B7``, ``B07``) or ``row`` + ``column``; ``channel`` (a name, or an index
when ``stain`` names it); optional ``field`` or ``site``.  Everything is checked (every file
matches, every image has every channel, all shapes and dtypes agree) before anything is
written; the plate is written under a temporary name and renamed at the end, so an
interrupted import never leaves a half-written plate at ``OUT``.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import string
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile

from omeloc.errors import InputError, PathNotFoundError
from omeloc.ngff.writer import write_plate
from omeloc.testing.faults import fault_point

__all__ = ["import_tiff", "NF1_PATTERN", "DEFAULT_PATTERN"]

logger = logging.getLogger(__name__)

#: File names of the NF1 Cell Painting export, e.g. ``B7_01_2_3_GFP_001.tif``.
NF1_PATTERN = r"(?P<well>[A-P]\d{1,2})_01_(?P<channel>[1-3])_(?P<site>\d)_(?P<stain>DAPI|GFP|RFP)_001\.tif"
DEFAULT_PATTERN = r"(?P<well>[A-Pa-p]\d{1,2})_\d+_(?P<channel>\d+)_(?P<site>\d+)_(?P<stain>[A-Za-z0-9]+)_\d+\.tiff?"

_TIFF_SUFFIXES = (".tif", ".tiff")


@dataclass(frozen=True)
class _Entry:
    path: Path
    row: str
    column: str
    field: str
    channel_key: str
    channel_label: str


def _parse_well(name: str, file: str) -> tuple[str, str]:
    m = re.fullmatch(r"([A-Za-z]{1,2})0*(\d{1,3})", name)
    if not m:
        raise InputError(f"Cannot read a well name from {name!r} in {file}. Expected e.g. B7 or B07.")
    return m.group(1).upper(), str(int(m.group(2)))


def _entry(path: Path, regex: re.Pattern[str]) -> _Entry | None:
    m = regex.fullmatch(path.name)
    if m is None:
        return None
    groups = {k: v for k, v in m.groupdict().items() if v is not None}
    if "well" in groups:
        row, column = _parse_well(groups["well"], path.name)
    elif "row" in groups and ("column" in groups or "col" in groups):
        row = groups["row"].upper()
        column = str(int(groups.get("column", groups.get("col"))))
    else:
        raise InputError(
            "The pattern needs a named group 'well' (or 'row' and 'column'). "
            "Add (?P<well>...) to --pattern."
        )
    if "channel" not in groups and "stain" not in groups:
        raise InputError("The pattern needs a named group 'channel' (or 'stain'). Add (?P<channel>...) to --pattern.")
    field = groups.get("field", groups.get("site", "0"))
    field = str(int(field)) if field.isdigit() else field
    key = groups.get("channel", groups.get("stain"))
    label = groups.get("stain", key)
    return _Entry(path, row, column, field, key, label)


def _layout(rows: set[str], columns: set[str]) -> tuple[list[str], list[str]]:
    """Standard plate layout (96, 384 or 1536 wells) that holds every used well."""
    max_row = max(string.ascii_uppercase.index(r[-1]) + 26 * (len(r) - 1) for r in rows) + 1
    max_col = max(int(c) for c in columns)
    for n_rows, n_cols in ((8, 12), (16, 24), (32, 48)):
        if max_row <= n_rows and max_col <= n_cols:
            break
    else:
        n_rows, n_cols = max_row, max_col
    letters = list(string.ascii_uppercase) + ["A" + c for c in string.ascii_uppercase]
    return letters[:n_rows], [str(i) for i in range(1, n_cols + 1)]


def _auto_levels(shape: Sequence[int], min_size: int = 128) -> int:
    levels = 1
    while min(shape[-2:]) // 2**levels >= min_size:
        levels += 1
    return levels


def _reporter(progress: Callable[[int, int], None] | None, total: int) -> Callable[[int], None]:
    def report(n: int) -> None:
        if n == 1:
            fault_point("import_mid")  # test hook (OMELOC_TEST_KILL_AT)
        if progress:
            progress(n, total)

    return report


def import_tiff(
    folder: str | os.PathLike,
    out: str | os.PathLike,
    *,
    pattern: str = DEFAULT_PATTERN,
    channel_names: Mapping[str, str] | None = None,
    ngff_version: str = "0.5",
    chunks: tuple[int, int] = (256, 256),
    levels: int | None = None,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Build an OME-Zarr HCS plate from a folder of per-well, per-channel TIFFs.

    Parameters
    ----------
    folder
        Folder holding the TIFFs (not searched recursively).
    out
        The plate to create (e.g. ``plate.zarr``).
    pattern
        Regular expression matched against whole file names, with named groups ``well``
        (or ``row`` and ``column``), ``channel`` and optionally ``stain`` (the channel's
        label when ``channel`` is an index) and ``field``/``site``.  See :data:`NF1_PATTERN`.
    channel_names
        Renames labels, e.g. ``{"RFP": "actin", "GFP": "ER", "DAPI": "nuclei"}``.
    ngff_version
        ``"0.5"`` (Zarr v3, default) or ``"0.4"`` (Zarr v2).
    chunks
        Chunk size along y and x; one channel plane per chunk so channels can be appended.
    levels
        Pyramid levels; default: halve until the smaller side drops below 128 pixels.
    overwrite
        Replace ``out`` if it exists.
    progress
        Called with ``(images written, images in all)``.

    Returns
    -------
    pathlib.Path
        The plate path.

    Raises
    ------
    InputError
        Files that do not match the pattern, missing channels, differing shapes or dtypes.
    """
    folder = Path(folder)
    out = Path(out)
    if not folder.is_dir():
        raise PathNotFoundError(f"TIFF folder {folder} does not exist. Check the path.")
    try:
        regex = re.compile(pattern)
    except re.error as err:
        raise InputError(f"--pattern is not a valid regular expression ({err}). Fix the pattern.") from err
    if out.exists() and not overwrite:
        raise InputError(f"{out} already exists. Choose another output path or pass --overwrite.")
    tiffs = sorted(p for p in folder.iterdir() if p.suffix.lower() in _TIFF_SUFFIXES and p.is_file())
    if not tiffs:
        raise InputError(f"No .tif/.tiff files in {folder}. Point import-tiff at the folder holding the TIFFs.")
    entries, unmatched = [], []
    for p in tiffs:
        e = _entry(p, regex)
        (entries.append(e) if e is not None else unmatched.append(p.name))
    if unmatched:
        raise InputError(
            f"{len(unmatched)} of {len(tiffs)} TIFFs do not match --pattern (e.g. {unmatched[0]!r}). "
            f"Fix --pattern or move those files out of {folder}."
        )
    rename = dict(channel_names or {})
    # channel order: by the channel key (numeric when it is an index), label from stain/rename
    keys = sorted({e.channel_key for e in entries}, key=lambda k: (0, int(k), "") if k.isdigit() else (1, 0, k))
    labels = {}
    for e in entries:
        labels.setdefault(e.channel_key, rename.get(e.channel_label, e.channel_label))
    names = [labels[k] for k in keys]
    if len(set(names)) != len(names):
        raise InputError(f"Channel labels {names} are not unique. Give each channel its own name with channel_names.")
    images: dict[tuple[str, str, str], dict[str, Path]] = {}
    for e in entries:
        slot = images.setdefault((e.row, e.column, e.field), {})
        if e.channel_key in slot:
            raise InputError(
                f"Two files for well {e.row}{e.column} field {e.field} channel {labels[e.channel_key]!r}: "
                f"{slot[e.channel_key].name} and {e.path.name}. Make --pattern tell them apart."
            )
        slot[e.channel_key] = e.path
    for (r, c, f), slot in images.items():
        missing = [labels[k] for k in keys if k not in slot]
        if missing:
            raise InputError(
                f"Well {r}{c} field {f} has no TIFF for channel(s) {', '.join(missing)}. "
                f"Add the files or remove the well's other files."
            )
    ref_shape = ref_dtype = ref_file = None
    for slot in images.values():
        for p in slot.values():
            try:
                with tifffile.TiffFile(p) as tf:
                    series = tf.series[0]
                    shape, dtype = tuple(series.shape), np.dtype(series.dtype)
            except (tifffile.TiffFileError, OSError, IndexError) as err:
                raise InputError(f"{p.name} is not a readable TIFF ({err}). Replace or remove it.") from err
            if len([n for n in shape if n > 1]) > 2:
                raise InputError(f"{p.name} has shape {shape}; import-tiff takes one 2-D plane per file.")
            shape = tuple(n for n in shape if n > 1)[-2:] if len(shape) > 2 else shape
            if ref_shape is None:
                ref_shape, ref_dtype, ref_file = shape, dtype, p.name
            elif shape != ref_shape or dtype != ref_dtype:
                raise InputError(
                    f"{p.name} is {shape} {dtype} but {ref_file} is {ref_shape} {ref_dtype}. "
                    f"All TIFFs of a plate must share shape and dtype."
                )
    rows_used = {r for r, _, _ in images}
    cols_used = {c for _, c, _ in images}
    rows, columns = _layout(rows_used, cols_used)
    n_levels = levels or _auto_levels(ref_shape)
    total = len(images)

    def loader(slot: dict[str, Path]) -> Callable[[], np.ndarray]:
        return lambda: np.stack([tifffile.imread(slot[k]).reshape(ref_shape) for k in keys])

    tmp = out.with_name(out.name + ".importing")
    if tmp.exists():
        shutil.rmtree(tmp)  # a previous import was interrupted; it never reached `out`
    write_plate(
        tmp, {key: loader(slot) for key, slot in images.items()},
        channel_names=names, ngff_version=ngff_version, chunks=chunks, levels=n_levels,
        plate_name=out.stem, rows=rows, columns=columns,
        extra_attrs={"omeloc_import": {"source_folder": str(folder.resolve()), "pattern": pattern,
                                        "files": len(entries)}},
        progress=_reporter(progress, total),
    )
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    logger.info("imported %d TIFFs from %s into %s", len(entries), folder, out)
    return out
