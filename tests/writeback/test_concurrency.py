"""Two writers at once, and a worker process dying mid-run: never a corrupted plate."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import omeloc
from conftest import assert_same_pixels
from omeloc.cli import main
from omeloc.writeback.journal import JOURNAL_KEY

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def setup(tiny_trained):
    plate, ckpt, ref = tiny_trained()
    return plate, str(ckpt), ref


def _journal(plate: Path) -> dict | None:
    attrs = json.loads((plate / "zarr.json").read_text()).get("attributes", {})
    return attrs.get(JOURNAL_KEY)


def test_second_predict_refuses_while_the_first_writes(setup, tmp_path, capsys):
    plate0, ckpt, ref = setup
    plate = tmp_path / "plate.zarr"
    shutil.copytree(plate0, plate)
    # the first run pauses in its write phase; the test stops it there (SIGSTOP) as soon as the
    # journal says so, so the second run meets a live writer however long it takes under load
    env = dict(
        os.environ,
        OMELOC_TEST_PAUSE_AT="resized",
        OMELOC_TEST_PAUSE_SECONDS="4",
        OMP_NUM_THREADS="1",
    )
    first = subprocess.Popen(
        [sys.executable, "-m", "omeloc.cli", "-q", "predict", str(plate), "--model", str(ckpt)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.time() + 120
        while (_journal(plate) or {}).get("phase") != "resized":
            assert first.poll() is None, first.communicate()
            assert time.time() < deadline, "the first run never reached its write phase"
            time.sleep(0.02)
        first.send_signal(signal.SIGSTOP)
        code = main(["-q", "predict", str(plate), "--model", str(ckpt)])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1, err
        assert "being written" in err, err
    finally:
        first.send_signal(signal.SIGCONT)
        out, err1 = first.communicate(timeout=300)
    assert first.returncode == 0, err1
    assert_same_pixels(plate, ref)  # the first run finished correctly; the second changed nothing
    assert _journal(plate) is None


def test_a_dying_worker_does_not_change_the_result(setup, tmp_path, monkeypatch):
    plate0, ckpt, ref = setup
    plate = tmp_path / "plate.zarr"
    shutil.copytree(plate0, plate)
    marker = tmp_path / "killed-once"
    monkeypatch.setenv("OMELOC_TEST_KILL_WORKER_ONCE", str(marker))
    omeloc.predict(plate, ckpt, workers=2, progress=False)
    assert marker.exists(), "no worker was killed: the test tested nothing"
    assert_same_pixels(plate, ref)
