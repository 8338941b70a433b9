"""Forward passes: one dedicated thread per device and process, batch sizes, the model's tile rules.

The engine (:mod:`omeloc.engine.inferer`) hands every batch of tiles to :func:`forward`, which
runs it on the device's forward thread under ``torch.inference_mode`` (and autocast for
modules).  The model is any callable on an ``N x C x H x W`` float batch returning
``N x k x H x W``; :func:`tile_rules` reads what it declares about the tiles it accepts.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from omeloc.engine.device import autocast, to_channels_last
from omeloc.errors import InputError

__all__ = [
    "CPU_BATCH",
    "MAX_AUTO_BATCH",
    "TileRules",
    "batch_from_memory",
    "forward",
    "resolve_batch_size",
    "tile_rules",
]

logger = logging.getLogger(__name__)

_executors: dict[str, ThreadPoolExecutor] = {}
_executors_lock = threading.Lock()

#: tiles per forward pass when ``batch_size="auto"`` off CUDA (CPU throughput is flat beyond ~4)
CPU_BATCH = 4
#: at most this many tiles per forward pass with ``batch_size="auto"`` on CUDA
MAX_AUTO_BATCH = 64
_auto_batches: dict[tuple, int] = {}


@dataclass(frozen=True)
class TileRules:
    """What a model declares about the tiles it accepts (its description's tiling part).

    Read by :func:`tile_rules` from the loaded model's attributes: ``multiple`` (or
    ``tile_step``), ``min_tile`` and ``halo``; absent ones take the defaults below.
    """

    step: int = 1
    """Tile sides are padded (reflect) up to a multiple of this (the U-Net's is 16)."""
    min_size: int = 1
    """Tile sides are padded up to at least this."""
    halo: int | None = None
    """The receptive-field radius in pixels, when the model declares it (informative)."""

    def padded(self, size: int) -> int:
        """The side a tile of ``size`` pixels is padded to."""
        size = max(int(size), self.min_size)
        return -(-size // self.step) * self.step


def _positive(value: Any, default: int) -> int:
    try:
        n = int(value)
    except (TypeError, ValueError):
        return default
    return n if n >= 1 else default


def tile_rules(model: Any) -> TileRules:
    """The :class:`TileRules` ``model`` declares (attributes ``multiple``/``tile_step``,
    ``min_tile``, ``halo``); a plain callable gets the defaults."""
    step = getattr(model, "multiple", None) or getattr(model, "tile_step", None)
    halo = getattr(model, "halo", None)
    return TileRules(
        step=_positive(step, 1),
        min_size=_positive(getattr(model, "min_tile", None), 1),
        halo=int(halo) if isinstance(halo, (int, np.integer)) and halo >= 0 else None,
    )


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
            ex = _executors[key] = ThreadPoolExecutor(
                max_workers=1, thread_name_prefix=f"omeloc-{key}"
            )
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


def forward(model: Any, batch: np.ndarray, device: torch.device, precision: str) -> np.ndarray:
    """Run ``model`` on an ``N x C x H x W`` float32 batch on the device's forward thread.

    Raises
    ------
    InputError
        The model did not return ``N x C' x H x W``.
    """
    y = _forward_executor(device).submit(_run_model, model, batch, device, precision).result()
    if y.ndim != 4 or y.shape[0] != batch.shape[0] or y.shape[-2:] != batch.shape[-2:]:
        raise InputError(
            f"Expected the model to map N x C x H x W to N x C' x H x W. "
            f"Got {tuple(batch.shape)} -> {tuple(y.shape)} instead."
        )
    return y


def batch_from_memory(
    free_bytes: int, per_tile_bytes: int, fraction: float = 0.5, cap: int = MAX_AUTO_BATCH
) -> int:
    """Tiles per forward pass that fit ``fraction`` of ``free_bytes`` at ``per_tile_bytes``
    each (1 to ``cap``)."""
    return max(1, min(cap, int(free_bytes * fraction) // max(1, int(per_tile_bytes))))


def resolve_batch_size(
    batch_size: int | str,
    model: Any,
    device: torch.device,
    tile: tuple[int, int],
    in_channels: int,
    precision: str,
) -> int:
    """``batch_size`` itself, or for ``"auto"``: :data:`CPU_BATCH` off CUDA; on CUDA as many
    tiles as fit half the free memory, measured with one tile's forward pass (once per model,
    device, tile and precision)."""
    if batch_size != "auto":
        return int(batch_size)
    if device.type != "cuda":
        return CPU_BATCH
    rules = tile_rules(model)
    shape = (1, in_channels, *(rules.padded(t) for t in tile))
    key = (id(model), str(device), shape, precision)
    if key not in _auto_batches:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        forward(model, np.zeros(shape, np.float32), device, precision)
        per_tile = torch.cuda.max_memory_allocated(device) - base
        free, _ = torch.cuda.mem_get_info(device)
        _auto_batches[key] = batch_from_memory(free, per_tile)
        logger.info(
            "batch size %d on %s (%.0f MB per tile, %.0f MB free)",
            _auto_batches[key],
            device,
            per_tile / 1e6,
            free / 1e6,
        )
    return _auto_batches[key]
