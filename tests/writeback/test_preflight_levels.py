"""The preflight checks every level of every image before anything is written (issue 30, items 2-3).

A level whose channel count, dtype, dimensions or size disagrees with level 0 (and its scale
transforms) is refused by the preflight, in a dry run too, with the plate unchanged: no journal is
ever written for a plate the journal's validator would later refuse to roll back.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import random_plate_images, tree_digest

import omeloc
from omeloc.cli import main
from omeloc.errors import InputError
from omeloc.ngff.writer import write_plate
from omeloc.writeback.journal import JOURNAL_KEY
from omeloc.writeback.plan import level_problems


def _plate(root: Path, name: str = "p.zarr", channels: int = 3) -> Path:
    path = root / name
    write_plate(
        path,
        random_plate_images(cols=("1",), fields=("0",), shape=(channels, 64, 48)),
        channel_names=[f"c{i}" for i in range(channels)],
        chunks=(32, 32),
        levels=3,
    )
    return path


def _edit_array(array: Path, **changes) -> None:
    """Change fields of a v3 array document (``shape``, ``data_type``) as a hand edit or a buggy
    tool would."""
    doc = json.loads((array / "zarr.json").read_text())
    doc.update(changes)
    if "shape" in changes:
        doc["chunk_grid"]["configuration"]["chunk_shape"] = [
            min(c, s) or 1
            for c, s in zip(doc["chunk_grid"]["configuration"]["chunk_shape"], changes["shape"])
        ]
    (array / "zarr.json").write_text(json.dumps(doc))


def _zeros(plate: Path) -> dict:
    return {img.path: np.zeros(img.shape[1:], "uint16") for img in omeloc.open_plate(plate).images}


def _refused(plate: Path, match: str) -> None:
    before = tree_digest(plate)
    for dry in (True, False):
        with pytest.raises(InputError, match=match) as info:
            omeloc.add_channel(plate, "virtual", _zeros(plate), dry_run=dry)
        assert len(str(info.value).splitlines()) == 1
        assert "Rebuild its pyramid" in str(info.value)
    assert tree_digest(plate) == before
    root = json.loads((plate / "zarr.json").read_text())["attributes"]
    assert JOURNAL_KEY not in root


@pytest.fixture()
def plate(tmp_path) -> Path:
    return _plate(tmp_path)


def test_a_level_with_fewer_channels_than_level_0_is_refused_before_any_write(plate):
    level1 = plate / "B" / "1" / "0" / "1"
    shape = json.loads((level1 / "zarr.json").read_text())["shape"]
    _edit_array(level1, shape=[shape[0] - 1, *shape[1:]])
    _refused(plate, r"level '1' has 2 channels, level '0' 3")
    # nothing was written: recover has nothing to do, and the plate still opens
    assert omeloc.recover(plate) is None


def test_a_level_0_far_larger_than_its_scales_allow_is_refused_in_a_dry_run(plate):
    level0 = plate / "A" / "1" / "0" / "0"
    _edit_array(level0, shape=[3, 40000, 40000])
    _refused(plate, r"level '1' has 32 px along y where the level above \(40000 px\)")


def test_a_level_of_another_dtype_is_refused(plate):
    _edit_array(plate / "A" / "1" / "0" / "2", data_type="int16")
    _refused(plate, r"level '2' has dtype int16, level '0' uint16")


def test_a_level_with_another_number_of_dimensions_is_refused(plate):
    level2 = plate / "B" / "1" / "0" / "2"
    shape = json.loads((level2 / "zarr.json").read_text())["shape"]
    doc = json.loads((level2 / "zarr.json").read_text())
    doc["shape"] = [1, *shape]
    doc["chunk_grid"]["configuration"]["chunk_shape"] = [
        1,
        *doc["chunk_grid"]["configuration"]["chunk_shape"],
    ]
    doc.pop("dimension_names", None)
    (level2 / "zarr.json").write_text(json.dumps(doc))
    before = tree_digest(plate)
    with pytest.raises(InputError, match="4 dimensions"):
        omeloc.add_channel(plate, "virtual", _zeros(plate), dry_run=True)
    assert tree_digest(plate) == before


def test_pyramids_that_round_either_way_pass(tmp_path):
    """97 px halved is 48 or 49: both roundings (and deep pyramids of them) are accepted."""
    plate = tmp_path / "odd.zarr"
    write_plate(
        plate,
        random_plate_images(cols=("1",), fields=("0",), shape=(2, 97, 75)),
        channel_names=["a", "b"],
        chunks=(32, 32),
        levels=4,
    )
    for img in omeloc.open_plate(plate).images:
        assert level_problems(img) == []
    level1 = plate / "A" / "1" / "0" / "1"
    shape = json.loads((level1 / "zarr.json").read_text())["shape"]
    _edit_array(level1, shape=[shape[0], 49, 38])  # ceil instead of floor
    img = omeloc.open_plate(plate).image("A/1/0")
    assert level_problems(img) == []


def test_the_cli_dry_run_refuses_a_mismatched_pyramid_with_exit_2(plate, tmp_path, capsys):
    other = _plate(tmp_path, "train.zarr", channels=2)
    ckpt = omeloc.train(
        other,
        "c0",
        "c1",
        out=tmp_path / "m",
        steps=1,
        crop=32,
        batch_size=1,
        depth=2,
        base_channels=4,
        val_wells=["B1"],
        progress=False,
    ).checkpoint
    _edit_array(plate / "A" / "1" / "0" / "0", shape=[3, 40000, 40000])
    before = tree_digest(plate)
    capsys.readouterr()
    assert main(["-q", "predict", str(plate), "--model", str(ckpt), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "40000" in err, err
    assert tree_digest(plate) == before
