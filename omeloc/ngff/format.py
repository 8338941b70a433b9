"""The one home of the differences between NGFF 0.4 (on Zarr v2) and NGFF 0.5 (on Zarr v3).

Everything else in omeloc asks this module instead of branching on ``zarr_format``.  The
differences are owned by a store-format object, :class:`StoreFormat`, one per format
(:data:`FORMAT_V04`, :data:`FORMAT_V05`, as ome-zarr-py's ``FormatV04`` / ``FormatV05``):
``store_format(zarr_format)`` gives it, and no other code compares ``zarr_format`` with 2 or
3.  The module-level functions below take a ``zarr_format`` and ask that object (shorthands
for code that holds only the number):

- **Where the NGFF metadata lives.**  NGFF 0.5 keeps ``plate``, ``well``, ``multiscales``,
  ``omero``, ``version`` under the ``ome`` key of a group's attributes; NGFF 0.4 keeps the
  same keys at the top level of the attributes.  :func:`ngff_attrs` reads them,
  :func:`ngff_updates` is its inverse (the attribute updates that store changed keys),
  :func:`set_ome_attr` does both on an open group.
- **Which documents hold metadata.**  Zarr v3 has one ``zarr.json`` per node (attributes
  under its ``attributes`` key, consolidated metadata inside the root's); Zarr v2 has
  ``.zattrs``, ``.zarray`` / ``.zgroup`` and, when consolidated, ``.zmetadata`` at the root.
  The write-back journal reads and writes these documents as raw JSON through
  :func:`attrs_doc_name`, :func:`array_doc_name`, :func:`metadata_doc_names`,
  :func:`attributes_in`, :func:`attributes_to_edit`, :func:`is_consolidated` and
  :func:`chunk_coords`.
- **Consolidated metadata below the root.**  ngff-zarr consolidates every image group (v2
  ``.zmetadata`` there, v3 ``consolidated_metadata`` in its ``zarr.json``); after a write
  every such document that covers a changed node is refreshed entry by entry
  (:func:`consolidated_doc_keys`, :func:`refresh_consolidated`).
- **The default NGFF version** of a Zarr format (:func:`default_ngff_version`).
- **Paths**: the one helper that joins store keys, paths and URLs (:func:`join_path`), and
  the one check that a key read from a plate or a journal stays inside its store
  (:func:`safe_key`, :func:`inside_root`; DESIGN invariant 7).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from omeloc.errors import UnsafePathError

__all__ = [
    "FORMAT_V04",
    "FORMAT_V05",
    "METADATA_DOC_NAMES",
    "StoreFormat",
    "array_doc_name",
    "attributes_in",
    "attributes_to_edit",
    "attrs_doc_name",
    "chunk_coords",
    "consolidated_doc_keys",
    "consolidated_doc_name",
    "default_ngff_version",
    "group_ngff_attrs",
    "inside_root",
    "is_consolidated",
    "join_path",
    "metadata_doc_names",
    "new_group_doc",
    "ngff_attrs",
    "ngff_updates",
    "parent_ngff_attrs",
    "refresh_consolidated",
    "reserved_attr_keys",
    "safe_key",
    "set_ome_attr",
    "storage_block",
    "store_format",
]

#: Every file name that holds Zarr metadata (v2 and v3); never a chunk.
METADATA_DOC_NAMES = frozenset({"zarr.json", ".zattrs", ".zarray", ".zgroup", ".zmetadata"})


# -- the store-format object ----------------------------------------------------------------
@dataclass(frozen=True)
class StoreFormat:
    """What differs between NGFF 0.4 on Zarr v2 and NGFF 0.5 on Zarr v3 (base of the two formats).

    Attributes
    ----------
    zarr_format : int
        2 or 3.
    ngff_version : str
        The NGFF version a group of this format has when its metadata names none.
    attrs_doc : str
        Name of the document holding a node's attributes.
    array_doc : str
        Name of the document describing an array.
    metadata_docs : tuple of str
        Every metadata document a node may have (consolidated metadata aside).
    consolidated_doc : str or None
        The separate consolidated-metadata document of a group (``None``: inside its
        attributes document).
    """

    zarr_format: int
    ngff_version: str
    attrs_doc: str
    array_doc: str
    metadata_docs: tuple[str, ...]
    consolidated_doc: str | None
    #: top-level attribute keys that belong to NGFF (extra attributes may not use them)
    reserved_attr_keys: ClassVar[frozenset[str]] = frozenset({"ome"})

    # -- NGFF keys within the attributes --------------------------------------------------
    def ngff_attrs(self, attrs: Mapping[str, Any]) -> dict[str, Any]:
        """The NGFF metadata held in a group's attributes (a new dict)."""
        raise NotImplementedError

    def ngff_updates(self, attrs: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
        """The top-level attribute updates that set NGFF keys ``changes``."""
        raise NotImplementedError

    # -- raw documents --------------------------------------------------------------------
    def new_group_doc(self) -> dict[str, Any]:
        """The attributes document of a group that has none yet."""
        raise NotImplementedError

    def attributes_in(self, doc: Mapping[str, Any]) -> dict[str, Any]:
        """The attributes held in a raw attributes document (a new dict)."""
        raise NotImplementedError

    def attributes_to_edit(self, doc: dict[str, Any]) -> dict[str, Any]:
        """The attributes of a raw attributes document, as the live dict to change in place."""
        raise NotImplementedError

    def is_consolidated(self, root_docs: Mapping[str, str | None]) -> bool:
        """Whether a store's metadata is consolidated, from the raw texts of its root documents."""
        if self.consolidated_doc is not None:
            return root_docs.get(self.consolidated_doc) is not None
        root = root_docs.get(self.attrs_doc)
        return bool(root and json.loads(root).get("consolidated_metadata"))

    def consolidating_doc(self) -> str:
        """Name of the document of a group that may hold its consolidated metadata."""
        return self.consolidated_doc or self.attrs_doc

    def refresh_consolidated(
        self, doc: Mapping[str, Any], read: Callable[[str], Mapping[str, Any] | None]
    ) -> dict[str, Any] | None:
        """``doc`` with every consolidated entry re-read (see :func:`refresh_consolidated`)."""
        raise NotImplementedError

    # -- arrays ---------------------------------------------------------------------------
    def chunk_separator(self, array_doc: Mapping[str, Any]) -> tuple[str, str | None]:
        """The separator of an array's chunk keys, and the prefix they start with (if any)."""
        raise NotImplementedError

    def storage_block(self, array_doc: Mapping[str, Any]) -> tuple[int, ...]:
        """Shape of an array's storage unit (one key: the shard when sharded, else the chunk)."""
        raise NotImplementedError

    def create_array_kwargs(self, axes: Sequence[str], separator: str = "/") -> dict[str, Any]:
        """Keyword arguments of ``zarr.Group.create_array`` for a new NGFF image level."""
        raise NotImplementedError

    def copy_array_kwargs(self, node: Any, shards: Sequence[int] | None) -> dict[str, Any]:
        """Keyword arguments of ``create_array`` that copy the encoding of array ``node``."""
        raise NotImplementedError


@dataclass(frozen=True)
class _FormatV04(StoreFormat):
    """NGFF 0.4 on Zarr v2: NGFF keys at the top of ``.zattrs``; ``.zmetadata`` at the root."""

    reserved_attr_keys: ClassVar[frozenset[str]] = frozenset(
        {"ome", "plate", "well", "multiscales", "omero"}
    )

    def ngff_attrs(self, attrs: Mapping[str, Any]) -> dict[str, Any]:
        return dict(attrs)

    def ngff_updates(self, attrs: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
        return dict(changes)

    def new_group_doc(self) -> dict[str, Any]:
        return {}

    def attributes_in(self, doc: Mapping[str, Any]) -> dict[str, Any]:
        return dict(doc)

    def attributes_to_edit(self, doc: dict[str, Any]) -> dict[str, Any]:
        return doc

    def refresh_consolidated(
        self, doc: Mapping[str, Any], read: Callable[[str], Mapping[str, Any] | None]
    ) -> dict[str, Any] | None:
        entries = doc.get("metadata")
        if not isinstance(entries, Mapping):
            return None
        fresh = {key: read(key) for key in entries}
        return {**doc, "metadata": {k: dict(v) for k, v in fresh.items() if v is not None}}

    def chunk_separator(self, array_doc: Mapping[str, Any]) -> tuple[str, str | None]:
        return array_doc.get("dimension_separator") or ".", None

    def storage_block(self, array_doc: Mapping[str, Any]) -> tuple[int, ...]:
        return tuple(int(n) for n in array_doc["chunks"])

    def create_array_kwargs(self, axes: Sequence[str], separator: str = "/") -> dict[str, Any]:
        return {"chunk_key_encoding": {"name": "v2", "separator": separator}}

    def copy_array_kwargs(self, node: Any, shards: Sequence[int] | None) -> dict[str, Any]:
        return self.create_array_kwargs((), node.metadata.dimension_separator or ".")


@dataclass(frozen=True)
class _FormatV05(StoreFormat):
    """NGFF 0.5 on Zarr v3: NGFF keys under ``attributes.ome`` of ``zarr.json``, consolidated
    inside."""

    def ngff_attrs(self, attrs: Mapping[str, Any]) -> dict[str, Any]:
        ome = attrs.get("ome")
        return dict(ome) if isinstance(ome, Mapping) else {}

    def ngff_updates(self, attrs: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
        ome = self.ngff_attrs(attrs)
        ome.update(changes)
        return {"ome": ome}

    def new_group_doc(self) -> dict[str, Any]:
        return {"zarr_format": 3, "node_type": "group"}

    def attributes_in(self, doc: Mapping[str, Any]) -> dict[str, Any]:
        return dict(doc.get("attributes") or {})

    def attributes_to_edit(self, doc: dict[str, Any]) -> dict[str, Any]:
        return doc.setdefault("attributes", {})

    def refresh_consolidated(
        self, doc: Mapping[str, Any], read: Callable[[str], Mapping[str, Any] | None]
    ) -> dict[str, Any] | None:
        consolidated = doc.get("consolidated_metadata")
        if not isinstance(consolidated, Mapping) or not isinstance(
            consolidated.get("metadata"), Mapping
        ):
            return None
        refreshed: dict[str, Any] = {}
        for rel, old in consolidated["metadata"].items():
            current = read(join_path("", rel, self.attrs_doc))
            if current is None:
                continue
            entry = {k: v for k, v in current.items() if k != "consolidated_metadata"}
            if isinstance(old, Mapping) and "consolidated_metadata" in old:
                entry["consolidated_metadata"] = current.get(
                    "consolidated_metadata", old["consolidated_metadata"]
                )
            refreshed[rel] = entry
        return {**doc, "consolidated_metadata": {**consolidated, "metadata": refreshed}}

    def chunk_separator(self, array_doc: Mapping[str, Any]) -> tuple[str, str | None]:
        enc = array_doc.get("chunk_key_encoding") or {"name": "default"}
        default = enc.get("name") == "default"
        sep = (enc.get("configuration") or {}).get("separator", "/" if default else ".")
        return sep, "c" if default else None

    def storage_block(self, array_doc: Mapping[str, Any]) -> tuple[int, ...]:
        return tuple(int(n) for n in array_doc["chunk_grid"]["configuration"]["chunk_shape"])

    def create_array_kwargs(self, axes: Sequence[str], separator: str = "/") -> dict[str, Any]:
        return {"dimension_names": list(axes)}  # required by NGFF 0.5

    def copy_array_kwargs(self, node: Any, shards: Sequence[int] | None) -> dict[str, Any]:
        return {
            "dimension_names": node.metadata.dimension_names,
            "chunk_key_encoding": node.metadata.chunk_key_encoding,
            "serializer": node.serializer,
            "shards": tuple(shards) if shards else None,
        }


#: NGFF 0.4 on Zarr v2
FORMAT_V04: StoreFormat = _FormatV04(
    zarr_format=2,
    ngff_version="0.4",
    attrs_doc=".zattrs",
    array_doc=".zarray",
    metadata_docs=(".zattrs", ".zarray", ".zgroup"),
    consolidated_doc=".zmetadata",
)
#: NGFF 0.5 on Zarr v3
FORMAT_V05: StoreFormat = _FormatV05(
    zarr_format=3,
    ngff_version="0.5",
    attrs_doc="zarr.json",
    array_doc="zarr.json",
    metadata_docs=("zarr.json",),
    consolidated_doc=None,
)
_FORMATS = {2: FORMAT_V04, 3: FORMAT_V05}


def store_format(zarr_format: int) -> StoreFormat:
    """The store-format object of ``zarr_format`` (2: NGFF 0.4, 3: NGFF 0.5).

    Examples
    --------
    >>> store_format(3).attrs_doc, store_format(2).ngff_version
    ('zarr.json', '0.4')
    """
    try:
        return _FORMATS[zarr_format]
    except (KeyError, TypeError):
        raise ValueError(f"Expected Zarr format 2 or 3. Got {zarr_format!r} instead.") from None


def _fmt(zarr_format: int) -> StoreFormat:
    """The format object of a ``zarr_format`` that code outside this module holds (v2 unless 3)."""
    return FORMAT_V05 if zarr_format == 3 else FORMAT_V04


def _array_format(array_doc: Mapping[str, Any]) -> StoreFormat:
    """The format of a raw array document (a ``.zarray`` names ``zarr_format`` 2, a ``zarr.json``
    3)."""
    return FORMAT_V05 if array_doc.get("zarr_format") == 3 else FORMAT_V04


# -- NGFF attributes ----------------------------------------------------------------------
def default_ngff_version(zarr_format: int) -> str:
    """The NGFF version a group of ``zarr_format`` has when its metadata names none.

    Parameters
    ----------
    zarr_format : int
        2 or 3.

    Returns
    -------
    str
        ``"0.5"`` for Zarr v3, ``"0.4"`` for Zarr v2.
    """
    return _fmt(zarr_format).ngff_version


def ngff_attrs(attrs: Mapping[str, Any], zarr_format: int) -> dict[str, Any]:
    """The NGFF metadata held in a group's attributes (a new dict).

    Parameters
    ----------
    attrs : Mapping
        All attributes of the group, as stored.
    zarr_format : int
        The group's Zarr format.

    Returns
    -------
    dict
        ``attrs["ome"]`` on Zarr v3 (empty when missing or not a mapping); on Zarr v2 the
        attributes themselves.

    Examples
    --------
    >>> ngff_attrs({"ome": {"version": "0.5"}, "other": 1}, 3)
    {'version': '0.5'}
    >>> ngff_attrs({"omero": {}, "other": 1}, 2)
    {'omero': {}, 'other': 1}
    """
    return _fmt(zarr_format).ngff_attrs(attrs)


def ngff_updates(
    attrs: Mapping[str, Any], zarr_format: int, changes: Mapping[str, Any]
) -> dict[str, Any]:
    """The top-level attribute updates that set NGFF keys ``changes`` (the inverse of
    :func:`ngff_attrs`).

    Parameters
    ----------
    attrs : Mapping
        The group's current attributes (on Zarr v3 the other ``ome`` keys are kept).
    zarr_format : int
        The group's Zarr format.
    changes : Mapping
        NGFF keys and their new values, e.g. ``{"omero": {...}}``.

    Returns
    -------
    dict
        ``{"ome": {...current ome..., **changes}}`` on Zarr v3, ``dict(changes)`` on Zarr v2:
        merge it into the attributes.

    Examples
    --------
    >>> ngff_updates({"ome": {"version": "0.5"}}, 3, {"omero": {}})
    {'ome': {'version': '0.5', 'omero': {}}}
    >>> ngff_updates({"multiscales": []}, 2, {"omero": {}})
    {'omero': {}}
    """
    return _fmt(zarr_format).ngff_updates(attrs, changes)


def group_ngff_attrs(group: Any) -> dict[str, Any]:
    """The NGFF metadata of an open ``zarr.Group`` (see :func:`ngff_attrs`)."""
    return ngff_attrs(dict(group.attrs), group.metadata.zarr_format)


def set_ome_attr(group: Any, key: str, value: Any, zarr_format: int | None = None) -> None:
    """Set ``key`` in the NGFF metadata of an open, writable ``zarr.Group``.

    Parameters
    ----------
    group : zarr.Group
        The group to change.
    key : str
        An NGFF key (``"omero"``, ``"multiscales"``, ...).
    value
        Its JSON value.
    zarr_format : int, optional
        The group's Zarr format (read from the group when omitted).
    """
    zarr_format = group.metadata.zarr_format if zarr_format is None else zarr_format
    for name, new in ngff_updates(dict(group.attrs), zarr_format, {key: value}).items():
        group.attrs[name] = new


def parent_ngff_attrs(url: str, storage_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The NGFF metadata of the group that contains ``url``; empty when there is no readable one.

    Used to notice that a single image is one field of a plate's well.
    """
    import zarr

    parent = url.rstrip("/").rsplit("/", 1)[0]
    try:
        group = zarr.open_group(
            parent,
            mode="r",
            use_consolidated=False,
            **({"storage_options": dict(storage_options)} if storage_options else {}),
        )
    except Exception:  # noqa: BLE001 - no readable parent group: not inside a plate
        return {}
    return group_ngff_attrs(group)


def reserved_attr_keys(zarr_format: int) -> frozenset[str]:
    """Top-level attribute keys that belong to NGFF (extra attributes may not use them).

    ``"ome"`` always; on Zarr v2 (NGFF 0.4) also ``plate``, ``well``, ``multiscales``, ``omero``.
    """
    return _fmt(zarr_format).reserved_attr_keys


# -- raw metadata documents -------------------------------------------------------------
def attrs_doc_name(zarr_format: int) -> str:
    """Name of the document holding a node's attributes: ``zarr.json`` (v3) or ``.zattrs`` (v2)."""
    return _fmt(zarr_format).attrs_doc


def array_doc_name(zarr_format: int) -> str:
    """Name of the document describing an array: ``zarr.json`` (v3) or ``.zarray`` (v2)."""
    return _fmt(zarr_format).array_doc


def metadata_doc_names(zarr_format: int) -> tuple[str, ...]:
    """Every metadata document a node of ``zarr_format`` may have (consolidated metadata aside).

    ``("zarr.json",)`` on Zarr v3; ``(".zattrs", ".zarray", ".zgroup")`` on Zarr v2.
    """
    return _fmt(zarr_format).metadata_docs


def consolidated_doc_name(zarr_format: int) -> str | None:
    """The separate consolidated-metadata document at the root: ``.zmetadata`` on Zarr v2.

    ``None`` on Zarr v3, whose consolidated metadata lives inside the root ``zarr.json``.
    """
    return _fmt(zarr_format).consolidated_doc


def new_group_doc(zarr_format: int) -> dict[str, Any]:
    """The attributes document of a group that has none yet."""
    return _fmt(zarr_format).new_group_doc()


def attributes_in(doc: Mapping[str, Any], zarr_format: int) -> dict[str, Any]:
    """The attributes held in a raw attributes document (a new dict).

    ``doc["attributes"]`` of a ``zarr.json``; a ``.zattrs`` document is the attributes.
    """
    return _fmt(zarr_format).attributes_in(doc)


def attributes_to_edit(doc: dict[str, Any], zarr_format: int) -> dict[str, Any]:
    """The attributes of a raw attributes document, as the live dict to change in place."""
    return _fmt(zarr_format).attributes_to_edit(doc)


def is_consolidated(root_docs: Mapping[str, str | None], zarr_format: int) -> bool:
    """Whether a store's metadata is consolidated, from the raw texts of its root documents.

    Parameters
    ----------
    root_docs : Mapping
        Document name → raw JSON text (``None`` when absent), for the root's documents
        (:func:`metadata_doc_names` and :func:`consolidated_doc_name`).
    zarr_format : int
        The store's Zarr format.
    """
    return _fmt(zarr_format).is_consolidated(root_docs)


def consolidated_doc_keys(node_paths: Iterable[str], zarr_format: int) -> list[str]:
    """Keys of every document that may hold consolidated metadata covering one of ``node_paths``.

    A node is covered by the consolidated metadata of each group above it, itself included
    (a group's own consolidated metadata lists its descendants).  Refresh them deepest first,
    so a refreshed group's document is what its parent's entry copies.

    Parameters
    ----------
    node_paths : iterable of str
        Keys of the changed nodes (groups or arrays) relative to the store root (``"B/3/0/0"``).
    zarr_format : int
        The store's Zarr format.

    Returns
    -------
    list of str
        ``"<group>/.zmetadata"`` (Zarr v2) or ``"<group>/zarr.json"`` (Zarr v3) for every
        ancestor-or-self group, the root's included, deepest first.  Some may not exist, or
        hold no consolidated metadata: :func:`refresh_consolidated` says so.

    Examples
    --------
    >>> consolidated_doc_keys(["B/3/0/0"], 3)
    ['B/3/0/0/zarr.json', 'B/3/0/zarr.json', 'B/3/zarr.json', 'B/zarr.json', 'zarr.json']
    """
    name = _fmt(zarr_format).consolidating_doc()
    groups: set[str] = set()
    for path in node_paths:
        parts = [p for p in str(path).split("/") if p]
        groups.update("/".join(parts[:n]) for n in range(len(parts) + 1))
    return [
        join_path("", g, name) for g in sorted(groups, key=lambda g: (-g.count("/") - bool(g), g))
    ]


def refresh_consolidated(
    doc: Mapping[str, Any] | None, zarr_format: int, read: Callable[[str], Mapping[str, Any] | None]
) -> dict[str, Any] | None:
    """``doc`` with every consolidated entry re-read from the current documents (``None``: nothing
    to refresh).

    Parameters
    ----------
    doc : Mapping or None
        A raw ``.zmetadata`` (Zarr v2) or group ``zarr.json`` (Zarr v3) document.
    zarr_format : int
        The store's Zarr format.
    read : callable
        ``read(key)`` returns the current raw JSON of a document, ``key`` relative to the
        group that ``doc`` consolidates (``"0/.zarray"``, ``"scale0/image/zarr.json"``), or
        ``None`` when it is absent.

    Returns
    -------
    dict or None
        The refreshed document, entries in their old order and form (an entry whose document
        is gone is dropped; nested ``consolidated_metadata`` is kept only where it was); ``None``
        when ``doc`` is absent or holds no consolidated metadata.
    """
    if not doc:
        return None
    return _fmt(zarr_format).refresh_consolidated(doc, read)


def chunk_coords(rel_key: str, array_doc: Mapping[str, Any]) -> tuple[int, ...] | None:
    """Chunk (or shard) grid coordinates of a store key relative to its array.

    Parameters
    ----------
    rel_key : str
        The key below the array (``"c/0/1/2"`` on v3 with the default encoding, ``"0.1.2"``
        or ``"0/1/2"`` on v2).
    array_doc : Mapping
        The array's raw metadata document (``zarr.json`` or ``.zarray``).

    Returns
    -------
    tuple of int or None
        ``None`` when the key is not a chunk (a metadata document, a ``*.partial`` file, ...).

    Examples
    --------
    >>> chunk_coords("c/0/3/1", {"zarr_format": 3})
    (0, 3, 1)
    >>> chunk_coords("0.3.1", {"zarr_format": 2}), chunk_coords(".zarray", {"zarr_format": 2})
    ((0, 3, 1), None)
    """
    name = rel_key.rsplit("/", 1)[-1]
    if name in METADATA_DOC_NAMES or rel_key.endswith(".partial"):
        return None
    sep, prefix = _array_format(array_doc).chunk_separator(array_doc)
    if prefix is not None:
        if not rel_key.startswith(prefix):
            return None
        rel_key = rel_key[len(prefix) :].lstrip(sep)
    try:
        return tuple(int(p) for p in rel_key.split(sep))
    except ValueError:
        return None


def storage_block(array_doc: Mapping[str, Any]) -> tuple[int, ...]:
    """Shape of an array's storage unit (one key: the shard when sharded, else the chunk)."""
    return _array_format(array_doc).storage_block(array_doc)


# -- paths --------------------------------------------------------------------------------
def join_path(base: str, *parts: str) -> str:
    """Join a path, URL or store key with relative parts, one ``/`` between each.

    ``base`` keeps its beginning (``/abs``, ``s3://bucket``) and loses trailing slashes;
    ``parts`` lose leading and trailing slashes and are skipped when empty.  With an empty
    ``base`` the result is a relative key.

    Examples
    --------
    >>> join_path("s3://lab/plate.zarr/", "B/3", "0")
    's3://lab/plate.zarr/B/3/0'
    >>> join_path("", "", "B/3/0", "zarr.json")
    'B/3/0/zarr.json'
    """
    tail = "/".join(p.strip("/") for p in parts if p and p.strip("/"))
    if not base:
        return tail
    return base.rstrip("/") + ("/" + tail if tail else "")


_DRIVE = re.compile(r"^[A-Za-z]:")


def safe_key(
    rel: str, what: str = "Refused the key", fix: str = "Fix the metadata or journal that names it."
) -> str:
    """``rel`` as a normalised store key that cannot leave its store, else an
    :class:`UnsafePathError`.

    A plate and a journal are untrusted input (DESIGN invariant 7): every key or path read
    from them passes here before it is joined to a store root.  A trailing ``/`` is dropped;
    ``""`` (the root itself) is allowed.

    Parameters
    ----------
    rel : str
        A key relative to a group (``"B/3/0/zarr.json"``).
    what, fix : str
        The message's beginning (``"Well 'A/1' lists image path"``) and end (how to fix it).

    Returns
    -------
    str
        The key, without a trailing slash.

    Raises
    ------
    UnsafePathError
        Not a string; absolute; a drive letter; a backslash, NUL or other control character;
        an empty, ``.`` or ``..`` segment.

    Examples
    --------
    >>> safe_key("B/3/0/")
    'B/3/0'
    >>> safe_key("../victim.txt")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    omeloc.errors.UnsafePathError: Refused the key '../victim.txt', which has a '..' segment: ...
    """
    key = rel[:-1] if isinstance(rel, str) and rel.endswith("/") and rel != "/" else rel
    problem = _key_problem(key) if isinstance(key, str) else "is not a string"
    if problem:
        raise UnsafePathError(
            f"{what} {rel!r}, which {problem}: omeloc follows only relative paths that stay inside "
            f"the store. {fix}"
        )
    return key


def _key_problem(key: str) -> str | None:
    """Why ``key`` is not a safe relative key (``None`` when it is)."""
    if key == "":
        return None
    if key.startswith("/"):
        return "is an absolute path"
    if _DRIVE.match(key):
        return "starts with a drive letter"
    if "\\" in key:
        return "has a backslash"
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in key):
        return "has a NUL or control character"
    for seg in key.split("/"):
        if seg in ("", ".", ".."):
            return f"has {'an empty' if not seg else 'a ' + repr(seg)} segment"
    return None


def inside_root(root: str | os.PathLike[str], path: str | os.PathLike[str]) -> bool:
    """Whether local ``path``, with every symbolic link resolved, lies inside ``root`` (also
    resolved).

    Examples
    --------
    >>> inside_root("/tmp", "/tmp/a/b"), inside_root("/tmp/a", "/tmp/b")
    (True, False)
    """
    root_s, path_s = os.fspath(root).rstrip(os.sep), os.fspath(path)
    if root_s and path_s.startswith(root_s + os.sep):
        # below the root by name: inside unless a link below the root leads away (one lstat per
        # part, where realpath would resolve every part of both paths: ~7 ms per image on plates of
        # 32² fields)
        parts = path_s[len(root_s) + 1 :].split(os.sep)
        if ".." not in parts:
            here = root_s
            for part in parts:
                if part in ("", "."):
                    continue
                here = here + os.sep + part
                if os.path.islink(here):
                    break
            else:
                return True
    real_root = os.path.realpath(root)
    real = os.path.realpath(path)
    return real == real_root or real.startswith(real_root.rstrip(os.sep) + os.sep)
