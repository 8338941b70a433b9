"""Plate acquisitions: ``omeloc info`` lists them, ``predict --acquisition`` predicts one of
them."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import zarr
from conftest import tree_digest

import omeloc
from omeloc.cli import main

pytestmark = pytest.mark.slow

VERSIONS = ("0.4", "0.5")


def _two_acquisitions(plate, version: str) -> None:
    """Give ``plate`` two acquisitions: field 0 of every well belongs to ``1``, field 1 to ``2``."""
    root = zarr.open_group(plate, mode="r+")

    def edit(group, change):
        attrs = group.attrs.asdict()
        ome = attrs["ome"] if version == "0.5" else attrs
        change(ome)
        if version == "0.5":
            group.attrs["ome"] = ome
        else:
            group.attrs.update(ome)

    def plate_doc(ome):
        ome["plate"]["acquisitions"] = [
            {"id": 1, "name": "before drug", "maximumfieldcount": 1},
            {"id": 2, "name": "after drug", "maximumfieldcount": 1},
        ]

    edit(root, plate_doc)
    for well in ("A/1", "A/2"):

        def well_doc(ome):
            for image in ome["well"]["images"]:
                image["acquisition"] = 1 if image["path"] == "0" else 2

        edit(root[well], well_doc)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("acq")
    plates = {}
    for version in VERSIONS:
        plates[version] = omeloc.make_plate(
            root / f"p{version}.zarr",
            rows=1,
            cols=2,
            fields=2,
            size=64,
            chunks=(32, 32),
            levels=2,
            ngff=version,
            channels=("actin", "WAVE2"),
        )
        _two_acquisitions(plates[version], version)
    res = omeloc.train(
        plates["0.5"],
        "actin",
        "WAVE2",
        out=root / "model",
        steps=1,
        crop=32,
        batch_size=2,
        depth=2,
        base_channels=4,
        val_wells=["A2"],
        progress=False,
    )
    ref = root / "ref.zarr"
    shutil.copytree(plates["0.5"], ref)
    omeloc.predict(ref, res.checkpoint, progress=False)
    return plates, res.checkpoint, ref


@pytest.mark.parametrize("version", VERSIONS)
def test_info_lists_the_acquisitions_and_their_fields(setup, version, capsys):
    plate = setup[0][version]
    assert main(["info", str(plate)]) == 0
    text = capsys.readouterr().out
    assert "acquisition 1 (before drug): 2 field(s) in 2 well(s): A1, A2" in text, text
    assert "acquisition 2 (after drug): 2 field(s) in 2 well(s)" in text, text
    assert main(["info", str(plate), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)["acquisitions"]
    assert [(a["id"], a["name"], a["n_images"]) for a in listed] == [
        ("1", "before drug", 2),
        ("2", "after drug", 2),
    ]
    opened = omeloc.open_plate(plate)
    assert [i.path for i in opened.acquisition_images("2")] == ["A/1/1", "A/2/1"]
    assert [i.path for i in opened.acquisition_images("before drug")] == ["A/1/0", "A/2/0"]


def test_predict_one_acquisition_predicts_only_its_fields(setup, tmp_path):
    plates, ckpt, ref = setup
    plate = tmp_path / "p.zarr"
    shutil.copytree(plates["0.5"], plate)
    assert main(["-q", "predict", str(plate), "--model", str(ckpt), "--acquisition", "2"]) == 0
    got, full = omeloc.open_plate(plate), omeloc.open_plate(ref)
    for img, whole in zip(got.images, full.images):
        new = img.channel("WAVE2 (virtual)").compute()
        if img.field == "1":  # acquisition 2: exactly what a whole-plate run predicts there
            np.testing.assert_array_equal(new, whole.channel("WAVE2 (virtual)").compute())
            assert new.any()
        else:
            assert not new.any(), img.path
    attrs = json.loads((plate / "A" / "1" / "1" / "zarr.json").read_text())["attributes"]
    assert attrs["omeloc"]["channels"]["WAVE2 (virtual)"]["predicted_images"] == ["A/1/1", "A/2/1"]


def test_an_unknown_acquisition_is_refused_in_one_line_and_nothing_changes(setup, tmp_path, capsys):
    plates, ckpt, _ = setup
    plate = tmp_path / "p.zarr"
    shutil.copytree(plates["0.5"], plate)
    before = tree_digest(plate)
    assert main(["-q", "predict", str(plate), "--model", str(ckpt), "--acquisition", "7"]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        len(err.splitlines()) == 1
        and "no acquisition '7'" in err
        and "1 (before drug), 2 (after drug)" in err
    )
    assert tree_digest(plate) == before
