"""Tiled, blended, lazy inference of 2D image-to-image models over dask arrays.

:func:`predict_array` turns a lazy ``(..., C, Y, X)`` array into a lazy float32
``(..., C', Y, X)`` prediction.  The unit of work is an output block: it is read with a
halo of ``overlap`` pixels (clipped at the image border), cut into tiles that overlap by
``overlap`` pixels, run through the model in batches under ``torch.inference_mode``,
blended (:mod:`omeloc.engine.tiling`), cropped to the block and returned: each block task is
one call of the engine entry, :class:`~omeloc.engine.inferer.RegionInferer`, the same one
plate predict's region tasks call.  Each output block is produced once; peak memory depends
on block, tile and batch size, never on the image size.

Seams.  A margin of ``trim`` pixels on every inner side of a tile gets zero blending weight:
there the network computed from its zero padding.  For a network whose receptive field
(radius) is at most ``trim`` and ``overlap``, the tiled output equals the whole-image output
up to float rounding (``benchmarks/README.md``, "Seams").

Models enter the graph once: a ModelRef (``key`` + ``load(device)``) is a tiny object the
tasks share, and an in-memory ``nn.Module`` or callable is wrapped into one and put into the
graph as a single key.  Every process loads a model once (:func:`omeloc.engine.cache.get_model`).

Threads.  One forward pass runs at a time per process and device, always on one dedicated
thread, using all of torch's intra-op threads, while Dask's threads read, pad and blend other
blocks: torch threads x concurrent forwards never exceed the cores, and torch's OpenMP pool is
not duplicated per Dask thread.  With several worker processes on one machine set
``torch.set_num_threads`` to cores / processes.

Precision.  Measured on this project's CPU with the default U-Net (7.8 M params, random
weights, BatchNorm calibrated so outputs have unit scale), 1024² image: bf16 vs fp32 Pearson
r = 0.9987, RMSE 5.2 % and max abs error 32 % of the fp32 output's std
(``benchmarks/results/inference.json``, key ``quality``); bf16 is ~2x faster than fp32 there.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import dask
import dask.array as da
import numpy as np
import torch

from omeloc.engine.cache import (
    InMemoryModel,
    ModelRef,
    clear_model_cache,
    fold_batchnorm,
    get_model,
    prepare_model,
)
from omeloc.engine.device import PRECISIONS, resolve_device, resolve_precision
from omeloc.engine.forward import (
    CPU_BATCH,
    MAX_AUTO_BATCH,
    batch_from_memory,
    forward,
    resolve_batch_size,
    tile_rules,
)
from omeloc.engine.inferer import RegionInferer, TileSettings, predict_tiles
from omeloc.engine.tiling import BLEND_MODES, check_tiling, check_trim
from omeloc.errors import InputError
from omeloc.testing.faults import fault_point

__all__ = [
    "CPU_BATCH",
    "MAX_AUTO_BATCH",
    "PRECISIONS",
    "InMemoryModel",
    "ModelRef",
    "RegionInferer",
    "TileSettings",
    "batch_from_memory",
    "clear_model_cache",
    "fold_batchnorm",
    "get_model",
    "predict_array",
    "predict_numpy",
    "prepare_model",
    "resolve_batch_size",
    "resolve_device",
    "resolve_precision",
    "skipped_blocks",
]

_skipped = 0
_skipped_lock = threading.Lock()


def skipped_blocks(reset: bool = False) -> int:
    """How many blocks this process filled without running the model (``skip_below``).

    Counts block computations since the process started or the last ``reset=True`` (which
    returns the count and sets it to zero).  On a distributed cluster each worker process
    keeps its own count.
    """
    global _skipped
    with _skipped_lock:
        n = _skipped
        if reset:
            _skipped = 0
        return n


def _count_skipped() -> None:
    global _skipped
    with _skipped_lock:
        _skipped += 1


def predict_numpy(
    model: Any,
    region: np.ndarray,
    *,
    tile: tuple[int, int],
    overlap: tuple[int, int],
    blend: str,
    batch_size: int | str,
    device: torch.device,
    precision: str,
    out_channels: int,
    core: tuple[slice, slice] | None = None,
    trim: int | tuple[int, int] | None = None,
) -> np.ndarray:
    """Tile, predict and blend one in-memory region ``(..., C, H, W)`` with a loaded model.

    :func:`~omeloc.engine.inferer.predict_tiles` with the settings as keywords; ``trim``
    defaults to ``overlap // 4`` and ``batch_size`` may be ``"auto"``.  The result is float32
    ``(..., C', h, w)``, the prediction of ``core`` (default: the whole region).
    """
    tiles = TileSettings.of(tile, overlap, blend, trim, batch_size)
    return predict_tiles(model, region, tiles, device, precision, out_channels, core)


def _predict_block(
    block: np.ndarray,
    ref: ModelRef,
    *,
    depth: tuple[int, int],
    nblocks: tuple[int, int],
    block_id: tuple[int, ...] | None = None,
    tiles: TileSettings,
    device: str,
    precision: str,
    out_channels: int,
    skip_below: float | None = None,
    fill: float = 0.0,
) -> np.ndarray:
    """One output block from its input block with halo (a ``map_blocks`` task)."""
    fault_point("predict_block")
    iy, ix = block_id[-2:]
    h, w = block.shape[-2:]
    top = depth[0] if iy > 0 else 0
    left = depth[1] if ix > 0 else 0
    bottom = h - (depth[0] if iy < nblocks[0] - 1 else 0)
    right = w - (depth[1] if ix < nblocks[1] - 1 else 0)
    if skip_below is not None and np.all(block < skip_below):
        _count_skipped()
        shape = (*block.shape[:-3], out_channels, bottom - top, right - left)
        return np.full(shape, fill, dtype=np.float32)
    inferer = RegionInferer(ref, tiles, device, precision, out_channels)
    return inferer(block, (slice(top, bottom), slice(left, right)))


def _merge_chunks(chunks: Sequence[int], minimum: int) -> tuple[int, ...]:
    """Merge consecutive chunks so that every merged one is >= ``minimum`` (when possible)."""
    merged: list[int] = []
    run = 0
    for c in chunks:
        run += c
        if run >= minimum:
            merged.append(run)
            run = 0
    if run:
        if merged and run < minimum:
            merged[-1] += run
        else:
            merged.append(run)
    return tuple(merged)


def _declared_out_channels(model: Any) -> int | None:
    """C' as the model declares it (``out_channels`` or ``config["out_channels"]``), if it does."""
    for obj in (model, getattr(model, "model", None)):
        if obj is None:
            continue
        n = getattr(obj, "out_channels", None)
        if n is None and isinstance(getattr(obj, "config", None), dict):
            n = obj.config.get("out_channels")
        if isinstance(n, int) and n > 0:
            return n
    return None


def _infer_out_channels(
    ref: ModelRef, in_channels: int, device: torch.device, precision: str, size: tuple[int, int]
) -> int:
    """C' of ``ref``: declared, else found by one forward pass on zeros of the tile's size.

    The probe has the size of the largest tile the model will see (``size``, rounded up to
    the model's ``multiple``): models that downsample and normalise per instance fail on
    tiny inputs.
    """
    declared = _declared_out_channels(ref)
    if declared is not None:
        return declared
    loaded = get_model(ref, device)
    rules = tile_rules(loaded)
    py, px = (rules.padded(s) for s in size)
    y = forward(loaded, np.zeros((1, in_channels, py, px), np.float32), device, precision)
    return int(y.shape[1])


def _check_settings(
    blend: str, batch_size: int | str, out_channels: int | None, skip_below: float | None
) -> None:
    """Validate the settings :func:`check_tiling` and the device helpers do not."""
    if blend not in BLEND_MODES:
        raise InputError(f"Unknown blend {blend!r}. Use one of {', '.join(BLEND_MODES)}.")
    if batch_size != "auto" and (
        not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1
    ):
        raise InputError(f"Expected batch_size >= 1 or 'auto'. Got {batch_size!r} instead.")
    if out_channels is not None and (not isinstance(out_channels, int) or out_channels < 1):
        raise InputError(f"Expected out_channels >= 1. Got {out_channels!r} instead.")
    if skip_below is not None and not np.isfinite(skip_below):
        raise InputError(
            f"Expected skip_below as a finite number or None. Got {skip_below!r} instead."
        )


def _as_array(array: Any) -> da.Array:
    arr = array if isinstance(array, da.Array) else da.asarray(array)
    if arr.ndim < 3:
        raise InputError(
            f"Expected an array with axes (..., C, Y, X). Got shape {arr.shape}; "
            f"add a channel axis (array[None])."
        )
    return arr


def _as_ref(model: Any) -> tuple[ModelRef, Any]:
    """The model as a ModelRef, and the object to pass to the tasks (one graph key for modules)."""
    if isinstance(model, ModelRef) and not isinstance(model, torch.nn.Module):
        return model, model
    ref = InMemoryModel(model)
    return ref, dask.delayed(ref, name=f"omeloc-model-{ref.key.rsplit(':', 1)[-1]}")


def _rechunk_to_blocks(arr: da.Array, tile: tuple[int, int], overlap: tuple[int, int]) -> da.Array:
    """One chunk along C; chunks along y and x merged until each is >= ``tile - 2 * overlap``."""
    blocks = list(arr.chunks)
    blocks[-3] = (arr.shape[-3],)
    for ax, t, o in ((-2, tile[0], overlap[0]), (-1, tile[1], overlap[1])):
        blocks[ax] = _merge_chunks(arr.chunks[ax], max(t - 2 * o, o, 1))
    return arr.rechunk(tuple(blocks))


def _map_blocks(
    arr: da.Array, ref_arg: Any, c_out: int, tiles: TileSettings, **settings: Any
) -> da.Array:
    """The lazy prediction of ``arr`` (already in blocks): halo, ``_predict_block`` per block."""
    overlap = tiles.overlap
    ghost = da.overlap.overlap(
        arr, depth={arr.ndim - 2: overlap[0], arr.ndim - 1: overlap[1]}, boundary="none"
    )
    return da.map_blocks(
        _predict_block,
        ghost,
        ref_arg,
        depth=overlap,
        tiles=tiles,
        out_channels=c_out,
        nblocks=(len(arr.chunks[-2]), len(arr.chunks[-1])),
        chunks=(*arr.chunks[:-3], (c_out,), *arr.chunks[-2:]),
        dtype=np.float32,
        meta=np.empty((0,) * arr.ndim, dtype=np.float32),
        **settings,
    )


def predict_array(
    model: Any,
    array: Any,
    *,
    tile: int | tuple[int, int] = 256,
    overlap: int | tuple[int, int] = 32,
    blend: str = "cosine",
    batch_size: int | str = "auto",
    device: str = "auto",
    precision: str = "auto",
    out_channels: int | None = None,
    trim: int | tuple[int, int] | None = None,
    skip_below: float | None = None,
    fill: float = 0.0,
) -> da.Array:
    """Lazily predict ``model`` over ``array`` tile by tile; return a float32 dask array.

    Parameters
    ----------
    model
        An ``nn.Module``, a callable mapping an ``N x C x H x W`` tensor to ``N x C' x H x W``,
        or a :class:`~omeloc.engine.cache.ModelRef`.  Modules with a ``multiple`` attribute
        (the U-Net's is 16) get tiles reflect-padded to it.
    array
        dask or numpy ``(..., C, Y, X)``, any dtype; leading axes are independent 2D planes.
    tile, overlap
        Tile size and overlap in pixels (int or ``(y, x)``).  Each block is read with a halo of
        ``overlap`` pixels.  Fastest on CPU: ``tile = chunk + 2 * overlap`` (one tile per
        block, no blending); smaller blocks are merged (the output is rechunked back).
    blend : {"cosine", "linear", "gaussian", "constant"}
        Blending window (:func:`omeloc.engine.tiling.weight_profile`).
    batch_size
        Tiles per forward pass, or ``"auto"`` (default): 4 on a CPU, on CUDA as many as fit
        half the free memory (:func:`resolve_batch_size`, measured on the worker).
    device, precision
        ``"auto"`` (CUDA, then MPS, then CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"``;
        autocast dtype of the forward pass, one of ``"auto", "fp32", "bf16", "fp16"``
        (:mod:`omeloc.engine.device`; accuracy in the module notes).  The output is float32.
    out_channels
        C'; when omitted it is read from the model (``out_channels`` or
        ``config["out_channels"]``) or found by one forward pass on zeros of the tile's size.
    trim
        Margin (pixels, int or ``(y, x)``, at most ``overlap // 2``) of zero blending weight on
        the inner sides of each tile; default ``overlap // 4``.  At least the network's
        receptive field: tiled output equals whole-image output (float rounding).
    skip_below, fill
        A block whose source (halo included) is below ``skip_below`` everywhere, in the array's
        units, gets ``fill`` without running the model (:func:`skipped_blocks` counts them).

    Returns
    -------
    dask.array.Array
        float32 ``(..., C', Y, X)``, lazy, chunked as the input (one chunk along C').

    Raises
    ------
    InputError
        Bad tile/overlap/trim/blend/precision/device/batch size, or fewer than 3 axes.
    """
    # Over 60 lines only through its parameter docs (the public API's reference); the body is ~25.
    tile_yx, overlap_yx = check_tiling(tile, overlap)
    trim_yx = check_trim(trim, overlap_yx)
    _check_settings(blend, batch_size, out_channels, skip_below)
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    arr = _as_array(array)
    ref, ref_arg = _as_ref(model)
    probe = (min(tile_yx[0], arr.shape[-2]), min(tile_yx[1], arr.shape[-1]))
    c_out = out_channels or _infer_out_channels(ref, arr.shape[-3], dev, prec, probe)
    tiles = TileSettings(tile_yx, overlap_yx, blend, trim_yx, batch_size)
    out = _map_blocks(
        _rechunk_to_blocks(arr, tile_yx, overlap_yx),
        ref_arg,
        c_out,
        tiles,
        device=str(dev),
        precision=prec,
        skip_below=skip_below,
        fill=float(fill),
    )
    target = (*arr.chunks[:-3], (c_out,), *arr.chunks[-2:])
    return out if out.chunks == target else out.rechunk(target)
