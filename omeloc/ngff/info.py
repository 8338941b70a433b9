"""What a user wants to know first about a plate or image (``omeloc info``)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omeloc.ngff.layout import append_problems, channels_per_file
from omeloc.ngff.plate import Plate, label_text, open_plate
from omeloc.ngff.stores import zip_location
from omeloc.writeback.journal import JOURNAL_KEY
from omeloc.writeback.tables import TABLES_JOURNAL_KEY, list_tables

__all__ = ["describe", "format_description"]


def describe(
    path_or_url: str | Path,
    storage_options: Mapping[str, Any] | None = None,
    *,
    series: str | int | None = None,
) -> dict[str, Any]:
    """Describe a plate or image from its metadata (no pixels are read).

    ``series`` chooses the series of a bioformats2raw wrapper (see :func:`open_plate`).  The
    ``append`` verdict is the one layout rule of :mod:`omeloc.ngff.layout`, the rule the
    write-back applies.

    Returns
    -------
    dict
        ``path``, ``ngff_version``, ``zarr_format``, ``kind`` (plate/image), ``wells`` (name →
        field paths), ``acquisitions`` (``id``, ``name``, ``n_images``, ``wells`` of each NGFF
        plate acquisition), ``channels``, ``dtype``, ``axes``, ``levels`` (path, shape, chunks,
        shards per level), ``append_friendly`` and ``append_problems``, ``channels_per_file``
        (channels per chunk or shard file along c, level 0), ``read_only`` (why omeloc will
        not write there, e.g. a zipped OME-Zarr; ``None`` when it may), ``inconsistent_images``,
        ``field_paths_differ`` (wells whose field paths differ from the first well's: NGFF
        viewers show them black), ``pending_write`` (``None``, or what the journal of an
        unfinished write says), and ``tables`` (``name``, ``type``, ``backend`` of each table
        under ``tables/``, the Fractal/ngio convention).
    """
    plate: Plate = open_plate(path_or_url, storage_options=storage_options, series=series)
    first = plate.images[0]
    levels = [
        {
            "path": p,
            "shape": list(first.shapes[i]),
            "chunks": list(first.chunks(i)),
            "shards": list(first.shards(i)) if first.shards(i) else None,
        }
        for i, p in enumerate(first.level_paths)
    ]
    problems: list[str] = []
    inconsistent: list[str] = []
    for img in plate.images:
        problems += [f"{img.path or img.url}: {p}" for p in append_problems(img)]
        if (img.channel_names, img.dtype, img.axes, len(img.level_paths)) != (
            first.channel_names,
            first.dtype,
            first.axes,
            len(first.level_paths),
        ):
            inconsistent.append(img.path)
    return {
        "path": plate.path,
        "kind": "plate" if plate.is_plate else "image",
        "ngff_version": plate.ngff_version,
        "zarr_format": plate.zarr_format,
        "rows": list(plate.rows),
        "columns": list(plate.columns),
        "wells": {w.name: [i.field for i in w.images] for w in plate.wells.values()},
        "n_images": len(plate.images),
        "acquisitions": [
            {
                "id": a["id"],
                "name": a["name"],
                "n_images": len(a["images"]),
                "wells": sorted({i.rsplit("/", 1)[0].replace("/", "") for i in a["images"]}),
            }
            for a in plate.acquisitions
        ],
        "channels": list(first.channel_names),
        "axes": "".join(first.axes),
        "axis_names": list(first.axis_names),
        "channels_per_file": channels_per_file(first, 0)[1],
        "dtype": str(first.dtype),
        "levels": levels,
        "read_only": "zipped OME-Zarr" if zip_location(plate.path) else None,
        "append_friendly": not problems,
        "append_problems": problems,
        "inconsistent_images": inconsistent,
        "field_paths_differ": _wells_with_other_field_paths(plate),
        "pending_write": _pending_write(plate.attrs.get(JOURNAL_KEY), list(first.channel_names)),
        "tables": list_tables(plate.path, plate.storage_options, plate.zarr_format),
        "pending_tables": bool(plate.attrs.get(TABLES_JOURNAL_KEY)),
    }


def _wells_with_other_field_paths(plate: Plate) -> list[str]:
    """Wells whose field paths differ from the first well's (viewers then show those wells black).

    ome-zarr-py and napari-ome-zarr draw a plate from the first well's field paths in every
    well; a well without that path is not shown.
    """
    wells = list(plate.wells.values())
    if not wells:
        return []
    first = [i.field for i in wells[0].images]
    return [
        w.name
        for w in wells[1:]
        if [i.field for i in w.images][: len(first)] != first[: len(w.images)]
    ]


def _pending_write(journal: Any, channels: list[str]) -> dict[str, Any] | None:
    """What an unfinished write's journal says, and which channels it added (not yet complete)."""
    if not journal:
        return None
    j = journal if isinstance(journal, Mapping) else {}
    n = j.get("n_channels")
    added = (
        channels[n:]
        if j.get("mode") == "append" and isinstance(n, int) and not isinstance(n, bool)
        else []
    )
    return {
        "run_id": str(j.get("run_id", "?")),
        "name": str(j.get("name", "?")),
        "phase": str(j.get("phase", "?")),
        "mode": str(j.get("mode", "?")),
        "pending_channels": added,
    }


def _acquisition_line(acq: Mapping[str, Any]) -> str:
    """One acquisition of :func:`describe`'s dict as a line of text (id, name, fields, wells)."""
    wells = list(acq["wells"])
    named = f" ({acq['name']})" if acq.get("name") else ""
    return (
        f"  acquisition {acq['id']}{named}: {acq['n_images']} field(s) in {len(wells)} well(s)"
        + (": " + ", ".join(wells[:12]) + (" ..." if len(wells) > 12 else "") if wells else "")
        + f"   (predict it alone: --acquisition {acq['id']})"
    )


def format_description(d: Mapping[str, Any]) -> str:
    """Human-readable text for :func:`describe`'s dict."""
    lines = [
        f"{d['path']}: OME-Zarr {d['kind']}, NGFF {d['ngff_version']} (Zarr v{d['zarr_format']})"
    ]
    if d["kind"] == "plate":
        n_fields = sorted({len(f) for f in d["wells"].values()})
        lines.append(
            f"  layout   {len(d['rows'])} rows x {len(d['columns'])} columns; "
            f"{len(d['wells'])} wells, {d['n_images']} images "
            f"({'/'.join(map(str, n_fields))} field(s) per well)"
        )
        names = list(d["wells"])
        lines.append("  wells    " + ", ".join(names[:24]) + (" ..." if len(names) > 24 else ""))
        lines += [_acquisition_line(a) for a in d.get("acquisitions") or []]
    pending = d.get("pending_write")
    added = set(pending["pending_channels"]) if pending else set()
    lines.append(
        "  channels "
        + ", ".join(label_text(c) + (" [pending]" if c in added else "") for c in d["channels"])
    )
    stored = "".join(d.get("axis_names") or [])
    shown = d["axes"] + (
        f" (stored as {', '.join(d['axis_names'])})" if stored and stored != d["axes"] else ""
    )
    lines.append(f"  axes     {shown}   dtype {d['dtype']}")
    lines.append("  levels")
    for lv in d["levels"]:
        shards = f"  shards {tuple(lv['shards'])}" if lv["shards"] else ""
        lines.append(
            f"    {lv['path']:>4}  shape {tuple(lv['shape'])}  chunks {tuple(lv['chunks'])}{shards}"
        )
    k = d.get("channels_per_file") or 1
    if d["append_friendly"]:
        lines.append(
            "  append   yes: a new channel can be added without rewriting existing chunks"
            + (
                f" ({k} channels per chunk file; the new channel's file holds no original channel)"
                if k > 1
                else ""
            )
        )
    else:
        lines.append(
            f"  append   NO: {d['append_problems'][0]}"
            + (f" (+{len(d['append_problems']) - 1} more)" if len(d["append_problems"]) > 1 else "")
            + (
                ". Copy the plate with one channel per chunk (omeloc rechunk) before predicting "
                "into it."
            )
        )
    if d.get("tables"):
        lines.append(
            "  tables   "
            + ", ".join(
                f"{t['name']} ({t['type'] or '?'}, {t['backend'] or '?'})" for t in d["tables"]
            )
        )
    if d.get("read_only"):
        lines.append(
            f"  store    {d['read_only']}: omeloc reads it but does not write into it; unzip it "
            f"into a folder (or `omeloc rechunk` it) before predicting"
        )
    if d["inconsistent_images"]:
        lines.append(
            f"  WARNING  {len(d['inconsistent_images'])} image(s) differ from the first in "
            f"channels, dtype, axes or levels (e.g. {d['inconsistent_images'][0]})"
        )
    differ = d.get("field_paths_differ") or []
    if differ:
        first = next(iter(d["wells"]))
        lines.append(
            f"  WARNING  {len(differ)} well(s) use other field paths than the first well {first} "
            f"({', '.join(d['wells'][first])}), e.g. {differ[0]} "
            f"({', '.join(d['wells'][differ[0]])}): ome-zarr-py and napari-ome-zarr show only the "
            "wells that have the first well's field paths. omeloc reads every well; re-import the "
            "plate (omeloc import-tiff writes fields 0..n-1) to fix viewers"
        )
    if pending:
        lines.append(
            f"  WARNING  write pending: omeloc run {pending['run_id']} (channel "
            f"{pending['name']!r}, {pending['mode']}, phase {pending['phase']!r}) is unfinished "
            f"(interrupted, or still running); run `omeloc recover {d['path']}`"
            + (" (channels marked [pending] belong to it)" if added else "")
        )
    if d.get("pending_tables"):
        lines.append(
            "  WARNING  a table write is unfinished (interrupted, or still running); the next "
            "table write (omeloc evaluate) rolls it back"
        )
    return "\n".join(lines)
