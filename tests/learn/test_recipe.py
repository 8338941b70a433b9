"""The training recipe (issue 15): device defaults, model/loss/sampling options, keep-best, pix2pix
warm-up and spectral norm, test-time augmentation.  Tiny models, few steps."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tree_digest

import omeloc
from omeloc.cli import main
from omeloc.config import DEVICE_DEFAULTS, TilingConfig, TrainConfig
from omeloc.engine.inference import InMemoryModel, predict_array
from omeloc.errors import InputError
from omeloc.learn.losses import detail_l1, high_pass, ssim
from omeloc.learn.sampling import CropSampler
from omeloc.learn.stain import VirtualStain
from omeloc.learn.tta import VARIANTS, TTAModel, TTARef

TINY = dict(crop=32, batch_size=2, depth=2, base_channels=4, progress=False, val_wells=["B2"])


@pytest.fixture(scope="module")
def plate(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("recipe")
    return omeloc.make_plate(
        root / "p.zarr",
        rows=2,
        cols=2,
        fields=1,
        size=64,
        chunks=(32, 32),
        levels=2,
        channels=("actin", "WAVE2"),
        ngff="0.5",
        seed=3,
    )


@pytest.fixture(scope="module")
def field(plate) -> np.ndarray:
    """The actin channel of one field, ``(1, Y, X)``."""
    return omeloc.open_plate(plate).images[0].channel("actin").compute()[None].astype(np.float32)


# -- every option trains and predicts -----------------------------------------------------------
OPTIONS = {
    "group_norm": dict(norm="group"),
    "residual": dict(block="residual", norm="group"),
    "convnext": dict(block="convnext", norm="group"),
    "l1_ssim": dict(loss="l1+ssim"),
    "mse_ssim_detail": dict(loss="mse+ssim", detail=1.0),
    "foreground_weight": dict(foreground_weight=0.8),
    "intensity_augment": dict(intensity_augment=True),
    "keep_best": dict(keep_best="structure_r", val_every=2),
    "pix2pix_warmup_sn": dict(model="pix2pix", warmup=0.5, spectral_norm=True),
}


@pytest.mark.parametrize("name", list(OPTIONS))
def test_option_trains_and_predicts(plate, field, tmp_path, name):
    res = omeloc.train(
        plate, "actin", "WAVE2", out=tmp_path / name, steps=4, **TINY, **OPTIONS[name]
    )
    assert res.steps == 4 and np.isfinite(res.metrics["val_l1"])
    prov = omeloc.load_checkpoint(res.checkpoint).provenance
    for key, value in OPTIONS[name].items():
        assert prov[key] == value
    pred = VirtualStain(res.checkpoint)(field, device="cpu")
    assert pred.shape == field.shape and np.isfinite(pred).all()


def test_architecture_options_reach_the_checkpoint_and_the_plate(plate, tmp_path, capsys):
    work = tmp_path / "p.zarr"
    shutil.copytree(plate, work)
    res = omeloc.train(
        work, "actin", "WAVE2", out=tmp_path / "m", steps=3, block="convnext", norm="group", **TINY
    )
    arch = omeloc.load_checkpoint(res.checkpoint).architecture
    assert arch["block"] == "convnext" and arch["norm"] == "group"
    before = tree_digest(work)
    assert main(["-q", "predict", str(work), "--model", str(res.checkpoint), "--tta"]) == 0, (
        capsys.readouterr().err
    )
    after = tree_digest(work)
    assert all(after[k] == v for k, v in before.items() if not k.endswith(("zarr.json", ".zattrs")))
    p = omeloc.open_plate(work)
    assert p.channel_names[-1] == "WAVE2 (virtual)"
    assert p.images[0].attrs["omeloc"]["channels"]["WAVE2 (virtual)"]["tta"] is True
    for img in p.images:
        for level in range(2):
            assert img.channel("WAVE2 (virtual)", level).compute().std() > 0
    assert (
        "block" not in omeloc.UNet(depth=2).config
    )  # plain U-Nets stay readable by earlier versions


def test_keep_best_saves_the_best_validation(plate, tmp_path):
    res = omeloc.train(
        plate,
        "actin",
        "WAVE2",
        out=tmp_path / "m",
        steps=8,
        val_every=2,
        keep_best="pearson_r",
        lr=0.05,
        **TINY,
    )
    vals = {
        r["step"]: r["val_pearson_r"]
        for r in res.history
        if r.get("val_pearson_r") not in (None, "")
    }
    assert sorted(vals) == [2, 4, 6, 8]
    best = max(vals, key=vals.get)
    assert res.metrics["best_step"] == best and res.metrics["val_pearson_r"] == pytest.approx(
        vals[best]
    )
    # the saved weights are those of the best step
    state = torch.load(res.checkpoint / "last.pt", weights_only=True)
    assert state["best"]["step"] == best
    saved = torch.load(res.checkpoint / "weights.pt", weights_only=True)
    for k, v in state["best"]["weights"].items():
        torch.testing.assert_close(saved[k], v, rtol=0, atol=0)
    if best != 8:  # the last weights differ from the kept ones
        assert any(not torch.equal(saved[k], state["model"][k]) for k in saved)


def test_pix2pix_warmup_trains_the_generator_alone_first(plate, tmp_path):
    res = omeloc.train(
        plate,
        "actin",
        "WAVE2",
        model="pix2pix",
        out=tmp_path / "m",
        steps=8,
        warmup=0.5,
        spectral_norm=True,
        **TINY,
    )
    d_loss = {r["step"]: r["d_loss"] for r in res.history}
    assert all(d_loss[s] == "" for s in range(1, 5)) and all(
        d_loss[s] != "" for s in range(5, 9)
    ), d_loss
    disc = torch.load(res.checkpoint / "last.pt", weights_only=True)["discriminator"]
    assert any(
        "parametrizations" in k for k in disc
    )  # spectral norm on the discriminator's convolutions
    d = omeloc.PatchGAN(2, spectral_norm=True)
    assert not any(isinstance(m, torch.nn.InstanceNorm2d) for m in d.modules())


# -- losses and sampling --------------------------------------------------------------------------
def test_ssim_and_detail_losses():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 1, 32, 32, generator=g)
    assert float(ssim(x, x)) == pytest.approx(1.0, abs=1e-5)
    noisy = x + 0.3 * torch.randn(x.shape, generator=g)
    assert float(ssim(noisy, x)) < 0.9
    assert float(detail_l1(x, x + 0.5)) < 1e-5  # a constant offset has no detail
    assert float(high_pass(torch.ones(1, 1, 16, 16)).abs().max()) < 1e-6
    p = x.clone().requires_grad_(True)
    (1 - ssim(p, noisy) + detail_l1(p, noisy)).backward()
    assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


def test_foreground_weight_draws_crops_towards_the_target(tmp_path):
    """Source bright everywhere, target bright in one quarter: the weight moves crops there."""
    data = np.zeros((2, 128, 128), dtype="uint16")
    data[0] = 1000
    data[1, :64, :64] = 1000
    path = omeloc.write_image(
        tmp_path / "img.zarr", data, channel_names=["a", "b"], chunks=(64, 64), levels=1
    )
    img = omeloc.open_image(path)
    stats = {"a": {"low": 0, "high": 1000}, "b": {"low": 0, "high": 1000}}
    fractions, touching = {}, {}
    for w in (0.0, 1.0):
        s = CropSampler(
            [img], ["a"], ["b"], normalization=stats, crop=32, foreground_weight=w, augment=False
        )
        _, yb = s.batch(0, 64)
        fractions[w] = float((yb > 0.5).mean())
        touching[w] = float((yb > 0.5).any(axis=(1, 2, 3)).mean())
    # uniform: ~22 % of the pixels and ~44 % of the crops touch the bright quarter
    assert fractions[1.0] > 2 * fractions[0.0] and touching[1.0] >= 0.95 > touching[0.0], (
        fractions,
        touching,
    )


def test_intensity_augment_changes_the_source_only(plate):
    p = omeloc.open_plate(plate)
    imgs = [i for w in p.wells.values() if w.name != "B2" for i in w.images]
    stats = {c: {"low": 0.0, "high": 4000.0} for c in ("actin", "WAVE2")}
    plain = CropSampler(imgs, ["actin"], ["WAVE2"], normalization=stats, crop=32, seed=5)
    jittered = CropSampler(
        imgs, ["actin"], ["WAVE2"], normalization=stats, crop=32, seed=5, intensity_augment=True
    )
    (x0, y0), (x1, y1) = plain.batch(0, 1), jittered.batch(0, 1)
    np.testing.assert_array_equal(y0, y1)
    assert not np.allclose(x0, x1) and np.corrcoef(x0.ravel(), x1.ravel())[0, 1] > 0.8


# -- device defaults --------------------------------------------------------------------------
def test_device_defaults_and_explicit_options_win(plate, tmp_path, capsys):
    cpu, chosen = TrainConfig().with_device_defaults("cpu")
    assert chosen == dict(DEVICE_DEFAULTS["cpu"]) and (cpu.depth, cpu.crop) == (3, 128)
    gpu, _ = TrainConfig(depth=2).with_device_defaults("cuda")
    assert (gpu.depth, gpu.base_channels, gpu.crop, gpu.batch_size) == (2, 32, 256, 8)
    with pytest.raises(InputError, match="multiple of 8"):
        TrainConfig(crop=20).with_device_defaults("cpu")
    code = main(
        [
            "train",
            str(plate),
            "--source",
            "actin",
            "--target",
            "WAVE2",
            "--out",
            str(tmp_path / "m"),
            "--val-wells",
            "B2",
            "--steps",
            "2",
            "--device",
            "cpu",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    # the 64-pixel fields are smaller than the CPU default crop (128): the default shrinks to fit
    assert "device defaults (cpu): depth 3, base_channels 16, crop 64, batch_size 4" in out, out
    prov = omeloc.load_checkpoint(tmp_path / "m").provenance
    assert (prov["depth"], prov["crop"], prov["steps"]) == (3, 64, 2)


# -- test-time augmentation -------------------------------------------------------------------
def test_tta_of_an_equivariant_model_equals_the_plain_prediction():
    x = np.random.default_rng(0).random((2, 1, 100, 90)).astype(np.float32)
    ref = InMemoryModel(lambda t: 2 * t)
    out = predict_array(TTARef(ref), x, tile=48, overlap=16, out_channels=1).compute()
    np.testing.assert_allclose(out, 2 * x, rtol=1e-6, atol=1e-6)
    conv = torch.nn.Conv2d(1, 1, 3, padding=1, bias=False)
    with torch.no_grad():  # a kernel symmetric under flips and rotations
        conv.weight.copy_(torch.tensor([[[[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]]]))
    t = torch.from_numpy(x[0:1])
    with torch.no_grad():
        torch.testing.assert_close(TTAModel(conv)(t), conv(t))
        spread = TTAModel(conv, spread=True)(t)
    assert spread.shape[1] == 2 and float(spread[:, 1].abs().max()) < 1e-5
    assert len(VARIANTS) == 8 and len(set(VARIANTS)) == 8


def _symmetric_checkpoint(src: Path, dst: Path) -> Path:
    """A copy of a checkpoint whose every kernel is averaged over the 8 flips/rotations: an
    equivariant U-Net."""
    shutil.copytree(src, dst)
    weights = torch.load(dst / "weights.pt", weights_only=True)

    def sym(w: torch.Tensor) -> torch.Tensor:
        turns = [torch.rot90(w, k, dims=(-2, -1)) for k in range(4)]
        return sum(turns + [torch.flip(v, dims=(-1,)) for v in turns]) / 8

    torch.save(
        {k: sym(v) if v.ndim == 4 and v.shape[-1] > 1 else v for k, v in weights.items()},
        dst / "weights.pt",
    )
    return dst


def test_tta_of_an_equivariant_unet_checkpoint_equals_plain(plate, field, tmp_path):
    res = omeloc.train(
        plate, "actin", "WAVE2", out=tmp_path / "m", steps=3, norm="group", block="residual", **TINY
    )
    stain = VirtualStain(_symmetric_checkpoint(res.checkpoint, tmp_path / "sym"))
    settings = dict(tile=48, overlap=16, device="cpu", precision="fp32")
    plain = stain(field, **settings)
    tta = stain(field, tiling=TilingConfig(tta=True, **settings))
    np.testing.assert_allclose(tta, plain, atol=1e-4 * plain.std())
    mean, spread = stain.with_spread(field, **settings)
    np.testing.assert_allclose(mean, tta, atol=1e-4 * plain.std())
    assert spread.max() < 1e-3 * plain.std()
    # an ordinary (not equivariant) model: TTA changes the prediction, the spread is positive
    trained = VirtualStain(res.checkpoint)
    mean, spread = trained.with_spread(field, **settings)
    np.testing.assert_allclose(mean, trained(field, tta=True, **settings), rtol=1e-5, atol=1e-3)
    assert spread.mean() > 0 and spread.shape == field.shape
