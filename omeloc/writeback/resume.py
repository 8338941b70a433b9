"""Resuming a killed write-back: keep the new channel's finished chunks across the rollback.

A run of :func:`omeloc.writeback.protocol.add_channel` that is killed leaves a journal.  The next
run rolls the plate back to its original bytes (the safety net), but when it is the *same* job
(the caller passes the same ``resume_key``, e.g. a hash of checkpoint and settings), the
level-0 chunks the dead run already finished are first moved aside into a stash below the
plate root (``.omeloc_resume/<key>/...``, outside every array and invisible to readers), and
moved back after the new run has resized the arrays.  Their blocks are then skipped, so the
rerun only computes what is missing.  Chunk writes are atomic (zarr's local store writes a
temporary file and renames it; object stores put whole objects), so a chunk that exists is
complete; ``*.partial`` leftovers are never stashed.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Sequence
from typing import Any

from omeloc.ngff.format import chunk_coords, join_path, storage_block, store_format
from omeloc.writeback import journal as jr
from omeloc.writeback.record import Journal

__all__ = ["RESUME_PREFIX", "done_blocks", "drop_stash", "restore_finished", "stash_finished"]

logger = logging.getLogger(__name__)

RESUME_PREFIX = ".omeloc_resume"


def _stash_root(resume_key: str) -> str:
    return f"{RESUME_PREFIX}/{resume_key}"


def _level0_arrays(journal: Journal) -> list[tuple[str, int]]:
    return [(img.arrays[0], img.c_axis) for img in journal.images]


def stash_finished(io: jr.StoreIO, journal: Journal) -> int:
    """Move the finished level-0 chunks of a dead run's new channel into the stash.

    Only for appends whose journal carries a ``resume_key``; returns the number moved.  Not
    when the new channel's files also hold other (virtual) channels (journal ``shared``): such
    a file existed before the run, so its presence does not say the new channel is in it.
    """
    key = journal.resume_key
    if (
        not key
        or journal.mode != "append"
        or journal.chunks_restored
        or journal.shared
        or len(journal.names) > 1
    ):  # several channels per run: no resume (rolled back whole)
        return 0
    doc_name = store_format(journal.zarr_format).array_doc
    index = journal.channel_index
    moved = 0
    for rel, c_axis in _level0_arrays(journal):
        doc = json.loads(journal.docs[join_path("", rel, doc_name)] or "{}")
        unit = (
            index // storage_block(doc)[c_axis]
        )  # the storage unit (chunk or shard) holding the channel
        for full in io.list(rel):
            rel_key = full[len(rel) + 1 :]
            coords = chunk_coords(rel_key, doc)
            if coords is None or len(coords) <= c_axis or coords[c_axis] != unit:
                continue
            data = io.get(full)
            if data is None:
                continue
            io.set(f"{_stash_root(key)}/{full}", data)
            io.delete(full)
            moved += 1
    logger.info("kept %d finished chunk(s) of the interrupted run for resuming", moved)
    return moved


def drop_stash(io: jr.StoreIO, keep: str | None = None) -> int:
    """Delete stashed chunks (all of them, or all but those of ``keep``)."""
    removed = 0
    for full in io.list(RESUME_PREFIX):
        if keep and full.startswith(_stash_root(keep) + "/"):
            continue
        io.delete(full)
        removed += 1
    jr.prune_empty_dirs(io, RESUME_PREFIX)
    return removed


def restore_finished(
    io: jr.StoreIO, resume_key: str, arrays: Sequence[tuple[str, dict[str, Any]]]
) -> dict[str, set[tuple[int, ...]]]:
    """Move stashed chunks back into their (resized) arrays; the chunk coordinates restored per
    array.

    ``arrays`` lists ``(array path relative to the target, its current array document)``.
    """
    root = _stash_root(resume_key)
    restored: dict[str, set[tuple[int, ...]]] = {}
    stashed = io.list(root)  # one listing of the stash (not one per array: each is a request on S3)
    if not stashed:
        return restored
    for rel, doc in arrays:
        prefix = f"{root}/{rel}"
        for full in (k for k in stashed if k.startswith(prefix + "/")):
            rel_key = full[len(prefix) + 1 :]
            coords = chunk_coords(rel_key, doc)
            data = io.get(full)
            if coords is None or data is None:
                continue
            io.set(f"{rel}/{rel_key}", data)
            io.delete(full)
            restored.setdefault(rel, set()).add(coords)
    return restored


def done_blocks(
    chunks: Sequence[Sequence[int]],
    key_block: Sequence[int],
    c_axis: int,
    index: int,
    present: set[tuple[int, ...]],
) -> set[tuple[int, ...]]:
    """Indices of the Dask blocks (axes without ``c``) whose every storage key is ``present``.

    ``chunks`` are the Dask chunks of the channel data (no ``c`` axis), ``key_block`` the
    storage unit (shard or chunk) along those axes.
    """
    starts = [list(itertools.accumulate((0, *c))) for c in chunks]
    done = set()
    for idx in itertools.product(*(range(len(c)) for c in chunks)):
        ranges = []
        for a, i in enumerate(idx):
            lo, hi = starts[a][i], starts[a][i + 1]
            ranges.append(range(lo // key_block[a], -(-hi // key_block[a])))
        keys = (k[:c_axis] + (index,) + k[c_axis:] for k in itertools.product(*ranges))
        if all(k in present for k in keys):
            done.add(idx)
    return done
