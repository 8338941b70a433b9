"""The seed study's claims, on synthetic plates whose ground truth is known (small models, few
steps).

- ``relate`` ranks every related pair (actin → WAVE2, IRSp53, vinculin) above the unrelated one
  (actin → tubulin), on held-out wells.
- A model trained on control wells, predicted into the whole plate, flags the wells where a
  perturbation moved WAVE2 off the cell edge (screening z-score of the per-well Pearson r).
"""

from __future__ import annotations

import csv

import pytest

import omeloc

pytestmark = pytest.mark.slow

SMALL = dict(crop=64, batch_size=8, depth=2, base_channels=8, progress=False)


def test_relate_ranks_related_pairs_above_unrelated(tmp_path):
    """Ranked by structure r (fine detail; the cell footprint, which any channel predicts, removed).

    One joint model actin → (WAVE2, IRSp53, vinculin, tubulin) keeps this test at ~2 minutes;
    benchmarks/translate_proteins.py measures separate models per pair.
    """
    channels = ["actin", "WAVE2", "IRSp53", "vinculin", "tubulin"]
    plate = omeloc.make_plate(
        tmp_path / "p.zarr",
        rows=2,
        cols=2,
        fields=1,
        size=256,
        seed=3,
        chunks=(256, 256),
        levels=1,
        channels=channels,
    )
    res = omeloc.relate(
        plate,
        channels,
        sources=["actin"],
        out=tmp_path / "rel",
        val_wells=["B2"],
        budget=300,
        crop=96,
        batch_size=4,
        depth=3,
        base_channels=16,
        joint=True,
        progress=False,
    )
    s = {row["target"]: row["structure_r"] for row in res.rows}
    assert set(s) == {"WAVE2", "IRSp53", "vinculin", "tubulin"}
    assert min(s["WAVE2"], s["IRSp53"], s["vinculin"]) > s["tubulin"] + 0.1, s
    assert abs(s["tubulin"]) < 0.1, s
    with open(res.files["relate_csv"], newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {"source", "target", "pearson_r", "baseline_r", "structure_r"} <= set(rows[0])
    assert res.files["heatmap"].read_bytes()[:4] == b"\x89PNG"


def test_screen_flags_the_perturbed_well(tmp_path):
    """Train on control wells, predict into the whole plate, score every well's structure r
    against the controls: the well where WAVE2 left the cell edge stands out."""
    plate = omeloc.make_plate(
        tmp_path / "p.zarr",
        rows=2,
        cols=3,
        fields=1,
        size=192,
        seed=5,
        chunks=(192, 192),
        levels=2,
        channels=("actin", "WAVE2"),
        perturbed_wells=["B3"],
        perturbation="wave2_cytoplasmic",
    )
    trained = omeloc.train(
        plate,
        "actin",
        "WAVE2",
        out=tmp_path / "m",
        steps=200,
        val_wells=["B3"],
        crop=96,
        batch_size=4,
        depth=3,
        base_channels=16,
        progress=False,
    )
    omeloc.predict(plate, trained.checkpoint, progress=False)
    res = omeloc.evaluate(
        plate,
        "WAVE2 (virtual)",
        "WAVE2",
        out=tmp_path / "eval",
        control_wells=["A1", "A2", "A3", "B1", "B2"],
        metric="structure_r",
    )
    scores = [(w["well"], round(w["structure_r"], 3), round(w["z"], 2)) for w in res.wells]
    assert res.flagged == ["B3"], scores
