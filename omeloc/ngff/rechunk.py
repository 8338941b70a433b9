"""Copy an OME-Zarr plate or image into an append-friendly layout (one channel per chunk).

:func:`omeloc.add_channel` refuses stores whose chunks hold several channels (for example
ome-zarr-py's default, all channels in one chunk), because adding or replacing a channel
there would rewrite chunks that hold original pixels.  :func:`rechunk` makes a copy with
one channel per chunk and per shard (other chunk and shard sizes, compressors and filters
kept); the source is only read.  A zipped OME-Zarr (``.ozx``) can be the source: the copy is
a folder omeloc can write into.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import dask.array as da
import zarr

from omeloc.errors import InputError, NotOmeZarrError, PathNotFoundError
from omeloc.ngff.axes import axis_keys
from omeloc.ngff.format import group_ngff_attrs, join_path, store_format
from omeloc.ngff.stores import open_group, zip_location
from omeloc.writeback.journal import JOURNAL_KEY
from omeloc.writeback.lock import source_lock

__all__ = ["rechunk"]

logger = logging.getLogger(__name__)


def _image_arrays(path: str, group: zarr.Group) -> dict[str, tuple[str, ...]]:
    """Array path → axis keys, for the levels of the multiscale image group at ``path`` (none when not one)."""
    ms = group_ngff_attrs(group).get("multiscales") or []
    if not ms or not isinstance(ms[0], Mapping):
        return {}
    try:
        axes = axis_keys(ms[0].get("axes") or [], path or "the root")
    except NotOmeZarrError:
        return {}
    return {join_path("", path, str(d["path"])): axes for d in ms[0].get("datasets") or []
            if isinstance(d, Mapping) and "path" in d}


def rechunk(
    src: str | Path,
    dst: str | Path,
    *,
    overwrite: bool = False,
    client: Any = None,
    storage_options: Mapping[str, Any] | None = None,
) -> Path:
    """Copy ``src`` to ``dst`` with one channel per chunk, so channels can be appended in place.

    Parameters
    ----------
    src
        An OME-Zarr plate or image (NGFF 0.4 or 0.5), local or fsspec URL.
    dst
        A new local directory.
    overwrite
        Replace ``dst`` if it exists.
    client
        A ``distributed.Client`` for the copy; None uses the default Dask scheduler.
    storage_options
        fsspec options for ``src``.

    Returns
    -------
    pathlib.Path
        ``dst``.
    """
    src, dst = str(src), Path(dst)
    # no omeloc writer changes the source while it is copied (a zip is never written: no lock needed)
    lock = contextlib.nullcontext() if zip_location(src) else source_lock(src, storage_options)
    with lock:
        return _copy(src, dst, overwrite=overwrite, client=client, storage_options=storage_options)


def _copy(src: str, dst: Path, *, overwrite: bool, client: Any, storage_options: Mapping[str, Any] | None) -> Path:
    """The copy of :func:`rechunk`, made while the source's lock is held."""
    root = _open_source(src, dst, overwrite, storage_options)
    out = zarr.open_group(str(dst), mode="w", zarr_format=root.metadata.zarr_format)
    out.attrs.update({k: v for k, v in root.attrs.items() if k != JOURNAL_KEY})
    axes_of = _image_arrays("", root)
    sources, targets = [], []
    for path, node in sorted(root.members(max_depth=None), key=lambda m: m[0].count("/")):
        if isinstance(node, zarr.Group):
            out.create_group(path, attributes=dict(node.attrs))
            axes_of.update(_image_arrays(path, node))
            continue
        arr = _create_copy(out, path, node, axes_of.get(path, ()))
        # one task per storage unit (shard or chunk): no two tasks write the same file
        sources.append(da.from_zarr(node).rechunk(arr.shards or arr.chunks))
        targets.append(arr)
    if sources:
        job = da.store(sources, targets, lock=False, compute=False)
        from omeloc.compute import compute

        compute(job, client=client)
    logger.info("copied %s to %s with one channel per chunk (%d arrays)", src, dst, len(targets))
    return dst


def _open_source(src: str, dst: Path, overwrite: bool, storage_options: Mapping[str, Any] | None) -> zarr.Group:
    """Check both ends (removing ``dst`` when ``overwrite``) and open the source root read-only."""
    if "://" not in src and zip_location(src) is None and not Path(src).exists():
        raise PathNotFoundError(f"{src} does not exist. Check the path.")
    if dst.exists():
        if not overwrite:
            raise InputError(f"{dst} already exists. Choose another path or pass overwrite=True.")
        shutil.rmtree(dst)
    try:
        return open_group(src, storage_options, use_consolidated=False)
    except (FileNotFoundError, ValueError) as err:
        raise NotOmeZarrError(f"{src} is not a Zarr group. Point rechunk at an OME-Zarr plate or image.") from err


def _create_copy(out: zarr.Group, path: str, node: zarr.Array, axes: tuple[str, ...]) -> zarr.Array:
    """An empty copy of array ``node`` at ``path`` of ``out``: same everything, 1 channel per chunk and shard.

    Sharding is kept (each shard holds one channel and the same spatial extent as before),
    and so are the compressors, filters, serializer, fill value, key encoding and dimension
    names.
    """
    c_axis = axes.index("c") if "c" in axes and len(axes) == node.ndim else None
    chunks, shards = list(node.chunks), list(node.shards) if node.shards else None
    if c_axis is not None:
        chunks[c_axis] = 1
        if shards is not None:
            shards[c_axis] = 1
    extra = store_format(node.metadata.zarr_format).copy_array_kwargs(node, shards)
    return out.create_array(
        path, shape=node.shape, dtype=node.dtype, chunks=tuple(chunks), fill_value=node.fill_value,
        compressors=node.compressors, filters=node.filters or None, attributes=dict(node.attrs), **extra,
    )
