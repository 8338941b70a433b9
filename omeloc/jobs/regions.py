"""Prediction regions decoupled from storage chunks: one Dask task per region of a field.

The unit of inference is a *region*: the whole field when it fits :data:`REGION_SIDE` pixels
per side, else the field cut into regions that are multiples of the image's write block (so
each output chunk belongs to exactly one region).  Each region's read task reads its source
channels straight from zarr (one read, with a halo of ``overlap`` pixels only on sides where
regions split); its inference task calls the engine entry
(:class:`omeloc.engine.inferer.RegionInferer`, the one :func:`omeloc.predict_array` calls too)
with this module's hooks: :class:`Normalize` (the checkpoint's per-channel normalization) before
the tiles, :class:`ToTargetUnits` (back to the target's units, the TTA spread scaled with them)
after the blend.  The forward passes run on the engine's single forward thread: while one
region's runs, Dask's other threads read and normalize the next regions; the write tasks
(:mod:`omeloc.writeback.pixels`) run behind.

Per image the graph holds two small layers (read+normalize, inference; plain task mappings,
not ``map_blocks``), and the region tasks share the image's already opened zarr array: no
array is opened per task.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import dask.array as da
import numpy as np
import torch
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph, MaterializedLayer

from omeloc.engine.device import resolve_device, resolve_precision
from omeloc.engine.inferer import RegionInferer, TileSettings
from omeloc.engine.tiling import check_tiling
from omeloc.learn.normalization import denormalize_channels, normalize_channels
from omeloc.testing.faults import fault_point

__all__ = [
    "REGION_SIDE",
    "Normalize",
    "RegionSettings",
    "ToTargetUnits",
    "infer_region",
    "read_region",
    "region_chunks",
    "region_prediction",
    "region_settings",
]

#: most pixels per side of one inference region (4096² float32 = 64 MiB per channel)
REGION_SIDE = 4096


def region_chunks(length: int, block: int, side: int = REGION_SIDE) -> tuple[int, ...]:
    """Regions along one axis: the whole ``length`` when it is at most ``side``, else multiples of
    ``block``.

    Examples
    --------
    >>> region_chunks(512, 256)
    (512,)
    >>> region_chunks(10000, 1024, side=4096)
    (4096, 4096, 1808)
    """
    if length <= max(side, block):
        return (length,)
    per = max(1, side // block) * block
    sizes = [per] * (length // per)
    if length % per:
        sizes.append(length % per)
    return tuple(sizes)


@dataclass(frozen=True)
class Normalize:
    """The engine's ``normalize`` hook: a raw ``(..., C, H, W)`` region → float32, each source
    channel with its training statistics
    (:func:`~omeloc.learn.normalization.normalize_channels`)."""

    stats: tuple[Mapping[str, Any], ...]

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        planes = [raw[..., k, :, :] for k in range(raw.shape[-3])]
        return np.ascontiguousarray(normalize_channels(planes, list(self.stats)), dtype=np.float32)


@dataclass(frozen=True)
class ToTargetUnits:
    """The engine's ``finish`` hook: the blended prediction (normalized units) → the target's units.

    Without ``spread`` the first target channel, ``(..., h, w)``; with it ``(2, ..., h, w)``:
    the prediction and the spread of the test-time variants (the model's channel ``n``),
    scaled by the target's ``high - low``.
    """

    stats: tuple[Mapping[str, Any], ...]
    spread: bool = False

    def __call__(self, y: np.ndarray) -> np.ndarray:
        n = len(self.stats)
        mean = np.asarray(
            denormalize_channels(y[..., :n, :, :], list(self.stats)), dtype=np.float32
        )
        planes = [mean[..., k, :, :] for k in range(n)]
        for k, stats in enumerate(self.stats if self.spread else ()):
            scale = np.float32(
                float(stats["high"]) - float(stats["low"])
            )  # normalized → target units
            planes.append((y[..., n + k, :, :] * scale).astype(np.float32))
        return planes[0] if len(planes) == 1 else np.stack(planes)


@dataclass(frozen=True)
class RegionSettings:
    """What every region task of a run shares (small and picklable)."""

    ref: Any
    """The model as a :class:`~omeloc.engine.cache.ModelRef` (loaded once per process)."""
    source_index: tuple[int, ...]
    """Indices of the source channels along ``c``, in the model's order."""
    c_axis: int
    source_stats: tuple[Mapping[str, Any], ...]
    target_stats: tuple[Mapping[str, Any], ...]
    tile: tuple[int, int]
    overlap: tuple[int, int]
    blend: str
    batch_size: int | str
    device: str
    precision: str
    z_window: int = 1
    """Planes the model reads around each output plane (a 2.5D model); beyond the stack the first
    or last repeats."""
    z_axis: int = -1
    """Position of z among the image's axes without ``c`` (with ``z_window`` > 1)."""
    zoom: tuple[float, float] = (1.0, 1.0)
    """Resampling of the image to the model's pixel size (y, x); the prediction is resampled
    back."""
    token: str = ""
    """A content hash of the fields above (set by :func:`region_settings`), for graph key names."""

    @property
    def outputs(self) -> int:
        """Planes per region: one per target channel, twice that with :attr:`spread` (the
        predictions, then their spreads); a leading axis of that length when it is more than one."""
        return len(self.target_stats) * (2 if self.spread else 1)

    @property
    def spread(self) -> bool:
        """Whether ``ref`` returns the mean and the spread of its test-time variants
        (:class:`~omeloc.learn.tta.TTARef` with ``spread=True``): the regions then hold two planes,
        the prediction and its uncertainty."""
        return bool(getattr(self.ref, "spread", False))

    @cached_property
    def inferer(self) -> RegionInferer:
        """The engine entry with this run's model, tiling and hooks (built once per process)."""
        n = len(self.target_stats)
        tiles = TileSettings.of(self.tile, self.overlap, self.blend, None, self.batch_size)
        return RegionInferer(
            self.ref,
            tiles,
            self.device,
            self.precision,
            out_channels=2 * n if self.spread else n,
            normalize=Normalize(
                tuple(st for st in self.source_stats for _ in range(max(1, self.z_window)))
            ),
            finish=ToTargetUnits(self.target_stats, self.spread),
        )


def _halo(
    loc: Sequence[tuple[int, int]], shape: Sequence[int], overlap: tuple[int, int]
) -> tuple[list[slice], tuple[slice, slice]]:
    """The plane region to read (``loc`` grown by ``overlap`` in y and x, clipped) and the core
    inside it."""
    read = [slice(a, b) for a, b in loc]
    core = []
    for ax, o in ((-2, overlap[0]), (-1, overlap[1])):
        a, b = loc[ax]
        lo, hi = max(0, a - o), min(shape[ax], b + o)
        read[ax] = slice(lo, hi)
        core.append(slice(a - lo, b - lo))
    return read, (core[0], core[1])


def read_region(array: Any, settings: RegionSettings, block_info: dict | None = None) -> np.ndarray:
    """Dask task: one region's source channels with their halo, read at once, in the source's
    dtype, stacked along axis -3 (the engine's ``normalize`` hook normalizes them).

    The block returned is larger than the declared chunk (the halo, and a channel axis at -3):
    only :func:`infer_region` consumes it.
    """
    loc = [tuple(r) for r in block_info[None]["array-location"]]
    shape = block_info[None]["shape"]
    read, _ = _halo(loc, shape, settings.overlap)
    zs = None
    if (
        settings.z_window > 1
    ):  # the planes around each of the region's planes, the stack's ends repeated
        a, b = loc[settings.z_axis]
        h, n_z = settings.z_window // 2, shape[settings.z_axis]
        lo, hi = max(0, a - h), min(n_z, b + h)
        read[settings.z_axis] = slice(lo, hi)
        zs = (
            np.clip(np.arange(a, b)[:, None] + np.arange(-h, h + 1)[None, :], 0, n_z - 1) - lo
        )  # (planes, K)
    planes = []
    for k in settings.source_index:
        index = list(read)
        index.insert(settings.c_axis, k)
        plane = np.asarray(array[tuple(index)])
        if zs is not None:  # (..., planes, K, ..., y, x) → (..., planes, ..., K, y, x)
            plane = np.moveaxis(np.take(plane, zs, axis=settings.z_axis), settings.z_axis + 1, -3)
        planes.append(plane)
    if zs is None:
        return np.stack(planes, axis=-3)
    # (..., C, K, y, x) → (..., C * K, y, x): each channel's planes together (the normalize hook
    # repeats each channel's statistics K times)
    x = np.stack(planes, axis=-4)
    return x.reshape(*x.shape[:-4], -1, *x.shape[-2:])


def infer_region(
    x: np.ndarray, settings: RegionSettings, block_info: dict | None = None
) -> np.ndarray:
    """Dask task: the virtual channel of one region from :func:`read_region`'s block, in the
    target's units (with ``settings.spread``: ``(2, ...)``, the prediction and its spread across
    the test-time variants)."""
    fault_point("predict_block")
    loc = [tuple(r) for r in block_info[None]["array-location"]]
    _, core = _halo(loc, block_info[None]["shape"], settings.overlap)
    if settings.zoom == (1.0, 1.0):
        return settings.inferer(x, core)
    # to the model's pixel size: the whole region predicted, resampled back, cropped once
    size = x.shape[-2:]
    zoomed = resample(
        x.astype(np.float32), tuple(max(1, round(s * z)) for s, z in zip(size, settings.zoom))
    )
    y = settings.inferer(zoomed, None)
    return np.ascontiguousarray(resample(y, size)[..., core[0], core[1]])


def resample(x: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """``(..., H, W)`` float32 resized to ``size`` (bilinear, antialiased when shrinking)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).reshape(-1, 1, *x.shape[-2:])
    out = torch.nn.functional.interpolate(
        t,
        size=tuple(int(s) for s in size),
        mode="bilinear",
        align_corners=False,
        antialias=any(s < n for s, n in zip(size, x.shape[-2:])),
    )
    return out.reshape(*x.shape[:-2], *out.shape[-2:]).numpy()


def region_prediction(
    array: Any,
    axes: Sequence[str],
    blocks: Sequence[int],
    settings: RegionSettings,
    side: int = REGION_SIDE,
    annotate: Callable[[], Any] = contextlib.nullcontext,
) -> da.Array:
    """The lazy virtual channel of one image: a read and an inference task per region.

    ``array`` is the image's level-0 array (a zarr array or anything indexable like it, with
    ``shape``), ``axes`` its axes, ``blocks`` its write block (the shard, else the chunk).  The
    result has the axes without ``c``; its chunks are the regions (whole planes up to ``side``
    px per side, else multiples of the write block along y and x; the write block along the
    other axes).  ``annotate`` makes the context the inference layer is built in (a GPU
    resource on a cluster); the read layer is not annotated, so reads overlap inference.
    With several target channels or ``settings.spread`` the result has a leading axis of
    :attr:`RegionSettings.outputs`: the predictions, then (``spread``) their spreads.

    The two layers are plain task mappings, not ``map_blocks``: a plate holds thousands of
    these arrays at once: two ``map_blocks`` layers cost ~10 kB per image, these two ~3 kB
    (``benchmarks/README.md``, "Plates of thousands of images").
    """
    chunks = []
    for ax, n, b in zip(axes, array.shape, blocks):
        if ax != "c":
            chunks.append(region_chunks(int(n), int(b), side if ax in ("y", "x") else int(b)))
    token = tokenize(
        tuple(array.shape), tuple(axes), settings.token, side, getattr(array, "where", id(array))
    )
    read_name, name = f"omeloc-read-region-{token}", f"omeloc-region-{token}"
    # reader and settings are bound into the functions once per image (as task arguments Dask
    # would walk them for collections); each task holds only its region's location
    read = functools.partial(_read_at, array, settings)
    infer = functools.partial(_infer_at, settings)
    shape = tuple(sum(c) for c in chunks)
    lead = (
        (0,) if settings.outputs > 1 else ()
    )  # several planes: a leading axis (predictions, then spreads)
    read_layer, infer_layer = {}, {}
    for index, loc in _region_locations(chunks):
        read_layer[(read_name, *index)] = (read, loc, shape)
        infer_layer[(name, *lead, *index)] = (infer, (read_name, *index), loc, shape)
    layers = {read_name: MaterializedLayer(read_layer)}
    with annotate():
        layers[name] = MaterializedLayer(infer_layer)
    graph = HighLevelGraph(layers, {read_name: set(), name: {read_name}})
    out_chunks = ((settings.outputs,), *chunks) if settings.outputs > 1 else tuple(chunks)
    return da.Array(graph, name, chunks=out_chunks, meta=_meta(len(out_chunks)))


@functools.cache
def _meta(ndim: int) -> np.ndarray:
    """The (shared) ``meta`` of a float32 prediction of ``ndim`` axes."""
    return np.empty((0,) * ndim, dtype=np.float32)


def _region_locations(
    chunks: Sequence[tuple[int, ...]],
) -> list[tuple[tuple[int, ...], tuple[tuple[int, int], ...]]]:
    """Block index and ``(start, stop)`` per axis of every chunk of ``chunks``."""
    starts = [np.cumsum((0, *c)).tolist() for c in chunks]
    return [
        (index, tuple((starts[ax][i], starts[ax][i + 1]) for ax, i in enumerate(index)))
        for index in np.ndindex(*(len(c) for c in chunks))
    ]


def _block_info(loc: tuple[tuple[int, int], ...], shape: tuple[int, ...]) -> dict:
    """What ``map_blocks`` would pass as ``block_info`` to a task of region ``loc``."""
    return {None: {"array-location": list(loc), "shape": shape}}


def _read_at(
    array: Any, settings: RegionSettings, loc: tuple[tuple[int, int], ...], shape: tuple[int, ...]
) -> np.ndarray:
    """Dask task: :func:`read_region` of the region at ``loc`` of a plane of ``shape``."""
    return read_region(array, settings, block_info=_block_info(loc, shape))


def _infer_at(
    settings: RegionSettings,
    x: np.ndarray,
    loc: tuple[tuple[int, int], ...],
    shape: tuple[int, ...],
) -> np.ndarray:
    """Dask task: :func:`infer_region` of the region at ``loc`` of a plane of ``shape``."""
    return infer_region(x, settings, block_info=_block_info(loc, shape))


def region_settings(
    ref: Any,
    source_index: Sequence[int],
    c_axis: int,
    source_stats: Sequence[Mapping[str, Any]],
    target_stats: Sequence[Mapping[str, Any]],
    tiling: Any,
    zoom: tuple[float, float] = (1.0, 1.0),
    z_window: int = 1,
    z_axis: int = -1,
) -> RegionSettings:
    """:class:`RegionSettings` from a :class:`~omeloc.config.TilingConfig`, device and precision
    resolved."""
    tile, overlap = check_tiling(int(tiling.tile), int(tiling.overlap))
    dev = resolve_device(tiling.device)
    settings = RegionSettings(
        ref=ref,
        source_index=tuple(int(i) for i in source_index),
        c_axis=c_axis,
        source_stats=tuple(source_stats),
        target_stats=tuple(target_stats),
        tile=tile,
        overlap=overlap,
        blend=tiling.blend,
        batch_size=tiling.batch_size,
        device=str(dev),
        precision=resolve_precision(tiling.precision, dev),
        zoom=(float(zoom[0]), float(zoom[1])),
        z_window=int(z_window),
        z_axis=int(z_axis),
    )
    key = (
        getattr(ref, "key", repr(ref)),
        settings.source_index,
        c_axis,
        repr(source_stats),
        repr(target_stats),
        tile,
        overlap,
        settings.blend,
        settings.batch_size,
        settings.device,
        settings.precision,
        settings.zoom,
        settings.z_window,
        settings.z_axis,
    )
    return dataclasses.replace(settings, token=tokenize(key))
