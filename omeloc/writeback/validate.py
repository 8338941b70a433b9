"""A write-back journal found in a plate is untrusted input: check it before acting on it.

A rollback deletes chunk files and rewrites metadata documents, a finish deletes a backup:
both take their keys from the journal in the plate's root attributes.  A downloaded plate
may carry a crafted journal (``docs`` keys like ``../victim.txt``), and a hand edit may have
broken a real one.  :func:`validate_journal` therefore checks, before anything is changed:

- its **integrity digest**: the writer stores ``digest`` = sha256 of the canonical JSON of
  the journal without it (:func:`journal_doc`, called on every write of the journal); a
  journal whose digest does not match was modified after it was written, and is refused;
- its **schema**: types, version, a hex ``run_id``, mode, channel index and count in range;
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

import hashlib
import json
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from omeloc.errors import JournalError, UnsafePathError
from omeloc.ngff import format as fmt
from omeloc.ngff.format import join_path, safe_key
from omeloc.ngff.plate import MAX_CHANNELS

if TYPE_CHECKING:  # pragma: no cover - typing only (journal.py imports this module)
    from omeloc.writeback.journal import StoreIO

__all__ = [
    "JOURNAL_VERSION", "image_arrays", "journal_digest", "journal_doc", "plate_structure",
    "validate_journal",
]

JOURNAL_VERSION = 1
_KEY = "omeloc_journal"  # journal.JOURNAL_KEY (journal.py imports this module, not the other way round)
_RUN_ID = re.compile(r"[0-9a-f]{8,64}")
_MODES = ("append", "overwrite", "remove")  # remove: omeloc.writeback.remove, always finished (rolled forward)
#: top-level NGFF keys that describe a node's structure: a rollback never changes them
_STRUCTURE_KEYS = ("plate", "well", "multiscales")


# -- the digest ---------------------------------------------------------------------------
def journal_digest(journal: Mapping[str, Any]) -> str:
    """sha256 (hex) of the canonical JSON of ``journal`` without its ``digest`` key.

    Examples
    --------
    >>> journal_digest({"b": 1, "a": [1.5, None]}) == journal_digest({"a": [1.5, None], "b": 1, "digest": "x"})
    True
    """
    body = {k: v for k, v in journal.items() if k != "digest"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def journal_doc(journal: dict[str, Any]) -> dict[str, Any]:
    """Seal ``journal`` for writing: set its ``digest`` (in place, so the caller's copy matches) and return it.

    Every write of the journal goes through here (:meth:`StoreIO.update_attrs` calls it for
    the journal key), so the digest is recomputed whenever a phase or heartbeat changes.
    """
    journal["digest"] = journal_digest(journal)
    return journal


# -- the whole check ----------------------------------------------------------------------
def validate_journal(io: StoreIO, journal: Any) -> dict[str, Any]:
    """Check a journal read from ``io``'s root attributes before a rollback or finish acts on it.

    Parameters
    ----------
    io : StoreIO
        Raw access to the plate (or image) the journal was found in.
    journal : Any
        The value of the root attribute ``omeloc_journal``, as read.

    Returns
    -------
    dict
        A copy of the journal, safe to act on.

    Raises
    ------
    JournalError
        Tampered (digest), malformed, or naming keys outside the plate's structure; one line
        that tells the user to inspect the journal and remove it by hand.
    UnsafePathError
        A path in the journal or in the plate's metadata leaves the store.
    """
    where = f"The write-back journal in {io.url}"
    _check_schema(journal, io.zarr_format, where)
    wells, known = plate_structure(io)
    images = _check_images(io, journal, known, where)
    _check_docs(io, journal, wells, images, where)
    _check_overwrite(io, journal, images, where)
    return dict(journal)


def _refuse(where: str, problem: str) -> JournalError:
    return JournalError(
        f"{where} {problem}; it was not acted on. Inspect it, then remove the key {_KEY} from the root "
        f"attributes by hand (the plate may hold an interrupted write: check it with omeloc info)."
    )


def _check_digest(journal: Mapping[str, Any], where: str) -> None:
    digest = journal.get("digest")
    if not isinstance(digest, str):
        raise _refuse(where, "has no integrity digest (it was written by hand or by an older omeloc)")
    if digest != journal_digest(journal):
        raise _refuse(where, "was modified after it was written (its digest does not match)")


# -- schema -------------------------------------------------------------------------------
def _r(value: Any) -> str:
    """``repr(value)``, cut to keep a message one short line (journal values are untrusted)."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_schema(journal: Any, zarr_format: int, where: str) -> None:
    """A JSON object, sealed by its writer, with the types and ranges of every field a rollback reads."""
    if not isinstance(journal, Mapping):
        raise _refuse(where, f"is a {type(journal).__name__}, not a JSON object")
    _check_digest(journal, where)
    problems = _field_problems(journal, zarr_format)
    if problems:
        raise _refuse(where, f"is malformed ({'; '.join(problems[:3])})")


def _field_problems(j: Mapping[str, Any], zarr_format: int) -> list[str]:
    p = []
    if j.get("version") != JOURNAL_VERSION:
        p.append(f"version {_r(j.get('version'))}, expected {JOURNAL_VERSION}")
    if not (isinstance(j.get("run_id"), str) and _RUN_ID.fullmatch(j["run_id"])):
        p.append(f"run_id {_r(j.get('run_id'))} is not a hex token")
    if j.get("mode") not in _MODES:
        p.append(f"mode {_r(j.get('mode'))} is not one of {', '.join(_MODES)}")
    if j.get("zarr_format") != zarr_format:
        p.append(f"zarr_format {_r(j.get('zarr_format'))} is not the store's {zarr_format}")
    for name, kind in (("name", str), ("phase", str), ("docs", Mapping), ("images", list)):
        if not isinstance(j.get(name), kind):
            p.append(f"{name} is missing or not a {kind.__name__}")
    n, k = j.get("n_channels"), j.get("channel_index")
    names = j.get("names", [j.get("name")])
    if not (isinstance(names, list) and 1 <= len(names) <= 16 and all(isinstance(x, str) for x in names)
            and names[0] == j.get("name")):
        p.append(f"names {_r(names)} is not a list of 1 to 16 names starting with name")
        names = [j.get("name")]
    if not (_is_int(n) and 1 <= n <= MAX_CHANNELS):
        p.append(f"n_channels {_r(n)} is not between 1 and {MAX_CHANNELS}")
    elif not (_is_int(k) and (k == n if j.get("mode") == "append" else 0 <= k and k + len(names) <= n)):
        p.append(f"channel_index {_r(k)} does not fit n_channels {n} in mode {_r(j.get('mode'))}")
    for name in ("consolidated", "chunks_restored", "shared"):
        if name in j and not isinstance(j[name], bool):
            p.append(f"{name} is not true/false")
    key = j.get("resume_key")
    if key is not None and not (isinstance(key, str) and _safe(f".omeloc_resume/{key}")):  # resume.RESUME_PREFIX
        p.append(f"resume_key {_r(key)} is not a safe relative key")
    if isinstance(j.get("docs"), Mapping) and not all(
        isinstance(v, str) or v is None for v in j["docs"].values()
    ):
        p.append("docs values are not JSON texts or null")
    return p


def _safe(key: str) -> bool:
    try:
        safe_key(key)
    except UnsafePathError:
        return False
    return True


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
            raise JournalError(f"{io.url} has neither plate nor multiscales metadata. Fix its root metadata.")
        return [], {""}
    wells = _listed_paths(io, "", ("plate", "wells"), "The plate lists well path", "Fix the plate's metadata.")
    images = set()
    for well in wells:
        images.update(_listed_paths(io, well, ("well", "images"), f"Well {well!r} lists image path",
                                    "Fix the well's metadata."))
    return wells, images


def image_arrays(io: StoreIO, image: str) -> list[str]:
    """Array paths (relative to the root) that an image's ``multiscales[0].datasets`` lists."""
    return _listed_paths(io, image, ("multiscales", 0, "datasets"), f"Image {image!r} lists dataset path",
                         "Fix its multiscales metadata.")


def _listed_paths(io: StoreIO, node: str, where: tuple[str | int, ...], what: str, fix: str) -> list[str]:
    """The ``path`` of every entry of a node's NGFF metadata at ``where``, joined to the node, each confined."""
    try:
        entries: Any = io.read_ngff(node)[1]
        for step in where:
            entries = entries[step]
        paths = [str(e["path"]) for e in entries]
    except (KeyError, TypeError, IndexError, ValueError) as err:
        raise JournalError(f"The metadata of {node or 'the root'} in {io.url} has no readable "
                           f"{'.'.join(map(str, where))} ({err!r}). Fix it.") from err
    return [join_path("", node, safe_key(p, what, fix)) for p in paths]


def _check_images(io: StoreIO, journal: Mapping[str, Any], known: set[str], where: str
                  ) -> dict[str, tuple[int, list[str]]]:
    """The journal's images (path → c_axis, arrays): each one of the plate's, each array one of its levels."""
    images: dict[str, tuple[int, list[str]]] = {}
    for entry in journal["images"]:
        if not (isinstance(entry, Mapping) and isinstance(entry.get("path"), str) and _is_int(entry.get("c_axis"))
                and entry["c_axis"] >= 0 and isinstance(entry.get("arrays"), list) and entry["arrays"]):
            raise _refuse(where, f"has a malformed image entry {str(entry)[:80]!r}")
        path = entry["path"]
        if path not in known:
            raise _refuse(where, f"names image {_r(path)}, which the plate's metadata does not list")
        levels = image_arrays(io, path)
        for arr in entry["arrays"]:
            if arr not in levels:
                raise _refuse(where, f"names array {_r(arr)}, which is not a level of image {_r(path)}")
        images[path] = (int(entry["c_axis"]), list(entry["arrays"]))
    if not images:
        raise _refuse(where, "names no images")
    return images


# -- documents ----------------------------------------------------------------------------
def _check_docs(io: StoreIO, journal: Mapping[str, Any], wells: list[str],
                images: Mapping[str, tuple[int, list[str]]], where: str) -> None:
    """Every saved document is a metadata document of the root, a well, or a listed image or array, or the
    consolidated metadata of a group above (or of) a listed image."""
    allowed = set(io.root_docs()) | set(fmt.consolidated_doc_keys(images, io.zarr_format))
    for node in [*wells, *images, *(a for _, arrays in images.values() for a in arrays)]:
        allowed.update(io.metadata_docs(node))
    for key, text in journal["docs"].items():
        if key not in allowed:
            raise _refuse(where, f"names document {_r(key)}, which is not a metadata document of the plate's root, "
                                 f"wells or of the images it lists (or their groups' consolidated metadata)")
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
    """What a rollback may not change in a document: all but attributes, consolidated metadata and shape;
    of the attributes, the NGFF structure (plate, well, multiscales)."""
    if name == ".zmetadata":
        return None
    if name == ".zattrs":
        return {k: doc.get(k) for k in _STRUCTURE_KEYS}
    out = {k: v for k, v in doc.items() if k not in ("attributes", "consolidated_metadata", "shape")}
    if name == "zarr.json":
        ome = fmt.ngff_attrs(fmt.attributes_in(doc, 3), 3)
        out["ngff structure"] = {k: ome.get(k) for k in _STRUCTURE_KEYS}
    return out


def _check_doc(io: StoreIO, key: str, text: str | None, where: str) -> None:
    """A saved document restores the same node: same structure, only attributes and shape may differ."""
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
    if key == io.attrs_doc("") and _KEY in fmt.attributes_in(saved, io.zarr_format):
        raise _refuse(where, "would restore a root document that itself holds a journal")


def _check_array_shape(io: StoreIO, journal: Mapping[str, Any], arr: str, c_axis: int, where: str) -> None:
    """The saved shape has ``n_channels`` along ``c``; the current one differs at most by the new channel."""
    key = io.array_doc(arr)
    saved = _json_object(journal["docs"].get(key))
    current = _json_object(io.get(key))
    if saved is None or current is None:
        raise _refuse(where, f"has no saved or current array document for {_r(arr)}")
    before, now = saved.get("shape"), current.get("shape")
    n = journal["n_channels"]
    if not (isinstance(before, list) and isinstance(now, list) and len(before) == len(now) > c_axis
            and all(_is_int(s) for s in before + now)):
        raise _refuse(where, f"gives array {_r(arr)} a channel axis {c_axis} that its shape does not have")
    if before[c_axis] != n or before[:c_axis] + before[c_axis + 1:] != now[:c_axis] + now[c_axis + 1:]:
        raise _refuse(where, f"says array {_r(arr)} had shape {before} with {n} channels, unlike its shape {now} now")
    added = len(journal.get("names") or [journal["name"]])
    allowed = {"append": (n, n + added), "remove": (n, n - added)}.get(journal["mode"], (n,))
    if now[c_axis] not in allowed:
        raise _refuse(where, f"cannot explain the {now[c_axis]} channels of array {_r(arr)} (it had {n})")


def _check_overwrite(io: StoreIO, journal: Mapping[str, Any], images: Mapping[str, Any], where: str) -> None:
    """An overwrite replaces the chunks of one channel: that channel must be omeloc's virtual one."""
    if journal["mode"] == "remove":
        _check_removed(io, journal, images, where)
    if journal["mode"] != "overwrite":
        return
    for j, name in enumerate(journal.get("names") or [journal["name"]]):
        _check_overwritten(io, name, journal["channel_index"] + j, images, where)


def _check_removed(io: StoreIO, journal: Mapping[str, Any], images: Mapping[str, Any], where: str) -> None:
    """A removal takes the last channels, each omeloc's virtual one (or one it already took out of the image)."""
    names = journal.get("names") or [journal["name"]]
    if journal["channel_index"] + len(names) != journal["n_channels"]:
        raise _refuse(where, "removes channels that are not the last ones")
    for path in images:
        attrs = io.read_attrs(path)
        ours = attrs.get("omeloc")
        channels = ours.get("channels") if isinstance(ours, Mapping) else None
        omero = fmt.ngff_attrs(attrs, io.zarr_format).get("omero")
        listed = omero.get("channels") if isinstance(omero, Mapping) else None
        taken_out = isinstance(listed, list) and len(listed) <= journal["channel_index"]
        for name in names:
            entry = channels.get(name) if isinstance(channels, Mapping) else None
            if entry is None and taken_out:
                continue  # already taken out of this image by this removal (omero entry and provenance together)
            if not (isinstance(entry, Mapping) and entry.get("virtual") is True):
                raise _refuse(where, f"removes channel {_r(name)} of image {_r(path)}, which is not a virtual "
                                     f"channel omeloc wrote")


def _check_overwritten(io: StoreIO, name: str, index: int, images: Mapping[str, Any], where: str) -> None:
    """Channel ``index`` of every image is omeloc's virtual channel ``name``."""
    for path in images:
        ours = io.read_attrs(path).get("omeloc")
        channels = ours.get("channels") if isinstance(ours, Mapping) else None
        entry = channels.get(name) if isinstance(channels, Mapping) else None
        if not (isinstance(entry, Mapping) and entry.get("virtual") is True and entry.get("index", index) == index):
            raise _refuse(where, f"overwrites channel {index} of image {_r(path)}, which is not the virtual channel "
                                 f"{_r(name)} omeloc wrote")
