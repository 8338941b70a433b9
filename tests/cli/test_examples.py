"""The examples run (with --quick: tiny plates, a few steps) and produce what they promise."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

import omeloc

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_synthetic_end_to_end(tmp_path, capsys):
    out = _load("synthetic_end_to_end").main([str(tmp_path), "--quick"])
    plate = omeloc.open_plate(out["plate"])
    assert "WAVE2 (virtual)" in plate.channel_names
    assert out["virtual"].dims[-2:] == ("y", "x")
    assert Path(out["evaluation"].files["metrics_csv"]).exists()
    assert "held-out well B3" in capsys.readouterr().out


def test_relationship_map(tmp_path):
    res = _load("relationship_map").main([str(tmp_path), "--quick"])
    assert {(r["source"], r["target"]) for r in res.rows} == {
        ("actin", "WAVE2"),
        ("actin", "tubulin"),
    }
    assert Path(res.files["heatmap"]).read_bytes()[:4] == b"\x89PNG"


def test_distributed_predict(tmp_path):
    example = _load("distributed_predict")
    out = example.main([str(tmp_path), "--quick"])  # a LocalCluster whose workers advertise GPU=1
    assert "vinculin (virtual)" in omeloc.open_plate(out["plate"]).channel_names
    loads = out["model_loads"]
    assert len(loads) == 2 and all(n <= 1 for n in loads.values()) and sum(loads.values()) >= 1, (
        loads
    )


def test_distributed_predict_recipes_say_what_to_install():
    example = _load("distributed_predict")
    for recipe, package, module in (
        ("cuda", "dask-cuda", "dask_cuda"),
        ("slurm", "dask-jobqueue", "dask_jobqueue"),
    ):
        if importlib.util.find_spec(module) is not None:
            continue  # installed: the recipe would start a real cluster
        with pytest.raises(ImportError, match=f"pip install {package}$"):
            example.RECIPES[recipe](1)


def test_distributed_predict_slurm_job_asks_for_a_gpu_and_advertises_it():
    pytest.importorskip("dask_jobqueue")
    import dask

    example = _load("distributed_predict")
    with dask.config.set({"distributed.scheduler.dashboard.enabled": False}):
        cluster = example.slurm_cluster(0, gpu_threads=2)
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    assert "#SBATCH --gres=gpu:1" in script and "--resources GPU=2" in script, script


def test_nf1_real_data(tmp_path, shared_data):
    out = _load("nf1_real_data").main(
        [str(tmp_path), "--quick", "--data", str(shared_data / "nf1_plate2")]
    )
    plate = omeloc.open_plate(out["plate"])
    assert (
        plate.channel_names == ("nuclei", "ER", "actin", "ER (virtual)")
        or "ER (virtual)" in plate.channel_names
    )
    assert -1 <= out["heldout_r"] <= 1 and -1 <= out["baseline_r"] <= 1


def test_cli_demo_runs_the_whole_journey(tmp_path, capsys):
    from omeloc.cli import main

    assert main(["-q", "demo", str(tmp_path / "d"), "--steps", "3", "--size", "64"]) == 0
    out = capsys.readouterr().out
    assert "held-out" in out and "napari" in out
    plate = omeloc.open_plate(tmp_path / "d" / "plate.zarr")
    assert plate.channel_names[-1] == "WAVE2 (virtual)"
    assert (tmp_path / "d" / "model" / "checkpoint.json").exists()
    assert (tmp_path / "d" / "evaluation" / "metrics.csv").exists()
    assert (
        main(["-q", "demo", str(tmp_path / "d"), "--steps", "3", "--size", "64"]) == 2
    )  # not empty
    assert "--overwrite" in capsys.readouterr().err
