"""Channels that look right in napari: colours by stain name, a virtual channel in its target's
colour, the uncertainty channel hidden in a contrasting colour."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import tifffile

import omeloc
from omeloc.cli import main
from omeloc.ngff.writer import channel_window


def _colors(path):
    return {c["label"]: c["color"] for c in omeloc.open_plate(path).images[0].omero["channels"]}


def test_synthetic_plate_colours_by_stain_name(tmp_path):
    plate = omeloc.make_plate(
        tmp_path / "p.zarr",
        rows=1,
        cols=1,
        fields=1,
        size=64,
        chunks=(64, 64),
        levels=1,
        channels=("actin", "WAVE2", "nuclei", "tubulin"),
    )
    colors = _colors(plate)
    assert (
        colors["nuclei"] == "0000FF"
        and colors["actin"] == "FF0000"
        and colors["tubulin"] == "00FFFF"
    )
    assert colors["WAVE2"] not in (
        "0000FF",
        "FF0000",
        "00FFFF",
    )  # no stain name: an unused palette colour


def test_imported_plate_colours_by_stain_name(tmp_path):
    (tmp_path / "x").mkdir()
    for c, stain in ((1, "DAPI"), (2, "GFP"), (3, "RFP")):
        tifffile.imwrite(
            tmp_path / "x" / f"B7_01_{c}_1_{stain}_001.tif", np.full((16, 16), c, "uint16")
        )
    plate = omeloc.import_tiff(tmp_path / "x", tmp_path / "p.zarr", preset="nf1", levels=1)
    assert _colors(plate) == {"DAPI": "0000FF", "GFP": "00FF00", "RFP": "FF0000"}
    renamed = omeloc.import_tiff(
        tmp_path / "x",
        tmp_path / "r.zarr",
        preset="nf1",
        levels=1,
        channel_names={"DAPI": "Hoechst", "GFP": "ER", "RFP": "phalloidin"},
    )
    assert _colors(renamed) == {"Hoechst": "0000FF", "ER": "00FF00", "phalloidin": "FF0000"}


@pytest.fixture(scope="module")
def predicted(tiny_trained, tmp_path_factory):
    shared, ckpt, _ = tiny_trained(size=64, chunk=32, reference=False)
    plate = tmp_path_factory.mktemp("colors") / shared.name  # the shared plate stays as it is
    shutil.copytree(shared, plate)
    assert main(["-q", "predict", str(plate), "--model", str(ckpt), "--uncertainty"]) == 0
    return plate


def test_virtual_channel_takes_its_targets_colour_and_its_own_contrast(predicted):
    img = omeloc.open_plate(predicted).images[0]
    by_label = {c["label"]: c for c in img.omero["channels"]}
    pred, truth = by_label["WAVE2 (virtual)"], by_label["WAVE2"]
    assert pred["color"] == truth["color"] and pred["active"] is True
    lowest = len(img.level_paths) - 1
    values = np.concatenate(
        [
            np.asarray(i.channel("WAVE2 (virtual)", lowest)).ravel()
            for i in omeloc.open_plate(predicted).images
        ]
    )
    own = channel_window(values, np.dtype(img.dtype))
    assert pred["window"]["start"] == pytest.approx(own["start"], abs=2)
    assert pred["window"]["end"] == pytest.approx(own["end"], abs=2)


def test_uncertainty_channel_is_hidden_in_a_contrasting_colour(predicted):
    by_label = {c["label"]: c for c in omeloc.open_plate(predicted).images[0].omero["channels"]}
    spread, pred = by_label["WAVE2 (uncertainty)"], by_label["WAVE2 (virtual)"]
    assert spread["active"] is False and spread["color"] != pred["color"]
    a, b = (
        np.array([int(c[i : i + 2], 16) for i in (0, 2, 4)])
        for c in (spread["color"], pred["color"])
    )
    assert np.abs(a - b).sum() >= 255
