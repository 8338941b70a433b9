"""evaluate(): per-field and per-well metrics of a virtual channel, files, figures, screening."""

from __future__ import annotations

import csv
import functools
import json
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import tree_digest
from matplotlib.image import imread
from scipy import ndimage, stats
from skimage import metrics as skm

from omeloc.errors import ChannelNotFoundError, InputError
from omeloc.analysis.evaluate import EvaluationResult, evaluate
from omeloc.ngff.writer import write_image, write_plate
from omeloc.analysis.figures import MISSING_COLOR
from omeloc.writeback.protocol import add_channel

ROWS, COLS, FIELDS, SIZE = ("A", "B"), ("1", "2", "3"), ("0", "1"), 64
WELLS = [("A", "1"), ("A", "2"), ("A", "3"), ("B", "1"), ("B", "2")]  # B3 left empty
SHUFFLED = "A/2"
VIRTUAL = "WAVE2 (virtual)"


def _truths(seed: int = 0) -> dict[str, np.ndarray]:
    """Smooth 'cells' with noise, per image path: actin and WAVE2 share structure."""
    rng = np.random.default_rng(seed)
    out = {}
    for r, c in WELLS:
        for f in FIELDS:
            base = ndimage.gaussian_filter(rng.random((SIZE, SIZE)), 3)
            base = (base - base.min()) / np.ptp(base)
            actin = 500 + 3000 * base + rng.normal(0, 60, base.shape)
            wave2 = 300 + 2500 * base**2 + rng.normal(0, 60, base.shape)
            out[f"{r}/{c}/{f}"] = np.clip(np.stack([actin, wave2]), 0, 65535).astype(np.uint16)
    return out


def _predictions(truths: dict[str, np.ndarray], seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    preds = {}
    for path, arr in truths.items():
        wave2 = arr[1].astype(float)
        if path.startswith(SHUFFLED + "/"):
            pred = rng.permutation(wave2.ravel()).reshape(wave2.shape)  # breaks the relationship
        else:
            pred = ndimage.gaussian_filter(wave2, 1) + rng.normal(0, 40, wave2.shape)
        preds[path] = pred
    return preds


@functools.lru_cache(maxsize=None)
def _template(version: str, root: str) -> Path:
    truths = _truths()
    images = {tuple(p.split("/")): a for p, a in truths.items()}
    path = write_plate(
        Path(root) / f"eval{version}.zarr",
        images,
        channel_names=["actin", "WAVE2"],
        ngff_version=version,
        chunks=(32, 32),
        levels=2,
        rows=ROWS,
        columns=COLS,
    )
    add_channel(
        path,
        VIRTUAL,
        _predictions(truths),
        provenance={"source_channels": ["actin"], "model": "test"},
        scheduler="synchronous",
    )
    return path


@pytest.fixture(scope="module", params=["0.5", "0.4"])
def plate(request, tmp_path_factory):
    return _template(request.param, str(tmp_path_factory.mktemp("evalplates")))


@pytest.fixture(scope="module")
def result(plate, tmp_path_factory):
    digest = tree_digest(plate)
    res = evaluate(plate, VIRTUAL, "WAVE2", out=tmp_path_factory.mktemp("out") / "eval")
    assert tree_digest(plate) == digest  # evaluate never writes into the plate
    return res


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _stored(plate: Path, image: str, channel: int) -> np.ndarray:
    """Pixels read back with zarr directly (an independent reader)."""
    return np.asarray(zarr.open_array(str(plate / image / "0"), mode="r")[channel]).astype(float)


def test_metrics_csv_matches_reference(plate, result: EvaluationResult):
    rows = _read_csv(result.files["metrics_csv"])
    assert len(rows) == len(WELLS) * len(FIELDS) == len(result.fields)
    for col in (
        "well",
        "field",
        "pearson_r",
        "ssim",
        "psnr",
        "nrmse",
        "mae",
        "pearson_r_fg",
        "noise_ceiling",
    ):
        assert col in rows[0]
    assert {r["well"] for r in rows} == {"A1", "A2", "A3", "B1", "B2"}
    for r in rows[:3] + [x for x in rows if x["well"] == "A2"][:1]:
        pred, truth = _stored(plate, r["path"], 2), _stored(plate, r["path"], 1)
        rng = truth.max() - truth.min()
        assert float(r["pearson_r"]) == pytest.approx(
            stats.pearsonr(pred.ravel(), truth.ravel())[0], abs=1e-9
        )
        assert float(r["ssim"]) == pytest.approx(
            skm.structural_similarity(truth, pred, data_range=rng, gaussian_weights=True), abs=1e-6
        )
        assert float(r["psnr"]) == pytest.approx(
            skm.peak_signal_noise_ratio(truth, pred, data_range=rng), abs=1e-9
        )
        assert float(r["nrmse"]) == pytest.approx(skm.normalized_root_mse(truth, pred), rel=1e-9)
        assert float(r["mae"]) == pytest.approx(np.abs(pred - truth).mean(), rel=1e-9)
    good = [float(r["pearson_r"]) for r in rows if r["well"] != "A2"]
    bad = [float(r["pearson_r"]) for r in rows if r["well"] == "A2"]
    assert min(good) > 0.9 and max(abs(b) for b in bad) < 0.2
    # the ceiling is above what a good prediction reaches, and about where a perfect one would be
    assert all(0.9 < float(r["noise_ceiling"]) <= 1.0 for r in rows)


def test_wells_csv_and_screening(result: EvaluationResult):
    wells = _read_csv(result.files["wells_csv"])
    assert [w["well"] for w in wells] == ["A1", "A2", "A3", "B1", "B2"]
    for w in wells:
        fields = [f for f in result.fields if f["well"] == w["well"]]
        assert int(w["n_fields"]) == 2
        assert float(w["pearson_r"]) == pytest.approx(np.mean([f["pearson_r"] for f in fields]))
    z = {w["well"]: float(w["z"]) for w in wells}
    assert z["A2"] < -3
    assert result.flagged == ["A2"]
    assert [w["flag"] for w in wells] == ["False", "True", "False", "False", "False"]


def test_summary_json(result: EvaluationResult):
    summary = json.loads(result.files["summary_json"].read_text())
    assert summary["source"] == "actin"  # from the virtual channel's provenance
    assert summary["flagged_wells"] == ["A/2"]
    assert summary["n_fields"] == 10 and summary["n_wells"] == 5
    assert summary["fields_mean"]["pearson_r"] == pytest.approx(np.mean(result.column("pearson_r")))
    assert set(summary["files"]) == {
        "metrics_csv",
        "wells_csv",
        "heatmap",
        "montage",
        "summary_json",
    }


def test_heatmap_and_montage_written(result: EvaluationResult):
    png = imread(result.files["heatmap"])
    assert png.ndim == 3 and png[..., :3].std() > 0.05
    # B3 has no well: its cell is grey.  Recompute the layout the same way the figure did.
    from omeloc.analysis.figures import plate_heatmap

    values = {w["path"]: w["pearson_r"] for w in result.wells}
    layout = plate_heatmap(values, ROWS, COLS, result.files["heatmap"].with_name("again.png"))
    assert layout.size_px == png.shape[:2]
    x, y = layout.center("B/3")
    np.testing.assert_allclose(png[y, x, :3], MISSING_COLOR[:3], atol=0.02)
    x, y = layout.center("A/1")
    assert not np.allclose(png[y, x, :3], MISSING_COLOR[:3], atol=0.05)
    m = imread(result.files["montage"])
    assert m.shape[0] > 100 and m.shape[1] > 300 and m[..., :3].std() > 0.05


def test_options(plate, tmp_path):
    res = evaluate(
        plate,
        VIRTUAL,
        "WAVE2",
        out=tmp_path / "o",
        level=1,
        wells=["A1", "A/2", "B2"],
        source=None,
        metric="ssim",
        montage_wells=[],
        control_wells=["A1", "B2"],
        noise_ceiling=False,
        foreground=50,
    )
    assert [w["well"] for w in res.wells] == ["A1", "A2", "B2"]
    assert "montage" not in res.files and res.files["heatmap"].name == "heatmap_ssim.png"
    assert all(np.isnan(f["noise_ceiling"]) for f in res.fields)
    assert all(f["fg_fraction"] == pytest.approx(0.5, abs=0.01) for f in res.fields)
    assert {w["well"]: w["control"] for w in res.wells} == {"A1": True, "A2": False, "B2": True}
    assert res.wells[1]["z"] < -3 and res.wells[1]["flag"]
    pred = np.asarray(zarr.open_array(str(plate / "A/1/0/1"), mode="r")[2]).astype(float)
    truth = np.asarray(zarr.open_array(str(plate / "A/1/0/1"), mode="r")[1]).astype(float)
    assert pred.shape == (SIZE // 2, SIZE // 2)
    assert res.fields[0]["path"] == "A/1/0"
    assert res.fields[0]["pearson_r"] == pytest.approx(
        stats.pearsonr(pred.ravel(), truth.ravel())[0], abs=1e-9
    )


def test_single_image(tmp_path):
    truth = _truths()["A/1/0"]
    pred = np.clip(_predictions({"A/1/0": truth})["A/1/0"], 0, 65535).astype(np.uint16)
    path = write_image(
        tmp_path / "img.zarr",
        np.concatenate([truth, pred[None]]),
        channel_names=["actin", "WAVE2", "pred"],
        chunks=(32, 32),
        levels=1,
    )
    res = evaluate(path, "pred", "WAVE2", out=tmp_path / "out", source="actin")
    assert len(res.fields) == 1 and res.fields[0]["well"] == "" and res.fields[0]["pearson_r"] > 0.9
    assert "heatmap" not in res.files and res.files["montage"].is_file()
    assert res.summary["flagged_wells"] == []


def test_errors(plate, tmp_path):
    with pytest.raises(
        ChannelNotFoundError, match="Available channels: actin, WAVE2, WAVE2 \\(virtual\\)"
    ):
        evaluate(plate, "nope", "WAVE2", out=tmp_path / "x")
    with pytest.raises(ChannelNotFoundError):
        evaluate(plate, VIRTUAL, "WAVE2", out=tmp_path / "x", source="DAPI")
    with pytest.raises(InputError, match="level between 0 and 1"):
        evaluate(plate, VIRTUAL, "WAVE2", out=tmp_path / "x", level=2)
    with pytest.raises(InputError, match="Did you mean 'pearson_r'"):
        evaluate(plate, VIRTUAL, "WAVE2", out=tmp_path / "x", metric="pearson")
    with pytest.raises(InputError, match="outside the plate"):
        evaluate(plate, VIRTUAL, "WAVE2", out=plate / "eval")
    with pytest.raises(InputError, match="control wells among the evaluated wells. Got B/1"):
        evaluate(
            plate, VIRTUAL, "WAVE2", out=tmp_path / "x", wells=["A1", "A3"], control_wells=["B1"]
        )
    assert not (tmp_path / "x").exists()
    assert not (plate / "eval").exists()


# -- screening readout (pure) ----------------------------------------------------------------------
def test_robust_z_matches_scipy_mad():
    from omeloc.analysis.screening import robust_z

    rng = np.random.default_rng(3)
    controls = rng.normal(0.8, 0.05, 40)
    values = np.array([0.8, 0.5, 0.95, np.nan])
    mad = stats.median_abs_deviation(controls, scale="normal")  # 1.4826 * MAD
    want = (values - np.median(controls)) / mad
    np.testing.assert_allclose(
        robust_z(values, controls), want, rtol=1e-3
    )  # 1.4826 vs 1/Phi^-1(3/4)
    with pytest.raises(InputError):
        robust_z([1.0], [np.nan])


def test_screen_flags_and_fallbacks():
    from omeloc.analysis.screening import screen

    values = {"A1": 0.90, "A2": 0.91, "A3": 0.92, "B1": 0.89, "B2": 0.10}
    rows = screen(values)  # controls default to all wells: the hit does not hide itself
    assert [r["well"] for r in rows if r["flag"]] == ["B2"]
    assert rows[4]["z"] < -3 and all(r["control"] for r in rows)
    rows = screen(values, ["A1", "A2", "A3"], threshold=5)
    assert [r["flag"] for r in rows] == [False, False, False, False, True]
    # MAD 0 (most controls equal): falls back to the mean absolute deviation
    rows = screen({"A1": 1.0, "A2": 1.0, "A3": 1.0, "A4": 1.3})
    assert rows[0]["z"] == 0 and rows[3]["z"] == pytest.approx(0.3 / (1.2533141 * 0.075))
    # all equal: z is 0 for equal values, infinite (and flagged) otherwise
    rows = screen({"A1": 1.0, "A2": 1.0, "A3": 0.2}, ["A1", "A2"])
    assert rows[0]["z"] == 0 and rows[2]["z"] == -np.inf and rows[2]["flag"]
    with pytest.raises(InputError, match="Got C9"):
        screen(values, ["C9"])
