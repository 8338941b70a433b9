"""Several channels written as one job (a prediction and its uncertainty): all added, replaced or
rolled back together, at every level, with one omero entry and provenance record each."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
from conftest import random_plate_images, tree_digest
from writeback_writer import WRITER_PATH, make_data, names

import omeloc
from omeloc.errors import InputError
from omeloc.ngff.pyramid import cast_to_dtype, downsample_mean
from omeloc.ngff.writer import write_plate
from omeloc.writeback.protocol import add_channel, recover

NAMES = names(2)


@pytest.fixture(scope="module", params=["0.4", "0.5"])
def template(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"channels{request.param}")
    return write_plate(
        root / "t.zarr",
        random_plate_images("A", ("1", "2"), ("0",), (2, 64, 48)),
        channel_names=["actin", "WAVE2"],
        ngff_version=request.param,
        chunks=(32, 32),
        levels=2,
    )


@pytest.fixture
def plate(template, tmp_path):
    dst = tmp_path / "p.zarr"
    shutil.copytree(template, dst)
    return dst


def _levels(level0: np.ndarray, shapes) -> list[np.ndarray]:
    out = [cast_to_dtype(level0, "uint16")]
    for shape in shapes[1:]:
        out.append(downsample_mean(out[-1], ("y", "x"), shape[1:]))
    return out


def _check(plate, data, colours=None):
    for img in omeloc.open_plate(plate).images:
        assert img.channel_names == ("actin", "WAVE2", *NAMES) and len(img.omero["channels"]) == 4
        for j, name in enumerate(NAMES):
            for level, want in enumerate(_levels(data[img.path][j], img.shapes)):
                np.testing.assert_array_equal(img.channel(name, level).compute(), want)
            prov = img.attrs["omeloc"]["channels"][name]
            assert (
                prov["virtual"] is True and prov["index"] == 2 + j and prov["written_with"] == NAMES
            )
        entries = img.omero["channels"][2:]
        assert all(e["active"] is True and "omeloc_writing" not in e for e in entries)
        assert entries[0]["color"] != entries[1]["color"]
        if colours:
            assert [e["color"] for e in entries] == colours


def test_two_channels_added_and_replaced_as_one_job(plate):
    before = tree_digest(plate)
    data = make_data(plate, 1, k=2)
    result = add_channel(plate, NAMES, data, provenance=[{"of": "mean"}, {"of": "spread"}])
    assert result.channel_index == 2 and result.bytes_written == 2 * 2 * (64 * 48 + 32 * 24) * 2
    _check(plate, data)
    after = tree_digest(plate)
    assert all(
        after[k] == v
        for k, v in before.items()
        if k.rsplit("/", 1)[-1] not in {".zattrs", "zarr.json", ".zarray"}
    )
    img = omeloc.open_plate(plate).images[0]
    assert img.attrs["omeloc"]["channels"][NAMES[1]]["of"] == "spread"
    colours = [e["color"] for e in img.omero["channels"][2:]]
    new = make_data(plate, 2, k=2)
    assert add_channel(plate, NAMES, new, overwrite=True).channel_index == 2
    _check(plate, new, colours)  # replaced together, each keeping its colour


def test_mixed_or_reordered_names_are_refused_unchanged(plate):
    add_channel(plate, NAMES, make_data(plate, 1, k=2))
    before = tree_digest(plate)
    for bad, match in (
        ([NAMES[0], "new"], "added together or replaced together"),
        (NAMES[::-1], "side by side"),
        ([NAMES[0], NAMES[0]], "distinct"),
    ):
        with pytest.raises(InputError, match=match):
            add_channel(plate, bad, make_data(plate, 2, k=2), overwrite=True)
    with pytest.raises(InputError, match="shape"):
        add_channel(plate, ["x", "y"], make_data(plate, 2))  # one plane per image for two names
    with pytest.raises(InputError, match="provenance"):
        add_channel(plate, ["x", "y"], make_data(plate, 2, k=2), provenance=[{}, {}, {}])
    assert tree_digest(plate) == before


@pytest.mark.parametrize(
    "overwrite, point",
    [
        (False, "level0_mid"),
        (False, "level1_written"),
        (True, "backup_mid"),
        (True, "level0_mid"),
        (True, "metadata"),
    ],
)
def test_killed_two_channel_write_is_rolled_back_or_rerun(plate, overwrite, point):
    if overwrite:
        add_channel(plate, NAMES, make_data(plate, 1, k=2))
    before = tree_digest(plate)
    env = {"OMELOC_TEST_KILL_AT": point, "OMELOC_TEST_AT_CALL": "2", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, WRITER_PATH, str(plate), "2", "1" if overwrite else "0", "2"],
        env={**__import__("os").environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    outcome = recover(plate)
    if outcome == "rollback":
        assert tree_digest(plate) == before
    else:  # killed past its last write: finished
        assert outcome == "finish"
    add_channel(
        plate, NAMES, make_data(plate, 2, k=2), overwrite=True
    ) if outcome == "rollback" and overwrite else None
    if not overwrite and outcome == "rollback":
        add_channel(plate, NAMES, make_data(plate, 2, k=2))
    _check(plate, make_data(plate, 2, k=2))
