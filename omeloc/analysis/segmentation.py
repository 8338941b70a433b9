"""Segmentation-based scores: do the nuclei of a virtual stain segment like the real ones?

The same classical pipeline (scikit-image) segments the virtual and the real channel
(:func:`segment_nuclei`): Gaussian smoothing, a global Otsu (or a local) threshold, holes
filled, a distance-transform watershed that splits touching nuclei, and a size filter.  The two
label images are then compared (:func:`match_objects`): the object count and its error, the
Dice coefficient of the two foregrounds, and the F1 score of the objects matched one to one at
IoU ≥ 0.5 (Hungarian assignment on the IoU matrix, :func:`scipy.optimize.linear_sum_assignment`).

scikit-image and scipy are needed only here: ``pip install 'omeloc[segment]'``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from omeloc.errors import InputError

__all__ = [
    "SEGMENT_METRICS",
    "SegmentSettings",
    "SegmentationScores",
    "match_objects",
    "nuclei_scores",
    "segment_nuclei",
]

#: the columns :func:`nuclei_scores` adds to an evaluation's field rows (and its well means)
SEGMENT_METRICS: tuple[str, ...] = (
    "nuclei_true",
    "nuclei_pred",
    "nuclei_count_error",
    "nuclei_dice",
    "nuclei_f1",
    "nuclei_precision",
    "nuclei_recall",
    "nuclei_mean_iou",
)


def _imports() -> tuple[Any, Any, Any, Any]:
    try:
        from scipy import ndimage, optimize
        from skimage import feature, filters, measure, segmentation
    except ImportError as err:  # pragma: no cover - the extra is installed in the test environment
        raise InputError(
            "Segmentation scores need scikit-image and scipy: pip install 'omeloc[segment]'."
        ) from err
    return ndimage, optimize, (feature, filters, measure), segmentation


@dataclass(frozen=True)
class SegmentSettings:
    """How nuclei are segmented (in pixels of the level scored).

    Attributes
    ----------
    sigma
        Gaussian smoothing before thresholding.
    threshold
        ``"otsu"`` (one threshold per image) or ``"local"`` (:func:`skimage.filters.threshold_local`
        over ``block_size`` px, for uneven backgrounds).
    block_size
        Window of the local threshold (odd).
    min_distance
        Smallest distance between two nuclei centres (the watershed's seeds).
    min_size, max_size
        Objects smaller (or larger, when given) than this many pixels are dropped.
    """

    sigma: float = 2.0
    threshold: str = "otsu"
    block_size: int = 51
    min_distance: int = 7
    min_size: int = 30
    max_size: int | None = None

    def __post_init__(self) -> None:
        if self.threshold not in ("otsu", "local"):
            raise InputError(
                f"Expected threshold 'otsu' or 'local'. Got {self.threshold!r} instead."
            )
        if self.sigma < 0 or self.min_distance < 1 or self.min_size < 0 or self.block_size < 3:
            raise InputError(
                f"Expected sigma >= 0, min_distance >= 1, min_size >= 0, block_size >= 3. "
                f"Got {self} instead."
            )


def segment_nuclei(image: np.ndarray, settings: SegmentSettings | None = None) -> np.ndarray:
    """Label image (int32, 0 = background) of the nuclei of a 2D ``image``.

    Examples
    --------
    >>> img = np.zeros((64, 64)); img[10:30, 10:30] = 1; img[40:60, 35:55] = 1
    >>> int(segment_nuclei(img).max())
    2
    """
    s = settings or SegmentSettings()
    ndimage, _, (feature, filters, measure), segmentation = _imports()
    img = np.asarray(image, dtype=np.float64)
    if img.ndim != 2:
        raise InputError(f"Expected a 2D image to segment. Got shape {img.shape} instead.")
    smooth = filters.gaussian(img, sigma=s.sigma, preserve_range=True) if s.sigma > 0 else img
    if float(smooth.max() - smooth.min()) <= 0:
        return np.zeros(img.shape, dtype=np.int32)
    if s.threshold == "otsu":
        mask = smooth > filters.threshold_otsu(smooth)
    else:
        mask = smooth > filters.threshold_local(smooth, block_size=s.block_size | 1)
        mask &= smooth > filters.threshold_otsu(smooth) * 0.5  # no nuclei in flat background
    mask = ndimage.binary_fill_holes(mask)
    distance = ndimage.distance_transform_edt(mask)
    regions = measure.label(mask)
    peaks = feature.peak_local_max(
        distance, min_distance=s.min_distance, labels=regions, exclude_border=False
    )
    markers = np.zeros(img.shape, dtype=np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    labels = segmentation.watershed(-distance, markers, mask=mask)
    sizes = np.bincount(labels.ravel())
    drop = sizes < s.min_size
    if s.max_size is not None:
        drop |= sizes > s.max_size
    drop[0] = False
    if drop.any():
        labels[drop[labels]] = 0
    relabelled, _, _ = segmentation.relabel_sequential(labels)
    return relabelled.astype(np.int32)


@dataclass(frozen=True)
class SegmentationScores:
    """How two label images agree (``pred`` against ``true``)."""

    true: int
    pred: int
    count_error: float
    """``|pred - true| / true`` (NaN when the truth has no object)."""
    dice: float
    """Dice coefficient of the two foregrounds."""
    f1: float
    """F1 of the objects matched one to one at IoU >= the threshold."""
    precision: float
    recall: float
    mean_iou: float
    """Mean IoU of the matched pairs (NaN when none)."""

    def as_row(self, prefix: str = "nuclei_") -> dict[str, float]:
        """The scores as evaluation columns (``nuclei_true``, ``nuclei_f1``, ...)."""
        return {f"{prefix}{k}": float(v) for k, v in asdict(self).items()}


def _iou_matrix(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """IoU of every (true object, predicted object) pair, ``(n_true, n_pred)``, from one
    contingency table."""
    n_t, n_p = int(true.max()), int(pred.max())
    joint = np.bincount(
        true.ravel().astype(np.int64) * (n_p + 1) + pred.ravel(), minlength=(n_t + 1) * (n_p + 1)
    ).reshape(n_t + 1, n_p + 1)
    inter = joint[1:, 1:].astype(np.float64)
    area_t, area_p = joint[1:, :].sum(axis=1), joint[:, 1:].sum(axis=0)
    union = area_t[:, None] + area_p[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def match_objects(pred: np.ndarray, true: np.ndarray, iou: float = 0.5) -> SegmentationScores:
    """Compare two label images: counts, Dice of the foregrounds, F1 of objects matched at ``iou``.

    Examples
    --------
    >>> a = np.zeros((8, 8), int); a[1:4, 1:4] = 1; a[5:8, 5:8] = 2
    >>> s = match_objects(a, a)
    >>> (s.f1, s.dice, s.count_error)
    (1.0, 1.0, 0.0)
    """
    _, optimize, _, segmentation = _imports()
    if pred.shape != true.shape:
        raise InputError(
            f"Expected label images of one shape. Got {pred.shape} and {true.shape} instead."
        )
    pred = segmentation.relabel_sequential(np.asarray(pred, dtype=np.int64))[0]
    true = segmentation.relabel_sequential(np.asarray(true, dtype=np.int64))[0]
    n_t, n_p = int(true.max()), int(pred.max())
    fg_t, fg_p = true > 0, pred > 0
    total = int(fg_t.sum() + fg_p.sum())
    dice = 2.0 * float((fg_t & fg_p).sum()) / total if total else 1.0
    matched, ious = 0, np.zeros(0)
    if n_t and n_p:
        m = _iou_matrix(pred, true)
        rows, cols = optimize.linear_sum_assignment(-m)
        ious = m[rows, cols]
        ious = ious[ious >= iou]
        matched = int(ious.size)
    precision = matched / n_p if n_p else (1.0 if not n_t else 0.0)
    recall = matched / n_t if n_t else (1.0 if not n_p else 0.0)
    f1 = 2.0 * matched / (n_t + n_p) if n_t + n_p else 1.0
    return SegmentationScores(
        true=n_t,
        pred=n_p,
        count_error=abs(n_p - n_t) / n_t if n_t else math.nan,
        dice=dice,
        f1=f1,
        precision=precision,
        recall=recall,
        mean_iou=float(ious.mean()) if ious.size else math.nan,
    )


def nuclei_scores(
    pred: np.ndarray, true: np.ndarray, settings: SegmentSettings | None = None
) -> dict[str, float]:
    """Both images segmented by :func:`segment_nuclei`, compared by :func:`match_objects`: the
    evaluation columns."""
    return match_objects(segment_nuclei(pred, settings), segment_nuclei(true, settings)).as_row()
