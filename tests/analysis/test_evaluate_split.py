"""evaluate labels wells by the checkpoint's split, scores the no-learning baseline, explains the
noise ceiling."""

from __future__ import annotations

import csv
import json
import math
import shutil

import numpy as np
import pytest
from matplotlib.image import imread
from scipy import ndimage, stats

import omeloc
from omeloc.analysis.evaluate import evaluate
from omeloc.analysis.figures import HELD_OUT_COLOR, plate_heatmap
from omeloc.cli import main
from omeloc.writeback.protocol import add_channel

VIRTUAL = "WAVE2 (virtual)"


@pytest.fixture(scope="module")
def trained(tiny_trained, tmp_path_factory):
    shared, ckpt, _ = tiny_trained(size=64, chunk=32, reference=False)
    plate = tmp_path_factory.mktemp("split") / shared.name  # a copy of the training plate
    shutil.copytree(shared, plate)
    assert main(["-q", "predict", str(plate), "--model", str(ckpt)]) == 0
    return plate, ckpt


def _csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_evaluate_labels_training_and_held_out_wells_from_the_checkpoint(trained, tmp_path, capsys):
    plate, ckpt = trained
    out = tmp_path / "eval"
    assert (
        main(
            ["-q", "evaluate", str(plate), "--pred", VIRTUAL, "--truth", "WAVE2", "--out", str(out)]
        )
        == 0
    )
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("held-out wells (validation) (A2): 1 field(s), mean pearson_r ")
    assert "(baseline " in lines[0] and lines[1].startswith("training wells")
    assert lines[2].startswith("all 2 field(s)")
    fields, wells = _csv(out / "metrics.csv"), _csv(out / "wells.csv")
    assert {r["well"]: r["split"] for r in fields} == {"A1": "train", "A2": "validation"}
    assert {r["well"]: r["split"] for r in wells} == {"A1": "train", "A2": "validation"}
    summary = json.loads((out / "summary.json").read_text())
    assert [s["split"] for s in summary["splits"]] == ["validation", "train"]
    assert summary["checkpoint"] == str(ckpt.resolve())
    img = omeloc.open_plate(plate).image("A/2/0")
    src, truth = (np.asarray(img.channel(c)).astype(float).ravel() for c in ("actin", "WAVE2"))
    held = next(r for r in fields if r["well"] == "A2")
    assert float(held["baseline_pearson_r"]) == pytest.approx(
        stats.pearsonr(src, truth)[0], abs=1e-9
    )
    assert summary["splits"][0]["fields_mean"]["baseline_pearson_r"] == pytest.approx(
        float(held["baseline_pearson_r"])
    )


def test_evaluate_calls_wells_of_another_plate_unseen(trained, tmp_path):
    _, ckpt = trained
    other = omeloc.make_plate(
        tmp_path / "other.zarr",
        rows=1,
        cols=2,
        fields=1,
        size=64,
        chunks=(32, 32),
        levels=2,
        channels=("actin", "WAVE2"),
        seed=5,
    )
    assert main(["-q", "predict", str(other), "--model", str(ckpt)]) == 0
    res = evaluate(other, VIRTUAL, "WAVE2", out=tmp_path / "eval", model=str(ckpt))
    assert res.column("split") == ["unseen", "unseen"] and res.column("split", "wells") == [
        "unseen",
        "unseen",
    ]


def test_evaluate_without_a_checkpoint_says_split_unknown(trained, tmp_path):
    plate, _ = trained
    copy = tmp_path / "copied" / plate.name
    shutil.copytree(plate, copy)
    res = evaluate(copy, VIRTUAL, "WAVE2", out=tmp_path / "e1", model=None)
    assert res.column("split") == [
        "train",
        "validation",
    ]  # a copy of the training plate is not "unseen"
    shutil.move(str(trained[1]), str(tmp_path / "moved"))
    try:
        res = evaluate(copy, VIRTUAL, "WAVE2", out=tmp_path / "e2")
        assert res.column("split") == ["unknown", "unknown"]
    finally:
        shutil.move(str(tmp_path / "moved"), str(trained[1]))


def test_heatmap_prints_values_and_outlines_held_out_wells(tmp_path):
    values = {"A/1": 0.5, "A/2": 0.25, "B/1": 0.75}
    fig = plate_heatmap(
        values, ["A", "B"], ["1", "2"], tmp_path / "h.png", held_out=["A/2"], annotate=True
    )
    assert fig.texts == {"A/1": "0.50", "A/2": "0.25", "B/1": "0.75"}
    png = imread(fig.path)
    for well, outlined in (("A/2", True), ("A/1", False)):
        x0, y0, x1, y1 = fig.boxes[well]
        x, y = round((x0 + x1) / 2), round(y0 + 0.08 * (y1 - y0))  # on the outline's top edge
        band = png[y - 2 : y + 3, x, :3]
        is_black = np.any(np.all(np.abs(band - np.array(HELD_OUT_COLOR[:3])) < 0.1, axis=1))
        assert is_black == outlined


def test_noise_ceiling_not_estimable_on_real_cells(shared_data, tmp_path, capsys):
    folder = shared_data / "nf1_plate2"
    if not folder.is_dir():
        pytest.skip(f"{folder} is missing")
    plate = omeloc.import_tiff(
        folder,
        tmp_path / "nf1.zarr",
        preset="nf1",
        channel_names={"RFP": "actin", "GFP": "ER", "DAPI": "nuclei"},
    )
    opened = omeloc.open_plate(plate)
    blurred = {
        img.path: ndimage.gaussian_filter(np.asarray(img.channel("ER")).astype(float), 2)
        for img in opened.images
    }
    add_channel(
        plate,
        "ER (virtual)",
        blurred,
        provenance={"source_channels": ["actin"]},
        scheduler="synchronous",
    )
    assert (
        main(
            [
                "-q",
                "evaluate",
                str(plate),
                "--pred",
                "ER (virtual)",
                "--truth",
                "ER",
                "--level",
                "1",
                "--out",
                str(tmp_path / "e"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "noise_ceiling not estimable" in out and "noise_ceiling 1.000" not in out
    rows = _csv(tmp_path / "e" / "metrics.csv")
    assert all(math.isnan(float(r["noise_ceiling"])) for r in rows)
    assert all(r["split"] == "unknown" for r in rows)


def test_checkpoint_records_the_training_plate_as_an_absolute_path(trained, tmp_path, monkeypatch):
    plate, _ = trained
    shutil.copytree(plate, tmp_path / "rel.zarr")
    monkeypatch.chdir(tmp_path)
    res = omeloc.train(
        "rel.zarr",
        "actin",
        "WAVE2",
        out="m",
        steps=1,
        crop=32,
        batch_size=2,
        depth=2,
        base_channels=4,
        val_wells=["A2"],
        progress=False,
    )
    assert omeloc.load_checkpoint(res.checkpoint).provenance["plates"] == [
        str(tmp_path / "rel.zarr")
    ]
