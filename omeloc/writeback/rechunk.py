"""Copy an OME-Zarr plate or image into an append-friendly layout (one channel per chunk).

:func:`omeloc.add_channel` refuses stores whose chunks hold several channels (for example
ome-zarr-py's default, all channels in one chunk), because adding or replacing a channel
there would rewrite chunks that hold original pixels.  :func:`rechunk` makes a copy with
one channel per chunk and per shard (other chunk and shard sizes, compressors and filters
kept); the source is only read.  A zipped OME-Zarr (``.ozx``) can be the source: the copy is
a folder omeloc can write into.

A copy that is killed half-way must never look finished (a user who trusts it and deletes
the source would lose data).  S3 has no rename, so the copy is marked instead:

1. the destination's root group is created first with only the marker
   :data:`~omeloc.ngff.plate.INCOMPLETE_KEY` in its attributes (no ``plate`` or
   ``multiscales`` metadata: other readers see no plate either);
2. every group and array is created, then every chunk copied;
3. the root's attributes are replaced by the source's in one document write, which removes
   the marker: the commit point.

Every omeloc command refuses a marked destination (:func:`omeloc.open_plate` raises an
:class:`~omeloc.errors.InputError` naming the fix); rerunning :func:`rechunk` on it, or
``omeloc recover`` on it (:func:`finish_copy`), redoes the copy from the source the marker
names.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import shutil
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dask.array as da
import zarr

from omeloc.errors import (
    InputError,
    NotOmeZarrError,
    PathNotFoundError,
    ReadOnlyStoreError,
    StoreAccessError,
)
from omeloc.ngff.axes import axis_keys
from omeloc.ngff.format import group_ngff_attrs, join_path, store_format
from omeloc.ngff.plate import INCOMPLETE_KEY, refuse_incomplete
from omeloc.ngff.stores import check_writable, missing_bucket, open_group, zip_location
from omeloc.testing.faults import fault_point
from omeloc.writeback.journal import JOURNAL_KEY
from omeloc.writeback.lock import source_lock

__all__ = ["finish_copy", "incomplete_copy", "rechunk"]

logger = logging.getLogger(__name__)


def _image_arrays(path: str, group: zarr.Group) -> dict[str, tuple[str, ...]]:
    """Array path → axis keys, for the levels of the multiscale image group at ``path`` (none
    when not one)."""
    ms = group_ngff_attrs(group).get("multiscales") or []
    if not ms or not isinstance(ms[0], Mapping):
        return {}
    try:
        axes = axis_keys(ms[0].get("axes") or [], path or "the root")
    except NotOmeZarrError:
        return {}
    return {
        join_path("", path, str(d["path"])): axes
        for d in ms[0].get("datasets") or []
        if isinstance(d, Mapping) and "path" in d
    }


def rechunk(
    src: str | Path,
    dst: str | Path,
    *,
    overwrite: bool = False,
    client: Any = None,
    storage_options: Mapping[str, Any] | None = None,
    dst_storage_options: Mapping[str, Any] | None = None,
    progress: Any = False,
) -> Path | str:
    """Copy ``src`` to ``dst`` with one channel per chunk, so channels can be appended in place.

    Parameters
    ----------
    src
        An OME-Zarr plate or image (NGFF 0.4 or 0.5), local or fsspec URL.
    dst
        A new local directory or fsspec URL.  An incomplete copy that an interrupted
        ``rechunk`` left there is replaced without ``overwrite``.
    overwrite
        Replace ``dst`` if it exists.
    client
        A ``distributed.Client`` for the copy; None uses the default Dask scheduler.
    storage_options, dst_storage_options
        fsspec options for ``src`` and ``dst`` (``dst`` defaults to those of ``src``).
    progress
        Report the copy's tasks (the progress protocol of :mod:`omeloc.progress`: ``True`` for
        a bar on a terminal and plain lines in a log, or a reporter).

    Returns
    -------
    pathlib.Path or str
        ``dst`` (a Path for a local destination).

    Raises
    ------
    InputError
        ``dst`` exists (and is not an interrupted copy) without ``overwrite``; ``src`` is not
        an OME-Zarr plate or image.
    ReadOnlyStoreError
        ``dst`` cannot be written.
    """
    src = str(src)
    target = _Dest(
        str(dst), dst_storage_options if dst_storage_options is not None else storage_options
    )
    if target.same_as(src):
        raise InputError(
            f"rechunk copies {src} into a new store; the destination is the source itself. "
            f"Choose another destination."
        )
    # no omeloc writer changes the source while it is copied (a zip is never written: no lock
    # needed)
    lock = contextlib.nullcontext() if zip_location(src) else source_lock(src, storage_options)
    with lock:
        _copy(
            src,
            target,
            overwrite=overwrite,
            client=client,
            storage_options=storage_options,
            progress=progress,
        )
    return Path(target.url) if not target.remote else target.url


def incomplete_copy(
    dst: str | Path, storage_options: Mapping[str, Any] | None = None
) -> dict[str, Any] | None:
    """The marker of an interrupted :func:`rechunk` at ``dst`` (``{"source": ..., ...}``), else
    None."""
    try:
        attrs = dict(open_group(str(dst), storage_options, use_consolidated=False).attrs)
    except Exception:  # noqa: BLE001 - not a readable group: no marker either
        return None
    marker = attrs.get(INCOMPLETE_KEY)
    return dict(marker) if isinstance(marker, Mapping) else ({} if marker is not None else None)


def finish_copy(
    dst: str | Path,
    *,
    storage_options: Mapping[str, Any] | None = None,
    source_options: Mapping[str, Any] | None = None,
    client: Any = None,
) -> str | None:
    """Redo the interrupted :func:`rechunk` that left ``dst`` incomplete; its source, or None if
    ``dst`` is not one.

    Raises
    ------
    InputError
        The marker names no source, or the source is gone (the message says to delete ``dst``).
    """
    marker = incomplete_copy(dst, storage_options)
    if marker is None:
        return None
    src = marker.get("source")
    if not isinstance(src, str) or not src or any(ord(ch) < 32 for ch in src):
        raise InputError(
            f"{dst} is an incomplete copy of an interrupted `omeloc rechunk` that names no usable "
            f"source. Delete {dst} and rechunk again."
        )
    if "://" not in src and zip_location(src) is None and not Path(src).exists():
        raise InputError(
            f"{dst} is an incomplete copy of {src} (an interrupted `omeloc rechunk`), and {src} is "
            f"gone. Delete {dst}: it holds no complete data."
        )
    rechunk(
        src, dst, client=client, storage_options=source_options, dst_storage_options=storage_options
    )
    return src


class _Dest:
    """The destination of a copy: a local folder or an fsspec URL (exists, remove, open for
    writing)."""

    def __init__(self, url: str, storage_options: Mapping[str, Any] | None) -> None:
        check_writable(url)
        self.url = url
        self.remote = "://" in url and not url.startswith("file://")
        self.storage_options = dict(storage_options) if storage_options else None
        if self.remote:
            import fsspec

            self.fs, self.path = fsspec.core.url_to_fs(url, **(self.storage_options or {}))
        else:
            self.fs, self.path = None, url.removeprefix("file://")

    def same_as(self, src: str) -> bool:
        if self.remote or "://" in src:
            return self.url.rstrip("/") == src.rstrip("/")
        return Path(src).resolve() == Path(self.path).resolve()

    def exists(self) -> bool:
        if self.fs is None:
            return Path(self.path).exists()
        return bool(self.fs.exists(self.path))

    def remove(self) -> None:
        if self.fs is None:
            path = Path(self.path)
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        else:
            self.fs.rm(self.path, recursive=True)
            self.fs.invalidate_cache()

    def create_root(self, zarr_format: int, attrs: Mapping[str, Any]) -> zarr.Group:
        """A new root group with ``attrs`` (the marker only); refused in one line when it cannot
        be written."""
        kwargs: dict[str, Any] = {
            "mode": "w",
            "zarr_format": zarr_format,
            "attributes": dict(attrs),
        }
        if self.remote and self.storage_options:
            kwargs["storage_options"] = self.storage_options
        try:
            return zarr.open_group(self.url if self.remote else self.path, **kwargs)
        except OSError as err:  # permissions, a read-only file system, a folder that cannot be made
            raise ReadOnlyStoreError(
                f"Cannot write the copy into {self.url} ({err.strerror or err}). "
                f"Choose a destination you can write to."
            ) from err


def _copy(
    src: str,
    dst: _Dest,
    *,
    overwrite: bool,
    client: Any,
    storage_options: Mapping[str, Any] | None,
    progress: Any = False,
) -> None:
    """The copy of :func:`rechunk`, made while the source's lock is held; marked incomplete until
    its end."""
    root = _open_source(src, storage_options)
    _clear_destination(dst, overwrite)
    marker = {
        "source": src,
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "version": 1,
    }
    try:
        out = dst.create_root(root.metadata.zarr_format, {INCOMPLETE_KEY: marker})
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
        fault_point("rechunk_metadata")
        if sources:
            job = da.store(sources, targets, lock=False, compute=False)
            from omeloc.compute import compute

            compute(job, client=client, progress=progress, desc="rechunk")
        fault_point("rechunk_copied")
        # the commit: one write of the root document replaces the marker with the source's
        # attributes
        out.attrs.put(
            {k: v for k, v in root.attrs.items() if k not in (JOURNAL_KEY, INCOMPLETE_KEY)}
        )
    except OSError as err:
        if err.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
            raise ReadOnlyStoreError(
                f"Cannot write the copy into {dst.url} ({err.strerror or err}). "
                f"Choose a destination you can write to."
            ) from err
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise ReadOnlyStoreError(
                f"The disk holding {dst.url} is full ({err.strerror}). Free space and rerun "
                f"the same rechunk: it redoes the copy."
            ) from err
        raise
    logger.info(
        "copied %s to %s with one channel per chunk (%d arrays)", src, dst.url, len(targets)
    )


def _clear_destination(dst: _Dest, overwrite: bool) -> None:
    """Remove ``dst`` when ``overwrite`` or when it is an interrupted copy; refuse an existing
    one otherwise."""
    if not dst.exists():
        return
    if incomplete_copy(dst.url, dst.storage_options) is not None:
        logger.warning(
            "%s is an incomplete copy left by an interrupted rechunk: copying again", dst.url
        )
    elif not overwrite:
        raise InputError(
            f"{dst.url} already exists. Choose another path or pass overwrite=True (--overwrite)."
        )
    try:
        dst.remove()
    except PermissionError as err:
        raise ReadOnlyStoreError(
            f"Cannot remove {dst.url} to replace it ({err.strerror or err}). "
            f"Fix its permissions or choose another destination."
        ) from err


def _open_source(src: str, storage_options: Mapping[str, Any] | None) -> zarr.Group:
    """Open the source root read-only (it must exist and be a Zarr group)."""
    if "://" not in src and zip_location(src) is None and not Path(src).exists():
        raise PathNotFoundError(f"{src} does not exist. Check the path.")
    try:
        root = open_group(src, storage_options, use_consolidated=False)
    except (FileNotFoundError, ValueError) as err:
        bucket = missing_bucket(src, storage_options)
        if bucket is not None:
            raise StoreAccessError(
                f"{src}: the bucket {bucket!r} does not exist. Check the URL's bucket name."
            ) from err
        raise NotOmeZarrError(
            f"{src} is not a Zarr group. Point rechunk at an OME-Zarr plate or image."
        ) from err
    refuse_incomplete(root.attrs, src)  # a copy of an incomplete copy would look complete
    return root


def _create_copy(out: zarr.Group, path: str, node: zarr.Array, axes: tuple[str, ...]) -> zarr.Array:
    """An empty copy of array ``node`` at ``path`` of ``out``: same everything, 1 channel per chunk
    and shard.

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
        path,
        shape=node.shape,
        dtype=node.dtype,
        chunks=tuple(chunks),
        fill_value=node.fill_value,
        compressors=node.compressors,
        filters=node.filters or None,
        attributes=dict(node.attrs),
        **extra,
    )
