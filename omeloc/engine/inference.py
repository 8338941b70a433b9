"""Tiled, blended, lazy inference of 2D image-to-image models over dask arrays.

:func:`predict_array` turns a lazy ``(..., C, Y, X)`` array into a lazy float32
``(..., C', Y, X)`` prediction.  The unit of work is an output block: it is read with a
halo of ``overlap`` pixels (clipped at the image border), cut into tiles that overlap by
``overlap`` pixels, run through the model in batches under ``torch.inference_mode``,
blended (:mod:`omeloc.engine.tiling`), cropped to the block and returned.  Each output block is
produced once; peak memory depends on block, tile and batch size, never on the image size.

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

import logging
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
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
from omeloc.engine.device import (
    PRECISIONS,
    autocast,
    resolve_device,
    resolve_precision,
    to_channels_last,
)
from omeloc.engine.tiling import (
    BLEND_MODES,
    Accumulator,
    check_tiling,
    check_trim,
    iter_batches,
    pad_to_multiple,
    tile_grid,
)
from omeloc.errors import InputError
from omeloc.testing.faults import fault_point

__all__ = [
    "CPU_BATCH",
    "PRECISIONS",
    "InMemoryModel",
    "ModelRef",
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

logger = logging.getLogger(__name__)

_executors: dict[str, ThreadPoolExecutor] = {}
_executors_lock = threading.Lock()
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


def _forward_executor(device: torch.device) -> ThreadPoolExecutor:
    """One dedicated thread per device and process runs every forward pass.

    This serialises forwards (torch intra-op threads x concurrent forwards never exceed
    the cores) and keeps them on a single OS thread: torch's OpenMP pool belongs to the
    calling thread, and switching callers leaves the previous pool spinning (measured: ~20 %
    slower end to end with Dask's threads calling torch directly).
    """
    key = str(device)
    with _executors_lock:
        ex = _executors.get(key)
        if ex is None:
            ex = _executors[key] = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"omeloc-{key}")
        return ex


def _run_model(model: Any, batch: np.ndarray, device: torch.device, precision: str) -> np.ndarray:
    is_module = isinstance(model, torch.nn.Module)
    with torch.inference_mode():
        x = torch.from_numpy(batch)
        # on CUDA the batch goes through page-locked memory, copied without blocking the thread
        x = x.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else x.to(device)
        if is_module:
            x = to_channels_last(x, device)
        with autocast(device, precision, enabled=is_module):
            y = model(x)
        return torch.as_tensor(y).float().cpu().contiguous().numpy()


def _forward(model: Any, batch: np.ndarray, device: torch.device, precision: str) -> np.ndarray:
    """Run ``model`` on an ``N x C x H x W`` float32 batch on the device's forward thread."""
    y = _forward_executor(device).submit(_run_model, model, batch, device, precision).result()
    if y.ndim != 4 or y.shape[0] != batch.shape[0] or y.shape[-2:] != batch.shape[-2:]:
        raise InputError(f"Expected the model to map N x C x H x W to N x C' x H x W. "
                         f"Got {tuple(batch.shape)} -> {tuple(y.shape)} instead.")
    return y


def _windows_touching(shape: tuple[int, int], tile: tuple[int, int], overlap: tuple[int, int],
                      core: tuple[slice, slice]) -> list[tuple[slice, slice]]:
    """The tiles of a region of ``shape`` that overlap its ``core``."""
    cy, cx = range(shape[0])[core[0]], range(shape[1])[core[1]]
    return [win for win in tile_grid(shape, tile, overlap)
            if win[0].start < cy.stop and win[0].stop > cy.start
            and win[1].start < cx.stop and win[1].stop > cx.start]


#: tiles per forward pass when ``batch_size="auto"`` off CUDA (CPU throughput is flat beyond ~4)
CPU_BATCH = 4
#: at most this many tiles per forward pass with ``batch_size="auto"`` on CUDA
MAX_AUTO_BATCH = 64
_auto_batches: dict[tuple, int] = {}


def batch_from_memory(free_bytes: int, per_tile_bytes: int, fraction: float = 0.5, cap: int = MAX_AUTO_BATCH) -> int:
    """Tiles per forward pass that fit ``fraction`` of ``free_bytes`` at ``per_tile_bytes`` each (1 to ``cap``)."""
    return max(1, min(cap, int(free_bytes * fraction) // max(1, int(per_tile_bytes))))


def resolve_batch_size(batch_size: int | str, model: Any, device: torch.device, tile: tuple[int, int],
                       in_channels: int, precision: str) -> int:
    """``batch_size`` itself, or for ``"auto"``: :data:`CPU_BATCH` off CUDA; on CUDA as many tiles as fit half
    the free memory, measured with one tile's forward pass (once per model, device, tile and precision)."""
    if batch_size != "auto":
        return int(batch_size)
    if device.type != "cuda":
        return CPU_BATCH
    m = int(getattr(model, "multiple", 1) or 1)
    shape = (1, in_channels, *(-(-t // m) * m for t in tile))
    key = (id(model), str(device), shape, precision)
    if key not in _auto_batches:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        _forward(model, np.zeros(shape, np.float32), device, precision)
        per_tile = torch.cuda.max_memory_allocated(device) - base
        free, _ = torch.cuda.mem_get_info(device)
        _auto_batches[key] = batch_from_memory(free, per_tile)
        logger.info("batch size %d on %s (%.0f MB per tile, %.0f MB free)", _auto_batches[key], device,
                    per_tile / 1e6, free / 1e6)
    return _auto_batches[key]


def predict_numpy(model: Any, region: np.ndarray, *, tile: tuple[int, int], overlap: tuple[int, int],
                  blend: str, batch_size: int | str, device: torch.device, precision: str,
                  out_channels: int, core: tuple[slice, slice] | None = None,
                  trim: int | tuple[int, int] | None = None) -> np.ndarray:
    """Tile, predict and blend one in-memory region ``(..., C, H, W)``; return ``core`` of it.

    ``core`` (default: all of it) is the part of the region whose prediction is returned;
    tiles that do not touch it are skipped.  ``trim`` (default ``overlap // 4``) is the
    margin of zero blending weight on the inner sides of every tile
    (:class:`~omeloc.engine.tiling.Accumulator`).  ``batch_size`` may be ``"auto"``
    (:func:`resolve_batch_size`).  The result is float32 ``(..., C', h, w)``.
    """
    batch_size = resolve_batch_size(batch_size, model, device, tile, region.shape[-3], precision)
    lead, (h, w) = region.shape[:-3], region.shape[-2:]
    core = core or (slice(0, h), slice(0, w))
    windows = _windows_touching((h, w), tile, overlap, core)
    jobs = [(idx, win) for idx in np.ndindex(*lead) for win in windows]
    multiple = int(getattr(model, "multiple", 1) or 1)
    trim_yx = check_trim(trim, overlap)
    ramp = tuple(o - 2 * t for o, t in zip(overlap, trim_yx))
    acc = Accumulator((*lead, out_channels, h, w), blend, ramp, trim_yx) if len(windows) > 1 else None
    out = np.empty((*lead, out_channels, h, w), dtype=np.float32) if acc is None else None
    for batch_jobs in iter_batches(jobs, batch_size):
        tiles = np.stack([region[(*idx, slice(None), *win)] for idx, win in batch_jobs])
        tiles, (th, tw) = pad_to_multiple(tiles.astype(np.float32, copy=False), multiple)
        pred = _forward(model, np.ascontiguousarray(tiles), device, precision)[..., :th, :tw]
        if pred.shape[1] != out_channels:
            raise InputError(f"Expected the model to return {out_channels} channels "
                             f"(out_channels). Got {pred.shape[1]} instead.")
        for (idx, win), p in zip(batch_jobs, pred):
            if acc is None:
                out[(*idx, slice(None), *win)] = p
            else:
                acc.add(idx, win, p)
    return out[..., core[0], core[1]] if acc is None else acc.finalize(core)


def _predict_block(block: np.ndarray, ref: ModelRef, *, depth: tuple[int, int],
                   nblocks: tuple[int, int], block_id: tuple[int, ...] | None = None,
                   device: str, skip_below: float | None = None, fill: float = 0.0,
                   **kwargs: Any) -> np.ndarray:
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
        shape = (*block.shape[:-3], kwargs["out_channels"], bottom - top, right - left)
        return np.full(shape, fill, dtype=np.float32)
    dev = torch.device(device)
    return predict_numpy(get_model(ref, dev), block, device=dev,
                         core=(slice(top, bottom), slice(left, right)), **kwargs)


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


def _infer_out_channels(ref: ModelRef, in_channels: int, device: torch.device, precision: str,
                        size: tuple[int, int]) -> int:
    """C' of ``ref``: declared, else found by one forward pass on zeros of the tile's size.

    The probe has the size of the largest tile the model will see (``size``, rounded up to
    the model's ``multiple``): models that downsample and normalise per instance fail on
    tiny inputs.
    """
    declared = _declared_out_channels(ref)
    if declared is not None:
        return declared
    loaded = get_model(ref, device)
    m = int(getattr(loaded, "multiple", 1) or 1)
    py, px = (-(-s // m) * m for s in size)
    y = _forward(loaded, np.zeros((1, in_channels, py, px), np.float32), device, precision)
    return int(y.shape[1])


def _check_settings(blend: str, batch_size: int | str, out_channels: int | None,
                    skip_below: float | None) -> None:
    """Validate the settings :func:`check_tiling` and the device helpers do not."""
    if blend not in BLEND_MODES:
        raise InputError(f"Unknown blend {blend!r}. Use one of {', '.join(BLEND_MODES)}.")
    if batch_size != "auto" and (not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1):
        raise InputError(f"Expected batch_size >= 1 or 'auto'. Got {batch_size!r} instead.")
    if out_channels is not None and (not isinstance(out_channels, int) or out_channels < 1):
        raise InputError(f"Expected out_channels >= 1. Got {out_channels!r} instead.")
    if skip_below is not None and not np.isfinite(skip_below):
        raise InputError(f"Expected skip_below as a finite number or None. Got {skip_below!r} instead.")


def _as_array(array: Any) -> da.Array:
    arr = array if isinstance(array, da.Array) else da.asarray(array)
    if arr.ndim < 3:
        raise InputError(f"Expected an array with axes (..., C, Y, X). Got shape {arr.shape}; "
                         f"add a channel axis (array[None]).")
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


def _map_blocks(arr: da.Array, ref_arg: Any, c_out: int, overlap: tuple[int, int],
                **settings: Any) -> da.Array:
    """The lazy prediction of ``arr`` (already in blocks): halo, ``_predict_block`` per block."""
    ghost = da.overlap.overlap(arr, depth={arr.ndim - 2: overlap[0], arr.ndim - 1: overlap[1]},
                               boundary="none")
    return da.map_blocks(
        _predict_block, ghost, ref_arg, depth=overlap, overlap=overlap, out_channels=c_out,
        nblocks=(len(arr.chunks[-2]), len(arr.chunks[-1])),
        chunks=(*arr.chunks[:-3], (c_out,), *arr.chunks[-2:]), dtype=np.float32, meta=np.empty((0,) * arr.ndim, dtype=np.float32), **settings,
    )


def predict_array(model: Any, array: Any, *, tile: int | tuple[int, int] = 256,
                  overlap: int | tuple[int, int] = 32, blend: str = "cosine", batch_size: int | str = "auto",
                  device: str = "auto", precision: str = "auto", out_channels: int | None = None,
                  trim: int | tuple[int, int] | None = None, skip_below: float | None = None,
                  fill: float = 0.0) -> da.Array:
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
    out = _map_blocks(_rechunk_to_blocks(arr, tile_yx, overlap_yx), ref_arg, c_out, overlap_yx,
                      device=str(dev), tile=tile_yx, blend=blend, batch_size=batch_size,
                      precision=prec, trim=trim_yx, skip_below=skip_below, fill=float(fill))
    target = (*arr.chunks[:-3], (c_out,), *arr.chunks[-2:])
    return out if out.chunks == target else out.rechunk(target)
