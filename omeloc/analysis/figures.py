"""Figures of an evaluation: a plate heat map of one metric, and montages of selected wells.

Figures are drawn with :class:`matplotlib.figure.Figure` on a
:class:`~matplotlib.backends.backend_agg.FigureCanvasAgg`, never through ``pyplot``, so
importing or using this module changes no global matplotlib state (backend, rcParams,
open figures).  Each function returns the written path together with where things landed
in the PNG (in pixels, origin top-left), so callers and tests can find a well's cell or a
panel without guessing the layout.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from omeloc.errors import InputError

__all__ = [
    "FigureResult",
    "plate_grid",
    "plate_heatmap",
    "display_range",
    "montage",
    "HELD_OUT_COLOR",
    "MISSING_COLOR",
    "new_figure",
    "save_figure",
]

logger = logging.getLogger(__name__)

#: Colour of wells without a value (not in the plate, or metric undefined): mid grey.
MISSING_COLOR = (0.6, 0.6, 0.6, 1.0)

#: Outline of held-out (validation) wells in a heat map.
HELD_OUT_COLOR = (0.0, 0.0, 0.0, 1.0)


@dataclass(frozen=True)
class FigureResult:
    """A written figure.

    Attributes
    ----------
    path : Path
        The PNG file.
    size_px : tuple of int
        ``(height, width)`` of the PNG in pixels.
    boxes : dict
        Pixel boxes ``(x0, y0, x1, y1)`` (origin top-left, x to the right, y down) of the
        figure's cells: plate heat maps key them by well path (``"B/3"``), montages by
        ``(row label, column title)``.
    texts : dict
        The text printed in a cell, by the same keys (heat maps with ``annotate``).
    """

    path: Path
    size_px: tuple[int, int]
    boxes: dict[Any, tuple[float, float, float, float]] = field(default_factory=dict)
    texts: dict[Any, str] = field(default_factory=dict)

    def center(self, key: Any) -> tuple[int, int]:
        """``(x, y)`` pixel at the centre of a box (round to index the PNG as ``png[y, x]``)."""
        x0, y0, x1, y1 = self.boxes[key]
        return int(round((x0 + x1) / 2)), int(round((y0 + y1) / 2))


def new_figure(width_in: float, height_in: float, dpi: int) -> Any:
    """A matplotlib figure on its own Agg canvas (no ``pyplot``, no global state touched).

    Parameters
    ----------
    width_in, height_in : float
        Size in inches.
    dpi : int
        Resolution.

    Returns
    -------
    matplotlib.figure.Figure
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def _box_px(
    fig, ax, x0: float, y0: float, x1: float, y1: float
) -> tuple[float, float, float, float]:
    """Data-coordinate rectangle of ``ax`` → PNG pixel box (origin top-left)."""
    height = fig.bbox.height
    (ax0, ay0), (ax1, ay1) = ax.transData.transform([(x0, y0), (x1, y1)])
    return (min(ax0, ax1), height - max(ay0, ay1), max(ax0, ax1), height - min(ay0, ay1))


def save_figure(fig: Any, path: str | Path, dpi: int) -> tuple[Path, tuple[int, int]]:
    """Write ``fig`` as a PNG (creating the parent folders) and log it.

    Parameters
    ----------
    fig : matplotlib.figure.Figure
        A figure from :func:`new_figure`.
    path : path-like
        Output PNG.
    dpi : int
        Resolution.

    Returns
    -------
    tuple
        The path written and the PNG's ``(height, width)`` in pixels.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, format="png")
    w, h = fig.canvas.get_width_height()
    logger.info("wrote %s", path)
    return path, (int(h), int(w))


# -- plate heat map -------------------------------------------------------------------------------
def plate_grid(
    values: Mapping[str, float], rows: Sequence[str], columns: Sequence[str]
) -> np.ndarray:
    """Lay per-well values out as the plate: an array ``(len(rows), len(columns))``.

    Parameters
    ----------
    values : mapping
        Well path (``"B/3"``, row name / column name) → value.
    rows, columns : sequence of str
        Row and column names in plate order (``plate.rows``, ``plate.columns``).

    Returns
    -------
    numpy.ndarray
        float64, NaN where a well has no value.

    Raises
    ------
    InputError
        A key names a row or column the plate does not have.

    Examples
    --------
    >>> plate_grid({"A/2": 0.9}, ["A", "B"], ["1", "2"]).tolist()
    [[nan, 0.9], [nan, nan]]
    """
    rows, columns = [str(r) for r in rows], [str(c) for c in columns]
    grid = np.full((len(rows), len(columns)), np.nan)
    for key, value in values.items():
        row, _, col = str(key).partition("/")
        if row not in rows or col not in columns:
            raise InputError(
                f"Expected well paths 'ROW/COLUMN' with rows {rows} and columns {columns}. Got "
                f"{key!r} instead."
            )
        grid[rows.index(row), columns.index(col)] = np.nan if value is None else float(value)
    return grid


def _color_scale(
    grid: np.ndarray, cmap: str, vmin: float | None, vmax: float | None
) -> tuple[Any, float, float]:
    """The colormap (grey where a value is missing) and the colour limits ``(lo, hi)``,
    ``hi > lo``."""
    import matplotlib

    try:
        colormap = matplotlib.colormaps[cmap].with_extremes(bad=MISSING_COLOR)
    except KeyError as err:
        raise InputError(f"Expected a matplotlib colormap name. Got {cmap!r} instead.") from err
    finite = grid[np.isfinite(grid)]
    lo = (
        float(finite.min())
        if vmin is None and finite.size
        else (0.0 if vmin is None else float(vmin))
    )
    hi = (
        float(finite.max())
        if vmax is None and finite.size
        else (1.0 if vmax is None else float(vmax))
    )
    if hi <= lo:
        hi = lo + 1e-9
    return colormap, lo, hi


def _outline(
    ax: Any,
    rows: list[str],
    columns: list[str],
    wells: Iterable[str],
    color: Any,
    inset: float,
    linewidth: float,
) -> None:
    from matplotlib.patches import Rectangle

    for key in wells:
        r, _, c = str(key).partition("/")
        if r in rows and c in columns:
            ax.add_patch(
                Rectangle(
                    (columns.index(c) - 0.5 + inset, rows.index(r) - 0.5 + inset),
                    1 - 2 * inset,
                    1 - 2 * inset,
                    fill=False,
                    edgecolor=color,
                    linewidth=linewidth,
                )
            )


def _annotate(
    ax: Any,
    grid: np.ndarray,
    rows: list[str],
    columns: list[str],
    colormap: Any,
    lo: float,
    hi: float,
) -> dict[str, str]:
    """Print each well's value in its cell (dark text on light colours); the texts by well path."""
    texts = {}
    for i, r in enumerate(rows):
        for j, c in enumerate(columns):
            if not np.isfinite(grid[i, j]):
                continue
            rgba = colormap((grid[i, j] - lo) / (hi - lo))
            light = 0.299 * rgba[0] + 0.587 * rgba[1] + 0.114 * rgba[2] > 0.5
            text = f"{grid[i, j]:.2f}"
            ax.text(
                j,
                i,
                text,
                ha="center",
                va="center",
                fontsize=6 if len(columns) > 12 else 7,
                color="black" if light else "white",
            )
            texts[f"{r}/{c}"] = text
    return texts


def _label_wells(ax: Any, rows: list[str], columns: list[str], flagged: Iterable[str]) -> None:
    """Row names down the side, column names along the top, white well borders, red outlines on
    ``flagged``."""
    from matplotlib.patches import Rectangle

    n_r, n_c = len(rows), len(columns)
    ax.set_xticks(range(n_c), columns, fontsize=7 if n_c > 12 else 9)
    ax.set_yticks(range(n_r), rows, fontsize=7 if n_r > 8 else 9)
    ax.xaxis.tick_top()
    ax.tick_params(length=0)
    ax.set_xticks(np.arange(-0.5, n_c, 1), minor=True)
    ax.set_yticks(np.arange(-0.5, n_r, 1), minor=True)
    ax.grid(which="minor", color="white", linewidth=0.8)
    ax.tick_params(which="minor", length=0)
    for key in flagged:
        r, _, c = str(key).partition("/")
        if r in rows and c in columns:
            ax.add_patch(
                Rectangle(
                    (columns.index(c) - 0.46, rows.index(r) - 0.46),
                    0.92,
                    0.92,
                    fill=False,
                    edgecolor="red",
                    linewidth=2,
                )
            )


def plate_heatmap(
    values: Mapping[str, float],
    rows: Sequence[str],
    columns: Sequence[str],
    path: str | Path,
    *,
    title: str = "",
    label: str = "",
    cmap: str = "viridis",
    vmin: float | None = None,
    vmax: float | None = None,
    flagged: Iterable[str] = (),
    dpi: int = 100,
    held_out: Iterable[str] = (),
    annotate: bool = False,
) -> FigureResult:
    """Write a PNG heat map of per-well values laid out as the plate.

    Rows are labelled with their names (letters) down the side, columns with theirs
    (numbers) along the top; wells without a value are grey (:data:`MISSING_COLOR`);
    wells in ``flagged`` get a red outline.

    Parameters
    ----------
    values : mapping
        Well path (``"B/3"``) → value.
    rows, columns : sequence of str
        The plate's row and column names, in order.
    path : path-like
        Output PNG.
    title, label : str
        Figure title and colour-bar label.
    cmap : str
        A matplotlib colormap name.
    vmin, vmax : float, optional
        Colour limits (default: the values' range).
    flagged : iterable of str
        Well paths to outline (e.g. screening hits).
    dpi : int
    held_out : iterable of str
        Well paths outlined in :data:`HELD_OUT_COLOR` (the wells a model never trained on).
    annotate : bool
        Print each well's value (2 decimals) in its cell.

    Returns
    -------
    FigureResult
        ``boxes`` maps every well position of the plate (``"B/3"``) to its cell in the PNG.
    """
    grid = plate_grid(values, rows, columns)
    n_r, n_c = grid.shape
    if n_r == 0 or n_c == 0:
        raise InputError("Expected a plate with at least one row and one column. Got none instead.")
    colormap, lo, hi = _color_scale(grid, cmap, vmin, vmax)
    cell = 0.45  # inches per well
    left, right, top, bottom = 0.6, 1.3, 0.9, 0.3
    width, height = left + n_c * cell + right, top + n_r * cell + bottom
    fig = new_figure(width, height, dpi)
    ax = fig.add_axes((left / width, bottom / height, n_c * cell / width, n_r * cell / height))
    image = ax.imshow(
        np.ma.masked_invalid(grid),
        cmap=colormap,
        vmin=lo,
        vmax=hi,
        interpolation="nearest",
        aspect="auto",
        extent=(-0.5, n_c - 0.5, n_r - 0.5, -0.5),
    )
    rows_l, cols_l = [str(r) for r in rows], [str(c) for c in columns]
    _label_wells(ax, rows_l, cols_l, flagged)
    held_out = list(held_out)
    _outline(ax, rows_l, cols_l, held_out, HELD_OUT_COLOR, 0.08, 2.5)
    _outline(ax, rows_l, cols_l, held_out, "white", 0.15, 1.5)  # seen on dark cells too
    texts = _annotate(ax, grid, rows_l, cols_l, colormap, lo, hi) if annotate else {}
    cax = fig.add_axes(
        ((left + n_c * cell + 0.15) / width, bottom / height, 0.18 / width, n_r * cell / height)
    )
    fig.colorbar(image, cax=cax, label=label)
    if title:
        fig.suptitle(title, y=1 - 0.15 / height, va="top", fontsize=10)
    fig.canvas.draw()
    boxes = {
        f"{r}/{c}": _box_px(fig, ax, j - 0.5, i - 0.5, j + 0.5, i + 0.5)
        for i, r in enumerate(rows_l)
        for j, c in enumerate(cols_l)
    }
    out, size = save_figure(fig, path, dpi)
    return FigureResult(out, size, boxes, texts)


# -- montage --------------------------------------------------------------------------------------
def display_range(image: Any, low: float = 0.5, high: float = 99.5) -> tuple[float, float]:
    """Contrast limits for display: the ``low`` and ``high`` percentiles of the finite pixels.

    Returns ``(vmin, vmax)`` with ``vmax > vmin`` (a constant image gets a unit range).
    """
    x = np.asarray(image, dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return 0.0, 1.0
    lo, hi = (float(v) for v in np.percentile(x, [low, high]))
    if hi <= lo:
        hi = lo + 1.0
    return lo, hi


def _plane(image: Any) -> np.ndarray:
    """A 2-D ``y, x`` plane: the middle of any leading axes (z), the first of t."""
    x = np.asarray(image, dtype=np.float64)
    while x.ndim > 2:
        x = x[x.shape[0] // 2]
    if x.ndim != 2:
        raise InputError(
            f"Expected a 2-D (y, x) image for a montage. Got shape {np.shape(image)} instead."
        )
    return x


def _shrink(x: np.ndarray, max_px: int) -> np.ndarray:
    """Block-mean downsample by an integer factor so the longer side is at most ~``max_px``."""
    f = max(1, int(math.ceil(max(x.shape) / max_px)))
    if f == 1:
        return x
    ny, nx = (x.shape[0] // f) * f, (x.shape[1] // f) * f
    return x[:ny, :nx].reshape(ny // f, f, nx // f, f).mean(axis=(1, 3))


MontageRow = tuple[str, Any, Any, Any]


Panel = tuple[np.ndarray, str, float, float]  # image, colormap, vmin, vmax


def _montage_panels(
    label: str, source: Any, virtual: Any, real: Any, with_input: bool
) -> list[Panel]:
    """The panels of one montage row with their display ranges (see :func:`montage`, Notes)."""
    v, t = _plane(virtual), _plane(real)
    if v.shape != t.shape:
        raise InputError(
            f"Expected virtual and real images of one shape for {label}. Got {v.shape} and "
            f"{t.shape}."
        )
    lo, hi = display_range(t)
    diff = v - t
    d = display_range(np.abs(diff), 0.0, 99.5)[1]
    panels: list[Panel] = []
    if with_input:
        s = _plane(source) if source is not None else np.full_like(t, np.nan)
        panels.append((s, "gray", *display_range(s)))
    panels += [(v, "gray", lo, hi), (t, "gray", lo, hi), (diff, "RdBu_r", -d, d)]
    return panels


def _draw_row(
    fig: Any,
    i: int,
    row: MontageRow,
    cols: list[str],
    with_input: bool,
    *,
    n_r: int,
    label_w: float,
    panel_inches: float,
    max_px: int,
) -> dict[tuple[str, str], Any]:
    """Draw row ``i`` of a montage (its panels and its label); returns the axes keyed by (label,
    column title)."""
    width, height = (float(v) for v in fig.get_size_inches())
    label, source, virtual, real = row
    axes = {}
    for j, (img, cmap, vmin, vmax) in enumerate(
        _montage_panels(label, source, virtual, real, with_input)
    ):
        rect = (
            (label_w + j * panel_inches) / width,
            (n_r - 1 - i) * panel_inches / height,
            panel_inches / width,
            panel_inches / height,
        )
        ax = fig.add_axes(rect)
        ax.imshow(
            _shrink(img, max_px),
            cmap=cmap,
            vmin=vmin,
            vmax=vmax,
            interpolation="nearest",
            aspect="auto",
            extent=(0, 1, 1, 0),
        )
        ax.set_axis_off()
        if i == 0:
            ax.set_title(cols[j], fontsize=10)
        axes[(str(label), cols[j])] = ax
    fig.text(
        label_w / 2 / width,
        (n_r - 0.5 - i) * panel_inches / height,
        str(label),
        rotation=90,
        ha="center",
        va="center",
        fontsize=10,
    )
    return axes


def montage(
    rows: Sequence[MontageRow],
    path: str | Path,
    *,
    title: str = "",
    titles: Sequence[str] = ("input", "virtual", "real", "difference"),
    panel_inches: float = 2.2,
    dpi: int = 100,
) -> FigureResult:
    """Write a montage: one row per well, columns input | virtual | real | difference.

    Parameters
    ----------
    rows : sequence of (label, input, virtual, real)
        ``input`` may be ``None`` for every row, and the input column is then left out.
        Images are 2-D (a middle plane is taken from 3-D ones) and are block-mean
        downsampled to the panel's pixel size.
    path : path-like
        Output PNG.
    title : str
    titles : sequence of 4 str
        Column titles.
    panel_inches, dpi
        Panel size (square) and resolution.

    Notes
    -----
    Display: ``input`` grey, its own 0.5–99.5 percentile range; ``virtual`` and ``real``
    grey with the *same* range (the real image's 0.5–99.5 percentiles) so that
    brightness is comparable; ``difference = virtual - real`` in a diverging map
    (``RdBu_r``: red where the virtual channel is brighter, blue where dimmer), symmetric
    around zero at the 99.5 percentile of ``|difference|``.

    Returns
    -------
    FigureResult
        ``boxes`` maps ``(label, column title)`` to each panel's pixel box.
    """
    if not rows:
        raise InputError("Expected at least one well for the montage. Got none instead.")
    if len(titles) != 4:
        raise InputError(f"Expected 4 column titles. Got {len(titles)} instead.")
    with_input = any(r[1] is not None for r in rows)
    cols = list(titles) if with_input else list(titles[1:])
    n_r, n_c = len(rows), len(cols)
    label_w, top = 0.35, 0.45 + (0.3 if title else 0.0)
    width, height = label_w + n_c * panel_inches, top + n_r * panel_inches
    fig = new_figure(width, height, dpi)
    max_px = int(panel_inches * dpi)
    axes: dict[tuple[str, str], Any] = {}
    for i, row in enumerate(rows):
        axes.update(
            _draw_row(
                fig,
                i,
                row,
                cols,
                with_input,
                n_r=n_r,
                label_w=label_w,
                panel_inches=panel_inches,
                max_px=max_px,
            )
        )
    if title:
        fig.suptitle(title, y=1 - 0.1 / height, va="top", fontsize=11)
    fig.canvas.draw()
    boxes = {key: _box_px(fig, ax, 0, 1, 1, 0) for key, ax in axes.items()}
    out, size = save_figure(fig, path, dpi)
    return FigureResult(out, size, boxes)
