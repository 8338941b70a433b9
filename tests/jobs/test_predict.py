"""omeloc predict: a trained checkpoint's virtual channel into every image and level of a plate."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
from conftest import assert_same_pixels, tree_digest

import omeloc
from omeloc.cli import main
from omeloc.errors import ChannelNotFoundError, SchedulerError

_META = {"zarr.json", ".zattrs", ".zarray", ".zgroup", ".zmetadata"}


def _chunks(digest):
    return {k: v for k, v in digest.items() if k.rsplit("/", 1)[-1] not in _META}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    plates = {}
    for ngff in ("0.4", "0.5"):
        plates[ngff] = omeloc.make_plate(
            root / f"plate{ngff}.zarr",
            rows=2,
            cols=2,
            fields=1,
            size=80,
            chunks=(48, 48),
            levels=3,
            ngff=ngff,
            seed=4,
            channels=("actin", "WAVE2", "tubulin"),
        )
    res = omeloc.train(
        plates["0.5"],
        "actin",
        "WAVE2",
        out=root / "model",
        steps=4,
        val_wells=["B2"],
        crop=32,
        batch_size=2,
        depth=2,
        base_channels=4,
        progress=False,
    )
    return plates, res.checkpoint


@pytest.fixture(params=["0.4", "0.5"])
def plate(request, trained, tmp_path):
    path = tmp_path / "p.zarr"
    shutil.copytree(trained[0][request.param], path)
    return path


def _expected(path, ckpt_dir):
    """The same pipeline run image by image in memory."""
    from omeloc.learn.checkpoint import CheckpointRef, load_checkpoint
    from omeloc.engine.inference import predict_array
    from omeloc.learn.normalization import denormalize, normalize
    from omeloc.ngff.pyramid import cast_to_dtype

    ckpt = load_checkpoint(ckpt_dir)
    out = {}
    for img in omeloc.open_plate(path).images:
        x = normalize(
            img.channel("actin").compute().astype(np.float32), ckpt.normalization["actin"]
        )
        y = predict_array(
            CheckpointRef(ckpt_dir), x[None], tile=ckpt.tile, overlap=ckpt.overlap, out_channels=1
        ).compute()[0]
        out[img.path] = cast_to_dtype(denormalize(y, ckpt.normalization["WAVE2"]), "uint16")
    return out


def test_predict_writes_every_image_and_level(plate, trained):
    ckpt = trained[1]
    before = tree_digest(plate)
    res = omeloc.predict(plate, ckpt)
    assert res.name == "WAVE2 (virtual)" and res.images == 4 and len(res.predicted) == 4
    assert res.megapixels == pytest.approx(4 * 80 * 80 / 1e6)
    after = tree_digest(plate)
    assert all(after[k] == v for k, v in _chunks(before).items()), "an original chunk changed"
    p = omeloc.open_plate(plate)
    assert p.channel_names == ("actin", "WAVE2", "tubulin", "WAVE2 (virtual)")
    expected = _expected(plate, ckpt)
    for img in p.images:
        got = img.channel("WAVE2 (virtual)").compute()
        np.testing.assert_allclose(got.astype(float), expected[img.path].astype(float), atol=1)
        assert [img.level(k).shape[-2:] for k in range(3)] == [(80, 80), (40, 40), (20, 20)]
        assert img.channel("WAVE2 (virtual)", 2).compute().any()
        record = img.attrs["omeloc"]["channels"]["WAVE2 (virtual)"]
        assert record["virtual"] and record["source_channels"] == ["actin"]
        assert img.omero["channels"][-1]["label"] == "WAVE2 (virtual)"


def test_cli_predict_wells_and_dry_run(plate, trained, capsys):
    ckpt = trained[1]
    before = tree_digest(plate)
    assert main(["-q", "predict", str(plate), "--model", str(ckpt), "--dry-run"]) == 0
    assert "nothing was written" in capsys.readouterr().out
    assert tree_digest(plate) == before
    assert (
        main(
            ["-q", "predict", str(plate), "--model", str(ckpt), "--wells", "A1", "--name", "W (v)"]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "W (v)" in out and "megapixels/s" in out
    p = omeloc.open_plate(plate)
    assert p.well("A1").images[0].channel("W (v)").compute().any()
    assert not p.well("B2").images[0].channel("W (v)").compute().any()  # not predicted: zeros


@pytest.mark.parametrize(
    "case", ["missing_source", "not_append_friendly", "unreachable_scheduler", "bad_model"]
)
def test_bad_input_leaves_plate_unchanged(case, trained, tmp_path, capsys, short_scheduler_timeout):
    plates, ckpt = trained
    if case == "missing_source":
        path = omeloc.make_plate(
            tmp_path / "other.zarr",
            rows=1,
            cols=1,
            fields=1,
            size=64,
            channels=("WAVE2", "tubulin"),
        )
        args, match = [], "actin"
    elif case == "not_append_friendly":
        import zarr
        from ome_zarr.format import FormatV05
        from ome_zarr.writer import write_image

        path = tmp_path / "img.zarr"
        # 3 channels in chunks of 2: the new channel's chunk would hold original channel 2 (the one
        # layout rule)
        data = np.random.default_rng(0).integers(0, 999, (3, 64, 64)).astype("uint16")
        write_image(
            data,
            zarr.open_group(str(path), mode="w", zarr_format=3),
            axes="cyx",
            fmt=FormatV05(),
            storage_options={"chunks": (2, 64, 64)},
        )
        group = zarr.open_group(
            str(path), mode="r+"
        )  # labels set by hand: ome-zarr versions differ here
        window = {"min": 0, "max": 65535, "start": 0, "end": 999}
        group.attrs["ome"] = {
            **group.attrs["ome"],
            "omero": {
                "channels": [
                    {"label": label, "color": "00FF00", "window": window, "active": True}
                    for label in ("actin", "WAVE2", "other")
                ]
            },
        }
        args, match = [], "rechunk"
    elif case == "unreachable_scheduler":
        path = tmp_path / "p.zarr"
        shutil.copytree(plates["0.5"], path)
        args, match = ["--scheduler", "tcp://127.0.0.1:9"], "scheduler"
    else:
        path = tmp_path / "p.zarr"
        shutil.copytree(plates["0.5"], path)
        bad = tmp_path / "bad_model"
        shutil.copytree(ckpt, bad)
        (bad / "weights.pt").write_bytes((bad / "weights.pt").read_bytes()[:100])
        ckpt, args, match = bad, [], "weights"
    before = tree_digest(path)
    code = main(["predict", str(path), "--model", str(ckpt), *args])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert match in err
    assert tree_digest(path) == before


def test_distributed_equals_local(trained, tmp_path):
    plates, ckpt = trained
    local, dist = tmp_path / "local.zarr", tmp_path / "dist.zarr"
    shutil.copytree(plates["0.5"], local)
    shutil.copytree(plates["0.5"], dist)
    omeloc.predict(local, ckpt)
    omeloc.predict(dist, ckpt, workers=2)
    assert_same_pixels(local, dist)


KILLED = """
import sys
import omeloc
omeloc.predict(sys.argv[1], sys.argv[2], scheduler=None)
"""


def test_resume_after_sigkill_equals_uninterrupted(trained, tmp_path):
    plates, ckpt = trained
    ref, path = tmp_path / "ref.zarr", tmp_path / "p.zarr"
    shutil.copytree(plates["0.5"], ref)
    shutil.copytree(plates["0.5"], path)
    omeloc.predict(ref, ckpt)
    script = tmp_path / "run.py"
    script.write_text(KILLED)
    env = dict(os.environ, OMELOC_TEST_KILL_AT="level0_mid", OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, str(script), str(path), str(ckpt)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    res = omeloc.predict(path, ckpt)
    assert res.recovered == "rollback"
    assert_same_pixels(ref, path)
    assert set(tree_digest(path)) == set(tree_digest(ref)), "journal or stash left behind"


def test_python_api_errors_are_typed(trained, tmp_path, short_scheduler_timeout):
    plates, ckpt = trained
    other = omeloc.make_plate(
        tmp_path / "o.zarr", rows=1, cols=1, fields=1, size=64, channels=("WAVE2",)
    )
    with pytest.raises(ChannelNotFoundError):
        omeloc.predict(other, ckpt)
    with pytest.raises(SchedulerError):
        omeloc.predict(plates["0.5"], ckpt, scheduler="tcp://127.0.0.1:9")


def test_workers_with_gpu_resources_predict_every_image(trained, tmp_path):
    """Issue 19: workers that advertise a GPU (``dask worker --resources GPU=1``) get inference
    tasks that ask for one, image after image (one shared ``dask.annotate`` context failed on the
    second image)."""
    distributed = pytest.importorskip("distributed")
    plates, ckpt = trained
    local, dist = tmp_path / "local.zarr", tmp_path / "dist.zarr"
    shutil.copytree(plates["0.5"], local)
    shutil.copytree(plates["0.5"], dist)
    omeloc.predict(local, ckpt)
    with (
        distributed.LocalCluster(
            n_workers=1,
            threads_per_worker=1,
            processes=False,
            resources={"GPU": 1},
            dashboard_address=None,
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        res = omeloc.predict(dist, ckpt, client=client)
    assert len(res.predicted) == 4
    assert_same_pixels(local, dist)


def test_gpu_annotation_marks_only_inference_of_every_image(trained):
    from omeloc.jobs.predict import lazy_prediction, plan_prediction

    plates, ckpt = trained
    job = plan_prediction(plates["0.5"], ckpt)

    def annotate():
        import dask

        return dask.annotate(resources={"GPU": 1})

    for img in job.plate.images:  # a fresh context per image
        arr = lazy_prediction(job, img, annotate)
        marked = [
            name
            for name, layer in arr.dask.layers.items()
            if (layer.annotations or {}).get("resources")
        ]
        assert marked and len(marked) < len(arr.dask.layers)
