"""Differentiable image losses beyond the pixel loss: SSIM and high-pass detail.

Both work on normalized ``N x C x H x W`` tensors (intensities mostly in [0, 1]) with fixed
Gaussian filters applied channel by channel as two separable convolutions with reflect
padding, so they cost little next to the network's step.

- :func:`ssim`: the mean structural similarity (Wang et al. 2004; 11-tap Gaussian window,
  σ 1.5, ``C1 = 0.01²``, ``C2 = 0.03²`` for a data range of 1); the loss is ``1 - ssim``.
- :func:`high_pass`: the image minus its Gaussian blur (σ 4 px: the footprint scale that
  :func:`omeloc.analysis.metrics.structure_r` removes), the fine structure that a pixel loss
  on its own weighs little; :func:`detail_l1` is the L1 distance between two of them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["detail_l1", "gaussian_filter", "high_pass", "ssim"]

SSIM_SIGMA = 1.5
DETAIL_SIGMA = 4.0
_C1, _C2 = 0.01**2, 0.03**2


def _kernel(sigma: float, radius: int, like: torch.Tensor) -> torch.Tensor:
    x = torch.arange(-radius, radius + 1, dtype=torch.float32, device=like.device)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).to(like.dtype)


def gaussian_filter(x: torch.Tensor, sigma: float, truncate: float = 3.0) -> torch.Tensor:
    """Separable Gaussian blur of each channel of ``x`` (``N x C x H x W``), reflect-padded.

    The radius is ``ceil(truncate * sigma)``, clipped to fit the image (reflect padding needs
    a radius below the side).
    """
    c, h, w = x.shape[1:]
    radius = max(1, min(math.ceil(truncate * sigma), h - 1, w - 1))
    k = _kernel(sigma, radius, x)
    ky = k.view(1, 1, -1, 1).expand(c, 1, -1, 1)
    kx = k.view(1, 1, 1, -1).expand(c, 1, 1, -1)
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="reflect"), ky, groups=c)
    return F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="reflect"), kx, groups=c)


def ssim(pred: torch.Tensor, target: torch.Tensor, sigma: float = SSIM_SIGMA) -> torch.Tensor:
    """Mean SSIM of ``pred`` against ``target`` (data range 1), differentiable.

    Examples
    --------
    >>> x = torch.rand(2, 1, 32, 32)
    >>> float(ssim(x, x))  # doctest: +ELLIPSIS
    1.0...
    """
    pred, target = pred.float(), target.float()
    mu_p, mu_t = gaussian_filter(pred, sigma), gaussian_filter(target, sigma)
    var_p = gaussian_filter(pred * pred, sigma) - mu_p**2
    var_t = gaussian_filter(target * target, sigma) - mu_t**2
    cov = gaussian_filter(pred * target, sigma) - mu_p * mu_t
    num = (2 * mu_p * mu_t + _C1) * (2 * cov + _C2)
    den = (mu_p**2 + mu_t**2 + _C1) * (var_p + var_t + _C2)
    return (num / den).mean()


def high_pass(x: torch.Tensor, sigma: float = DETAIL_SIGMA) -> torch.Tensor:
    """``x`` minus its Gaussian blur of ``sigma`` pixels: the fine structure."""
    return x - gaussian_filter(x, sigma)


def detail_l1(
    pred: torch.Tensor, target: torch.Tensor, sigma: float = DETAIL_SIGMA
) -> torch.Tensor:
    """Mean absolute difference of the high-pass detail of ``pred`` and ``target``."""
    return (high_pass(pred.float(), sigma) - high_pass(target.float(), sigma)).abs().mean()
