"""Robust per-channel intensity normalization (percentile scaling), without touching the store.

Training and prediction see intensities scaled so that a low percentile maps to 0 and a high
percentile to 1: ``(x - low) / (high - low)``.  The statistics are measured once, at training
time, on a sample of fields of the training wells, and stored in the checkpoint; prediction
reuses them, so a virtual channel comes back in the target channel's own units.  Nothing is
ever written into the user's plate (no ``normalization`` attribute, no statistics arrays).

The two functions are plain arithmetic and work on numpy arrays, dask arrays and torch tensors;
:func:`normalize_channels` and :func:`denormalize_channels` apply them channel by channel to
``(..., C, Y, X)`` stacks (numpy or dask).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from omeloc.errors import InputError

DEFAULT_PERCENTILES = (1.0, 99.8)
_MAX_SAMPLES_PER_FIELD = 1 << 18


def percentile_stats(
    planes: Iterable[np.ndarray], percentiles: Sequence[float] = DEFAULT_PERCENTILES, seed: int = 0
) -> dict[str, float]:
    """Low and high percentiles of the pixels of ``planes`` (each subsampled to at most 2**18
    pixels).

    Parameters
    ----------
    planes
        2D (or nD) numpy arrays of one channel.
    percentiles
        ``(low, high)`` in percent.
    seed
        Seed of the pixel subsample (results are reproducible).

    Returns
    -------
    dict
        ``{"low": float, "high": float, "percentiles": [low, high]}``; ``high > low`` always
        (a constant channel gets ``high = low + 1``).
    """
    lo_p, hi_p = (float(p) for p in percentiles)
    if not 0 <= lo_p < hi_p <= 100:
        raise InputError(f"Expected percentiles 0 <= low < high <= 100. Got {percentiles} instead.")
    rng = np.random.default_rng(seed)
    samples = []
    for plane in planes:
        flat = np.asarray(plane).reshape(-1)
        if flat.size > _MAX_SAMPLES_PER_FIELD:
            flat = flat[rng.integers(0, flat.size, _MAX_SAMPLES_PER_FIELD)]
        samples.append(flat.astype(np.float64))
    if not samples:
        raise InputError(
            "Expected at least one image to measure normalization statistics. Got none."
        )
    pixels = np.concatenate(samples)
    pixels = pixels[np.isfinite(pixels)]
    if pixels.size == 0:
        raise InputError(
            "Expected finite pixel values to measure normalization statistics. Got only NaN/inf."
        )
    low, high = np.percentile(pixels, [lo_p, hi_p])
    if not high > low:
        high = low + 1.0
    return {"low": float(low), "high": float(high), "percentiles": [lo_p, hi_p]}


def _check(stats: Mapping[str, Any]) -> tuple[float, float]:
    try:
        low, high = float(stats["low"]), float(stats["high"])
    except (KeyError, TypeError, ValueError) as err:
        raise InputError(
            f"Expected normalization statistics with 'low' and 'high'. Got {stats!r} instead."
        ) from err
    if not high > low:
        raise InputError(
            f"Expected normalization statistics with high > low. Got low={low}, high={high} "
            "instead."
        )
    return low, high


def normalize(x: Any, stats: Mapping[str, Any]) -> Any:
    """Scale ``x`` so that ``stats['low']`` → 0 and ``stats['high']`` → 1 (float32 for
    numpy/dask)."""
    low, high = _check(stats)
    if hasattr(x, "astype") and not _is_torch(x):
        x = x.astype(np.float32)
    return (x - low) * (1.0 / (high - low))


def finite(x: Any) -> Any:
    """Replace non-finite values of a *normalized* array: NaN and -inf → 0, +inf → 1 (numpy or
    dask)."""
    if type(x).__module__.startswith("dask"):
        return x.map_blocks(_finite_np, dtype=x.dtype)
    return _finite_np(x)


def _finite_np(x: np.ndarray) -> np.ndarray:
    return np.nan_to_num(x, nan=0.0, posinf=1.0, neginf=0.0)


def denormalize(y: Any, stats: Mapping[str, Any]) -> Any:
    """Inverse of :func:`normalize`: back to the channel's own intensity units."""
    low, high = _check(stats)
    return y * (high - low) + low


def normalize_channels(planes: Sequence[Any], stats: Sequence[Mapping[str, Any]]) -> Any:
    """Normalize each channel with its own statistics, make it finite, stack them as
    ``(..., C, Y, X)``.

    Parameters
    ----------
    planes
        One ``(..., Y, X)`` array per channel (all numpy or all dask), in the order of ``stats``.
    stats
        The ``{"low", "high"}`` statistics of each channel.

    Returns
    -------
    numpy.ndarray or dask.array.Array
        float32, channels along axis -3 (a dask array when the planes are dask arrays).
    """
    if len(planes) != len(stats):
        raise InputError(
            f"Expected one statistics entry per channel. Got {len(planes)} channels and "
            f"{len(stats)} entries instead."
        )
    out = [finite(normalize(p, s)) for p, s in zip(planes, stats)]
    return _stack(out)


def denormalize_channels(y: Any, stats: Sequence[Mapping[str, Any]]) -> Any:
    """Inverse of :func:`normalize_channels` for a ``(..., C, Y, X)`` array (numpy or dask): each
    channel in its units."""
    if y.shape[-3] != len(stats):
        raise InputError(
            f"Expected {len(stats)} channels along axis -3. Got {y.shape[-3]} instead."
        )
    return _stack([denormalize(y[..., k, :, :], s) for k, s in enumerate(stats)])


def _stack(planes: list[Any]) -> Any:
    if planes and type(planes[0]).__module__.startswith("dask"):
        import dask.array as da

        return da.stack(planes, axis=-3)
    return np.stack(planes, axis=-3)


def _is_torch(x: Any) -> bool:
    return type(x).__module__.startswith("torch")
