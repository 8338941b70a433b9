"""Physical units: a model knows the pixel size it was trained at; predicting on a plate at another
size is refused (exit 2, both sizes named) or, with ``--rescale``, resampled (issue 28)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import tifffile
from conftest import tree_digest

import omeloc
from omeloc.cli import main
from omeloc.errors import CheckpointError
from omeloc.learn.units import pixel_size_of


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("units")
    plate = omeloc.make_plate(
        root / "plate.zarr",
        rows=1,
        cols=2,
        fields=1,
        size=64,
        chunks=(32, 32),
        levels=2,
        channels=("actin", "WAVE2"),
        pixel_size=0.65,
    )
    res = omeloc.train(
        plate,
        "actin",
        "WAVE2",
        out=root / "model",
        steps=30,
        crop=32,
        batch_size=2,
        depth=2,
        base_channels=4,
        val_wells=["A2"],
        progress=False,
        loss="l1",
    )
    return root, plate, str(res.checkpoint)


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


def test_checkpoint_records_the_training_pixel_size(trained):
    ckpt = omeloc.load_checkpoint(trained[2])
    assert ckpt.pixel_size == {"y": 0.65, "x": 0.65, "z": 1.0, "unit": "micrometer"}
    img = omeloc.open_plate(trained[1]).images[0]
    assert pixel_size_of(img, 1).y == pytest.approx(1.3)  # level 1: twice the size


def test_same_pixel_size_predicts(trained, tmp_path):
    plate = tmp_path / "same.zarr"
    shutil.copytree(trained[1], plate)
    assert _predict(plate, trained[2]) == 0


def test_other_pixel_size_refused_with_both_sizes_then_rescaled(trained, tmp_path, capsys):
    plate = omeloc.make_plate(
        tmp_path / "fine.zarr",
        rows=1,
        cols=1,
        fields=1,
        size=128,
        chunks=(64, 64),
        levels=2,
        channels=("actin", "WAVE2"),
        pixel_size=0.325,
    )
    before = tree_digest(plate)
    assert _predict(plate, trained[2]) == 2
    err = capsys.readouterr().err.strip()
    assert "0.65 x 0.65 um" in err and "0.325 x 0.325 um" in err and "--rescale" in err, err
    assert len(err.splitlines()) == 1 and tree_digest(plate) == before
    assert _predict(plate, trained[2], "--rescale") == 0
    img = omeloc.open_plate(plate).images[0]
    got = img.channel("WAVE2 (virtual)", 0).compute().astype(np.float32)
    # the model at its own pixel size: the plate's actin halved, predicted, then doubled back
    actin = img.channel("actin", 0).compute().astype(np.float32)
    half = actin.reshape(64, 2, 64, 2).mean(axis=(1, 3))
    want = omeloc.VirtualStain(trained[2])(half[None], device="cpu", precision="fp32")[0]
    want_up = np.kron(want, np.ones((2, 2), np.float32))
    plain = omeloc.VirtualStain(trained[2])(actin[None], device="cpu", precision="fp32")[
        0
    ]  # not resampled
    assert got.shape == (128, 128)
    inner = (slice(8, -8), slice(8, -8))
    assert np.abs(got - want_up)[inner].mean() < 0.5 * np.abs(got - plain)[inner].mean()
    assert img.attrs["omeloc"]["channels"]["WAVE2 (virtual)"]["rescaled"] is True


def test_plate_without_pixel_size_refused_for_a_model_that_has_one(trained, tmp_path, capsys):
    plate = omeloc.make_plate(
        tmp_path / "bare.zarr",
        rows=1,
        cols=1,
        fields=1,
        size=64,
        chunks=(32, 32),
        levels=2,
        channels=("actin", "WAVE2"),
    )
    assert not pixel_size_of(omeloc.open_plate(plate).images[0]).known
    assert _predict(plate, trained[2]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown (taken as 1 x 1)" in err and len(err.splitlines()) == 1


def test_old_checkpoint_without_pixel_size_still_loads_and_predicts(trained, tmp_path):
    old = tmp_path / "old-model"
    shutil.copytree(trained[2], old)
    meta = json.loads((old / "checkpoint.json").read_text())
    del meta["pixel_size"]
    (old / "checkpoint.json").write_text(json.dumps(meta))
    assert omeloc.load_checkpoint(old).pixel_size is None
    plate = omeloc.make_plate(
        tmp_path / "any.zarr",
        rows=1,
        cols=1,
        fields=1,
        size=64,
        chunks=(32, 32),
        levels=2,
        channels=("actin", "WAVE2"),
        pixel_size=0.1,
    )
    assert _predict(plate, str(old)) == 0


def test_mangled_pixel_size_in_a_checkpoint_refused(trained, tmp_path):
    bad = tmp_path / "bad-model"
    shutil.copytree(trained[2], bad)
    meta = json.loads((bad / "checkpoint.json").read_text())
    meta["pixel_size"] = {"y": -1, "x": "a"}
    (bad / "checkpoint.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="pixel_size"):
        omeloc.load_checkpoint(bad)


def _tiffs(folder, **kwargs):
    folder.mkdir()
    rng = np.random.default_rng(0)
    for ch in (1, 2):
        tifffile.imwrite(
            folder / f"r01c01f01p01-ch{ch}sk1fk1fl1.tiff",
            rng.integers(0, 999, (64, 64), "uint16"),
            **kwargs,
        )
    return folder


def test_import_tiff_pixel_size_option_tags_and_ome_xml(tmp_path):
    plain = _tiffs(tmp_path / "plain")
    assert (
        main(
            [
                "-q",
                "import-tiff",
                str(plain),
                str(tmp_path / "a.zarr"),
                "--preset",
                "phenix",
                "--pixel-size",
                "0.5",
            ]
        )
        == 0
    )
    size = pixel_size_of(omeloc.open_plate(tmp_path / "a.zarr").images[0])
    assert (size.y, size.x, size.known) == (0.5, 0.5, True)
    assert (
        main(["-q", "import-tiff", str(plain), str(tmp_path / "b.zarr"), "--preset", "phenix"]) == 0
    )
    assert not pixel_size_of(omeloc.open_plate(tmp_path / "b.zarr").images[0]).known
    tagged = _tiffs(
        tmp_path / "tagged", resolution=(1e4 / 0.4, 1e4 / 0.4), resolutionunit="CENTIMETER"
    )
    omeloc.import_tiff(tagged, tmp_path / "c.zarr", preset="phenix")
    assert pixel_size_of(omeloc.open_plate(tmp_path / "c.zarr").images[0]).y == pytest.approx(0.4)
    screen = _tiffs(
        tmp_path / "dpi", resolution=(72, 72), resolutionunit="INCH"
    )  # a writer's placeholder
    omeloc.import_tiff(screen, tmp_path / "f.zarr", preset="phenix")
    assert not pixel_size_of(omeloc.open_plate(tmp_path / "f.zarr").images[0]).known
    ome = _tiffs(
        tmp_path / "ome",
        ome=True,
        metadata={
            "axes": "YX",
            "PhysicalSizeX": 0.3,
            "PhysicalSizeY": 0.3,
            "PhysicalSizeXUnit": "µm",
            "PhysicalSizeYUnit": "µm",
        },
    )
    omeloc.import_tiff(ome, tmp_path / "d.zarr", preset="phenix")
    assert pixel_size_of(omeloc.open_plate(tmp_path / "d.zarr").images[0]).x == pytest.approx(0.3)
    assert (
        main(
            [
                "-q",
                "import-tiff",
                str(plain),
                str(tmp_path / "e.zarr"),
                "--preset",
                "phenix",
                "--pixel-size",
                "-1",
            ]
        )
        == 2
    )
    assert not (tmp_path / "e.zarr").exists()


def test_a_plate_without_pixel_sizes_is_noted_once_not_once_per_image(
    tiny_trained, tmp_path, caplog
):
    plate0, ckpt, _ = tiny_trained()
    plate = omeloc.make_plate(
        tmp_path / "many.zarr",
        rows=2,
        cols=3,
        fields=2,
        size=32,
        chunks=None,
        levels=1,
        channels=("actin", "WAVE2"),
    )
    with caplog.at_level("INFO", logger="omeloc"):
        omeloc.predict(plate, ckpt, progress=False, dry_run=True)
    notes = [r.getMessage() for r in caplog.records if "no physical pixel size" in r.getMessage()]
    assert notes == [
        f"plate {omeloc.open_plate(plate).path} has no physical pixel size (no unit on its y/x "
        f"axes): taken as 1 per pixel"
    ], notes
