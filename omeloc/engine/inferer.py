"""The one engine entry: regions in, predictions out (tiles, batches, blending, hooks).

:class:`RegionInferer` is what :func:`omeloc.engine.inference.predict_array`, plate predict
(:mod:`omeloc.jobs.regions`) and therefore every Dask worker call for each region: a frozen,
picklable record of the model reference, the tiling (:class:`TileSettings`), device and
precision, and two hooks, like MONAI's ``PatchInferer`` with its pre/post callables::

    region (..., C, H, W) ──normalize──► tiles ──model──► blend ──finish──► prediction

- ``normalize``: raw region → float32 model input (plate predict: the checkpoint's
  per-channel normalization); ``None`` casts to float32.
- the model: a :class:`~omeloc.engine.cache.ModelRef` loaded once per process; test-time
  augmentation is a reference that wraps another (:class:`omeloc.learn.tta.TTARef`: the 8
  flips and rotations averaged, and with ``spread=True`` their standard deviation as extra
  output channels), so the tiles, halos and blending are the same for every model.
- ``finish``: the blended ``(..., k, h, w)`` prediction of the region's core → the output
  (plate predict: back to the target's units, the spread channels scaled with them).

:func:`predict_tiles` is the tile loop itself, on a model already loaded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from omeloc.engine.cache import ModelRef, get_model
from omeloc.engine.forward import forward, resolve_batch_size, tile_rules
from omeloc.engine.tiling import (
    BLEND_MODES,
    Accumulator,
    check_tiling,
    check_trim,
    iter_batches,
    pad_to_shape,
    tile_grid,
)
from omeloc.errors import InputError

__all__ = ["RegionInferer", "TileSettings", "predict_tiles"]

Core = tuple[slice, slice]


@dataclass(frozen=True)
class TileSettings:
    """How a region is cut into tiles and blended back (validated by :meth:`of`)."""

    tile: tuple[int, int]
    overlap: tuple[int, int]
    blend: str
    trim: tuple[int, int]
    """Margin of zero blending weight on the inner sides of a tile (``overlap // 4`` by default)."""
    batch_size: int | str = "auto"

    @classmethod
    def of(
        cls,
        tile: int | tuple[int, int],
        overlap: int | tuple[int, int],
        blend: str = "cosine",
        trim: int | tuple[int, int] | None = None,
        batch_size: int | str = "auto",
    ) -> TileSettings:
        """Validated settings from ints or ``(y, x)`` pairs (``trim=None``: the default).

        Raises
        ------
        InputError
            Bad tile, overlap or trim (:func:`~omeloc.engine.tiling.check_tiling`), or an
            unknown blend.
        """
        if blend not in BLEND_MODES:
            raise InputError(f"Unknown blend {blend!r}. Use one of {', '.join(BLEND_MODES)}.")
        tile_yx, overlap_yx = check_tiling(tile, overlap)
        return cls(tile_yx, overlap_yx, blend, check_trim(trim, overlap_yx), batch_size)


def _windows_touching(
    shape: tuple[int, int], tile: tuple[int, int], overlap: tuple[int, int], core: Core
) -> list[tuple[slice, slice]]:
    """The tiles of a region of ``shape`` that overlap its ``core``."""
    cy, cx = range(shape[0])[core[0]], range(shape[1])[core[1]]
    return [
        win
        for win in tile_grid(shape, tile, overlap)
        if win[0].start < cy.stop
        and win[0].stop > cy.start
        and win[1].start < cx.stop
        and win[1].stop > cx.start
    ]


def predict_tiles(
    model: Any,
    region: np.ndarray,
    tiles: TileSettings,
    device: torch.device,
    precision: str,
    out_channels: int,
    core: Core | None = None,
) -> np.ndarray:
    """Tile, predict and blend one in-memory region ``(..., C, H, W)``; return ``core`` of it.

    ``model`` is loaded (a module or a callable on ``N x C x H x W``); tiles are padded to its
    :func:`~omeloc.engine.forward.tile_rules` and the predictions cropped back.  Tiles that do
    not touch ``core`` (default: the whole region) are skipped.  The result is float32
    ``(..., out_channels, h, w)``.

    Raises
    ------
    InputError
        The model returned another number of channels than ``out_channels``.
    """
    batch_size = resolve_batch_size(
        tiles.batch_size, model, device, tiles.tile, region.shape[-3], precision
    )
    lead, (h, w) = region.shape[:-3], region.shape[-2:]
    core = core or (slice(0, h), slice(0, w))
    windows = _windows_touching((h, w), tiles.tile, tiles.overlap, core)
    jobs = [(idx, win) for idx in np.ndindex(*lead) for win in windows]
    rules = tile_rules(model)
    ramp = tuple(o - 2 * t for o, t in zip(tiles.overlap, tiles.trim))
    shape = (*lead, out_channels, h, w)
    acc = Accumulator(shape, tiles.blend, ramp, tiles.trim) if len(windows) > 1 else None
    out = np.empty(shape, dtype=np.float32) if acc is None else None
    for batch_jobs in iter_batches(jobs, batch_size):
        batch = np.stack([region[(*idx, slice(None), *win)] for idx, win in batch_jobs])
        th, tw = batch.shape[-2:]
        padded = (rules.padded(th), rules.padded(tw))
        batch, _ = pad_to_shape(batch.astype(np.float32, copy=False), padded)
        pred = forward(model, np.ascontiguousarray(batch), device, precision)[..., :th, :tw]
        if pred.shape[1] != out_channels:
            raise InputError(
                f"Expected the model to return {out_channels} channels "
                f"(out_channels). Got {pred.shape[1]} instead."
            )
        for (idx, win), p in zip(batch_jobs, pred):
            if acc is None:
                out[(*idx, slice(None), *win)] = p
            else:
                acc.add(idx, win, p)
    return out[..., core[0], core[1]] if acc is None else acc.finalize(core)


@dataclass(frozen=True)
class RegionInferer:
    """The engine entry: ``inferer(region, core)`` is the prediction of ``core`` of ``region``.

    Small and picklable (a Dask task argument): the model travels as its reference and each
    process loads it once (:func:`~omeloc.engine.cache.get_model`).  Hooks must be picklable
    too (module-level functions or frozen dataclasses with ``__call__``).
    """

    model: ModelRef
    """The model (a ModelRef; TTA: a reference that wraps another, such as ``TTARef``)."""
    tiles: TileSettings
    device: str
    """A resolved device name (:func:`~omeloc.engine.device.resolve_device`)."""
    precision: str
    """A resolved precision: fp32, bf16 or fp16."""
    out_channels: int
    """k: the channels the model returns (with a TTA spread: the means and the spreads)."""
    normalize: Callable[[np.ndarray], np.ndarray] | None = None
    """Raw ``(..., C, H, W)`` region → float32 model input; ``None``: used as it is."""
    finish: Callable[[np.ndarray], np.ndarray] | None = None
    """Blended ``(..., k, h, w)`` prediction of the core → the output; ``None``: as it is."""

    def __call__(self, region: np.ndarray, core: Core | None = None) -> np.ndarray:
        """Predict ``core`` (default: all) of a ``(..., C, H, W)`` region read with its halo."""
        x = self.normalize(region) if self.normalize is not None else region
        dev = torch.device(self.device)
        y = predict_tiles(
            get_model(self.model, dev), x, self.tiles, dev, self.precision, self.out_channels, core
        )
        return self.finish(y) if self.finish is not None else y
