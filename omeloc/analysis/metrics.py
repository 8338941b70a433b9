"""Image-similarity metrics between a virtual (predicted) channel and the real one, in numpy.

Every function takes the prediction and the truth as arrays of the same shape (any
dimensionality; SSIM and the noise estimate work on the last two axes, ``y`` and ``x``, and
average over leading axes) and computes in float64.  The definitions follow
scikit-image's reference implementations, which the tests compare against:

- :func:`pearson_r` — Pearson correlation coefficient (``scipy.stats.pearsonr``).
- :func:`ssim` — mean structural similarity (``skimage.metrics.structural_similarity``).
  Default: Gaussian window, ``sigma=1.5`` truncated at 3.5 sigma (an 11-tap filter, Wang et
  al. 2004), sample covariance, ``K1=0.01``, ``K2=0.03``, i.e. skimage with
  ``gaussian_weights=True``; ``gaussian=False`` gives skimage's 7x7 uniform default.  The
  mean is taken over the pixels whose window lies fully inside the image (skimage crops the
  same border), so no boundary padding is involved.
- :func:`psnr` — peak signal-to-noise ratio (``skimage.metrics.peak_signal_noise_ratio``).
- :func:`nrmse` — normalised root mean squared error
  (``skimage.metrics.normalized_root_mse``, ``normalization="euclidean"`` by default).
- :func:`mae` — mean absolute error.
- :func:`structure_r` — Pearson r of the fine structure: both images minus their Gaussian
  blur (σ = 4 px by default).  The cell footprint, which any model learns from any channel,
  is removed; what remains is whether filaments, edges and adhesions land where they are.
  ``pearson_r`` of a blurred footprint-only prediction can be high; its ``structure_r`` is not.

``data_range`` (used by SSIM and PSNR) defaults to the range of the truth,
``truth.max() - truth.min()``, of the field being scored — not the dtype range, which
would inflate PSNR for 16-bit images whose pixels span a few thousand counts.

Foreground (:func:`foreground_mask`): pixels of the truth above Otsu's threshold (a
256-bin histogram over the truth's range, as ``skimage.filters.threshold_otsu`` on float
data), or above a percentile of the truth when a number is given.

Noise ceiling (:func:`noise_ceiling`): the highest Pearson r any prediction can reach
against a noisy target (Ounkomol et al. 2018), ``C_max = 1/sqrt(1 + var_noise/(var_target -
var_noise))``, with ``var_noise`` estimated from the target alone by Immerkær's method
(:func:`estimate_noise_variance`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from omeloc.errors import InputError

__all__ = [
    "pearson_r",
    "ssim",
    "ssim_map",
    "psnr",
    "nrmse",
    "mae",
    "structure_r",
    "gaussian_blur",
    "otsu_threshold",
    "foreground_mask",
    "estimate_noise_variance",
    "noise_ceiling",
    "field_metrics",
    "summarize",
    "METRIC_NAMES",
]

#: Columns that :func:`field_metrics` returns, in order.
METRIC_NAMES: tuple[str, ...] = (
    "pearson_r",
    "ssim",
    "psnr",
    "nrmse",
    "mae",
    "pearson_r_fg",
    "ssim_fg",
    "nrmse_fg",
    "mae_fg",
    "fg_fraction",
    "noise_ceiling",
    "pearson_r_rel",
    "data_range",
    "structure_r",
)


def _pair(pred: Any, truth: Any) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(pred, dtype=np.float64)
    t = np.asarray(truth, dtype=np.float64)
    if p.shape != t.shape:
        raise InputError(
            f"Expected prediction and truth of the same shape. Got {p.shape} and {t.shape} "
            f"instead. Compare the same image and pyramid level."
        )
    if p.size == 0:
        raise InputError("Expected non-empty images. Got arrays with no pixels instead.")
    return p, t


def _mask(mask: Any, shape: tuple[int, ...]) -> np.ndarray | None:
    if mask is None:
        return None
    m = np.asarray(mask, dtype=bool)
    if m.shape != shape:
        raise InputError(f"Expected a mask of shape {shape}. Got {m.shape} instead.")
    return m


def _data_range(truth: np.ndarray, data_range: float | None) -> float:
    if data_range is not None:
        r = float(data_range)
        if not r > 0:
            raise InputError(f"Expected a positive data_range. Got {data_range} instead.")
        return r
    r = float(np.max(truth) - np.min(truth))
    return r if r > 0 else 1.0  # a constant truth: any positive range gives the same verdict


# -- pixel-wise metrics ---------------------------------------------------------------------------
def pearson_r(pred: Any, truth: Any, mask: Any = None) -> float:
    """Pearson correlation coefficient between ``pred`` and ``truth``.

    Parameters
    ----------
    pred, truth : array_like
        Images of the same shape.
    mask : array_like of bool, optional
        Only pixels where ``mask`` is True count (e.g. the foreground).

    Returns
    -------
    float
        r in [-1, 1]; NaN when either image is constant (over the mask) or the mask has
        fewer than two pixels.

    Examples
    --------
    >>> pearson_r([1, 2, 3], [2, 4, 7])  # doctest: +ELLIPSIS
    0.99...
    """
    p, t = _pair(pred, truth)
    m = _mask(mask, p.shape)
    if m is not None:
        p, t = p[m], t[m]
    if p.size < 2:
        return math.nan
    dp = p - p.mean()
    dt = t - t.mean()
    denom = math.sqrt(float(np.dot(dp.ravel(), dp.ravel())) * float(np.dot(dt.ravel(), dt.ravel())))
    if denom == 0.0:
        return math.nan
    return float(np.clip(np.dot(dp.ravel(), dt.ravel()) / denom, -1.0, 1.0))


def gaussian_blur(
    image: Any,
    sigma: float,
    *,
    truncate: float = 3.0,
    dtype: Any = np.float64,
    short_axis_mode: str = "symmetric",
) -> np.ndarray:
    """Separable Gaussian blur of the last two axes with mirror padding (numpy only).

    The one Gaussian blur of the package: metrics use it at 3 σ in float64, the synthetic
    cells (:func:`omeloc.data.synthetic_cells.gaussian_blur`) at 3.5 σ in float32.

    Parameters
    ----------
    image : array_like
        At least 2-d; leading axes are blurred plane by plane.
    sigma : float
        Standard deviation in pixels; ``<= 0`` returns a copy in ``dtype``.
    truncate : float
        Kernel radius in σ: ``max(1, ceil(truncate * sigma))`` pixels.
    dtype : numpy dtype
        Working and output precision (the kernel is computed in float64 and cast).
    short_axis_mode : {"symmetric", "edge"}
        Padding of an axis no longer than the kernel radius (longer axes are always
        mirrored): ``"symmetric"`` (repeated mirroring, like scipy's ``"reflect"``) or
        ``"edge"`` (the border pixel repeated).

    Returns
    -------
    numpy.ndarray
        The blurred image, of ``dtype``.  With the defaults it equals
        ``scipy.ndimage.gaussian_filter(image, sigma, mode="reflect", truncate=3)`` on 2-d input.

    Examples
    --------
    >>> a = np.zeros((9, 9)); a[4, 4] = 1
    >>> round(float(gaussian_blur(a, 1.0).sum()), 5)
    1.0
    """
    x = np.asarray(image, dtype=dtype)
    if sigma <= 0:
        return x.copy()
    radius = max(1, int(math.ceil(truncate * sigma)))
    k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2).astype(dtype)
    k /= k.sum()
    for axis in (x.ndim - 2, x.ndim - 1):
        n = x.shape[axis]
        pad = [(0, 0)] * x.ndim
        pad[axis] = (radius, radius)
        xp = np.pad(x, pad, mode="symmetric" if n > radius else short_axis_mode)
        out = np.zeros_like(x)
        for i, w in enumerate(k):
            out += w * xp[(slice(None),) * axis + (slice(i, i + n),)]
        x = out
    return x


def structure_r(pred: Any, truth: Any, sigma: float = 4.0, mask: Any = None) -> float:
    """Pearson r of the fine structure: ``pred - blur(pred)`` vs ``truth - blur(truth)``.

    Parameters
    ----------
    pred, truth : array_like
        Images of the same shape (2D, or stacks over leading axes).
    sigma : float
        Gaussian σ in pixels of the blur that is removed (the scale of the cell footprint).
    mask : array_like of bool, optional
        Only these pixels count.
    """
    p, t = _pair(pred, truth)
    return pearson_r(p - gaussian_blur(p, sigma), t - gaussian_blur(t, sigma), mask)


def mae(pred: Any, truth: Any, mask: Any = None) -> float:
    """Mean absolute error, in the images' units (over ``mask`` when given)."""
    p, t = _pair(pred, truth)
    m = _mask(mask, p.shape)
    diff = np.abs(p - t)
    if m is not None:
        diff = diff[m]
    return float(diff.mean()) if diff.size else math.nan


def _mse(p: np.ndarray, t: np.ndarray) -> float:
    d = p - t
    return float(np.mean(d * d))


def psnr(pred: Any, truth: Any, data_range: float | None = None) -> float:
    """Peak signal-to-noise ratio in dB, ``10 log10(data_range**2 / MSE)``.

    ``data_range`` defaults to ``truth.max() - truth.min()``.  Identical images give ``inf``.
    """
    p, t = _pair(pred, truth)
    r = _data_range(t, data_range)
    err = _mse(p, t)
    if err == 0.0:
        return math.inf
    return float(10.0 * np.log10(r * r / err))


def nrmse(pred: Any, truth: Any, mask: Any = None, normalization: str = "euclidean") -> float:
    """Normalised root mean squared error.

    Parameters
    ----------
    pred, truth : array_like
    mask : array_like of bool, optional
        Restrict both the error and the normalisation to these pixels.
    normalization : {"euclidean", "min-max", "mean"}
        Divide the RMSE by ``sqrt(mean(truth**2))`` (skimage's default), by
        ``truth.max() - truth.min()``, or by ``truth.mean()``.
    """
    p, t = _pair(pred, truth)
    m = _mask(mask, p.shape)
    if m is not None:
        p, t = p[m], t[m]
    if t.size == 0:
        return math.nan
    norm = normalization.lower()
    if norm == "euclidean":
        denom = math.sqrt(float(np.mean(t * t)))
    elif norm == "min-max":
        denom = float(t.max() - t.min())
    elif norm == "mean":
        denom = float(t.mean())
    else:
        raise InputError(
            f"Expected normalization 'euclidean', 'min-max' or 'mean'. Got {normalization!r} "
            "instead."
        )
    rmse = math.sqrt(_mse(p, t))
    if denom == 0.0:
        return 0.0 if rmse == 0.0 else math.inf
    return rmse / denom


# -- SSIM -----------------------------------------------------------------------------------------
_STRIP_PIXELS = 1 << 18  # SSIM works on strips of about this many pixels (2 MiB per float64 array)


def _window(gaussian: bool, sigma: float, win_size: int) -> np.ndarray:
    """1-D filter taps: scipy.ndimage's Gaussian (truncate 3.5) or a uniform box."""
    if gaussian:
        if not sigma > 0:
            raise InputError(f"Expected a positive sigma. Got {sigma} instead.")
        radius = int(3.5 * sigma + 0.5)
        x = np.arange(-radius, radius + 1, dtype=np.float64)
        w = np.exp(-0.5 * (x / sigma) ** 2)
        return w / w.sum()
    if win_size < 1 or win_size % 2 != 1:
        raise InputError(f"Expected an odd win_size >= 1. Got {win_size} instead.")
    return np.full(win_size, 1.0 / win_size)


def _filter_valid(img: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Separable correlation with ``w`` along the last two axes, 'valid' region only."""
    k = w.size
    ny, nx = img.shape[-2] - k + 1, img.shape[-1] - k + 1
    tmp = np.zeros(img.shape[:-2] + (img.shape[-2], nx))
    for i in range(k):
        tmp += w[i] * img[..., :, i : i + nx]
    out = np.zeros(img.shape[:-2] + (ny, nx))
    for i in range(k):
        out += w[i] * tmp[..., i : i + ny, :]
    return out


def ssim_map(
    pred: Any,
    truth: Any,
    *,
    data_range: float | None = None,
    gaussian: bool = True,
    sigma: float = 1.5,
    win_size: int = 7,
    k1: float = 0.01,
    k2: float = 0.03,
) -> np.ndarray:
    """Local SSIM values over the last two axes, for pixels whose window fits in the image.

    The map is cropped by the window radius on each side (as skimage does before taking
    the mean), so it has shape ``(..., Y - 2r, X - 2r)``.  See :func:`ssim` for parameters.
    """
    p, t = _pair(pred, truth)
    if p.ndim < 2:
        raise InputError(
            f"Expected images with at least 2 dimensions (y, x). Got shape {p.shape} instead."
        )
    w = _window(gaussian, sigma, win_size)
    k = w.size
    if min(p.shape[-2:]) < k:
        raise InputError(
            f"Expected images of at least {k}x{k} pixels for SSIM. Got {p.shape[-2:]} instead. "
            f"Use a finer pyramid level."
        )
    r = _data_range(t, data_range)
    n_p = k * k
    cov_norm = n_p / (n_p - 1)
    c1, c2 = (k1 * r) ** 2, (k2 * r) ** 2
    ny, nx = p.shape[-2] - k + 1, p.shape[-1] - k + 1
    out = np.empty(p.shape[:-2] + (ny, nx))
    step = max(1, _STRIP_PIXELS // p.shape[-1])  # output rows per strip: bounded work arrays
    for lead in np.ndindex(p.shape[:-2]):
        for y0 in range(0, ny, step):
            y1 = min(ny, y0 + step)
            ps, ts = p[lead][y0 : y1 + k - 1], t[lead][y0 : y1 + k - 1]
            ux, uy = _filter_valid(ps, w), _filter_valid(ts, w)
            vx = cov_norm * (_filter_valid(ps * ps, w) - ux * ux)
            vy = cov_norm * (_filter_valid(ts * ts, w) - uy * uy)
            vxy = cov_norm * (_filter_valid(ps * ts, w) - ux * uy)
            out[lead][y0:y1] = ((2 * ux * uy + c1) * (2 * vxy + c2)) / (
                (ux * ux + uy * uy + c1) * (vx + vy + c2)
            )
    return out


def ssim(
    pred: Any,
    truth: Any,
    *,
    data_range: float | None = None,
    gaussian: bool = True,
    sigma: float = 1.5,
    win_size: int = 7,
    mask: Any = None,
) -> float:
    """Mean structural similarity (SSIM) of ``pred`` against ``truth``.

    Parameters
    ----------
    pred, truth : array_like
        Images of the same shape; the window runs over the last two axes (``y``, ``x``) and
        leading axes (``z``, ``t``) are averaged over, plane by plane.
    data_range : float, optional
        Dynamic range for the stabilising constants; default ``truth.max() - truth.min()``.
    gaussian : bool
        True (default): Gaussian-weighted window, ``sigma`` 1.5, 11 taps — skimage's
        ``gaussian_weights=True``.  False: a ``win_size`` x ``win_size`` uniform window —
        skimage's default.
    sigma, win_size
        Window parameters (see ``gaussian``).
    mask : array_like of bool, optional
        Average the SSIM map only where ``mask`` is True (e.g. the foreground); the map's
        border (one window radius) is excluded either way.

    Returns
    -------
    float
        Mean SSIM in [-1, 1]; NaN when the mask leaves no pixel.
    """
    s = ssim_map(
        pred, truth, data_range=data_range, gaussian=gaussian, sigma=sigma, win_size=win_size
    )
    if mask is None:
        return float(s.mean(dtype=np.float64))
    m = _mask(mask, np.shape(pred))
    pad_y = (m.shape[-2] - s.shape[-2]) // 2
    pad_x = (m.shape[-1] - s.shape[-1]) // 2
    m = m[..., pad_y : pad_y + s.shape[-2], pad_x : pad_x + s.shape[-1]]
    return float(s[m].mean(dtype=np.float64)) if m.any() else math.nan


# -- foreground -----------------------------------------------------------------------------------
def otsu_threshold(image: Any, nbins: int = 256) -> float:
    """Otsu's threshold over a ``nbins`` histogram spanning the image's range.

    Same algorithm as ``skimage.filters.threshold_otsu`` on float data: the threshold is
    the centre of the bin that maximises the between-class variance.
    """
    x = np.asarray(image, dtype=np.float64).ravel()
    x = x[np.isfinite(x)]
    if x.size == 0:
        raise InputError(
            "Expected an image with finite pixels for Otsu's threshold. Got none instead."
        )
    lo, hi = float(x.min()), float(x.max())
    if lo == hi:
        return lo
    hist, edges = np.histogram(x, bins=nbins, range=(lo, hi))
    centers = (edges[:-1] + edges[1:]) / 2
    hist = hist.astype(np.float64)
    w1 = np.cumsum(hist)
    w2 = np.cumsum(hist[::-1])[::-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        m1 = np.cumsum(hist * centers) / w1
        m2 = (np.cumsum((hist * centers)[::-1]) / w2[::-1])[::-1]
    between = w1[:-1] * w2[1:] * (m1[:-1] - m2[1:]) ** 2
    return float(centers[int(np.nanargmax(between))])


def foreground_mask(truth: Any, method: str | float = "otsu") -> np.ndarray:
    """Foreground pixels of the truth image.

    Parameters
    ----------
    truth : array_like
    method : "otsu" or float
        ``"otsu"`` (default): ``truth > otsu_threshold(truth)``.  A number ``p`` in
        ``[0, 100)``: ``truth > percentile(truth, p)``.

    Returns
    -------
    numpy.ndarray of bool
    """
    t = np.asarray(truth, dtype=np.float64)
    if isinstance(method, str):
        if method.lower() != "otsu":
            raise InputError(
                f"Expected foreground 'otsu' or a percentile in [0, 100). Got {method!r} instead."
            )
        thr = otsu_threshold(t)
    else:
        p = float(method)
        if not 0 <= p < 100:
            raise InputError(
                f"Expected a foreground percentile in [0, 100). Got {method!r} instead."
            )
        thr = float(np.percentile(t, p))
    return t > thr


# -- noise ceiling --------------------------------------------------------------------------------
_IMMERKAER = np.array([[1.0, -2.0, 1.0], [-2.0, 4.0, -2.0], [1.0, -2.0, 1.0]])


def estimate_noise_variance(image: Any) -> float:
    """Variance of the pixel noise of ``image``, estimated from the image alone.

    Immerkær's estimator (J. Immerkær, "Fast noise variance estimation", CVIU 64, 1996):
    convolve each ``y, x`` plane with the 3x3 kernel ``[[1,-2,1],[-2,4,-2],[1,-2,1]]`` (the
    difference of two Laplacians, which cancels any locally linear signal) and take
    ``sigma = sqrt(pi/2) * mean(|response|) / 6``.  For independent Gaussian noise this is
    unbiased; structure at the scale of one pixel (sharp edges, single-pixel spots) inflates
    it, so the ceiling derived from it errs on the low side for very sharp images.
    Signal-dependent (Poisson) noise gives roughly the squared mean noise level.

    Returns
    -------
    float
        ``sigma**2`` in the image's units squared.
    """
    x = np.asarray(image, dtype=np.float64)
    if x.ndim < 2 or min(x.shape[-2:]) < 3:
        raise InputError(f"Expected an image of at least 3x3 pixels. Got shape {x.shape} instead.")
    ny, nx = x.shape[-2] - 2, x.shape[-1] - 2
    resp = np.zeros(x.shape[:-2] + (ny, nx))
    for i in range(3):
        for j in range(3):
            resp += _IMMERKAER[i, j] * x[..., i : i + ny, j : j + nx]
    sigma = math.sqrt(math.pi / 2) * float(np.mean(np.abs(resp))) / 6.0
    return sigma * sigma


def noise_ceiling(truth: Any, noise_variance: float | None = None) -> float:
    """Highest Pearson r a perfect, noise-free prediction can reach against ``truth``.

    ``C_max = 1 / sqrt(1 + var_noise / (var_target - var_noise))`` (Ounkomol et al.,
    Nature Methods 2018), which equals ``sqrt(var_signal / var_target)``.

    Parameters
    ----------
    truth : array_like
        The real (noisy) target image.
    noise_variance : float, optional
        Known noise variance; default :func:`estimate_noise_variance` of ``truth``.

    Returns
    -------
    float
        In [0, 1]; 0 when the estimated noise explains all the variance; NaN for a
        constant image.
    """
    t = np.asarray(truth, dtype=np.float64)
    var_target = float(t.var())
    if var_target == 0.0:
        return math.nan
    var_noise = estimate_noise_variance(t) if noise_variance is None else float(noise_variance)
    if var_noise >= var_target:
        return 0.0
    return 1.0 / math.sqrt(1.0 + var_noise / (var_target - var_noise))


# -- all at once ----------------------------------------------------------------------------------
def field_metrics(
    pred: Any,
    truth: Any,
    *,
    foreground: str | float = "otsu",
    data_range: float | None = None,
    gaussian: bool = True,
    with_noise_ceiling: bool = True,
) -> dict[str, float]:
    """All metrics of one field: whole field, foreground, and the noise ceiling.

    Whole field: ``pearson_r``, ``ssim``, ``psnr``, ``nrmse``, ``mae``.  Foreground (pixels
    of :func:`foreground_mask` of the truth): ``pearson_r_fg``, ``ssim_fg`` (SSIM map
    averaged over the foreground), ``nrmse_fg``, ``mae_fg``, and ``fg_fraction``.
    ``noise_ceiling`` is :func:`noise_ceiling` of the whole truth field and
    ``pearson_r_rel = pearson_r / noise_ceiling`` (NaN when not asked for).  ``data_range``
    is the range used by SSIM and PSNR; ``structure_r`` is :func:`structure_r` (σ = 4 px).

    Returns
    -------
    dict
        Keys :data:`METRIC_NAMES`, float values (NaN where undefined, ``inf`` PSNR for
        identical images).
    """
    p, t = _pair(pred, truth)
    r = _data_range(t, data_range)
    fg = foreground_mask(t, foreground)
    smap = ssim_map(p, t, data_range=r, gaussian=gaussian)
    whole_r = pearson_r(p, t)
    out: dict[str, float] = {
        "pearson_r": whole_r,
        "ssim": float(smap.mean(dtype=np.float64)),
        "psnr": psnr(p, t, data_range=r),
        "nrmse": nrmse(p, t),
        "mae": mae(p, t),
        "pearson_r_fg": pearson_r(p, t, fg),
        "ssim_fg": ssim(p, t, data_range=r, gaussian=gaussian, mask=fg),
        "nrmse_fg": nrmse(p, t, fg),
        "mae_fg": mae(p, t, fg),
        "fg_fraction": float(fg.mean()),
        "noise_ceiling": math.nan,
        "pearson_r_rel": math.nan,
        "data_range": r,
        "structure_r": structure_r(p, t),
    }
    if with_noise_ceiling:
        c = noise_ceiling(t)
        out["noise_ceiling"] = c
        out["pearson_r_rel"] = whole_r / c if c and c > 0 and not math.isnan(whole_r) else math.nan
    return out


def summarize(
    rows: list[Mapping[str, Any]], keys: tuple[str, ...] = METRIC_NAMES
) -> dict[str, float]:
    """Mean of each metric over ``rows``, ignoring NaN (NaN when no row has a value)."""
    out: dict[str, float] = {}
    for k in keys:
        vals = np.array([float(r[k]) for r in rows if k in r], dtype=np.float64)
        vals = vals[~np.isnan(vals)]
        out[k] = float(vals.mean()) if vals.size else math.nan
    return out
