"""Synthetic z-stack plates whose target depends on the neighbouring planes (for 2.5D models).

:func:`make_z_plate` writes a plate with axes ``czyx`` and two channels: ``phase``, a smooth
random texture drawn independently for every plane, and ``nuclei``, at each plane the sum of the
phase texture of the planes just above and below it (the stack's first and last plane repeated
beyond its ends, as 2.5D training and prediction pad it).  A per-plane 2D model sees only its own
plane, which carries no information about its neighbours: it cannot beat chance.  A 2.5D model
with a z-window of 3 or more sees exactly what the target is made of.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from omeloc.data.synthetic_cells import gaussian_blur

__all__ = ["Z_CHANNELS", "make_z_plate", "z_field"]

#: the channels of a z plate: the source texture and the target made of its neighbouring planes
Z_CHANNELS = ("phase", "nuclei")


def z_field(rng: np.random.Generator, n_z: int, size: int, sigma: float = 1.5) -> np.ndarray:
    """One field ``(2, n_z, size, size)`` uint16: phase planes, and nuclei = phase(z - 1) +
    phase(z + 1)."""
    phase = np.stack([gaussian_blur(rng.normal(0.0, 1.0, (size, size)), sigma) for _ in range(n_z)])
    phase = phase / phase.std()
    idx = np.arange(n_z)
    below, above = phase[np.clip(idx - 1, 0, n_z - 1)], phase[np.clip(idx + 1, 0, n_z - 1)]
    target = np.maximum(below + above, 0.0)
    field = np.stack([2000.0 + 400.0 * phase, 200.0 + 800.0 * target])
    return np.clip(np.round(field), 0, 65535).astype(np.uint16)


def make_z_plate(
    path: str | Path,
    *,
    rows: int = 1,
    cols: int = 2,
    fields: int = 1,
    size: int = 64,
    n_z: int = 6,
    seed: int = 0,
    chunks: tuple[int, int] = (64, 64),
    levels: int = 1,
    ngff: str = "0.5",
    pixel_size: float | Sequence[float] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a ``czyx`` plate of :data:`Z_CHANNELS` (see the module docstring); returns its path.

    Examples
    --------
    >>> import os, tempfile
    >>> p = make_z_plate(os.path.join(tempfile.mkdtemp(), "z.zarr"), cols=1, size=32, n_z=5)
    >>> import omeloc; omeloc.open_plate(p).images[0].shape
    (2, 5, 32, 32)
    """
    from omeloc.ngff.writer import write_plate

    if n_z < 2 or size < 8:
        raise ValueError(f"expected n_z >= 2 and size >= 8, got {n_z} and {size}")
    rng = np.random.default_rng(seed)
    images = {
        (chr(ord("A") + r), str(c + 1), str(f)): z_field(rng, n_z, size)
        for r in range(rows)
        for c in range(cols)
        for f in range(fields)
    }
    return write_plate(
        path,
        images,
        channel_names=list(Z_CHANNELS),
        axes="czyx",
        chunks=chunks,
        levels=levels,
        ngff_version=ngff,
        pixel_size=pixel_size,
        overwrite=overwrite,
        extra_attrs={
            "omeloc_synthetic_z": {
                "seed": seed,
                "target": "nuclei(z) = relu(phase(z-1) + phase(z+1)), ends repeated",
            }
        },
    )
