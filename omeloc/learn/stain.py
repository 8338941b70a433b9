"""A virtual stain: a trained checkpoint applied to source images, in the target channel's units.

:class:`VirtualStain` is the one place where a checkpoint is applied: the source channels are
normalized with the statistics stored in the checkpoint
(:func:`~omeloc.learn.normalization.normalize_channels`), the generator runs tile by tile
(:func:`omeloc.engine.inference.predict_array`, with the checkpoint as a
:class:`~omeloc.learn.checkpoint.CheckpointRef`: a path and a content key that each worker process
loads once), and the output is mapped back to the target channel's units
(:func:`~omeloc.learn.normalization.denormalize_channels`).  The three steps are also methods of
their own, so that a caller can annotate only the model's part of a Dask graph (e.g. with a ``GPU``
resource).

Test-time augmentation (``tta=True`` in the tiling settings) averages every tile's prediction
over its 8 flips and rotations (:mod:`omeloc.learn.tta`); :meth:`VirtualStain.with_spread`
also returns the standard deviation across the 8, in the target's units.

Examples
--------
>>> stain = VirtualStain("models/actin-wave2")                      # doctest: +SKIP
>>> wave2 = stain(actin[None])           # numpy (1, Y, X) in → numpy (1, Y, X) out, in WAVE2's units
>>> lazy = stain(dask_actin)             # dask in → lazy dask out; nothing computed yet
>>> smooth = stain(actin[None], tta=True)  # the mean of the 8 flips/rotations of each tile
>>> wave2, spread = stain.with_spread(actin[None])  # and their standard deviation
"""  # noqa: E501

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from omeloc.config import TilingConfig, resolve
from omeloc.errors import InputError
from omeloc.learn.checkpoint import Checkpoint, CheckpointRef, load_checkpoint
from omeloc.learn.normalization import denormalize_channels, normalize_channels
from omeloc.learn.tta import TTARef

__all__ = ["VirtualStain"]


class VirtualStain:
    """A checkpoint applied to arrays: normalize the sources → model → back to the target's units.

    Parameters
    ----------
    checkpoint
        A checkpoint folder written by :func:`omeloc.train`, or a loaded
        :class:`~omeloc.learn.checkpoint.Checkpoint` (the metadata is not read again).

    Attributes
    ----------
    checkpoint : Checkpoint
        The checkpoint's metadata (source/target channels, statistics, tile advice).
    ref : CheckpointRef
        The model as it travels in a Dask graph (path + content key).

    Notes
    -----
    Arrays have axes ``(..., C, Y, X)``: ``C`` is the checkpoint's source channels (in the order
    of :attr:`source`) on the way in, its target channels (:attr:`target`) on the way out.
    Numpy in gives numpy out (computed); dask in gives a lazy dask array out.
    """

    def __init__(self, checkpoint: str | Path | Checkpoint) -> None:
        self.checkpoint = (
            checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
        )
        self.ref = CheckpointRef(self.checkpoint)

    def __repr__(self) -> str:
        return (
            f"VirtualStain({'+'.join(self.source)} → {'+'.join(self.target)}, "
            f"{self.checkpoint.path})"
        )

    @property
    def source(self) -> list[str]:
        """The channels the model reads, in order."""
        return list(self.checkpoint.source)

    @property
    def target(self) -> list[str]:
        """The channels the model predicts, in order."""
        return list(self.checkpoint.target)

    def tiling(self, tiling: TilingConfig | None = None, **overrides: Any) -> TilingConfig:
        """The tiling settings, with tile and overlap defaulting to the checkpoint's advice."""
        cfg = resolve(TilingConfig, tiling, overrides)
        return cfg.replace(
            tile=int(cfg.tile or self.checkpoint.tile),
            overlap=int(self.checkpoint.overlap if cfg.overlap is None else cfg.overlap),
        )

    def normalize(self, x: Any) -> Any:
        """Source intensities ``(..., C_source, Y, X)`` → the model's input (float32, finite)."""
        if self.checkpoint.z_window > 1:
            raise InputError(
                f"The checkpoint {self.checkpoint.path} is a 2.5D model (z-window "
                f"{self.checkpoint.z_window}): apply it to a plate's z-stacks with omeloc.predict."
            )
        if x.shape[-3] != len(self.source):
            raise InputError(
                f"Expected {len(self.source)} source channel(s) ({', '.join(self.source)}) along "
                f"axis -3. Got shape {tuple(x.shape)} instead."
            )
        stats = [self.checkpoint.normalization[c] for c in self.source]
        return normalize_channels([x[..., k, :, :] for k in range(len(stats))], stats)

    def predict(self, x: Any, tiling: TilingConfig | None = None, **overrides: Any) -> Any:
        """The model over a normalized ``(..., C_source, Y, X)`` array, tile by tile: a lazy dask
        array.

        ``tiling`` (or keyword ``overrides``: ``tile``, ``overlap``, ``blend``, ``batch_size``,
        ``device``, ``precision``, ``tta``) configures
        :func:`omeloc.engine.inference.predict_array`; tile and overlap default to the checkpoint's
        advice.  The output is float32 ``(..., C_target, Y, X)`` in normalized units.
        """
        cfg = self.tiling(tiling, **overrides)
        return self._predict(TTARef(self.ref) if cfg.tta else self.ref, x, cfg, len(self.target))

    def _predict(self, ref: Any, x: Any, cfg: TilingConfig, out_channels: int) -> Any:
        from omeloc.engine.inference import predict_array

        return predict_array(
            ref,
            x,
            tile=cfg.tile,
            overlap=cfg.overlap,
            blend=cfg.blend,
            batch_size=cfg.batch_size,
            device=cfg.device,
            precision=cfg.precision,
            out_channels=out_channels,
        )

    def with_spread(
        self, x: Any, tiling: TilingConfig | None = None, **overrides: Any
    ) -> tuple[Any, Any]:
        """Source intensities → (prediction, spread), both ``(..., C_target, Y, X)`` in the target's
        units.

        The prediction is the test-time-augmented one (the mean over the 8 flips and rotations
        of each tile, as with ``tta=True``); the spread is the standard deviation across the 8,
        a per-pixel measure of uncertainty.  Numpy in gives numpy out, dask in lazy dask out
        (one graph computes both).
        """
        n = len(self.target)
        both = self._predict(
            TTARef(self.ref, spread=True),
            self.normalize(x),
            self.tiling(tiling, **overrides),
            2 * n,
        )
        stats = [self.checkpoint.normalization[c] for c in self.target]
        scale = np.array([float(s["high"]) - float(s["low"]) for s in stats], dtype=np.float32)[
            :, None, None
        ]
        mean, spread = self.denormalize(both[..., :n, :, :]), both[..., n:, :, :] * scale
        if isinstance(x, np.ndarray):
            import dask

            mean, spread = (np.asarray(a) for a in dask.compute(mean, spread))
        return mean, spread

    def denormalize(self, y: Any) -> Any:
        """The model's output ``(..., C_target, Y, X)`` → the target channels' own units."""
        return denormalize_channels(y, [self.checkpoint.normalization[c] for c in self.target])

    def __call__(self, x: Any, tiling: TilingConfig | None = None, **overrides: Any) -> Any:
        """Source intensities ``(..., C_source, Y, X)`` → predicted target intensities
        ``(..., C_target, Y, X)``.

        Numpy in: the prediction is computed and returned as numpy.  Dask in: a lazy dask array.
        """
        out = self.denormalize(self.predict(self.normalize(x), tiling, **overrides))
        return np.asarray(out.compute()) if isinstance(x, np.ndarray) else out
