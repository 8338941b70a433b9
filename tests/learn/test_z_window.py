"""2.5D models (``--z-window K``): K planes in, one out, on z-stacks whose target depends on the
neighbouring planes; predict writes every plane (issue 28)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import omeloc
from omeloc.cli import main
from omeloc.data.synthetic_z import make_z_plate
from omeloc.learn.models import UNet

TINY = {
    "steps": 60,
    "crop": 32,
    "batch_size": 4,
    "depth": 2,
    "base_channels": 8,
    "val_wells": ["A3"],
    "loss": "l1",
    "progress": False,
}


@pytest.fixture(scope="module")
def zplate(tmp_path_factory):
    return make_z_plate(tmp_path_factory.mktemp("z") / "z.zarr", cols=3, size=64, n_z=6)


@pytest.fixture(scope="module")
def models(zplate, tmp_path_factory):
    root = tmp_path_factory.mktemp("zmodels")
    return {
        k: omeloc.train(zplate, "phase", "nuclei", out=root / f"k{k}", z_window=k, **TINY)
        for k in (1, 3)
    }


def _r(a, b) -> float:
    return float(np.corrcoef(np.ravel(a).astype(float), np.ravel(b).astype(float))[0, 1])


def test_the_stem_is_a_3d_convolution_collapsing_z():
    net = UNet(2, 1, depth=2, base_channels=4, z_window=3).eval()
    conv = net.stem[0]
    x = torch.rand(1, 2 * 3, 16, 16)
    w3 = conv.weight.detach().reshape(4, 2, 3, 3, 3)  # (F, C, K, 3, 3)
    ref = torch.nn.functional.conv3d(x.reshape(1, 2, 3, 16, 16), w3, conv.bias, padding=(0, 1, 1))[
        :, :, 0
    ]
    assert torch.allclose(conv(x), ref, atol=1e-5)
    assert net(x).shape == (1, 1, 16, 16) and net.config["z_window"] == 3


def test_2p5d_beats_per_plane_2d_on_a_z_dependent_target(zplate, models, tmp_path):
    assert omeloc.load_checkpoint(models[3].checkpoint).z_window == 3
    assert models[3].metrics["val_pearson_r"] > models[1].metrics["val_pearson_r"] + 0.2
    import shutil

    plate = tmp_path / "z.zarr"
    shutil.copytree(zplate, plate)
    for k in (1, 3):
        assert (
            main(
                [
                    "-q",
                    "predict",
                    str(plate),
                    "--model",
                    str(models[k].checkpoint),
                    "--name",
                    f"k{k}",
                    "--wells",
                    "A3",
                    "--device",
                    "cpu",
                ]
            )
            == 0
        )
    img = omeloc.open_plate(plate).well("A3").images[0]
    truth = img.channel("nuclei", 0).compute()
    k1, k3 = (img.channel(f"k{k}", 0).compute() for k in (1, 3))
    assert k3.shape == truth.shape == (6, 64, 64)  # every z plane written
    assert _r(k3, truth) > _r(k1, truth) + 0.2
    # the stack's end planes are predicted too (their missing neighbour repeated, as in training)
    assert _r(k3[0], truth[0]) > 0.3 and _r(k3[-1], truth[-1]) > 0.3


def test_prediction_equals_the_model_on_the_stacked_planes(zplate, models, tmp_path):
    import shutil

    plate = tmp_path / "z.zarr"
    shutil.copytree(zplate, plate)
    ckpt = omeloc.load_checkpoint(models[3].checkpoint)
    assert omeloc.predict(
        plate, ckpt.path, wells=["A1"], device="cpu", precision="fp32", progress=False
    )
    img = omeloc.open_plate(plate).well("A1").images[0]
    got = img.channel("nuclei (virtual)", 0).compute().astype(np.float64)
    phase = img.channel("phase", 0).compute().astype(np.float32)
    stats = ckpt.normalization
    x = (phase - stats["phase"]["low"]) / (stats["phase"]["high"] - stats["phase"]["low"])
    net = ckpt.build_model("cpu")
    idx = np.clip(np.arange(6)[:, None] + np.arange(-1, 2)[None, :], 0, 5)
    with torch.inference_mode():
        y = net(torch.from_numpy(np.ascontiguousarray(x[idx]))).numpy()[:, 0]
    t = stats["nuclei"]
    want = np.clip(np.round(y * (t["high"] - t["low"]) + t["low"]), 0, 65535)
    assert np.abs(got - want).max() <= 2


@pytest.mark.parametrize(("k", "message"), [("2", "odd --z-window"), ("9", "at most the 6 planes")])
def test_bad_z_window_refused_in_one_line(zplate, tmp_path, capsys, k, message):
    code = main(
        [
            "-q",
            "train",
            str(zplate),
            "--source",
            "phase",
            "--target",
            "nuclei",
            "--out",
            str(tmp_path / "m"),
            "--z-window",
            k,
            "--steps",
            "1",
            "--crop",
            "32",
            "--depth",
            "2",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "m").exists()


def test_z_window_on_a_plate_without_z_refused(tmp_path, capsys, models):
    flat = omeloc.make_plate(
        tmp_path / "flat.zarr",
        rows=1,
        cols=2,
        fields=1,
        size=64,
        chunks=(32, 32),
        levels=1,
        channels=("actin", "WAVE2"),
    )
    assert (
        main(
            [
                "-q",
                "train",
                str(flat),
                "--source",
                "actin",
                "--target",
                "WAVE2",
                "--out",
                str(tmp_path / "m"),
                "--z-window",
                "3",
                "--steps",
                "1",
                "--crop",
                "32",
                "--depth",
                "2",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert "no z axis" in err and len(err.splitlines()) == 1
    # a 2.5D model on a plate without z stacks
    zeroth = omeloc.write_plate(
        tmp_path / "noz.zarr",
        {("A", "1", "0"): np.zeros((2, 64, 64), "uint16")},
        channel_names=["phase", "nuclei"],
        levels=1,
    )
    assert (
        main(
            ["-q", "predict", str(zeroth), "--model", str(models[3].checkpoint), "--device", "cpu"]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert "2.5D model" in err and "no z axis" in err and len(err.splitlines()) == 1
