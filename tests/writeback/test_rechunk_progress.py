"""``omeloc rechunk`` reports its copy through the progress protocol: plain lines in a log."""

from __future__ import annotations

import os
import subprocess
import sys

import omeloc


def test_rechunk_into_a_log_prints_progress_lines_and_quiet_prints_none(tmp_path):
    src = omeloc.make_plate(
        tmp_path / "src.zarr",
        rows=1,
        cols=2,
        fields=1,
        size=64,
        chunks=None,
        levels=1,
        channels=("actin", "WAVE2"),
    )
    env = dict(os.environ, OMELOC_PROGRESS_EVERY="0")  # stderr is a pipe: a line at every update
    run = subprocess.run(
        [sys.executable, "-m", "omeloc.cli", "rechunk", str(src), str(tmp_path / "a.zarr")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    lines = [ln for ln in run.stderr.splitlines() if ln.startswith("rechunk: task")]
    assert lines and lines[-1].endswith("(done)"), run.stderr
    quiet = subprocess.run(
        [sys.executable, "-m", "omeloc.cli", "-q", "rechunk", str(src), str(tmp_path / "b.zarr")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert quiet.returncode == 0 and "rechunk: task" not in quiet.stderr, quiet.stderr
    assert omeloc.open_plate(tmp_path / "b.zarr").images[0].chunks()[0] == 1
