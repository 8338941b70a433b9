"""omeloc remove: takes omeloc's virtual channels out of every image, crash-safe; never an
original channel."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import zarr
from conftest import random_plate_images, tree_digest
from ome_zarr.io import parse_url
from ome_zarr.reader import Reader

import omeloc
from omeloc.cli import main
from omeloc.ngff.writer import write_plate
from omeloc.writeback.journal import JOURNAL_KEY
from omeloc.writeback.protocol import add_channel

_META = {"zarr.json", ".zattrs", ".zarray", ".zgroup", ".zmetadata"}


def _chunks(digest):
    return {k: v for k, v in digest.items() if k.rsplit("/", 1)[-1] not in _META}


def _data(path, seed, k=1):
    rng = np.random.default_rng(seed)
    return {
        img.path: rng.uniform(0, 9000, img.shape[1:] if k == 1 else (k, *img.shape[1:]))
        for img in omeloc.open_plate(path).images
    }


def _template(root, version):
    """A plate before any write, and the same plate with 'pred' and 'pred (uncertainty)' added."""
    plate = write_plate(
        root / "plate.zarr",
        random_plate_images("A", ("1", "2"), ("0", "1"), (2, 64, 48)),
        channel_names=["actin", "WAVE2"],
        ngff_version=version,
        chunks=(32, 32),
        levels=3,
    )
    before = tree_digest(plate)
    written = root / "written.zarr"
    shutil.copytree(plate, written)
    add_channel(
        written,
        ["pred", "pred (uncertainty)"],
        _data(written, 1, k=2),
        provenance={"model": "m"},
        scheduler="synchronous",
    )
    return plate, before, written


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    return _template(tmp_path_factory.mktemp("remove05"), "0.5")


@pytest.fixture(scope="module", params=["0.4", "0.5"])
def any_version(request, tmp_path_factory):
    return _template(tmp_path_factory.mktemp(f"remove{request.param}"), request.param)


def _copy(src, tmp_path):
    dst = tmp_path / "p.zarr"
    shutil.copytree(src, dst)
    return dst


def _check_removed_to_the_original(path, before):
    """Back to the original channels at every level, original chunk files untouched, readable by
    ome-zarr-py."""
    plate = omeloc.open_plate(path)
    assert plate.channel_names == ("actin", "WAVE2")
    for img in plate.images:
        assert all(shape[0] == 2 for shape in img.shapes)
        assert len(img.omero["channels"]) == 2
        assert set((img.attrs.get("omeloc") or {}).get("channels", {})) == set()
    assert _chunks(tree_digest(path)) == _chunks(
        before
    )  # the added channels' files are gone, the rest as before
    assert JOURNAL_KEY not in zarr.open_group(str(path), mode="r").attrs
    node = next(iter(Reader(parse_url(str(path / "A/1/0")))()))
    assert node.data[0].shape[0] == 2 and len(node.metadata["channel_names"]) == 2


def test_remove_takes_both_virtual_channels_out_of_every_level(any_version, tmp_path, capsys):
    _plate, before, written = any_version
    path = _copy(written, tmp_path)
    assert main(["remove", str(path), "--channel", "pred (uncertainty)", "--channel", "pred"]) == 0
    assert "removed channel(s)" in capsys.readouterr().out
    _check_removed_to_the_original(path, before)
    add_channel(
        path, "again", _data(path, 2), scheduler="synchronous"
    )  # no stray chunk or omero entry left behind
    assert omeloc.open_plate(path).channel_names == ("actin", "WAVE2", "again")


def test_remove_the_last_virtual_channel_keeps_the_one_before(template, tmp_path):
    _, _, written = template
    path = _copy(written, tmp_path)
    omeloc.remove_channel(path, "pred (uncertainty)")
    plate = omeloc.open_plate(path)
    assert plate.channel_names == ("actin", "WAVE2", "pred")
    ref = omeloc.open_plate(written)
    for img, old in zip(plate.images, ref.images):
        np.testing.assert_array_equal(img.channel("pred").compute(), old.channel("pred").compute())
        assert img.omero["channels"][:3] == old.omero["channels"][:3]


@pytest.mark.parametrize(
    "channel,message",
    [
        ("WAVE2", "not a channel omeloc wrote"),
        ("pred", "remove them in the same call"),
        ("nope", "has no channel 'nope'"),
    ],
)
def test_remove_refuses_and_changes_nothing(template, tmp_path, capsys, channel, message):
    _, _, written = template
    path = _copy(written, tmp_path)
    digest = tree_digest(path)
    assert main(["remove", str(path), "--channel", channel]) == 2
    assert message in capsys.readouterr().err
    assert tree_digest(path) == digest


def _run_killed(path, point):
    code = (
        f"from omeloc.writeback.remove import remove_channel; remove_channel({str(path)!r}, "
        "['pred', 'pred (uncertainty)'])"
    )
    env = dict(os.environ, OMELOC_TEST_KILL_AT=point, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]


@pytest.mark.parametrize("point", ["remove_journal", "remove_chunks"])
def test_remove_killed_is_finished_by_recover(template, tmp_path, capsys, point):
    _plate, before, written = template
    path = _copy(written, tmp_path)
    _run_killed(path, point)
    assert JOURNAL_KEY in zarr.open_group(str(path), mode="r").attrs
    assert main(["recover", str(path)]) == 0
    assert "finished" in capsys.readouterr().out
    _check_removed_to_the_original(path, before)


def test_remove_killed_is_finished_by_the_next_write(template, tmp_path):
    _, _before, written = template
    path = _copy(written, tmp_path)
    _run_killed(path, "remove_metadata")
    add_channel(path, "next", _data(path, 3), scheduler="synchronous")
    assert omeloc.open_plate(path).channel_names == ("actin", "WAVE2", "next")
