"""The write-back journal: raw store access, crash detection, rollback and completion.

:func:`omeloc.writeback.protocol.add_channel` changes a plate in a fixed order (journal → resize →
pixels → metadata → consolidate → clear journal).  Before the first change it records, in
the plate's root attributes under ``omeloc_journal`` (outside the NGFF ``ome`` key), the
*raw bytes* of every metadata document it may touch, the channel count, the name and the
writer's identity (run id, pid, host, process start time).  A run killed at any point is
then undone by :func:`rollback`: chunks of the new channel (and ``*.partial`` files a
killed local write leaves) are deleted and every metadata document is rewritten with its
original bytes, the root document last, which also removes the journal.  The tree is then
byte-for-byte what it was.  A run that got past its last pixel and metadata write
(phase ``complete``) is finished instead (:func:`finish`).

Metadata documents are read and written as raw JSON here, never through zarr's attribute
API, so nothing else in a document (consolidated metadata, unknown keys) is dropped.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import zarr
from zarr.core.buffer import default_buffer_prototype
from zarr.core.buffer.cpu import Buffer
from zarr.core.sync import collect_aiterator, sync

from omeloc.errors import ConcurrentWriteError, ReadOnlyStoreError

__all__ = [
    "JOURNAL_KEY",
    "StoreIO",
    "chunk_coords",
    "writer_alive",
    "rollback",
    "finish",
    "BACKUP_PREFIX",
]

logger = logging.getLogger(__name__)

JOURNAL_KEY = "omeloc_journal"
BACKUP_PREFIX = ".omeloc_backup"
_META_NAMES = frozenset({"zarr.json", ".zattrs", ".zarray", ".zgroup", ".zmetadata"})

#: run ids of add_channel calls running in this process (a journal of ours is not "dead")
ACTIVE_RUNS: set[str] = set()


def _join(*parts: str) -> str:
    return "/".join(p.strip("/") for p in parts if p and p.strip("/"))


class StoreIO:
    """Raw key access below a group (local path or fsspec URL), keys relative to it."""

    def __init__(self, url: str, storage_options: Mapping[str, Any] | None = None) -> None:
        kwargs: dict[str, Any] = {"mode": "r+", "use_consolidated": False}
        if storage_options:
            kwargs["storage_options"] = dict(storage_options)
        try:
            group = zarr.open_group(url, **kwargs)
        except (PermissionError, ValueError, NotImplementedError) as err:
            raise ReadOnlyStoreError(
                f"Cannot open {url} for writing ({type(err).__name__}: {err}). "
                f"Use a writable copy of the plate or fix its permissions."
            ) from err
        self.url = url
        self.store = group.store
        self.prefix = group.store_path.path.strip("/")
        self.zarr_format = group.metadata.zarr_format
        if getattr(self.store, "read_only", False):
            raise ReadOnlyStoreError(f"Store {url} is read-only. Use a writable copy of the plate.")

    # -- bytes --------------------------------------------------------------------------
    def key(self, rel: str) -> str:
        return _join(self.prefix, rel)

    def get(self, rel: str) -> bytes | None:
        buf = sync(self.store.get(self.key(rel), prototype=default_buffer_prototype()))
        return None if buf is None else buf.to_bytes()

    def set(self, rel: str, data: bytes) -> None:
        try:
            sync(self.store.set(self.key(rel), Buffer.from_bytes(data)))
        except Exception as err:  # any backend's refusal (OSError, HTTP 4xx/5xx, ...) re-raised with context
            raise ReadOnlyStoreError(
                f"Cannot write {self.key(rel)} in {self.url} ({type(err).__name__}: {str(err)[:120]}). "
                f"The store is read-only or unreachable: use a writable copy of the plate or fix its permissions."
            ) from err

    def delete(self, rel: str) -> None:
        sync(self.store.delete(self.key(rel)))

    def list(self, rel_prefix: str) -> list[str]:
        """Keys below ``rel_prefix`` (relative to this group), partial files included."""
        full = self.key(rel_prefix)
        keys = collect_aiterator(self.store.list_prefix(full + "/" if full else ""))
        strip = len(self.prefix) + 1 if self.prefix else 0
        out = []
        for k in keys:
            if full and not k.startswith(full + "/"):
                continue
            out.append(k[strip:])
        return sorted(out)

    # -- JSON documents -----------------------------------------------------------------
    def attrs_doc(self, group_rel: str) -> str:
        """Key of the document holding a group's attributes."""
        return _join(group_rel, "zarr.json" if self.zarr_format == 3 else ".zattrs")

    def array_doc(self, array_rel: str) -> str:
        return _join(array_rel, "zarr.json" if self.zarr_format == 3 else ".zarray")

    def read_json(self, rel: str) -> dict[str, Any] | None:
        raw = self.get(rel)
        return None if raw is None else json.loads(raw)

    def write_json(self, rel: str, doc: Mapping[str, Any]) -> None:
        self.set(rel, json.dumps(doc, indent=2, allow_nan=False).encode("utf-8"))

    def read_attrs(self, group_rel: str) -> dict[str, Any]:
        doc = self.read_json(self.attrs_doc(group_rel)) or {}
        return dict(doc.get("attributes") or {}) if self.zarr_format == 3 else dict(doc)

    def update_attrs(self, group_rel: str, updates: Mapping[str, Any], remove: Iterable[str] = ()) -> None:
        """Set (and remove) top-level attributes of a group, keeping the rest of its document."""
        key = self.attrs_doc(group_rel)
        doc = self.read_json(key) or ({"zarr_format": 3, "node_type": "group"} if self.zarr_format == 3 else {})
        attrs = doc.setdefault("attributes", {}) if self.zarr_format == 3 else doc
        attrs.update(updates)
        for name in remove:
            attrs.pop(name, None)
        self.write_json(key, doc)

    def metadata_docs(self, rel: str) -> list[str]:
        """Every metadata document key of a node (existing or not) that a write may touch."""
        if self.zarr_format == 3:
            return [_join(rel, "zarr.json")]
        return [_join(rel, n) for n in (".zattrs", ".zarray", ".zgroup")]


def is_partial(key: str) -> bool:
    return key.endswith(".partial")


def chunk_coords(rel_key: str, array_doc: Mapping[str, Any]) -> tuple[int, ...] | None:
    """Chunk (or shard) grid coordinates of a key relative to its array, ``None`` if not a chunk."""
    name = rel_key.rsplit("/", 1)[-1]
    if name in _META_NAMES or is_partial(rel_key):
        return None
    if array_doc.get("zarr_format") == 3:
        enc = array_doc.get("chunk_key_encoding") or {"name": "default"}
        sep = (enc.get("configuration") or {}).get("separator", "/" if enc.get("name") == "default" else ".")
        if enc.get("name") == "default":
            if not rel_key.startswith("c"):
                return None
            rel_key = rel_key[1:].lstrip(sep)
    else:
        sep = array_doc.get("dimension_separator") or "."
    try:
        return tuple(int(p) for p in rel_key.split(sep))
    except ValueError:
        return None


def _proc_start(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def writer_identity() -> dict[str, Any]:
    pid = os.getpid()
    return {"pid": pid, "host": socket.gethostname(), "pid_start": _proc_start(pid)}


def writer_alive(journal: Mapping[str, Any], stale_after: float) -> bool:
    """Whether the run that wrote ``journal`` may still be running."""
    if journal.get("run_id") in ACTIVE_RUNS:
        return True
    pid = int(journal.get("pid", -1))
    if journal.get("host") == socket.gethostname():
        if pid == os.getpid():
            return False  # our own process, but not an active run: a call that died half-way
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        start = journal.get("pid_start")
        return start is None or start == _proc_start(pid)
    return time.time() - float(journal.get("heartbeat", 0)) < stale_after


def check_journal(io: StoreIO, *, stale_after: float, force: bool = False) -> dict[str, Any] | None:
    """The journal of a dead run (to recover), ``None`` if there is none; raise if a writer is live."""
    journal = io.read_attrs("").get(JOURNAL_KEY)
    if not journal:
        return None
    if not force and writer_alive(journal, stale_after):
        raise ConcurrentWriteError(
            f"{io.url} is being written by omeloc run {journal.get('run_id')} (pid {journal.get('pid')} on "
            f"{journal.get('host')}, channel {journal.get('name')!r}, since {journal.get('started')}). Wait for it "
            f"to finish; if it is dead, call omeloc.recover({io.url!r}, force=True)."
        )
    return dict(journal)


# -- recovery ---------------------------------------------------------------------------
@dataclass(frozen=True)
class _ArrayInfo:
    rel: str
    doc: dict[str, Any]
    c_axis: int

    @property
    def c_block(self) -> int:
        """Size along c of the array's storage unit (the shard when sharded)."""
        if self.doc.get("zarr_format") == 3:
            return int(self.doc["chunk_grid"]["configuration"]["chunk_shape"][self.c_axis])
        return int(self.doc["chunks"][self.c_axis])


def _arrays(journal: Mapping[str, Any]) -> list[_ArrayInfo]:
    doc_name = "zarr.json" if journal["zarr_format"] == 3 else ".zarray"
    return [
        _ArrayInfo(rel=rel, doc=json.loads(journal["docs"][_join(rel, doc_name)]), c_axis=int(img["c_axis"]))
        for img in journal["images"]
        for rel in img["arrays"]
    ]


def _delete_new_chunks(io: StoreIO, journal: Mapping[str, Any]) -> int:
    """Delete chunks at/after the original channel count (append) and every partial file."""
    n_c = int(journal["n_channels"])
    k = int(journal["channel_index"])
    removed = 0
    for arr in _arrays(journal):
        first_new = n_c // arr.c_block if journal["mode"] == "append" else None
        for key in io.list(arr.rel):
            rel_key = key[len(arr.rel) + 1:]
            if is_partial(key):
                io.delete(key)
                removed += 1
                continue
            coords = chunk_coords(rel_key, arr.doc)
            if coords is None:
                continue
            c = coords[arr.c_axis]
            if (first_new is not None and c >= first_new) or (first_new is None and c == k):
                io.delete(key)
                removed += 1
    return removed


def _backup_root(journal: Mapping[str, Any]) -> str:
    return _join(BACKUP_PREFIX, journal["run_id"])


def _restore_backup(io: StoreIO, journal: Mapping[str, Any]) -> None:
    root = _backup_root(journal)
    for key in io.list(root):
        if is_partial(key):
            continue
        data = io.get(key)
        if data is not None:
            io.set(key[len(root) + 1:], data)


def _drop_backup(io: StoreIO, journal: Mapping[str, Any]) -> None:
    for key in io.list(_backup_root(journal)):
        io.delete(key)


def rollback(io: StoreIO, journal: Mapping[str, Any], *, quiet: bool = False) -> None:
    """Undo a run described by ``journal``: the tree becomes byte-for-byte what it was.

    ``quiet`` logs at INFO instead of WARNING (the caller reports the failure itself).
    """
    logger.log(logging.INFO if quiet else logging.WARNING, "rolling back omeloc run %s (channel %r) in %s",
               journal["run_id"], journal["name"], io.url)
    journal = dict(journal)
    if not journal.get("chunks_restored"):
        removed = _delete_new_chunks(io, journal)
        if journal["mode"] == "overwrite":
            _restore_backup(io, journal)
        logger.info("rollback removed %d chunk/partial files", removed)
        journal["chunks_restored"] = True
        io.update_attrs("", {JOURNAL_KEY: journal})
    _drop_backup(io, journal)
    root_docs = set(io.metadata_docs("")) | {".zmetadata"}
    docs: Mapping[str, str | None] = journal["docs"]
    for rel, text in docs.items():
        if rel in root_docs:
            continue
        _restore_doc(io, rel, text)
    for rel in sorted(root_docs & set(docs), key=lambda r: r in (".zattrs", "zarr.json")):
        _restore_doc(io, rel, docs[rel])  # the attributes document last: it removes the journal


def _restore_doc(io: StoreIO, rel: str, text: str | None) -> None:
    if text is None:
        if io.get(rel) is not None:
            io.delete(rel)
    else:
        io.set(rel, text.encode("utf-8"))


def finish(io: StoreIO, journal: Mapping[str, Any]) -> None:
    """Complete a run whose pixels and metadata are all written (phase ``complete``)."""
    _drop_backup(io, journal)
    if journal.get("consolidated"):
        zarr.consolidate_metadata(io.store, path=io.prefix or None)
    io.update_attrs("", {}, remove=[JOURNAL_KEY])
    if journal.get("consolidated") and io.zarr_format == 2:
        # .zmetadata holds a copy of the root .zattrs: drop the journal there too
        meta = io.read_json(".zmetadata")
        if meta is not None:
            meta.get("metadata", {}).get(".zattrs", {}).pop(JOURNAL_KEY, None)
            io.write_json(".zmetadata", meta)
