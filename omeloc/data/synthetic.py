"""Synthetic HCS plates with known protein relationships (``omeloc synth``).

Every field is drawn by :func:`omeloc.data.synthetic_cells.simulate_field` (see that module for
what each channel shows).  Ground truth, by construction:

- ``actin -> WAVE2``: related (WAVE2 sits in the outermost 1.5 px of the lamellipodia,
  which actin shows as a bright ruffled band at the edge);
- ``actin -> IRSp53``: related (lamellipodial edge, cortex, tips and shafts of the
  filopodia that actin shows);
- ``actin -> vinculin``: related (focal adhesions at both ends of every stress fibre);
- ``actin -> tubulin``: unrelated (microtubules from a centrosome, independent of actin;
  only the cell footprint is shared);
- ``actin -> nuclei``: weak (actin is dimmer over the nucleus).

Perturbed wells break one relationship (default ``wave2_cytoplasmic``: WAVE2 spread
through the cytoplasm instead of at the edge) and leave every other channel identical to
what the same field would have shown unperturbed, so a screen can look for them.  The
ground truth is stored in the plate's root attributes under ``"omeloc_synthetic"``.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from omeloc.errors import InputError
from omeloc.data.synthetic_cells import (
    BACKGROUND,
    CHANNELS,
    GENERATOR_VERSION,
    OFFSET_ADU,
    PERTURBATIONS,
    READ_NOISE_ADU,
    RELATIONSHIPS,
    parse_shape,
    render_field,
    simulate_field,
)

__all__ = [
    "make_plate",
    "field_rng",
    "row_name",
    "CHANNELS",
    "PERTURBATIONS",
    "RELATIONSHIPS",
    "CHANNEL_DESCRIPTIONS",
    "render_field",
    "simulate_field",
]

logger = logging.getLogger(__name__)

ATTRS_KEY = "omeloc_synthetic"

CHANNEL_DESCRIPTIONS: dict[str, str] = {
    "actin": "F-actin: diffuse cytoplasm (dimmer over the nucleus), cortical rim, ruffled "
    "lamellipodial band at 1-2 edge sectors, filopodia, stress fibres ending in focal "
    "adhesions",
    "WAVE2": "outermost ~1.5 px of the lamellipodia (same sectors and ruffles as the actin "
    "band); faint cytoplasm",
    "IRSp53": "lamellipodial edge (~2 px), weak cortical rim, filopodium tips (bright) and "
    "shafts; faint cytoplasm",
    "vinculin": "focal adhesions: 3-6 px plaques at both ends of every stress fibre, along "
    "the fibre; faint cytoplasm",
    "tubulin": "centrosome next to the nucleus and microtubules grown as random walks "
    "independent of actin; diffuse soluble tubulin",
    "nuclei": "one textured ellipse per cell (DNA stain)",
}

# Hex colours per channel for viewers: by stain (omeloc.ngff.writer.STAIN_COLORS), then the palette.
_COLORS = {
    "actin": "FF0000",
    "WAVE2": "00FF00",
    "IRSp53": "FF00FF",
    "vinculin": "FFFF00",
    "tubulin": "00FFFF",
    "nuclei": "0000FF",
}


def row_name(i: int) -> str:
    """Plate row name of the 0-based row ``i``: A..Z, then AA, AB, ... (as on 1536 plates).

    Examples
    --------
    >>> row_name(0), row_name(25), row_name(26), row_name(31)
    ('A', 'Z', 'AA', 'AF')
    """
    name = ""
    i += 1
    while i > 0:
        i, rem = divmod(i - 1, 26)
        name = chr(ord("A") + rem) + name
    return name


def field_rng(seed: int, row: int, column: int, field: int) -> np.random.Generator:
    """The random generator of one field: a function of the seed and its position only.

    Fields are therefore independent of the order they are rendered in, and of the plate's
    size (field B/2/0 is the same in a 2×3 and in a 8×12 plate with the same seed).
    """
    return np.random.default_rng([int(seed), int(row), int(column), int(field), 0x5EED])


def _parse_wells(
    wells: Iterable[str | tuple[str, str]], rows: Sequence[str], cols: Sequence[str]
) -> set[tuple[str, str]]:
    out = set()
    for w in wells:
        if isinstance(w, str):
            m = re.fullmatch(r"\s*([A-Za-z]+)\s*/?\s*0*(\d+)\s*", w)
            if m is None:
                raise InputError(f"Expected a well like 'B2' or 'B/2'. Got {w!r} instead.")
            r, c = m.group(1).upper(), str(int(m.group(2)))
        else:
            r, c = (str(v) for v in w)
        if r not in rows or c not in cols:
            raise InputError(
                f"Expected perturbed wells inside the plate (rows {rows[0]}-{rows[-1]}, "
                f"columns {cols[0]}-{cols[-1]}). Got {w!r} instead."
            )
        out.add((r, c))
    return out


def _positive(name: str, value: int) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise InputError(f"Expected {name} to be a positive integer. Got {value!r} instead.")
    return int(value)


def _field_stack(
    shape: tuple[int, int],
    rng_args: tuple[int, int, int, int],
    perturbation: str | None,
    channel_idx: tuple[int, ...],
) -> np.ndarray:
    images = render_field(shape, field_rng(*rng_args), perturbation=perturbation)
    return np.stack([images[CHANNELS[i]] for i in channel_idx])


@dataclass(frozen=True)
class _PlateSpec:
    """The checked settings of one synthetic plate (see :func:`make_plate`)."""

    seed: int
    shape: tuple[int, int]
    row_names: list[str]
    col_names: list[str]
    fields: int
    chunks: tuple[int, int]
    levels: int
    channels: tuple[str, ...]
    perturbation: str
    perturbed: set[tuple[str, str]]

    @classmethod
    def check(
        cls,
        *,
        rows: int,
        cols: int,
        fields: int,
        size: int | tuple[int, int],
        seed: int,
        chunks: tuple[int, int] | None,
        levels: int,
        perturbed_wells: Iterable[str | tuple[str, str]],
        perturbation: str,
        channels: Sequence[str],
    ) -> "_PlateSpec":
        """Check every argument of :func:`make_plate` (in its order) before anything is written."""
        rows, cols = _positive("rows", rows), _positive("cols", cols)
        fields, levels = _positive("fields", fields), _positive("levels", levels)
        shape = parse_shape(size)
        if perturbation not in PERTURBATIONS:
            raise InputError(
                f"Expected a perturbation among {sorted(PERTURBATIONS)}. Got {perturbation!r} "
                "instead."
            )
        channels = tuple(channels)
        unknown = [c for c in channels if c not in CHANNELS]
        if unknown or not channels or len(set(channels)) != len(channels):
            raise InputError(
                f"Expected distinct channel names among {list(CHANNELS)}. Got {list(channels)} "
                "instead."
            )
        chunks = tuple(int(c) for c in (shape if chunks is None else chunks))  # type: ignore[assignment]
        if len(chunks) != 2 or min(chunks) < 1:
            raise InputError(
                f"Expected chunks (y, x) of positive integers. Got {chunks!r} instead."
            )
        row_names = [row_name(i) for i in range(rows)]
        col_names = [str(j + 1) for j in range(cols)]
        perturbed = _parse_wells(perturbed_wells, row_names, col_names)
        return cls(
            int(seed),
            shape,
            row_names,
            col_names,
            fields,
            chunks,
            levels,
            channels,  # type: ignore[arg-type]
            perturbation,
            perturbed,
        )

    def loaders(self) -> dict[tuple[str, str, str], Callable[[], np.ndarray]]:
        """``(row, column, field)`` → a function that renders that field's ``c, y, x`` stack."""
        channel_idx = tuple(CHANNELS.index(c) for c in self.channels)
        images = {}
        for i, r in enumerate(self.row_names):
            for j, c in enumerate(self.col_names):
                pert = self.perturbation if (r, c) in self.perturbed else None
                for f in range(self.fields):
                    images[(r, c, str(f))] = functools.partial(
                        _field_stack, self.shape, (self.seed, i, j, f), pert, channel_idx
                    )
        return images

    def ground_truth(self) -> dict[str, Any]:
        """What the plate's root attributes record under :data:`ATTRS_KEY`."""
        perturbed, channels = self.perturbed, self.channels
        return {
            "generator": "omeloc.data.synthetic",
            "generator_version": GENERATOR_VERSION,
            "seed": self.seed,
            "field_size": list(self.shape),
            "channels": {c: CHANNEL_DESCRIPTIONS[c] for c in channels},
            "relationships": {
                k: v for k, v in RELATIONSHIPS.items() if k.split("->")[1] in channels
            },
            "perturbation": self.perturbation if perturbed else None,
            "perturbation_effect": PERTURBATIONS[self.perturbation] if perturbed else None,
            "perturbed_wells": sorted(f"{r}/{c}" for r, c in perturbed),
            "noise": {
                "model": "Poisson(signal + background) + offset + Gaussian read noise, uint16",
                "offset_adu": OFFSET_ADU,
                "read_noise_adu": READ_NOISE_ADU,
                "background_photoelectrons": {c: BACKGROUND[c] for c in channels},
            },
            "field_rng": "numpy.random.default_rng([seed, row_index, column_index, field_index, "
            "0x5EED])",
        }


def make_plate(
    path: str | Path,
    *,
    rows: int = 2,
    cols: int = 3,
    fields: int = 2,
    size: int | tuple[int, int] = 256,
    seed: int = 0,
    ngff: str = "0.5",
    chunks: tuple[int, int] | None = (256, 256),
    levels: int = 3,
    perturbed_wells: Iterable[str | tuple[str, str]] = (),
    perturbation: str = "wave2_cytoplasmic",
    channels: Sequence[str] = CHANNELS,
    overwrite: bool = False,
    progress: Callable[[int], None] | None = None,
    pixel_size: float | Sequence[float] | None = None,
) -> Path:
    """Write a synthetic OME-Zarr HCS plate whose protein relationships are known.

    Fields are drawn by :func:`omeloc.data.synthetic_cells.simulate_field`; the ground truth
    (``relationships`` such as ``{"actin->tubulin": "unrelated", ...}``, perturbed wells, seed,
    noise model) goes into the plate root attributes under ``"omeloc_synthetic"``.

    Parameters
    ----------
    path
        The plate to create (a directory, ``.zarr`` by convention).
    rows, cols, fields
        Plate layout (rows ``A, B, ...``, columns ``1, 2, ...``) and fields per well
        (``0, 1, ...``).
    size
        Field size in pixels: an int (square) or ``(y, x)``; cells have a radius of about 42 px.
    seed
        Same seed → identical pixels; each field has its own generator (:func:`field_rng`).
    ngff
        ``"0.4"`` (Zarr v2) or ``"0.5"`` (Zarr v3).
    chunks, levels
        Chunk size along y and x (``None``: one chunk per plane; always 1 along c); pyramid
        levels (2× mean downsampling).
    perturbed_wells, perturbation
        Wells (``"B2"``, ``"B/2"`` or ``("B", "2")``) where a key of :data:`PERTURBATIONS` applies.
    channels
        Which channels to write, in which order (names from :data:`CHANNELS`).
    overwrite
        Replace an existing ``path``.
    progress
        Called with the number of fields written so far.
    pixel_size
        Micrometers per pixel written into the multiscales (``y = x``, ``(y, x)`` or
        ``(z, y, x)``); default none (scale 1, no unit).

    Returns
    -------
    pathlib.Path
        The plate written.

    Examples
    --------
    >>> import os, tempfile
    >>> make_plate(os.path.join(tempfile.mkdtemp(), "s.zarr"), rows=1, cols=2, size=64, perturbed_wells=["A2"]).name
    's.zarr'
    """  # noqa: E501
    from omeloc.ngff.writer import write_plate  # imports zarr; keep module import light

    spec = _PlateSpec.check(
        rows=rows,
        cols=cols,
        fields=fields,
        size=size,
        seed=seed,
        chunks=chunks,
        levels=levels,
        perturbed_wells=perturbed_wells,
        perturbation=perturbation,
        channels=channels,
    )
    truth = spec.ground_truth()
    out = write_plate(
        path,
        spec.loaders(),
        channel_names=spec.channels,
        ngff_version=ngff,
        axes="cyx",
        chunks=spec.chunks,
        levels=spec.levels,
        colors=[_COLORS[c] for c in spec.channels],
        plate_name=Path(path).stem,
        extra_attrs={ATTRS_KEY: truth},
        overwrite=overwrite,
        progress=progress,
        rows=spec.row_names,
        columns=spec.col_names,
        pixel_size=pixel_size,
    )
    logger.info(
        "synthetic plate %s: %dx%d wells, %d fields, perturbed %s",
        out,
        rows,
        cols,
        fields,
        truth["perturbed_wells"],
    )
    return out
