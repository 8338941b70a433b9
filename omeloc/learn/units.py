"""Physical pixel sizes: what a model was trained at, and whether a plate matches it.

A plate's pixel size is its multiscales ``coordinateTransformations`` ``scale`` along y, x (and
z) at a level, in the unit of its ``axes`` (converted to micrometers).  A plate whose y or x
axis has no unit has no physical pixel size: it is taken as 1 per pixel, with a warning.
Checkpoints record the pixel size of their training level (:attr:`Checkpoint.pixel_size`);
prediction compares it with the plate's level 0 (:func:`check_pixel_size`): more than
:data:`TOLERANCE` apart is refused unless the input is resampled (``rescale``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from omeloc.errors import CheckpointError, InputError

__all__ = ["TOLERANCE", "PixelSize", "check_pixel_size", "pixel_size_of"]

logger = logging.getLogger(__name__)

#: relative difference of pixel sizes above which a model is not applied without resampling
TOLERANCE = 0.10

_MICROMETERS = {
    "micrometer": 1.0,
    "nanometer": 1e-3,
    "millimeter": 1e3,
    "centimeter": 1e4,
    "meter": 1e6,
    "angstrom": 1e-4,
    "picometer": 1e-6,
}


@dataclass(frozen=True)
class PixelSize:
    """Pixel size along y, x and z (micrometers when ``known``, else plain scale units)."""

    y: float
    x: float
    z: float = 1.0
    known: bool = True
    """False when the plate's axes carry no unit (the sizes are then the bare scale, 1 at level
    0)."""

    def describe(self) -> str:
        """``"0.65 x 0.65 um"``, or ``"unknown (taken as 1 x 1)"``."""
        yx = f"{self.y:.4g} x {self.x:.4g}"
        return f"{yx} um" if self.known else f"unknown (taken as {yx})"

    def zoom(self, other: PixelSize) -> tuple[float, float]:
        """How much an image at ``other``'s pixel size is resized to reach this one's (y, x)."""
        return other.y / self.y, other.x / self.x

    def differs(self, other: PixelSize, tolerance: float = TOLERANCE) -> bool:
        """Whether y or x differ by more than ``tolerance`` (relative), or one is known and the
        other not."""
        if self.known != other.known:
            return True
        return any(
            abs(a - b) > tolerance * max(a, b) for a, b in ((self.y, other.y), (self.x, other.x))
        )

    def to_json(self) -> dict[str, Any]:
        return {"y": self.y, "x": self.x, "z": self.z, "unit": "micrometer" if self.known else None}

    @classmethod
    def from_json(cls, d: Any, where: str = "The checkpoint") -> PixelSize | None:
        """The record of :meth:`to_json` (``None`` stays ``None``: a checkpoint from before pixel
        sizes).

        Raises
        ------
        CheckpointError
            Not positive finite numbers, or an unknown unit.
        """
        if d is None:
            return None
        try:
            values = [float(d[k]) for k in ("y", "x")] + [float(d.get("z", 1.0))]
            unit = d.get("unit")
        except (TypeError, ValueError, KeyError, AttributeError):
            values, unit = [], None
        if (
            len(values) != 3
            or not all(math.isfinite(v) and v > 0 for v in values)
            or unit not in (None, "micrometer")
        ):
            raise CheckpointError(
                f"{where} has pixel_size {repr(d)[:80]}; expected positive y, x, z and unit "
                f"'micrometer' or null. Retrain, or restore checkpoint.json."
            )
        return cls(*values, known=unit == "micrometer")


def _unit_factor(axis: Any) -> float | None:
    unit = axis.get("unit") if isinstance(axis, Mapping) else None
    return _MICROMETERS.get(str(unit).lower()) if unit else None


def pixel_size_of(img: Any, level: int = 0) -> PixelSize:
    """The pixel size of ``img`` (an :class:`~omeloc.ngff.plate.Image`) at ``level`` from its
    metadata.

    Without a unit on its y or x axis the sizes are the bare scale (``known=False``).
    """
    scale = dict(zip(img.axes, img.scales[level] if level < len(img.scales) else ()))
    meta = (img.ome.get("multiscales") or [{}])[0].get("axes") or []
    named = {str(a.get("name", "")).lower(): a for a in meta if isinstance(a, Mapping)}
    factors = {a: _unit_factor(named.get(a)) for a in "zyx"}
    known = factors["y"] is not None and factors["x"] is not None

    def size(a: str) -> float:
        value = float(scale.get(a, 1.0))
        value = value if math.isfinite(value) and value > 0 else 1.0
        return value * (factors[a] or 1.0) if known else value

    return PixelSize(size("y"), size("x"), size("z"), known=known)


def check_pixel_size(
    trained: PixelSize | None, plate: PixelSize, where: str, *, rescale: bool
) -> tuple[tuple[float, float], list[str]]:
    """The (y, x) zoom to apply to the plate's images before the model (1, 1 when none) and the
    notes to tell.

    Raises
    ------
    InputError
        The sizes differ by more than :data:`TOLERANCE` and ``rescale`` is false.
    """
    notes = []
    if not plate.known:
        notes.append(
            f"{where} has no physical pixel size (no unit on its y/x axes): taken as 1 per pixel"
        )
    if trained is None:
        notes.append(
            "the checkpoint records no pixel size (trained before omeloc recorded them): not "
            "checked"
        )
        return (1.0, 1.0), notes
    if not trained.differs(plate):
        return (1.0, 1.0), notes
    if not rescale:
        raise InputError(
            f"The model was trained at pixel size {trained.describe()}, but {where} has "
            f"{plate.describe()} (more than {TOLERANCE:.0%} apart). Pass --rescale to resample the "
            f"images to the model's pixel size and the prediction back, or use a model trained at "
            f"this size."
        )
    zoom = trained.zoom(plate)
    notes.append(
        f"resampling {where} by {zoom[0]:.3g} x {zoom[1]:.3g} to the model's pixel size "
        f"{trained.describe()} and the prediction back"
    )
    return zoom, notes
