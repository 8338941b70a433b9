"""The write-back journal as a record: one frozen dataclass, versioned to and from JSON here only.

A run of :func:`omeloc.writeback.protocol.add_channel` keeps a :class:`Journal` in the
plate's root attributes (key ``omeloc_journal``); a killed run is undone or finished from it
by :mod:`omeloc.writeback.journal`.  Everything else passes the record around; a dict
appears only here, where the JSON is written (:meth:`Journal.to_json`) and parsed
(:meth:`Journal.from_json`).

The JSON is **version 1**, the layout omeloc has always written: flat writer fields
(:class:`~omeloc.writeback.identity.WriterIdentity`), ``names`` only for several channels,
``backup`` and ``chunks_restored`` only once set, and an integrity ``digest`` (sha256 of the
canonical JSON without it: :func:`journal_digest`).  Journals written before this module (no
``shared``, no ``boot_id``) read the same.  A later version adds a reader to ``_READERS``;
an operation other than ``append`` / ``overwrite`` adds its name to :data:`OPERATIONS`.

A journal found in a plate is untrusted input: :meth:`Journal.from_json` checks its digest,
its version and the type and range of every field, and refuses anything else with one
:class:`~omeloc.errors.JournalError` line; :func:`omeloc.writeback.validate.validate_journal`
then checks it against the plate's own structure.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from omeloc.errors import JournalError, UnsafePathError
from omeloc.ngff.format import safe_key
from omeloc.ngff.plate import MAX_CHANNELS
from omeloc.writeback.identity import WriterIdentity, writer_alive

__all__ = [
    "JOURNAL_KEY",
    "JOURNAL_VERSION",
    "OPERATIONS",
    "BackupSummary",
    "ImageEntry",
    "Journal",
    "journal_digest",
    "journal_doc",
    "refusal",
]

JOURNAL_KEY = "omeloc_journal"
JOURNAL_VERSION = 1
#: what a run does to the channels it names (``mode`` in the JSON)
OPERATIONS = ("append", "overwrite", "remove")  # remove: omeloc.writeback.remove, always finished
#: the most channels one run writes
MAX_NAMES = 16
_RUN_ID = re.compile(r"[0-9a-f]{8,64}")
_RESUME_PREFIX = ".omeloc_resume"  # resume.RESUME_PREFIX (resume.py imports the journal)


# -- the digest ---------------------------------------------------------------------------
def journal_digest(journal: Mapping[str, Any]) -> str:
    """sha256 (hex) of the canonical JSON of ``journal`` without its ``digest`` key.

    Examples
    --------
    >>> a = journal_digest({"b": 1, "a": [1.5, None]})
    >>> a == journal_digest({"a": [1.5, None], "b": 1, "digest": "x"})
    True
    """
    body = {k: v for k, v in journal.items() if k != "digest"}
    text = json.dumps(
        body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    )
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def journal_doc(journal: dict[str, Any]) -> dict[str, Any]:
    """Seal a journal's JSON for writing: set its ``digest`` (in place) and return it."""
    journal["digest"] = journal_digest(journal)
    return journal


def refusal(where: str, problem: str) -> JournalError:
    """The one-line error for a journal that is not acted on."""
    return JournalError(
        f"{where} {problem}; it was not acted on. Inspect it, then remove the key {JOURNAL_KEY} "
        f"from the root attributes by hand (the plate may hold an interrupted write: check it "
        f"with omeloc info)."
    )


# -- the record ---------------------------------------------------------------------------
@dataclass(frozen=True)
class ImageEntry:
    """One image a run writes: its path, its channel axis and its level arrays (level 0 first)."""

    path: str
    c_axis: int
    arrays: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        """The JSON object of the entry."""
        return {"path": self.path, "c_axis": self.c_axis, "arrays": list(self.arrays)}


@dataclass(frozen=True)
class BackupSummary:
    """The verified backup of the files a run rewrites: count, bytes, the manifest's sha256."""

    files: int
    bytes: int
    manifest: str

    def to_json(self) -> dict[str, Any]:
        """The JSON object of the summary."""
        return {"files": self.files, "bytes": self.bytes, "manifest": self.manifest}


@dataclass(frozen=True)
class Journal:
    """What a running write-back may change, and how far it got.

    Attributes
    ----------
    run_id : str
        The run (a hex token; the lock's run id).
    writer : WriterIdentity
        The process that writes.
    started : str
        ISO time the run began.
    heartbeat : float
        ``time.time()`` of the last phase recorded.
    phase : str
        ``started``, ``backed_up``, ``resized``, ``pixels`` or ``complete``.
    mode : str
        One of :data:`OPERATIONS`.
    names : tuple of str
        The channels written (1 to 16), the first is :attr:`name`.
    channel_index : int
        Index of the first channel written.
    n_channels : int
        The channel count before the run.
    zarr_format : int
        The store's Zarr format.
    images : tuple of ImageEntry
        The images written.
    docs : Mapping
        Key → raw text (``None``: absent) of every metadata document the run may touch,
        as it was before the run.
    consolidated : bool
        Whether the root metadata was consolidated.
    resume_key : str or None
        The job's key for resuming (:mod:`omeloc.writeback.resume`).
    shared : bool
        Whether the new channels' storage units also hold other (virtual) channels.
    backup : BackupSummary or None
        The verified backup (overwrites, shared units), once written.
    chunks_restored : bool
        Whether a rollback already deleted the run's chunks and restored the backup.
    """

    run_id: str
    writer: WriterIdentity
    started: str
    heartbeat: float
    phase: str
    mode: str
    names: tuple[str, ...]
    channel_index: int
    n_channels: int
    zarr_format: int
    images: tuple[ImageEntry, ...]
    docs: Mapping[str, str | None] = field(repr=False)
    consolidated: bool = False
    resume_key: str | None = None
    shared: bool = False
    backup: BackupSummary | None = None
    chunks_restored: bool = False

    @property
    def name(self) -> str:
        """The first channel written."""
        return self.names[0]

    @property
    def complete(self) -> bool:
        """Whether every pixel and metadata write is done (a recovery finishes the run)."""
        return self.phase == "complete"

    def at_phase(self, phase: str, **changes: Any) -> Journal:
        """This journal at ``phase`` (other fields changed too), with a fresh heartbeat."""
        return dataclasses.replace(self, phase=phase, heartbeat=time.time(), **changes)

    def replace(self, **changes: Any) -> Journal:
        """This journal with ``changes``."""
        return dataclasses.replace(self, **changes)

    def writer_alive(self, stale_after: float) -> bool:
        """Whether the run's writer may still be running (the rule the lock uses too)."""
        return writer_alive(self.writer, self.run_id, self.heartbeat, stale_after=stale_after)

    # -- read access by JSON key (transitional, for code written against the dict journal) --
    def keys(self) -> list[str]:
        """The JSON keys (so ``journal["images"]``, ``journal.get``, ``{**journal}`` work)."""
        return list(self.to_json())

    def __getitem__(self, key: str) -> Any:
        return self.to_json()[key]

    def get(self, key: str, default: Any = None) -> Any:
        """The JSON value of ``key`` (``default`` when absent)."""
        return self.to_json().get(key, default)

    # -- JSON -----------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        """The sealed JSON object (version 1, digest set) stored under ``omeloc_journal``."""
        out: dict[str, Any] = {
            "version": JOURNAL_VERSION,
            "run_id": self.run_id,
            **self.writer.to_json(),
            "started": self.started,
            "heartbeat": self.heartbeat,
            "phase": self.phase,
            "mode": self.mode,
            "name": self.name,
            "channel_index": self.channel_index,
        }
        if len(self.names) > 1:
            out["names"] = list(self.names)
        out.update(
            {
                "n_channels": self.n_channels,
                "zarr_format": self.zarr_format,
                "images": [img.to_json() for img in self.images],
                "consolidated": self.consolidated,
                "docs": dict(self.docs),
                "resume_key": self.resume_key,
                "shared": self.shared,
            }
        )
        if self.backup is not None:
            out["backup"] = self.backup.to_json()
        if self.chunks_restored:
            out["chunks_restored"] = True
        return journal_doc(out)

    @classmethod
    def from_json(
        cls, doc: Any, *, zarr_format: int, where: str = "The write-back journal"
    ) -> Journal:
        """The journal held by ``doc`` (the root attribute as read), checked.

        Parameters
        ----------
        doc : Any
            The value of the root attribute ``omeloc_journal``.
        zarr_format : int
            The Zarr format of the store it was found in (the journal must name it).
        where : str
            How messages name the journal (``"The write-back journal in plate.zarr"``).

        Raises
        ------
        JournalError
            Not a JSON object, no or a wrong digest (modified after it was written), an
            unknown version, or a field of the wrong type or out of range.
        """
        if not isinstance(doc, Mapping):
            raise refusal(where, f"is a {type(doc).__name__}, not a JSON object")
        digest = doc.get("digest")
        if not isinstance(digest, str):
            raise refusal(
                where, "has no integrity digest (it was written by hand or by an older omeloc)"
            )
        if digest != journal_digest(doc):
            raise refusal(where, "was modified after it was written (its digest does not match)")
        reader = _READERS.get(doc.get("version"))  # type: ignore[arg-type]
        if reader is None:
            raise refusal(
                where,
                f"is malformed (version {_r(doc.get('version'))}, expected {JOURNAL_VERSION})",
            )
        return reader(doc, zarr_format, where)


# -- version 1 ----------------------------------------------------------------------------
def _r(value: Any) -> str:
    """``repr(value)``, cut to keep a message one short line (journal values are untrusted)."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _safe(key: str) -> bool:
    try:
        safe_key(key)
    except UnsafePathError:
        return False
    return True


def _names(j: Mapping[str, Any]) -> Any:
    return j.get("names", [j.get("name")])


def _problems_v1(j: Mapping[str, Any], zarr_format: int) -> list[str]:
    """What is wrong with the fields of a version-1 journal (empty: nothing)."""
    p = []
    if not (isinstance(j.get("run_id"), str) and _RUN_ID.fullmatch(j["run_id"])):
        p.append(f"run_id {_r(j.get('run_id'))} is not a hex token")
    if j.get("mode") not in OPERATIONS:
        p.append(f"mode {_r(j.get('mode'))} is not one of {', '.join(OPERATIONS)}")
    if j.get("zarr_format") != zarr_format:
        p.append(f"zarr_format {_r(j.get('zarr_format'))} is not the store's {zarr_format}")
    for name, kind in (("name", str), ("phase", str), ("docs", Mapping), ("images", list)):
        if not isinstance(j.get(name), kind):
            p.append(f"{name} is missing or not a {kind.__name__}")
    n, k, names = j.get("n_channels"), j.get("channel_index"), _names(j)
    if not (
        isinstance(names, list)
        and 1 <= len(names) <= MAX_NAMES
        and all(isinstance(x, str) for x in names)
        and names[0] == j.get("name")
    ):
        p.append(f"names {_r(names)} is not a list of 1 to {MAX_NAMES} names starting with name")
        names = [j.get("name")]
    if not (_is_int(n) and 1 <= n <= MAX_CHANNELS):
        p.append(f"n_channels {_r(n)} is not between 1 and {MAX_CHANNELS}")
    elif not (
        _is_int(k)
        and (
            k == n
            if j.get("mode") == "append"
            else k + len(names) == n
            if j.get("mode") == "remove"
            else 0 <= k and k + len(names) <= n
        )
    ):
        p.append(f"channel_index {_r(k)} does not fit n_channels {n} in mode {_r(j.get('mode'))}")
    for name in ("consolidated", "chunks_restored", "shared"):
        if name in j and not isinstance(j[name], bool):
            p.append(f"{name} is not true/false")
    key = j.get("resume_key")
    if key is not None and not (isinstance(key, str) and _safe(f"{_RESUME_PREFIX}/{key}")):
        p.append(f"resume_key {_r(key)} is not a safe relative key")
    if isinstance(j.get("docs"), Mapping) and not all(
        isinstance(v, str) or v is None for v in j["docs"].values()
    ):
        p.append("docs values are not JSON texts or null")
    return p + _more_problems_v1(j)


def _more_problems_v1(j: Mapping[str, Any]) -> list[str]:
    """The writer, heartbeat, start time and backup summary (fields a rollback acts on)."""
    p = []
    if WriterIdentity.from_json(j) is None:
        p.append(f"the writer (pid {_r(j.get('pid'))} on host {_r(j.get('host'))}) is not valid")
    hb = j.get("heartbeat", 0.0)
    if not (isinstance(hb, int | float) and not isinstance(hb, bool)):
        p.append(f"heartbeat {_r(hb)} is not a number")
    if not isinstance(j.get("started", ""), str):
        p.append(f"started {_r(j.get('started'))} is not a text")
    backup = j.get("backup")
    if backup is not None and not (
        isinstance(backup, Mapping)
        and _is_int(backup.get("files"))
        and _is_int(backup.get("bytes"))
        and isinstance(backup.get("manifest"), str)
    ):
        p.append(f"backup {_r(backup)} is not a summary of files, bytes and manifest")
    return p


def _image_v1(entry: Any, where: str) -> ImageEntry:
    if not (
        isinstance(entry, Mapping)
        and isinstance(entry.get("path"), str)
        and _is_int(entry.get("c_axis"))
        and entry["c_axis"] >= 0
        and isinstance(entry.get("arrays"), list)
        and entry["arrays"]
        and all(isinstance(a, str) for a in entry["arrays"])
    ):
        raise refusal(where, f"has a malformed image entry {str(entry)[:80]!r}")
    return ImageEntry(
        path=entry["path"], c_axis=int(entry["c_axis"]), arrays=tuple(entry["arrays"])
    )


def _read_v1(j: Mapping[str, Any], zarr_format: int, where: str) -> Journal:
    problems = _problems_v1(j, zarr_format)
    if problems:
        raise refusal(where, f"is malformed ({'; '.join(problems[:3])})")
    writer = WriterIdentity.from_json(j)
    assert writer is not None  # checked above
    backup = j.get("backup")
    return Journal(
        run_id=j["run_id"],
        writer=writer,
        started=j.get("started", ""),
        heartbeat=float(j.get("heartbeat", 0.0)),
        phase=j["phase"],
        mode=j["mode"],
        names=tuple(_names(j)),
        channel_index=j["channel_index"],
        n_channels=j["n_channels"],
        zarr_format=j["zarr_format"],
        images=tuple(_image_v1(e, where) for e in j["images"]),
        docs=dict(j["docs"]),
        consolidated=bool(j.get("consolidated", False)),
        resume_key=j.get("resume_key"),
        shared=bool(j.get("shared", False)),
        backup=None
        if backup is None
        else BackupSummary(
            files=backup["files"], bytes=backup["bytes"], manifest=backup["manifest"]
        ),
        chunks_restored=bool(j.get("chunks_restored", False)),
    )


_READERS = {1: _read_v1}
