"""The package the modelio tests share: a small trained checkpoint exported once per session."""

from __future__ import annotations

import os

import pytest

import omeloc

_BUILT: dict = {}


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """(plate, checkpoint, package zip): a small U-Net trained for 40 steps on a 1x2-well plate of
    256 px fields (enough for an output that varies: ~20 intensity units of std), exported with
    torch, TorchScript and ONNX weights."""
    key = id(tmp_path_factory)
    if key in _BUILT:  # imported by several test modules: built once per session all the same
        return _BUILT[key]
    root = tmp_path_factory.mktemp("bmz")
    os.environ["OMELOC_CACHE"] = str(root / "cache")
    plate = omeloc.make_plate(
        root / "plate.zarr",
        rows=1,
        cols=2,
        fields=1,
        size=256,
        chunks=(128, 128),
        levels=2,
        channels=("actin", "WAVE2"),
    )
    ckpt = omeloc.train(
        plate,
        "actin",
        "WAVE2",
        out=root / "model",
        steps=40,
        crop=32,
        batch_size=4,
        depth=2,
        base_channels=8,
        val_wells=["A2"],
        progress=False,
    ).checkpoint
    from omeloc.modelio.export_bmz import export_bmz

    res = export_bmz(ckpt, root / "model.zip", onnx=True, authors=["Test Author"])
    assert res.test_status == "passed"
    _BUILT[key] = (plate, ckpt, res.path)
    return _BUILT[key]
