"""Synthetic adherent cells with known protein relationships (pure numpy, no store).

One field of view is drawn as six channels (:data:`CHANNELS`).  The relationships of the
seed study (Shigene et al. 2021: actin predicts WAVE2, IRSp53 and vinculin well, tubulin
poorly) hold *by construction*:

============  ==========================================================================
channel       where the signal is (ground truth)
============  ==========================================================================
actin         diffuse cytoplasm (thicker in the middle, dimmer over the nucleus);
              cortical rim (~1.5 px); lamellipodia (a bright, ruffled band 4–9 px wide
              along one or two sectors of the edge, where the edge also bulges out);
              filopodia (thin straight bundles 4–16 px long sticking out of the edge);
              stress fibres (straight bundles roughly along the cell's long axis that end
              3–6 px inside the edge, slightly brighter over their focal adhesions)
WAVE2         the outermost ~1.5 px of the lamellipodia (the same sectors and the same
              ruffles as the actin band); faint diffuse cytoplasm.  A local function of
              actin: **related**
IRSp53        the lamellipodial edge (~2 px, like WAVE2 but wider), a weak cortical rim
              all round, the tips (bright) and shafts (weak) of filopodia; faint
              cytoplasm.  **related**
vinculin      focal adhesions: elongated plaques 3–6 px long at *both* ends of every stress
              fibre, oriented along the fibre; faint cytoplasm.  **related**
tubulin       a bright centrosome next to the nucleus and 20–45 microtubules, half growing
              from it and half from anywhere in the cell, as persistent random walks
              (directions independent of the actin fibres) until they reach the cell edge,
              where most stop and a quarter turn along it; diffuse soluble tubulin.  Its
              only relation to actin is the cell footprint: **unrelated** (a model sees
              where the cell is, never where a microtubule runs: its prediction is blurred)
nuclei        one textured ellipse per cell, inside the cell; actin is dimmer over it:
              **weak**
============  ==========================================================================

Per-cell expression levels vary (log-normal); the levels of WAVE2, IRSp53 and vinculin
are partly tied to the cell's actin level, tubulin's and the nuclear stain's are not.

Noise: expected photoelectrons (structure + a per-channel background) → Poisson shot
noise → + camera offset (100 ADU) + Gaussian read noise (σ = 4 ADU) → rounded, clipped,
``uint16``.  Backgrounds read ~130–190 ADU, bright structures a few thousand ADU; nothing
saturates.

Perturbations (:data:`PERTURBATIONS`) break one relationship while leaving actin (and
every other channel) pixel-identical for the same random generator state.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from omeloc.analysis import metrics
from omeloc.errors import InputError

__all__ = [
    "CHANNELS",
    "PERTURBATIONS",
    "RELATIONSHIPS",
    "GENERATOR_VERSION",
    "SyntheticField",
    "simulate_field",
    "render_field",
    "gaussian_blur",
    "parse_shape",
]

CHANNELS: tuple[str, ...] = ("actin", "WAVE2", "IRSp53", "vinculin", "tubulin", "nuclei")

#: How well each channel can be inferred from actin, by construction.
RELATIONSHIPS: dict[str, str] = {
    "actin->WAVE2": "related",
    "actin->IRSp53": "related",
    "actin->vinculin": "related",
    "actin->tubulin": "unrelated",
    "actin->nuclei": "weak",
}

#: Perturbation name → what it breaks.
PERTURBATIONS: dict[str, str] = {
    "wave2_cytoplasmic": (
        "WAVE2 leaves the lamellipodial edge and spreads through the cytoplasm (same amount "
        "per cell); actin unchanged: breaks actin->WAVE2"
    ),
    "irsp53_cytoplasmic": (
        "IRSp53 leaves the edge and the filopodia and spreads through the cytoplasm; actin "
        "unchanged: breaks actin->IRSp53"
    ),
    "vinculin_diffuse": (
        "vinculin leaves the focal adhesions and spreads through the cytoplasm; stress fibres "
        "still end where they did: breaks actin->vinculin"
    ),
}

GENERATOR_VERSION = "1"

OFFSET_ADU = 100.0
READ_NOISE_ADU = 4.0
PSF_SIGMA = 1.0  # px
#: Expected background photoelectrons per channel (autofluorescence, out-of-focus light).
BACKGROUND = {
    "actin": 60.0,
    "WAVE2": 40.0,
    "IRSp53": 45.0,
    "vinculin": 50.0,
    "tubulin": 55.0,
    "nuclei": 35.0,
}
MEAN_RADIUS = 42.0  # px: cell size sets the scale, whatever the field size

# Peak heights (photoelectrons after the PSF) of each structure.  A line splatted with a
# linear density d peaks at d / (sqrt(2 pi) sigma); a point of weight w at w / (2 pi sigma^2).
_LINE = math.sqrt(2 * math.pi) * PSF_SIGMA
_SPOT = 2 * math.pi * PSF_SIGMA**2


@dataclass(frozen=True)
class SyntheticField:
    """One rendered field and its ground truth.

    Attributes
    ----------
    images
        Noisy ``uint16`` images (ADU), one per channel of :data:`CHANNELS`.
    clean
        The noise-free expectation of ``images`` (``float32`` ADU, offset and background
        included).
    background
        The expected value of a cell-free pixel per channel (ADU).
    labels
        Cell labels (``int32``; 0 = background, cells 1..n; filopodia not included).
    nucleus_labels
        Nucleus labels (``int32``), same numbering as ``labels``.
    edge_distance
        Distance in pixels from each cell pixel to its cell's edge (measured along the ray
        from the cell centre); -1 outside cells.
    lamellipodium
        Lamellipodial weight in [0, 1] per pixel (angular sector weight × edge band).
    adhesions
        ``(n, 2)`` float array of focal-adhesion centres (y, x): the ends of the stress
        fibres.
    centrosomes
        ``(n_cells, 2)`` float array (y, x).
    filopodium_tips
        ``(n, 2)`` float array (y, x).
    perturbation
        The perturbation applied, or ``None``.
    """

    images: dict[str, np.ndarray]
    clean: dict[str, np.ndarray]
    background: dict[str, float]
    labels: np.ndarray
    nucleus_labels: np.ndarray
    edge_distance: np.ndarray
    lamellipodium: np.ndarray
    adhesions: np.ndarray
    centrosomes: np.ndarray
    filopodium_tips: np.ndarray
    perturbation: str | None = None


# -- small numpy tools ------------------------------------------------------------------------
def gaussian_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of a 2-d array as the synthetic cells use it: float32, truncated at 3.5 σ.

    :func:`omeloc.analysis.metrics.gaussian_blur` with ``truncate=3.5``, ``dtype=float32``
    and edge padding for axes shorter than the kernel radius.

    Parameters
    ----------
    img
        2-d array.
    sigma
        Standard deviation in pixels; ``<= 0`` returns a float32 copy.

    Returns
    -------
    numpy.ndarray
        ``float32`` array of the same shape.

    Examples
    --------
    >>> import numpy as np
    >>> a = np.zeros((9, 9)); a[4, 4] = 1
    >>> round(float(gaussian_blur(a, 1.0).sum()), 5)
    1.0
    """
    return metrics.gaussian_blur(img, sigma, truncate=3.5, dtype=np.float32, short_axis_mode="edge")


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Zero-mean, unit-std Gaussian random field with correlation length ``sigma`` (FFT)."""
    white = rng.standard_normal(shape).astype(np.float32)
    fy = np.fft.fftfreq(shape[0])[:, None]
    fx = np.fft.rfftfreq(shape[1])[None, :]
    transfer = np.exp(-2 * (math.pi * sigma) ** 2 * (fy**2 + fx**2))
    field_ = np.fft.irfft2(np.fft.rfft2(white) * transfer, s=shape).astype(np.float32)
    return field_ / max(float(field_.std()), 1e-6)


class _Splats:
    """Accumulates weighted points per channel; drawn with bilinear weights in one pass."""

    def __init__(self) -> None:
        self.points: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {
            c: [] for c in CHANNELS
        }

    def add(self, channel: str, y: np.ndarray, x: np.ndarray, w: np.ndarray | float) -> None:
        y = np.atleast_1d(np.asarray(y, dtype=np.float64))
        x = np.atleast_1d(np.asarray(x, dtype=np.float64))
        self.points[channel].append((y, x, np.broadcast_to(np.asarray(w, np.float64), y.shape)))

    def line(self, channel: str, p0, p1, density: float, step: float = 0.5) -> None:
        n = max(2, int(math.hypot(p1[0] - p0[0], p1[1] - p0[1]) / step) + 1)
        t = np.linspace(0.0, 1.0, n)
        length = math.hypot(p1[0] - p0[0], p1[1] - p0[1])
        self.add(
            channel, p0[0] + t * (p1[0] - p0[0]), p0[1] + t * (p1[1] - p0[1]), density * length / n
        )

    def mass_inside(self, channel: str, shape: tuple[int, int]) -> float:
        """Total weight of the points that fall inside a field of ``shape``."""
        total = 0.0
        for y, x, w in self.points[channel]:
            ok = (y >= -0.5) & (y < shape[0] - 0.5) & (x >= -0.5) & (x < shape[1] - 0.5)
            total += float(w[ok].sum())
        return total

    def draw(self, channel: str, shape: tuple[int, int]) -> np.ndarray:
        h, w = shape
        pts = self.points[channel]
        if not pts:
            return np.zeros(shape, np.float32)
        y = np.concatenate([p[0] for p in pts])
        x = np.concatenate([p[1] for p in pts])
        wt = np.concatenate([p[2] for p in pts])
        y0 = np.floor(y).astype(np.int64)
        x0 = np.floor(x).astype(np.int64)
        fy, fx = y - y0, x - x0
        idx, wts = [], []
        for dy, dx, ww in (
            (0, 0, (1 - fy) * (1 - fx)),
            (0, 1, (1 - fy) * fx),
            (1, 0, fy * (1 - fx)),
            (1, 1, fy * fx),
        ):
            yy, xx = y0 + dy, x0 + dx
            ok = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
            idx.append(yy[ok] * w + xx[ok])
            wts.append((wt * ww)[ok])
        flat = np.bincount(np.concatenate(idx), weights=np.concatenate(wts), minlength=h * w)
        return flat.reshape(shape).astype(np.float32)


def _wrap(a: np.ndarray | float) -> np.ndarray:
    return (np.asarray(a) + np.pi) % (2 * np.pi) - np.pi


# -- one cell ---------------------------------------------------------------------------------
@dataclass
class _Cell:
    cy: float
    cx: float
    radius: float
    axis: float  # long-axis angle (rad)
    harm_amp: np.ndarray  # harmonics k = 2..5
    harm_phase: np.ndarray
    lam_centre: np.ndarray  # lamellipodial sectors
    lam_halfwidth: np.ndarray
    lam_width: float  # px
    ruffle_freq: int
    ruffle_phase: float
    nuc_offset: tuple[float, float]
    nuc_axes: tuple[float, float]
    nuc_angle: float
    expression: dict[str, float] = field(default_factory=dict)

    def lam_weight(self, theta: np.ndarray) -> np.ndarray:
        s = np.zeros(np.shape(theta), np.float64)
        for c, h in zip(self.lam_centre, self.lam_halfwidth):
            d = np.abs(_wrap(theta - c))
            s = np.maximum(s, np.where(d < h, 0.5 * (1 + np.cos(np.pi * d / h)), 0.0))
        return s

    def edge_radius(self, theta: np.ndarray) -> np.ndarray:
        k = np.arange(2, 2 + len(self.harm_amp))[:, None]
        th = np.ravel(theta)[None, :]
        waves = np.cos(k * (th - self.axis) + self.harm_phase[:, None])
        shape = 1 + (self.harm_amp[:, None] * waves).sum(0)
        r = self.radius * shape.reshape(np.shape(theta))
        return r * (1 + 0.22 * self.lam_weight(theta))

    def polar(self, y: np.ndarray, x: np.ndarray):
        dy, dx = y - self.cy, x - self.cx
        d = np.hypot(dy, dx)
        theta = np.arctan2(dy, dx)
        return d, theta, self.edge_radius(theta)

    @property
    def nucleus_centre(self) -> tuple[float, float]:
        return self.cy + self.nuc_offset[0], self.cx + self.nuc_offset[1]

    def extent(self) -> float:
        return self.radius * (1 + float(np.abs(self.harm_amp).sum())) * 1.22 + 20.0


def _make_cell(rng: np.random.Generator, cy: float, cx: float, radius: float) -> _Cell:
    axis = rng.uniform(-np.pi, np.pi)
    harm_amp = np.array(
        [
            rng.uniform(0.12, 0.3),
            rng.uniform(0.0, 0.12),
            rng.uniform(0.0, 0.08),
            rng.uniform(0.0, 0.05),
            rng.uniform(0.0, 0.03),
            rng.uniform(0.0, 0.02),
        ]
    )
    harm_phase = np.concatenate([[0.0], rng.uniform(-np.pi, np.pi, 5)])
    n_lam = 1 + int(rng.random() < 0.45)
    centres = [axis + np.pi * rng.integers(0, 2) + rng.normal(0, 0.3)]
    if n_lam == 2:
        centres.append(rng.uniform(-np.pi, np.pi))
    a = radius * rng.uniform(0.3, 0.38)
    return _Cell(
        cy=cy,
        cx=cx,
        radius=radius,
        axis=axis,
        harm_amp=harm_amp,
        harm_phase=harm_phase,
        lam_centre=np.array(centres),
        lam_halfwidth=rng.uniform(0.5, 1.1, n_lam),
        lam_width=rng.uniform(4.0, 9.0),
        ruffle_freq=int(rng.integers(9, 22)),
        ruffle_phase=rng.uniform(-np.pi, np.pi),
        nuc_offset=(rng.normal(0, 0.1 * radius), rng.normal(0, 0.1 * radius)),
        nuc_axes=(a, a * rng.uniform(0.7, 0.95)),
        nuc_angle=axis + rng.normal(0, 0.3),
    )


def _place_cells(
    rng: np.random.Generator, shape: tuple[int, int], n_cells: int | None
) -> list[_Cell]:
    h, w = shape
    if n_cells is None:
        n_cells = max(1, int(rng.poisson(h * w / (np.pi * MEAN_RADIUS**2 * 2.2))))
    cells: list[_Cell] = []
    for _ in range(n_cells):
        for _try in range(60):
            r = rng.uniform(0.78, 1.22) * MEAN_RADIUS
            cy, cx = rng.uniform(0, h), rng.uniform(0, w)
            if all(math.hypot(cy - c.cy, cx - c.cx) > 1.05 * (r + c.radius) for c in cells):
                cells.append(_make_cell(rng, cy, cx, r))
                break
    return cells


def _expression(rng: np.random.Generator) -> dict[str, float]:
    actin = rng.normal(0, 0.2)
    e = {"actin": actin, "tubulin": rng.normal(0, 0.2), "nuclei": rng.normal(0, 0.2)}
    for c in ("WAVE2", "IRSp53", "vinculin"):
        e[c] = 0.6 * actin + rng.normal(0, 0.1)
    return {k: float(np.exp(v)) for k, v in e.items()}


# -- structures drawn as lines and points ------------------------------------------------------
def _stress_fibres(rng, cell: _Cell, splats: _Splats, adhesions: list, vinculin: _Splats) -> None:
    """Draw stress fibres (actin) ending in focal adhesions (drawn into ``vinculin``)."""
    n = int(rng.integers(4, 11))
    ex = cell.expression
    for _ in range(n):
        ang = cell.axis + rng.normal(0, 0.22)
        u = np.array([np.sin(ang), np.cos(ang)])  # (y, x)
        v = np.array([u[1], -u[0]])
        off = rng.uniform(-0.65, 0.65) * cell.radius * (1 - cell.harm_amp[0])
        t = np.arange(-2.5 * cell.radius, 2.5 * cell.radius, 0.5)
        py = cell.cy + off * v[0] + t * u[0]
        px = cell.cx + off * v[1] + t * u[1]
        d, _, r = cell.polar(py, px)
        end_margin = rng.uniform(3.0, 6.0)
        inside = (r - d) > end_margin
        centre = int(np.argmin(np.abs(t)))
        if not inside[centre]:
            continue
        lo = centre
        while lo > 0 and inside[lo - 1]:
            lo -= 1
        hi = centre
        while hi < len(t) - 1 and inside[hi + 1]:
            hi += 1
        if t[hi] - t[lo] < 12:
            continue
        p0 = np.array([py[lo], px[lo]])
        p1 = np.array([py[hi], px[hi]])
        strength = rng.uniform(0.6, 1.4)
        splats.line("actin", p0, p1, 1000 * strength * ex["actin"] * _LINE)
        for end, inward in ((p0, u), (p1, -u)):
            length = rng.uniform(3.0, 6.0)
            inner = end + inward * length
            size = length / 4.5
            vinculin.line("vinculin", end, inner, 1700 * size * ex["vinculin"] * _LINE)
            splats.line("actin", end, inner, 500 * strength * ex["actin"] * _LINE)
            adhesions.append(end + inward * length / 2)


def _filopodia(rng, cell: _Cell, splats: _Splats, tips: list, irsp53: _Splats) -> None:
    """Draw filopodia (actin; IRSp53 shafts and tips, drawn into ``irsp53``)."""
    n = int(rng.integers(4, 14))
    ex = cell.expression
    for _ in range(n):
        if rng.random() < 0.5:
            k = int(rng.integers(0, len(cell.lam_centre)))
            th = cell.lam_centre[k] + rng.uniform(-1, 1) * cell.lam_halfwidth[k]
        else:
            th = rng.uniform(-np.pi, np.pi)
        r0 = float(cell.edge_radius(np.array(th))) - 1.5
        base = np.array([cell.cy + r0 * np.sin(th), cell.cx + r0 * np.cos(th)])
        direction = th + rng.normal(0, 0.35)
        length = rng.uniform(4.0, 16.0)
        tip = base + length * np.array([np.sin(direction), np.cos(direction)])
        splats.line("actin", base, tip, 800 * ex["actin"] * _LINE)
        irsp53.line("IRSp53", base, tip, 250 * ex["IRSp53"] * _LINE)
        irsp53.add("IRSp53", tip[0], tip[1], 1000 * ex["IRSp53"] * _SPOT)
        tips.append(tip)


def _microtubules(rng, cell: _Cell, splats: _Splats, centrosome: np.ndarray) -> None:
    """Grow microtubules as persistent random walks (tubulin), independent of actin.

    Most start next to the centrosome, some anywhere in the cell (non-centrosomal); at the
    cell edge most stop and a quarter turn to run along it.
    """
    n = int(rng.integers(20, 46))
    step = 0.7
    ang = rng.uniform(-np.pi, np.pi, n)
    start = rng.uniform(1.0, 4.0, n)
    y = centrosome[0] + start * np.sin(ang)
    x = centrosome[1] + start * np.cos(ang)
    free = rng.random(n) < 0.5
    fr = cell.radius * np.sqrt(rng.uniform(0, 0.6, n)) * (1 - cell.harm_amp[0])
    fa = rng.uniform(-np.pi, np.pi, n)
    y = np.where(free, cell.cy + fr * np.sin(fa), y)
    x = np.where(free, cell.cx + fr * np.cos(fa), x)
    max_len = rng.uniform(0.6, 2.4, n) * cell.radius
    curls = rng.random(n) < 0.25  # the others stop at the edge
    alive = np.ones(n, bool)
    density = 1400 * cell.expression["tubulin"] * _LINE
    for i in range(int(2.6 * cell.radius / step)):
        ang = ang + rng.normal(0, 0.07, n)
        y = y + step * np.sin(ang)
        x = x + step * np.cos(ang)
        d, theta, r = cell.polar(y, x)
        e = r - d
        near = (e < 3.5) & curls
        if near.any():  # turn along the edge, towards the side already heading
            t1, t2 = theta + np.pi / 2, theta - np.pi / 2
            tangent = np.where(np.abs(_wrap(ang - t1)) < np.abs(_wrap(ang - t2)), t1, t2)
            ang = np.where(near, tangent - 0.15 * np.sign(_wrap(tangent - theta)), ang)
        alive &= (e > np.where(curls, 1.0, 3.0)) & (i * step < max_len)
        if not alive.any():
            break
        splats.add("tubulin", y[alive], x[alive], density * step)
    splats.add("tubulin", centrosome[0], centrosome[1], 1500 * cell.expression["tubulin"] * _SPOT)


# -- the field ---------------------------------------------------------------------------------
def parse_shape(size: int | Sequence[int]) -> tuple[int, int]:
    """A field size as ``(y, x)``: an int is a square; each side at least 16 px.

    Parameters
    ----------
    size
        An int or a ``(y, x)`` pair.

    Returns
    -------
    tuple of int
        ``(y, x)``.

    Raises
    ------
    InputError
        Not two sides, or a side shorter than 16 px.
    """
    if isinstance(size, (int, np.integer)):
        shape = (int(size), int(size))
    else:
        shape = tuple(int(s) for s in size)  # type: ignore[assignment]
    if len(shape) != 2 or min(shape) < 16:
        raise InputError(
            f"Expected a field size of at least 16 px (an int or (y, x)). Got {size!r} instead."
        )
    return shape  # type: ignore[return-value]


def _check_perturbation(perturbation: str | None) -> None:
    if perturbation is not None and perturbation not in PERTURBATIONS:
        raise InputError(
            f"Expected a perturbation among {sorted(PERTURBATIONS)} or None. "
            f"Got {perturbation!r} instead."
        )


#: The channel whose structures each perturbation moves into the cytoplasm.
_PERTURBED_CHANNEL = {
    "wave2_cytoplasmic": "WAVE2",
    "irsp53_cytoplasmic": "IRSp53",
    "vinculin_diffuse": "vinculin",
}


@dataclass(frozen=True)
class _Textures:
    """Smooth random textures of one field (multiplicative, around 1)."""

    cytoplasm: np.ndarray
    chromatin: np.ndarray
    perturbed: np.ndarray  # where a perturbation spreads the moved mass


@dataclass
class _Canvas:
    """What the cells of one field are drawn into: pixel maps, splats and point lists."""

    labels: np.ndarray
    area: dict[str, np.ndarray]
    edge_distance: np.ndarray
    lamellipodium: np.ndarray
    nucleus_labels: np.ndarray
    splats: _Splats = field(default_factory=_Splats)
    adhesions: list[np.ndarray] = field(default_factory=list)
    tips: list[np.ndarray] = field(default_factory=list)
    centrosomes: list[np.ndarray] = field(default_factory=list)

    @classmethod
    def empty(cls, labels: np.ndarray) -> "_Canvas":
        shape = labels.shape
        return cls(
            labels=labels,
            area={c: np.zeros(shape, np.float32) for c in CHANNELS},
            edge_distance=np.full(shape, -1.0, np.float32),
            lamellipodium=np.zeros(shape, np.float32),
            nucleus_labels=np.zeros(shape, np.int32),
        )


@dataclass(frozen=True)
class _CellMaps:
    """Per-pixel geometry of one cell inside its box (zero outside the cell's own pixels)."""

    mask: np.ndarray
    edge: np.ndarray  # distance to the edge
    thick: np.ndarray  # cytoplasm thickness
    nucleus: np.ndarray  # bool
    sector: np.ndarray  # lamellipodial sector weight
    ruffle: np.ndarray
    lam: np.ndarray  # lamellipodial band (sector × edge band)
    rim: np.ndarray  # cortical rim


def _assign_pixels(
    cells: list[_Cell], shape: tuple[int, int]
) -> tuple[np.ndarray, list[tuple[slice, slice]]]:
    """Cell labels (each pixel to the cell whose normalised radius is smallest) and each cell's
    box."""
    h, w = shape
    best = np.full(shape, np.inf)
    labels = np.zeros(shape, np.int32)
    boxes = []
    for i, cell in enumerate(cells, start=1):
        e = cell.extent()
        y0, y1 = max(0, int(cell.cy - e)), min(h, int(cell.cy + e) + 1)
        x0, x1 = max(0, int(cell.cx - e)), min(w, int(cell.cx + e) + 1)
        boxes.append((slice(y0, y1), slice(x0, x1)))
        if y1 <= y0 or x1 <= x0:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float64)
        d, _, r = cell.polar(yy, xx)
        rho = d / r
        win = (rho < 1) & (rho < best[y0:y1, x0:x1])
        best[y0:y1, x0:x1][win] = rho[win]
        labels[y0:y1, x0:x1][win] = i
    return labels, boxes


def _draw_structures(
    rng: np.random.Generator, cell: _Cell, canvas: _Canvas, perturbation: str | None
) -> _Splats:
    """Centrosome, stress fibres, filopodia and microtubules of one cell.

    Returns the splats of the structures the perturbation moves (drawn there instead of
    into ``canvas.splats``).
    """
    ncy, ncx = cell.nucleus_centre
    cs_ang = rng.uniform(-np.pi, np.pi)
    cs_dist = cell.nuc_axes[0] + 3.0
    centrosome = np.array([ncy + cs_dist * np.sin(cs_ang), ncx + cs_dist * np.cos(cs_ang)])
    canvas.centrosomes.append(centrosome)
    splats, moved = canvas.splats, _Splats()
    _stress_fibres(
        rng, cell, splats, canvas.adhesions, moved if perturbation == "vinculin_diffuse" else splats
    )
    _filopodia(
        rng, cell, splats, canvas.tips, moved if perturbation == "irsp53_cytoplasmic" else splats
    )
    _microtubules(rng, cell, splats, centrosome)
    return moved


def _cell_maps(cell: _Cell, box: tuple[slice, slice], m: np.ndarray) -> _CellMaps:
    yy, xx = np.mgrid[box[0], box[1]].astype(np.float64)
    d, theta, r = cell.polar(yy, xx)
    e = np.where(m, r - d, 0.0)
    rho = np.where(m, d / r, 1.0)
    ncy, ncx = cell.nucleus_centre
    ca, sa = math.cos(cell.nuc_angle), math.sin(cell.nuc_angle)
    ny, nx = yy - ncy, xx - ncx
    nrho = np.hypot((nx * ca + ny * sa) / cell.nuc_axes[0], (-nx * sa + ny * ca) / cell.nuc_axes[1])
    s = cell.lam_weight(theta) * m
    ruffle = 0.7 + 0.3 * np.cos(
        cell.ruffle_freq * theta + cell.ruffle_phase + 0.8 * np.sin(3 * theta)
    )
    band = 1 / (1 + np.exp(np.clip((e - cell.lam_width) / 1.0, -50, 50)))
    return _CellMaps(
        mask=m,
        edge=e,
        thick=np.clip(1 - 0.55 * rho**2, 0, 1) * m,
        nucleus=(nrho < 1) & m,
        sector=s,
        ruffle=ruffle,
        lam=s * band,
        rim=np.exp(-e / 1.5) * m,
    )


def _paint_channels(
    ex: dict[str, float],
    g: _CellMaps,
    area: dict[str, np.ndarray],
    tex: np.ndarray,
    chrom: np.ndarray,
) -> dict[str, np.ndarray]:
    """Add one cell's area signal to every channel (``area`` holds views of its box).

    Returns the edge signals of WAVE2 and IRSp53, which their perturbations move.
    """
    m, e, thick, nuc, s, ruffle = g.mask, g.edge, g.thick, g.nucleus, g.sector, g.ruffle
    area["actin"] += ex["actin"] * (
        250 * thick * tex * (1 - 0.5 * nuc) + 700 * g.rim * (1 - s) + 2000 * g.lam * ruffle
    )
    wave2_edge = 1800 * ex["WAVE2"] * s * np.exp(-e / 1.5) * ruffle * m
    irsp53_edge = ex["IRSp53"] * (900 * s * np.exp(-e / 2.0) * ruffle + 200 * g.rim * (1 - s)) * m
    area["WAVE2"] += 30 * ex["WAVE2"] * thick * tex + wave2_edge
    area["IRSp53"] += 50 * ex["IRSp53"] * thick * tex + irsp53_edge
    area["vinculin"] += 60 * ex["vinculin"] * thick * tex
    area["tubulin"] += 50 * ex["tubulin"] * thick * tex * (1 - 0.3 * nuc)
    area["nuclei"] += 1500 * ex["nuclei"] * nuc * chrom
    return {"WAVE2": wave2_edge, "IRSp53": irsp53_edge}


def _spread_moved(
    perturbation: str,
    moved: _Splats,
    edges: dict[str, np.ndarray],
    area: dict[str, np.ndarray],
    spread: np.ndarray,
    shape: tuple[int, int],
) -> None:
    """Move the perturbed structure's mass into the cytoplasm: same amount per cell, shaped by
    ``spread``."""
    channel = _PERTURBED_CHANNEL[perturbation]
    mass = moved.mass_inside(channel, shape)
    if channel in edges:
        area[channel] -= edges[channel]
        mass += float(edges[channel].sum())
    area[channel] += spread * (mass / max(float(spread.sum()), 1e-6))


def _paint_cell(
    cell: _Cell,
    label: int,
    box: tuple[slice, slice],
    canvas: _Canvas,
    tex: _Textures,
    perturbation: str | None,
    moved: _Splats,
) -> None:
    """Draw one cell's area-filling signal (cytoplasm, rim, lamellipodium, nucleus) and its
    ground truth."""
    if box[0].stop <= box[0].start or box[1].stop <= box[1].start:
        return
    m = canvas.labels[box] == label
    if not m.any():
        return
    g = _cell_maps(cell, box, m)
    canvas.edge_distance[box][m] = g.edge[m]
    canvas.nucleus_labels[box][g.nucleus] = label
    canvas.lamellipodium[box] = np.maximum(canvas.lamellipodium[box], g.lam.astype(np.float32))
    area = {c: a[box] for c, a in canvas.area.items()}  # views: painting them paints the field
    edges = _paint_channels(cell.expression, g, area, tex.cytoplasm[box], tex.chromatin[box])
    if perturbation is not None:
        _spread_moved(
            perturbation, moved, edges, area, g.thick * tex.perturbed[box], canvas.labels.shape
        )


def _expose(
    canvas: _Canvas, rng: np.random.Generator
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, float]]:
    """PSF blur, background, Poisson shot noise, offset and read noise:
    ``(images, clean, background)``."""
    shape = canvas.labels.shape
    clean: dict[str, np.ndarray] = {}
    images: dict[str, np.ndarray] = {}
    background: dict[str, float] = {}
    for channel, nrng in zip(CHANNELS, rng.spawn(len(CHANNELS))):
        signal = gaussian_blur(canvas.area[channel] + canvas.splats.draw(channel, shape), PSF_SIGMA)
        expected = np.clip(signal, 0, None) + BACKGROUND[channel]
        clean[channel] = (expected + OFFSET_ADU).astype(np.float32)
        background[channel] = BACKGROUND[channel] + OFFSET_ADU
        counts = nrng.poisson(expected).astype(np.float32)
        counts += OFFSET_ADU + nrng.normal(0, READ_NOISE_ADU, shape).astype(np.float32)
        images[channel] = np.clip(np.rint(counts), 0, 65535).astype(np.uint16)
    return images, clean, background


def simulate_field(
    size: int | Sequence[int],
    rng: np.random.Generator,
    *,
    n_cells: int | None = None,
    perturbation: str | None = None,
) -> SyntheticField:
    """Render one field of synthetic cells with its ground truth.

    Parameters
    ----------
    size
        Field size in pixels: an int (square) or ``(y, x)``.
    rng
        Random generator; the same generator state gives identical pixels.  Three child
        generators are spawned from it (structure, perturbation, noise), so a perturbation
        changes only the channel it perturbs.
    n_cells
        Number of cells; default a Poisson draw scaled to the field area (about 5 in a
        256² field; cells have a radius of about 42 px whatever the field size).
    perturbation
        ``None`` or a key of :data:`PERTURBATIONS`.

    Returns
    -------
    SyntheticField
        Noisy ``uint16`` images, their noise-free expectation and the ground truth.
    """
    shape = parse_shape(size)
    _check_perturbation(perturbation)
    rng_struct, rng_pert, rng_noise = rng.spawn(3)
    cells = _place_cells(rng_struct, shape, n_cells)
    for cell in cells:
        cell.expression = _expression(rng_struct)
    cytoplasm = 1 + 0.25 * _smooth_noise(rng_struct, shape, 3.0)
    chromatin = np.clip(1 + 0.3 * _smooth_noise(rng_struct, shape, 1.5), 0.2, None)
    tex = _Textures(cytoplasm, chromatin, perturbed=1 + 0.25 * _smooth_noise(rng_pert, shape, 3.0))
    labels, boxes = _assign_pixels(cells, shape)
    canvas = _Canvas.empty(labels)
    for i, (cell, box) in enumerate(zip(cells, boxes), start=1):  # rng_struct draws in this order
        moved = _draw_structures(rng_struct, cell, canvas, perturbation)
        _paint_cell(cell, i, box, canvas, tex, perturbation, moved)
    images, clean, background = _expose(canvas, rng_noise)
    return SyntheticField(
        images=images,
        clean=clean,
        background=background,
        labels=labels,
        nucleus_labels=canvas.nucleus_labels,
        edge_distance=canvas.edge_distance,
        lamellipodium=canvas.lamellipodium,
        adhesions=np.array(canvas.adhesions, np.float64).reshape(-1, 2),
        centrosomes=np.array(canvas.centrosomes, np.float64).reshape(-1, 2),
        filopodium_tips=np.array(canvas.tips, np.float64).reshape(-1, 2),
        perturbation=perturbation,
    )


def render_field(
    size: int | Sequence[int],
    rng: np.random.Generator,
    *,
    n_cells: int | None = None,
    perturbation: str | None = None,
) -> dict[str, np.ndarray]:
    """Render one noisy field: ``uint16`` images keyed by the names in :data:`CHANNELS`.

    See :func:`simulate_field` (same arguments) for the ground truth, and the module
    docstring for what each channel shows.

    Examples
    --------
    >>> import numpy as np
    >>> imgs = render_field(128, np.random.default_rng(0))
    >>> list(imgs) == list(CHANNELS), imgs["actin"].dtype.name, imgs["actin"].shape
    (True, 'uint16', (128, 128))
    """
    return simulate_field(size, rng, n_cells=n_cells, perturbation=perturbation).images
