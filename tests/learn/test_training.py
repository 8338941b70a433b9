"""Training from Zarr crops: sampling, models, checkpoints, resume, bad input (tiny models, few
steps)."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tree_digest

import omeloc
from omeloc.cli import main
from omeloc.errors import ChannelNotFoundError, CheckpointError, InputError
from omeloc.learn.checkpoint import CheckpointRef
from omeloc.learn.normalization import denormalize, normalize, percentile_stats
from omeloc.learn.sampling import CropSampler, channel_statistics

TINY = dict(crop=32, batch_size=2, depth=2, base_channels=4, progress=False)


@pytest.fixture(scope="module")
def plate(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("train")
    return omeloc.make_plate(
        root / "p.zarr",
        rows=2,
        cols=2,
        fields=2,
        size=96,
        chunks=(48, 48),
        levels=2,
        channels=("actin", "WAVE2", "tubulin"),
        ngff="0.4",
    )


@pytest.fixture(scope="module")
def trained(plate, tmp_path_factory) -> omeloc.TrainResult:
    out = tmp_path_factory.mktemp("model") / "m"
    return omeloc.train(plate, "actin", "WAVE2", out=out, steps=4, val_wells=["B2"], **TINY)


# -- normalization -------------------------------------------------------------------------
def test_normalization_round_trip_numpy_dask_torch():
    import dask.array as da

    x = np.random.default_rng(0).integers(100, 4000, (64, 64)).astype("uint16")
    stats = percentile_stats([x])
    assert stats["low"] < stats["high"]
    y = normalize(x, stats)
    assert (
        y.dtype == np.float32
        and abs(np.percentile(y, 1)) < 0.01
        and abs(np.percentile(y, 99.8) - 1) < 0.01
    )
    np.testing.assert_allclose(denormalize(y, stats), x, rtol=1e-5, atol=0.05)
    np.testing.assert_allclose(normalize(da.from_array(x, chunks=16), stats).compute(), y)
    np.testing.assert_allclose(
        normalize(torch.from_numpy(x.astype("float32")), stats).numpy(), y, rtol=1e-6
    )
    assert (
        percentile_stats([np.full((4, 4), 7)])["high"] == 8.0
    )  # constant channel: no division by zero


# -- sampling -------------------------------------------------------------------------------
def _train_images(p, val=("B2",)):
    return [img for w in p.wells.values() if w.name not in val for img in w.images]


def test_crops_come_from_requested_channels_and_level(plate):
    p = omeloc.open_plate(plate)
    imgs = _train_images(p)
    stats = channel_statistics(imgs, ["actin", "WAVE2"], level=1)
    s = CropSampler(
        imgs, ["actin"], ["WAVE2"], normalization=stats, crop=16, level=1, augment=False
    )
    src, tgt = s.read(2, 0, 0, 5, 7)
    img = imgs[2]
    expect_src = normalize(img.channel("actin", level=1)[5:21, 7:23].compute(), stats["actin"])
    expect_tgt = normalize(img.channel("WAVE2", level=1)[5:21, 7:23].compute(), stats["WAVE2"])
    np.testing.assert_array_equal(src[0], expect_src)
    np.testing.assert_array_equal(tgt[0], expect_tgt)
    xb, yb = s.batch(0, 3)
    assert xb.shape == (3, 1, 16, 16) and yb.shape == (3, 1, 16, 16) and xb.dtype == np.float32


def test_sampling_is_lazy_and_never_crosses_the_split(plate, tmp_path):
    """Corrupt every chunk of the held-out well and of the unused channel: training still samples.

    (Corrupt, not delete: zarr reads a missing chunk as fill value without complaint.)
    """
    copy = tmp_path / "p.zarr"
    shutil.copytree(plate, copy)
    p = omeloc.open_plate(copy)
    removed = 0
    for img in p.images:  # NGFF 0.4 here: nested chunk keys '<level>/<c>/<y>/<x>'
        for level in img.level_paths:
            for chunk_dir in (copy / img.path / level).iterdir():
                if chunk_dir.is_dir() and (img.path.startswith("B/2") or chunk_dir.name == "2"):
                    for f in chunk_dir.rglob(
                        "*"
                    ):  # every pixel of the held-out well, and all tubulin
                        if f.is_file():
                            f.write_bytes(b"not a chunk")
                            removed += 1
    assert removed > 0
    imgs = _train_images(p)
    stats = channel_statistics(imgs, ["actin", "WAVE2"])
    s = CropSampler(imgs, ["actin"], ["WAVE2"], normalization=stats, crop=32, seed=3)
    assert {i.path.split("/")[0] + i.path.split("/")[1] for i in s.images} == {"A1", "A2", "B1"}
    for k in range(5):
        xb, yb = s.batch(k, 4)
        assert np.isfinite(xb).all() and xb.std() > 0 and yb.std() > 0
    with pytest.raises(Exception):  # the corruption is real: reading the held-out well fails
        p.image("B/2/0").zarr_array(0)[0]


def test_batches_are_a_function_of_seed_and_index(plate):
    p = omeloc.open_plate(plate)
    imgs = _train_images(p)
    stats = channel_statistics(imgs, ["actin", "WAVE2"])
    a = CropSampler(imgs, ["actin"], ["WAVE2"], normalization=stats, crop=32, seed=1)
    b = CropSampler(imgs, ["actin"], ["WAVE2"], normalization=stats, crop=32, seed=1)
    prefetched = list(a.batches(0, 4, 2, prefetch=2))
    direct = [b.batch(i, 2) for i in range(4)]
    for (i, x, y), (x2, y2) in zip(prefetched, direct):
        np.testing.assert_array_equal(x, x2)
        np.testing.assert_array_equal(y, y2)
    assert not np.array_equal(prefetched[0][1], prefetched[1][1])


def test_empty_crops_are_rejected(tmp_path):
    """A field that is empty except for one bright square: accepted crops overlap the square."""
    data = np.zeros((2, 128, 128), dtype="uint16")
    data[:, 96:128, 96:128] = 1000
    path = omeloc.write_image(
        tmp_path / "img.zarr", data, channel_names=["a", "b"], chunks=(64, 64), levels=1
    )
    img = omeloc.open_image(path)
    stats = {"a": {"low": 0, "high": 1000}, "b": {"low": 0, "high": 1000}}
    s = CropSampler(
        [img], ["a"], ["b"], normalization=stats, crop=32, min_foreground=0.05, max_tries=50
    )
    xb, _ = s.batch(0, 8)
    assert (xb.reshape(8, -1).mean(axis=1) > 0.05).all()
    assert s.rejected > 0


# -- models ---------------------------------------------------------------------------------
def test_model_shapes_and_receptive_field():
    net = omeloc.UNet(2, 3, depth=3, base_channels=4)
    assert net(torch.zeros(2, 2, 48, 48)).shape == (2, 3, 48, 48)
    assert sum(p.numel() for p in omeloc.UNet().parameters()) == 7_762_465
    d = omeloc.PatchGAN(3)
    assert d(torch.zeros(1, 2, 64, 64), torch.zeros(1, 1, 64, 64)).shape == (1, 1, 6, 6)
    assert omeloc.PatchGAN.receptive_field(3) == 70


@pytest.mark.parametrize("model", ["unet", "pix2pix"])
def test_loss_decreases(plate, tmp_path, model):
    res = omeloc.train(
        plate,
        "actin",
        "WAVE2",
        model=model,
        out=tmp_path / model,
        steps=40,
        val_wells=["B2"],
        lr=3e-3,
        val_every=40,
        **{**TINY, "batch_size": 4},
        **({"warmup": 0.0} if model == "pix2pix" else {}),
    )  # adversarial from the first step
    l1 = [r["l1"] for r in res.history]
    assert np.mean(l1[-8:]) < 0.7 * np.mean(l1[:4]), l1
    assert np.isfinite(res.metrics["val_pearson_r"])
    if model == "pix2pix":
        assert all(r["d_loss"] != "" for r in res.history)
        assert "discriminator" in torch.load(res.checkpoint / "last.pt", weights_only=True)


# -- checkpoints ----------------------------------------------------------------------------
def test_checkpoint_is_self_describing_and_round_trips(trained, plate):
    ckpt = omeloc.load_checkpoint(trained.checkpoint)
    assert (ckpt.source, ckpt.target, ckpt.model) == (["actin"], ["WAVE2"], "unet")
    assert set(ckpt.normalization) == {"actin", "WAVE2"}
    assert ckpt.provenance["val_wells"] == ["B2"] and ckpt.provenance["train_wells"] == [
        "A1",
        "A2",
        "B1",
    ]
    assert ckpt.provenance["seed"] == 0 and ckpt.provenance["steps_done"] == 4
    assert ckpt.tile % 4 == 0 and ckpt.overlap > 0
    assert {"val_pearson_r", "baseline_pearson_r", "val_l1"} <= set(ckpt.metrics)
    meta = json.loads((trained.checkpoint / "checkpoint.json").read_text())
    assert meta["format"] == "omeloc-checkpoint"
    net = ckpt.build_model("cpu")
    x = torch.randn(1, 1, 32, 32)
    again = CheckpointRef(trained.checkpoint).load("cpu")
    torch.testing.assert_close(net(x), again(x))
    assert CheckpointRef(trained.checkpoint).key == CheckpointRef(trained.checkpoint).key
    log = (trained.checkpoint / "train_log.csv").read_text().splitlines()
    assert log[0].startswith("step,loss,l1") and len(log) == 5
    png = (trained.checkpoint / "curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("touch /tmp/omeloc_pwned_by_checkpoint",))


def test_malicious_weights_are_refused(trained, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(trained.checkpoint, bad)
    marker = Path("/tmp/omeloc_pwned_by_checkpoint")
    marker.unlink(missing_ok=True)
    with (bad / "weights.pt").open("wb") as fh:
        pickle.dump({"w": _Evil()}, fh)
    with pytest.raises(CheckpointError, match="never unpickles"):
        omeloc.load_checkpoint(bad).build_model()
    assert not marker.exists()
    (bad / "checkpoint.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="JSON"):
        omeloc.load_checkpoint(bad)
    with pytest.raises(CheckpointError, match="not an omeloc checkpoint"):
        omeloc.load_checkpoint(tmp_path)


KILLED = """
import sys
import omeloc
omeloc.train(sys.argv[1], "actin", "WAVE2", out=sys.argv[2], steps=6, val_wells=["B2"], val_every=2, crop=32,
             batch_size=2, depth=2, base_channels=4, progress=False)
"""  # noqa: E501


def test_same_seed_same_weights_and_resume_after_sigkill_equals_uninterrupted(plate, tmp_path):
    import os
    import signal
    import subprocess
    import sys

    kw = dict(val_wells=["B2"], val_every=2, **TINY)
    full = omeloc.train(plate, "actin", "WAVE2", out=tmp_path / "full", steps=6, **kw)
    again = omeloc.train(plate, "actin", "WAVE2", out=tmp_path / "again", steps=6, **kw)
    script = tmp_path / "killed.py"
    script.write_text(KILLED)
    env = dict(os.environ, OMELOC_TEST_KILL_AT="train_step_4", OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, str(script), str(plate), str(tmp_path / "half")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert (
        not (tmp_path / "half" / "weights.pt").exists() and (tmp_path / "half" / "last.pt").exists()
    )
    resumed = omeloc.train(
        plate, "actin", "WAVE2", out=tmp_path / "half", steps=6, resume=True, **kw
    )
    a = torch.load(full.checkpoint / "weights.pt", weights_only=True)
    for other in (again, resumed):
        b = torch.load(other.checkpoint / "weights.pt", weights_only=True)
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    assert resumed.steps == 6
    assert [r["step"] for r in resumed.history] == list(range(1, 7))


# -- bad input --------------------------------------------------------------------------------
def test_bad_input_python(plate, tmp_path):
    with pytest.raises(ChannelNotFoundError, match="Available channels"):
        omeloc.train(plate, "actin", "vinculin", out=tmp_path / "a", **TINY)
    with pytest.raises(InputError, match="both source and target"):
        omeloc.train(plate, "actin", "actin", out=tmp_path / "a", **TINY)
    with pytest.raises(InputError, match="smaller than the 128-pixel crop"):
        omeloc.train(plate, "actin", "WAVE2", out=tmp_path / "a", **{**TINY, "crop": 128})
    with pytest.raises(InputError, match="multiple of 4"):
        omeloc.train(plate, "actin", "WAVE2", out=tmp_path / "a", **{**TINY, "crop": 30})
    with pytest.raises(InputError, match="Unknown model"):
        omeloc.train(plate, "actin", "WAVE2", model="gan", out=tmp_path / "a", **TINY)
    with pytest.raises(InputError, match="wells held out"):
        omeloc.train(
            plate, "actin", "WAVE2", out=tmp_path / "a", val_wells=["A1", "A2", "B1", "B2"], **TINY
        )
    with pytest.raises(InputError, match="Nothing to resume"):
        omeloc.train(plate, "actin", "WAVE2", out=tmp_path / "a", resume=True, **TINY)
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize(
    "args, match",
    [
        (["--source", "actin", "--target", "nope"], "No channel 'nope'"),
        (["--source", "actin", "--target", "actin"], "both source and target"),
        (
            ["--source", "actin", "--target", "WAVE2", "--crop", "512"],
            "smaller than the 512-pixel crop",
        ),
        (["--source", "actin", "--target", "WAVE2", "--val-wells", "Z9"], "No well 'Z9'"),
    ],
)
def test_bad_input_cli(plate, tmp_path, capsys, args, match):
    before = tree_digest(plate)
    code = main(["train", str(plate), *args, "--out", str(tmp_path / "m"), "--depth", "2"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and match in err, err
    assert tree_digest(plate) == before and not (tmp_path / "m").exists()


def test_cli_train_then_predict(plate, tmp_path, capsys):
    work = tmp_path / "p.zarr"
    shutil.copytree(plate, work)
    before = tree_digest(work)
    model = tmp_path / "m"
    code = main(
        [
            "-q",
            "train",
            str(work),
            "--source",
            "actin",
            "--target",
            "WAVE2",
            "--out",
            str(model),
            "--steps",
            "3",
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
    assert code == 0, capsys.readouterr().err
    assert tree_digest(work) == before  # training never writes into the plate
    assert (
        main(
            [
                "-q",
                "train",
                str(work),
                "--source",
                "actin",
                "--target",
                "WAVE2",
                "--out",
                str(model),
            ]
        )
        == 2
    )
    assert "--resume" in capsys.readouterr().err
    assert main(["-q", "predict", str(work), "--model", str(model)]) == 0
    p = omeloc.open_plate(work)
    assert p.channel_names[-1] == "WAVE2 (virtual)"
    v = p.images[0].channel("WAVE2 (virtual)").compute()
    assert v.std() > 0


def test_single_image_trains_and_predicts(tmp_path):
    data = (np.random.default_rng(0).random((2, 96, 96)) * 1000).astype("uint16")
    path = omeloc.write_image(
        tmp_path / "img.zarr", data, channel_names=["a", "b"], chunks=(48, 48), levels=2
    )
    with pytest.raises(InputError, match="single images have no wells"):
        omeloc.train(path, "a", "b", out=tmp_path / "m", val_wells=["B2"], **TINY)
    res = omeloc.train(path, "a", "b", out=tmp_path / "m", steps=2, **TINY)
    assert omeloc.load_checkpoint(res.checkpoint).provenance["val_heldout"] is False
    omeloc.predict(path, res.checkpoint, progress=False)
    assert omeloc.open_image(path).channel_names == ("a", "b", "b (virtual)")


# -- training by time (issue 15) -------------------------------------------------------------------
def test_fit_and_refit_steps_arithmetic():
    from omeloc.learn.budget import StepTiming, fit_steps, refit_steps

    t = StepTiming(step=0.5, validation=1.0, spent=2.0)
    assert fit_steps(60.0, t) == 100  # (60 - 10 validations) / 0.5
    assert fit_steps(60.0, t, val_every=10) == 98  # (60 - 1) / (0.5 + 1 / 10)
    assert fit_steps(60.0, t, cap=40) == 40 and fit_steps(1.0, t) == 1
    assert refit_steps(step=20, start=0, elapsed=10.0, seconds_left=30.0) == 80
    assert (
        refit_steps(step=20, start=10, elapsed=10.0, seconds_left=-5.0) == 20
    )  # out of time: stop now


def test_a_stretched_budget_never_raises_the_learning_rate():
    """A re-fit that stretches the run (the machine sped up) must not move the cosine back up."""
    from omeloc.learn.budget import FallingRate
    from omeloc.learn.objectives import lr_factor

    rate = FallingRate()
    plan = [100] * 50 + [200] * 100  # planned 100 steps, stretched to 200 at step 50
    factors = [rate.factor(i, plan[i], "cosine") for i in range(150)]
    warm = 100 // 20
    assert factors[: warm + 1] == [
        lr_factor(i, 100, "cosine") for i in range(warm + 1)
    ]  # warm-up as planned
    assert all(b <= a for a, b in zip(factors[warm:], factors[warm + 1 :]))  # then it only falls
    assert factors[50] == factors[49] and factors[149] == lr_factor(
        149, 200, "cosine"
    )  # held, then caught up
    steady = FallingRate()
    assert [steady.factor(i, 100, "cosine") for i in range(100)] == [
        lr_factor(i, 100, "cosine") for i in range(100)
    ]


def test_budget_is_honoured_and_the_schedule_fits_the_steps(plate, tmp_path, capsys):
    """A 4-second budget: the steps chosen fit it at the measured pace, and the run ends at the end
    of its schedule.

    No wall-clock assert tight enough to flake on a loaded machine: the time figures recorded by the
    run are checked against each other, with generous margins.
    """
    from omeloc.learn.objectives import lr_factor

    budget = 4.0
    lines: list[str] = []
    res = omeloc.train(
        plate,
        "actin",
        "WAVE2",
        out=tmp_path / "m",
        minutes=budget / 60,
        val_wells=["B2"],
        report=lines.append,
        **TINY,
    )
    m = res.metrics
    assert any(
        line.startswith(f"budget {budget / 60:g} min: ") and " steps (" in line for line in lines
    ), lines
    assert res.steps >= 5 and m["budget_minutes"] == pytest.approx(budget / 60)
    # the steps taken fit the budget at the pace the loop itself ran (validations included), with a
    # margin of a few steps' time; the loop cannot have started before preparation and measuring
    # were done
    pace = m["train_seconds"] / res.steps
    assert m["train_seconds"] <= budget + 5 * pace + 1.0, (m["train_seconds"], pace)
    assert m["train_seconds"] + m["measuring_seconds"] <= res.seconds + 1e-6
    # the schedule was fitted to the steps actually taken: the run ended at the end of its cosine
    # decay
    ckpt = omeloc.load_checkpoint(res.checkpoint)
    assert ckpt.provenance["steps"] == ckpt.provenance["steps_done"] == res.steps
    state = torch.load(res.checkpoint / "last.pt", weights_only=True)
    lr = state["optimizer"]["param_groups"][0]["lr"]
    # (at most the cosine's last value: a re-fit that stretched the run may have held the rate below
    # it)
    end = ckpt.provenance["lr"] * lr_factor(res.steps - 1, res.steps, "cosine")
    assert 0.05 * ckpt.provenance["lr"] <= lr <= end * (1 + 1e-9), (lr, end)
    assert state["meta"]["steps"] == res.steps
    # explicit steps cap a budget; the CLI prints the plan
    capped = omeloc.train(
        plate, "actin", "WAVE2", out=tmp_path / "c", minutes=1.0, steps=3, val_wells=["B2"], **TINY
    )
    assert capped.steps == 3
    code = main(
        [
            "train",
            str(plate),
            "--source",
            "actin",
            "--target",
            "WAVE2",
            "--out",
            str(tmp_path / "cli"),
            "--minutes",
            "0.02",
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
    out = capsys.readouterr().out
    assert code == 0 and "budget 0.02 min: " in out and "device defaults" not in out, out
    with pytest.raises(InputError, match="minutes"):
        omeloc.train(plate, "actin", "WAVE2", out=tmp_path / "bad", minutes=0, **TINY)
