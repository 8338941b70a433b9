"""Open OME-Zarr HCS plates and images lazily, from their metadata only.

A plate is discovered as plate → wells → fields → ``multiscales[0].datasets[].path``,
exactly as the NGFF metadata says (never by listing folders), for NGFF 0.4 (Zarr v2) and
0.5 (Zarr v3), on local paths and fsspec URLs.  Nothing here reads a pixel: images are
exposed as dask arrays and xarray views over the zarr arrays.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import marshal
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr
import zarr
import zarr.errors
from dask.base import tokenize

from omeloc.errors import (
    ChannelNotFoundError,
    CorruptDataError,
    InputError,
    NotOmeZarrError,
    OmelocError,
    PathNotFoundError,
    StoreAccessError,
    UnsafePathError,
)
from omeloc.ngff.axes import axis_keys, stored_axis_names
from omeloc.ngff.format import (
    default_ngff_version,
    group_ngff_attrs,
    inside_root,
    join_path,
    ngff_attrs,
    safe_key,
)
from omeloc.ngff.documents import DocumentCache
from omeloc.ngff.metadata import Multiscale, PlateMeta, WellMeta, channel_labels
from omeloc.ngff.stores import (
    gather_bounded,
    missing_bucket,
    open_group,
    open_node,
    pick_series,
    wrapper_series,
    zip_location,
)

__all__ = [
    "INCOMPLETE_KEY",
    "MAX_CHANNELS",
    "MAX_CHUNKS",
    "MAX_PLANE_PIXELS",
    "Image",
    "Plate",
    "Well",
    "image_plate",
    "label_text",
    "open_image",
    "open_plate",
    "refuse_incomplete",
]

logger = logging.getLogger(__name__)

#: What an array's metadata may declare before omeloc refuses to open it (checked before anything
#: is allocated: a plate is untrusted input).  ``OMELOC_MAX_PLANE_PIXELS`` raises the plane limit.
MAX_PLANE_PIXELS = 2**31
MAX_CHANNELS = 65536
MAX_CHUNKS = 2**24
MAX_ELEMENTS = 2**40
#: Root attribute of a copy that ``omeloc rechunk`` is still making (or was killed making): refused.
INCOMPLETE_KEY = "omeloc_rechunk_incomplete"


#: the NGFF versions omeloc reads ("0.5-dev..." style suffixes are accepted with their base version)
NGFF_VERSIONS = ("0.4", "0.5")


def _checked_version(version: str, url: str) -> str:
    """``version`` when omeloc reads it, else an InputError that names the versions it reads."""
    base = ".".join(version.split("-", 1)[0].split(".")[:2])  # "0.4.0", "0.5-dev2" → "0.4", "0.5"
    if base in NGFF_VERSIONS:
        return version
    shown = version if version.isprintable() and len(version) < 40 else repr(version[:40])
    raise NotOmeZarrError(
        f"{url} declares NGFF version {shown}, which omeloc does not read (it reads "
        f"{', '.join(NGFF_VERSIONS)}). Convert it to NGFF 0.4 or 0.5, or fix its 'version' if the "
        "metadata is really 0.4/0.5."
    )


#: the root attribute of a write-back in progress (``omeloc.writeback.journal.JOURNAL_KEY``; ngff/
#: imports nothing from writeback/)
_JOURNAL_KEY = "omeloc_journal"
_WARNED: set[str] = set()


def _warn_journal(attrs: Mapping[str, Any], url: str) -> None:
    """One warning line (once per store and process) when a write-back journal is in the root
    attributes."""
    if _JOURNAL_KEY not in attrs or url in _WARNED:
        return
    _WARNED.add(url)
    logger.warning(
        "%s holds the journal of a write-back that is running or was interrupted: channels it adds "
        "may be incomplete. If no omeloc run writes it, run `omeloc recover %s` (predict does so "
        "itself).",
        url,
        url,
    )


def refuse_incomplete(attrs: Mapping[str, Any], url: str) -> None:
    """Refuse a store that an interrupted ``omeloc rechunk`` left half-copied (its root carries the
    marker).

    Raises
    ------
    InputError
        ``attrs`` (a root's attributes) hold :data:`INCOMPLETE_KEY`.
    """
    if INCOMPLETE_KEY not in attrs:
        return
    marker = attrs.get(INCOMPLETE_KEY)
    source = marker.get("source") if isinstance(marker, Mapping) else None
    src = (
        source if isinstance(source, str) and source.isprintable() and len(source) < 500 else "SRC"
    )
    raise InputError(
        f"{url} is an incomplete copy: an `omeloc rechunk` making it was interrupted, so some of "
        f"its pixels were never copied. Run `omeloc recover {url}` (or `omeloc rechunk {src} "
        f"{url}` again) to finish it."
    )


def _short_list(items: Sequence[str], most: int = 6) -> str:
    """``a, b, c`` or ``a, b, ... (+4)`` for a repr."""
    items = [str(i) for i in items]
    return ", ".join(items[:most]) + (f", ... (+{len(items) - most})" if len(items) > most else "")


def label_text(label: str) -> str:
    """A channel label as messages show it: itself, or its ``repr`` when it holds newlines or
    control characters.

    Examples
    --------
    >>> label_text("actin"), label_text("a\\nb")
    ('actin', "'a\\\\nb'")
    """
    return label if label.isprintable() else repr(label)


def _labels(names: Sequence[str]) -> str:
    return ", ".join(label_text(n) for n in names)


def _size_problem(
    shape: tuple[int, ...], block: tuple[int, ...], axes: tuple[str, ...]
) -> str | None:
    """Why a declared shape is too large (or malformed) for omeloc; ``None`` when it is fine."""
    if len(shape) != len(axes) or len(block) != len(shape):
        return f"{len(shape)} dimensions for the {len(axes)} axes {''.join(axes)!r}"
    if min(shape) < 1:
        return "an empty axis"
    plane = shape[axes.index("y")] * shape[axes.index("x")]
    limit = int(os.environ.get("OMELOC_MAX_PLANE_PIXELS", MAX_PLANE_PIXELS))
    if plane > limit:
        return (
            f"a plane of {plane:,} pixels, more than the {limit:,} omeloc opens "
            "(OMELOC_MAX_PLANE_PIXELS)"
        )
    if shape[axes.index("c")] > MAX_CHANNELS:
        return f"{shape[axes.index('c')]:,} channels, more than the {MAX_CHANNELS:,} omeloc opens"
    if math.prod(shape) > MAX_ELEMENTS or math.prod(block) > min(MAX_ELEMENTS, 2**31):
        return (
            f"{math.prod(shape):,} pixels in chunks of {math.prod(block):,}, more than omeloc opens"
        )
    keys = math.prod(-(-s // max(int(b), 1)) for s, b in zip(shape, block))
    if keys > MAX_CHUNKS:
        return f"{keys:,} chunks, more than the {MAX_CHUNKS:,} omeloc opens (use larger chunks)"
    return None


def _check_declared_size(arr: zarr.Array, axes: tuple[str, ...], where: str) -> None:
    """Refuse an array whose metadata declares an absurd shape, before anything is allocated."""
    shape = tuple(int(s) for s in arr.shape)
    block = tuple(int(b) for b in (getattr(arr, "shards", None) or arr.chunks))
    problem = _size_problem(shape, block, axes)
    if problem:
        raise InputError(
            f"Array {where} declares shape {shape}: {problem}. Fix the array's metadata."
        )


def _check_inside(root: str, url: str, what: str) -> None:
    """A local path that metadata names must not lead out of the plate through a symbolic link."""
    if _is_url(root) or inside_root(root, url):
        return
    raise UnsafePathError(
        f"{what} leads through a symbolic link to {os.path.realpath(url)}, outside {root}. "
        f"Remove the link, or copy the data into the plate."
    )


def _is_url(path: str) -> bool:
    return "://" in path


def _open_group(
    url: str,
    storage_options: Mapping[str, Any] | None,
    what: str,
    zarr_format: int | None = None,
    documents: DocumentCache | None = None,
    consolidated: bool = False,
) -> zarr.Group:
    """Open a zarr group read-only, translating zarr's errors into one-line omeloc errors.

    A local ``.ozx``/``.zip`` file, or a path inside one, opens through a read-only zip store.
    With ``zarr_format`` known (the plate root's, for its wells and images) one metadata document
    is read instead of zarr's probing of every kind (~8 reads): metadata reads per image matter on
    object stores (``benchmarks/README.md``, "Plates of thousands of images").
    """
    if not _is_url(url) and zip_location(url) is None and not Path(url).exists():
        raise PathNotFoundError(f"{what} {url} does not exist. Check the path.")
    node: Any
    try:
        # one concurrent round of the documents of both formats (zarr.open would probe for an array
        # first)
        node = open_group(
            url,
            storage_options,
            use_consolidated=None if consolidated else False,
            zarr_format=zarr_format,
            documents=documents,
        )
    except Exception as err:  # noqa: BLE001 - translated (or re-raised) by _opened
        try:  # only when it failed: what is there (an array is refused with its own message)
            node = open_node(url, storage_options)
        except Exception:  # noqa: BLE001 - the group's error says it
            node = err
    return _opened(node, url, what, storage_options)


def _group_error(
    err: BaseException, url: str, what: str, storage_options: Mapping[str, Any] | None
) -> None:
    """Raise the one-line omeloc error for zarr's refusal to open the group at ``url``.

    Returns ``None`` (no group) when the node there is an array: the caller says so.
    """
    if isinstance(err, zarr.errors.ContainsArrayError):
        return None
    if isinstance(
        err,
        (
            FileNotFoundError,
            zarr.errors.NodeTypeValidationError,
            zarr.errors.NodeNotFoundError,
            KeyError,
        ),
    ):
        bucket = missing_bucket(url, storage_options) if _is_url(url) else None
        if bucket is not None:
            raise StoreAccessError(
                f"{what} {url}: the bucket {bucket!r} does not exist. Check the URL's bucket "
                f"name (and the endpoint: AWS_ENDPOINT_URL or storage_options)."
            ) from err
        raise NotOmeZarrError(
            f"{what} {url} is not a Zarr group. Point omeloc at an OME-Zarr plate or image "
            f"(a folder with zarr.json or .zattrs/.zgroup)."
        ) from err
    if isinstance(err, ValueError):  # zarr raises ValueError for unparsable metadata documents
        raise NotOmeZarrError(
            f"{what} {url} has unreadable Zarr metadata ({err}). Restore its zarr.json/.zattrs "
            "from a backup."
        ) from err
    raise err


def _open_many(
    root: zarr.Group, rels: Sequence[str], *, arrays: bool, zarr_format: int
) -> list[zarr.Group | zarr.Array | BaseException]:
    """The groups (or arrays) at ``rels`` below ``root``, opened concurrently (each document read
    once).

    Each entry is the opened node, or the exception zarr raised for it (the caller translates
    it, in plate order, so a broken plate gives the same message as a serial open).
    """
    from zarr.core.array import AsyncArray
    from zarr.core.group import AsyncGroup
    from zarr.core.sync import sync

    async def one(rel: str) -> zarr.Group | zarr.Array:
        where = root.store_path / rel
        if arrays:
            return zarr.Array(await AsyncArray.open(where, zarr_format=zarr_format))
        return zarr.Group(
            await AsyncGroup.open(where, zarr_format=zarr_format, use_consolidated=False)
        )

    found = _from_consolidated(root, rels, arrays)
    missing = [rel for rel in rels if rel not in found]
    opened = (
        dict(zip(missing, sync(gather_bounded(one, missing, return_exceptions=True))))
        if missing
        else {}
    )
    return [found[rel] if rel in found else opened[rel] for rel in rels]


def _from_consolidated(root: zarr.Group, rels: Sequence[str], arrays: bool) -> dict[str, Any]:
    """The nodes at ``rels`` that the root's consolidated metadata holds (no request at all); a node
    it lacks, or holds as the other kind, is read from its own document instead."""
    meta = getattr(root.metadata, "consolidated_metadata", None)
    if meta is None or not rels:
        return {}
    kind = zarr.Array if arrays else zarr.Group
    found = {}
    for rel in rels:
        try:
            node = root[rel]
        except (KeyError, ValueError, zarr.errors.BaseZarrError):
            continue
        if isinstance(node, kind):
            found[rel] = node
    return found


class _CheckedReader:
    """Indexes a zarr array for dask; a chunk that cannot be decoded becomes a one-line error.

    Without it a corrupted chunk file surfaces as a codec ``RuntimeError`` deep in a Dask
    traceback; with it the user learns which image, level and region to restore.
    """

    def __init__(self, array: zarr.Array, where: str) -> None:
        self.array = array
        self.where = where
        self.shape = tuple(array.shape)
        self.dtype = np.dtype(array.dtype)
        self.ndim = len(self.shape)

    def __getitem__(self, key: Any) -> np.ndarray:
        try:
            return self.array[key]
        except Exception as err:  # codec/IO errors of any backend: re-raised with context
            raise CorruptDataError(
                f"Cannot read pixels {key} of {self.where} ({type(err).__name__}: {err}). "
                f"A chunk file is corrupted or unreadable: restore it from a backup."
            ) from err


@dataclass(frozen=True)
class Image:
    """One multiscale image: a field of a well, or a standalone image.

    Attributes
    ----------
    path : str
        Path relative to the plate root (``"B/3/0"``); ``""`` for a standalone image.
    url : str
        Full path or URL of the image group.
    well, field : str or None
        Well path (``"B/3"``) and field name (``"0"``); ``None`` for a standalone image.
    axes : tuple of str
        Axis keys by meaning, e.g. ``("c", "y", "x")`` or ``("t", "c", "z", "y", "x")``, also
        for axes stored as ``T, C, Z, Y, X`` (see :attr:`axis_names` for the stored names).
    channel_names : tuple of str
        ``omero.channels[].label`` (``c0``, ``c1``, ... when absent).
    level_paths : tuple of str
        ``multiscales[0].datasets[].path`` in order (level 0 first).
    scales : tuple of tuple of float
        The scale transform of each level.
    ngff_version : str
    zarr_format : int
    attrs : dict
        All group attributes, as stored.
    """

    path: str
    url: str
    well: str | None
    field: str | None
    axes: tuple[str, ...]
    channel_names: tuple[str, ...]
    level_paths: tuple[str, ...]
    scales: tuple[tuple[float, ...], ...]
    ngff_version: str
    zarr_format: int
    _attrs: Any = field(repr=False, compare=False)
    """The attributes packed by :func:`_pack_attrs` (what :attr:`attrs` unpacks)."""
    _group: zarr.Group = field(repr=False, compare=False)

    def __repr__(self) -> str:
        shape = "x".join(map(str, self.shapes[0])) if self.level_paths else "?"
        return (
            f"<omeloc Image {self.path or self.url!r}: {''.join(self.axes)} {shape}, channels "
            f"{_short_list(self.channel_names)}, {len(self.level_paths)} level(s)>"
        )

    # -- metadata -------------------------------------------------------------------------
    @property
    def attrs(self) -> dict[str, Any]:
        """All group attributes, as stored (a fresh copy at each access)."""
        return _unpack_attrs(self._attrs)

    @property
    def ome(self) -> dict[str, Any]:
        """The NGFF metadata (``attrs['ome']`` on 0.5, the attributes themselves on 0.4)."""
        return ngff_attrs(self.attrs, self.zarr_format)

    @property
    def axis_names(self) -> tuple[str, ...]:
        """The axis names as the metadata spells them (``("T", "C", "Z", "Y", "X")`` for iohub)."""
        multiscales = self.ome.get("multiscales") or [{}]
        return stored_axis_names(multiscales[0].get("axes") or ()) or self.axes

    @property
    def omero(self) -> dict[str, Any]:
        """The ``omero`` rendering metadata (empty dict when absent)."""
        return dict(self.ome.get("omero") or {})

    @property
    def name(self) -> str:
        """Short display name: ``B3/0`` in a plate, the folder name otherwise."""
        if self.well is None:
            return self.url.rstrip("/").rsplit("/", 1)[-1]
        return f"{self.well.replace('/', '')}/{self.field}"

    @cached_property
    def _arrays(self) -> dict[str, zarr.Array]:
        """The level arrays opened so far (each opened once: an open is a store round trip)."""
        return {}

    def zarr_array(self, level: int = 0) -> zarr.Array:
        """The zarr array of pyramid level ``level`` (opened read-only, once per Image)."""
        path = self._level_path(level)
        cached = self._arrays.get(path)
        if cached is not None:
            return cached
        try:
            arr = self._group[path]
        except KeyError as err:
            raise PathNotFoundError(
                f"Image {self.url} lists level {path!r} in its multiscales metadata but has no "
                f"such array. Re-write the pyramid or fix multiscales[0].datasets."
            ) from err
        except ValueError as err:  # zarr's refusal of an inconsistent array document
            raise NotOmeZarrError(
                f"Level {path!r} of image {self.url} has unreadable array metadata ({err}). "
                f"Restore its zarr.json/.zarray from a backup."
            ) from err
        if not isinstance(arr, zarr.Array):
            raise NotOmeZarrError(
                f"{self.url}/{path} is a group, not an array. Fix multiscales[0].datasets."
            )
        _check_declared_size(arr, self.axes, f"{self.url}/{path}")
        self._arrays[path] = arr
        return arr

    def _level_path(self, level: int) -> str:
        if not -len(self.level_paths) <= level < len(self.level_paths):
            raise IndexError(
                f"Expected a level between 0 and {len(self.level_paths) - 1}. Got {level} instead."
            )
        return self.level_paths[level]

    @cached_property
    def shapes(self) -> tuple[tuple[int, ...], ...]:
        """Shape of every level, read from the arrays' metadata."""
        return tuple(tuple(self.zarr_array(i).shape) for i in range(len(self.level_paths)))

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of level 0."""
        return self.shapes[0]

    @property
    def dtype(self) -> np.dtype:
        """Pixel dtype (of level 0)."""
        return np.dtype(self.zarr_array(0).dtype)

    def chunks(self, level: int = 0) -> tuple[int, ...]:
        """Chunk shape of a level (the inner chunk for sharded arrays)."""
        return tuple(self.zarr_array(level).chunks)

    def shards(self, level: int = 0) -> tuple[int, ...] | None:
        """Shard shape of a level, or ``None`` when the array is not sharded."""
        shards = getattr(self.zarr_array(level), "shards", None)
        return tuple(shards) if shards else None

    def write_chunks(self, level: int = 0) -> tuple[int, ...]:
        """The smallest independently writable block: the shard if sharded, else the chunk."""
        return self.shards(level) or self.chunks(level)

    # -- channels -------------------------------------------------------------------------
    def channel_index(self, name: str) -> int:
        """Index of channel ``name`` along ``c``.

        Raises
        ------
        ChannelNotFoundError
            When no channel has that label; the message lists the labels there are.
        """
        if self.channel_names.count(name) > 1:
            raise ChannelNotFoundError(
                f"Channel name {name!r} appears {self.channel_names.count(name)} times in "
                f"{self.url} ({_labels(self.channel_names)}): it is ambiguous. Give each channel a "
                "unique omero label."
            )
        try:
            return self.channel_names.index(name)
        except ValueError:
            raise ChannelNotFoundError(
                f"No channel {name!r} in {self.url}. Available channels: "
                f"{_labels(self.channel_names)}."
            ) from None

    # -- lazy pixels ----------------------------------------------------------------------
    def reader(self, level: int = 0) -> Any:
        """The level's array for direct reads (``reader[region]`` → numpy); unreadable chunks
        raise ``CorruptDataError``."""
        return _CheckedReader(self.zarr_array(level), f"{self.url}/{self._level_path(level)}")

    def level(self, level: int = 0) -> da.Array:
        """Pixels of a pyramid level as a lazy dask array (chunks follow the store's)."""
        arr = self.zarr_array(level)
        where = f"{self.url}/{self._level_path(level)}"
        return da.from_array(
            _CheckedReader(arr, where),
            chunks=self.write_chunks(level),
            asarray=False,
            fancy=False,
            name=f"omeloc-read-{tokenize(where, arr.metadata.to_dict())}",
        )

    def channel(self, name: str, level: int = 0) -> da.Array:
        """One channel of a level as a lazy dask array without the ``c`` axis."""
        index = self.channel_index(name)
        return self.level(level)[(slice(None),) * self.axes.index("c") + (index,)]

    def to_xarray(self, level: int = 0) -> xr.DataArray:
        """A lazy :class:`xarray.DataArray` with named dims, channel labels and physical coords.

        Examples
        --------
        >>> img.to_xarray().sel(c="actin")  # doctest: +SKIP
        """
        data = self.level(level)
        scale = self.scales[level] if level < len(self.scales) else (1.0,) * len(self.axes)
        coords: dict[str, Any] = {"c": list(self.channel_names)}
        for ax, n, s in zip(self.axes, data.shape, scale):
            if ax in ("y", "x", "z"):
                coords[ax] = np.arange(n) * float(s)
        return xr.DataArray(
            data,
            dims=self.axes,
            coords=coords,
            name=self.name,
            attrs={"url": self.url, "level": level, "ngff_version": self.ngff_version},
        )


@dataclass(frozen=True)
class Well:
    """One well of a plate: its path (``"B/3"``), row and column names, and its fields."""

    path: str
    row: str
    column: str
    images: tuple[Image, ...]
    acquisitions: dict[str, str] = field(default_factory=dict, compare=False)
    """Field path → the id (as text) of the plate acquisition it belongs to, as the well's
    metadata says."""

    @property
    def name(self) -> str:
        """Well name as users write it, e.g. ``B3``."""
        return f"{self.row}{self.column}"

    def __repr__(self) -> str:
        return f"<omeloc Well {self.name}: {len(self.images)} field(s)>"


@dataclass(frozen=True)
class Plate:
    """An opened HCS plate, or a standalone image seen as a one-image plate.

    Use :func:`open_plate` to make one.
    """

    path: str
    ngff_version: str
    zarr_format: int
    is_plate: bool
    rows: tuple[str, ...]
    columns: tuple[str, ...]
    wells: dict[str, Well]
    images: tuple[Image, ...]
    attrs: dict[str, Any] = field(repr=False, compare=False)
    storage_options: dict[str, Any] | None = field(default=None, repr=False, compare=False)

    def __repr__(self) -> str:
        kind = "plate" if self.is_plate else "image"
        wells = (
            f"{len(self.wells)} well(s) ({_short_list([w.name for w in self.wells.values()])}), "
            if self.is_plate
            else ""
        )
        return (
            f"<omeloc {kind} {self.path!r}: NGFF {self.ngff_version}, {wells}{len(self.images)} "
            f"image(s), channels {_short_list(self.channel_names)}>"
        )

    @property
    def channel_names(self) -> tuple[str, ...]:
        """Channel labels of the first image (see :func:`omeloc.writeback.protocol` for
        consistency checks)."""
        return self.images[0].channel_names

    @property
    def name(self) -> str:
        """The plate's name (``plate.name``), else the folder name."""
        meta = self.layout
        return (meta.name if meta is not None else None) or self.path.rstrip("/").rsplit("/", 1)[-1]

    @cached_property
    def layout(self) -> PlateMeta | None:
        """The plate's ``plate`` metadata as a record (``None`` for a standalone image)."""
        plate = self.ome.get("plate")
        return (
            PlateMeta.from_json(plate, self.path)
            if self.is_plate and isinstance(plate, Mapping)
            else None
        )

    @property
    def ome(self) -> dict[str, Any]:
        """The NGFF metadata of the plate root."""
        return ngff_attrs(self.attrs, self.zarr_format)

    @property
    def acquisitions(self) -> list[dict[str, Any]]:
        """The plate's acquisitions (NGFF ``plate.acquisitions``), each with ``id`` as text,
        ``name`` (when given) and ``images``: the paths of the fields that the wells assign to
        it."""
        found = []
        for acq in self.layout.acquisitions if self.layout is not None else ():
            images = [
                f"{w.path}/{f}"
                for w in self.wells.values()
                for f, a in w.acquisitions.items()
                if a == acq.id
            ]
            found.append({"id": acq.id, "name": acq.name, "images": images})
        return found

    def acquisition_images(self, acquisition: str | int) -> list[Image]:
        """The fields of one acquisition (its ``id``, or its ``name`` when no id matches).

        Raises
        ------
        InputError
            The plate has no such acquisition, or none at all.
        """
        known = self.acquisitions
        wanted = str(acquisition)
        match = [a for a in known if a["id"] == wanted] or [a for a in known if a["name"] == wanted]
        if not match:
            shown = (
                ", ".join(a["id"] + (f" ({a['name']})" if a["name"] else "") for a in known)
                or "none"
            )
            raise InputError(
                f"Plate {self.path} has no acquisition {wanted!r} (acquisitions: {shown}). "
                f"Choose one that `omeloc info {self.path}` lists, or leave out --acquisition."
            )
        paths = set(match[0]["images"])
        return [img for img in self.images if img.path in paths]

    def image(self, path: str) -> Image:
        """The image at ``path`` (``"B/3/0"``); a well name (``"B3"``) gives its first field."""
        for img in self.images:
            if img.path == path.strip("/"):
                return img
        for well in self.wells.values():
            if path in (well.name, well.path) and well.images:
                return well.images[0]
        raise PathNotFoundError(
            f"No image {path!r} in {self.path}. Images: "
            f"{', '.join(i.path for i in self.images[:12])}"
            + (" ..." if len(self.images) > 12 else "")
        )

    def well(self, name: str) -> Well:
        """A well by name (``"B3"``) or path (``"B/3"``)."""
        for well in self.wells.values():
            if name in (well.name, well.path):
                return well
        raise PathNotFoundError(
            f"No well {name!r} in {self.path}. Wells: "
            f"{', '.join(w.name for w in self.wells.values())}."
        )

    def to_xarray(self, level: int = 0) -> xr.DataArray:
        """All images of the plate stacked along a leading ``image`` dim, lazily.

        Coordinates ``well`` and ``field`` along ``image`` allow ``.sel`` and ``groupby``;
        ``c`` holds channel labels.  Every image must share shape and channel labels.
        """
        views = [img.to_xarray(level) for img in self.images]
        first = views[0]
        for img, view in zip(self.images, views):
            if view.shape != first.shape or tuple(view.c.values) != tuple(first.c.values):
                raise NotOmeZarrError(
                    f"Image {img.path} has shape {view.shape} and channels {list(view.c.values)}, "
                    f"unlike {self.images[0].path} ({first.shape}, {list(first.c.values)}). "
                    f"Use plate.image(path).to_xarray() per image instead."
                )
        stacked = xr.concat(
            [v.drop_vars([d for d in ("y", "x", "z") if d in v.coords]) for v in views],
            dim="image",
            coords="minimal",
            compat="override",
            join="override",
        )
        stacked = stacked.assign_coords(
            image=[img.path for img in self.images],
            well=("image", [img.well.replace("/", "") if img.well else "" for img in self.images]),
            field=("image", [img.field or "" for img in self.images]),
        )
        for d in ("y", "x", "z"):
            if d in first.coords:
                stacked = stacked.assign_coords({d: first.coords[d].values})
        stacked.name = self.name
        return stacked

    def sel(self, level: int = 0, **indexers: Any) -> xr.DataArray:
        """Shortcut for ``plate.to_xarray(level).sel(**indexers)``, e.g.
        ``plate.sel(c="actin")``."""
        names = indexers.get("c")
        for name in [names] if isinstance(names, str) else (names or []):
            if name not in self.channel_names:
                raise ChannelNotFoundError(
                    f"No channel {name!r} in {self.path}. Available channels: "
                    f"{_labels(self.channel_names)}."
                )
        return self.to_xarray(level).sel(**indexers)


def _pack_attrs(attrs: dict[str, Any]) -> Any:
    """An image's attributes kept compact (``marshal``: ~0.7 kB where the decoded JSON takes ~6 kB).

    A plate of thousands of images keeps two views of every image while it is predicted: the
    decoded attributes would be most of their memory (``benchmarks/README.md``, "Plates of
    thousands of images").  Attributes that ``marshal`` cannot hold are kept as they are.
    """
    try:
        return marshal.dumps(attrs)
    except ValueError:
        return attrs


def _unpack_attrs(packed: Any) -> dict[str, Any]:
    """What :func:`_pack_attrs` packed, as a new dict."""
    return marshal.loads(packed) if isinstance(packed, bytes) else packed


def _without_attributes(group: zarr.Group) -> zarr.Group:
    """``group`` without its attributes in memory (the Image keeps them packed); levels open from
    it as before."""
    meta = getattr(group, "metadata", None)
    if not dataclasses.is_dataclass(meta) or "attributes" not in {
        f.name for f in dataclasses.fields(meta)
    }:
        return group
    slim = dataclasses.replace(meta, attributes={})
    return zarr.Group(zarr.AsyncGroup(metadata=slim, store_path=group.store_path))


def _read_image(
    url: str,
    path: str,
    well: str | None,
    field_name: str | None,
    storage_options: Mapping[str, Any] | None,
    root: str | None = None,
    zarr_format: int | None = None,
) -> Image:
    """One image and its levels, every path its metadata names confined to ``root`` (default: the
    image)."""
    _check_inside(root or url, url, f"Image {path or url}")
    group = _open_group(url, storage_options, "Image", zarr_format)
    if root is None:  # a standalone image is its own root
        refuse_incomplete(group.attrs, url)
        _warn_journal(group.attrs, url)
    return _image_of(group, url, path, well, field_name, root)


def _image_of(
    group: zarr.Group,
    url: str,
    path: str,
    well: str | None,
    field_name: str | None,
    root: str | None,
) -> Image:
    """The Image of an opened group, with its level arrays (opened concurrently) and channel
    names."""
    img = _image_record(group, url, path, well, field_name, root)
    return _with_levels(
        img, _open_many(group, img.level_paths, arrays=True, zarr_format=img.zarr_format)
    )


def _image_record(
    group: zarr.Group,
    url: str,
    path: str,
    well: str | None,
    field_name: str | None,
    root: str | None,
) -> Image:
    """An Image from its opened group, its level paths confined to ``root``; no array is opened yet
    (:func:`_with_levels` adds them and the channel names)."""
    ome, zarr_format = group_ngff_attrs(group), group.metadata.zarr_format
    ms = Multiscale.from_json(ome, url, path or url)
    axes = axis_keys(ms.axes, url)
    level_paths = tuple(d.path for d in ms.datasets)
    for level in level_paths:
        _check_inside(root or url, join_path(url, level), f"Level {level!r} of image {path or url}")
    scales = [d.scale if d.scale is not None else (1.0,) * len(axes) for d in ms.datasets]
    version = _checked_version(
        str(ome.get("version") or ms.version or default_ngff_version(zarr_format)), path or url
    )
    return Image(
        path=path,
        url=url,
        well=well,
        field=field_name,
        axes=axes,
        channel_names=tuple(channel_labels(ome)),
        level_paths=level_paths,
        scales=tuple(scales),
        ngff_version=version,
        zarr_format=zarr_format,
        _attrs=_pack_attrs(dict(group.attrs)),
        _group=_without_attributes(group),
    )


def _group_not_array(img: Image, path: str) -> NotOmeZarrError:
    return NotOmeZarrError(
        f"{img.url}/{path} is a group, not an array. Fix multiscales[0].datasets."
    )


def _level_error(err: BaseException, img: Image, path: str) -> OmelocError:
    """The one-line error for a level array that cannot be opened."""
    if isinstance(err, (FileNotFoundError, KeyError, zarr.errors.ArrayNotFoundError)):
        with contextlib.suppress(Exception):  # a (v2) group where an array should be: say so
            if isinstance(img._group.get(path), zarr.Group):
                return _group_not_array(img, path)
        return PathNotFoundError(
            f"Image {img.url} lists level {path!r} in its multiscales metadata but has no such "
            f"array. Re-write the pyramid or fix multiscales[0].datasets."
        )
    if isinstance(err, zarr.errors.NodeTypeValidationError):
        return _group_not_array(img, path)
    if isinstance(err, ValueError):  # zarr's refusal of an inconsistent array document
        return NotOmeZarrError(
            f"Level {path!r} of image {img.url} has unreadable array metadata ({err}). "
            f"Restore its zarr.json/.zarray from a backup."
        )
    raise err


def _with_levels(img: Image, levels: Sequence[zarr.Array | BaseException]) -> Image:
    """``img`` with its level arrays (opened once, by :func:`_open_many`) and its channel names."""
    for path, arr in zip(img.level_paths, levels):
        if isinstance(arr, BaseException):
            raise _level_error(arr, img, path) from arr
        if not isinstance(arr, zarr.Array):
            raise _group_not_array(img, path)
        _check_declared_size(arr, img.axes, f"{img.url}/{path}")
        img._arrays[path] = arr
    labels = img.channel_names  # as the omero metadata gives them (see _image_record)
    # channel count comes from the array; labels missing or short get placeholder names
    n_c = img.zarr_array(0).shape[img.axes.index("c")]
    names = tuple(
        str(labels[i]) if i < len(labels) and labels[i] not in (None, "") else f"c{i}"
        for i in range(n_c)
    )
    object.__setattr__(img, "channel_names", names)
    return img


def open_image(path_or_url: str | Path, storage_options: Mapping[str, Any] | None = None) -> Image:
    """Open one OME-Zarr multiscale image lazily.

    Parameters
    ----------
    path_or_url
        Local path or fsspec URL of the image group (e.g. ``plate.zarr/B/3/0``).
    storage_options
        Passed to fsspec for URLs (credentials, endpoint, ...).

    Returns
    -------
    Image
    """
    url = str(path_or_url)
    return _read_image(url, "", None, None, storage_options)


def open_plate(
    path_or_url: str | Path,
    storage_options: Mapping[str, Any] | None = None,
    *,
    series: str | int | None = None,
    documents: DocumentCache | None = None,
) -> Plate:
    """Open an OME-Zarr HCS plate (or a single multiscale image) lazily, from its metadata.

    Parameters
    ----------
    path_or_url
        Local path or fsspec URL (``s3://``, ``gs://``, ``memory://``, ...) of the plate root,
        or of a single multiscale image, which is then seen as a one-image plate
        (``is_plate`` False, no wells).  A local zipped OME-Zarr (``plate.ozx``) opens
        read-only; a bioformats2raw wrapper opens the series it holds.
    storage_options
        Passed to fsspec for URLs.
    series
        For a bioformats2raw wrapper: which series (``"0"``, ``"1"``, ...); default the only
        one (several series and no choice is an error that lists them).
    documents
        A cache of the store's metadata documents (:class:`~omeloc.ngff.documents.DocumentCache`)
        shared with later readers and writers of the same plate (the write-back does so, under
        its lock). Without it, each open reads every document once, concurrently, and a plate
        with consolidated metadata (``.zmetadata``, or ``consolidated_metadata`` in the root's
        ``zarr.json``) is opened from that alone; with it the documents themselves are read.

    Returns
    -------
    Plate
        Wells, fields and levels as the metadata names them; pixels stay in the store until
        computed.

    Raises
    ------
    PathNotFoundError
        The path does not exist, or the metadata names a well or field that is missing.
    NotOmeZarrError
        The path is not an OME-Zarr plate or image, or its metadata is broken.

    Examples
    --------
    >>> plate = open_plate("plate.zarr")  # doctest: +SKIP
    >>> plate.sel(c="actin")               # doctest: +SKIP
    """
    url = str(path_or_url)
    # consolidated metadata (where the plate has it) answers for every node in the root's round; not
    # for the write-back (``documents``), which reads the documents themselves under its lock
    root = _open_group(
        url,
        storage_options,
        "Path",
        documents=documents if zip_location(url) is None else None,
        consolidated=documents is None,
    )
    refuse_incomplete(root.attrs, url)
    _warn_journal(root.attrs, url)
    ome, zarr_format = group_ngff_attrs(root), root.metadata.zarr_format
    if "plate" not in ome:
        return _open_not_plate(url, root, ome, storage_options, series)
    if series is not None:
        raise InputError(
            f"series={series!r} applies to bioformats2raw wrappers; {url} is a plate. Leave it out."
        )
    layout = PlateMeta.from_json(ome["plate"], url)
    rows, cols = layout.rows, layout.columns
    read = _read_wells(url, root, layout.wells, storage_options, zarr_format)
    wells = {well.path: well for well in read}
    images = tuple(img for well in read for img in well.images)
    if not images:
        raise NotOmeZarrError(f"Plate {url} lists no wells. Nothing to open.")
    logger.debug("opened plate %s: %d wells, %d images", url, len(wells), len(images))
    version = _checked_version(
        str(ome.get("version") or layout.version or default_ngff_version(zarr_format)), url
    )
    return Plate(
        path=url,
        ngff_version=version,
        zarr_format=zarr_format,
        is_plate=True,
        rows=rows,
        columns=cols,
        wells=wells,
        images=images,
        attrs=dict(root.attrs),
        storage_options=dict(storage_options) if storage_options else None,
    )


def _open_not_plate(
    url: str,
    root: zarr.Group,
    ome: Mapping[str, Any],
    storage_options: Mapping[str, Any] | None,
    series: str | int | None,
) -> Plate:
    """A single image, or the chosen series of a bioformats2raw wrapper, as a one-image (or the
    series') plate."""
    found = wrapper_series(
        ome, lambda rel: group_ngff_attrs(_open_group(join_path(url, rel), storage_options, "Path"))
    )
    if found is not None and "multiscales" not in ome:
        chosen = safe_key(
            pick_series(url, found, series),
            f"Wrapper {url} lists series",
            "Fix its OME/series list.",
        )
        return open_plate(join_path(url, chosen), storage_options)
    if series is not None:
        raise InputError(
            f"series={series!r} applies to bioformats2raw wrappers; {url} is not one. Leave it out."
        )
    if "multiscales" in ome:  # the root read once: its levels opened from it
        return image_plate(_image_of(root, url, "", None, None, None), storage_options)
    hint = (
        " (it has a 'well' key: open its plate root, or one field image inside it)"
        if "well" in ome
        else ""
    )
    raise NotOmeZarrError(
        f"{url} is a Zarr group without OME-Zarr 'plate' or 'multiscales' metadata{hint}. "
        f"Point omeloc at an OME-Zarr plate or image."
    )


def image_plate(image: Image, storage_options: Mapping[str, Any] | None = None) -> Plate:
    """A single image seen as a one-image plate rooted at the image (``is_plate`` False, no wells).

    What :func:`open_plate` returns for the image's URL; a field of a plate becomes an image
    of its own (path ``""``), so writes address it from its own root.
    """
    if image.path or image.well is not None:
        image = dataclasses.replace(image, path="", well=None, field=None)
    return Plate(
        path=image.url,
        ngff_version=image.ngff_version,
        zarr_format=image.zarr_format,
        is_plate=False,
        rows=(),
        columns=(),
        wells={},
        images=(image,),
        attrs=dict(image.attrs),
        storage_options=dict(storage_options) if storage_options else None,
    )


def _well_path(url: str, wpath: str) -> str:
    """The checked well path ``ROW/COLUMN`` that the plate at ``url`` lists (confined to the
    plate)."""
    wpath = safe_key(wpath, f"Plate {url} lists well path", "Fix the plate's metadata.")
    if len(wpath.split("/")) != 2:
        raise NotOmeZarrError(
            f"Plate {url} lists well path {wpath!r}; expected 'ROW/COLUMN'. Fix the plate metadata."
        )
    _check_inside(url, join_path(url, wpath), f"Well {wpath}")
    return wpath


def _opened(
    node: zarr.Group | BaseException, url: str, what: str, storage_options: Mapping[str, Any] | None
) -> zarr.Group:
    """The group :func:`_open_many` opened at ``url``, or the error a serial open would have
    raised."""
    if isinstance(node, BaseException):
        if not _is_url(url) and zip_location(url) is None and not Path(url).exists():
            raise PathNotFoundError(f"{what} {url} does not exist. Check the path.") from node
        node = _group_error(node, url, what, storage_options)
    if not isinstance(node, zarr.Group):
        raise NotOmeZarrError(
            f"{what} {url} is a Zarr array, not a group. Point omeloc at the plate root or an "
            "image group."
        )
    return node


def _read_wells(
    url: str,
    root: zarr.Group,
    listed: Sequence[str],
    storage_options: Mapping[str, Any] | None,
    zarr_format: int,
) -> list[Well]:
    """The wells the plate at ``url`` lists, with their fields and levels: every metadata document
    read once, in three concurrent rounds (wells, then their images, then the images' level
    arrays)."""
    paths = [_well_path(url, w) for w in listed]
    groups = _open_many(root, paths, arrays=False, zarr_format=zarr_format)
    fields: list[tuple[str, list[str], dict[str, str]]] = []
    for wpath, node in zip(paths, groups):
        try:
            wgroup = _opened(node, join_path(url, wpath), "Well", storage_options)
        except (PathNotFoundError, NotOmeZarrError) as err:
            raise PathNotFoundError(
                f"Plate {url} lists well {wpath!r} but it is missing. Restore the well or "
                f"remove it from the plate metadata."
            ) from err
        images = WellMeta.from_json(group_ngff_attrs(wgroup), wpath).images
        if not images:
            raise NotOmeZarrError(
                f"Well {join_path(url, wpath)} has no 'well.images' metadata. Fix the well "
                "metadata."
            )
        fields.append(
            (
                wpath,
                [i.path for i in images],
                {i.path: i.acquisition for i in images if i.acquisition is not None},
            )
        )
    rels = [join_path("", wpath, f) for wpath, names, _ in fields for f in names]
    for rel in rels:
        _check_inside(url, join_path(url, rel), f"Image {rel}")
    images = iter(_image_records(url, root, rels, storage_options, zarr_format))
    return [
        Well(
            path=wpath,
            row=wpath.split("/")[0],
            column=wpath.split("/")[1],
            images=tuple(next(images) for _ in names),
            acquisitions=acq,
        )
        for wpath, names, acq in fields
    ]


def _image_records(
    url: str,
    root: zarr.Group,
    rels: Sequence[str],
    storage_options: Mapping[str, Any] | None,
    zarr_format: int,
) -> list[Image]:
    """The field images at ``rels`` (``"B/3/0"``) below the plate root, opened concurrently, then
    every level array of all of them concurrently."""
    records = []
    for rel, node in zip(rels, _open_many(root, rels, arrays=False, zarr_format=zarr_format)):
        wpath, field_name = rel.rsplit("/", 1)
        iurl = join_path(url, rel)
        try:
            group = _opened(node, iurl, "Image", storage_options)
        except PathNotFoundError as err:
            raise PathNotFoundError(
                f"Well {wpath!r} lists field {field_name!r} but {iurl} is missing. Restore it "
                f"or fix the well metadata."
            ) from err
        records.append(_image_record(group, iurl, rel, wpath, field_name, url))
    levels = _open_many(
        root,
        [join_path("", img.path, lv) for img in records for lv in img.level_paths],
        arrays=True,
        zarr_format=zarr_format,
    )
    out, at = [], 0
    for img in records:
        n = len(img.level_paths)
        out.append(_with_levels(img, levels[at : at + n]))
        at += n
    return out
