"""One writer at a time: the plate lock that every omeloc writer takes before anything else.

:class:`PlateLock` is a key (``.omeloc_lock``) at the root of the target store, created only
if absent.  It holds the writer's identity (run id, pid, host, process start time, what it
does) and a heartbeat that a background thread refreshes every few seconds for as long as
the lock is held.  ``add_channel`` (and so ``predict``), ``recover`` and ``rechunk`` take it
*before* they read the journal or check the plate, so no check can be overtaken by another
writer; the journal in the root attributes stays the record of what a killed run must undo.

Who may take a lock that exists:

- nobody, while its writer is alive;
- anybody, once the writer is *provably* dead, by the one rule the journal uses too
  (:func:`omeloc.writeback.identity.writer_alive`): on the same host its pid is gone or
  belongs to another process now (start time differs); on another host its heartbeat is
  older than ``max(stale_after, 15 heartbeats)``, which a live writer (refreshing every
  ``HEARTBEAT_SECONDS``) never reaches (clocks of the hosts must agree to within that);
- nobody but ``force`` takes a lock omeloc did not write (no valid writer identity);
- ``force=True`` (``omeloc recover PLATE --force``) takes it regardless.

Taking over a dead writer's lock is serialised by a second key (``.omeloc_lock.break``,
itself created only if absent), so two runs that both find a dead lock cannot both win.

Atomicity.  zarr's ``LocalStore.set_if_not_exists`` writes a temporary file and hard-links
it into place (``os.link`` fails if the name exists): atomic on local and POSIX network file
systems.  On S3 (zarr's fsspec store over s3fs) the lock is a conditional ``PUT`` with
``If-None-Match: *`` (s3fs ``pipe_file(mode="create")``): the server refuses it when the key
exists, atomic on AWS S3 and on S3-compatible servers that honour the header (MinIO, moto,
recent Ceph; tested against moto).  A server that ignores the header turns it into a plain
``PUT``; so on every store but a local one the lock is read back after ``SETTLE_SECONDS``
too, which catches a lost race in all but the narrowest case.  Other fsspec stores (GCS,
Azure, ...) get zarr's check-then-put and that read-back only: a race window of one round
trip between two writers that start at the same moment.

zarr warns ("Object at .omeloc_lock is not recognized ...") when it lists the root group's
members while a lock is held; the key is not part of the hierarchy.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
import uuid
import warnings
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

from zarr.core.buffer.cpu import Buffer
from zarr.core.sync import sync

from omeloc.errors import ConcurrentWriteError, InputError, ReadOnlyStoreError
from omeloc.ngff.stores import write_refusal
from omeloc.testing.faults import fault_point
from omeloc.writeback import identity
from omeloc.writeback.identity import HEARTBEAT_SECONDS, WriterIdentity, writer_alive
from omeloc.writeback.journal import StoreIO

__all__ = [
    "BREAK_KEY",
    "HEARTBEAT_SECONDS",
    "LOCK_KEY",
    "PlateLock",
    "lock_holder",
    "lock_stale",
    "source_lock",
]

logger = logging.getLogger(__name__)

LOCK_KEY = ".omeloc_lock"
BREAK_KEY = ".omeloc_lock.break"
#: on stores without an atomic create, wait this long and read the lock back once more
SETTLE_SECONDS = 0.2


def _atomic_create(io: StoreIO) -> bool:
    """Whether the store's create-if-absent is atomic (zarr's LocalStore: exclusive hard link)."""
    from zarr.storage import LocalStore

    return isinstance(io.backend, LocalStore)


def _s3_create(io: StoreIO, key: str, data: bytes) -> bool | None:
    """Conditional ``PUT`` (``If-None-Match: *``) of ``key`` on an S3 store; ``None`` on any other
    store.

    Returns whether the object was created (``False``: it exists already).
    """
    from zarr.storage import FsspecStore

    store = io.backend
    fs = getattr(store, "fs", None)
    protocol = getattr(fs, "protocol", ())
    protocols = (protocol,) if isinstance(protocol, str) else tuple(protocol)
    if not isinstance(store, FsspecStore) or not {"s3", "s3a"} & set(protocols):
        return None
    path = f"{store.path.rstrip('/')}/{io.key(key)}"
    try:
        sync(fs._pipe_file(path, data, mode="create"))
    except FileExistsError:  # s3fs: HTTP 412 PreconditionFailed, the key exists
        return False
    return True


def _read(io: StoreIO, key: str) -> dict[str, Any] | None:
    """The lock document at ``key``; ``None`` when absent, ``{}`` when it is not a lock omeloc
    wrote."""
    raw = io.get(key)
    if raw is None:
        return None
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _create(io: StoreIO, key: str, payload: Mapping[str, Any]) -> bool:
    """Create ``key`` only if absent; whether it now holds ``payload`` (ours)."""
    data = json.dumps(dict(payload), sort_keys=True).encode("utf-8")
    try:
        if _s3_create(io, key, data) is None:
            sync(io.store.set_if_not_exists(io.key(key), Buffer.from_bytes(data)))
    except (
        Exception
    ) as err:  # any backend's refusal (PermissionError, HTTP 4xx/5xx, ...) with context
        raise write_refusal(err, f"Cannot create the lock {key} in {io.url}", io.url) from err
    mine = (_read(io, key) or {}).get("run_id") == payload["run_id"]
    if mine and not _atomic_create(io):
        time.sleep(SETTLE_SECONDS)  # a racing check-then-put may have landed after ours
        mine = (_read(io, key) or {}).get("run_id") == payload["run_id"]
    return mine


def lock_stale(holder: Mapping[str, Any], stale_after: float) -> bool:
    """Whether the writer that holds a lock is provably dead (see the module docstring).

    A lock that omeloc did not write (no run id, no valid writer identity, fields of the
    wrong type: a plate is untrusted input) is never stale: only ``force`` takes it.
    """
    writer = WriterIdentity.from_json(holder)
    run_id = holder.get("run_id") if isinstance(holder, Mapping) else None
    try:
        heartbeat = float(holder.get("heartbeat", 0))
        interval = float(holder.get("interval", HEARTBEAT_SECONDS))
    except (AttributeError, TypeError, ValueError):
        return False
    if writer is None or not isinstance(run_id, str) or not run_id:
        return False
    return not writer_alive(writer, run_id, heartbeat, stale_after=stale_after, interval=interval)


def lock_holder(io: StoreIO) -> dict[str, Any] | None:
    """The lock document of the store (``None``: not locked)."""
    return _read(io, LOCK_KEY)


def _shown(value: Any) -> str:
    """A field of an untrusted lock document, fit for a one-line message."""
    return " ".join(str(value).split())[:64]


def describe_holder(io: StoreIO, holder: Mapping[str, Any]) -> str:
    """The one-line refusal for a live lock holder."""
    if not holder:
        who = f"an unknown writer (the lock {LOCK_KEY} was not written by omeloc)"
    else:
        run_id, purpose, pid, host, started = (
            _shown(holder.get(k)) for k in ("run_id", "purpose", "pid", "host", "started")
        )
        who = f"omeloc run {run_id} ({purpose}, pid {pid} on {host}, since {started})"
    return (
        f"{io.url} is being written by {who}. Wait for it to finish; if that process is dead, "
        f"run `omeloc recover {io.url} --force`."
    )


class PlateLock:
    """The plate's write lock, as a context manager: taken on enter, heartbeat while held, released
    on exit.

    Parameters
    ----------
    io : StoreIO
        Raw access to the target store.
    purpose : str
        What the holder does (``"add_channel"``, ``"recover"``, ``"rechunk"``), for messages.
    run_id : str, optional
        The holder's run id (default: a new one; ``add_channel`` uses it for its journal too).
    stale_after : float
        Seconds without a heartbeat after which a lock held on another host counts as dead
        (never less than 15 heartbeats).
    force : bool
        Take the lock even from a writer that looks alive.
    interval : float
        Seconds between heartbeats.

    Raises
    ------
    ConcurrentWriteError
        Another live writer holds the lock (on enter), or the lock was taken from this
        holder while it ran (:meth:`ensure`).
    ReadOnlyStoreError
        The store cannot be written.

    Examples
    --------
    >>> with PlateLock(StoreIO("plate.zarr"), purpose="recover"):  # doctest: +SKIP
    ...     pass
    """

    def __init__(
        self,
        io: StoreIO,
        *,
        purpose: str,
        run_id: str | None = None,
        stale_after: float = 3600.0,
        force: bool = False,
        interval: float = HEARTBEAT_SECONDS,
    ) -> None:
        self.io, self.purpose, self.stale_after, self.force = io, purpose, stale_after, force
        self.run_id = run_id or uuid.uuid4().hex
        self.interval = float(interval)
        self.taken_over: dict[str, Any] | None = None
        """The dead (or forced) holder this lock was taken from, if any."""
        self.lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._payload: dict[str, Any] = {}
        self._registered = False

    def _new_payload(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "purpose": self.purpose,
            **WriterIdentity.current().to_json(),
            "started": datetime.now(UTC).isoformat(timespec="seconds"),
            "heartbeat": time.time(),
            "interval": self.interval,
        }

    def __enter__(self) -> Self:
        self._payload = self._new_payload()
        self._register()  # a live run of this process from now on, until released
        try:
            self._acquire()
        except BaseException:
            self._unregister()
            raise
        # the only writer from now on: what the documents cache held before may be stale, what it
        # holds from now on is what the store holds (our own writes go through it)
        self.io.documents.clear()
        self._thread = threading.Thread(
            target=self._beat, name=f"omeloc-lock-{self.run_id[:8]}", daemon=True
        )
        self._thread.start()
        fault_point("lock_taken")
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        try:
            self.release()
        except Exception as err:
            if exc_type is None:
                raise
            # the write's own error matters more; a lock left behind is taken over once we are gone
            logger.warning("could not release the lock of %s: %s", self.io.url, err)

    def _acquire(self) -> None:
        local = self.io.local_root
        if (
            local is not None and (local / LOCK_KEY).is_dir()
        ):  # not a lock: no create can ever succeed
            raise InputError(
                f"{local / LOCK_KEY} is a folder, not omeloc's lock file. If no omeloc run writes "
                f"{self.io.url}, remove it (rm -r {local / LOCK_KEY}) and retry."
            )
        for _ in range(3):  # a holder that releases while we look: try again
            if _create(self.io, LOCK_KEY, self._payload):
                return
            holder = lock_holder(self.io)
            if holder is None:
                continue
            if not (self.force or lock_stale(holder, self.stale_after)):
                raise ConcurrentWriteError(describe_holder(self.io, holder))
            self._take_over(holder)
            return
        raise ConcurrentWriteError(
            f"The lock of {self.io.url} changed hands repeatedly while omeloc tried to take "
            f"it. Wait for the other writers to finish and retry."
        )

    def _take_over(self, holder: dict[str, Any]) -> None:
        """Replace a dead (or, with ``force``, any) holder's lock with ours, serialised by the
        break key."""
        writer = WriterIdentity.from_json(self._payload)
        assert writer is not None
        breaker = {"run_id": self.run_id, **writer.to_json(), "heartbeat": time.time()}
        if not _create(self.io, BREAK_KEY, breaker):
            other = _read(self.io, BREAK_KEY) or {}
            if not (self.force or lock_stale(other, self.stale_after)):
                raise ConcurrentWriteError(
                    f"Another omeloc run is taking over the lock of {self.io.url} right now. "
                    f"Wait for it to finish and retry."
                )
            self.io.delete(BREAK_KEY)
            if not _create(self.io, BREAK_KEY, breaker):
                raise ConcurrentWriteError(
                    f"Another omeloc run took over the lock of {self.io.url} first. "
                    f"Wait for it to finish and retry."
                )
        try:
            current = lock_holder(self.io)
            if current is not None and current != holder and not self.force:
                raise ConcurrentWriteError(
                    describe_holder(self.io, current)
                )  # it moved: somebody is alive
            if current is not None:
                self.io.delete(LOCK_KEY)
            if not _create(self.io, LOCK_KEY, self._payload):
                raise ConcurrentWriteError(describe_holder(self.io, lock_holder(self.io) or {}))
        finally:
            self.io.delete(BREAK_KEY)
        self.taken_over = holder
        logger.warning(
            "took over the lock of %s from %s run %s (pid %s on %s)%s",
            self.io.url,
            holder.get("purpose"),
            holder.get("run_id"),
            holder.get("pid"),
            holder.get("host"),
            " (forced)" if self.force else ": its writer is gone",
        )

    def _beat(self) -> None:
        """Heartbeat thread: refresh the lock every ``interval`` seconds while it is ours."""
        while not self._stop.wait(self.interval):
            try:
                holder = lock_holder(self.io)
                if (holder or {}).get("run_id") != self.run_id:
                    self.lost = True
                    logger.error(
                        "the lock of %s was taken from omeloc run %s", self.io.url, self.run_id
                    )
                    return
                self._payload["heartbeat"] = time.time()
                self.io.set(LOCK_KEY, json.dumps(self._payload, sort_keys=True).encode("utf-8"))
            except Exception as err:  # noqa: BLE001 - a missed beat is retried; the writer's own writes report store errors
                logger.warning("could not refresh the lock of %s: %s", self.io.url, err)

    def ensure(self) -> None:
        """Raise if the lock was taken from this holder while it ran (``recover --force``
        elsewhere)."""
        if self.lost:
            raise ConcurrentWriteError(
                f"The lock of {self.io.url} was taken from this run (omeloc recover --force?) "
                f"while it wrote. Stop the other writer, then run `omeloc recover {self.io.url}`."
            )

    def release(self) -> None:
        """Stop the heartbeat and delete the lock if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        try:
            if (lock_holder(self.io) or {}).get("run_id") == self.run_id:
                self.io.delete(LOCK_KEY)
        finally:
            self._unregister()

    def _register(self) -> None:
        if not self._registered:
            identity.register(self.run_id)
            self._registered = True

    def _unregister(self) -> None:
        if self._registered:
            identity.unregister(self.run_id)
            self._registered = False


def peek(io: StoreIO, *, stale_after: float) -> None:
    """Raise :class:`ConcurrentWriteError` if a live writer holds the lock (for dry runs, which
    take none)."""
    holder = lock_holder(io)
    if holder is not None and not lock_stale(holder, stale_after):
        raise ConcurrentWriteError(describe_holder(io, holder))


@contextlib.contextmanager
def source_lock(
    url: str | Path, storage_options: Mapping[str, Any] | None = None, *, purpose: str = "rechunk"
) -> Iterator[PlateLock | None]:
    """Hold the lock of a store that is only read (``rechunk``'s source), so no writer changes it
    meanwhile.

    A store this process cannot write (an HTTP URL, a read-only copy) is read without a lock:
    nobody writes it through this access either.  zarr's warning about the lock key while
    the root's members are listed is silenced.
    """
    try:
        lock = PlateLock(StoreIO(str(url), storage_options), purpose=purpose)
        lock.__enter__()
    except (ReadOnlyStoreError, FileNotFoundError) as err:
        # unwritable here (or not a store: the caller's own checks say so): read without a lock
        logger.debug("reading %s without a lock: %s", url, err)
        yield None
        return
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"Object at \.omeloc_lock")
            yield lock
    finally:
        lock.release()
