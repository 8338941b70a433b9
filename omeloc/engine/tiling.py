"""Pure tile geometry, blending weight maps and a weighted accumulator (numpy only).

The tiling engine (:mod:`omeloc.engine.inference`) cuts a 2D region into tiles that overlap by a
fixed number of pixels, runs a model on every tile and blends the predictions back with
smooth weights; a margin of ``trim`` pixels on each inner side of a tile gets zero weight
(:func:`check_trim`, :class:`Accumulator`), so seams vanish for networks whose receptive field
fits in it.  Everything here is geometry and arithmetic on numpy arrays: no torch, no dask, no
store, so every function is testable in isolation.

Conventions: sizes are ``(y, x)`` pairs of pixels; a tile is a pair of slices into the
region it was cut from.  Images smaller than a tile get one tile as large as the image (the
engine pads it to the model's size multiple and crops the prediction back).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np

from omeloc.errors import InputError

__all__ = [
    "BLEND_MODES",
    "Accumulator",
    "as_pair",
    "check_tiling",
    "check_trim",
    "iter_batches",
    "pad_to_multiple",
    "pad_to_shape",
    "tile_grid",
    "tile_starts",
    "weight_map",
    "weight_profile",
]

BLEND_MODES = ("constant", "linear", "cosine", "gaussian")

#: weights are clamped to at least this (relative to a peak of 1): never zero.
MIN_WEIGHT = 1e-3


def as_pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    """Parse an int or a ``(y, x)`` pair of ints into a ``(y, x)`` tuple.

    Raises
    ------
    InputError
        The value is not an int or a pair of ints.
    """
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value), int(value)
    try:
        pair = tuple(int(v) for v in value)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        pair = ()
    if len(pair) != 2 or any(isinstance(v, bool) for v in value):  # type: ignore[union-attr]
        raise InputError(
            f"Expected {name} as an int or a (y, x) pair of ints. Got {value!r} instead."
        )
    return pair  # type: ignore[return-value]


def check_tiling(
    tile: int | Sequence[int], overlap: int | Sequence[int]
) -> tuple[tuple[int, int], tuple[int, int]]:
    """Validate tile size and overlap; return them as ``(y, x)`` pairs.

    Raises
    ------
    InputError
        A tile size below 1, a negative overlap, or an overlap not smaller than the tile.
    """
    t, o = as_pair(tile, "tile"), as_pair(overlap, "overlap")
    for ti, oi in zip(t, o):
        if ti < 1:
            raise InputError(f"Expected tile >= 1 pixel. Got tile={t} instead.")
        if oi < 0:
            raise InputError(f"Expected overlap >= 0 pixels. Got overlap={o} instead.")
        if oi >= ti:
            raise InputError(
                f"Expected overlap < tile on every axis. Got tile={t}, overlap={o}; "
                f"lower the overlap or raise the tile size."
            )
    return t, o


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles covering ``[0, length)`` along one axis.

    Tiles are ``min(tile, length)`` long, spread evenly so that neighbours overlap by at
    least ``overlap`` pixels; the first starts at 0 and the last ends at ``length``.

    Examples
    --------
    >>> tile_starts(100, 40, 10)
    [0, 30, 60]
    >>> tile_starts(30, 64, 8)
    [0]
    """
    if length < 1:
        raise InputError(f"Expected a length >= 1. Got {length} instead.")
    if length <= tile:
        return [0]
    n = math.ceil((length - overlap) / (tile - overlap))
    span = length - tile
    # floor division keeps every gap <= tile - overlap, so overlaps are >= overlap
    return [(i * span) // (n - 1) for i in range(n)]


def tile_grid(
    shape: Sequence[int], tile: int | Sequence[int], overlap: int | Sequence[int]
) -> list[tuple[slice, slice]]:
    """All tiles covering a 2D region of ``shape = (height, width)``, as ``(slice_y, slice_x)``.

    Every tile has the same shape ``(min(tile_y, height), min(tile_x, width))``.
    """
    (ty, tx), (oy, ox) = check_tiling(tile, overlap)
    h, w = int(shape[-2]), int(shape[-1])
    th, tw = min(ty, h), min(tx, w)
    return [
        (slice(y, y + th), slice(x, x + tw))
        for y in tile_starts(h, ty, oy)
        for x in tile_starts(w, tx, ox)
    ]


def check_trim(trim: int | Sequence[int] | None, overlap: int | Sequence[int]) -> tuple[int, int]:
    """Validate the seam margin ``trim`` against ``overlap``; return it as a ``(y, x)`` pair.

    ``None`` gives the default, ``overlap // 4`` on each axis.  A trim of up to
    ``overlap // 2`` keeps every pixel covered by some tile with a weight above zero
    (neighbouring tiles overlap by at least ``overlap`` pixels).

    Raises
    ------
    InputError
        A negative trim, or one above ``overlap // 2`` on some axis.

    Examples
    --------
    >>> check_trim(None, 24)
    (6, 6)
    """
    o = as_pair(overlap, "overlap")
    if trim is None:
        return o[0] // 4, o[1] // 4
    t = as_pair(trim, "trim")
    if any(ti < 0 or ti > oi // 2 for ti, oi in zip(t, o)):
        raise InputError(
            f"Expected 0 <= trim <= overlap // 2 on every axis. Got trim={t}, overlap={o}; "
            f"lower the trim or raise the overlap."
        )
    return t


def _inner_profile(length: int, blend: str, ramp: int | None) -> np.ndarray:
    """The untrimmed profile of :func:`weight_profile` (peak 1, clamped to ``MIN_WEIGHT``)."""
    if blend == "constant":
        return np.ones(length)
    centres = np.arange(length) + 0.5
    if blend == "gaussian":
        sigma = max(length / 8.0, 1e-6)
        prof = np.exp(-0.5 * ((centres - length / 2.0) / sigma) ** 2)
    else:
        r = length / 2.0 if ramp is None else float(min(ramp, length / 2.0))
        if r <= 0:
            return np.ones(length)
        t = np.clip(np.minimum(centres, length - centres) / r, 0.0, 1.0)
        prof = t if blend == "linear" else 0.5 - 0.5 * np.cos(np.pi * t)
    return np.maximum(prof / prof.max(), MIN_WEIGHT)


def weight_profile(
    length: int, blend: str, ramp: int | None = None, trim: int | Sequence[int] = 0
) -> np.ndarray:
    """1D blending weights (float64, peak 1): zero on the trimmed margins, else >= ``MIN_WEIGHT``.

    Parameters
    ----------
    length
        Tile length in pixels.
    blend : {"constant", "linear", "cosine", "gaussian"}
        ``constant``: all ones.  ``linear``: a triangular ramp; ``cosine``: a Hann (raised
        cosine) ramp; both rise over ``ramp`` pixels at each end and are flat in between, so
        two tiles overlapping by ``ramp`` pixels cross-fade with weights summing to one.
        ``gaussian``: a Gaussian over the whole tile, sigma = length / 8 (MONAI's default).
    ramp
        Ramp length for ``linear`` / ``cosine``; ``None`` ramps over half the tile (a full
        triangle / Hann window).
    trim
        Margins of zero weight, an int for both ends or ``(start, end)``: the pixels a
        network computed from its padding.  The profile of ``blend`` spans the rest.

    Raises
    ------
    InputError
        Unknown blend, or margins that leave no pixel.
    """
    if blend not in BLEND_MODES:
        raise InputError(f"Unknown blend {blend!r}. Use one of {', '.join(BLEND_MODES)}.")
    lo, hi = as_pair(trim, "trim")
    inner = length - lo - hi
    if lo < 0 or hi < 0 or inner < 1:
        raise InputError(
            f"Expected trim margins >= 0 that leave at least one pixel of a tile of "
            f"{length}. Got trim={(lo, hi)} instead."
        )
    prof = np.zeros(length)
    prof[lo : lo + inner] = _inner_profile(inner, blend, ramp)
    return prof


def weight_map(
    shape: Sequence[int],
    blend: str = "cosine",
    ramp: int | Sequence[int] | None = None,
    trim: Sequence[Sequence[int]] = ((0, 0), (0, 0)),
) -> np.ndarray:
    """2D blending weights of a tile of ``shape = (h, w)``: the outer product of profiles.

    See :func:`weight_profile` for the modes; ``ramp`` may be an int or a ``(y, x)`` pair;
    ``trim`` is ``((top, bottom), (left, right))`` margins of zero weight.  The result is
    float64 with every value outside the margins in ``[MIN_WEIGHT**2, 1]``.
    """
    ry, rx = (None, None) if ramp is None else as_pair(ramp, "ramp")
    return np.outer(
        weight_profile(int(shape[0]), blend, ry, trim[0]),
        weight_profile(int(shape[1]), blend, rx, trim[1]),
    )


def pad_to_multiple(array: np.ndarray, multiple: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Reflect-pad the last two axes up to a multiple of ``multiple``; return it and the old (h, w).

    Sizes already a multiple are returned unchanged (no copy).  Padding larger than the
    image repeats the reflection (numpy's ``reflect`` mode), so tiny images work too.
    """
    h, w = array.shape[-2:]
    return pad_to_shape(array, (h + (-h) % multiple, w + (-w) % multiple))


def pad_to_shape(array: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, tuple[int, int]]:
    """Reflect-pad the last two axes at their ends up to ``shape``; return it and the old (h, w).

    As :func:`pad_to_multiple`: no copy when nothing is padded, ``edge`` mode for images of
    one pixel along an axis.
    """
    h, w = array.shape[-2:]
    ph, pw = max(0, shape[0] - h), max(0, shape[1] - w)
    if ph == 0 and pw == 0:
        return array, (h, w)
    mode = "reflect" if min(h, w) > 1 else "edge"
    pad = [(0, 0)] * (array.ndim - 2) + [(0, ph), (0, pw)]
    return np.pad(array, pad, mode=mode), (h, w)


class Accumulator:
    """Weighted sum of tile predictions over a region, normalised by :meth:`finalize`.

    Sums are kept in float64, so blending copies of one value gives that value back exactly
    after the float32 cast.

    Parameters
    ----------
    shape
        ``(..., C, H, W)`` of the region's prediction.
    blend, ramp
        Passed to :func:`weight_map` for every tile shape.
    trim
        Margin of zero weight (an int or a ``(y, x)`` pair) on every side of a tile that is
        not on the region's edge: a network's output there depends on its padding, which the
        whole-region output does not see.  With ``trim`` at least the network's receptive
        field (and tiles overlapping by at least ``2 * trim``), the blended interior equals
        the whole-region output up to float rounding.
    """

    def __init__(
        self,
        shape: Sequence[int],
        blend: str = "cosine",
        ramp: int | Sequence[int] | None = None,
        trim: int | Sequence[int] = 0,
    ) -> None:
        weight_profile(1, blend)  # validate early
        self.shape = tuple(int(s) for s in shape)
        self.blend, self.ramp = blend, ramp
        self.trim = as_pair(trim, "trim")
        self._sum = np.zeros(self.shape, dtype=np.float64)
        self._weight = np.zeros(self.shape[:-3] + self.shape[-2:], dtype=np.float64)
        self._maps: dict[tuple, np.ndarray] = {}

    def _margins(self, window: tuple[slice, slice]) -> tuple[tuple[int, int], tuple[int, int]]:
        """Zero-weight margins of a tile at ``window``: none on the region's edges."""
        margins = []
        for sl, size, t in zip(window, self.shape[-2:], self.trim):
            start, stop, _ = sl.indices(size)
            margins.append((0 if start == 0 else t, 0 if stop == size else t))
        return margins[0], margins[1]

    def add(self, index: tuple, window: tuple[slice, slice], prediction: np.ndarray) -> None:
        """Add ``prediction`` (``C x h x w``) at leading ``index`` and 2D ``window``."""
        margins = self._margins(window)
        key = (prediction.shape[-2:], margins)
        w = self._maps.get(key)
        if w is None:
            w = self._maps[key] = weight_map(prediction.shape[-2:], self.blend, self.ramp, margins)
        self._sum[(*index, slice(None), *window)] += prediction * w
        self._weight[(*index, *window)] += w

    def finalize(self, window: tuple[slice, slice] | None = None) -> np.ndarray:
        """The blended region (or its 2D ``window``) as float32; every pixel must be covered.

        Raises
        ------
        InputError
            A pixel of ``window`` got no weight from any tile.
        """
        window = window or (slice(None), slice(None))
        weight = self._weight[(..., *window)]
        if not np.all(weight > 0):
            raise InputError("Some pixels of the region were not covered by any tile.")
        return (self._sum[(..., *window)] / weight[..., None, :, :]).astype(np.float32)


def iter_batches(items: Sequence, batch_size: int) -> Iterator[Sequence]:
    """Consecutive slices of ``items`` of at most ``batch_size`` elements."""
    for i in range(0, len(items), batch_size):
        yield items[i : i + batch_size]
