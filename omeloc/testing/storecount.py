"""Count the store reads of a block of code: how many metadata documents and chunks it fetched.

Used by the scale benchmark and tests (``benchmarks/bench_plate_scale.py``,
``tests/ngff/test_scale.py``): on an object store each read is a round trip (~50 ms), so reads per
image must stay bounded by a constant, whatever the plate size.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import zarr.storage

__all__ = ["StoreReads", "count_store_reads"]

_METADATA = ("zarr.json", ".zarray", ".zattrs", ".zgroup", ".zmetadata")


@dataclass
class StoreReads:
    """Reads seen so far: metadata documents and other keys (chunks), by key."""

    metadata: int = 0
    chunks: int = 0
    keys: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, key: str) -> None:
        """Count one read of ``key``."""
        with self.lock:
            if key.rsplit("/", 1)[-1] in _METADATA:
                self.metadata += 1
            else:
                self.chunks += 1
            self.keys[key] = self.keys.get(key, 0) + 1


@contextlib.contextmanager
def count_store_reads() -> Iterator[StoreReads]:
    """Count every ``get`` of zarr's local store (all instances, all threads) inside the block."""
    seen = StoreReads()
    cls: Any = zarr.storage.LocalStore
    original = cls.get

    async def get(self: Any, key: str, *args: Any, **kwargs: Any) -> Any:
        seen.add(key)
        return await original(self, key, *args, **kwargs)

    cls.get = get
    try:
        yield seen
    finally:
        cls.get = original
