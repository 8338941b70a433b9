"""The plate as the viewer shows it (no Qt here): which plate a layer shows, new channels as
layer data, where a well lies in napari-ome-zarr's plate grid.

napari-ome-zarr shows an HCS plate as one grid of the first field of every well (one layer per
channel, named after ``omero.channels[].label``, coloured and windowed from ``omero``, scaled
from ``coordinateTransformations``).  New channels are read back through the same reader, so
they appear exactly as the real ones do: same grid, colour, contrast limits and scale.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["PLATE_KEY", "channel_layers", "plate_of_layers", "well_box"]

#: layer metadata key naming the plate a layer shows (set on the sample data's layers)
PLATE_KEY = "omeloc_plate"

LayerData = tuple[Any, dict[str, Any], str]


def plate_of_layer(layer: Any) -> str | None:
    """The plate (path or URL) an image layer was read from, or ``None``."""
    given = (getattr(layer, "metadata", None) or {}).get(PLATE_KEY)
    if given:
        return str(given)
    source = getattr(getattr(layer, "source", None), "path", None)
    if not source:
        return None
    source = str(source)
    if "://" in source or any((Path(source) / doc).is_file() for doc in ("zarr.json", ".zattrs")):
        return source
    return None


def plate_of_layers(layers: Iterable[Any], selected: Any = None) -> str | None:
    """The plate of the selected layer, else of the first layer that shows one, else ``None``."""
    if selected is not None and plate_of_layer(selected):
        return plate_of_layer(selected)
    for layer in layers:
        found = plate_of_layer(layer)
        if found:
            return found
    return None


def channel_layers(
    plate: str, labels: Sequence[str], channel_names: Sequence[str]
) -> list[LayerData]:
    """Layer data for the channels ``labels`` of ``plate``, as napari-ome-zarr reads them.

    Parameters
    ----------
    plate
        Plate (or image) path.
    labels
        The channels wanted (e.g. the virtual channel and its uncertainty); the layers are named
        as napari-ome-zarr names the real ones (``"0: WAVE2 (virtual)"``: image name, label).
    channel_names
        All channel labels of the plate, in order (:attr:`omeloc.Plate.channel_names`).
    """
    from napari_ome_zarr import napari_get_reader

    reader = napari_get_reader(str(plate))
    if reader is None:
        return []
    out: list[LayerData] = []
    for data, meta, kind in reader(str(plate)):
        if kind != "image" or meta.get("channel_axis") is None:
            continue
        axis = meta["channel_axis"]
        shared = {
            k: v
            for k, v in meta.items()
            if k not in ("channel_axis", "name", "colormap", "contrast_limits", "visible")
        }
        for label in labels:
            i = list(channel_names).index(label)
            kwargs = dict(shared, name=label, metadata={PLATE_KEY: str(plate)})
            for key in ("name", "colormap", "contrast_limits", "visible"):
                values = meta.get(key)
                if isinstance(values, list) and i < len(values):
                    kwargs[key] = values[i]
            levels = [level[(slice(None),) * axis + (i,)] for level in data]
            out.append((levels if len(levels) > 1 else levels[0], kwargs, "image"))
        break
    return out


def well_box(
    rows: Sequence[str], columns: Sequence[str], well: str, grid_shape: Sequence[int]
) -> tuple[float, float, float, float]:
    """``(y0, x0, y1, x1)`` of ``well`` (``"B/3"`` or ``"B3"``) in the data coordinates of the
    plate grid (the last two axes of ``grid_shape``, the level-0 shape of the grid layer)."""
    from omeloc.errors import InputError

    name = well.replace("/", "")
    for r, row in enumerate(rows):
        for c, col in enumerate(columns):
            if f"{row}{col}" == name:
                h, w = grid_shape[-2] / len(rows), grid_shape[-1] / len(columns)
                return r * h, c * w, (r + 1) * h, (c + 1) * w
    raise InputError(
        f"Expected a well of the plate (rows {', '.join(rows)}; columns {', '.join(columns)}). "
        f"Got {well!r} instead."
    )
