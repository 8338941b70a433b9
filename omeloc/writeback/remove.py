"""Remove channels omeloc wrote from a plate (or image), in place, crash-safe:
:func:`remove_channel`.

What can be removed, and why (DESIGN.md invariant 1: original chunk files are never rewritten)
---------------------------------------------------------------------------------------------
Only **virtual channels omeloc wrote** (``attrs["omeloc"]["channels"][name]["virtual"]``) that
are the **last channels** of every image, together with any virtual channels after them.
Removing the last ``k`` channels shrinks every level along ``c`` and deletes only the files of
those channels; no other file changes.  A channel in the middle would need every later
channel's chunks rewritten one place down: for original channels that breaks invariant 1, so
it is refused (remove the virtual channels after it in the same call, or keep it).  Within a
storage unit along ``c`` (a chunk or shard holding several channels), the kept channels must
end on a unit boundary, so no file holds both a kept and a removed channel; else refused.

The run, crash-safe (the same lock and journal as :func:`omeloc.add_channel`)
----------------------------------------------------------------------------
0. take the plate lock; deal with a dead run's journal first;
1. preflight every image (names, virtual, last, aligned, same channel list everywhere);
2. journal ``mode: "remove"`` with the raw metadata documents it touches;
3. per image: the omero entries and provenance of the channels dropped, then every level's
   shape shrunk;  4. the removed channels' chunk files deleted;  5. consolidated metadata
   refreshed, journal cleared.

Every step can be repeated, so a run killed anywhere is **finished** (rolled forward) by the
next omeloc write or ``omeloc recover``: once journaled, the channels are going, and nothing
the user still has is touched.  Before the journal nothing has changed.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from omeloc.errors import InputError
from omeloc.ngff.format import chunk_coords, storage_block
from omeloc.ngff.plate import Image, Plate, open_plate
from omeloc.testing.faults import fault_point
from omeloc.writeback import journal as jr
from omeloc.writeback.identity import WriterIdentity
from omeloc.writeback.lock import PlateLock
from omeloc.writeback.record import ImageEntry, Journal

__all__ = ["RemoveResult", "finish_remove", "remove_channel"]

logger = logging.getLogger(__name__)

MODE = "remove"


@dataclass(frozen=True)
class RemoveResult:
    """What :func:`remove_channel` did."""

    names: tuple[str, ...]
    images: int
    files_deleted: int
    seconds: float
    recovered: str | None = None
    """``"rollback"`` / ``"finish"`` when an interrupted run was dealt with first."""


def _virtual(img: Image, name: str) -> dict[str, Any] | None:
    record = (img.attrs.get("omeloc") or {}).get("channels", {}).get(name)
    return record if isinstance(record, Mapping) and record.get("virtual") is True else None


def _check_image(io: jr.StoreIO, img: Image, names: tuple[str, ...], target: str) -> None:
    """``names`` are the last channels of ``img``, each one omeloc's virtual channel, on a unit
    boundary."""
    labels = list(img.channel_names)
    where = img.path or target
    for name in names:
        if name not in labels:
            raise InputError(
                f"Image {where} has no channel {name!r} (channels: {', '.join(labels)}). "
                f"Check the name with omeloc info."
            )
        if _virtual(img, name) is None:
            raise InputError(
                f"Channel {name!r} of {where} is not a channel omeloc wrote (an original channel, "
                f"or one written by another tool): omeloc removes only its own virtual channels."
            )
    keep = len(labels) - len(names)
    if sorted(labels.index(n) for n in names) != list(range(keep, len(labels))):
        after = [c for c in labels[max(labels.index(n) for n in names) + 1 :]]
        after = after or [c for c in labels[keep:] if c not in names]
        fix = (
            "remove them in the same call (--channel ... --channel ...)"
            if all(_virtual(img, c) for c in after)
            else "original channels follow it: it cannot be removed "
            "without rewriting their chunk files"
        )
        raise InputError(
            f"Channel(s) {', '.join(map(repr, names))} of {where} are not the last channels (after "
            f"them: {', '.join(map(repr, after))}); {fix}."
        )
    c_axis = img.axes.index("c")
    for level in range(len(img.level_paths)):
        block = storage_block(io.read_json(io.array_doc(_array_rel(img, level))) or {})[c_axis]
        if keep % block:
            raise InputError(
                f"Image {where} stores {block} channels per file along c (level {level}): removing "
                f"{len(names)} channel(s) would rewrite a file that holds channel(s) kept. Copy "
                f"the plate with one channel per chunk (omeloc rechunk) first."
            )


def _preflight(io: jr.StoreIO, plate: Plate, names: tuple[str, ...], target: str) -> None:
    first = plate.images[0].channel_names
    for img in plate.images:
        if img.channel_names != first:
            raise InputError(
                f"Image {img.path} has channels {list(img.channel_names)}, unlike {list(first)} of "
                f"{plate.images[0].path}. Make the images agree (omeloc recover) first."
            )
        _check_image(io, img, names, target)


def _snapshot(io: jr.StoreIO, plate: Plate) -> dict[str, str | None]:
    keys: list[str] = io.root_docs()
    for img in plate.images:
        keys += io.metadata_docs(img.path)
        for level in range(len(img.level_paths)):
            keys += io.metadata_docs(_array_rel(img, level))
    docs: dict[str, str | None] = {}
    for key in dict.fromkeys(keys):
        raw = io.get(key)
        docs[key] = None if raw is None else raw.decode("utf-8")
    return docs


def _array_rel(img: Image, level: int) -> str:
    return "/".join(p for p in (img.path, img.level_paths[level]) if p)


def _journal(io: jr.StoreIO, plate: Plate, names: tuple[str, ...], run_id: str) -> Journal:
    n = len(plate.images[0].channel_names)
    docs = _snapshot(io, plate)
    return Journal(
        run_id=run_id,
        writer=WriterIdentity.current(),
        started=datetime.now(UTC).isoformat(timespec="seconds"),
        heartbeat=time.time(),
        phase="started",
        mode=MODE,
        names=names,
        channel_index=n - len(names),
        n_channels=n,
        zarr_format=io.zarr_format,
        images=tuple(
            ImageEntry(
                path=img.path,
                c_axis=img.axes.index("c"),
                arrays=tuple(_array_rel(img, i) for i in range(len(img.level_paths))),
            )
            for img in plate.images
        ),
        docs=docs,
        consolidated=io.format.is_consolidated(docs),
        resume_key=None,
        shared=False,
    )


def finish_remove(io: jr.StoreIO, journal: Journal | Mapping[str, Any]) -> int:
    """Carry out (or finish) the removal a ``mode: "remove"`` journal describes; the files deleted.

    Each step can be repeated (a run killed in the middle is finished by calling this again).
    """
    journal = jr.validate_journal(
        io, journal
    )  # untrusted input: refused unless it names only this plate's keys
    keep = journal.channel_index
    names = list(journal.names)
    for n, entry in enumerate(journal.images):
        attrs, ome = io.read_ngff(entry.path)
        omero = dict(ome.get("omero") or {})
        omero["channels"] = list(omero.get("channels") or [])[:keep]
        ours = dict(attrs.get("omeloc") or {})
        ours["channels"] = {
            k: v for k, v in dict(ours.get("channels") or {}).items() if k not in names
        }
        io.update_ngff(entry.path, attrs, {"omero": omero}, omeloc=ours)
        for arr in entry.arrays:
            key = io.array_doc(arr)
            doc = io.read_json(key) or {}
            shape = list(doc.get("shape") or [])
            if len(shape) > entry.c_axis and shape[entry.c_axis] > keep:
                shape[entry.c_axis] = keep
                doc["shape"] = shape
                io.write_json(key, doc)
        if n == 0:
            fault_point("remove_metadata")
    deleted = _delete_chunks(io, journal, keep)
    fault_point("remove_chunks")
    jr.finish(io, journal)
    return deleted


def _delete_chunks(io: jr.StoreIO, journal: Journal, keep: int) -> int:
    """Delete the storage units at and after ``keep`` along ``c`` (and partial files) of every
    level."""
    deleted = 0
    for entry in journal.images:
        c_axis = entry.c_axis
        for arr in entry.arrays:
            saved = json.loads(journal.docs[io.array_doc(arr)] or "{}")
            first_gone = keep // storage_block(saved)[c_axis]
            for key in io.list(arr):
                coords = (
                    None
                    if jr.is_partial(key)
                    else chunk_coords(key[len(arr) + 1 :] if arr else key, saved)
                )
                if jr.is_partial(key) or (coords is not None and coords[c_axis] >= first_gone):
                    io.delete(key)
                    deleted += 1
    return deleted


def _recover_stale(io: jr.StoreIO, stale: Journal | None) -> str | None:
    from omeloc.writeback.protocol import recover_journal  # protocol imports this module lazily too

    return None if stale is None else recover_journal(io, stale)


def remove_channel(
    target: str | Path | Plate,
    name: str | Sequence[str],
    *,
    storage_options: Mapping[str, Any] | None = None,
    stale_after: float = 3600.0,
) -> RemoveResult:
    """Remove omeloc's virtual channel(s) ``name`` from every image of a plate (or from one image).

    Parameters
    ----------
    target
        The plate (or image): path, URL or opened :class:`~omeloc.ngff.plate.Plate`.
    name
        A channel label, or several (removed together); they must be the image's last
        channels, each written by omeloc (see the module docstring for why).
    storage_options
        fsspec options for URLs.
    stale_after
        Seconds without a heartbeat after which a writer on another host counts as dead.

    Returns
    -------
    RemoveResult

    Raises
    ------
    InputError
        An unknown name, an original channel, a channel followed by original channels, a
        layout that would rewrite a kept channel's file; nothing is changed.
    ConcurrentWriteError
        Another live omeloc run holds the plate.
    """
    t0 = time.perf_counter()
    names = (name,) if isinstance(name, str) else tuple(name)
    if (
        not names
        or len(set(names)) != len(names)
        or not all(isinstance(n, str) and n for n in names)
    ):
        raise InputError(f"Expected one or more distinct channel names. Got {list(names)} instead.")
    url = target.path if isinstance(target, Plate) else str(target)
    so = (
        storage_options
        if storage_options is not None or not isinstance(target, Plate)
        else target.storage_options
    )
    io = jr.StoreIO(url, so)
    with PlateLock(io, purpose="remove", stale_after=stale_after) as lock:
        recovered = _recover_stale(io, jr.check_journal(io, stale_after=stale_after))
        plate = open_plate(url, so)
        _preflight(io, plate, names, url)
        if len(names) >= len(plate.images[0].channel_names):
            raise InputError(f"{url} would be left without channels. Keep at least one.")
        journal = _journal(io, plate, names, lock.run_id)
        jr.write_journal(io, journal)
        fault_point("remove_journal")
        lock.ensure()
        deleted = finish_remove(io, journal)
    seconds = time.perf_counter() - t0
    logger.info(
        "removed channel(s) %s from %d image(s) of %s in %.1f s",
        list(names),
        len(plate.images),
        url,
        seconds,
    )
    return RemoveResult(
        names=names,
        images=len(plate.images),
        files_deleted=deleted,
        seconds=seconds,
        recovered=recovered,
    )
