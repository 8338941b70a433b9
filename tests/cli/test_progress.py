"""One progress interface: a bar on a terminal, plain lines in a log, a callable, or nothing."""

from __future__ import annotations

import io
import os
import subprocess
import sys

from omeloc.progress import (
    CallbackProgress,
    ConsoleProgress,
    LogProgress,
    Progress,
    ProgressReporter,
    QuietProgress,
    reporter,
)


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_log_progress_writes_a_plain_line_every_few_seconds_with_rate_eta_and_loss():
    out, clock = io.StringIO(), _Clock()
    log = LogProgress(stream=out, every=5, clock=clock)
    log.start(300, desc="train", unit="step")
    for step in range(1, 121):
        clock.now = 100.0 + step / 10  # 10 steps/s
        log.update(step, l1=0.25)
    log.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 3, lines  # at 5 s and 10 s, and the last one
    assert lines[0].startswith("train: step 50/300 (17%), 10 step/s, ETA 25 s, l1 0.25"), lines[0]
    assert lines[-1].startswith("train: step 120/300 (40%)"), lines[-1]


def test_a_short_run_prints_no_progress_lines():
    out, clock = io.StringIO(), _Clock()
    log = LogProgress(stream=out, every=5, clock=clock)
    log.start(10, desc="evaluate", unit="field")
    for n in range(1, 11):
        clock.now += 0.1
        log.update(n)
    log.close()
    assert out.getvalue() == ""


def test_progress_argument_forms_pick_their_reporter(monkeypatch):
    seen = []
    assert isinstance(reporter(False), QuietProgress) and isinstance(reporter(None), QuietProgress)
    assert isinstance(reporter(seen.append), CallbackProgress)  # any callable: (done, total)
    mine = LogProgress(stream=io.StringIO())
    assert reporter(mine) is mine and isinstance(mine, ProgressReporter)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    assert isinstance(reporter(True), LogProgress)  # nohup, tee, SLURM, CI
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert isinstance(reporter(True), ConsoleProgress)


def test_a_done_total_callable_keeps_working():
    calls = []
    with Progress(lambda done, total: calls.append((done, total)), total=3, desc="fields") as bar:
        for _ in range(3):
            bar.advance()
    assert calls == [(1, 3), (2, 3), (3, 3)]


def _cli_into_a_log(*args: str) -> subprocess.CompletedProcess:
    """``omeloc ARGS`` with stderr a pipe (as in a log) and a progress line at every update."""
    env = {**os.environ, "OMELOC_PROGRESS_EVERY": "0"}
    return subprocess.run(
        [sys.executable, "-m", "omeloc.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_cli_progress_in_a_log_is_plain_lines(tmp_path):
    proc = _cli_into_a_log(
        "synth",
        str(tmp_path / "p.zarr"),
        "--rows",
        "1",
        "--cols",
        "2",
        "--fields",
        "1",
        "--size",
        "64",
    )
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("synth: img")]
    assert lines and lines[-1].startswith("synth: img 2/2 (100%)"), proc.stderr
    assert "\r" not in proc.stderr  # no bar redrawn in a log


def test_rechunk_into_a_log_prints_progress_lines_and_quiet_prints_none(tmp_path):
    import omeloc

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
    run = _cli_into_a_log("rechunk", str(src), str(tmp_path / "a.zarr"))
    assert run.returncode == 0, run.stderr
    lines = [ln for ln in run.stderr.splitlines() if ln.startswith("rechunk: task")]
    assert lines and lines[-1].endswith("(done)"), run.stderr
    quiet = _cli_into_a_log("-q", "rechunk", str(src), str(tmp_path / "b.zarr"))
    assert quiet.returncode == 0 and "rechunk: task" not in quiet.stderr, quiet.stderr
    assert omeloc.open_plate(tmp_path / "b.zarr").images[0].chunks()[0] == 1


def test_a_compute_on_a_dask_cluster_reports_through_the_same_reporters():
    """On a ``distributed`` client the finished tasks reach omeloc's reporters (not
    ``distributed.progress``'s own bar): a callable sees every count up to the whole."""
    import dask.array as da
    from distributed import Client, LocalCluster

    from omeloc.compute import compute

    seen: list[tuple[int, int]] = []
    x = da.ones((40, 40), chunks=10) * 2
    with (
        LocalCluster(
            n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        (total,) = compute(
            x.sum(), client=client, progress=lambda done, n: seen.append((done, n)), desc="sum"
        )
    assert float(total) == 3200.0
    assert seen, "no progress was reported"
    done, n = seen[-1]
    assert done == n >= 16, seen  # at least the 16 chunk tasks, all finished
    assert all(a <= b for (a, _), (b, _) in zip(seen, seen[1:]))  # counts only grow
