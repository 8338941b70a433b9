"""The write-back journal: raw store access, crash detection, rollback and completion.

:func:`omeloc.writeback.protocol.add_channel` changes a plate in a fixed order (journal → resize →
pixels → metadata → consolidate → clear journal).  Before the first change it records, in
the plate's root attributes under ``omeloc_journal`` (outside the NGFF ``ome`` key), a
:class:`~omeloc.writeback.record.Journal`: the *raw bytes* of every metadata document it may
touch, the channel count, the name and the writer's identity (run id, pid, host, process
start time).  A run killed at any point is
then undone by :func:`rollback`: chunks of the new channel (and ``*.partial`` files a
killed local write leaves) are deleted and every metadata document is rewritten with its
original bytes, the root document last, which also removes the journal.  The tree is then
byte-for-byte what it was.  A run that got past its last pixel and metadata write
(phase ``complete``) is finished instead (:func:`finish`).

Metadata documents are read and written as raw JSON here, never through zarr's attribute
API, so nothing else in a document (consolidated metadata, unknown keys) is dropped.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zarr
from zarr.core.buffer import default_buffer_prototype
from zarr.core.buffer.cpu import Buffer
from zarr.core.sync import collect_aiterator, sync
from zarr.storage import LocalStore

from omeloc.errors import (
    ConcurrentWriteError,
    CorruptDataError,
    OmelocError,
    ReadOnlyStoreError,
    UnsafePathError,
)
from omeloc.ngff import format as fmt
from omeloc.ngff.format import (
    chunk_coords,
    consolidated_doc_keys,
    inside_root,
    join_path,
    refresh_consolidated,
    safe_key,
)
from omeloc.ngff.documents import DocumentCache
from omeloc.ngff.stores import cached_store, check_writable, gather_bounded, write_refusal
from omeloc.testing.faults import fault_point
from omeloc.writeback import identity
from omeloc.writeback.identity import (
    WriterIdentity,
    is_running_here,
    process_start_time,
    register,
    unregister,
)
from omeloc.writeback.record import JOURNAL_KEY, BackupSummary, Journal
from omeloc.writeback.validate import journal_doc, validate_journal

__all__ = [
    "ACTIVE_RUNS",
    "BACKUP_PREFIX",
    "JOURNAL_KEY",
    "Journal",
    "RunJournal",
    "StoreIO",
    "check_journal",
    "drop_backups",
    "finish",
    "is_partial",
    "process_start_time",
    "prune_empty_dirs",
    "rollback",
    "write_backup",
    "writer_alive",
    "writer_identity",
]

logger = logging.getLogger(__name__)

BACKUP_PREFIX = ".omeloc_backup"


class StoreIO:
    """Raw key access below a group (local path or fsspec URL), keys relative to it.

    Every key goes through :func:`~omeloc.ngff.format.safe_key` (no ``..``, no absolute
    path, ...), and on a local store its real path, symbolic links resolved, must stay inside
    the group's real folder (DESIGN invariant 7): a violation raises
    :class:`~omeloc.errors.UnsafePathError` before anything is read or written.  Listing
    follows symbolic links to folders that stay inside (zarr's own listing does not).
    """

    def __init__(self, url: str, storage_options: Mapping[str, Any] | None = None) -> None:
        check_writable(
            url
        )  # a zipped OME-Zarr is read-only: refused with the fix, before zarr opens it
        #: the raw metadata documents read and written through this object, each read once (cleared
        #: when the plate's lock is taken; see :mod:`omeloc.ngff.documents`)
        self.documents = DocumentCache()
        try:
            store = cached_store(url, storage_options, self.documents, mode="r+")
            group = zarr.open_group(store=store, mode="r+", use_consolidated=False)
        except (PermissionError, ValueError, NotImplementedError) as err:
            raise ReadOnlyStoreError(
                f"Cannot open {url} for writing ({type(err).__name__}: {err}). "
                f"Use a writable copy of the plate or fix its permissions."
            ) from err
        self.url = url
        self.store = group.store
        self.prefix = group.store_path.path.strip("/")
        self.zarr_format = group.metadata.zarr_format
        #: what differs between the store's format and the other (NGFF 0.4 / 0.5)
        self.format = fmt.store_format(self.zarr_format)
        if getattr(self.store, "read_only", False):
            raise ReadOnlyStoreError(f"Store {url} is read-only. Use a writable copy of the plate.")
        #: the group's folder on a local store (``None`` on other stores)
        #: the store itself, under the cache (its kind: local folder, fsspec, ...)
        self.backend = getattr(self.store, "_store", self.store)
        self.local_root: Path | None = (
            Path(self.backend.root, self.prefix) if isinstance(self.backend, LocalStore) else None
        )

    # -- bytes --------------------------------------------------------------------------
    def key(self, rel: str) -> str:
        """The store key of ``rel`` (a key relative to the group), refused when it may leave the
        group."""
        rel = safe_key(rel)
        if (
            self.local_root is not None
            and rel
            and not inside_root(self.local_root, self.local_root / rel)
        ):
            raise UnsafePathError(
                f"Refused the key {rel!r} of {self.url}: a symbolic link takes it to "
                f"{os.path.realpath(self.local_root / rel)}, outside the store. Remove the link or "
                "copy the plate."
            )
        return join_path("", self.prefix, rel)

    def get(self, rel: str, *, fresh: bool = False) -> bytes | None:
        """The bytes stored at ``rel``, ``None`` when there are none.

        A metadata document is read from the store once, then from :attr:`documents`;
        ``fresh`` reads it from the store again (a check of what another writer may have done).
        """
        key = self.key(rel)
        if fresh:
            self.documents.drop(key)
        buf = sync(self.store.get(key, prototype=default_buffer_prototype()))
        return None if buf is None else buf.to_bytes()

    def get_many(self, rels: Iterable[str]) -> dict[str, bytes | None]:
        """The bytes at every key of ``rels`` (``None``: absent), read concurrently, each once."""
        rels = list(dict.fromkeys(rels))
        keys = [self.key(rel) for rel in rels]

        async def one(key: str) -> Any:
            return await self.store.get(key, prototype=default_buffer_prototype())

        got = sync(gather_bounded(one, keys))
        return {rel: (None if buf is None else buf.to_bytes()) for rel, buf in zip(rels, got)}

    def set_many(self, items: Mapping[str, bytes]) -> None:
        """Store every ``rel → bytes`` of ``items``, concurrently; a refusal raises as :meth:`set`
        does."""
        keys = {self.key(rel): data for rel, data in items.items()}

        async def one(key: str) -> None:
            try:
                await self.store.set(key, Buffer.from_bytes(keys[key]))
            except Exception as err:  # any backend's refusal, re-raised with context
                raise write_refusal(err, f"Cannot write {key} in {self.url}", self.url) from err
            fault_point("batch_document")  # a kill half-way through a round (tests)

        if keys:
            sync(gather_bounded(one, list(keys)))

    def write_json_many(
        self, docs: Mapping[str, Mapping[str, Any]] | Iterable[tuple[str, Mapping[str, Any]]]
    ) -> None:
        """Write JSON documents (indented like zarr's own), concurrently, in rounds of
        :data:`WRITE_ROUND` documents: each is encoded when its round comes (a plate's edited
        documents as dicts would take ~150 kB per image at once)."""
        pairs = docs.items() if isinstance(docs, Mapping) else docs
        batch: dict[str, bytes] = {}
        for rel, doc in pairs:
            batch[rel] = _json_bytes(doc)
            if len(batch) >= WRITE_ROUND:
                self.set_many(batch)
                batch = {}
        self.set_many(batch)

    def set(self, rel: str, data: bytes) -> None:
        """Store ``data`` at ``rel``; a refusal of the store becomes a
        :class:`ReadOnlyStoreError`."""
        key = self.key(rel)
        try:
            sync(self.store.set(key, Buffer.from_bytes(data)))
        except (
            Exception
        ) as err:  # any backend's refusal (OSError, HTTP 4xx/5xx, ...) re-raised with context
            raise write_refusal(err, f"Cannot write {key} in {self.url}", self.url) from err

    def delete(self, rel: str) -> None:
        """Delete the key ``rel``."""
        sync(self.store.delete(self.key(rel)))

    def list(self, rel_prefix: str) -> list[str]:
        """Keys below ``rel_prefix`` (relative to this group), partial files included, sorted.

        On a local store, folders reached through symbolic links are listed too; they must
        stay inside the store (an escape, a loop or a second way into one folder is refused).
        """
        rel_prefix = safe_key(rel_prefix)
        if self.local_root is not None:
            return self._walk_local(rel_prefix)
        full = self.key(rel_prefix)
        keys = collect_aiterator(self.store.list_prefix(full + "/" if full else ""))
        strip = len(self.prefix) + 1 if self.prefix else 0
        listed = (k[strip:] for k in keys if not full or k.startswith(full + "/"))
        return sorted(
            safe_key(k, f"{self.url} lists the key", "Remove that object from the store.")
            for k in listed
        )

    def _walk_local(self, rel_prefix: str) -> list[str]:
        """Files below ``rel_prefix`` of a local store, following symbolic links that stay inside.

        One ``scandir`` per folder; a path is resolved only where a link is met (a folder's real
        path is its parent's and its name otherwise): ~45 % of a dry run's time on 3,456 images
        went into resolving every folder and file before.
        """
        root = self.local_root
        assert root is not None
        self.key(rel_prefix)  # the folder itself must stay inside
        real_root = os.path.realpath(root)
        start = root / rel_prefix if rel_prefix else root
        out: list[str] = []
        seen: set[str] = set()
        todo = [(str(start), os.path.realpath(start), rel_prefix or ".")]
        while todo:
            path, real, rel_dir = todo.pop()
            # ``real`` is resolved already (realpath at the start and at each link, a parent's
            # real path and a name otherwise): a comparison of names, no filesystem call
            if real != real_root and not real.startswith(real_root.rstrip(os.sep) + os.sep):
                self.key(rel_dir)  # raises: a linked folder leads outside
            if real in seen:
                raise UnsafePathError(
                    f"Refused to list {rel_prefix or '.'} of {self.url}: folder {rel_dir!r} is "
                    "reached a second time through symbolic links (a loop, or two keys for one "
                    "file). Remove the link or copy the plate."
                )
            seen.add(real)
            try:
                entries = list(os.scandir(path))
            except (FileNotFoundError, NotADirectoryError):
                continue
            for entry in entries:
                rel = entry.name if rel_dir == "." else f"{rel_dir}/{entry.name}"
                if entry.is_symlink():
                    if entry.is_dir():
                        todo.append((entry.path, os.path.realpath(entry.path), rel))
                        continue
                    self.key(rel)  # a linked file must stay inside too
                    if entry.is_file():
                        out.append(rel)
                elif entry.is_dir(follow_symlinks=False):
                    todo.append((entry.path, os.path.join(real, entry.name), rel))
                elif entry.is_file(follow_symlinks=False):
                    out.append(rel)
        return sorted(out)

    # -- JSON documents -----------------------------------------------------------------
    def attrs_doc(self, group_rel: str) -> str:
        """Key of the document holding a group's attributes."""
        return join_path("", group_rel, self.format.attrs_doc)

    def array_doc(self, array_rel: str) -> str:
        """Key of the document describing an array."""
        return join_path("", array_rel, self.format.array_doc)

    def read_json(self, rel: str, *, fresh: bool = False) -> dict[str, Any] | None:
        """The JSON document at ``rel``, ``None`` when there is none (``fresh``: see
        :meth:`get`)."""
        raw = self.get(rel, fresh=fresh)
        return None if raw is None else json.loads(raw)

    def write_json(self, rel: str, doc: Mapping[str, Any]) -> None:
        """Write a JSON document (indented like zarr's own)."""
        self.set(rel, _json_bytes(doc))

    def read_attrs(self, group_rel: str, *, fresh: bool = False) -> dict[str, Any]:
        """All attributes of a group, read from its raw document (``fresh``: see :meth:`get`)."""
        return self.format.attributes_in(
            self.read_json(self.attrs_doc(group_rel), fresh=fresh) or {}
        )

    def read_ngff(self, group_rel: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """A group's attributes and, within them, its NGFF metadata (see
        :mod:`omeloc.ngff.format`)."""
        attrs = self.read_attrs(group_rel)
        return attrs, self.format.ngff_attrs(attrs)

    def update_attrs(
        self, group_rel: str, updates: Mapping[str, Any], remove: Iterable[str] = ()
    ) -> None:
        """Set (and remove) top-level attributes of a group, keeping the rest of its document."""
        updates = dict(updates)
        if isinstance(updates.get(JOURNAL_KEY), Journal):
            updates[JOURNAL_KEY] = updates[JOURNAL_KEY].to_json()  # sealed: a fresh digest
        elif isinstance(updates.get(JOURNAL_KEY), dict):
            journal_doc(updates[JOURNAL_KEY])  # every write of the journal carries a fresh digest
        for key, doc in self.edited_attrs(group_rel, updates, remove).items():
            self.write_json(key, doc)

    def edited_attrs(
        self, group_rel: str, updates: Mapping[str, Any], remove: Iterable[str] = ()
    ) -> dict[str, dict[str, Any]]:
        """``{key: document}``: a group's document with top-level attributes set (and removed), not
        written."""
        key = self.attrs_doc(group_rel)
        doc = self.read_json(key) or self.format.new_group_doc()
        attrs = self.format.attributes_to_edit(doc)
        attrs.update(updates)
        for name in remove:
            attrs.pop(name, None)
        return {key: doc}

    def ngff_edit(
        self, group_rel: str, attrs: Mapping[str, Any], changes: Mapping[str, Any], **other: Any
    ) -> dict[str, dict[str, Any]]:
        """What :meth:`update_ngff` would write, as ``{key: document}`` (for
        :meth:`write_json_many`)."""
        return self.edited_attrs(group_rel, {**self.format.ngff_updates(attrs, changes), **other})

    def update_ngff(
        self, group_rel: str, attrs: Mapping[str, Any], changes: Mapping[str, Any], **other: Any
    ) -> None:
        """Set NGFF keys ``changes`` (and other top-level attributes) of a group whose attributes
        are ``attrs``."""
        self.update_attrs(group_rel, {**self.format.ngff_updates(attrs, changes), **other})

    def metadata_docs(self, rel: str) -> list[str]:
        """Every metadata document key of a node (existing or not) that a write may touch."""
        return [join_path("", rel, name) for name in self.format.metadata_docs]

    def root_docs(self) -> list[str]:
        """The root's metadata document keys, the separate consolidated metadata included."""
        extra = self.format.consolidated_doc
        return self.metadata_docs("") + ([extra] if extra else [])


#: documents per concurrent round of :meth:`StoreIO.write_json_many` (memory bounded by the round,
#: not the plate)
WRITE_ROUND = 256


def _json_bytes(doc: Mapping[str, Any]) -> bytes:
    return json.dumps(doc, indent=2, allow_nan=False).encode("utf-8")


def is_partial(key: str) -> bool:
    """Whether ``key`` is a ``*.partial`` file a killed local write left behind."""
    return key.endswith(".partial")


class _ActiveRuns:
    """The live runs of this process, as the set it once was (``add``, ``discard``, ``in``): kept
    for code written against it; it is the registry of :mod:`omeloc.writeback.identity`."""

    def add(self, run_id: str) -> None:
        register(run_id)

    def discard(self, run_id: str) -> None:
        if is_running_here(run_id):
            unregister(run_id)

    def __contains__(self, run_id: object) -> bool:
        return isinstance(run_id, str) and is_running_here(run_id)


#: run ids of write-backs running in this process (a journal of ours is not "dead")
ACTIVE_RUNS = _ActiveRuns()


def writer_alive(journal: Mapping[str, Any], stale_after: float) -> bool:
    """Whether the writer a journal's JSON names may still run: the one rule of
    :func:`omeloc.writeback.identity.writer_alive` (a garbled identity: no, its validation
    decides)."""
    return _raw_writer_alive(journal, stale_after)


def writer_identity() -> dict[str, Any]:
    """This process, as a journal records its writer (the JSON of :class:`WriterIdentity`)."""
    return WriterIdentity.current().to_json()


def write_journal(io: StoreIO, journal: Journal) -> None:
    """Write ``journal`` into the root attributes (sealed with a fresh digest)."""
    io.update_attrs("", {JOURNAL_KEY: journal})


class RunJournal:
    """The journal of a running write: its current record, each change written into the plate.

    Parameters
    ----------
    io : StoreIO
        Raw access to the plate written.
    record : Journal
        The journal as the run begins (phase ``started``).
    """

    def __init__(self, io: StoreIO, record: Journal) -> None:
        self.io = io
        self.record = record

    def hold(self) -> None:
        """Write the journal into the root attributes, and check that it is ours that stayed
        there."""
        write_journal(self.io, self.record)
        held = (
            self.io.read_attrs("", fresh=True).get(JOURNAL_KEY) or {}
        )  # what the store holds, not our cache
        if not isinstance(held, Mapping) or held.get("run_id") != self.record.run_id:
            other = held.get("run_id") if isinstance(held, Mapping) else None
            raise ConcurrentWriteError(
                f"Another omeloc run ({other}) took the journal of {self.io.url} at the same time. "
                f"Wait for it to finish and retry."
            )

    def set_phase(self, phase: str, **changes: Any) -> None:
        """Record the phase reached (and ``changes`` to other fields), with a fresh heartbeat."""
        self.record = self.record.at_phase(phase, **changes)
        write_journal(self.io, self.record)
        logger.debug("journal phase %s", phase)


def check_journal(io: StoreIO, *, stale_after: float, force: bool = False) -> Journal | None:
    """The journal of a dead run (to recover), ``None`` if there is none; raise if a writer is live.

    Whether the writer lives is decided first, from its identity alone (a live writer's journal
    is not ours to judge); the journal of a dead one is then checked in full before anything
    acts on it (:func:`~omeloc.writeback.validate.validate_journal`).
    """
    journal = io.read_attrs("").get(JOURNAL_KEY)
    if not journal:
        return None
    if not isinstance(journal, Mapping):
        validate_journal(io, journal)  # raises: not a journal
    if not force and _raw_writer_alive(journal, stale_after):
        run_id, pid, host, started = (
            " ".join(str(journal.get(k)).split())[:64] for k in ("run_id", "pid", "host", "started")
        )
        raise ConcurrentWriteError(
            f"{io.url} is being written by omeloc run {run_id} (pid {pid} on {host}, channel "
            f"{str(journal.get('name'))[:64]!r}, since {started}). Wait for it to finish; if it is "
            f"dead, run `omeloc recover {io.url} --force`."
        )
    return validate_journal(io, journal)  # a plate is untrusted input: check before acting on it


def _raw_writer_alive(journal: Mapping[str, Any], stale_after: float) -> bool:
    """Whether the writer a journal names may still run (a garbled identity: no, validation
    decides)."""
    writer, run_id, heartbeat = (
        WriterIdentity.from_json(journal),
        journal.get("run_id"),
        journal.get("heartbeat", 0),
    )
    if writer is None or not isinstance(run_id, str):
        return False
    try:
        beat = float(heartbeat)
    except (TypeError, ValueError):
        return False
    return identity.writer_alive(writer, run_id, beat, stale_after=stale_after)


# -- recovery ---------------------------------------------------------------------------
@dataclass(frozen=True)
class _ArrayInfo:
    rel: str
    doc: dict[str, Any]
    c_axis: int

    @property
    def c_block(self) -> int:
        """Size along c of the array's storage unit (the shard when sharded)."""
        return fmt.storage_block(self.doc)[self.c_axis]


def _arrays(journal: Journal) -> list[_ArrayInfo]:
    doc_name = fmt.store_format(journal.zarr_format).array_doc
    return [
        _ArrayInfo(
            rel=rel,
            doc=json.loads(journal.docs[join_path("", rel, doc_name)] or "{}"),
            c_axis=img.c_axis,
        )
        for img in journal.images
        for rel in img.arrays
    ]


def _delete_new_chunks(io: StoreIO, journal: Journal) -> int:
    """Delete the storage units the run wrote (the new channel's, backed-up ones included) and every
    partial file.

    An append writes the units at and after ``n_channels // k`` along ``c`` (``k`` channels per
    unit), an overwrite the units of channels ``channel_index`` to ``channel_index + len(names)``;
    a unit that held other (virtual) channels before the run is in the backup, which
    :func:`rollback` puts back afterwards.
    """
    n_c, index = journal.n_channels, journal.channel_index
    written = range(index, index + len(journal.names))
    removed = 0
    for arr in _arrays(journal):
        first_new = n_c // arr.c_block if journal.mode == "append" else None
        units = {i // arr.c_block for i in written}
        for key in io.list(arr.rel):
            rel_key = key[len(arr.rel) + 1 :]
            if is_partial(key):
                io.delete(key)
                removed += 1
                continue
            coords = chunk_coords(rel_key, arr.doc)
            if coords is None:
                continue
            c = coords[arr.c_axis]
            if (first_new is not None and c >= first_new) or (first_new is None and c in units):
                io.delete(key)
                removed += 1
    return removed


def _backup_root(journal: Journal) -> str:
    return join_path("", BACKUP_PREFIX, journal.run_id)


def _manifest_key(run_id: str) -> str:
    """The backup's manifest: next to (not inside) the backup, so restoring never writes it into
    the plate."""
    return join_path("", BACKUP_PREFIX, f"{run_id}.manifest.json")


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_backup(io: StoreIO, run_id: str, keys: Iterable[str]) -> BackupSummary:
    """Copy the chunk ``keys`` into the run's backup, verified, with a manifest; the summary for the
    journal.

    Every copy is read back and compared with the original before the manifest (key → size
    and sha256) is written; the journal then records the manifest's digest together with the
    phase ``backed_up``.  Only after that may the original chunks be touched.

    Raises
    ------
    CorruptDataError
        A copy does not read back as written (the store lost or changed it).
    """
    root = join_path("", BACKUP_PREFIX, run_id)
    files: dict[str, dict[str, Any]] = {}
    for key in keys:
        data = io.get(key)
        if data is None:
            continue
        io.set(join_path("", root, key), data)
        files[key] = {"size": len(data), "sha256": _digest(data)}
        fault_point("backup_file")
    bad = _bad_backup_files(io, root, files)
    if bad:
        raise CorruptDataError(
            f"The backup of {bad[0]} in {io.url} does not read back as written ({len(bad)} "
            "file(s)); the channel was not touched. Check the store (disk full or failing?) and "
            "retry."
        )
    manifest = json.dumps({"run_id": run_id, "files": files}, sort_keys=True).encode("utf-8")
    io.set(_manifest_key(run_id), manifest)
    return BackupSummary(
        files=len(files), bytes=sum(f["size"] for f in files.values()), manifest=_digest(manifest)
    )


def _bad_backup_files(io: StoreIO, root: str, files: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Keys whose backup copy is missing or differs from its manifest entry."""
    bad = []
    for key, want in files.items():
        data = io.get(join_path("", root, key))
        if data is None or len(data) != want["size"] or _digest(data) != want["sha256"]:
            bad.append(key)
    return bad


def _verified_manifest(io: StoreIO, journal: Journal) -> dict[str, Any]:
    """The backup manifest of a run at ``backed_up`` or later, checked against the journal and the
    files.

    Raises
    ------
    CorruptDataError
        The manifest or a backed-up file is missing or altered: nothing may be deleted.
    """
    raw = io.get(_manifest_key(journal.run_id))
    problem = None
    if raw is None or journal.backup is None or _digest(raw) != journal.backup.manifest:
        problem = "its manifest is missing or altered"
    else:
        files = json.loads(raw)["files"]
        arrays = tuple(a + "/" for img in journal.images for a in img.arrays)
        outside = [k for k in files if not k.startswith(arrays)]
        bad = outside or _bad_backup_files(io, _backup_root(journal), files)
        if bad:
            problem = (
                f"{len(bad)} backed-up file(s) are missing, altered or outside the channel "
                f"({bad[0]})"
            )
    if problem:
        raise CorruptDataError(
            f"Cannot roll back omeloc run {journal.run_id} in {io.url}: the backup of channel "
            f"{journal.name!r} is not intact ({problem}), so nothing was deleted. Restore the "
            "plate from a copy."
        )
    return files


def _restore_backup(io: StoreIO, journal: Journal, files: Mapping[str, Any]) -> None:
    root = _backup_root(journal)
    for key in files:
        data = io.get(join_path("", root, key))
        if data is not None:
            io.set(key, data)


def _drop_backup(io: StoreIO, journal: Journal) -> None:
    for key in io.list(_backup_root(journal)):
        io.delete(key)
    if io.get(_manifest_key(journal.run_id)) is not None:
        io.delete(_manifest_key(journal.run_id))
    prune_empty_dirs(io, BACKUP_PREFIX)


def drop_backups(io: StoreIO) -> int:
    """Delete every backup file and manifest (left by interrupted runs); the number deleted."""
    keys = io.list(BACKUP_PREFIX)
    for key in keys:
        io.delete(key)
    prune_empty_dirs(io, BACKUP_PREFIX)
    return len(keys)


def prune_empty_dirs(io: StoreIO, prefix: str) -> None:
    """Remove the empty directories below (and of) omeloc's own ``prefix`` in a local store.

    Deleting keys leaves their directories behind in zarr's LocalStore, and zarr warns about
    every unknown directory when it lists the root's members.  Object stores have no
    directories: nothing to do there.
    """
    if not isinstance(io.backend, LocalStore) or not prefix.startswith(".omeloc"):
        return
    top = Path(io.backend.root) / io.key(prefix)
    if not top.is_dir() or top.is_symlink():
        return
    for folder in sorted(
        (p for p in top.rglob("*") if p.is_dir() and not p.is_symlink()),
        key=lambda p: len(p.parts),
        reverse=True,
    ):
        with contextlib.suppress(OSError):
            folder.rmdir()  # only succeeds when empty
    with contextlib.suppress(OSError):
        top.rmdir()


def _backs_up(journal: Journal) -> bool:
    """Whether the run keeps a backup: an overwrite always, an append that rewrites a unit of
    virtual channels."""
    return journal.mode == "overwrite" or journal.shared


def _channel_touched(journal: Journal) -> bool:
    """Whether the run may have changed chunks: one that keeps a backup only after the backup was
    verified."""
    return not _backs_up(journal) or journal.phase != "started"


def _undo_chunks(io: StoreIO, journal: Journal) -> None:
    """Delete the run's chunks (and partial files) and put back the backed-up files; record it."""
    files = _verified_manifest(io, journal) if _backs_up(journal) else {}
    removed = _delete_new_chunks(io, journal)
    _restore_backup(io, journal, files)
    logger.info("rollback removed %d chunk/partial files", removed)
    try:
        io.update_attrs("", {JOURNAL_KEY: journal.replace(chunks_restored=True)})
    except (
        OmelocError
    ) as err:  # e.g. a full disk: deleting and restoring again on the next try is harmless
        logger.warning("could not record the restored chunks in the journal (%s); continuing", err)


def rollback(io: StoreIO, journal: Journal | Mapping[str, Any], *, quiet: bool = False) -> None:
    """Undo a run described by ``journal``: the tree becomes byte-for-byte what it was.

    The phase tells what the run may have touched: an overwrite killed before its backup was
    complete and verified (phase ``started``) never touched the channel, so only the partial
    backup is deleted.  ``quiet`` logs at INFO instead of WARNING (the caller reports the
    failure itself).  Each step can be repeated, so a rollback that fails (a full disk) or is
    killed is finished by the next :func:`omeloc.recover`; the journal goes last.
    """
    journal = validate_journal(
        io, journal
    )  # untrusted input: refused unless it names only this plate's keys
    logger.log(
        logging.INFO if quiet else logging.WARNING,
        "rolling back omeloc run %s (channel %r) in %s",
        journal.run_id,
        journal.name,
        io.url,
    )
    if not journal.chunks_restored and _channel_touched(journal):
        _undo_chunks(io, journal)
    _drop_backup(io, journal)
    fault_point("rollback_docs")
    root_docs = set(io.root_docs())
    docs = journal.docs
    delete_partial_documents(io, docs)
    others = {rel: text for rel, text in docs.items() if rel not in root_docs}
    # one concurrent round (on object storage each document is a round trip); every one is
    # repeatable
    io.set_many({rel: text.encode("utf-8") for rel, text in others.items() if text is not None})
    for rel, text in others.items():
        if text is None:
            _restore_doc(io, rel, None)
    for rel in sorted(root_docs & set(docs), key=lambda r: r == io.attrs_doc("")):
        _restore_doc(io, rel, docs[rel])  # the attributes document last: it removes the journal


def delete_partial_documents(io: StoreIO, docs: Iterable[str]) -> int:
    """Delete the ``*.partial`` files beside the documents ``docs`` (a local store only): what a
    write of a document killed half-way leaves (zarr's local store writes a partial file, then
    renames it)."""
    if io.local_root is None:
        return 0
    removed = 0
    for folder in sorted({rel.rsplit("/", 1)[0] if "/" in rel else "" for rel in docs}):
        path = io.local_root / folder if folder else io.local_root
        io.key(folder)  # the folder stays inside the store
        with contextlib.suppress(OSError):
            for entry in os.scandir(path):
                if is_partial(entry.name) and entry.is_file(follow_symlinks=False):
                    io.delete(join_path("", folder, entry.name))
                    removed += 1
    return removed


def _restore_doc(io: StoreIO, rel: str, text: str | None) -> None:
    if text is None:
        if io.get(rel) is not None:
            io.delete(rel)
    else:
        io.set(rel, text.encode("utf-8"))


def finish(io: StoreIO, journal: Journal | Mapping[str, Any]) -> None:
    """Complete a run whose pixels and metadata are all written (phase ``complete``).

    Every consolidated-metadata document that covers a changed image (its own group, its
    well, row and the root; Zarr v2 ``.zmetadata``, v3 ``consolidated_metadata``) is
    refreshed from the current documents, deepest first; the root's last, in the same write
    that removes the journal (v3) or just before it (v2, where ``.zmetadata`` is separate
    and copies the root attributes, journal left out).  Each step can be repeated: a finish
    that is killed is finished again by the next :func:`omeloc.recover`.
    """
    journal = validate_journal(
        io, journal
    )  # untrusted input: refused unless it names only this plate's keys
    delete_partial_documents(io, journal.docs)  # a round of document writes killed half-way
    _drop_backup(io, journal)
    keys = consolidated_doc_keys([img.path for img in journal.images], io.zarr_format)
    root_attrs = io.attrs_doc("")
    for key in keys:
        if key not in io.root_docs():
            _refresh_doc(io, key)
    separate = io.format.consolidated_doc
    if separate is not None:
        _refresh_doc(io, separate)
        io.update_attrs("", {}, remove=[JOURNAL_KEY])
        return
    doc = io.read_json(root_attrs) or io.format.new_group_doc()
    io.format.attributes_to_edit(doc).pop(JOURNAL_KEY, None)
    fresh = refresh_consolidated(
        doc, io.zarr_format, lambda rel: _read_without_journal(io, rel, root_attrs)
    )
    io.write_json(root_attrs, fresh if fresh is not None else doc)


def _read_without_journal(io: StoreIO, rel: str, root_attrs: str) -> dict[str, Any] | None:
    """A document as it will be once the run is finished: the root attributes without the
    journal."""
    doc = io.read_json(rel)
    if doc is not None and rel == root_attrs:
        io.format.attributes_to_edit(doc).pop(JOURNAL_KEY, None)
    return doc


def _refresh_doc(io: StoreIO, key: str) -> None:
    """Rewrite the consolidated-metadata document ``key`` from the current documents, when that
    changes it."""
    doc = io.read_json(key)
    base = key.rsplit("/", 1)[0] if "/" in key else ""
    root_attrs = io.attrs_doc("")
    fresh = refresh_consolidated(
        doc,
        io.zarr_format,
        lambda rel: _read_without_journal(io, join_path("", base, rel), root_attrs),
    )
    if fresh is not None and fresh != doc:
        io.write_json(key, fresh)
