"""Test-time augmentation: a model averaged over the 8 flips and 90° rotations of its input.

:class:`TTAModel` wraps a network: each input tile is predicted in its 8 variants (the
dihedral group of the square: 4 rotations, each with and without a mirror flip), each output
is mapped back, and the 8 are averaged.  With ``spread=True`` it also returns their standard
deviation, a per-pixel measure of how much the prediction depends on the orientation.
:class:`TTARef` is the same thing as a :class:`~omeloc.engine.cache.ModelRef`, so it enters a
Dask graph as a path and a key and each worker loads (and wraps) the model once.

Because the wrapper works tile by tile inside the inference engine, tiling, halos and blending
are unchanged: for a model that commutes with flips and rotations (``lambda x: 2 * x``, a
convolution with a symmetric kernel) the result equals the plain prediction.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["VARIANTS", "TTAModel", "TTARef"]

#: (quarter turns, mirror) of each variant; the first is the identity
VARIANTS: tuple[tuple[int, bool], ...] = tuple(
    (k, flip) for flip in (False, True) for k in range(4)
)


def _forward(x: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    x = torch.rot90(x, k, dims=(-2, -1)) if k else x
    return torch.flip(x, dims=(-1,)) if flip else x


def _inverse(y: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    y = torch.flip(y, dims=(-1,)) if flip else y
    return torch.rot90(y, -k, dims=(-2, -1)) if k else y


class TTAModel(nn.Module):
    """``model`` averaged over the 8 flips/rotations of its ``N x C x H x W`` input.

    Parameters
    ----------
    model
        An ``nn.Module`` or a callable mapping ``N x C x H x W`` to ``N x C' x H x W``
        (rotations swap H and W: the model must accept both orientations, as a fully
        convolutional network does when H and W are multiples of its ``multiple``).
    spread
        Also return the standard deviation of the 8 outputs: ``N x 2C' x H x W``, the mean in
        the first ``C'`` channels and the spread in the last ``C'``.

    Examples
    --------
    >>> m = TTAModel(lambda x: 2 * x)
    >>> x = torch.rand(1, 1, 8, 8)
    >>> torch.allclose(m(x), 2 * x)
    True
    """

    def __init__(self, model: Any, spread: bool = False) -> None:
        super().__init__()
        if isinstance(model, nn.Module):
            self.model = model
        else:
            self._fn = model
        self.spread = bool(spread)
        self.multiple = int(getattr(model, "multiple", 1) or 1)

    def _inner(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) if "model" in self._modules else self._fn(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.spread:
            total = None
            for k, flip in VARIANTS:
                y = _inverse(torch.as_tensor(self._inner(_forward(x, k, flip))).float(), k, flip)
                total = y if total is None else total + y
            return total / len(VARIANTS)
        # two passes over the stacked outputs: E[y^2] - E[y]^2 cancels catastrophically in float32
        ys = torch.stack(
            [
                _inverse(torch.as_tensor(self._inner(_forward(x, k, flip))).float(), k, flip)
                for k, flip in VARIANTS
            ]
        )
        mean = ys.mean(dim=0)
        return torch.cat([mean, (ys - mean).square().mean(dim=0).sqrt()], dim=1)


class TTARef:
    """A :class:`~omeloc.engine.cache.ModelRef` whose model is ``ref``'s, wrapped in
    :class:`TTAModel`.

    Its ``key`` differs from ``ref``'s (a worker caches the plain and the augmented model apart).
    """

    def __init__(self, ref: Any, spread: bool = False) -> None:
        self.ref, self.spread = ref, bool(spread)
        self.key = f"{ref.key}:tta{len(VARIANTS)}" + (":spread" if spread else "")

    def load(self, device: torch.device | str) -> TTAModel:
        """The wrapped model on ``device``."""
        return TTAModel(self.ref.load(device), spread=self.spread)

    def __repr__(self) -> str:
        return f"TTARef({self.ref!r}, spread={self.spread})"
