"""A checkpoint trained with ``--target A,B`` predicts both: k channels in one crash-safe write
(issue 28)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
from conftest import tree_digest

import omeloc
from omeloc.cli import main
from omeloc.learn.stain import VirtualStain
from omeloc.writeback.protocol import recover

TARGETS = ("WAVE2", "IRSp53")
VIRTUAL = ("WAVE2 (virtual)", "IRSp53 (virtual)")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("multi")
    plate = omeloc.make_plate(
        root / "plate.zarr",
        rows=1,
        cols=2,
        fields=1,
        size=64,
        chunks=(32, 32),
        levels=2,
        channels=("actin", *TARGETS),
    )
    res = omeloc.train(
        plate,
        "actin",
        list(TARGETS),
        out=root / "model",
        steps=2,
        crop=32,
        batch_size=2,
        depth=2,
        base_channels=4,
        val_wells=["A2"],
        progress=False,
    )
    return plate, str(res.checkpoint), res


@pytest.fixture
def plate(trained, tmp_path):
    dst = tmp_path / "p.zarr"
    shutil.copytree(trained[0], dst)
    return dst


def _predict(plate, ckpt, *extra) -> int:
    return main(
        [
            "-q",
            "predict",
            str(plate),
            "--model",
            ckpt,
            "--device",
            "cpu",
            "--precision",
            "fp32",
            *extra,
        ]
    )


def test_training_records_metrics_per_target(trained):
    per = trained[2].metrics["per_target"]
    assert set(per) == set(TARGETS)
    assert all(np.isfinite(per[t]["val_pearson_r"]) and per[t]["val_l1"] >= 0 for t in TARGETS)


def test_two_targets_written_as_two_channels_equal_to_the_model(plate, trained, tmp_path, capsys):
    before = tree_digest(plate)
    assert _predict(plate, trained[1]) == 0, capsys.readouterr().err
    assert "channels 'WAVE2 (virtual)', 'IRSp53 (virtual)'" in capsys.readouterr().out
    after = tree_digest(plate)
    assert all(
        after[k] == v
        for k, v in before.items()
        if not k.endswith(("zarr.json", ".zattrs", ".zarray"))
    )
    stain = VirtualStain(trained[1])
    for img in omeloc.open_plate(plate).images:
        assert img.channel_names == ("actin", *TARGETS, *VIRTUAL)
        actin = img.channel("actin", 0).compute().astype(np.float32)
        want = stain(actin[None], device="cpu", precision="fp32")
        for k, name in enumerate(VIRTUAL):
            got = img.channel(name, 0).compute().astype(np.float64)
            assert np.abs(got - np.clip(np.round(want[k]), 0, 65535)).max() <= 1
            assert img.channel(name, 1).compute().shape == img.channel("actin", 1).compute().shape
        prov = img.attrs["omeloc"]["channels"]
        assert [prov[n]["target_channel"] for n in VIRTUAL] == list(TARGETS)
    # per-target metrics: evaluate each virtual channel against its real one
    for name, truth in zip(VIRTUAL, TARGETS):
        res = omeloc.evaluate(plate, name, truth, out=tmp_path / f"eval-{truth}", metric="mae")
        assert np.isfinite(res.summary["fields_mean"]["mae"])


def test_names_one_per_target_or_refused(plate, trained, capsys):
    before = tree_digest(plate)
    assert _predict(plate, trained[1], "--name", "only one") == 2
    err = capsys.readouterr().err.strip()
    assert "Expected 2 distinct channel names" in err and len(err.splitlines()) == 1
    assert tree_digest(plate) == before
    assert _predict(plate, trained[1], "--name", "w2,i53") == 0
    assert omeloc.open_plate(plate).channel_names[-2:] == ("w2", "i53")


def test_two_targets_with_uncertainty_write_four_channels(plate, trained):
    assert _predict(plate, trained[1], "--uncertainty") == 0
    img = omeloc.open_plate(plate).images[0]
    assert img.channel_names[3:] == (*VIRTUAL, "WAVE2 (uncertainty)", "IRSp53 (uncertainty)")
    prov = img.attrs["omeloc"]["channels"]
    assert prov["IRSp53 (uncertainty)"]["uncertainty_of"] == "IRSp53 (virtual)"
    assert prov["WAVE2 (virtual)"]["uncertainty_channel"] == "WAVE2 (uncertainty)"
    actin = img.channel("actin", 0).compute().astype(np.float32)
    _, spread = VirtualStain(trained[1]).with_spread(actin[None], device="cpu", precision="fp32")
    assert spread[1].max() > spread[1].min()
    for k, name in enumerate(("WAVE2 (uncertainty)", "IRSp53 (uncertainty)")):
        got = img.channel(name, 0).compute().astype(np.float64)
        assert np.abs(got - np.clip(np.round(spread[k]), 0, 65535)).max() <= 1


def test_a_killed_two_target_run_rolls_back_both(plate, trained):
    before = tree_digest(plate)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMELOC_TEST_")}
    env.update(OMELOC_TEST_KILL_AT="level0_mid", OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "omeloc.cli",
            "-q",
            "predict",
            str(plate),
            "--model",
            trained[1],
            "--device",
            "cpu",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert recover(plate) == "rollback"
    assert tree_digest(plate) == before
