"""Plate heat maps and montages: written, right size, and wells/panels where they belong."""

from __future__ import annotations

import sys

import matplotlib
import numpy as np
import pytest
from matplotlib.image import imread

from omeloc.errors import InputError
from omeloc.analysis.figures import MISSING_COLOR, display_range, montage, plate_grid, plate_heatmap


def test_plate_grid_layout():
    grid = plate_grid({"A/1": 1.0, "B/3": 2.0, "C/2": None}, ["A", "B", "C"], ["1", "2", "3"])
    assert grid.shape == (3, 3)
    assert grid[0, 0] == 1.0 and grid[1, 2] == 2.0
    assert np.isnan(grid).sum() == 7
    with pytest.raises(InputError, match="ROW/COLUMN"):
        plate_grid({"D/1": 1.0}, ["A"], ["1"])


def test_heatmap_pixels_at_wells(tmp_path):
    rows, cols = list("ABCD"), [str(i) for i in range(1, 7)]
    values = {"A/1": 0.0, "B/3": 1.0, "D/6": 0.5}
    res = plate_heatmap(
        values,
        rows,
        cols,
        tmp_path / "heat.png",
        title="pearson_r",
        label="r",
        vmin=0,
        vmax=1,
        flagged=["B/3"],
    )
    png = imread(res.path)
    assert png.shape[:2] == res.size_px
    assert png[..., :3].std() > 0.05
    assert set(res.boxes) == {f"{r}/{c}" for r in rows for c in cols}
    viridis = matplotlib.colormaps["viridis"]

    def colour(well):
        x, y = res.center(well)
        return png[y, x, :3]

    np.testing.assert_allclose(colour("A/1"), viridis(0.0)[:3], atol=0.02)
    np.testing.assert_allclose(colour("B/3"), viridis(1.0)[:3], atol=0.02)
    np.testing.assert_allclose(colour("D/6"), viridis(0.5)[:3], atol=0.02)
    np.testing.assert_allclose(colour("C/2"), MISSING_COLOR[:3], atol=0.02)  # missing well: grey
    # wells are laid out as the plate: A above D, 1 left of 6
    assert res.center("A/1")[1] < res.center("D/1")[1]
    assert res.center("A/1")[0] < res.center("A/6")[0]
    # the flagged well has a red outline just inside its cell
    x0, y0, x1, y1 = res.boxes["B/3"]
    edge = png[int(round((y0 + y1) / 2)), int(x0) + 2 : int(x0) + 6, :3]
    assert (edge[:, 0] > 0.8).any() and (edge[:, 1] < 0.3).any()


def test_heatmap_does_not_touch_pyplot(tmp_path):
    before = matplotlib.get_backend() if "matplotlib.pyplot" in sys.modules else None
    plate_heatmap({"A/1": 1.0}, ["A"], ["1"], tmp_path / "one.png")
    if before is not None:
        assert matplotlib.get_backend() == before
    else:
        assert "matplotlib.pyplot" not in sys.modules


def test_display_range():
    x = np.arange(1000, dtype=float)
    lo, hi = display_range(x, 1, 99)
    assert lo == pytest.approx(9.99) and hi == pytest.approx(989.01)
    assert display_range(np.ones((4, 4))) == (1.0, 2.0)


def test_montage_panels(tmp_path):
    real = np.zeros((64, 64))
    real[:, 32:] = 1000.0  # left half dark, right half bright
    virtual = real.copy()
    virtual[:32] += 200.0  # top half: virtual brighter → red in the difference
    virtual[32:] -= 200.0  # bottom half: dimmer → blue
    source = np.random.default_rng(0).random((64, 64))
    res = montage(
        [("B3", source, virtual, real), ("A1", source, real, real)],
        tmp_path / "m.png",
        title="WAVE2",
        panel_inches=1.0,
        dpi=80,
    )
    png = imread(res.path)
    assert png.shape[:2] == res.size_px
    assert res.size_px[1] == int(round((0.35 + 4 * 1.0) * 80))
    assert len(res.boxes) == 8
    x0, y0, x1, y1 = res.boxes[("B3", "real")]
    assert x1 - x0 == pytest.approx(80, abs=1.5) and y1 - y0 == pytest.approx(80, abs=1.5)
    yc = int((y0 + y1) / 2)
    assert png[yc, int(x0 + 0.25 * (x1 - x0)), :3].max() < 0.1  # left half of real: black
    assert png[yc, int(x0 + 0.75 * (x1 - x0)), :3].min() > 0.9  # right half: white
    x0, y0, x1, y1 = res.boxes[("B3", "difference")]
    top = png[int(y0 + 0.25 * (y1 - y0)), int((x0 + x1) / 2), :3]
    bottom = png[int(y0 + 0.75 * (y1 - y0)), int((x0 + x1) / 2), :3]
    assert top[0] > 2 * top[2] and top[0] > 2 * top[1]  # red (RdBu_r at +max is dark red)
    assert bottom[2] > 2 * bottom[0] and bottom[2] > bottom[1]  # blue
    # second row: virtual == real, difference is white (zero)
    x, y = res.center(("A1", "difference"))
    assert png[y, x, :3].min() > 0.9


def test_montage_without_input_and_3d(tmp_path):
    rng = np.random.default_rng(1)
    real = rng.random((3, 40, 50))
    res = montage([("C2", None, real + 0.1, real)], tmp_path / "m3.png", panel_inches=1.0, dpi=50)
    assert set(res.boxes) == {("C2", "virtual"), ("C2", "real"), ("C2", "difference")}
    assert imread(res.path).shape[:2] == res.size_px
    with pytest.raises(InputError):
        montage([], tmp_path / "none.png")
