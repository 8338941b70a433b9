"""Pyramid geometry and mean downsampling (pure numpy, no store)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["cast_to_dtype", "downsample_mean", "level_shapes"]


def level_shapes(shape: Sequence[int], axes: Sequence[str], levels: int) -> list[tuple[int, ...]]:
    """Shapes of ``levels`` pyramid levels: y and x halved (floor, at least 1) per level."""
    shapes = [tuple(int(n) for n in shape)]
    for _ in range(1, levels):
        prev = shapes[-1]
        shapes.append(tuple(max(1, n // 2) if a in ("y", "x") else n for a, n in zip(axes, prev)))
    return shapes


def cast_to_dtype(data: np.ndarray, dtype: np.dtype | str) -> np.ndarray:
    """Cast ``data`` to ``dtype`` honestly: integers are rounded and clipped, never wrapped.

    NaN becomes 0 for integer dtypes.
    """
    dtype = np.dtype(dtype)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        out = np.rint(np.asarray(data, dtype=np.float64))
        out = np.nan_to_num(out, nan=0.0, posinf=info.max, neginf=info.min)
        return np.clip(out, info.min, info.max).astype(dtype)
    if dtype.kind == "b":
        return np.asarray(data) > 0.5
    return np.asarray(data).astype(dtype)


def downsample_mean(
    data: np.ndarray, axes: Sequence[str], target_shape: Sequence[int]
) -> np.ndarray:
    """Downsample ``data`` along y and x to exactly ``target_shape`` by block means.

    The integer factor per axis is ``round(source / target)``; the source is cropped or
    edge-padded to ``factor * target`` first, so any rounding convention of the tool that
    made the pyramid (floor or ceil) is met exactly.  Output dtype equals input dtype
    (rounded and clipped for integers).
    """
    data = np.asarray(data)
    out = data.astype(np.float64, copy=False)
    for ax, name in enumerate(axes):
        if name not in ("y", "x"):
            if out.shape[ax] != target_shape[ax]:
                raise ValueError(
                    f"Expected the same size along {name!r} at every level. "
                    f"Got {out.shape[ax]} and {target_shape[ax]} instead."
                )
            continue
        src, dst = out.shape[ax], int(target_shape[ax])
        factor = max(1, int(round(src / dst)))
        want = factor * dst
        if src > want:
            out = np.take(out, np.arange(want), axis=ax)
        elif src < want:
            pad = [(0, 0)] * out.ndim
            pad[ax] = (0, want - src)
            out = np.pad(out, pad, mode="edge")
        if factor > 1:
            shape = list(out.shape)
            shape[ax : ax + 1] = [dst, factor]
            out = out.reshape(shape).mean(axis=ax + 1)
    return cast_to_dtype(out, data.dtype)
