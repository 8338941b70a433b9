"""A killed ``omeloc rechunk`` never leaves a destination that looks finished (issue 30, item 1).

The copy is marked incomplete from its first write to its last; every command refuses a marked
destination with exit 2 and names the fix; a rerun of ``rechunk`` or ``omeloc recover`` redoes it.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_same_pixels, random_plate_images, tree_digest

import omeloc
from omeloc.cli import main
from omeloc.errors import InputError, ReadOnlyStoreError
from omeloc.ngff.plate import INCOMPLETE_KEY
from omeloc.ngff.stores import open_group
from omeloc.ngff.writer import write_plate
from omeloc.writeback.rechunk import incomplete_copy


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMELOC_TEST_")}
    return dict(env, OMP_NUM_THREADS="1", **extra)


def _cli(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "omeloc.cli", "-q", *args],
        env=_env(**env),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> Path:
    """A 2-well plate of 2 channels, all channels in one chunk (the layout rechunk is for)."""
    path = tmp_path_factory.mktemp("rechunk") / "src.zarr"
    write_plate(
        path,
        random_plate_images(fields=("0",), shape=(2, 64, 48)),
        channel_names=["a", "b"],
        chunks=(2, 32, 32),
    )
    return path


@pytest.fixture(scope="module")
def model(src, tmp_path_factory) -> Path:
    """A tiny checkpoint a → b (2 steps): predict needs one before it opens the plate."""
    out = tmp_path_factory.mktemp("model")
    return Path(
        omeloc.train(
            src,
            "a",
            "b",
            out=out,
            steps=1,
            crop=32,
            batch_size=1,
            depth=2,
            base_channels=4,
            val_wells=["A2"],
            progress=False,
        ).checkpoint
    )


@pytest.mark.parametrize("point", ["rechunk_metadata", "rechunk_copied"])
def test_a_killed_rechunk_is_refused_by_every_command_until_recovered(
    src, model, tmp_path, point, capsys
):
    dst = tmp_path / "dst.zarr"
    before = tree_digest(src)
    killed = _cli("rechunk", str(src), str(dst), OMELOC_TEST_KILL_AT=point)
    assert killed.returncode == -9, killed.stderr
    assert incomplete_copy(dst) is not None
    capsys.readouterr()
    for args in (
        ["info", str(dst)],
        ["evaluate", str(dst), "--pred", "a", "--truth", "b"],
        ["train", str(dst), "--source", "a", "--target", "b", "--out", str(tmp_path / "m")],
        ["predict", str(dst), "--model", str(model)],
        ["rechunk", str(dst), str(tmp_path / "x")],
    ):
        assert main(["-q", *args]) == 2, args
        line = capsys.readouterr().err.strip()
        assert (
            len(line.splitlines()) == 1
            and "incomplete copy" in line
            and f"omeloc recover {dst}" in line
        ), line
    with pytest.raises(InputError, match="incomplete copy"):
        omeloc.open_plate(dst)
    assert not (tmp_path / "x").exists()
    # recover alone finishes it: the copy is then the source's pixels, one channel per chunk
    res = _cli("recover", str(dst))
    assert res.returncode == 0 and "finished the interrupted rechunk" in res.stdout, res.stderr
    assert incomplete_copy(dst) is None
    assert_same_pixels(src, dst)
    assert omeloc.open_plate(dst).images[0].chunks(0)[0] == 1
    assert tree_digest(src) == before


def test_rerunning_rechunk_redoes_an_interrupted_copy_without_overwrite(src, tmp_path):
    dst = tmp_path / "dst.zarr"
    assert (
        _cli("rechunk", str(src), str(dst), OMELOC_TEST_KILL_AT="rechunk_metadata").returncode == -9
    )
    assert main(["-q", "rechunk", str(src), str(dst)]) == 0
    assert incomplete_copy(dst) is None
    assert_same_pixels(src, dst)
    # a finished copy is not replaced silently
    assert main(["-q", "rechunk", str(src), str(dst)]) == 2
    assert main(["-q", "rechunk", str(src), str(dst), "--overwrite"]) == 0
    assert_same_pixels(src, dst)


def test_while_the_copy_runs_other_readers_see_no_plate_at_the_destination(src, tmp_path):
    """Before the commit the destination's root has only the marker: ome-zarr-py finds no plate
    there."""
    from ome_zarr.io import parse_url

    dst = tmp_path / "dst.zarr"
    assert (
        _cli("rechunk", str(src), str(dst), OMELOC_TEST_KILL_AT="rechunk_copied").returncode == -9
    )
    root = open_group(str(dst))
    assert set(root.attrs) == {INCOMPLETE_KEY}
    loc = parse_url(str(dst))
    assert "plate" not in (loc.root_attrs.get("ome") or loc.root_attrs)


def test_rechunk_into_a_read_only_folder_is_one_line_exit_2(src, tmp_path, capsys):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(stat.S_IRUSR | stat.S_IXUSR)
    if os.geteuid() == 0:  # root ignores folder permissions; sysfs refuses new folders even to root
        if not Path("/sys/kernel").is_dir():
            pytest.skip("root ignores folder permissions and there is no /sys")
        parent = Path("/sys")
    try:
        with pytest.raises(ReadOnlyStoreError, match="Choose a destination you can write to"):
            omeloc.rechunk(src, parent / "omeloc-dst.zarr")
        assert main(["-q", "rechunk", str(src), str(parent / "omeloc-dst.zarr")]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Choose a destination" in err, err
    finally:
        (tmp_path / "ro").chmod(stat.S_IRWXU)


def test_the_destination_may_not_be_the_source(src):
    before = tree_digest(src)
    with pytest.raises(InputError, match="destination is the source"):
        omeloc.rechunk(src, src, overwrite=True)
    assert tree_digest(src) == before


def test_a_rechunk_with_nothing_interrupted_leaves_no_marker(src, tmp_path):
    dst = omeloc.rechunk(src, tmp_path / "ok.zarr")
    assert incomplete_copy(dst) is None
    np.testing.assert_array_equal(
        omeloc.open_plate(dst).images[0].level(0).compute(),
        omeloc.open_plate(src).images[0].level(0).compute(),
    )
