"""A write-back journal found in a plate is untrusted input: check it before acting on it.

A rollback deletes chunk files and rewrites metadata documents, a finish deletes a backup:
both take their keys from the journal in the plate's root attributes.  A downloaded plate
may carry a crafted journal (``docs`` keys like ``../victim.txt``), and a hand edit may have
broken a real one.  :func:`validate_journal` therefore checks, before anything is changed:

- its **integrity digest** and **schema**, where the record is parsed
  (:meth:`omeloc.writeback.record.Journal.from_json`): the writer stores ``digest`` =
  sha256 of the canonical JSON of the journal without it, so a journal whose digest does not
  match was modified after it was written, and is refused; types, version, a hex
  ``run_id``, mode, channel index and count in range;
- its **keys**: every image and array it names exists in the plate's own structure (read
  from the plate's metadata, every path confined by :func:`omeloc.ngff.format.safe_key`),
  and ``docs`` names only metadata documents of the root, of the wells and of those images
  and arrays;
- its **documents**: each saved document describes the same node as the store's current
  one (a rollback may change attributes and the channel extent of an array, nothing else),
  and an overwrite names a virtual channel omeloc wrote.

A refused journal is never acted on: the message tells the user to inspect it and remove
the key ``omeloc_journal`` from the root attributes by hand.

The digest is not a signature (anyone can recompute it); what confines a crafted journal
to the store are the key checks, in :func:`validate_journal` and in every
:class:`~omeloc.writeback.journal.StoreIO` access.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from omeloc.errors import JournalError
from omeloc.ngff import format as fmt
from omeloc.ngff.format import join_path, safe_key
from omeloc.writeback.record import (
    JOURNAL_KEY,
    JOURNAL_VERSION,
    Journal,
    journal_digest,
    journal_doc,
    refusal,
)

if TYPE_CHECKING:  # pragma: no cover - typing only (journal.py imports this module)
    from omeloc.writeback.journal import StoreIO

__all__ = [
    "JOURNAL_VERSION",
    "image_arrays",
    "journal_digest",
    "journal_doc",
    "plate_structure",
    "validate_journal",
]

_KEY = JOURNAL_KEY
_refuse = refusal
#: top-level NGFF keys that describe a node's structure: a rollback never changes them
_STRUCTURE_KEYS = ("plate", "well", "multiscales")


# -- the whole check ----------------------------------------------------------------------
def validate_journal(io: StoreIO, journal: Any) -> Journal:
    """Check a journal read from ``io``'s root attributes before a rollback or finish acts on it.

    Parameters
    ----------
    io : StoreIO
        Raw access to the plate (or image) the journal was found in.
    journal : Any
        The value of the root attribute ``omeloc_journal``, as read (or a :class:`Journal`
        record, checked again against the store as it is now).

    Returns
    -------
    Journal
        The journal, safe to act on.

    Raises
    ------
    JournalError
        Tampered (digest), malformed, or naming keys outside the plate's structure; one line
        that tells the user to inspect the journal and remove it by hand.
    UnsafePathError
        A path in the journal or in the plate's metadata leaves the store.
    """
    where = f"The write-back journal in {io.url}"
    raw = journal.to_json() if isinstance(journal, Journal) else journal
    record = Journal.from_json(raw, zarr_format=io.zarr_format, where=where)
    wells, known = plate_structure(io)
    images = _check_images(io, record, known, where)
    _check_docs(io, record, wells, images, where)
    _check_overwrite(io, record, images, where)
    return record


def _r(value: Any) -> str:
    """``repr(value)``, cut to keep a message one short line (journal values are untrusted)."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# -- structure ----------------------------------------------------------------------------
def plate_structure(io: StoreIO) -> tuple[list[str], set[str]]:
    """Well paths and image paths, as the plate's own metadata lists them (every path confined).

    Returns
    -------
    wells : list of str
        Well paths (``"B/3"``) of the root's ``plate`` metadata; empty for a single image.
    images : set of str
        Image paths (``"B/3/0"``) of the wells' ``well.images``; ``{""}`` for a single image.

    Raises
    ------
    JournalError, UnsafePathError
        Unreadable structure, or a path that leaves the store.
    """
    _, ome = io.read_ngff("")
    if "plate" not in ome:
        if "multiscales" not in ome:
            raise JournalError(
                f"{io.url} has neither plate nor multiscales metadata. Fix its root metadata."
            )
        return [], {""}
    wells = _listed_paths(
        io, "", ("plate", "wells"), "The plate lists well path", "Fix the plate's metadata."
    )
    images = set()
    for well in wells:
        images.update(
            _listed_paths(
                io,
                well,
                ("well", "images"),
                f"Well {well!r} lists image path",
                "Fix the well's metadata.",
            )
        )
    return wells, images


def image_arrays(io: StoreIO, image: str) -> list[str]:
    """Array paths (relative to the root) that an image's ``multiscales[0].datasets`` lists."""
    return _listed_paths(
        io,
        image,
        ("multiscales", 0, "datasets"),
        f"Image {image!r} lists dataset path",
        "Fix its multiscales metadata.",
    )


def _listed_paths(
    io: StoreIO, node: str, where: tuple[str | int, ...], what: str, fix: str
) -> list[str]:
    """The ``path`` of every entry of a node's NGFF metadata at ``where``, joined to the node,
    each confined."""
    try:
        entries: Any = io.read_ngff(node)[1]
        for step in where:
            entries = entries[step]
        paths = [str(e["path"]) for e in entries]
    except (KeyError, TypeError, IndexError, ValueError) as err:
        raise JournalError(
            f"The metadata of {node or 'the root'} in {io.url} has no readable "
            f"{'.'.join(map(str, where))} ({err!r}). Fix it."
        ) from err
    return [join_path("", node, safe_key(p, what, fix)) for p in paths]


def _check_images(
    io: StoreIO, journal: Journal, known: set[str], where: str
) -> dict[str, tuple[int, list[str]]]:
    """The journal's images (path → c_axis, arrays): each one of the plate's, each array one of
    its levels."""
    images: dict[str, tuple[int, list[str]]] = {}
    for entry in journal.images:
        path = entry.path
        if path not in known:
            raise _refuse(
                where, f"names image {_r(path)}, which the plate's metadata does not list"
            )
        levels = image_arrays(io, path)
        for arr in entry.arrays:
            if arr not in levels:
                raise _refuse(
                    where, f"names array {_r(arr)}, which is not a level of image {_r(path)}"
                )
        images[path] = (entry.c_axis, list(entry.arrays))
    if not images:
        raise _refuse(where, "names no images")
    return images


# -- documents ----------------------------------------------------------------------------
def _check_docs(
    io: StoreIO,
    journal: Journal,
    wells: list[str],
    images: Mapping[str, tuple[int, list[str]]],
    where: str,
) -> None:
    """Every saved document is a metadata document of the root, a well, or a listed image or array,
    or the consolidated metadata of a group above (or of) a listed image."""
    allowed = set(io.root_docs()) | set(fmt.consolidated_doc_keys(images, io.zarr_format))
    for node in [*wells, *images, *(a for _, arrays in images.values() for a in arrays)]:
        allowed.update(io.metadata_docs(node))
    for key, text in journal.docs.items():
        if key not in allowed:
            raise _refuse(
                where,
                f"names document {_r(key)}, which is not a metadata document of the plate's root, "
                f"wells or of the images it lists (or their groups' consolidated metadata)",
            )
        _check_doc(io, key, text, where)
    for c_axis, arrays in images.values():
        for arr in arrays:
            _check_array_shape(io, journal, arr, c_axis, where)


def _json_object(raw: str | bytes | None) -> dict[str, Any] | None:
    try:
        doc = json.loads(raw) if raw is not None else None
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def _frozen(doc: Mapping[str, Any], name: str) -> Any:
    """What a rollback may not change in a document: all but attributes, consolidated metadata and
    shape; of the attributes, the NGFF structure (plate, well, multiscales)."""
    if name == ".zmetadata":
        return None
    if name == ".zattrs":
        return {k: doc.get(k) for k in _STRUCTURE_KEYS}
    out = {
        k: v for k, v in doc.items() if k not in ("attributes", "consolidated_metadata", "shape")
    }
    if name == "zarr.json":
        ome = fmt.FORMAT_V05.ngff_attrs(fmt.FORMAT_V05.attributes_in(doc))
        out["ngff structure"] = {k: ome.get(k) for k in _STRUCTURE_KEYS}
    return out


def _check_doc(io: StoreIO, key: str, text: str | None, where: str) -> None:
    """A saved document restores the same node: same structure, only attributes and shape may
    differ."""
    current_raw = io.get(key)
    if text is None:
        if current_raw is not None:
            raise _refuse(where, f"would delete document {_r(key)}, which existed before the run")
        return
    if current_raw is None:
        raise _refuse(where, f"would create document {_r(key)}, which the run never deletes")
    saved, current = _json_object(text), _json_object(current_raw)
    if saved is None:
        raise _refuse(where, f"saves document {_r(key)} as something other than a JSON object")
    name = key.rsplit("/", 1)[-1]
    if current is not None and _frozen(saved, name) != _frozen(current, name):
        raise _refuse(where, f"would change more than the attributes or channel count of {_r(key)}")
    if key == io.attrs_doc("") and _KEY in io.format.attributes_in(saved):
        raise _refuse(where, "would restore a root document that itself holds a journal")


def _check_array_shape(io: StoreIO, journal: Journal, arr: str, c_axis: int, where: str) -> None:
    """The saved shape has ``n_channels`` along ``c``; the current one differs at most by the new
    channel."""
    key = io.array_doc(arr)
    saved = _json_object(journal.docs.get(key))
    current = _json_object(io.get(key))
    if saved is None or current is None:
        raise _refuse(where, f"has no saved or current array document for {_r(arr)}")
    before, now = saved.get("shape"), current.get("shape")
    n = journal.n_channels
    if not (
        isinstance(before, list)
        and isinstance(now, list)
        and len(before) == len(now) > c_axis
        and all(_is_int(s) for s in before + now)
    ):
        raise _refuse(
            where, f"gives array {_r(arr)} a channel axis {c_axis} that its shape does not have"
        )
    if (
        before[c_axis] != n
        or before[:c_axis] + before[c_axis + 1 :] != now[:c_axis] + now[c_axis + 1 :]
    ):
        raise _refuse(
            where,
            f"says array {_r(arr)} had shape {before} with {n} channels, unlike its shape {now} "
            "now",
        )
    added = len(journal.names)
    allowed = {"append": (n, n + added), "remove": (n, n - added)}.get(journal.mode, (n,))
    if now[c_axis] not in allowed:
        raise _refuse(
            where, f"cannot explain the {now[c_axis]} channels of array {_r(arr)} (it had {n})"
        )


def _check_overwrite(io: StoreIO, journal: Journal, images: Mapping[str, Any], where: str) -> None:
    """An overwrite replaces the chunks of one channel: that channel must be omeloc's virtual
    one."""
    if journal.mode == "remove":
        _check_removed(io, journal, images, where)
    if journal.mode != "overwrite":
        return
    for j, name in enumerate(journal.names):
        _check_overwritten(io, name, journal.channel_index + j, images, where)


def _check_removed(io: StoreIO, journal: Journal, images: Mapping[str, Any], where: str) -> None:
    """A removal takes the last channels, each omeloc's virtual one (or one it already took out
    of the image)."""
    names = journal.names
    if journal.channel_index + len(names) != journal.n_channels:
        raise _refuse(where, "removes channels that are not the last ones")
    for path in images:
        attrs = io.read_attrs(path)
        ours = attrs.get("omeloc")
        channels = ours.get("channels") if isinstance(ours, Mapping) else None
        omero = fmt.ngff_attrs(attrs, io.zarr_format).get("omero")
        listed = omero.get("channels") if isinstance(omero, Mapping) else None
        taken_out = isinstance(listed, list) and len(listed) <= journal.channel_index
        for name in names:
            entry = channels.get(name) if isinstance(channels, Mapping) else None
            if entry is None and taken_out:
                # already taken out of this image by this removal (omero entry and provenance
                # together)
                continue
            if not (isinstance(entry, Mapping) and entry.get("virtual") is True):
                raise _refuse(
                    where,
                    f"removes channel {_r(name)} of image {_r(path)}, which is not a virtual "
                    f"channel omeloc wrote",
                )


def _check_overwritten(
    io: StoreIO, name: str, index: int, images: Mapping[str, Any], where: str
) -> None:
    """Channel ``index`` of every image is omeloc's virtual channel ``name``."""
    for path in images:
        ours = io.read_attrs(path).get("omeloc")
        channels = ours.get("channels") if isinstance(ours, Mapping) else None
        entry = channels.get(name) if isinstance(channels, Mapping) else None
        if not (
            isinstance(entry, Mapping)
            and entry.get("virtual") is True
            and entry.get("index", index) == index
        ):
            raise _refuse(
                where,
                f"overwrites channel {index} of image {_r(path)}, which is not the virtual channel "
                f"{_r(name)} omeloc wrote",
            )
