"""The sample-data contribution: a synthetic plate (``File > Open Sample > omeloc``)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from omeloc.napari._plate import PLATE_KEY

__all__ = ["synthetic_plate"]


def synthetic_plate(folder: str | Path | None = None) -> list[tuple[Any, dict[str, Any], str]]:
    """Write a synthetic 2 x 3-well plate (:func:`omeloc.make_plate`) and return its layers.

    The plate is written into ``folder`` (default: a new temporary folder) and read back with
    napari-ome-zarr, as opening it would; each layer's metadata names the plate, so the
    predict, train and evaluate widgets find it.
    """
    from napari_ome_zarr import napari_get_reader

    from omeloc.data.synthetic import make_plate

    root = Path(folder) if folder is not None else Path(tempfile.mkdtemp(prefix="omeloc-sample-"))
    plate = str(make_plate(root / "synthetic.zarr", rows=2, cols=3, fields=1, size=256))
    layers = []
    for data, meta, kind in napari_get_reader(plate)(plate):
        meta = dict(meta, metadata={**meta.get("metadata", {}), PLATE_KEY: plate})
        layers.append((data, meta, kind))
    return layers
