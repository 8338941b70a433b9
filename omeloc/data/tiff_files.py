"""What one TIFF holds (from its header) and its pixels as ``(T, C, Z, Y, X)``.

A TIFF holds one plane, or several channels, planes or time points when its axes say so:
OME-TIFF and ImageJ hyperstacks name them (``CYX``, ``ZCYX``, ``TZCYX``); RGB samples (``S``)
count as channels.  Planes of unknown meaning (tifffile's ``I``/``Q`` axes) are refused
unless the caller names the axes (``file_axes="CYX"``).  Compressed TIFFs (LZW, deflate,
zstd, JPEG, ...) are decoded by tifffile, which needs ``imagecodecs`` for most codecs.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from omeloc.errors import InputError

__all__ = ["FileInfo", "check_decodable", "file_info", "read_planes"]

#: tifffile's axis letters → omeloc's (``S``: RGB samples, read as channels).
_AXIS_OF = {"T": "t", "C": "c", "S": "c", "Z": "z", "Y": "y", "X": "x"}
_SIZE_NAMES = {"t": "time", "c": "channel", "z": "plane"}


@dataclass(frozen=True)
class FileInfo:
    """One TIFF's first series, from its header: plane shape, dtype, axes, sizes and channel
    names."""

    yx: tuple[int, int]
    dtype: np.dtype
    axes: str
    shape: tuple[int, ...]
    channel_names: tuple[str, ...]
    compression: int
    pixel_size: tuple[float, float, float] | None = None
    """``(z, y, x)`` micrometers per pixel from the OME-XML or the resolution tags (z 1.0 when
    not said)."""

    @property
    def sizes(self) -> dict[str, int]:
        """``{"time": n, "channel": n, "plane": n}`` inside the file (1 for an axis it lacks)."""
        return {
            name: (self.shape[self.axes.index(a)] if a in self.axes else 1)
            for a, name in _SIZE_NAMES.items()
        }


def _file_axes(
    series_axes: str, shape: tuple[int, ...], name: str, file_axes: str | None
) -> tuple[str, tuple[int, ...]]:
    """The series' axes as omeloc's letters and the shape along them, axes of size 1 (but y, x)
    dropped."""
    given = (file_axes or series_axes).upper()
    if len(given) != len(shape):
        raise InputError(
            f"{name} has shape {shape}, which the axes {given!r} do not fit. Fix --file-axes."
        )
    axes, kept = "", []
    for letter, n in zip(given, shape):
        if n == 1 and letter not in "YX":
            continue
        if letter not in _AXIS_OF:
            raise InputError(
                f"{name} holds {n} planes of unknown meaning (tifffile axes {series_axes!r}). Name "
                f"its axes with --file-axes (e.g. CYX for channels), or save one plane per file."
            )
        axes += _AXIS_OF[letter]
        kept.append(n)
    if not axes.endswith("yx") or len(set(axes)) != len(axes):
        raise InputError(
            f"{name} has axes {given!r}; import-tiff needs each of T, C, Z at most once, then Y, X."
        )
    return axes, tuple(kept)


def _ome_channel_names(tf: tifffile.TiffFile) -> list[str]:
    """Channel names of the first OME image (empty when the file has no OME-XML or no names)."""
    if not tf.is_ome or not tf.ome_metadata:
        return []
    try:
        root = ET.fromstring(tf.ome_metadata)
    except ET.ParseError:
        return []
    image = next((el for el in root if el.tag.endswith("Image")), None)
    pixels = (
        next((el for el in image if el.tag.endswith("Pixels")), None) if image is not None else None
    )
    if pixels is None:
        return []
    return [el.get("Name") or "" for el in pixels if el.tag.endswith("Channel")]


_MICROMETERS = {
    "µm": 1.0,
    "um": 1.0,
    "micron": 1.0,
    "micrometer": 1.0,
    "nm": 1e-3,
    "nanometer": 1e-3,
    "mm": 1e3,
    "millimeter": 1e3,
    "cm": 1e4,
    "centimeter": 1e4,
}
#: larger pixel sizes in the resolution tags are placeholders (72 dpi is 353 um), ignored
_MAX_TAG_UM = 100.0
#: micrometers per TIFF ResolutionUnit (2 inch, 3 centimeter; 1 none: no physical size)
_PER_RESOLUTION_UNIT = {2: 25400.0, 3: 10000.0}


def _ome_pixel_size(tf: tifffile.TiffFile) -> tuple[float, float, float] | None:
    """``(z, y, x)`` micrometers from the first OME image's ``PhysicalSize*`` (None without
    them)."""
    if not tf.is_ome or not tf.ome_metadata:
        return None
    try:
        root = ET.fromstring(tf.ome_metadata)
    except ET.ParseError:
        return None
    image = next((el for el in root if el.tag.endswith("Image")), None)
    pixels = (
        next((el for el in image if el.tag.endswith("Pixels")), None) if image is not None else None
    )
    if pixels is None or pixels.get("PhysicalSizeX") is None:
        return None
    sizes = []
    for axis in "ZYX":
        value, unit = pixels.get(f"PhysicalSize{axis}"), pixels.get(f"PhysicalSize{axis}Unit", "µm")
        if value is None:
            value = pixels.get("PhysicalSizeX") if axis == "Y" else "1"
            unit = pixels.get("PhysicalSizeXUnit", "µm") if axis == "Y" else "µm"
        sizes.append(_positive_um(value, unit))
    return None if None in sizes else tuple(sizes)  # type: ignore[return-value]


def _positive_um(value: Any, unit: Any) -> float | None:
    try:
        v = float(value) * _MICROMETERS[str(unit)]
    except (KeyError, TypeError, ValueError):
        return None
    return v if np.isfinite(v) and v > 0 else None


def _tag_pixel_size(tf: tifffile.TiffFile) -> tuple[float, float, float] | None:
    """``(z, y, x)`` micrometers from the resolution tags (inch or cm units), or ImageJ's
    ``unit``/``spacing``."""
    page = tf.pages[0]
    tags = page.tags
    res_x, res_y, unit = (
        tags.get("XResolution"),
        tags.get("YResolution"),
        tags.get("ResolutionUnit"),
    )
    if res_x is None or res_y is None:
        return None
    per = _PER_RESOLUTION_UNIT.get(int(unit.value) if unit is not None else 2)
    z = 1.0
    ij = tf.imagej_metadata or {}
    if per is None and str(ij.get("unit", "")).lower() in ("micron", "um", "µm", "micrometer"):
        per = 1.0
        z = _positive_um(ij.get("spacing", 1.0), "um") or 1.0
    if per is None:
        return None
    sizes = []
    for tag in (res_y, res_x):
        num, den = tag.value if isinstance(tag.value, tuple) else (tag.value, 1)
        sizes.append(per * float(den) / float(num) if num else None)
    # 1 px per inch/cm, or a screen's 72/96 dpi (350/265 um): a writer's placeholder, not a
    # microscope's size
    if None in sizes or any(v > _MAX_TAG_UM for v in sizes):
        return None
    return (z, *sizes)  # type: ignore[return-value]


def file_info(path: Path, file_axes: str | None = None) -> FileInfo:
    """Read ``path``'s header (no pixels): an :class:`InputError` when it is not a readable TIFF."""
    try:
        with tifffile.TiffFile(path) as tf:
            series = tf.series[0]
            raw_shape, dtype = tuple(int(n) for n in series.shape), np.dtype(series.dtype)
            series_axes = series.axes
            names = _ome_channel_names(tf)
            compression = int(tf.pages[0].compression)
            pixel_size = _ome_pixel_size(tf) or _tag_pixel_size(tf)
    except (tifffile.TiffFileError, OSError, IndexError) as err:
        raise InputError(
            f"{path.name} is not a readable TIFF ({err}). Replace or remove it."
        ) from err
    axes, shape = _file_axes(series_axes, raw_shape, path.name, file_axes)
    n_c = shape[axes.index("c")] if "c" in axes else 1
    if len([n for n in names if n]) != n_c or len(set(names)) != n_c:
        names = [f"c{i}" for i in range(n_c)]
    return FileInfo(
        yx=(shape[-2], shape[-1]),
        dtype=dtype,
        axes=axes,
        shape=shape,
        channel_names=tuple(names),
        compression=compression,
        pixel_size=pixel_size,
    )


def read_planes(path: Path, info: FileInfo) -> np.ndarray:
    """The pixels of ``path`` as ``(T, C, Z, Y, X)`` (axes the file lacks have size 1)."""
    data = np.asarray(tifffile.imread(path)).reshape(info.shape)
    present = [a for a in "tczyx" if a in info.axes]
    data = np.transpose(data, [info.axes.index(a) for a in present])
    full = [info.shape[info.axes.index(a)] if a in info.axes else 1 for a in "tczyx"]
    return data.reshape(full)


def _compression_name(code: int) -> str:
    try:
        return tifffile.COMPRESSION(code).name
    except ValueError:
        return f"compression {code}"


def check_decodable(paths: Iterable[tuple[Path, FileInfo]]) -> None:
    """Decode one file per compression scheme, so a missing codec is found before anything is
    written.

    Raises
    ------
    InputError
        A compression tifffile cannot decode here (``imagecodecs`` missing or too old).
    """
    tried: set[int] = set()
    for path, info in paths:
        if info.compression in tried or info.compression == 1:  # 1: uncompressed
            continue
        tried.add(info.compression)
        try:
            tifffile.imread(path)
        except (ValueError, ImportError, RuntimeError) as err:
            raise InputError(
                f"{path.name} is {_compression_name(info.compression)}-compressed and cannot be "
                f"decoded here ({err}). Install imagecodecs (pip install imagecodecs), which "
                "tifffile uses for LZW, zstd and others."
            ) from err
