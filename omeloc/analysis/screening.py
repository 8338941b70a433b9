"""Screening readout: which wells' virtual channel matches the real one unusually badly.

A model trained on control wells learns how one protein's localization predicts
another's.  A perturbation that breaks that relationship makes the prediction fail in the
wells it hits, so a per-well agreement metric (Pearson r by default), expressed as a robust
z-score against the control wells, turns a virtual-staining model into a screening readout.

    z = (x - median(controls)) / (1.4826 * MAD(controls))

``1.4826 * MAD`` estimates the standard deviation for normally distributed controls and is
not dragged by the hits themselves, so the controls may default to all wells of the plate.
When the MAD is 0 (more than half the controls share one value), the scale falls back to
``1.2533 * mean absolute deviation`` (also a normal-consistent estimate), and when that is
0 too, z is 0 for values equal to the median and ±inf otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from omeloc.errors import InputError

__all__ = ["robust_z", "screen"]

_MAD_TO_SD = 1.4826
_MEANAD_TO_SD = math.sqrt(math.pi / 2)  # 1.2533


def robust_z(values: Sequence[float], controls: Sequence[float]) -> np.ndarray:
    """Robust z-scores of ``values`` against ``controls``: ``(x - median) / (1.4826 * MAD)``.

    Parameters
    ----------
    values : sequence of float
    controls : sequence of float
        Reference values; NaN are ignored.

    Returns
    -------
    numpy.ndarray
        One z per value (NaN where the value is NaN).

    Raises
    ------
    InputError
        No finite control value.

    Examples
    --------
    >>> robust_z([1.0, 2.0, 10.0], [1.0, 2.0, 3.0]).round(3).tolist()
    [-0.674, 0.0, 5.396]
    """
    x = np.asarray(values, dtype=np.float64)
    c = np.asarray(controls, dtype=np.float64)
    c = c[np.isfinite(c)]
    if c.size == 0:
        raise InputError(
            "Expected at least one control well with a finite value. Got none instead."
        )
    med = float(np.median(c))
    scale = _MAD_TO_SD * float(np.median(np.abs(c - med)))
    if scale == 0.0:
        scale = _MEANAD_TO_SD * float(np.mean(np.abs(c - med)))
    dev = x - med
    if scale == 0.0:
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(dev == 0, 0.0, np.sign(dev) * np.inf)
    return dev / scale


def screen(
    values: Mapping[str, float],
    control_wells: Iterable[str] | None = None,
    *,
    threshold: float = 3.0,
    metric: str = "pearson_r",
) -> list[dict[str, Any]]:
    """Per-well robust z-scores of a metric against control wells, with a hit flag.

    Parameters
    ----------
    values : mapping
        Well (any key: ``"B/3"`` or ``"B3"``) → metric value, e.g. per-well Pearson r.
    control_wells : iterable of str, optional
        Keys of ``values`` that are controls (untreated wells).  Default: all wells.
    threshold : float
        A well is flagged when ``|z| > threshold`` (default 3).  A perturbation that breaks
        the protein relationship shows as a large negative z.
    metric : str
        Name of the metric, copied into the rows.

    Returns
    -------
    list of dict
        One row per well, in the order of ``values``: ``well``, ``metric``, ``value``,
        ``z``, ``flag`` (bool), ``control`` (bool).

    Raises
    ------
    InputError
        A control well is not among the wells, or the threshold is not positive.
    """
    if not threshold > 0:
        raise InputError(f"Expected a positive z threshold. Got {threshold} instead.")
    keys = list(values)
    if control_wells is None:
        controls = keys
    else:
        controls = [str(w) for w in control_wells]
        unknown = [w for w in controls if w not in values]
        if unknown:
            raise InputError(
                f"Expected control wells among the evaluated wells ({', '.join(keys)}). "
                f"Got {', '.join(unknown)} instead."
            )
        if not controls:
            raise InputError("Expected at least one control well. Got an empty list instead.")
    vals = [float(values[k]) for k in keys]
    z = robust_z(vals, [float(values[k]) for k in controls])
    cset = set(controls)
    return [
        {
            "well": k,
            "metric": metric,
            "value": v,
            "z": float(zi),
            "flag": bool(abs(zi) > threshold),
            "control": k in cset,
        }
        for k, v, zi in zip(keys, vals, z)
    ]
