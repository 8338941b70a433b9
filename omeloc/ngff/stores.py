"""Where a plate's bytes are: folders, fsspec URLs, zipped OME-Zarr (``.ozx``), bioformats2raw wrappers.

- **Zipped OME-Zarr** (RFC-9 ``.ozx``, or a plain ``.zip`` of a Zarr hierarchy) opens by its
  plain local path, and so does any node inside it (``plate.ozx/B/3/0``): zarr's
  :class:`~zarr.storage.ZipStore`, read-only.  A zip cannot be changed in place safely (no
  chunk can be replaced without rewriting the archive), so :func:`check_writable` refuses a
  write there and names the fix.
- **bioformats2raw wrappers** (a root with ``bioformats2raw.layout``) hold one image per
  series in groups ``0``, ``1``, ... (or as the ``OME`` group's ``series`` attribute lists
  them); :func:`wrapper_series` finds them and :func:`pick_series` chooses one.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import zarr

from omeloc.errors import InputError, ReadOnlyStoreError

__all__ = ["WRAPPER_KEY", "ZIP_SUFFIXES", "check_writable", "open_group", "open_node", "pick_series",
           "wrapper_series", "zip_location"]

#: The attribute that marks a bioformats2raw wrapper (NGFF "bioformats2raw.layout" transitional layout).
WRAPPER_KEY = "bioformats2raw.layout"
#: Local files opened as zipped Zarr hierarchies.
ZIP_SUFFIXES = (".ozx", ".zip")
#: The most series :func:`wrapper_series` probes for when the wrapper does not list them.
MAX_SERIES = 4096


def zip_location(url: str | os.PathLike[str]) -> tuple[Path, str] | None:
    """``(zip file, path inside it)`` when local ``url`` is, or lies inside, a zipped Zarr; else ``None``.

    Examples
    --------
    >>> zip_location("s3://bucket/plate.ozx") is None  # URLs other than local paths are not opened as zips
    True
    """
    text = str(url)
    if "://" in text:
        return None
    parts = Path(text).parts
    for n in range(len(parts), 0, -1):
        head = Path(*parts[:n])
        if head.suffix.lower() in ZIP_SUFFIXES and head.is_file():
            return head, "/".join(parts[n:])
    return None


@lru_cache(maxsize=16)
def _zip_store(path: str, mtime_ns: int, size: int) -> zarr.storage.ZipStore:
    """One read-only ZipStore per zip file version (its modification time and size are in the key)."""
    return zarr.storage.ZipStore(path, mode="r", read_only=True)


def _where(url: str, storage_options: Mapping[str, Any] | None) -> dict[str, Any]:
    """The ``store``/``path``/``storage_options`` arguments that open ``url`` with zarr, read-only."""
    located = zip_location(url)
    if located is not None:
        zpath, inner = located
        stat = zpath.stat()
        return {"store": _zip_store(str(zpath.resolve()), stat.st_mtime_ns, stat.st_size), "path": inner or None}
    return {"store": url, **({"storage_options": dict(storage_options)} if storage_options else {})}


def open_node(url: str, storage_options: Mapping[str, Any] | None = None) -> zarr.Group | zarr.Array:
    """Open the Zarr node at ``url`` read-only: a folder, an fsspec URL, or a node inside a local zip.

    Raises whatever zarr raises for a missing or unreadable node (the caller translates it).
    """
    return zarr.open(mode="r", **_where(url, storage_options))


def open_group(url: str, storage_options: Mapping[str, Any] | None = None, *,
               use_consolidated: bool | None = None, zarr_format: int | None = None) -> zarr.Group:
    """Open the Zarr group at ``url`` read-only, like :func:`open_node` (zips included).

    With ``zarr_format`` known (and ``use_consolidated=False``) zarr reads one metadata
    document (v3 ``zarr.json``; v2 ``.zgroup`` and ``.zattrs``) instead of probing every kind.
    """
    return zarr.open_group(mode="r", use_consolidated=use_consolidated, zarr_format=zarr_format,
                           **_where(url, storage_options))


def check_writable(url: str | os.PathLike[str]) -> None:
    """Refuse a write into a zipped OME-Zarr (read-only here) with the fix; nothing else is checked.

    Raises
    ------
    ReadOnlyStoreError
        ``url`` is, or lies inside, a ``.ozx`` / ``.zip`` file.
    """
    located = zip_location(url)
    if located is None:
        return
    zpath = located[0]
    folder = zpath.with_suffix(".zarr")
    raise ReadOnlyStoreError(
        f"{zpath} is a zipped OME-Zarr, which omeloc reads but does not write (a zip cannot be changed in place). "
        f"Unzip it into a folder (`python -m zipfile -e {zpath} {folder}`) and predict into {folder}; "
        f"re-zip it afterwards if you need a .ozx."
    )


def wrapper_series(ome: Mapping[str, Any], open_group: Callable[[str], Any]) -> list[str] | None:
    """The series paths of a bioformats2raw wrapper, ``None`` when ``ome`` is not one.

    Parameters
    ----------
    ome : Mapping
        The NGFF metadata of the root (NGFF 0.5 keeps ``bioformats2raw.layout`` under ``ome``,
        0.4 at the top level of the attributes).
    open_group : callable
        Opens a group below the root by relative path and returns its NGFF metadata; raises
        ``FileNotFoundError``, ``KeyError`` or ``ValueError`` (omeloc's not-found and
        not-OME-Zarr errors are both) when there is none.
    """
    if WRAPPER_KEY not in ome:
        return None
    try:
        listed = open_group("OME").get("series")
    except (FileNotFoundError, KeyError, ValueError):
        listed = None
    if isinstance(listed, Sequence) and not isinstance(listed, str) and listed:
        return [str(s) for s in listed]
    found = []
    for i in range(MAX_SERIES):
        try:
            if "multiscales" not in open_group(str(i)):
                break
        except (FileNotFoundError, KeyError, ValueError):
            break
        found.append(str(i))
    return found


def pick_series(url: str, series: Sequence[str], wanted: str | int | None) -> str:
    """The series to open: ``wanted``, or the only one; otherwise an error that lists them.

    Raises
    ------
    InputError
        No series, an unknown ``wanted``, or several series and no choice.
    """
    if not series:
        raise InputError(
            f"{url} is a bioformats2raw wrapper without any series (no group 0, no OME/series list). "
            f"Point omeloc at an OME-Zarr plate or image."
        )
    shown = ", ".join(series[:12]) + (" ..." if len(series) > 12 else "")
    if wanted is None:
        if len(series) == 1:
            return series[0]
        raise InputError(
            f"{url} is a bioformats2raw wrapper with {len(series)} series ({shown}). Choose one with --series "
            f"(series=...), or point omeloc at it: {url.rstrip('/')}/{series[0]}."
        )
    if str(wanted) not in series:
        raise InputError(f"{url} has no series {str(wanted)!r}. Series: {shown}.")
    return str(wanted)
