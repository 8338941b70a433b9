"""Metadata documents read at most once: a cache of a store's raw documents, shared by its readers.

On object storage every document read is a round trip (20–50 ms); a run that opens a plate, checks
it, snapshots it into a journal and edits it would read each image's documents ten times
(``benchmarks/README.md``, object store). A :class:`DocumentCache` holds the raw bytes of every
metadata document (``zarr.json``, ``.zarray``, ``.zattrs``, ``.zgroup``, ``.zmetadata``) that a
:class:`CachedStore` read or wrote, and absences too, so that the plate open, the preflight, the
journal and the write-back share one read of each.

The cache is coherent only while nobody else writes the store: the write-back protocol clears it
when it takes the plate's lock (``omeloc.writeback.lock``), after which it is the only writer and
its own writes go through the cache. Chunks are never cached. A pickled :class:`CachedStore` (sent
with a Dask task) arrives without the cache.
"""

from __future__ import annotations

import threading
from typing import Any

import zarr.storage
from zarr.abc.store import ByteRequest, Store
from zarr.core.buffer import Buffer, BufferPrototype

__all__ = ["METADATA_NAMES", "CachedStore", "DocumentCache", "is_metadata_key"]

#: the names of zarr's metadata documents (the keys the cache holds)
METADATA_NAMES = frozenset({"zarr.json", ".zarray", ".zattrs", ".zgroup", ".zmetadata"})


def is_metadata_key(key: str) -> bool:
    """Whether ``key`` names a zarr metadata document."""
    return key.rsplit("/", 1)[-1] in METADATA_NAMES


class DocumentCache:
    """Raw metadata documents by store key: bytes, or ``None`` for a document known to be absent."""

    def __init__(self) -> None:
        self._docs: dict[str, bytes | None] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._docs)

    def __contains__(self, key: object) -> bool:
        return key in self._docs

    def get(self, key: str) -> bytes | None:
        """The cached document (``None``: absent); a ``KeyError`` when it was never read."""
        with self._lock:
            return self._docs[key]

    def put(self, key: str, raw: bytes | None) -> None:
        """Remember the document at ``key`` (``None``: there is none)."""
        with self._lock:
            self._docs[key] = raw

    def drop(self, key: str) -> None:
        """Forget ``key`` (its next read goes to the store)."""
        with self._lock:
            self._docs.pop(key, None)

    def drop_prefix(self, prefix: str) -> None:
        """Forget every key below ``prefix`` (a deleted folder)."""
        with self._lock:
            for key in [
                k for k in self._docs if not prefix or k == prefix or k.startswith(prefix + "/")
            ]:
                del self._docs[key]

    def clear(self) -> None:
        """Forget everything (when the writer's lock is taken: what others wrote is read anew)."""
        with self._lock:
            self._docs.clear()


class CachedStore(zarr.storage.WrapperStore[Store]):
    """A zarr store whose whole-document reads of metadata go through a :class:`DocumentCache`.

    Parameters
    ----------
    store : zarr.abc.store.Store
        The store read and written.
    cache : DocumentCache
        Shared with the other readers of the same store root (keys are relative to it).
    """

    def __init__(self, store: Store, cache: DocumentCache | None = None) -> None:
        super().__init__(store)
        self.cache = cache if cache is not None else DocumentCache()

    def __getstate__(self) -> dict[str, Any]:
        return {"_store": self._store}  # a task gets the store, not the driver's documents

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._store = state["_store"]
        self.cache = DocumentCache()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CachedStore) and self._store == other._store

    __hash__ = None  # type: ignore[assignment]

    def _with_store(self, store: Store) -> CachedStore:
        return type(self)(store, self.cache)

    async def get(
        self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        if byte_range is not None or not is_metadata_key(key):
            return await self._store.get(key, prototype, byte_range)
        if key in self.cache:
            raw = self.cache.get(key)
            return None if raw is None else prototype.buffer.from_bytes(raw)
        buf = await self._store.get(key, prototype)
        self.cache.put(key, None if buf is None else buf.to_bytes())
        return buf

    async def exists(self, key: str) -> bool:
        if is_metadata_key(key) and key in self.cache:
            return self.cache.get(key) is not None
        return await self._store.exists(key)

    async def set(self, key: str, value: Buffer) -> None:
        await self._store.set(key, value)
        if is_metadata_key(key):
            self.cache.put(key, value.to_bytes())

    async def set_if_not_exists(self, key: str, value: Buffer) -> None:
        self.cache.drop(key)
        await self._store.set_if_not_exists(key, value)

    async def delete(self, key: str) -> None:
        await self._store.delete(key)
        if is_metadata_key(key):
            self.cache.put(key, None)

    async def delete_dir(self, prefix: str) -> None:
        self.cache.drop_prefix(prefix.rstrip("/"))
        await self._store.delete_dir(prefix)
