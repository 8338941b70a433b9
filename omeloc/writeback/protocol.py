"""Add a (virtual) channel to an existing OME-Zarr plate or image, in place, safely.

The protocol (DESIGN.md, "Write-back protocol"), in the order :func:`add_channel` runs it:

0. take the plate lock (:mod:`omeloc.writeback.lock`), before anything is read for the write;
   a heartbeat thread refreshes it until the end (``dry_run`` takes none);
1. deal with a dead run's journal (roll it back, or finish it: :func:`recover`);
2. preflight everything (:mod:`omeloc.writeback.plan`); ``dry_run`` stops here;
3. journal: the raw bytes of every metadata document it may touch, in the root attributes
   outside the ``ome`` key (:mod:`omeloc.writeback.journal`);
4. overwrite: back up the channel being replaced, verify the copy, journal ``backed_up``;
   then per image the omero entry, marked as being written (``"active": false`` and
   :data:`PENDING_KEY`), together with the new shape of every level (append);
5. write level 0 with region-aligned writes, then each lower level from the level above, to
   the exact existing shapes (:mod:`omeloc.writeback.pixels`: one Dask task per zarr write
   block, so each chunk is written exactly once and no locks are needed);
6. the final omero entry and provenance; re-consolidate; clear the journal; release the lock.

Pixels are written by Dask tasks; metadata only by the calling process.  A run killed at any
point is rolled back (or, past its last write, finished) by the next call; a run that fails
(bad data, a full disk, Ctrl-C) rolls itself back, and if even that fails it says so in one
line and leaves its journal for ``omeloc recover``.

Parameters of :func:`add_channel` in detail
-------------------------------------------
``data``
    For an image: one array (numpy or dask) with the shape of level 0 without the ``c``
    axis.  For a plate: a mapping from image path (``"B/3/0"``) to such an array or to a
    function of no arguments returning one, or a function called with each
    :class:`~omeloc.ngff.plate.Image` returning its array.  Values are mapped to the image
    dtype by rounding and clipping.  Dask arrays are computed inside the region writes, so a
    lazy prediction and its write are one Dask graph.
``overwrite``
    Allow replacing an existing channel of that name if omeloc wrote it (it is marked
    ``virtual`` in ``attrs["omeloc"]["channels"]``); only that channel's chunks change.
``provenance``
    JSON-serialisable facts to store with the channel (source channel, model, hash,
    parameters, ...), in ``attrs["omeloc"]["channels"][name]`` outside the ``ome`` key.
``compute``, ``client``, ``scheduler``
    Where the pixel writes run: a :class:`~omeloc.config.ComputeConfig`, or as shorthands a
    ``distributed.Client`` (``client=``) or a local Dask scheduler name such as
    ``"synchronous"`` (``scheduler=``).  Nothing given: Dask's default scheduler.
``resume_key``
    Identity of the job (e.g. a hash of model and settings).  When a killed run with the
    same key, channel name and plate left a journal, its finished level-0 chunks are kept and
    only the missing blocks are computed; any other leftover run is rolled back.
``stale_after``
    Seconds without a heartbeat after which a lock (or journal) left on another host counts
    as dead; never less than 15 heartbeats of the holder, so a live writer is never judged
    dead.  On the same host a writer is dead only when its process is gone.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np

from omeloc.compute import compute as compute_graph
from omeloc.compute import dask_client
from omeloc.config import ComputeConfig
from omeloc.errors import (
    InputError,
    OmelocError,
    ReadOnlyStoreError,
    SchedulerError,
    StoreFailedError,
)
from omeloc.ngff.format import (
    chunk_coords,
    consolidated_doc_keys,
    parent_ngff_attrs,
    refresh_consolidated,
)
from omeloc.ngff.documents import DocumentCache
from omeloc.ngff.stores import env_count, store_outage
from omeloc.ngff.plate import Image, Plate, image_plate, open_plate
from omeloc.ngff.writer import DEFAULT_COLORS, channel_colors, contrasting_color
from omeloc.testing.faults import fault_point
from omeloc.writeback import journal as jr
from omeloc.writeback import pixels as px
from omeloc.writeback import resume as rs
from omeloc.writeback.identity import WriterIdentity, running
from omeloc.writeback.lock import PlateLock, peek
from omeloc.writeback.plan import DataArg, ImagePlan, WritePlan, omero_note, preflight, without_axis
from omeloc.writeback.record import ImageEntry, Journal

__all__ = [
    "PENDING_KEY",
    "AddChannelResult",
    "ImagePlan",
    "Recovery",
    "WriteJob",
    "WritePlan",
    "add_channel",
    "recover",
    "recover_report",
]

logger = logging.getLogger(__name__)

#: marks the omero entry of a channel being written (with ``"active": false``) until the run
#: completes
PENDING_KEY = "omeloc_writing"


@dataclass(frozen=True)
class AddChannelResult:
    """What :func:`add_channel` did."""

    name: str
    channel_index: int
    images: int
    levels: int
    bytes_written: int
    """Uncompressed bytes of pixels written (all levels)."""
    seconds: float
    recovered: str | None = None
    """``"rollback"`` / ``"finish"`` when an interrupted run was dealt with first."""
    notes: tuple[str, ...] = ()
    """Lines to tell the user (e.g. that images without omero metadata were given the block)."""


@dataclass(frozen=True)
class WriteJob:
    """One :func:`add_channel` run past its preflight: everything the write phases need."""

    io: jr.StoreIO
    plan: WritePlan
    journal: jr.RunJournal
    """The run's journal (its ``docs`` are the original metadata documents); phases update it."""
    colors: tuple[str, ...]
    """One omero colour per channel written."""
    provenance: tuple[dict[str, Any], ...]
    """One provenance record per channel written."""
    where: ComputeConfig
    progress: bool
    storage_options: Mapping[str, Any] | None
    axes: tuple[str, ...]
    started: float
    """``time.perf_counter()`` when the call began."""
    recovered: str | None = None
    lock: PlateLock | None = None
    """The plate lock this run holds (its heartbeat runs meanwhile)."""

    @property
    def store(self) -> px.RunStore:
        """How this run's tasks open the target's arrays."""
        return px.RunStore.of(self.storage_options, self.io.zarr_format, self.journal.record.run_id)


@dataclass(frozen=True)
class Recovery:
    """What :func:`recover_report` did."""

    outcome: str | None
    """``"rollback"``, ``"finish"``, or ``None`` when no run was interrupted."""
    leftovers: int = 0
    """Files removed that interrupted runs left: the resume stash and orphaned overwrite backups."""
    stale_lock: bool = False
    """Whether the lock of a dead writer was taken over (and released)."""


def recover_report(
    target: str | Path,
    *,
    force: bool = False,
    storage_options: Mapping[str, Any] | None = None,
    stale_after: float = 3600.0,
) -> Recovery:
    """Like :func:`recover`, and say what was found: the outcome, leftovers removed, a dead writer's
    lock.

    Holds the plate lock throughout, so no other writer can start while the plate is rolled back.
    """
    io = jr.StoreIO(str(target), storage_options)
    with PlateLock(io, purpose="recover", stale_after=stale_after, force=force) as lock:
        fault_point("recover_locked")
        journal = jr.check_journal(io, stale_after=stale_after, force=force)
        outcome = None if journal is None else recover_journal(io, journal)
        from omeloc.writeback.tables import (
            recover_stale_tables,
        )  # tables import this module's layer

        if recover_stale_tables(io, stale_after, force=force) and outcome is None:
            outcome = "rollback"
        leftovers = rs.drop_stash(io) + jr.drop_backups(io)
    if leftovers:
        logger.warning(
            "removed %d file(s) that interrupted runs left in %s (resume stash, backups)",
            leftovers,
            io.url,
        )
    return Recovery(outcome=outcome, leftovers=leftovers, stale_lock=lock.taken_over is not None)


def recover(
    target: str | Path,
    *,
    force: bool = False,
    storage_options: Mapping[str, Any] | None = None,
    stale_after: float = 3600.0,
) -> str | None:
    """Deal with an interrupted :func:`add_channel` run: roll it back, or finish it.

    Takes the plate lock first (a dead writer's lock is taken over), then rolls back or
    finishes the run its journal describes, and removes what interrupted runs left (the
    resume stash of a run stopped with Ctrl-C, orphaned backups).

    Parameters
    ----------
    target
        The plate (or image) that :func:`add_channel` was writing.
    force
        Recover even if the writer looks alive (another host, fresh heartbeat).
    storage_options
        fsspec options for URLs.
    stale_after
        Seconds without a heartbeat after which a writer on another host counts as dead.

    Returns
    -------
    str or None
        ``"rollback"``, ``"finish"``, or ``None`` when there was nothing to recover.

    Raises
    ------
    ConcurrentWriteError
        A live writer holds the lock or the journal (and ``force`` is False).
    """
    return recover_report(
        target, force=force, storage_options=storage_options, stale_after=stale_after
    ).outcome


def add_channel(
    target: str | Path | Plate | Image,
    name: str | Sequence[str],
    data: DataArg,
    *,
    color: str | None = None,
    overwrite: bool = False,
    provenance: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
    compute: ComputeConfig | None = None,
    client: Any = None,
    scheduler: str | None = None,
    dry_run: bool = False,
    progress: bool = False,
    storage_options: Mapping[str, Any] | None = None,
    stale_after: float = 3600.0,
    resume_key: str | None = None,
) -> AddChannelResult | WritePlan:
    """Add channel ``name`` to every image of a plate (or to one image), in place.

    Existing chunk files are never rewritten: every level grows by one channel, and only the
    new channel's chunks are written; the plate lock is taken before anything else (steps and
    parameters in detail: the module docstring).

    Parameters
    ----------
    target : str, Path, Plate or Image
        An OME-Zarr HCS plate or single multiscale image: its path or URL, or an opened view
        (a dry run plans on it; a write reads the plate again once it holds the lock).
    name : str or sequence of str
        Label of the new channel (``omero.channels[].label``); several labels write that many
        channels side by side as one job (all added, or all rolled back; e.g. a prediction and
        its uncertainty), each array then ``(len(name), ...)``.
    data
        Level-0 pixels without the ``c`` axis: an array for an image; for a plate a mapping
        image path → array (or function returning one), or a function of each Image.
    color, overwrite, provenance
        omero colour of the (first) channel (default: its own when replaced, else an unused
        palette colour); replace omeloc's own channel(s) of that name; JSON facts stored with
        the channel (one mapping, or one per name).
    compute, client, scheduler
        Where the writes run: a ComputeConfig, a ``distributed.Client``, a local scheduler name.
    dry_run, progress
        Return the :class:`WritePlan` without writing; show progress bars.
    storage_options, stale_after, resume_key
        fsspec options; seconds without a heartbeat after which a writer on another host counts
        as dead (never less than 15 heartbeats); the job's identity for resuming.

    Returns
    -------
    AddChannelResult or WritePlan
        The plan when ``dry_run``.

    Raises
    ------
    InputError, LayoutError, ReadOnlyStoreError, ConcurrentWriteError
        Bad name, data or plate; original chunks would be rewritten; the store cannot be
        written (or is full: the plate is rolled back); another live omeloc run holds the lock.
    """
    t0, where = time.perf_counter(), _where(compute, client, scheduler)
    names, records = _checked_request(name, provenance)
    url, so = _target_url(target, storage_options)
    io = jr.StoreIO(url, so)
    if dry_run:
        return _dry_run(
            target, io, so, names, data, overwrite=overwrite, color=color, stale_after=stale_after
        )
    fault_point("before_lock")
    with PlateLock(io, purpose="add_channel", stale_after=stale_after) as lock:
        stale = jr.check_journal(io, stale_after=stale_after)
        recovered = _clear_stale(io, stale, names[0], resume_key)
        plate = _target_plate(target, url, so, reuse=False, documents=io.documents)
        _warn_single_field(plate, url, so, names[0])
        plan = preflight(plate, io, names, data, overwrite=overwrite, target=url)
        colors = _pick_colors(color, _channels_now(plate, plan), plan, records)
        journal = jr.RunJournal(io, _new_journal(io, plan, resume_key, lock.run_id))
        return _write(
            WriteJob(
                io=io,
                plan=plan,
                journal=journal,
                colors=colors,
                provenance=records,
                where=where,
                progress=progress,
                storage_options=so,
                axes=plate.images[0].axes,
                started=t0,
                recovered=recovered,
                lock=lock,
            )
        )


def _dry_run(
    target: str | Path | Plate | Image,
    io: jr.StoreIO,
    so: Mapping[str, Any] | None,
    name: tuple[str, ...],
    data: DataArg,
    *,
    overwrite: bool,
    color: str | None,
    stale_after: float,
) -> WritePlan:
    """The plan of a write, without taking the lock or changing anything (refused while a live
    writer runs)."""
    peek(io, stale_after=stale_after)
    stale = jr.check_journal(io, stale_after=stale_after)
    pending, rollback_n = _pending(stale, True)
    plate = _target_plate(target, io.url, so, reuse=True, documents=io.documents)
    _warn_single_field(plate, io.url, so, name[0])
    plan = preflight(
        plate,
        io,
        name,
        data,
        overwrite=overwrite,
        target=io.url,
        pending=pending,
        rollback_n=rollback_n,
    )
    _pick_colors(color, _channels_now(plate, plan), plan, ())
    return plan


def _warn_single_field(plate: Plate, url: str, so: Mapping[str, Any] | None, name: str) -> None:
    if not plate.is_plate and "well" in parent_ngff_attrs(url, so):
        logger.warning(
            "adding channel %r to one field of a plate: the plate's wells will differ in channels",
            name,
        )


# -- before the preflight ---------------------------------------------------------------
def _checked_request(
    name: str | Sequence[str], provenance: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None
) -> tuple[tuple[str, ...], tuple[dict[str, Any], ...]]:
    """Check the channel names and that the provenance is JSON; the names, and one provenance
    dict per name."""
    names = (
        (name,) if isinstance(name, str) else tuple(name) if isinstance(name, Sequence) else (name,)
    )
    if not names or len(names) > 16:
        raise InputError(f"Expected 1 to 16 channel names. Got {len(names)} instead.")
    for one in names:
        if not isinstance(one, str) or not one.strip():
            raise InputError(f"Expected a non-empty channel name. Got {one!r} instead.")
        if any(ord(ch) < 32 or ord(ch) == 127 for ch in one):
            raise InputError(
                f"Expected a channel name without control characters (newlines, tabs). Got {one!r} "
                f"instead."
            )
    many = isinstance(provenance, Sequence) and not isinstance(provenance, (str, bytes))
    try:
        records = [dict(p) for p in provenance] if many else [dict(provenance or {})]
    except (TypeError, ValueError) as err:
        raise InputError(
            "Expected provenance as a mapping (or one per channel name). Got "
            f"{type(provenance).__name__} instead."
        ) from err
    if len(records) == 1:
        records *= len(names)
    if len(records) != len(names):
        raise InputError(
            f"Expected one provenance mapping, or one per channel name ({len(names)}). "
            f"Got {len(records)} instead."
        )
    try:
        json.dumps(records, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise InputError(
            f"Expected JSON-serialisable provenance. Got {err} instead. Pass strings and numbers."
        ) from err
    return names, tuple(records)


def _where(compute: ComputeConfig | None, client: Any, scheduler: str | None) -> ComputeConfig:
    """One ComputeConfig from ``compute=`` or the ``client=`` / ``scheduler=`` shorthands."""
    if compute is None:
        # a client wins over a scheduler name, as it always has
        return (
            ComputeConfig(client=client)
            if client is not None
            else ComputeConfig(scheduler=scheduler)
        )
    if not isinstance(compute, ComputeConfig):
        raise InputError(
            f"Expected compute=ComputeConfig(...). Got {type(compute).__name__} instead."
        )
    if client is not None or scheduler is not None:
        raise InputError(
            "Expected where the work runs once: compute=ComputeConfig(...) or client=/scheduler=. "
            "Got both instead."
        )
    return compute


def _target_url(
    target: str | Path | Plate | Image,
    storage_options: Mapping[str, Any] | None,
) -> tuple[str, Mapping[str, Any] | None]:
    """Path or URL of the target, and the storage options to open it with."""
    if isinstance(target, Plate):
        return (
            target.path,
            storage_options if storage_options is not None else target.storage_options,
        )
    if isinstance(target, Image):
        return target.url, storage_options
    return str(target), storage_options


def _target_plate(
    target: str | Path | Plate | Image,
    url: str,
    storage_options: Mapping[str, Any] | None,
    *,
    reuse: bool,
    documents: DocumentCache | None = None,
) -> Plate:
    """The target as a Plate: the caller's view when ``reuse``, else opened (again) from the store,
    its documents read into ``documents`` (the write-back's own reads then need no request)."""
    if reuse and isinstance(target, Plate):
        return target
    if reuse and isinstance(target, Image):
        return image_plate(target, storage_options)
    return open_plate(url, storage_options, documents=documents)


def recover_journal(io: jr.StoreIO, journal: Journal) -> str:
    """Act on a dead run's (validated) journal: finish a removal or a completed write, roll back
    the rest."""
    if journal.mode == "remove":  # a removal is always finished (omeloc.writeback.remove)
        from omeloc.writeback.remove import finish_remove

        finish_remove(io, journal)
        return "finish"
    if journal.complete:
        jr.finish(io, journal)
        return "finish"
    jr.rollback(io, journal)
    return "rollback"


def _clear_stale(
    io: jr.StoreIO, stale: Journal | None, name: str, resume_key: str | None
) -> str | None:
    """Recover a dead run (keeping its finished chunks when it is the same job); drop other
    stashes."""
    recovered = None
    if stale is not None:
        same_job = bool(resume_key) and stale.resume_key == resume_key and stale.name == name
        if same_job and not stale.complete:
            rs.stash_finished(io, stale)
        recovered = recover_journal(io, stale)
    rs.drop_stash(io, keep=resume_key)
    jr.drop_backups(io)  # under the lock, with the journal dealt with: any backup left is an orphan
    return recovered


def _pending(stale: Journal | None, dry_run: bool) -> tuple[str | None, int | None]:
    """For a dry run before a dead run's recovery: what the recovery will do, and the channel
    count a rollback restores (``None`` when the plan can be made against the store as it is)."""
    if stale is None or not dry_run:
        return None, None
    pending = "finish" if stale.complete else "rollback"
    rollback_n = stale.n_channels if pending == "rollback" and stale.mode == "append" else None
    return pending, rollback_n


def _channels_now(plate: Plate, plan: WritePlan) -> list[dict[str, Any]]:
    """The omero entries of the first image, as the write will find them (added ones included)."""
    return list(plate.images[0].omero.get("channels") or []) or base_channels(
        plan.images[0].labels, plan.dtype
    )


def _target_color(channels: list[dict[str, Any]], record: Mapping[str, Any]) -> str:
    """The omero colour of the channel a prediction stands for (its provenance's
    ``target_channel``)."""
    target = record.get("target_channel")
    for ch in channels:
        own = str(ch.get("color", "")).upper()
        if target and ch.get("label") == target and re.fullmatch(r"[0-9A-F]{6}", own):
            return own
    return ""


def _pick_colors(
    color: str | None,
    channels: list[dict[str, Any]],
    plan: WritePlan,
    records: Sequence[Mapping[str, Any]] = (),
) -> tuple[str, ...]:
    """One colour per channel written: the colour asked for (the first channel); else an overwritten
    channel's own (so rerunning an overwrite changes nothing); else the colour of the channel it
    predicts (provenance ``target_channel``); an uncertainty channel (``uncertainty_of``) the
    contrast of its prediction's; else the first default colour unused."""
    if color is not None:
        asked = color.lstrip("#").upper()
        if not re.fullmatch(r"[0-9A-F]{6}", asked):
            raise InputError(
                f"Expected a colour as 6 hex digits (e.g. 'FF00FF'). Got {color!r} instead."
            )
    used = {str(ch.get("color", "")).upper() for ch in channels}
    out: list[str] = []
    for j, index in enumerate(plan.indices):
        replaced = plan.mode == "overwrite" and index < len(channels)
        own = str(channels[index].get("color", "")).upper() if replaced else ""
        record = records[j] if j < len(records) else {}
        if j == 0 and color is not None:
            pick = asked
        elif re.fullmatch(r"[0-9A-F]{6}", own):
            pick = own
        elif record.get("uncertainty_of") and out:
            pick = contrasting_color(out[0])
        elif _target_color(channels, record):
            pick = _target_color(channels, record)
        else:
            pick = next((c for c in DEFAULT_COLORS if c not in used), "FFFFFF")
        used.add(pick)
        out.append(pick)
    return tuple(out)


# -- the journal ------------------------------------------------------------------------
def _snapshot_docs(io: jr.StoreIO, plan: WritePlan) -> dict[str, str | None]:
    """Raw text of every metadata document the run may touch (``None``: absent)."""
    keys: list[str] = io.root_docs()
    for img in plan.images:
        keys += io.metadata_docs(img.path)
        for level in range(len(img.level_paths)):
            keys += io.metadata_docs(img.array_path(level))
    docs = {
        key: None if raw is None else raw.decode("utf-8") for key, raw in io.get_many(keys).items()
    }
    for key in consolidated_doc_keys([img.path for img in plan.images], io.zarr_format):
        raw = io.get(key) if key not in docs else None
        if (
            raw is not None
            and refresh_consolidated(json.loads(raw), io.zarr_format, lambda _: None) is not None
        ):
            docs[key] = raw.decode(
                "utf-8"
            )  # consolidated metadata the finish refreshes (a rollback restores it)
    return docs


def _new_journal(
    io: jr.StoreIO, plan: WritePlan, resume_key: str | None, run_id: str | None = None
) -> Journal:
    """The journal of a new run (phase ``started``); ``run_id``: the lock's."""
    docs = _snapshot_docs(io, plan)
    return Journal(
        run_id=run_id or uuid.uuid4().hex,
        writer=WriterIdentity.current(),
        started=datetime.now(UTC).isoformat(timespec="seconds"),
        heartbeat=time.time(),
        phase="started",
        mode=plan.mode,
        names=tuple(plan.names),
        channel_index=plan.channel_index,
        n_channels=plan.n_channels,
        zarr_format=io.zarr_format,
        images=tuple(
            ImageEntry(
                path=i.path,
                c_axis=i.c_axis,
                arrays=tuple(i.array_path(n) for n in range(len(i.level_paths))),
            )
            for i in plan.images
        ),
        docs=docs,
        consolidated=io.format.is_consolidated(docs),
        resume_key=resume_key,
        shared=plan.shared,
    )


def _set_phase(job: WriteJob, phase: str, **changes: Any) -> None:
    """Record the phase reached in the journal (after checking that the lock is still ours)."""
    if job.lock is not None:
        job.lock.ensure()
    job.journal.set_phase(phase, **changes)


# -- the run ----------------------------------------------------------------------------
def _write(job: WriteJob) -> AddChannelResult:
    """Take the journal and run the write phases, on the Dask client the job asks for."""
    with dask_client(job.where) as client, running(job.journal.record.run_id):
        job.journal.hold()
        return _run(
            job, _graph_runner(job.where, client, job.progress, remote=job.io.local_root is None)
        )


#: Dask threads of a local run on object storage (``OMELOC_IO_THREADS``): reads and writes of
#: regions wait on round trips, so more threads than cores keep them in flight while the model runs
#: (forward passes have one thread of their own, :mod:`omeloc.engine.forward`; memory grows with the
#: threads by one region each)
REMOTE_THREADS = 8


def _local_threads(remote: bool) -> int | None:
    """How many threads Dask's local scheduler runs (``None``: Dask's default, one per core)."""
    if not remote:
        return None
    return max(os.cpu_count() or 1, env_count("OMELOC_IO_THREADS", REMOTE_THREADS))


def _graph_runner(
    where: ComputeConfig, client: Any, progress: bool, remote: bool = False
) -> px.GraphRunner:
    """How the pixel graphs run: on ``client``, on a named local scheduler, or on Dask's default
    (with more threads than cores on object storage: :data:`REMOTE_THREADS`)."""
    threads = _local_threads(remote) if client is None else None

    def run(total: da.Array, desc: str) -> int:
        if client is None and where.local_scheduler is not None:
            # a named local scheduler runs without a progress bar, as it always has
            (value,) = compute_graph(total, scheduler=where.local_scheduler)
        else:
            with dask.config.set(num_workers=threads) if threads else contextlib.nullcontext():
                (value,) = compute_graph(total, client=client, progress=progress, desc=desc)
        return int(value)

    return run


def _run(job: WriteJob, run_graph: px.GraphRunner) -> AddChannelResult:
    """The phases after the journal; on any failure the store is rolled back and the error
    re-raised."""
    io, plan, journal = job.io, job.plan, job.journal
    try:
        nbytes = _write_phases(job, run_graph)
    except BaseException as err:
        # an interruption keeps the finished chunks for a rerun; bad data or a refused write
        # (omeloc's own errors, reported to the user by the caller) leaves the store exactly as it
        # was (a lost scheduler is an interruption too: the finished chunks are kept for the rerun)
        ours = isinstance(err, OmelocError) and not isinstance(err, SchedulerError)
        # a warning, not an error: the caller reports the error itself (the CLI in one line, also
        # under -q)
        logger.log(
            logging.INFO if ours else logging.WARNING,
            "add_channel %r failed: rolling back",
            plan.name,
        )
        if not px.stop_writes(journal.record.run_id):
            logger.warning(
                "pixel writes of run %s are still running; rolling back anyway",
                journal.record.run_id,
            )
        if not journal.record.complete and not ours:
            _try_stash(io, journal.record)
        _unskippable_rollback(job, err, quiet=ours)
        outage = None if ours else store_outage(err)
        if outage is not None:
            raise StoreFailedError(
                f"The object store of {io.url} kept failing while channel {plan.name!r} was "
                f"written ({outage}), after its client's retries; the plate was rolled back as it "
                "was. Rerun when the store answers again (the chunks already written are kept for "
                "the rerun)."
            ) from err
        if _disk_full(err):
            raise ReadOnlyStoreError(
                f"No space left on the device of {io.url} while writing channel {plan.name!r}; the "
                f"plate was rolled back as it was. Free space and rerun."
            ) from err
        raise
    _finish(job)
    seconds = time.perf_counter() - job.started
    logger.info("added channel %r to %d image(s) in %.1f s", plan.name, len(plan.images), seconds)
    return AddChannelResult(
        name=plan.name,
        channel_index=plan.channel_index,
        images=len(plan.images),
        levels=plan.levels,
        bytes_written=nbytes,
        seconds=seconds,
        recovered=job.recovered,
        notes=(omero_note(plan),) if plan.adds_omero else (),
    )


def _one_line(err: BaseException) -> str:
    return " ".join(f"{type(err).__name__}: {err}".split())[:200]


def _disk_full(err: BaseException | None) -> bool:
    """Whether ``err`` (or an error it was raised from) says the device is full."""
    seen = 0
    while err is not None and seen < 10:
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        err, seen = err.__cause__ or err.__context__, seen + 1
    return False


def _try_stash(io: jr.StoreIO, journal: Journal) -> None:
    """Keep the finished chunks for a rerun; if that fails (a full disk), the rollback goes on
    without them."""
    try:
        rs.stash_finished(io, journal)
    except Exception as err:  # noqa: BLE001 - any failure here must not skip the rollback
        logger.warning(
            "could not keep the finished chunks for a rerun (%s); rolling back without them",
            _one_line(err),
        )
        with contextlib.suppress(Exception):
            rs.drop_stash(io)


def _unskippable_rollback(job: WriteJob, err: BaseException, *, quiet: bool) -> None:
    """Roll back; when even that fails, say so in one line and how to finish it (the journal
    stays)."""
    try:
        jr.rollback(job.io, job.journal.record, quiet=quiet)
    except Exception as rb_err:
        full = _disk_full(err) or _disk_full(rb_err)
        fix = "Free space on its device" if full else "Make the store reachable and writable"
        raise ReadOnlyStoreError(
            f"Writing channel {job.plan.name!r} into {job.io.url} failed ({_one_line(err)}) and "
            f"the rollback could not finish ({_one_line(rb_err)}); the plate keeps its journal. "
            f"{fix}, then run `omeloc recover {job.io.url}`."
        ) from rb_err


def _finish(job: WriteJob) -> None:
    """Complete the run (consolidate, drop backup, stash and journal); a failure says how to
    finish it."""
    try:
        jr.finish(job.io, job.journal.record)
        rs.drop_stash(job.io)
    except Exception as err:
        raise ReadOnlyStoreError(
            f"Channel {job.plan.name!r} was written into {job.io.url} but completing the write "
            f"failed ({_one_line(err)}). Run `omeloc recover {job.io.url}` to finish it."
        ) from err


def _write_phases(job: WriteJob, run_graph: px.GraphRunner) -> int:
    """Back up (overwrite), resize and mark the omero entry, pixels, metadata: each phase
    journaled."""
    from omeloc import __version__

    io, plan, journal = job.io, job.plan, job.journal.record
    fault_point("journal")
    if plan.mode == "overwrite" or plan.shared:
        # files holding the old channel (or other virtual channels) are touched only once their
        # backup is complete, verified and journaled
        backup = jr.write_backup(io, journal.run_id, _channel_keys(io, plan, journal.docs))
        _set_phase(job, "backed_up", backup=backup)
    _resize_and_mark(io, plan, job.colors, journal.run_id)
    _set_phase(job, "resized")
    fault_point("resized")
    done = _restore_finished(io, plan, journal.resume_key)
    nbytes = px.write_pixels(plan, job.store, job.axes, run_graph, done)
    _set_phase(job, "pixels")
    windows = px.sample_windows(plan, job.store)
    records = [
        {
            **job.provenance[j],
            "virtual": True,
            "index": index,
            "dtype": plan.dtype,
            "omeloc_version": __version__,
            "run_id": journal.run_id,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "levels": plan.levels,
            **({"written_with": list(plan.names)} if plan.k > 1 else {}),
        }
        for j, index in enumerate(plan.indices)
    ]
    _write_metadata(io, plan, job.colors, windows, records)
    _set_phase(job, "complete")
    fault_point("complete")
    return nbytes


def _channel_keys(io: jr.StoreIO, plan: WritePlan, docs: Mapping[str, str | None]) -> list[str]:
    """Keys of the existing files the write rewrites (the storage units of the channels written
    along ``c``), at every level of every image: the replaced channel's, or a unit that holds
    other virtual channels."""
    keys = []
    for img in plan.images:
        for level in range(len(img.level_paths)):
            arr_rel = img.array_path(level)
            doc = json.loads(docs[io.array_doc(arr_rel)] or "{}")
            units = {i // img.write_blocks[level][img.c_axis] for i in plan.indices}
            for key in io.list(arr_rel):
                coords = chunk_coords(key[len(arr_rel) + 1 :] if arr_rel else key, doc)
                if coords is not None and coords[img.c_axis] in units:
                    keys.append(key)
    return keys


def _pending_entries(
    channels: list[dict[str, Any]], plan: WritePlan, colors: tuple[str, ...], run_id: str
) -> list[dict[str, Any]]:
    """The omero entries of the channels while they are written: inactive, marked with the run id,
    and for an append labelled ``"<name> (being written)"`` (a viewer shows what it is; the name
    is not yet taken)."""
    if plan.mode == "overwrite":
        return [{**channels[i], "active": False, PENDING_KEY: run_id} for i in plan.indices]
    template = dict(channels[-1]) if channels else {}
    window = template.get("window") or _full_window(plan.dtype)
    # a label of its own until the pixels are there: the name is not taken before the run completes
    return [
        {
            **template,
            "label": f"{name} (being written)",
            "color": color,
            "window": window,
            "active": False,
            PENDING_KEY: run_id,
        }
        for name, color in zip(plan.names, colors)
    ]


def base_channels(labels: tuple[str, ...], dtype: str) -> list[dict[str, Any]]:
    """The omero entries of an image that has none: ``labels`` (as omeloc reads them), palette
    colours."""
    return [
        {"label": label, "color": c, "window": _full_window(dtype), "active": True}
        for label, c in zip(labels, channel_colors(labels))
    ]


def _full_window(dtype: str) -> dict[str, float]:
    """An omero window spanning the whole range of ``dtype`` (0..1 for floats)."""
    hi = float(np.iinfo(dtype).max) if np.dtype(dtype).kind in "iu" else 1.0
    lo = float(np.iinfo(dtype).min) if np.dtype(dtype).kind in "iu" else 0.0
    return {"min": lo, "max": hi, "start": max(lo, 0.0), "end": hi}


def _resize_and_mark(io: jr.StoreIO, plan: WritePlan, colors: tuple[str, ...], run_id: str) -> None:
    """Per image: the omero entry (marked as being written) and every level's new shape, in
    concurrent rounds (the journal already names every document; a kill mid-round is rolled back
    like any other).

    Readers so see a channel count without its omero entry only while a round runs, never for
    a whole phase (two documents cannot change atomically).
    """
    io.write_json_many(_marked_docs(io, plan, colors, run_id))


def _marked_docs(
    io: jr.StoreIO, plan: WritePlan, colors: tuple[str, ...], run_id: str
) -> Iterator[tuple[str, dict[str, Any]]]:
    """The documents :func:`_resize_and_mark` writes, image by image (made as their round comes)."""
    for img in plan.images:
        attrs, ome = io.read_ngff(img.path)
        omero = dict(ome.get("omero") or {})
        channels = [dict(c) for c in omero.get("channels") or []] or base_channels(
            img.labels, plan.dtype
        )
        if img.labels:
            omero.setdefault(
                "rdefs", {"defaultT": 0, "defaultZ": 0, "model": "color"}
            )  # iohub requires them
        entries = _pending_entries(channels, plan, colors, run_id)
        if plan.mode == "overwrite":
            channels[plan.channel_index : plan.channel_index + plan.k] = entries
        else:
            channels.extend(entries)
        yield from io.ngff_edit(img.path, attrs, {"omero": {**omero, "channels": channels}}).items()
        if plan.mode == "overwrite":
            continue
        for level, shape in enumerate(img.shapes):
            key = io.array_doc(img.array_path(level))
            doc = io.read_json(key)
            doc["shape"] = list(shape)
            yield key, doc


def _restore_finished(
    io: jr.StoreIO, plan: WritePlan, resume_key: str | None
) -> dict[str, set[tuple[int, ...]]]:
    """Put back the chunks a killed run of the same job finished; the Dask blocks they cover."""
    if not resume_key or plan.mode != "append" or plan.k != 1:
        return {}
    arrays = [
        (img.array_path(0), io.read_json(io.array_doc(img.array_path(0)))) for img in plan.images
    ]
    present = rs.restore_finished(io, resume_key, arrays)
    done = {}
    for img in plan.images:
        have = present.get(img.array_path(0))
        if have:
            unit = plan.channel_index // img.write_blocks[0][img.c_axis]
            plane = rs.done_blocks(
                img.data.chunks[1:],
                without_axis(img.write_blocks[0], img.c_axis),
                img.c_axis,
                unit,
                have,
            )
            done[img.path] = {
                (0, *idx) for idx in plane
            }  # the data's leading axis: one block (the channel)
    n = sum(len(v) for v in done.values())
    if n:
        logger.info("resuming: %d finished block(s) kept from the interrupted run", n)
    return done


def _write_metadata(
    io: jr.StoreIO,
    plan: WritePlan,
    colors: tuple[str, ...],
    windows: list[dict[str, float]],
    provenance: list[dict[str, Any]],
) -> None:
    """The omero entries of the new channels, and their provenance under ``omeloc``, in every image
    (the first alone, then the others in concurrent rounds)."""
    docs = _finished_docs(io, plan, colors, windows, provenance)
    first = next(docs, None)
    if first is not None:  # a kill after the first image leaves the others to the recovery
        io.write_json_many([first])
        fault_point("metadata")
    io.write_json_many(docs)


def _finished_docs(
    io: jr.StoreIO,
    plan: WritePlan,
    colors: tuple[str, ...],
    windows: list[dict[str, float]],
    provenance: list[dict[str, Any]],
) -> Iterator[tuple[str, dict[str, Any]]]:
    """The documents :func:`_write_metadata` writes, image by image (made as their round comes)."""
    for img in plan.images:
        attrs, ome = io.read_ngff(img.path)
        omero = dict(ome.get("omero") or {})
        channels = [dict(c) for c in omero.get("channels") or []]
        for name, index, color, window, record in zip(
            plan.names, plan.indices, colors, windows, provenance
        ):
            pending = {k: v for k, v in channels[index].items() if k != PENDING_KEY}
            # an uncertainty channel starts hidden: added to its prediction it makes an unreadable
            # mixture
            active = not record.get("uncertainty_of")
            channels[index] = {
                **pending,
                "label": name,
                "color": color,
                "window": window,
                "active": active,
            }
        omero["channels"] = channels
        ours = dict(attrs.get("omeloc") or {})
        ours["channels"] = {**dict(ours.get("channels") or {}), **dict(zip(plan.names, provenance))}
        yield from io.ngff_edit(img.path, attrs, {"omero": omero}, omeloc=ours).items()
