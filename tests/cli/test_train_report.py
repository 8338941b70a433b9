"""`omeloc train` says when the model does not beat the no-learning baseline, and what a budget
fitted."""

from __future__ import annotations

import numpy as np
from matplotlib import colors
from matplotlib.image import imread
from scipy import ndimage

from omeloc.cli import main
from omeloc.ngff.writer import write_plate


def _plate_with_a_copied_channel(path):
    """Target == source: the source itself scores r = 1, which no model trained for seconds
    beats."""
    rng = np.random.default_rng(0)
    images = {}
    for c in ("1", "2", "3"):
        cells = ndimage.gaussian_filter(rng.random((64, 64)), 3)
        cells = (1000 + 3000 * (cells - cells.min()) / np.ptp(cells)).astype("uint16")
        images[("A", c, "0")] = np.stack([cells, cells])
    return write_plate(path, images, channel_names=["actin", "copy"], chunks=(32, 32), levels=1)


def test_train_warns_when_not_above_baseline_and_reports_the_budget(tmp_path, capsys):
    plate = _plate_with_a_copied_channel(tmp_path / "p.zarr")
    out = tmp_path / "model"
    assert (
        main(
            [
                "train",
                str(plate),
                "--source",
                "actin",
                "--target",
                "copy",
                "--out",
                str(out),
                "--minutes",
                "0.1",
                "--crop",
                "32",
                "--batch-size",
                "2",
                "--depth",
                "3",
                "--base-channels",
                "4",
                "--val-wells",
                "A3",
            ]
        )
        == 0
    )
    lines = capsys.readouterr().out.splitlines()
    warning = [line for line in lines if line.startswith("WARNING")]
    assert len(warning) == 1 and "baseline 1.000" in warning[0]
    assert "--minutes" in warning[0] and "smaller model" in warning[0] and "--depth 2" in warning[0]
    budget = next(line for line in lines if "steps fitted" in line)
    assert budget.strip().startswith("budget 0.1 min: ") and "s/step" in budget
    assert not any(line.startswith("next: omeloc predict") for line in lines)
    # the learning curve draws the baseline as a line (matplotlib's C3 red, used by nothing else
    # there)
    png = imread(out / "curves.png")[..., :3]
    red = np.array(colors.to_rgb("C3"))
    assert np.sum(np.all(np.abs(png - red) < 0.08, axis=-1)) > 50


def test_train_without_a_warning_says_predict_next(tmp_path, capsys):
    rng = np.random.default_rng(1)
    images = {
        ("A", c, "0"): np.stack(
            [ndimage.gaussian_filter(rng.random((64, 64)), 2) * 4000, rng.random((64, 64)) * 4000]
        ).astype("uint16")
        for c in ("1", "2")
    }
    plate = write_plate(
        tmp_path / "p.zarr", images, channel_names=["actin", "noise"], chunks=(32, 32), levels=1
    )
    assert (
        main(
            [
                "-q",
                "train",
                str(plate),
                "--source",
                "actin",
                "--target",
                "noise",
                "--out",
                str(tmp_path / "m"),
                "--steps",
                "2",
                "--crop",
                "32",
                "--batch-size",
                "2",
                "--depth",
                "2",
                "--base-channels",
                "4",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    warned = any(line.startswith("WARNING") for line in out.splitlines())
    assert warned != any(line.startswith("next: omeloc predict") for line in out.splitlines())
