"""Copy an OME-Zarr plate or image into an append-friendly layout (one channel per chunk).

:func:`omeloc.add_channel` refuses stores whose chunks hold several channels (for example
ome-zarr-py's default, all channels in one chunk), because adding or replacing a channel
there would rewrite chunks that hold original pixels.  :func:`rechunk` makes a copy with
chunk size 1 along ``c`` (other chunk sizes kept, shards dropped); the source is only read.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import dask.array as da
import zarr

from omeloc.errors import InputError, NotOmeZarrError, PathNotFoundError
from omeloc.writeback.journal import JOURNAL_KEY

__all__ = ["rechunk"]

logger = logging.getLogger(__name__)


def _axes_of(group: zarr.Group) -> list[str] | None:
    attrs = dict(group.attrs)
    ome = attrs.get("ome", attrs) if group.metadata.zarr_format == 3 else attrs
    ms = ome.get("multiscales") or []
    if not ms:
        return None
    return [a["name"] if isinstance(a, Mapping) else str(a) for a in ms[0].get("axes") or []]


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
    if "://" not in src and not Path(src).exists():
        raise PathNotFoundError(f"{src} does not exist. Check the path.")
    if dst.exists():
        if not overwrite:
            raise InputError(f"{dst} already exists. Choose another path or pass overwrite=True.")
        shutil.rmtree(dst)
    kwargs: dict[str, Any] = {"mode": "r", "use_consolidated": False}
    if storage_options:
        kwargs["storage_options"] = dict(storage_options)
    try:
        root = zarr.open_group(src, **kwargs)
    except (FileNotFoundError, ValueError) as err:
        raise NotOmeZarrError(f"{src} is not a Zarr group. Point rechunk at an OME-Zarr plate or image.") from err
    zf = root.metadata.zarr_format
    out = zarr.open_group(str(dst), mode="w", zarr_format=zf)
    out.attrs.update({k: v for k, v in root.attrs.items() if k != JOURNAL_KEY})
    groups = {"": root}
    members = sorted(root.members(max_depth=None), key=lambda m: m[0].count("/"))
    sources, targets = [], []
    for path, node in members:
        parent_path = path.rsplit("/", 1)[0] if "/" in path else ""
        if isinstance(node, zarr.Group):
            out.create_group(path, attributes=dict(node.attrs))
            groups[path] = node
            continue
        axes = _axes_of(groups.get(parent_path, root)) or []
        chunks = list(node.chunks)
        if "c" in axes and len(axes) == node.ndim:
            chunks[axes.index("c")] = 1
        extra: dict[str, Any] = {}
        if zf == 3:
            extra["dimension_names"] = node.metadata.dimension_names
            extra["chunk_key_encoding"] = node.metadata.chunk_key_encoding
        else:
            extra["chunk_key_encoding"] = {"name": "v2", "separator": node.metadata.dimension_separator or "."}
        arr = out.create_array(
            path, shape=node.shape, dtype=node.dtype, chunks=tuple(chunks), fill_value=node.fill_value,
            compressors=node.compressors, filters=node.filters or None, attributes=dict(node.attrs), **extra,
        )
        sources.append(da.from_zarr(node).rechunk(tuple(chunks)))
        targets.append(arr)
    if sources:
        job = da.store(sources, targets, lock=False, compute=False)
        from omeloc.compute import compute

        compute(job, client=client)
    logger.info("copied %s to %s with one channel per chunk (%d arrays)", src, dst, len(targets))
    return dst
