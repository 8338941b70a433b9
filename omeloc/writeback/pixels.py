"""The pixels of a new channel: the Dask tasks that write them and the graphs that run those tasks.

Level 0 is written from the caller's data, one task per block of the data: a zarr write block
(the shard when sharded, else the chunk), or a region of whole write blocks (a prediction
region), so each storage unit is written exactly once and no locks are needed.  When a task
holds whole planes (y and x) and the lower levels share level 0's blocks along the other axes,
the same task also writes every lower level of those planes from the values in memory
("fused"); otherwise each lower level is built from the level above it, one task per write
block that reads the matching region of the level above (edge-padded) and writes its mean, to
the level's existing shape.  Both give the same bytes.  Tasks write pixel chunks only and
return the bytes they wrote; metadata is written by the driver (:mod:`omeloc.writeback.protocol`).
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import functools
import json
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import dask.array as da
import numpy as np
import zarr
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph

from omeloc.errors import InputError
from omeloc.ngff.format import join_path
from omeloc.ngff.pyramid import cast_to_dtype, downsample_mean
from omeloc.ngff.stores import fsspec_options, io_concurrency
from omeloc.ngff.writer import channel_window
from omeloc.testing.faults import fault_point
from omeloc.writeback.plan import ImagePlan, WritePlan, without_axis

__all__ = [
    "RunStore",
    "level0_graph",
    "fusable",
    "lower_level_graph",
    "open_level",
    "sample_windows",
    "stop_writes",
    "write_level0_block",
    "write_lower_block",
    "write_pixels",
]

#: runs a graph whose result is a byte count, with a description for progress bars
GraphRunner = Callable[[da.Array, str], int]


@dataclass(frozen=True)
class RunStore:
    """How the tasks of one run open the target's arrays (small and picklable, sent with each
    task)."""

    so_json: str
    """fsspec storage options as sorted JSON (hashable, so opened arrays can be cached)."""
    zarr_format: int
    run_id: str

    @classmethod
    def of(
        cls, storage_options: Mapping[str, Any] | None, zarr_format: int, run_id: str
    ) -> RunStore:
        """The RunStore for a run with these storage options."""
        return cls(
            json.dumps(dict(storage_options or {}), sort_keys=True, default=str),
            zarr_format,
            run_id,
        )

    def array(self, url: str, meta: Any = None) -> zarr.Array:
        """The writable array at ``url`` (cached per process and run); with ``meta`` (its zarr
        metadata after the resize, sent with the task) opened without reading its document."""
        if meta is not None:
            return _from_metadata(url, self.so_json, self.run_id, meta)
        return open_level(url, self.so_json, self.zarr_format, self.run_id)

    def write(
        self, url: str, region: tuple[slice, ...], values: np.ndarray, meta: Any = None
    ) -> None:
        """Write ``values`` into ``region`` of the array at ``url``, unless the run was stopped."""
        with _in_flight(self.run_id):
            self.array(url, meta)[region] = values


#: in this process: writes running per run id, and the runs stopped (their tasks must not write)
_GUARD = threading.Condition()
_IN_FLIGHT: dict[str, int] = {}
_STOPPED: set[str] = set()


@contextlib.contextmanager
def _in_flight(run_id: str) -> Iterator[None]:
    with _GUARD:
        if run_id in _STOPPED:
            raise RuntimeError(f"omeloc run {run_id} was stopped: its remaining writes are skipped")
        _IN_FLIGHT[run_id] = _IN_FLIGHT.get(run_id, 0) + 1
    try:
        yield
    finally:
        with _GUARD:
            _IN_FLIGHT[run_id] -= 1
            _GUARD.notify_all()


def stop_writes(run_id: str, timeout: float = 120.0) -> bool:
    """Stop a failed run's pixel writes in this process and wait for those still running to end.

    A graph that fails returns at its first error while Dask's local threads finish the tasks
    they are running; a rollback must not start before those writes have landed, or they
    would leave chunks behind it.  (Tasks on other processes, e.g. distributed workers, are
    not covered.)  Returns whether every running write ended within ``timeout`` seconds.
    """
    with _GUARD:
        _STOPPED.add(run_id)
        return _GUARD.wait_for(lambda: _IN_FLIGHT.get(run_id, 0) == 0, timeout)


@functools.lru_cache(maxsize=512)
def open_level(url: str, so_json: str, zarr_format: int, run_id: str) -> zarr.Array:
    """A writable zarr array, cached per process and run (the run id keys the fresh shape)."""
    so = fsspec_options(url, json.loads(so_json))
    kwargs: dict[str, Any] = {"mode": "r+", "zarr_format": zarr_format}
    if so:
        kwargs["storage_options"] = so
    return zarr.open_array(url, **kwargs)


#: arrays opened from the metadata their tasks carry, per process: (url, options, run id) → array
_FROM_METADATA: collections.OrderedDict[tuple[str, str, str], zarr.Array] = (
    collections.OrderedDict()
)
_FROM_METADATA_LOCK = threading.Lock()


def _from_metadata(url: str, so_json: str, run_id: str, meta: Any) -> zarr.Array:
    """The writable array at ``url`` built from ``meta`` (no metadata read: one request less per
    array)."""
    key = (url, so_json, run_id)
    with _FROM_METADATA_LOCK:
        if key in _FROM_METADATA:
            _FROM_METADATA.move_to_end(key)
            return _FROM_METADATA[key]
    from zarr.core.array import AsyncArray
    from zarr.core.sync import sync
    from zarr.storage._common import make_store_path

    where = sync(
        make_store_path(url, mode="r+", storage_options=fsspec_options(url, json.loads(so_json)))
    )
    arr = zarr.Array(AsyncArray(metadata=meta, store_path=where))
    with _FROM_METADATA_LOCK:
        _FROM_METADATA[key] = arr
        while len(_FROM_METADATA) > 512:
            _FROM_METADATA.popitem(last=False)
    return arr


def write_level0_block(
    block: np.ndarray,
    *,
    store: RunStore,
    url: str,
    c_axis: int,
    index: int,
    out_dtype: str,
    where: str,
    lower: tuple[tuple[str, tuple[int, ...], Any], ...] = (),
    plane_axes: tuple[str, ...] = (),
    meta: Any = None,
    block_info: dict | None = None,
) -> np.ndarray:
    """Dask task: cast one block of the new channels ``(k, *plane block)`` and write it into its own
    zarr block(s) (channels ``index`` to ``index + k``); with ``lower`` (url and shape without ``c``
    of each lower level; the block holds whole y-x planes) also the lower levels of those planes."""
    loc = block_info[0]["array-location"][1:]
    block = np.asarray(block)
    if block.dtype.kind == "f" and not np.isfinite(block).all():
        raise InputError(
            f"Data for {where} has NaN or infinite values (region {[tuple(r) for r in loc]}). "
            f"Replace them (e.g. np.nan_to_num) before adding the channel."
        )
    cast = cast_to_dtype(block, out_dtype)
    values = np.moveaxis(cast, 0, c_axis)
    region = [slice(a, b) for a, b in loc]
    region.insert(c_axis, slice(index, index + block.shape[0]))
    store.write(url, tuple(region), values, meta)
    fault_point("level0_block")
    nbytes = values.nbytes
    for (
        dst_url,
        shape,
        dst_meta,
    ) in lower:  # fused: each level from the one above, as write_lower_block computes it
        target = [n if ax in ("y", "x") else b - a for ax, n, (a, b) in zip(plane_axes, shape, loc)]
        cast = np.stack([downsample_mean(plane, plane_axes, target) for plane in cast])
        region = [
            slice(0, n) if ax in ("y", "x") else slice(a, b)
            for ax, n, (a, b) in zip(plane_axes, shape, loc)
        ]
        region.insert(c_axis, slice(index, index + block.shape[0]))
        store.write(dst_url, tuple(region), np.moveaxis(cast, 0, c_axis), dst_meta)
        nbytes += cast.nbytes
    return np.full((1,) * block.ndim, nbytes, dtype=np.int64)


def fusable(img: ImagePlan, axes: tuple[str, ...]) -> bool:
    """Whether the level-0 tasks of ``img`` can write its lower levels too: each data block holds
    whole y-x planes, and every lower level has level 0's size and write block along the other
    axes."""
    plane_axes = without_axis(tuple(axes), img.c_axis)
    if len(img.level_paths) < 2 or any(
        len(c) != 1 for ax, c in zip(plane_axes, img.data.chunks[1:]) if ax in ("y", "x")
    ):
        return False

    def off_plane(level: int) -> list[tuple[int, int]]:
        """Size and write block of a level along every axis but y and x (c included)."""
        return [
            (n, b)
            for ax, n, b in zip(axes, img.shapes[level], img.write_blocks[level])
            if ax not in ("y", "x")
        ]

    return all(off_plane(level) == off_plane(0) for level in range(1, len(img.level_paths)))


def _source_region(
    loc: list[tuple[int, int]],
    src_plane: tuple[int, ...],
    plane_axes: tuple[str, ...],
    dst_plane: tuple[int, ...],
) -> tuple[list[slice], list[np.ndarray]]:
    """What a lower-level block reads from the level above: slices, and the indices to take from
    them.

    Target ``[a, b)`` along an axis of factor ``f`` reads source ``[a*f, b*f)``, clipped and
    edge-padded (only y and x are downsampled).
    """
    read, take = [], []
    for (a, b), n_src, n_dst, ax in zip(loc, src_plane, dst_plane, plane_axes):
        f = max(1, round(n_src / n_dst)) if ax in ("y", "x") else 1
        want = np.arange(a * f, b * f)
        lo = min(a * f, n_src - 1)
        hi = max(lo + 1, min(b * f, n_src))
        read.append(slice(lo, hi))
        take.append(np.clip(want, lo, hi - 1) - lo)
    return read, take


def write_lower_block(
    dummy: np.ndarray,
    *,
    store: RunStore,
    src_url: str,
    dst_url: str,
    c_axis: int,
    index: int,
    axes: tuple[str, ...],
    src_shape: tuple[int, ...],
    k: int = 1,
    src_meta: Any = None,
    dst_meta: Any = None,
    block_info: dict | None = None,
) -> np.ndarray:
    """Dask task: one block of a lower level (channels ``index`` to ``index + k``), the mean of the
    matching region of the level above."""
    loc = [tuple(r) for r in block_info[0]["array-location"]]
    plane_axes = tuple(a for i, a in enumerate(axes) if i != c_axis)
    read, take = _source_region(
        loc, without_axis(tuple(src_shape), c_axis), plane_axes, tuple(block_info[0]["shape"])
    )
    src_region = list(read)
    src_region.insert(c_axis, slice(index, index + k))
    src = np.moveaxis(store.array(src_url, src_meta)[tuple(src_region)], c_axis, 0)
    values = np.stack(
        [downsample_mean(plane[np.ix_(*take)], plane_axes, tuple(dummy.shape)) for plane in src],
        axis=c_axis,
    )
    region = [slice(a, b) for a, b in loc]
    region.insert(c_axis, slice(index, index + k))
    store.write(dst_url, tuple(region), values, dst_meta)
    return np.full((1,) * dummy.ndim, values.nbytes, dtype=np.int64)


def level0_graph(
    plan: WritePlan,
    store: RunStore,
    done: Mapping[str, set[tuple[int, ...]]] | None = None,
    fused: frozenset[str] = frozenset(),
    axes: tuple[str, ...] = (),
) -> da.Array | None:
    """The graph writing level 0 of every image (its value: bytes written); ``None`` if nothing is
    left.

    ``done`` maps an image path to the Dask blocks a killed run of the same job finished
    (see :mod:`omeloc.writeback.resume`): only the other blocks are computed.  The tasks of
    the images in ``fused`` (see :func:`fusable`; ``axes`` the images' axes) write their lower
    levels too.
    """
    graphs, keys = [], []
    for img in plan.images:
        lower = (
            tuple(
                (
                    join_path(img.url, img.level_paths[n]),
                    without_axis(img.shapes[n], img.c_axis),
                    img.level_metadata(n),
                )
                for n in range(1, len(img.level_paths))
            )
            if img.path in fused
            else ()
        )
        # constants bound into the function: as map_blocks keywords Dask would walk them for
        # collections once per image (a cost that shows on plates of thousands of images)
        task = functools.partial(
            write_level0_block,
            store=store,
            url=join_path(img.url, img.level_paths[0]),
            c_axis=img.c_axis,
            index=plan.channel_index,
            out_dtype=plan.dtype,
            where=f"image {img.path or plan.target}",
            lower=lower,
            plane_axes=without_axis(tuple(axes), img.c_axis) if lower else (),
            meta=img.level_metadata(0),
        )
        token = tokenize(img.url, img.data.name, store.run_id, plan.channel_index, bool(lower))
        # one task per write block holds all k channels (a block shared along c is written once)
        written = img.data.map_blocks(
            task,
            chunks=tuple((1,) * len(c) for c in img.data.chunks),
            dtype=np.int64,
            name=f"omeloc-write-{token}",
        )
        skip = (done or {}).get(img.path) or set()
        # resumed: only the blocks the killed run did not finish (the others are culled)
        keys.extend((written.name, *i) for i in np.ndindex(*written.numblocks) if i not in skip)
        graphs.append(written)
    return (
        _total(graphs, keys, f"omeloc-level0-total-{tokenize(store.run_id, keys)}")
        if keys
        else None
    )


def _sum_blocks(blocks: list[np.ndarray]) -> np.ndarray:
    return np.asarray(sum(int(np.sum(b)) for b in blocks), dtype=np.int64)


def _total(arrays: list[da.Array], keys: list[tuple], name: str) -> da.Array:
    """A 0-d array: the sum of the blocks ``keys`` of ``arrays`` (one task, not one reduction per
    image)."""
    layer = {(name,): (_sum_blocks, list(keys))}
    graph = HighLevelGraph.from_collections(name, layer, dependencies=arrays)
    return da.Array(graph, name, chunks=(), dtype=np.int64)


def _lower_level_image(
    img: ImagePlan, level: int, index: int, store: RunStore, axes: tuple[str, ...], k: int = 1
) -> da.Array:
    shape = without_axis(img.shapes[level], img.c_axis)
    dummy = da.zeros(shape, chunks=without_axis(img.write_blocks[level], img.c_axis), dtype=np.int8)
    task = functools.partial(
        write_lower_block,
        store=store,
        src_url=join_path(img.url, img.level_paths[level - 1]),
        dst_url=join_path(img.url, img.level_paths[level]),
        c_axis=img.c_axis,
        index=index,
        axes=axes,
        src_shape=img.shapes[level - 1],
        k=k,
        src_meta=img.level_metadata(level - 1),
        dst_meta=img.level_metadata(level),
    )
    return dummy.map_blocks(
        task,
        chunks=tuple((1,) * len(c) for c in dummy.chunks),
        dtype=np.int64,
        meta=np.empty((0,) * dummy.ndim, dtype=np.int64),
        name=(
            f"omeloc-write-level{level}-"
            f"{tokenize(img.url, level, index, k, store.run_id, img.shapes)}"
        ),
    ).sum()


def lower_level_graph(
    plan: WritePlan,
    level: int,
    store: RunStore,
    axes: tuple[str, ...],
    fused: frozenset[str] = frozenset(),
) -> da.Array | None:
    """The graph writing pyramid level ``level`` (≥ 1) of every image that has it, from the level
    above (not the images in ``fused``, whose level-0 tasks wrote it); ``None`` if there is none."""
    totals = [
        _lower_level_image(img, level, plan.channel_index, store, axes, plan.k)
        for img in plan.images
        if level < len(img.level_paths) and img.path not in fused
    ]
    return da.stack(totals).sum() if totals else None


def write_pixels(
    plan: WritePlan,
    store: RunStore,
    axes: tuple[str, ...],
    run: GraphRunner,
    done: Mapping[str, set[tuple[int, ...]]] | None = None,
) -> int:
    """Write the new channel at every level, level by level with ``run``; the bytes written.

    Each level runs as graphs of at most :data:`BATCH_IMAGES` images: Dask's state for a graph
    grows with its tasks (~18 kB per image), so peak memory stays flat in the plate's size.
    """
    # a resumed image's kept blocks have no lower levels yet: those are built level by level
    fused = frozenset(
        img.path for img in plan.images if fusable(img, axes) and not (done or {}).get(img.path)
    )
    nbytes = 0
    for batch, desc in _batches(plan, "level 0"):
        total = level0_graph(batch, store, done, fused, axes)
        nbytes += run(total, desc) if total is not None else 0
    fault_point("level0_written")
    for level in range(1, plan.levels):
        for batch, desc in _batches(plan, f"level {level}"):
            graph = lower_level_graph(batch, level, store, axes, fused)
            nbytes += run(graph, desc) if graph is not None else 0
        fault_point(f"level{level}_written")
    return nbytes


#: most images per pixel graph (see :func:`write_pixels`)
BATCH_IMAGES = 256


def _batches(plan: WritePlan, desc: str) -> Iterator[tuple[WritePlan, str]]:
    """``plan`` cut into plans of at most :data:`BATCH_IMAGES` images, each with its progress
    label."""
    n = len(plan.images)
    if n <= BATCH_IMAGES:
        yield plan, desc
        return
    for start in range(0, n, BATCH_IMAGES):
        stop = min(n, start + BATCH_IMAGES)
        yield (
            dataclasses.replace(plan, images=plan.images[start:stop]),
            f"{desc} (images {start + 1}-{stop} of {n})",
        )


def sample_windows(plan: WritePlan, store: RunStore) -> list[dict[str, float]]:
    """omero windows from the 0.1/99.9 percentiles of each new channel (its lowest levels, at most
    :data:`WINDOW_SAMPLES` pixels per image), the images read concurrently (on object storage each
    read is a round trip)."""

    def sample(img: ImagePlan) -> list[np.ndarray]:
        arr = store.array(join_path(img.url, img.level_paths[-1]), img.level_metadata(-1))
        index: list[Any] = [slice(None)] * arr.ndim
        index[img.c_axis] = slice(plan.channel_index, plan.channel_index + plan.k)
        values = np.moveaxis(np.asarray(arr[tuple(index)]), img.c_axis, 0)
        # at most WINDOW_SAMPLES pixels per image: memory flat in the plate's size
        return [
            plane.ravel()[:: max(1, -(-plane.size // WINDOW_SAMPLES))].copy() for plane in values
        ]

    with concurrent.futures.ThreadPoolExecutor(max_workers=min(io_concurrency(), 32)) as pool:
        per_image = list(pool.map(sample, plan.images))
    return [
        channel_window(np.concatenate([s[j] for s in per_image]), np.dtype(plan.dtype))
        for j in range(plan.k)
    ]


#: most pixels per image and channel that :func:`sample_windows` keeps (evenly strided)
WINDOW_SAMPLES = 16384
