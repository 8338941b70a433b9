"""Count what a block of code asks of zarr's stores: every read, write, existence check, listing, delete.

Used by the scale benchmarks and the request-budget tests (``benchmarks/bench_plate_scale.py``,
``tests/ngff/test_scale.py``, ``tests/ngff/test_request_budget.py``): on an object store each
request is a round trip (20–50 ms), so requests per image must stay bounded by a constant, and
no metadata document may be read twice in one run.

Every operation of zarr's own stores (local, fsspec, memory, zip) is counted, in every thread,
whichever instance makes it; ``get`` of a metadata document (``zarr.json``, ``.zarray``,
``.zattrs``, ``.zgroup``, ``.zmetadata``) counts as a metadata read, any other ``get`` as a
chunk read.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import zarr.storage

__all__ = ["METADATA_NAMES", "StoreOps", "StoreReads", "count_store_ops", "count_store_reads"]

#: the names of zarr's metadata documents
METADATA_NAMES = ("zarr.json", ".zarray", ".zattrs", ".zgroup", ".zmetadata")
#: the store methods counted; listing methods are async generators, the others coroutines
_CALLS = ("get", "get_partial_values", "set", "set_if_not_exists", "exists", "delete")
_LISTS = ("list", "list_prefix", "list_dir")


def is_metadata(key: str) -> bool:
    """Whether ``key`` names a zarr metadata document."""
    return key.rsplit("/", 1)[-1] in METADATA_NAMES


@dataclass
class StoreOps:
    """Operations seen so far, by kind and by key.

    Attributes
    ----------
    metadata, chunks : int
        ``get`` of metadata documents, and of other keys.
    ops : dict
        Count of each operation (``"get"``, ``"set"``, ``"exists"``, ``"list_prefix"``, ...).
    keys : dict
        Count of each ``(operation, key)``.
    """

    metadata: int = 0
    chunks: int = 0
    ops: dict[str, int] = field(default_factory=dict)
    keys: dict[tuple[str, str], int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, op: str, key: str) -> None:
        """Count one operation ``op`` on ``key``."""
        with self.lock:
            if op == "get":
                if is_metadata(key):
                    self.metadata += 1
                else:
                    self.chunks += 1
            self.ops[op] = self.ops.get(op, 0) + 1
            self.keys[(op, key)] = self.keys.get((op, key), 0) + 1

    @property
    def total(self) -> int:
        """All operations (on an object store: all requests, a listing of one page counted once)."""
        return sum(self.ops.values())

    def repeated_metadata_reads(self) -> dict[str, int]:
        """Metadata documents read more than once: key → number of reads."""
        return {k: n for (op, k), n in self.keys.items() if op == "get" and is_metadata(k) and n > 1}


#: kept for the callers that only count reads
StoreReads = StoreOps


def _store_classes() -> list[type]:
    classes = [zarr.storage.LocalStore, zarr.storage.MemoryStore, zarr.storage.ZipStore]
    with contextlib.suppress(AttributeError, ImportError):
        classes.append(zarr.storage.FsspecStore)
    return classes


def _key_of(op: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    if op == "get_partial_values":
        ranges = args[1] if len(args) > 1 else kwargs.get("key_ranges", ())
        return ",".join(str(k) for k, _ in list(ranges)[:1])
    if op in _LISTS and op != "list_dir" and op != "list_prefix":
        return ""
    return str(args[0] if args else next(iter(kwargs.values()), ""))


def _full_key(store: Any, key: str) -> str:
    """``key`` with the store's own root in front (stores opened at a well or an image have their own)."""
    root = getattr(store, "root", None) or getattr(store, "path", None) or ""
    root = str(getattr(root, "as_posix", lambda: root)()).rstrip("/")
    return f"{root}/{key}" if root and key else (key or root)


def _counted_call(original: Any, op: str, seen: StoreOps) -> Any:
    @functools.wraps(original)
    async def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        seen.add(op, _full_key(self, _key_of(op, args, kwargs)))
        return await original(self, *args, **kwargs)
    return call


def _counted_list(original: Any, op: str, seen: StoreOps) -> Any:
    @functools.wraps(original)
    def listing(self: Any, *args: Any, **kwargs: Any) -> Any:
        seen.add(op, _full_key(self, _key_of(op, args, kwargs)))
        return original(self, *args, **kwargs)
    return listing


@contextlib.contextmanager
def count_store_ops() -> Iterator[StoreOps]:
    """Count every operation of zarr's stores (all instances, all threads) inside the block.

    Examples
    --------
    >>> with count_store_ops() as ops:  # doctest: +SKIP
    ...     omeloc.open_plate("plate.zarr")
    >>> ops.metadata, ops.repeated_metadata_reads()  # doctest: +SKIP
    """
    seen = StoreOps()
    saved: list[tuple[type, str, Any]] = []
    for cls in _store_classes():
        for op in (*_CALLS, *_LISTS):
            original = cls.__dict__.get(op)
            if original is None:
                continue
            saved.append((cls, op, original))
            wrap = _counted_list if op in _LISTS else _counted_call
            setattr(cls, op, wrap(original, op, seen))
    try:
        yield seen
    finally:
        for cls, op, original in saved:
            setattr(cls, op, original)


#: kept for the callers that only count reads
count_store_reads = count_store_ops
