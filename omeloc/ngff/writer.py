"""Write new OME-Zarr images and HCS plates (NGFF 0.4 on Zarr v2, 0.5 on Zarr v3).

Used by ``omeloc synth`` and ``omeloc import-tiff``.  The metadata is written with
ome-zarr-py's metadata writers (``write_plate_metadata``, ``write_well_metadata``,
``write_multiscales_metadata``), whose signatures are stable across ome-zarr 0.11–0.21;
pixels are written with zarr directly so that the layout is ours to choose: one chunk per
channel plane (chunk 1 along ``c``), which is what lets :func:`omeloc.add_channel` append
channels later without touching existing chunk files.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from ome_zarr.format import FormatV04, FormatV05
from ome_zarr.writer import (
    write_multiscales_metadata,
    write_plate_metadata,
    write_well_metadata,
)

from omeloc.errors import InputError
from omeloc.ngff.format import ngff_attrs, reserved_attr_keys, set_ome_attr, store_format
from omeloc.ngff.pyramid import downsample_mean, level_shapes

__all__ = [
    "DEFAULT_COLORS",
    "STAIN_COLORS",
    "channel_colors",
    "channel_window",
    "contrasting_color",
    "stain_color",
    "write_image",
    "write_plate",
]

logger = logging.getLogger(__name__)

DEFAULT_COLORS = ("00FF00", "FF00FF", "00FFFF", "FFFF00", "FF0000", "0000FF", "FFFFFF")

#: Colours by stain name, checked before the position palette: (word prefixes of the label, colour).
#: A label matches when one of its words (split at anything but letters and digits, lower case)
#: starts with a prefix of four letters or more, or equals a shorter one.
STAIN_COLORS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("dapi", "hoechst", "nuclei", "nucleus", "nuclear", "dna", "draq5", "h2b"), "0000FF"),
    (("actin", "phalloidin", "agp", "rfp", "mcherry", "tritc"), "FF0000"),
    (("er", "endoplasmic", "calnexin", "concanavalin", "cona", "gfp", "fitc"), "00FF00"),
    (("tubulin", "microtubule", "microtubules"), "00FFFF"),
    (("mito", "mitotracker", "mitochondria", "tom20"), "FF00FF"),
    (("rna", "syto", "nucleoli", "golgi"), "FFFF00"),
    (("brightfield", "bf", "phase", "dic", "transmitted", "tl"), "FFFFFF"),
)


def stain_color(label: str) -> str | None:
    """The colour of a stain by its name (:data:`STAIN_COLORS`), or ``None`` when the name says
    none.

    Examples
    --------
    >>> stain_color("DAPI"), stain_color("F-actin"), stain_color("ER"), stain_color("WAVE2")
    ('0000FF', 'FF0000', '00FF00', None)
    """
    words = [w for w in "".join(ch if ch.isalnum() else " " for ch in str(label).lower()).split()]
    for prefixes, color in STAIN_COLORS:
        for word in words:
            if any(word == p or (len(p) >= 4 and word.startswith(p)) for p in prefixes):
                return color
    return None


def channel_colors(labels: Sequence[str]) -> list[str]:
    """One omero colour per channel: by stain name first (:func:`stain_color`), then the unused
    colours of :data:`DEFAULT_COLORS` by position.

    Examples
    --------
    >>> channel_colors(["DAPI", "ER", "actin"]), channel_colors(["a", "b"])
    (['0000FF', '00FF00', 'FF0000'], ['00FF00', 'FF00FF'])
    """
    named = [stain_color(label) for label in labels]
    free = [c for c in DEFAULT_COLORS if c not in named]
    out = []
    for color in named:
        if color is None:
            color = free.pop(0) if free else DEFAULT_COLORS[len(out) % len(DEFAULT_COLORS)]
        out.append(color)
    return out


def contrasting_color(color: str) -> str:
    """A colour that stands out beside ``color`` (its complement; magenta beside grey or white).

    Examples
    --------
    >>> contrasting_color("FF0000"), contrasting_color("FFFFFF")
    ('00FFFF', 'FF00FF')
    """
    value = int(color, 16) if len(color) == 6 else 0xFFFFFF
    r, g, b = value >> 16, (value >> 8) & 255, value & 255
    if max(r, g, b) - min(r, g, b) < 64:  # grey: its complement is grey too
        return "FF00FF"
    return f"{0xFFFFFF - value:06X}"


ArrayOrFactory = np.ndarray | Callable[[], np.ndarray]


def _format(ngff_version: str) -> FormatV04 | FormatV05:
    if ngff_version == "0.4":
        return FormatV04()
    if ngff_version == "0.5":
        return FormatV05()
    raise InputError(f"Expected NGFF version '0.4' or '0.5'. Got {ngff_version!r} instead.")


def _parse_axes(axes: str | Sequence[str]) -> tuple[str, ...]:
    axes_t = tuple(axes)
    allowed = ("t", "c", "z", "y", "x")
    if (
        len(set(axes_t)) != len(axes_t)
        or not set(axes_t) <= set(allowed)
        or not {"c", "y", "x"} <= set(axes_t)
        or axes_t[-2:] != ("y", "x")
    ):
        raise InputError(
            f"Expected axes in t,c,z,y,x order containing c, y and x, ending in y, x. "
            f"Got {''.join(axes_t)!r} instead."
        )
    order = [allowed.index(a) for a in axes_t]
    if order != sorted(order):
        raise InputError(f"Expected axes in t,c,z,y,x order. Got {''.join(axes_t)!r} instead.")
    return axes_t


def channel_window(data: np.ndarray, dtype: np.dtype) -> dict[str, float]:
    """Return an omero ``window`` for one channel's pixels.

    ``start``/``end`` are the 0.1 and 99.9 percentiles of ``data`` (what a viewer should
    map to black and white); ``min``/``max`` are the dtype's range (float: the data range).
    """
    sample = np.asarray(data).ravel()
    if sample.size > 1_000_000:
        sample = sample[:: sample.size // 1_000_000]
    finite = sample[np.isfinite(sample)] if sample.dtype.kind == "f" else sample
    if finite.size == 0:
        lo = hi = 0.0
    else:
        lo, hi = (float(v) for v in np.percentile(finite, [0.1, 99.9]))
    if np.dtype(dtype).kind in "iu":
        info = np.iinfo(dtype)
        dmin, dmax = float(info.min), float(info.max)
    else:
        dmin = float(finite.min()) if finite.size else 0.0
        dmax = float(finite.max()) if finite.size else 1.0
    if hi <= lo:
        hi = lo + 1.0
    return {"min": dmin, "max": dmax, "start": lo, "end": hi}


def _create_array(
    group: zarr.Group,
    name: str,
    shape: tuple[int, ...],
    chunks: tuple[int, ...],
    dtype,
    zarr_format: int,
    axes: Sequence[str],
) -> zarr.Array:
    kwargs = store_format(zarr_format).create_array_kwargs(axes)  # NGFF 0.5: dimension names
    return group.create_array(name, shape=shape, chunks=chunks, dtype=dtype, fill_value=0, **kwargs)


def _write_multiscale(
    group: zarr.Group,
    data: np.ndarray,
    *,
    axes: tuple[str, ...],
    channel_names: Sequence[str],
    fmt: FormatV04 | FormatV05,
    chunks: tuple[int, int],
    levels: int,
    colors: Sequence[str] | None,
    name: str,
    pixel_size: Sequence[float] | None = None,
) -> None:
    if data.ndim != len(axes):
        raise InputError(
            f"Expected a {len(axes)}-d array for axes {''.join(axes)!r}. Got shape {data.shape} "
            "instead."
        )
    c_axis = axes.index("c")
    if data.shape[c_axis] != len(channel_names):
        raise InputError(
            f"Expected {data.shape[c_axis]} channel names for {data.shape[c_axis]} channels. "
            f"Got {len(channel_names)} instead."
        )
    shapes = level_shapes(data.shape, axes, levels)
    chunk_shape = tuple(
        1 if a in ("t", "c", "z") else min(chunks[0] if a == "y" else chunks[1], n)
        for a, n in zip(axes, data.shape)
    )
    datasets = []
    level = data
    for i, shape in enumerate(shapes):
        if i > 0:
            level = downsample_mean(level, axes, shape)
        arr = _create_array(
            group,
            str(i),
            shape,
            tuple(min(c, n) for c, n in zip(chunk_shape, shape)),
            data.dtype,
            fmt.zarr_format,
            axes,
        )
        arr[...] = level
        scale = [float(2**i) if a in ("y", "x") else 1.0 for a in axes]
        if pixel_size is not None:  # (z, y, x) in micrometers
            size = dict(zip("zyx", pixel_size))
            scale = [s * float(size[a]) if a in size else s for a, s in zip(axes, scale)]
        datasets.append(
            {"path": str(i), "coordinateTransformations": [{"type": "scale", "scale": scale}]}
        )
    _write_multiscales(
        group, datasets, fmt, _unit_axes(axes) if pixel_size is not None else axes, name
    )
    palette = list(colors) if colors else channel_colors([str(n) for n in channel_names])
    channels = []
    for k, label in enumerate(channel_names):
        plane = np.take(data, k, axis=c_axis)
        channels.append(
            {
                "label": str(label),
                "color": palette[k % len(palette)],
                "window": channel_window(plane, data.dtype),
                "active": True,
            }
        )
    # rdefs.defaultT/defaultZ: iohub's model requires them; the middle plane is what viewers show
    # first
    n_z = data.shape[axes.index("z")] if "z" in axes else 1
    rdefs = {"defaultT": 0, "defaultZ": n_z // 2, "model": "color"}
    omero = {"name": name, "version": fmt.version, "channels": channels, "rdefs": rdefs}
    set_ome_attr(group, "omero", omero, fmt.zarr_format)


def _unit_axes(axes: Sequence[str]) -> list[dict[str, str]]:
    """NGFF axes with their type, the space axes in micrometers."""
    kinds = {"t": "time", "c": "channel", "z": "space", "y": "space", "x": "space"}
    return [
        {"name": a, "type": kinds[a], **({"unit": "micrometer"} if kinds[a] == "space" else {})}
        for a in axes
    ]


def pixel_size_zyx(pixel_size: float | Sequence[float] | None) -> tuple[float, float, float] | None:
    """``0.65`` → ``(1.0, 0.65, 0.65)``; ``(y, x)`` → ``(1.0, y, x)``; ``(z, y, x)`` as given
    (micrometers).

    Raises
    ------
    InputError
        Not one, two or three positive finite numbers.
    """
    if pixel_size is None:
        return None
    values = [pixel_size] if isinstance(pixel_size, (int, float)) else list(pixel_size)
    try:
        floats = [float(v) for v in values]
    except (TypeError, ValueError):
        floats = []
    if not 1 <= len(floats) <= 3 or not all(np.isfinite(v) and v > 0 for v in floats):
        raise InputError(
            f"Expected a pixel size in micrometers: one positive number (y = x), or y,x, or z,y,x. "
            f"Got {pixel_size!r} instead."
        )
    if len(floats) == 1:
        floats = floats * 2
    return tuple([1.0] * (3 - len(floats)) + floats)  # type: ignore[return-value]


def _write_multiscales(
    group: zarr.Group,
    datasets: list[dict[str, Any]],
    fmt: FormatV04 | FormatV05,
    axes: Sequence[Any],
    name: str,
) -> None:
    """The ``multiscales`` metadata, with the downsampling ``type`` and ``metadata`` strict
    schemas ask for."""
    write_multiscales_metadata(
        group,
        datasets,
        fmt=fmt,
        axes=list(axes),
        name=name,
        metadata={
            "description": "2x2 mean in y and x per level",
            "method": "omeloc.ngff.pyramid.downsample_mean",
        },
    )
    multiscales = [dict(m) for m in ngff_attrs(dict(group.attrs), fmt.zarr_format)["multiscales"]]
    multiscales[0]["type"] = "mean"
    set_ome_attr(group, "multiscales", multiscales, fmt.zarr_format)


def _prepare_target(path: str | Path, overwrite: bool) -> Path:
    path = Path(path)
    if path.exists():
        if not overwrite:
            raise InputError(
                f"{path} already exists. Choose another path or pass overwrite=True (--overwrite)."
            )
        shutil.rmtree(path)
    return path


def _materialize(value: ArrayOrFactory) -> np.ndarray:
    return np.asarray(value() if callable(value) else value)


def write_image(
    path: str | Path,
    data: np.ndarray,
    *,
    channel_names: Sequence[str],
    ngff_version: str = "0.5",
    axes: str | Sequence[str] = "cyx",
    chunks: tuple[int, int] = (256, 256),
    levels: int = 3,
    colors: Sequence[str] | None = None,
    name: str | None = None,
    overwrite: bool = False,
    pixel_size: float | Sequence[float] | None = None,
) -> Path:
    """Write a single multiscale OME-Zarr image (not in a plate).

    Parameters
    ----------
    path
        Where to create the image group.
    data
        Pixels with axes ``axes``.
    channel_names
        One label per channel (``omero.channels[].label``).
    ngff_version
        ``"0.4"`` (Zarr v2) or ``"0.5"`` (Zarr v3).
    axes
        Axis names in t, c, z, y, x order; must contain c, y and x.
    chunks
        Chunk size along y and x; the chunk along c, z and t is 1.
    levels
        Number of pyramid levels (2× mean downsampling in y and x).
    colors
        Hex colours per channel; default by stain name, then by position
        (:func:`channel_colors`: DAPI/Hoechst blue, actin red, ER green, ...).
    name
        Image name in the metadata.
    overwrite
        Replace an existing path.
    pixel_size
        Micrometers per pixel at level 0 (``y = x``, or ``(y, x)``, or ``(z, y, x)``), written as
        the levels' ``scale`` with the space axes in micrometers; default none (scale 1, no unit).

    Returns
    -------
    pathlib.Path
        The image path.
    """
    fmt = _format(ngff_version)
    axes_t = _parse_axes(axes)
    path = _prepare_target(path, overwrite)
    group = zarr.open_group(str(path), mode="w", zarr_format=fmt.zarr_format)
    _write_multiscale(
        group,
        np.asarray(data),
        axes=axes_t,
        channel_names=channel_names,
        fmt=fmt,
        chunks=chunks,
        levels=levels,
        colors=colors,
        name=name or path.stem,
        pixel_size=pixel_size_zyx(pixel_size),
    )
    return path


def write_plate(
    path: str | Path,
    images: Mapping[tuple[str, str, str], ArrayOrFactory],
    *,
    channel_names: Sequence[str],
    ngff_version: str = "0.5",
    axes: str | Sequence[str] = "cyx",
    chunks: tuple[int, int] = (256, 256),
    levels: int = 3,
    colors: Sequence[str] | None = None,
    plate_name: str | None = None,
    extra_attrs: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    progress: Callable[[int], None] | None = None,
    rows: Sequence[str] | None = None,
    columns: Sequence[str] | None = None,
    pixel_size: float | Sequence[float] | None = None,
    field_attrs: Mapping[tuple[str, str, str], Mapping[str, Any]] | None = None,
) -> Path:
    """Write an OME-Zarr HCS plate.

    Parameters
    ----------
    path
        Where to create the plate (a new directory ending in ``.zarr`` by convention).
    images
        Maps ``(row, column, field)`` names, e.g. ``("B", "3", "0")``, to the field's pixels
        (axes ``axes``) or to a function returning them (called once: one field at a time).
    channel_names, ngff_version, axes, chunks, levels, colors, overwrite
        As in :func:`write_image`, shared by every image (chunk 1 along c, so channels can
        be appended later without rewriting chunks).
    plate_name, extra_attrs
        Plate name (default: the directory name); attributes stored at the plate root,
        outside the NGFF metadata.
    progress
        Called with the number of images written after each image.
    rows, columns
        The plate layout (e.g. ``A``–``H`` and ``1``–``12``); default only the rows and
        columns that hold images.
    pixel_size
        As in :func:`write_image`, shared by every image.
    field_attrs
        Attributes stored on a field's image group (outside the NGFF metadata), by image key,
        e.g. the instrument's site number of an imported field.

    Returns
    -------
    pathlib.Path
        The plate path.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "p.zarr")
    >>> _ = write_plate(p, {("A", "1", "0"): np.zeros((2, 64, 64), "uint16")},
    ...                 channel_names=["actin", "WAVE2"], levels=2)
    """
    fmt = _format(ngff_version)
    axes_t = _parse_axes(axes)
    _check_image_keys(images)
    path = _prepare_target(path, overwrite)
    rows, cols, wells = _plate_layout(images, rows, columns)
    root = zarr.open_group(str(path), mode="w", zarr_format=fmt.zarr_format)
    well_paths = [f"{r}/{c}" for r in rows for c in cols if (r, c) in wells]
    field_count = max(len(v) for v in wells.values())
    # acquisition name and maximumfieldcount: the strict NGFF schemas require them
    write_plate_metadata(
        root,
        rows,
        cols,
        well_paths,
        fmt=fmt,
        field_count=field_count,
        name=plate_name or path.stem,
        acquisitions=[{"id": 0, "name": plate_name or path.stem, "maximumfieldcount": field_count}],
    )
    _set_extra_attrs(root, extra_attrs, fmt.zarr_format)
    pyramid = {
        "axes": axes_t,
        "channel_names": channel_names,
        "fmt": fmt,
        "chunks": chunks,
        "levels": levels,
        "colors": colors,
        "pixel_size": pixel_size_zyx(pixel_size),
    }
    order = sorted(wells, key=lambda rc: (rows.index(rc[0]), cols.index(rc[1])))
    done = _write_wells(root, images, wells, order, pyramid, progress, field_attrs or {})
    logger.info("wrote plate %s: %d wells, %d images", path, len(wells), done)
    return path


def _write_wells(
    root: zarr.Group,
    images: Mapping[tuple[str, str, str], ArrayOrFactory],
    wells: Mapping[tuple[str, str], list[str]],
    order: Sequence[tuple[str, str]],
    pyramid: Mapping[str, Any],
    progress: Callable[[int], None] | None,
    field_attrs: Mapping[tuple[str, str, str], Mapping[str, Any]],
) -> int:
    """Write each well's metadata and its fields' pyramids, in ``order``; the number of images
    written."""
    done = 0
    for r, c in order:
        fields = sorted(wells[(r, c)], key=lambda f: (len(f), f))
        wgroup = root.require_group(r).require_group(c)
        write_well_metadata(
            wgroup, [{"path": f, "acquisition": 0} for f in fields], fmt=pyramid["fmt"]
        )
        for f in fields:
            fgroup = wgroup.require_group(f)
            _write_multiscale(
                fgroup, _materialize(images[(r, c, f)]), name=f"{r}{c}/{f}", **pyramid
            )
            _set_extra_attrs(fgroup, field_attrs.get((r, c, f)), pyramid["fmt"].zarr_format)
            done += 1
            if progress is not None:
                progress(done)
    return done


def _check_image_keys(images: Mapping[tuple[str, str, str], Any]) -> None:
    if not images:
        raise InputError("Expected at least one image for the plate. Got none instead.")
    for key in images:
        if len(key) != 3 or not all(isinstance(k, str) and k.isalnum() for k in key):
            raise InputError(
                f"Expected image keys (row, column, field) of alphanumeric strings. Got {key!r} "
                "instead."
            )


def _plate_layout(
    images: Mapping[tuple[str, str, str], Any],
    rows: Sequence[str] | None,
    columns: Sequence[str] | None,
) -> tuple[list[str], list[str], dict[tuple[str, str], list[str]]]:
    """The plate's rows and columns (default: those that hold images) and the fields of each
    well."""
    used_rows = sorted({r for r, _, _ in images}, key=lambda r: (len(r), r))
    used_cols = sorted(
        {c for _, c, _ in images}, key=lambda c: (len(c), int(c) if c.isdigit() else c)
    )
    rows = list(rows) if rows is not None else used_rows
    cols = list(columns) if columns is not None else used_cols
    outside = sorted(set(used_rows) - set(rows)) + sorted(set(used_cols) - set(cols))
    if outside:
        raise InputError(
            f"Images use rows/columns {outside} that are not in the plate layout. Add them to "
            "rows/columns."
        )
    wells: dict[tuple[str, str], list[str]] = {}
    for r, c, f in images:
        wells.setdefault((r, c), []).append(f)
    return rows, cols, wells


def _set_extra_attrs(
    root: zarr.Group, extra_attrs: Mapping[str, Any] | None, zarr_format: int
) -> None:
    """Store ``extra_attrs`` at the plate root, refusing keys that belong to NGFF."""
    for k, v in (extra_attrs or {}).items():
        if k in reserved_attr_keys(zarr_format):
            raise InputError(f"extra_attrs may not set the NGFF key {k!r}. Use another key.")
        root.attrs[k] = v
