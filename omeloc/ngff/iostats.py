"""Where a run's time went: the store requests it made, the bytes it moved, the time they took.

On object storage a plate run is bound by round trips, not by the model (``DESIGN.md``, I/O), so
the end of ``omeloc predict`` says how many requests it made, what they moved, and for how long at
least one of them was in flight. :func:`measure_io` counts every operation of zarr's own stores
(local folders, fsspec/S3, memory, zip) made in this process, from any thread, while it is active:
the driver and Dask's local threads, not the workers of a distributed cluster (their requests are
theirs; the summary says so).

The count is made by wrapping the stores' methods once per process; a wrapped method only looks at
a list of active meters, so outside a measurement it costs one attribute lookup.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import zarr.storage

from omeloc.ngff.documents import is_metadata_key

__all__ = ["IOMeter", "IOSummary", "measure_io"]

_CALLS = ("get", "get_partial_values", "set", "set_if_not_exists", "exists", "delete", "delete_dir")
_LISTS = ("list", "list_prefix", "list_dir")
_WRITES = ("set", "set_if_not_exists")


@dataclass(frozen=True)
class IOSummary:
    """What a measured block asked of the stores (see :func:`measure_io`)."""

    requests: int
    metadata_reads: int
    chunk_reads: int
    writes: int
    listings: int
    other: int
    """Existence checks and deletes."""
    bytes_read: int
    bytes_written: int
    io_seconds: float
    """Time during which at least one store request was in flight."""
    seconds: float
    """Wall time of the measured block."""

    def line(self, images: int | None = None) -> str:
        """One line for the end of a run, e.g. ``I/O: 1,204 requests (6.3 per image) ...``."""
        per = f" ({self.requests / images:.1f} per image)" if images else ""
        share = 100 * self.io_seconds / self.seconds if self.seconds > 0 else 0.0
        return (
            f"I/O: {self.requests:,} store requests{per}: {self.metadata_reads:,} metadata reads, "
            f"{self.chunk_reads:,} chunk reads, {self.writes:,} writes, "
            f"{self.listings:,} listings; "
            f"{self.bytes_read / 1e6:.1f} MB read, {self.bytes_written / 1e6:.1f} MB written; "
            f"requests in flight {self.io_seconds:.1f} s of the {self.seconds:.1f} s run "
            f"({share:.0f} %; "
            f"this process's requests, not a cluster's workers)"
        )

    def to_json(self) -> dict[str, Any]:
        """The summary as JSON (for benchmarks and logs)."""
        return {
            "requests": self.requests,
            "metadata_reads": self.metadata_reads,
            "chunk_reads": self.chunk_reads,
            "writes": self.writes,
            "listings": self.listings,
            "other": self.other,
            "bytes_read": self.bytes_read,
            "bytes_written": self.bytes_written,
            "io_seconds": round(self.io_seconds, 3),
            "seconds": round(self.seconds, 3),
        }


@dataclass
class IOMeter:
    """The operations seen while a :func:`measure_io` block runs (thread-safe)."""

    ops: dict[str, int] = field(default_factory=dict)
    """Count of each operation (``"get"``, ``"set"``, ``"list_prefix"``, ...)."""
    keys: dict[tuple[str, str], int] = field(default_factory=dict)
    """Count of each ``(operation, key)``; keys carry their store's root in front (empty unless
    :attr:`per_key`)."""
    per_key: bool = True
    """Count each key (:attr:`keys`, :meth:`repeated_metadata_reads`: one entry per key the run
    touches, ~7 per image); ``False`` keeps the totals only (a run's end-of-run summary)."""
    metadata: int = 0
    chunks: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    started: float = field(default_factory=time.perf_counter)
    _busy: float = 0.0
    _active: int = 0
    _since: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def begin(self, op: str, key: str, nbytes: int = 0) -> None:
        """A request ``op`` on ``key`` starts (``nbytes``: what it writes)."""
        with self._lock:
            if op == "get":
                if is_metadata_key(key):
                    self.metadata += 1
                else:
                    self.chunks += 1
            self.ops[op] = self.ops.get(op, 0) + 1
            if self.per_key:
                self.keys[(op, key)] = self.keys.get((op, key), 0) + 1
            self.bytes_written += nbytes
            if self._active == 0:
                self._since = time.perf_counter()
            self._active += 1

    def end(self, nbytes: int = 0) -> None:
        """A request ends (``nbytes``: what it read)."""
        with self._lock:
            self.bytes_read += nbytes
            self._active -= 1
            if self._active == 0:
                self._busy += time.perf_counter() - self._since

    @property
    def total(self) -> int:
        """All operations counted."""
        return sum(self.ops.values())

    def repeated_metadata_reads(self) -> dict[str, int]:
        """Metadata documents read more than once: key → number of reads."""
        return {
            k: n for (op, k), n in self.keys.items() if op == "get" and is_metadata_key(k) and n > 1
        }

    def summary(self) -> IOSummary:
        """What was counted so far, as a record."""
        with self._lock:
            busy = self._busy + (time.perf_counter() - self._since if self._active else 0.0)
            ops = dict(self.ops)
            return IOSummary(
                requests=sum(ops.values()),
                metadata_reads=self.metadata,
                chunk_reads=self.chunks,
                writes=sum(ops.get(w, 0) for w in _WRITES),
                listings=sum(ops.get(x, 0) for x in _LISTS),
                other=sum(
                    ops.get(x, 0) for x in ("exists", "delete", "delete_dir", "get_partial_values")
                ),
                bytes_read=self.bytes_read,
                bytes_written=self.bytes_written,
                io_seconds=busy,
                seconds=time.perf_counter() - self.started,
            )


#: the meters of the :func:`measure_io` blocks running now (any thread)
_METERS: list[IOMeter] = []
_INSTALL = threading.Lock()
_INSTALLED: set[type] = set()


def _full_key(store: Any, key: str) -> str:
    """``key`` with its store's root in front (a store opened at a well or an image has its own)."""
    root = getattr(store, "root", None) or getattr(store, "path", None) or ""
    root = str(getattr(root, "as_posix", lambda: root)()).rstrip("/")
    return f"{root}/{key}" if root and key else (key or root)


def _key_of(op: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    if op == "get_partial_values":
        ranges = args[1] if len(args) > 1 else kwargs.get("key_ranges", ())
        return ",".join(str(k) for k, _ in list(ranges)[:1])
    if op == "list":
        return ""
    return str(args[0] if args else next(iter(kwargs.values()), ""))


def _size(value: Any) -> int:
    try:
        return len(value) if value is not None else 0
    except TypeError:
        return 0


def _counted_call(original: Any, op: str) -> Any:
    @functools.wraps(original)
    async def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        meters = list(_METERS)
        if not meters:
            return await original(self, *args, **kwargs)
        key = _full_key(self, _key_of(op, args, kwargs))
        wrote = _size(args[1] if len(args) > 1 else kwargs.get("value")) if op in _WRITES else 0
        for meter in meters:
            meter.begin(op, key, wrote)
        got = None
        try:
            got = await original(self, *args, **kwargs)
            return got
        finally:
            read = _size(got) if op == "get" else 0
            for meter in meters:
                meter.end(read)

    return call


def _counted_list(original: Any, op: str) -> Any:
    @functools.wraps(original)
    async def listing(self: Any, *args: Any, **kwargs: Any) -> Any:
        meters = list(_METERS)
        key = _full_key(self, _key_of(op, args, kwargs))
        for meter in meters:
            meter.begin(op, key)
        try:
            async for item in original(self, *args, **kwargs):
                yield item
        finally:
            for meter in meters:
                meter.end()

    return listing


def _store_classes() -> list[type]:
    classes = [zarr.storage.LocalStore, zarr.storage.MemoryStore, zarr.storage.ZipStore]
    with contextlib.suppress(AttributeError, ImportError):
        classes.append(zarr.storage.FsspecStore)
    return classes


def _install() -> None:
    """Wrap the methods of zarr's stores once per process (a wrapper looks at :data:`_METERS`)."""
    with _INSTALL:
        for cls in _store_classes():
            if cls in _INSTALLED:
                continue
            for op in (*_CALLS, *_LISTS):
                original = cls.__dict__.get(op)
                if original is not None:
                    setattr(
                        cls, op, (_counted_list if op in _LISTS else _counted_call)(original, op)
                    )
            _INSTALLED.add(cls)


@contextlib.contextmanager
def measure_io(per_key: bool = True) -> Iterator[IOMeter]:
    """Count every store request made in this process while the block runs (``per_key``: each
    key's count too, see :attr:`IOMeter.per_key`).

    Examples
    --------
    >>> with measure_io() as meter:  # doctest: +SKIP
    ...     omeloc.open_plate("s3://bucket/plate.zarr")
    >>> print(meter.summary().line())  # doctest: +SKIP
    """
    _install()
    meter = IOMeter(per_key=per_key)
    _METERS.append(meter)
    try:
        yield meter
    finally:
        _METERS.remove(meter)
