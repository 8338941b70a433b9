"""Add a (virtual) channel to an existing OME-Zarr plate or image, in place, safely.

The protocol (DESIGN.md, "Write-back protocol"): discover → preflight everything → journal
→ resize every level → write level 0 with region-aligned writes (one Dask task per zarr
write block, so each chunk is written exactly once and no locks are needed) → build each
lower level from the level above to the exact existing shapes → omero entry and
provenance → re-consolidate → clear the journal.  Pixels are written by Dask tasks;
metadata only by the calling process.  A run killed at any point is rolled back (or, past
its last write, finished) by the next call; see :mod:`omeloc.writeback.journal`.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import re
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import zarr

from omeloc.testing.faults import fault_point
from omeloc.writeback import journal as jr
from omeloc.writeback import resume as rs
from omeloc.errors import OmelocError, ConcurrentWriteError, InputError, LayoutError
from omeloc.ngff.writer import DEFAULT_COLORS, channel_window
from omeloc.ngff.layout import writeback_problems
from omeloc.ngff.plate import Image, Plate, open_plate
from omeloc.ngff.pyramid import cast_to_dtype, downsample_mean

__all__ = ["add_channel", "recover", "WritePlan", "ImagePlan", "AddChannelResult"]

logger = logging.getLogger(__name__)

ArrayLike = Any  # numpy array, dask array, or anything np.asarray accepts
DataArg = ArrayLike | Mapping[str, ArrayLike | Callable[[], ArrayLike]] | Callable[[Image], ArrayLike]

_RECHUNK_HINT = (
    "Copy the plate into an append-friendly layout (chunk 1 along c), e.g. "
    "omeloc.rechunk(src, dst) (`omeloc rechunk SRC DST`), then add the channel to the copy."
)


# -- plan and result --------------------------------------------------------------------
@dataclass(frozen=True)
class ImagePlan:
    """What :func:`add_channel` writes into one image."""

    path: str
    """Image path relative to the target (``"B/3/0"``, ``""`` for a standalone image)."""
    url: str
    c_axis: int
    level_paths: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    """Shapes of every level after the write (channel axis included)."""
    write_blocks: tuple[tuple[int, ...], ...]
    """The zarr write unit (shard, else chunk) of every level: one Dask task each."""
    data: da.Array = field(repr=False, compare=False)


@dataclass(frozen=True)
class WritePlan:
    """Everything :func:`add_channel` would do, found by the preflight (``dry_run=True``)."""

    target: str
    name: str
    mode: str
    """``"append"`` (a new channel) or ``"overwrite"`` (replace omeloc's virtual channel)."""
    channel_index: int
    n_channels: int
    """Channel count before the write."""
    dtype: str
    ngff_version: str
    images: tuple[ImagePlan, ...]
    pending_recovery: str | None = None
    """``"rollback"`` or ``"finish"`` when a dead run's journal will be dealt with first."""

    @property
    def tasks(self) -> int:
        """Number of region-write tasks (chunks or shards written, all levels)."""
        n = 0
        for img in self.images:
            for shape, block in zip(img.shapes, img.write_blocks):
                n += math.prod(math.ceil(s / b) for i, (s, b) in enumerate(zip(shape, block)) if i != img.c_axis)
        return n

    @property
    def nbytes(self) -> int:
        """Uncompressed bytes of the new channel, all levels."""
        item = np.dtype(self.dtype).itemsize
        return sum(
            math.prod(s for i, s in enumerate(shape) if i != img.c_axis) * item
            for img in self.images for shape in img.shapes
        )

    def describe(self) -> str:
        """A short human-readable summary."""
        verb = "replace channel" if self.mode == "overwrite" else "append channel"
        lines = [
            f"{verb} {self.name!r} at index {self.channel_index} of {self.target} "
            f"({len(self.images)} image(s), {self.tasks} write tasks, {self.nbytes / 1e6:.1f} MB {self.dtype})"
        ]
        if self.pending_recovery:
            lines.append(f"first: {self.pending_recovery} an interrupted omeloc run")
        for img in self.images[:5]:
            lines.append(f"  {img.path or '.'}: levels {', '.join(img.level_paths)} -> shapes {list(img.shapes)}")
        if len(self.images) > 5:
            lines.append(f"  ... {len(self.images) - 5} more")
        return "\n".join(lines)


@dataclass(frozen=True)
class AddChannelResult:
    """What :func:`add_channel` did."""

    name: str
    channel_index: int
    images: int
    levels: int
    bytes_written: int
    """Uncompressed bytes of pixels written (all levels)."""
    seconds: float
    recovered: str | None = None
    """``"rollback"`` / ``"finish"`` when an interrupted run was dealt with first."""


# -- helpers ----------------------------------------------------------------------------
def _url_join(base: str, *parts: str) -> str:
    parts = tuple(p.strip("/") for p in parts if p and p.strip("/"))
    return base.rstrip("/") + ("/" + "/".join(parts) if parts else "")


def _rel(*parts: str) -> str:
    return "/".join(p.strip("/") for p in parts if p and p.strip("/"))


def _without(seq: tuple[int, ...], axis: int) -> tuple[int, ...]:
    return seq[:axis] + seq[axis + 1:]


@functools.lru_cache(maxsize=512)
def _open_level(url: str, so_json: str, zarr_format: int, run_id: str) -> zarr.Array:
    """A writable zarr array, cached per process and run (the run id keys the fresh shape)."""
    so = json.loads(so_json)
    kwargs: dict[str, Any] = {"mode": "r+", "zarr_format": zarr_format}
    if so:
        kwargs["storage_options"] = so
    return zarr.open_array(url, **kwargs)


def _write_level0_block(
    block: np.ndarray, *, url: str, so_json: str, zarr_format: int, run_id: str, c_axis: int,
    index: int, out_dtype: str, where: str, block_info: dict | None = None,
) -> np.ndarray:
    """Dask task: cast one block of the new channel and write it into its own zarr block."""
    loc = block_info[0]["array-location"]
    block = np.asarray(block)
    if block.dtype.kind == "f" and not np.isfinite(block).all():
        raise InputError(
            f"Data for {where} has NaN or infinite values (region {[tuple(r) for r in loc]}). "
            f"Replace them (e.g. np.nan_to_num) before adding the channel."
        )
    values = np.expand_dims(cast_to_dtype(block, out_dtype), c_axis)
    region = [slice(a, b) for a, b in loc]
    region.insert(c_axis, slice(index, index + 1))
    _open_level(url, so_json, zarr_format, run_id)[tuple(region)] = values
    fault_point("level0_block")
    return np.full((1,) * block.ndim, values.nbytes, dtype=np.int64)


def _write_lower_block(
    dummy: np.ndarray, *, src_url: str, dst_url: str, so_json: str, zarr_format: int, run_id: str,
    c_axis: int, index: int, axes: tuple[str, ...], src_shape: tuple[int, ...],
    block_info: dict | None = None,
) -> np.ndarray:
    """Dask task: one block of a lower level, the mean of the matching region of the level above."""
    loc = [tuple(r) for r in block_info[0]["array-location"]]
    full_axes = list(axes)
    plane_axes = tuple(a for i, a in enumerate(full_axes) if i != c_axis)
    src_plane = _without(tuple(src_shape), c_axis)
    dst_shape = tuple(dummy.shape)
    # target [a, b) along an axis of factor f reads source [a*f, b*f), clipped, edge-padded
    read, take = [], []
    for (a, b), n_src, ax in zip(loc, src_plane, plane_axes):
        f = 1
        if ax in ("y", "x"):
            n_dst = block_info[0]["shape"][len(read)]
            f = max(1, int(round(n_src / n_dst)))
        want = np.arange(a * f, b * f)
        lo = min(a * f, n_src - 1)
        hi = max(lo + 1, min(b * f, n_src))
        read.append(slice(lo, hi))
        take.append(np.clip(want, lo, hi - 1) - lo)
    src_region = list(read)
    src_region.insert(c_axis, index)
    src = _open_level(src_url, so_json, zarr_format, run_id)[tuple(src_region)]
    src = src[np.ix_(*take)]
    out = downsample_mean(src, plane_axes, dst_shape)
    region = [slice(a, b) for a, b in loc]
    region.insert(c_axis, slice(index, index + 1))
    values = np.expand_dims(out, c_axis)
    _open_level(dst_url, so_json, zarr_format, run_id)[tuple(region)] = values
    return np.full((1,) * dummy.ndim, values.nbytes, dtype=np.int64)


def _compute(total: da.Array, client: Any, scheduler: str | None, progress: bool, desc: str) -> int:
    if client is None and scheduler is not None:
        (value,) = dask.compute(total, scheduler=scheduler)
        return int(value)
    from omeloc.compute import compute

    (value,) = compute(total, client=client, progress=progress, desc=desc)
    return int(value)


# -- preflight --------------------------------------------------------------------------
def _resolve_data(plate: Plate, data: DataArg) -> dict[str, Any]:
    paths = [img.path for img in plate.images]
    if callable(data) and not isinstance(data, (np.ndarray, da.Array)):
        return {img.path: data(img) for img in plate.images}
    if isinstance(data, Mapping):
        keys = {str(k).strip("/") for k in data}
        missing = [p for p in paths if p not in keys]
        extra = sorted(keys - set(paths))
        if missing or extra:
            raise InputError(
                f"Expected data for exactly the images {paths[:6]}{' ...' if len(paths) > 6 else ''}. "
                f"Missing: {missing[:6]}; unknown: {extra[:6]}. Give one array per image path."
            )
        values = {str(k).strip("/"): v for k, v in data.items()}
        return {p: (values[p]() if callable(values[p]) else values[p]) for p in paths}
    if plate.is_plate:
        raise InputError(
            f"Expected a mapping from image path to array for plate {plate.path}. "
            f"Got one {type(data).__name__} instead. Pass {{'{paths[0]}': array, ...}}."
        )
    return {paths[0]: data}


def _as_dask(value: Any, where: str, want_shape: tuple[int, ...], blocks: tuple[int, ...]) -> da.Array:
    if isinstance(value, da.Array):
        arr = value
    else:
        host = np.asarray(value)
        if host.dtype.kind == "f" and not np.isfinite(host).all():
            raise InputError(
                f"Data for {where} has NaN or infinite values. Replace them (e.g. np.nan_to_num) first."
            )
        arr = da.from_array(host, chunks=blocks)
    if arr.dtype.kind not in "biuf":
        raise InputError(f"Expected numeric data for {where}. Got dtype {arr.dtype} instead.")
    if tuple(arr.shape) != tuple(want_shape):
        raise InputError(
            f"Expected data of shape {tuple(want_shape)} for {where} (level 0 without the c axis). "
            f"Got {tuple(arr.shape)} instead."
        )
    return arr.rechunk(blocks)


def _virtual_index(img: Image, name: str) -> int | None:
    """Index of ``name`` when it is a virtual channel omeloc wrote into ``img``, else None."""
    entry = ((img.attrs.get("omeloc") or {}).get("channels") or {}).get(name) or {}
    if entry.get("virtual") is True and name in img.channel_names:
        return img.channel_names.index(name)
    return None


def _stray_chunks(io: jr.StoreIO, img: Image, level: int, rel: str, n_c: int) -> list[str]:
    arr_rel = _rel(rel, img.level_paths[level])
    doc = io.read_json(io.array_doc(arr_rel)) or {}
    c_axis = img.axes.index("c")
    block = img.write_chunks(level)[c_axis]
    stray = []
    for key in io.list(arr_rel):
        coords = jr.chunk_coords(key[len(arr_rel) + 1:] if arr_rel else key, doc)
        if coords is not None and len(coords) > c_axis and coords[c_axis] * block >= n_c:
            stray.append(key)
    return stray


def _preflight(
    plate: Plate, io: jr.StoreIO, name: str, data: DataArg, overwrite: bool, target: str,
    pending: str | None, rollback_n: int | None = None,
) -> WritePlan:
    # rollback_n: a dry run before a pending rollback sees the store as the killed run left it;
    # plan against the channel count the rollback restores instead.
    first = plate.images[0]
    n_c, dtype, axes = first.shape[first.axes.index("c")], first.dtype, first.axes
    if rollback_n is not None:
        n_c = rollback_n
    for img in plate.images:
        c = img.shape[img.axes.index("c")]
        if rollback_n is not None and c in (n_c, n_c + 1):
            c = n_c
        if (c, img.dtype, img.axes) != (n_c, dtype, axes):
            raise InputError(
                f"Image {img.path} has {c} channels, dtype {img.dtype}, axes {''.join(img.axes)} but "
                f"{first.path} has {n_c}, {dtype}, {''.join(axes)}: the plate's wells are inconsistent. "
                f"Make every image share channels, dtype and axes before adding a channel."
            )
    c_axis = axes.index("c")
    mode, index = "append", n_c
    if name in first.channel_names:
        virtual = [_virtual_index(img, name) for img in plate.images]
        if not overwrite:
            raise InputError(
                f"Channel {name!r} already exists in {target}. Choose another name, or pass overwrite=True "
                f"(--overwrite) to replace it if omeloc wrote it."
            )
        if any(v is None for v in virtual) or len(set(virtual)) != 1:
            raise InputError(
                f"Channel {name!r} in {target} is not a virtual channel written by omeloc in every image, so "
                f"overwrite=True may not replace it. Choose another name."
            )
        mode, index = "overwrite", int(virtual[0])
    for img in plate.images:
        problems = writeback_problems(img)
        if problems:
            verb = f"Replacing channel {name!r} of" if mode == "overwrite" else "Adding a channel to"
            raise LayoutError(
                f"{verb} {img.path or target} would rewrite chunks that hold other channels "
                f"({'; '.join(problems[:3])}). {_RECHUNK_HINT}"
            )
        channels = img.omero.get("channels") or []
        if len(channels) != n_c and rollback_n is None:
            raise InputError(
                f"Image {img.path or target} has {n_c} channels but {len(channels)} omero.channels entries. "
                f"Fix its omero metadata (one entry per channel) before adding a channel."
            )
    if mode == "append" and rollback_n is None:
        for img in plate.images:
            for level in range(len(img.level_paths)):
                stray = _stray_chunks(io, img, level, img.path, n_c)
                if stray:
                    raise LayoutError(
                        f"Level {img.level_paths[level]!r} of {img.path or target} has chunk files beyond its "
                        f"{n_c} channels ({stray[0]}, ...; {len(stray)} in all), left by an interrupted write. "
                        f"Delete them (they hold no visible data) and retry."
                    )
    values = _resolve_data(plate, data)
    images = []
    for img in plate.images:
        shapes = []
        for s in img.shapes:
            s = list(s)
            s[c_axis] = n_c
            if mode == "append":
                s[c_axis] += 1
            shapes.append(tuple(s))
        blocks = tuple(img.write_chunks(level) for level in range(len(img.level_paths)))
        arr = _as_dask(values[img.path], f"image {img.path or target}", _without(img.shape, c_axis),
                       _without(blocks[0], c_axis))
        images.append(ImagePlan(
            path=img.path, url=img.url, c_axis=c_axis, level_paths=img.level_paths,
            shapes=tuple(shapes), write_blocks=blocks, data=arr,
        ))
    return WritePlan(
        target=target, name=name, mode=mode, channel_index=index, n_channels=n_c, dtype=str(dtype),
        ngff_version=plate.ngff_version, images=tuple(images), pending_recovery=pending,
    )


# -- the run ----------------------------------------------------------------------------
def _snapshot_docs(io: jr.StoreIO, plan: WritePlan) -> dict[str, str | None]:
    keys: list[str] = list(io.metadata_docs("")) + ([".zmetadata"] if io.zarr_format == 2 else [])
    for img in plan.images:
        keys += io.metadata_docs(img.path)
        for lp in img.level_paths:
            keys += io.metadata_docs(_rel(img.path, lp))
    docs: dict[str, str | None] = {}
    for key in dict.fromkeys(keys):
        raw = io.get(key)
        docs[key] = None if raw is None else raw.decode("utf-8")
    return docs


def _was_consolidated(io: jr.StoreIO, docs: Mapping[str, str | None]) -> bool:
    if io.zarr_format == 2:
        return docs.get(".zmetadata") is not None
    root = docs.get("zarr.json")
    return bool(root and json.loads(root).get("consolidated_metadata"))


def _set_phase(io: jr.StoreIO, journal: dict[str, Any], phase: str) -> None:
    journal["phase"] = phase
    journal["heartbeat"] = time.time()
    io.update_attrs("", {jr.JOURNAL_KEY: journal})
    logger.debug("journal phase %s", phase)


def _backup_channel(io: jr.StoreIO, plan: WritePlan, run_id: str, docs: Mapping[str, str | None]) -> None:
    """Copy the chunks of the channel being replaced, so a rollback can restore them."""
    name = "zarr.json" if io.zarr_format == 3 else ".zarray"
    for img in plan.images:
        for lp in img.level_paths:
            arr_rel = _rel(img.path, lp)
            doc = json.loads(docs[_rel(arr_rel, name)] or "{}")
            for key in io.list(arr_rel):
                coords = jr.chunk_coords(key[len(arr_rel) + 1:] if arr_rel else key, doc)
                if coords is not None and coords[img.c_axis] == plan.channel_index:
                    io.set(_rel(jr.BACKUP_PREFIX, run_id, key), io.get(key) or b"")


def _resize(io: jr.StoreIO, plan: WritePlan) -> None:
    for img in plan.images:
        for lp, shape in zip(img.level_paths, img.shapes):
            key = io.array_doc(_rel(img.path, lp))
            doc = io.read_json(key)
            doc["shape"] = list(shape)
            io.write_json(key, doc)


def _write_pixels(
    plan: WritePlan, run_id: str, so_json: str, zarr_format: int, client: Any, scheduler: str | None,
    progress: bool, axes: tuple[str, ...], done: Mapping[str, set[tuple[int, ...]]] | None = None,
) -> int:
    totals = []
    for img in plan.images:
        url0 = _url_join(img.url, img.level_paths[0])
        written = img.data.map_blocks(
            _write_level0_block, url=url0, so_json=so_json, zarr_format=zarr_format, run_id=run_id,
            c_axis=img.c_axis, index=plan.channel_index, out_dtype=plan.dtype, where=f"image {img.path or plan.target}",
            chunks=tuple((1,) * len(c) for c in img.data.chunks), dtype=np.int64,
        )
        skip = (done or {}).get(img.path)
        if skip:  # resumed: only the blocks the killed run did not finish (the rest is culled)
            totals.extend(written.blocks[i].sum() for i in np.ndindex(*written.numblocks) if i not in skip)
        else:
            totals.append(written.sum())
    nbytes = _compute(da.stack(totals).sum(), client, scheduler, progress, "level 0") if totals else 0
    fault_point("level0_written")
    max_levels = max(len(img.level_paths) for img in plan.images)
    for level in range(1, max_levels):
        totals = []
        for img in plan.images:
            if level >= len(img.level_paths):
                continue
            shape = _without(img.shapes[level], img.c_axis)
            block = _without(img.write_blocks[level], img.c_axis)
            dummy = da.zeros(shape, chunks=block, dtype=np.int8)
            written = dummy.map_blocks(
                _write_lower_block, src_url=_url_join(img.url, img.level_paths[level - 1]),
                dst_url=_url_join(img.url, img.level_paths[level]), so_json=so_json, zarr_format=zarr_format,
                run_id=run_id, c_axis=img.c_axis, index=plan.channel_index, axes=axes,
                src_shape=img.shapes[level - 1], chunks=tuple((1,) * len(c) for c in dummy.chunks),
                dtype=np.int64, meta=np.empty((0,) * dummy.ndim, dtype=np.int64),
            )
            totals.append(written.sum())
        nbytes += _compute(da.stack(totals).sum(), client, scheduler, progress, f"level {level}")
        fault_point(f"level{level}_written")
    return nbytes


def _restore_finished(io: jr.StoreIO, plan: WritePlan, resume_key: str | None
                      ) -> dict[str, set[tuple[int, ...]]]:
    """Put back the chunks a killed run of the same job finished; the Dask blocks they cover."""
    if not resume_key or plan.mode != "append":
        return {}
    arrays = [(_rel(img.path, img.level_paths[0]), io.read_json(io.array_doc(_rel(img.path, img.level_paths[0]))))
              for img in plan.images]
    present = rs.restore_finished(io, resume_key, arrays)
    done = {}
    for img in plan.images:
        have = present.get(_rel(img.path, img.level_paths[0]))
        if have:
            done[img.path] = rs.done_blocks(img.data.chunks, _without(img.write_blocks[0], img.c_axis),
                                            img.c_axis, plan.channel_index, have)
    n = sum(len(v) for v in done.values())
    if n:
        logger.info("resuming: %d finished block(s) kept from the interrupted run", n)
    return done


def _window(plan: WritePlan, so_json: str, zarr_format: int, run_id: str) -> dict[str, float]:
    """omero window from the 0.1/99.9 percentiles of the new channel (its lowest levels)."""
    samples = []
    for img in plan.images:
        arr = _open_level(_url_join(img.url, img.level_paths[-1]), so_json, zarr_format, run_id)
        index = [slice(None)] * arr.ndim
        index[img.c_axis] = plan.channel_index
        samples.append(np.asarray(arr[tuple(index)]).ravel())
    return channel_window(np.concatenate(samples), np.dtype(plan.dtype))


def _pick_color(color: str | None, channels: list[dict[str, Any]]) -> str:
    if color is not None:
        c = color.lstrip("#").upper()
        if not re.fullmatch(r"[0-9A-F]{6}", c):
            raise InputError(f"Expected a colour as 6 hex digits (e.g. 'FF00FF'). Got {color!r} instead.")
        return c
    used = {str(ch.get("color", "")).upper() for ch in channels}
    return next((c for c in DEFAULT_COLORS if c not in used), "FFFFFF")


def _write_metadata(
    io: jr.StoreIO, plan: WritePlan, color: str, window: dict[str, float], provenance: dict[str, Any],
) -> None:
    for n, img in enumerate(plan.images):
        attrs = io.read_attrs(img.path)
        ome = dict(attrs.get("ome") or {}) if io.zarr_format == 3 else attrs
        omero = dict(ome.get("omero") or {})
        channels = [dict(c) for c in omero.get("channels") or []]
        template = dict(channels[plan.channel_index] if plan.mode == "overwrite" else (channels[-1] if channels else {}))
        entry = {**template, "label": plan.name, "color": color, "window": window, "active": True}
        if plan.mode == "overwrite":
            channels[plan.channel_index] = entry
        else:
            channels.append(entry)
        omero["channels"] = channels
        ours = dict(attrs.get("omeloc") or {})
        ours["channels"] = {**dict(ours.get("channels") or {}), plan.name: provenance}
        if io.zarr_format == 3:
            ome["omero"] = omero
            io.update_attrs(img.path, {"ome": ome, "omeloc": ours})
        else:
            io.update_attrs(img.path, {"omero": omero, "omeloc": ours})
        if n == 0:
            fault_point("metadata")


def _recover(io: jr.StoreIO, journal: Mapping[str, Any]) -> str:
    if journal.get("phase") == "complete":
        jr.finish(io, journal)
        return "finish"
    jr.rollback(io, journal)
    return "rollback"


def recover(target: str | Path, *, force: bool = False, storage_options: Mapping[str, Any] | None = None,
            stale_after: float = 3600.0) -> str | None:
    """Deal with an interrupted :func:`add_channel` run: roll it back, or finish it.

    Parameters
    ----------
    target
        The plate (or image) that :func:`add_channel` was writing.
    force
        Recover even if the journal's writer looks alive (another host, fresh heartbeat).
    storage_options
        fsspec options for URLs.
    stale_after
        Seconds after which a journal written on another host counts as dead.

    Returns
    -------
    str or None
        ``"rollback"``, ``"finish"``, or ``None`` when there was nothing to recover.

    Raises
    ------
    ConcurrentWriteError
        A live writer holds the journal (and ``force`` is False).
    """
    io = jr.StoreIO(str(target), storage_options)
    journal = jr.check_journal(io, stale_after=stale_after, force=force)
    return None if journal is None else _recover(io, journal)


def add_channel(
    target: str | Path,
    name: str,
    data: DataArg,
    *,
    color: str | None = None,
    overwrite: bool = False,
    provenance: Mapping[str, Any] | None = None,
    client: Any = None,
    scheduler: str | None = None,
    dry_run: bool = False,
    progress: bool = False,
    storage_options: Mapping[str, Any] | None = None,
    stale_after: float = 3600.0,
    resume_key: str | None = None,
) -> AddChannelResult | WritePlan:
    """Add channel ``name`` to every image of a plate (or to one image), in place.

    Existing chunk files are never rewritten: the channel axis of every pyramid level is
    grown by one and only the new channel's chunks are written (level 0 from ``data``, each
    lower level as the 2×2 mean of the level above, to the level's existing shape).

    Parameters
    ----------
    target
        Path or URL of an OME-Zarr HCS plate, or of a single multiscale image.
    name
        Label of the new channel (``omero.channels[].label``).
    data
        For an image: one array (numpy or dask) with the shape of level 0 without the
        ``c`` axis.  For a plate: a mapping from image path (``"B/3/0"``) to such an array
        or to a function of no arguments returning one, or a function called with each
        :class:`~omeloc.ngff.plate.Image` returning its array.  Values are mapped to the image
        dtype by rounding and clipping.  Dask arrays are computed inside the region writes,
        so a lazy prediction and its write are one Dask graph.
    color
        Hex colour of the omero entry; default a palette colour not used yet.
    overwrite
        Allow replacing an existing channel of that name if omeloc wrote it (it is marked
        ``virtual`` in ``attrs["omeloc"]["channels"]``); only that channel's chunks change.
    provenance
        JSON-serialisable facts to store with the channel (source channel, model, hash,
        parameters, ...), in ``attrs["omeloc"]["channels"][name]`` outside the ``ome`` key.
    client
        A ``distributed.Client`` to run the writes on; None runs on the current default.
    scheduler
        A Dask scheduler name (``"threads"``, ``"synchronous"``, ...) when ``client`` is None.
    dry_run
        Run the whole preflight and return the :class:`WritePlan` without writing.
    progress
        Show a progress bar while pixels are written.
    storage_options
        fsspec options for URLs.
    stale_after
        Seconds after which a journal left on another host counts as dead.
    resume_key
        Identity of the job (e.g. a hash of model and settings).  When a killed run with the
        same key, channel name and plate left a journal, its finished level-0 chunks are kept
        and only the missing blocks are computed; any other leftover run is rolled back.

    Returns
    -------
    AddChannelResult or WritePlan
        The plan when ``dry_run``.

    Raises
    ------
    InputError
        Name taken, wrong data shape or dtype, NaN/inf values, inconsistent plate.
    LayoutError
        The chunk layout would force rewriting original chunks.
    ReadOnlyStoreError
        The store cannot be written.
    ConcurrentWriteError
        Another live omeloc run is writing the plate.

    Examples
    --------
    >>> plate = omeloc.open_plate("plate.zarr")                           # doctest: +SKIP
    >>> pred = {img.path: predict(img) for img in plate.images}             # doctest: +SKIP
    >>> omeloc.add_channel("plate.zarr", "WAVE2 (predicted)", pred)          # doctest: +SKIP
    """
    t0 = time.perf_counter()
    target = str(target)
    if not isinstance(name, str) or not name.strip():
        raise InputError(f"Expected a non-empty channel name. Got {name!r} instead.")
    provenance = dict(provenance or {})
    try:
        json.dumps(provenance, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise InputError(f"Expected JSON-serialisable provenance. Got {err} instead. Pass strings and numbers.") from err
    io = jr.StoreIO(target, storage_options)
    stale = jr.check_journal(io, stale_after=stale_after)
    recovered = None
    if stale is not None and not dry_run:
        same_job = bool(resume_key) and stale.get("resume_key") == resume_key and stale.get("name") == name
        if same_job and stale.get("phase") != "complete":
            rs.stash_finished(io, stale)
        recovered = _recover(io, stale)
    if not dry_run:
        rs.drop_stash(io, keep=resume_key)
    pending = None if stale is None or not dry_run else ("finish" if stale.get("phase") == "complete" else "rollback")
    plate = open_plate(target, storage_options)
    if not plate.is_plate and "well" in _parent_ome(io, target, storage_options):
        logger.warning("adding channel %r to one field of a plate: the plate's wells will differ in channels", name)
    rollback_n = int(stale["n_channels"]) if pending == "rollback" and stale.get("mode") == "append" else None
    plan = _preflight(plate, io, name, data, overwrite, target, pending, rollback_n)
    color = _pick_color(color, list(plate.images[0].omero.get("channels") or []))
    if dry_run:
        return plan
    run_id = uuid.uuid4().hex
    docs = _snapshot_docs(io, plan)
    journal: dict[str, Any] = {
        "version": 1, "run_id": run_id, **jr.writer_identity(),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "heartbeat": time.time(),
        "phase": "started", "mode": plan.mode, "name": name, "channel_index": plan.channel_index,
        "n_channels": plan.n_channels, "zarr_format": io.zarr_format,
        "images": [{"path": i.path, "c_axis": i.c_axis, "arrays": [_rel(i.path, lp) for lp in i.level_paths]}
                   for i in plan.images],
        "consolidated": _was_consolidated(io, docs), "docs": docs, "resume_key": resume_key,
    }
    jr.ACTIVE_RUNS.add(run_id)
    try:
        io.update_attrs("", {jr.JOURNAL_KEY: journal})
        held = io.read_attrs("").get(jr.JOURNAL_KEY) or {}
        if held.get("run_id") != run_id:
            raise ConcurrentWriteError(
                f"Another omeloc run ({held.get('run_id')}) took the journal of {target} at the same time. "
                f"Wait for it to finish and retry."
            )
        return _run(io, plan, journal, docs, color, provenance, client, scheduler, progress,
                    storage_options, plate, t0, recovered)
    finally:
        jr.ACTIVE_RUNS.discard(run_id)


def _parent_ome(io: jr.StoreIO, target: str, storage_options: Mapping[str, Any] | None) -> dict[str, Any]:
    parent = target.rstrip("/").rsplit("/", 1)[0]
    try:
        group = zarr.open_group(parent, mode="r", use_consolidated=False,
                                **({"storage_options": dict(storage_options)} if storage_options else {}))
    except Exception:  # noqa: BLE001 - no readable parent group: not inside a plate
        return {}
    attrs = dict(group.attrs)
    return dict(attrs.get("ome") or {}) if group.metadata.zarr_format == 3 else attrs


def _run(
    io: jr.StoreIO, plan: WritePlan, journal: dict[str, Any], docs: Mapping[str, str | None], color: str,
    provenance: dict[str, Any], client: Any, scheduler: str | None, progress: bool,
    storage_options: Mapping[str, Any] | None, plate: Plate, t0: float, recovered: str | None,
) -> AddChannelResult:
    from omeloc import __version__

    run_id = journal["run_id"]
    so_json = json.dumps(dict(storage_options or {}), sort_keys=True, default=str)
    try:
        fault_point("journal")
        if plan.mode == "overwrite":
            _backup_channel(io, plan, run_id, docs)
            _set_phase(io, journal, "backed_up")
        else:
            _resize(io, plan)
            _set_phase(io, journal, "resized")
        fault_point("resized")
        done = _restore_finished(io, plan, journal.get("resume_key"))
        nbytes = _write_pixels(plan, run_id, so_json, io.zarr_format, client, scheduler, progress,
                               plate.images[0].axes, done)
        _set_phase(io, journal, "pixels")
        window = _window(plan, so_json, io.zarr_format, run_id)
        record = {
            **provenance, "virtual": True, "index": plan.channel_index, "dtype": plan.dtype,
            "omeloc_version": __version__, "run_id": run_id,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "levels": max(len(i.level_paths) for i in plan.images),
        }
        _write_metadata(io, plan, color, window, record)
        _set_phase(io, journal, "complete")
        fault_point("complete")
    except BaseException as err:
        # an interruption keeps the finished chunks for a rerun; bad data or a refused write
        # (omeloc's own errors, reported to the user by the caller) leaves the store exactly as it was
        ours = isinstance(err, OmelocError)
        logger.log(logging.INFO if ours else logging.ERROR, "add_channel %r failed: rolling back", plan.name)
        if journal.get("phase") != "complete" and not ours:
            rs.stash_finished(io, journal)
        jr.rollback(io, journal, quiet=ours)
        raise
    jr.finish(io, journal)
    rs.drop_stash(io)
    seconds = time.perf_counter() - t0
    logger.info("added channel %r to %d image(s) in %.1f s", plan.name, len(plan.images), seconds)
    return AddChannelResult(
        name=plan.name, channel_index=plan.channel_index, images=len(plan.images),
        levels=max(len(i.level_paths) for i in plan.images), bytes_written=nbytes, seconds=seconds,
        recovered=recovered,
    )
