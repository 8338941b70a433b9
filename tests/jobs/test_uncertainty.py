"""``omeloc predict --uncertainty``: the spread of the 8 test-time variants written beside the
prediction as ``"<target> (uncertainty)"``, in the same crash-safe write (issue 15)."""

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

PRED, SPREAD = "WAVE2 (virtual)", "WAVE2 (uncertainty)"


@pytest.fixture(scope="module")
def trained(tiny_trained):
    plate, ckpt, _ = tiny_trained(size=64, chunk=32, reference=False)
    return plate, str(ckpt)


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


def test_uncertainty_channel_at_every_level_beside_the_tta_prediction(
    plate, trained, tmp_path, capsys
):
    ckpt = trained[1]
    before = tree_digest(plate)
    assert _predict(plate, ckpt, "--uncertainty") == 0, capsys.readouterr().err
    after = tree_digest(plate)
    assert all(
        after[k] == v
        for k, v in before.items()
        if not k.endswith(("zarr.json", ".zattrs", ".zarray"))
    )
    tta = tmp_path / "tta.zarr"
    shutil.copytree(trained[0], tta)
    assert _predict(tta, ckpt, "--tta") == 0
    stain = VirtualStain(ckpt)
    for img, ref in zip(omeloc.open_plate(plate).images, omeloc.open_plate(tta).images):
        assert img.channel_names == ("actin", "WAVE2", PRED, SPREAD)
        assert [c["label"] for c in img.omero["channels"]] == list(img.channel_names)
        for level in range(len(img.level_paths)):
            np.testing.assert_array_equal(
                img.channel(PRED, level).compute(), ref.channel(PRED, level).compute()
            )
            spread = img.channel(SPREAD, level).compute()
            assert spread.shape == img.channel(PRED, level).compute().shape and spread.max() > 0
        # the written spread is VirtualStain.with_spread's, in the target's units (cast to the
        # plate's dtype)
        actin = img.channel("actin", 0).compute().astype(np.float32)
        _, want = stain.with_spread(actin[None], device="cpu", precision="fp32")
        got = img.channel(SPREAD, 0).compute().astype(np.float64)
        assert np.abs(got - np.clip(np.round(want[0]), 0, 65535)).max() <= 1
        prov = img.attrs["omeloc"]["channels"]
        assert (
            prov[PRED]["uncertainty_channel"] == SPREAD and prov[SPREAD]["uncertainty_of"] == PRED
        )
        assert prov[PRED]["tta"] is True


def test_overwrite_drops_or_adds_the_uncertainty_channel(plate, trained, capsys):
    ckpt = trained[1]
    originals = {
        k: v
        for k, v in tree_digest(plate).items()
        if not k.endswith(("zarr.json", ".zattrs", ".zarray"))
    }
    plain = plate.parent / "plain.zarr"
    shutil.copytree(trained[0], plain)
    assert _predict(plain, ckpt) == 0
    assert _predict(plate, ckpt, "--uncertainty") == 0
    # --overwrite without --uncertainty: the uncertainty goes, the prediction is the plain one
    assert _predict(plate, ckpt, "--overwrite") == 0, capsys.readouterr().err
    dropped = omeloc.open_plate(plate)
    assert dropped.channel_names == ("actin", "WAVE2", PRED)
    for img, ref in zip(dropped.images, omeloc.open_plate(plain).images):
        assert all(s[0] == 3 for s in img.shapes) and len(img.omero["channels"]) == 3
        np.testing.assert_array_equal(img.channel(PRED).compute(), ref.channel(PRED).compute())
        assert "uncertainty_channel" not in img.attrs["omeloc"]["channels"][PRED]
    # --overwrite --uncertainty on a plain prediction: both are written side by side
    assert _predict(plate, ckpt, "--overwrite", "--uncertainty") == 0, capsys.readouterr().err
    added = omeloc.open_plate(plate)
    assert added.channel_names == ("actin", "WAVE2", PRED, SPREAD)
    prov = added.images[0].attrs["omeloc"]["channels"]
    assert prov[PRED]["uncertainty_channel"] == SPREAD and prov[PRED]["tta"] is True
    after = tree_digest(plate)
    assert all(after[k] == v for k, v in originals.items())  # original chunk files never rewritten


@pytest.mark.parametrize("point", ["level0_mid", "metadata"])
def test_a_killed_run_is_rolled_back_with_both_channels(plate, trained, point):
    before = tree_digest(plate)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMELOC_TEST_")}
    env.update(OMELOC_TEST_KILL_AT=point, OMP_NUM_THREADS="1")
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
            "--uncertainty",
            "--device",
            "cpu",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert recover(plate) == "rollback"
    assert tree_digest(plate) == before  # both channels gone, every byte as it was
