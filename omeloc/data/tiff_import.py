"""Import a folder of HCS TIFFs (vendor exports, OME-TIFFs) into an OME-Zarr HCS plate.

File names are parsed with a pattern, or a preset for an instrument's naming scheme
(:mod:`omeloc.data.tiff_names`: Opera Phenix/Operetta, ImageXpress, CellVoyager).  A file
holds one plane, or several channels, planes or time points when its axes say so
(OME-TIFF, ImageJ hyperstack, RGB; ``file_axes`` names them for TIFFs that do not).
Compressed TIFFs (LZW, deflate, zstd, ...) are decoded by tifffile with ``imagecodecs``.

Everything is checked (every file matches, every image has every channel, plane and time
point, all shapes and dtypes agree, every compression can be decoded) before anything is
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
from typing import Any

import numpy as np

from omeloc.data.tiff_files import FileInfo, check_decodable, file_info, read_planes
from omeloc.data.tiff_names import (
    DEFAULT_PATTERN,
    NF1_PATTERN,
    PRESETS,
    NameParts,
    matching_presets,
    name_parts,
)
from omeloc.errors import InputError, PathNotFoundError
from omeloc.ngff.writer import write_image, write_plate
from omeloc.testing.faults import fault_point

__all__ = [
    "DEFAULT_PATTERN",
    "NF1_PATTERN",
    "PRESETS",
    "SITE_KEY",
    "import_tiff",
    "import_tiff_files",
]

#: Attribute of each imported field's image group: the site (field number) its file names gave.
SITE_KEY = "omeloc_site"

logger = logging.getLogger(__name__)

_TIFF_SUFFIXES = (".tif", ".tiff")

#: One image's planes: (channel, time, plane) indices → (file, index of the plane inside it).
_Planes = dict[tuple[int, int, int], tuple[Path, tuple[int, int, int]]]


@dataclass(frozen=True)
class _Entry:
    path: Path
    parts: NameParts


@dataclass(frozen=True)
class _Plan:
    """What the plate will hold: channel labels, T and Z sizes, the planes and site of each image.

    Images are keyed by ``(row, column, field path)``, field paths ``0..n-1`` in every well;
    ``sites`` gives the site (field number of the file names) each one was imported from.
    """

    labels: list[str]
    n_t: int
    n_z: int
    yx: tuple[int, int]
    images: dict[tuple[str, str, str], _Planes]
    sites: dict[tuple[str, str, str], str]


def _layout(rows: set[str], columns: set[str]) -> tuple[list[str], list[str]]:
    """Standard plate layout (96, 384 or 1536 wells) that holds every used well."""
    max_row = max(string.ascii_uppercase.index(r[-1]) + 1 + 26 * (len(r) - 1) for r in rows)
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


def _check_request(
    folder: Path, out: Path, pattern: str | None, preset: str | None, overwrite: bool
) -> tuple[re.Pattern[str], re.Pattern[str] | None, str]:
    """The compiled pattern, its skip pattern and its text, once folder, pattern and output are
    usable."""
    if not folder.is_dir():
        raise PathNotFoundError(f"TIFF folder {folder} does not exist. Check the path.")
    if preset is not None and pattern is not None:
        raise InputError("Expected --preset or --pattern. Got both instead: drop one.")
    skip = None
    if preset is not None:
        if preset not in PRESETS:
            raise InputError(
                f"Expected a preset among {', '.join(PRESETS)}. Got {preset!r} instead."
            )
        pattern, skip = PRESETS[preset].pattern, PRESETS[preset].skip
    pattern = DEFAULT_PATTERN if pattern is None else pattern
    try:
        regex = re.compile(pattern)
    except re.error as err:
        raise InputError(
            f"--pattern is not a valid regular expression ({err}). Fix the pattern."
        ) from err
    if out.exists() and not overwrite:
        raise InputError(f"{out} already exists. Choose another output path or pass --overwrite.")
    return regex, re.compile(skip) if skip else None, pattern


def _scan(folder: Path, regex: re.Pattern[str], skip: re.Pattern[str] | None) -> list[_Entry]:
    """One entry per TIFF of ``folder`` (those ``skip`` matches left out); every TIFF must match
    the pattern."""
    tiffs = sorted(
        p
        for p in folder.iterdir()
        if p.suffix.lower() in _TIFF_SUFFIXES
        and p.is_file()
        and not (skip and skip.fullmatch(p.name))
    )
    if not tiffs:
        raise InputError(
            f"No .tif/.tiff files in {folder}. Point import-tiff at the folder holding the TIFFs."
        )
    entries, unmatched = [], []
    for p in tiffs:
        m = regex.fullmatch(p.name)
        (
            entries.append(_Entry(p, name_parts(m, p.name)))
            if m is not None
            else unmatched.append(p.name)
        )
    if unmatched:
        looks = matching_presets(unmatched[0])
        hint = f" ({unmatched[0]!r} is named like --preset {looks[0]})" if looks else ""
        raise InputError(
            f"{len(unmatched)} of {len(tiffs)} TIFFs do not match --pattern (e.g. "
            f"{unmatched[0]!r}){hint}. Fix --pattern or --preset, or move those files out of "
            f"{folder}."
        )
    return entries


def _sorted_keys(values: set[Any]) -> list[Any]:
    return sorted(values, key=lambda k: (0, int(k), "") if str(k).isdigit() else (1, 0, str(k)))


def _channel_labels(
    entries: list[_Entry], infos: Mapping[Path, FileInfo], channel_names: Mapping[str, str] | None
) -> tuple[list[str], dict[str, int]]:
    """Channel labels in plate order, and each file channel key's index (empty when files hold
    the channels)."""
    rename = dict(channel_names or {})
    if all(e.parts.channel_key is None for e in entries):
        first = infos[entries[0].path]
        labels = [rename.get(n, n) for n in first.channel_names]
        index: dict[str, int] = {}
    else:
        keys = _sorted_keys({str(e.parts.channel_key) for e in entries})
        label_of: dict[str, str] = {}
        for e in entries:
            label_of.setdefault(str(e.parts.channel_key), str(e.parts.channel_label))
        labels = [rename.get(label_of[k], label_of[k]) for k in keys]
        index = {k: i for i, k in enumerate(keys)}
    if len(set(labels)) != len(labels):
        raise InputError(
            f"Channel labels {labels} are not unique. Give each channel its own name with "
            "channel_names."
        )
    return labels, index


def _axis_values(
    entries: list[_Entry], infos: Mapping[Path, FileInfo], what: str
) -> tuple[list[int], int]:
    """The values a name gives an axis (time or plane), and the axis' size inside each file."""
    named = sorted({getattr(e.parts, what) for e in entries if getattr(e.parts, what) is not None})
    inside = {infos[e.path].sizes[what] for e in entries}
    if len(inside) > 1:
        raise InputError(
            f"The TIFFs hold different numbers of {what}s ({sorted(inside)}). Export them alike."
        )
    n_inside = inside.pop()
    if len(named) > 1 and n_inside > 1:
        raise InputError(
            f"File names number {what}s and the files hold several {what}s each (e.g. "
            f"{entries[0].path.name}). Export one {what} per file, or leave the {what} out of "
            "--pattern."
        )
    return named or [0], n_inside


def _common_file_layout(
    entries: list[_Entry], infos: Mapping[Path, FileInfo], per_file_channel: bool
) -> tuple[tuple[int, int], np.dtype, int]:
    """The ``(y, x)`` shape and dtype every TIFF shares, and the channels each file holds."""
    ref = infos[entries[0].path]
    for e in entries:
        info = infos[e.path]
        if (info.yx, info.dtype) != (ref.yx, ref.dtype):
            raise InputError(
                f"{e.path.name} is {info.yx} {info.dtype} but {entries[0].path.name} is {ref.yx} "
                f"{ref.dtype}. All TIFFs of a plate must share shape and dtype."
            )
        if info.sizes["channel"] != ref.sizes["channel"] or info.channel_names != ref.channel_names:
            raise InputError(
                f"{e.path.name} holds channels {list(info.channel_names)} but "
                f"{entries[0].path.name} holds {list(ref.channel_names)}. Export every file with "
                "the same channels."
            )
    n_c = ref.sizes["channel"]
    if per_file_channel and n_c > 1:
        raise InputError(
            f"{entries[0].path.name} holds {n_c} channels, but --pattern names one channel per "
            "file (its 'channel' group). Leave the channel out of --pattern, or export one "
            "channel per file."
        )
    return ref.yx, ref.dtype, n_c


def _place(
    planes: _Planes,
    slot: tuple[int, int, int],
    source: tuple[Path, tuple[int, int, int]],
    where: str,
    labels: list[str],
) -> None:
    """Record where one plane of an image comes from; a second file for it is an error."""
    if slot in planes:
        raise InputError(
            f"Two files for {where} channel {labels[slot[0]]!r} (time {slot[1]}, plane {slot[2]}): "
            f"{planes[slot][0].name} and {source[0].name}. Make --pattern tell them apart."
        )
    planes[slot] = source


def _check_complete(
    images: dict[tuple[str, str, str], _Planes], labels: list[str], n_t: int, n_z: int
) -> None:
    """Every image has every channel at every time point and plane."""
    for (r, c, f), planes in images.items():
        missing = [
            (ch, t, z)
            for ch in range(len(labels))
            for t in range(n_t)
            for z in range(n_z)
            if (ch, t, z) not in planes
        ]
        if not missing:
            continue
        channels = sorted({labels[ch] for ch, _, _ in missing}, key=labels.index)
        if len(missing) == len(channels) * n_t * n_z:
            raise InputError(
                f"Well {r}{c} field {f} has no TIFF for channel(s) {', '.join(channels)}. "
                f"Add the files or remove the well's other files."
            )
        ch, t, z = missing[0]
        raise InputError(
            f"Well {r}{c} field {f} has no TIFF for channel {labels[ch]!r} at time {t}, plane {z} "
            f"({len(missing)} planes missing). Add the files or remove the well's other files."
        )


def _plan(
    entries: list[_Entry], infos: Mapping[Path, FileInfo], channel_names: Mapping[str, str] | None
) -> _Plan:
    """Where every plane of every image comes from, once the folder is checked complete and
    consistent."""
    labels, ch_index = _channel_labels(entries, infos, channel_names)
    yx, _, n_c_in = _common_file_layout(entries, infos, per_file_channel=bool(ch_index))
    times, n_t_in = _axis_values(entries, infos, "time")
    planes_named, n_z_in = _axis_values(entries, infos, "plane")
    images: dict[tuple[str, str, str], _Planes] = {}
    for e in entries:
        p = e.parts
        image = images.setdefault((p.row, p.column, p.field), {})
        c0 = ch_index[str(p.channel_key)] if ch_index else 0
        t0 = times.index(p.time) if p.time is not None else 0
        z0 = planes_named.index(p.plane) if p.plane is not None else 0
        for c in range(n_c_in):
            for t in range(n_t_in):
                for z in range(n_z_in):
                    _place(
                        image,
                        (c0 + c, t0 + t, z0 + z),
                        (e.path, (t, c, z)),
                        f"well {p.row}{p.column} field {p.field}",
                        labels,
                    )
    n_t, n_z = len(times) * n_t_in, len(planes_named) * n_z_in
    _check_complete(images, labels, n_t, n_z)
    fields, sites = _field_paths(images)
    return _Plan(labels=labels, n_t=n_t, n_z=n_z, yx=yx, images=fields, sites=sites)


def _field_paths(
    images: dict[tuple[str, str, str], _Planes],
) -> tuple[dict[tuple[str, str, str], _Planes], dict[tuple[str, str, str], str]]:
    """Images keyed by field paths ``0..n-1`` in every well (sites in order), and the site of each.

    NGFF readers (ome-zarr-py, napari-ome-zarr) take the first well's field paths for every
    well, so a field folder named after the instrument's site number (``B/7/3`` beside
    ``D/6/2``) shows only the first well; the site number is kept as an attribute instead.
    """
    by_well: dict[tuple[str, str], list[str]] = {}
    for r, c, site in images:
        by_well.setdefault((r, c), []).append(site)
    fields: dict[tuple[str, str, str], _Planes] = {}
    sites: dict[tuple[str, str, str], str] = {}
    for (r, c), well_sites in by_well.items():
        for i, site in enumerate(_sorted_keys(set(well_sites))):
            fields[(r, c, str(i))] = images[(r, c, site)]
            sites[(r, c, str(i))] = site
    return fields, sites


def _axes(plan: _Plan) -> str:
    """The plate's axes: c, y, x, with t and z when there is more than one time point or plane."""
    return ("t" if plan.n_t > 1 else "") + "c" + ("z" if plan.n_z > 1 else "") + "yx"


def _loader(
    plan: _Plan, planes: _Planes, infos: Mapping[Path, FileInfo], dtype: np.dtype
) -> Callable[[], np.ndarray]:
    """A function that reads one image's files (each once) into an array with :func:`_axes`."""

    def load() -> np.ndarray:
        full = np.zeros((plan.n_t, len(plan.labels), plan.n_z, *plan.yx), dtype=dtype)
        files: dict[Path, np.ndarray] = {}
        for (c, t, z), (path, (ft, fc, fz)) in planes.items():
            if path not in files:
                files[path] = read_planes(path, infos[path])
            full[t, c, z] = files[path][ft, fc, fz]
        squeeze = tuple(ax for ax, n in ((0, plan.n_t), (2, plan.n_z)) if n == 1)
        return full.squeeze(axis=squeeze) if squeeze else full

    return load


def _write_then_rename(
    out: Path,
    plan: _Plan,
    infos: Mapping[Path, FileInfo],
    dtype: np.dtype,
    progress: Callable[[int, int], None] | None,
    **plate: Any,
) -> None:
    """Write the plate under a temporary name, then rename it to ``out`` (never half-written at
    ``out``)."""
    tmp = out.with_name(out.name + ".importing")
    if tmp.exists():
        shutil.rmtree(tmp)  # a previous import was interrupted; it never reached `out`
    write_plate(
        tmp,
        {key: _loader(plan, planes, infos, dtype) for key, planes in plan.images.items()},
        plate_name=out.stem,
        progress=_reporter(progress, len(plan.images)),
        axes=_axes(plan),
        field_attrs={key: {SITE_KEY: site} for key, site in plan.sites.items()},
        **plate,
    )
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)


def import_tiff(
    folder: str | os.PathLike,
    out: str | os.PathLike,
    *,
    pattern: str | None = None,
    preset: str | None = None,
    channel_names: Mapping[str, str] | None = None,
    file_axes: str | None = None,
    ngff_version: str = "0.5",
    chunks: tuple[int, int] = (256, 256),
    levels: int | None = None,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
    pixel_size: float | Sequence[float] | None = None,
) -> Path:
    """Build an OME-Zarr HCS plate from a folder of TIFFs (vendor exports, OME-TIFFs).

    Parameters
    ----------
    folder
        Folder holding the TIFFs (not searched recursively).
    out
        The plate to create (e.g. ``plate.zarr``).
    pattern
        Regular expression matched against whole file names, with named groups ``well``
        (or ``row`` and ``column``; rows as letters or numbers), ``channel`` (and ``stain``,
        the channel's label when ``channel`` is an index), ``field``/``site``, ``plane``/``z``
        and ``time``; see :mod:`omeloc.data.tiff_names`.  Without a ``channel`` group each
        file holds every channel.  Default :data:`DEFAULT_PATTERN`.
    preset
        An instrument's naming scheme instead of ``pattern``: ``"phenix"`` (Opera Phenix,
        Operetta), ``"imagexpress"``, ``"cellvoyager"``, ``"nf1"``.
    channel_names
        Renames labels, e.g. ``{"RFP": "actin", "GFP": "ER", "DAPI": "nuclei"}``.
    file_axes
        The axes of multi-plane TIFFs that do not name them (e.g. ``"CYX"``).
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
    pixel_size
        Micrometers per pixel (``y = x``, ``(y, x)`` or ``(z, y, x)``), written as the images'
        ``scale``; default the first file's (OME-XML ``PhysicalSize*`` or resolution tags), else
        none.

    Returns
    -------
    pathlib.Path
        The plate path; its axes are ``cyx``, with ``z`` and ``t`` when the files have several
        planes or time points.  Every well's fields are ``0..n-1`` (sites in numeric order),
        so every NGFF viewer shows every well; each field's site is its ``omeloc_site``
        attribute.

    Raises
    ------
    InputError
        Files that do not match the pattern, missing channels or planes, differing shapes or
        dtypes, a compression that cannot be decoded.
    """
    # Over 60 lines only through its parameter docs (the public API's reference); the body is ~25.
    folder, out = Path(folder), Path(out)
    regex, skip, pattern_text = _check_request(folder, out, pattern, preset, overwrite)
    entries = _scan(folder, regex, skip)
    infos = {e.path: file_info(e.path, file_axes) for e in entries}
    plan = _plan(entries, infos, channel_names)
    check_decodable(infos.items())
    rows, columns = _layout({r for r, _, _ in plan.images}, {c for _, c, _ in plan.images})
    _write_then_rename(
        out,
        plan,
        infos,
        infos[entries[0].path].dtype,
        progress,
        channel_names=plan.labels,
        ngff_version=ngff_version,
        chunks=chunks,
        levels=levels or _auto_levels(plan.yx),
        rows=rows,
        columns=columns,
        pixel_size=pixel_size if pixel_size is not None else infos[entries[0].path].pixel_size,
        extra_attrs={
            "omeloc_import": {
                "source_folder": str(folder.resolve()),
                "pattern": pattern_text,
                "preset": preset,
                "files": len(entries),
            }
        },
    )
    logger.info("imported %d TIFFs from %s into %s", len(entries), folder, out)
    return out


def _field_labels(paths: Sequence[Path], infos: Mapping[Path, FileInfo]) -> list[str]:
    """Channel labels of a single field's files: the file names without their shared prefix
    (``BPAE_actin.tif``, ``BPAE_mito.tif`` → ``actin``, ``mito``); a file's own channel names
    when it holds several."""
    stems = [p.name.split(".")[0] for p in paths]
    prefix = os.path.commonprefix(stems) if len(stems) > 1 else ""
    prefix = prefix[: max(prefix.rfind("_"), prefix.rfind("-"), prefix.rfind(" ")) + 1]
    labels: list[str] = []
    for path, stem in zip(paths, stems):
        info = infos[path]
        short = stem[len(prefix) :] or stem
        if info.sizes["channel"] == 1:
            labels.append(short)
        else:
            own = [n for n in info.channel_names]
            labels += (
                own
                if not all(n == f"c{i}" for i, n in enumerate(own))
                else [f"{short} {n}" for n in own]
            )
    return labels


def import_tiff_files(
    files: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    channel_names: Mapping[str, str] | None = None,
    file_axes: str | None = None,
    ngff_version: str = "0.5",
    chunks: tuple[int, int] = (256, 256),
    levels: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Build a single OME-Zarr image (not a plate) from the TIFFs of one field, a channel (or
    several) per file.

    Channel labels are the file names without their shared prefix (``BPAE_actin.tif`` →
    ``actin``), renamed by ``channel_names``; other parameters as in :func:`import_tiff`.
    Every file is checked (same plane shape, dtype, time points and planes) before anything
    is written; the image is written under a temporary name and renamed at the end.

    Raises
    ------
    InputError
        A missing or unreadable file, files that do not agree, labels that are not unique.
    """
    paths = [Path(f) for f in files]
    out = Path(out)
    missing = [p for p in paths if not p.is_file()]
    if not paths or missing:
        raise PathNotFoundError(
            f"TIFF file {missing[0] if missing else '(none)'} does not exist. Check the path."
        )
    if out.exists() and not overwrite:
        raise InputError(f"{out} already exists. Choose another output path or pass --overwrite.")
    infos = {p: file_info(p, file_axes) for p in paths}
    ref = infos[paths[0]]
    for p in paths[1:]:
        i = infos[p]
        if (i.yx, i.dtype, i.sizes["time"], i.sizes["plane"]) != (
            ref.yx,
            ref.dtype,
            ref.sizes["time"],
            ref.sizes["plane"],
        ):
            raise InputError(
                f"{p.name} is {i.yx} {i.dtype} ({i.sizes['plane']} plane(s), {i.sizes['time']} "
                f"time point(s)) unlike {paths[0].name} ({ref.yx} {ref.dtype}, "
                f"{ref.sizes['plane']}, {ref.sizes['time']}). The files of one field must agree."
            )
    check_decodable(infos.items())
    rename = dict(channel_names or {})
    labels = [rename.get(n, n) for n in _field_labels(paths, infos)]
    if len(set(labels)) != len(labels):
        raise InputError(
            f"Channel labels {labels} are not unique. Name the channels with --channel-names."
        )
    data = np.concatenate([read_planes(p, infos[p]) for p in paths], axis=1)  # (T, C, Z, Y, X)
    n_t, n_z = ref.sizes["time"], ref.sizes["plane"]
    squeeze = tuple(ax for ax, n in ((0, n_t), (2, n_z)) if n == 1)
    axes = ("t" if n_t > 1 else "") + "c" + ("z" if n_z > 1 else "") + "yx"
    tmp = out.with_name(out.name + ".importing")
    if tmp.exists():
        shutil.rmtree(tmp)
    write_image(
        tmp,
        data.squeeze(axis=squeeze) if squeeze else data,
        channel_names=labels,
        ngff_version=ngff_version,
        axes=axes,
        chunks=chunks,
        levels=levels or _auto_levels(ref.yx),
        name=out.stem,
    )
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    logger.info("imported %d TIFF(s) as one image into %s", len(paths), out)
    return out
