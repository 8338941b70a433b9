"""Dask clusters run the way users run them: a ``dask scheduler`` and ``dask worker`` processes.

The README's distributed section is exactly what these tests run:

    dask scheduler --port PORT &
    dask worker tcp://127.0.0.1:PORT --nworkers 2 --nthreads 1 --resources GPU=1 &
    omeloc predict plate.zarr --model ck --scheduler tcp://127.0.0.1:PORT

(on CPU here: ``--resources GPU=1`` is what a GPU node advertises; the annotation logic is the
same).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

import omeloc
from conftest import assert_same_pixels, tree_digest
from omeloc.cli import main
from omeloc.writeback.journal import JOURNAL_KEY

pytestmark = pytest.mark.slow

DASK = str(Path(sys.executable).with_name("dask"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra: str) -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", **extra)


@contextmanager
def cluster(
    tmp_path: Path,
    *,
    resources: str | None = "GPU=1",
    nworkers: int = 2,
    worker_env: dict | None = None,
    worker_prefix: list[str] | None = None,
):
    """A scheduler and a worker command (``nworkers`` processes) on 127.0.0.1; yields the
    address."""
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    log = open(tmp_path / "cluster.log", "w")
    procs = [
        subprocess.Popen(
            [DASK, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
            stdout=log,
            stderr=log,
            env=_env(),
            start_new_session=True,
        )
    ]
    worker = [
        DASK,
        "worker",
        address,
        "--nworkers",
        str(nworkers),
        "--nthreads",
        "1",
        "--no-dashboard",
        "--memory-limit",
        "2GiB",
    ]
    if resources:
        worker += ["--resources", resources]
    procs.append(
        subprocess.Popen(
            [*(worker_prefix or []), *worker],
            stdout=log,
            stderr=log,
            env=_env(**(worker_env or {})),
            start_new_session=True,
            cwd=tmp_path,
        )
    )
    try:
        from distributed import Client

        with Client(address, timeout=60) as client:
            client.wait_for_workers(nworkers, timeout=120)
        yield address, procs
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
        log.close()


def _omeloc(
    *argv: str, env: dict | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "omeloc.cli", "-q", *argv],
        capture_output=True,
        text=True,
        timeout=300,
        env=env or _env(),
        cwd=cwd,
        check=False,
    )


def _phase(plate: Path) -> str | None:
    attrs = json.loads((plate / "zarr.json").read_text()).get("attributes", {})
    return (attrs.get(JOURNAL_KEY) or {}).get("phase")


@pytest.fixture(scope="module")
def setup(tiny_trained):
    return tiny_trained(fields=2)


@pytest.mark.parametrize("resources", ["GPU=1", None], ids=["gpu-resources", "no-resources"])
def test_predict_through_a_scheduler_equals_a_local_run(setup, tmp_path, capsys, resources):
    plate0, ckpt, ref = setup
    plate = tmp_path / "plate.zarr"
    shutil.copytree(plate0, plate)
    with cluster(tmp_path, resources=resources) as (address, _):
        # the driver in this process (the scheduler and the workers are processes of their own)
        code = main(["-q", "predict", str(plate), "--model", str(ckpt), "--scheduler", address])
        assert code == 0, capsys.readouterr().err
        from distributed import Client

        from omeloc.engine.cache import model_loads

        with Client(address, timeout=30) as client:
            loads = client.run(model_loads)
    assert_same_pixels(plate, ref)
    # every worker that ran inference loaded the model once (not once per task: 4 images, 2 workers)
    assert loads and all(n <= 1 for n in loads.values()), loads
    assert sum(loads.values()) >= 1, loads


def test_a_worker_killed_mid_run_moves_its_task(setup, tmp_path):
    plate0, ckpt, ref = setup
    plate = tmp_path / "plate.zarr"
    shutil.copytree(plate0, plate)
    marker = tmp_path / "killed-once"
    with cluster(tmp_path, worker_env={"OMELOC_TEST_KILL_WORKER_ONCE": str(marker)}) as (
        address,
        _,
    ):
        # a driver process of its own (with the driver in the test process: 45 s instead of 11)
        proc = _omeloc("predict", str(plate), "--model", str(ckpt), "--scheduler", address)
    assert marker.exists(), "no worker was killed: the test did not test anything"
    assert proc.returncode == 0, proc.stderr
    assert_same_pixels(plate, ref)


@pytest.mark.parametrize("when", ["before-the-pixels", "during-the-pixels"])
def test_the_scheduler_gone_mid_run_is_one_line_and_the_plate_recovers(setup, tmp_path, when):
    plate0, ckpt, _ = setup
    plate = tmp_path / "plate.zarr"
    shutil.copytree(plate0, plate)
    before = tree_digest(plate)
    # before: the driver holds still once the levels are resized; during: the inference tasks hold
    # still
    driver_env, worker_env, after = (
        ({"OMELOC_TEST_PAUSE_AT": "resized", "OMELOC_TEST_PAUSE_SECONDS": "8"}, {}, 0.0)
        if when == "before-the-pixels"
        else ({}, {"OMELOC_TEST_PAUSE_AT": "predict_block", "OMELOC_TEST_PAUSE_SECONDS": "3"}, 1.0)
    )
    with cluster(tmp_path, worker_env=worker_env) as (address, procs):
        run = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "omeloc.cli",
                "-q",
                "predict",
                str(plate),
                "--model",
                str(ckpt),
                "--scheduler",
                address,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(**driver_env),
        )
        deadline = time.time() + 120
        while _phase(plate) != "resized":
            assert run.poll() is None, run.communicate()
            assert time.time() < deadline, "predict never reached its write phase"
            time.sleep(0.1)
        time.sleep(after)
        os.killpg(procs[0].pid, signal.SIGKILL)  # the scheduler dies while the driver writes pixels
        _, err = run.communicate(timeout=300)
    assert run.returncode == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and f"Lost the Dask scheduler at {address}" in lines[0], err
    assert "rolled back" in lines[0] and "restart" in lines[0], err
    rec = _omeloc("recover", str(plate))
    assert rec.returncode == 0, rec.stderr
    assert tree_digest(plate) == before


def test_a_checkpoint_the_workers_cannot_read_is_refused_before_any_write(setup, tmp_path):
    plate0, ckpt, _ = setup
    if (
        shutil.which("unshare") is None
        or subprocess.run(
            ["unshare", "-m", "--propagation", "private", "true"], capture_output=True, check=False
        ).returncode
        != 0
    ):
        pytest.skip("needs unshare -m (a mount namespace) to hide the checkpoint from the workers")
    plate = tmp_path / "plate.zarr"
    shutil.copytree(plate0, plate)
    before = tree_digest(plate)
    hidden = tmp_path / "models"
    shutil.copytree(ckpt, hidden / "ck")
    # the workers run in a mount namespace where the checkpoint's folder is an empty tmpfs:
    # what a worker on another node sees when the checkpoint lies on the driver's local disk
    prefix = [
        "unshare",
        "-m",
        "--propagation",
        "private",
        "sh",
        "-c",
        f'mount -t tmpfs none "{hidden}" && exec "$0" "$@"',
    ]
    with cluster(tmp_path, worker_prefix=prefix) as (address, _):
        # a driver that reaches the write (the lock, the journal) dies there: exit 2 proves the
        # refusal came first
        proc = _omeloc(
            "predict",
            str(plate),
            "--model",
            str(hidden / "ck"),
            "--scheduler",
            address,
            env=_env(OMELOC_TEST_KILL_AT="before_lock"),
        )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(hidden / "ck") in lines[0], proc.stderr
    said = lines[0].replace(str(tmp_path), "PATH")  # tmp_path's own name contains "workers"
    assert "2 of 2 Dask worker(s)" in said and "shared file system" in said, proc.stderr
    assert tree_digest(plate) == before


def _most_at_once(spans: list[tuple[float, float]], slack: float = 0.05) -> int:
    """The largest number of (start, stop) intervals running at one moment.

    Each interval is shortened by ``slack`` seconds at both ends: the task stream's timestamps
    include a few milliseconds of bookkeeping around each 0.5 s task, so a task that starts as
    another one ends can look like an overlap of 3-8 ms.
    """
    inner = [(a + slack, b - slack) for a, b in spans]
    return max(sum(1 for a, b in inner if a <= t < b) for t, _ in inner)


@pytest.mark.parametrize(
    ("gpus", "at_once"), [(1, 1), (2, 2)], ids=["GPU=1-one-at-a-time", "GPU=2-two-at-once"]
)
def test_inference_tasks_per_worker_follow_its_gpu_resource(
    setup, tmp_path, monkeypatch, gpus, at_once
):
    """A worker with two threads runs one inference task at a time per GPU unit it advertises.

    ``dask worker --nthreads 2 --resources GPU=2`` (here a LocalCluster, on CPU) runs two
    inference tasks of one GPU at once; ``GPU=1`` one, whatever its threads.  Each inference
    task sleeps 0.5 s (the fault hook) so that overlap is measurable; the model loads once.
    """
    from distributed import Client, LocalCluster, get_task_stream

    from omeloc.engine.cache import model_loads

    plate0, ckpt, ref = setup
    plate = tmp_path / "plate.zarr"
    shutil.copytree(plate0, plate)
    monkeypatch.setenv("OMELOC_TEST_PAUSE_AT", "predict_block")  # the worker processes inherit it
    monkeypatch.setenv("OMELOC_TEST_PAUSE_SECONDS", "0.5")
    with (
        LocalCluster(
            n_workers=1,
            threads_per_worker=2,
            processes=True,
            resources={"GPU": gpus},
            dashboard_address=None,
        ) as lc,
        Client(lc) as client,
    ):
        with get_task_stream(client=client) as stream:
            omeloc.predict(plate, ckpt, client=client, progress=False)
        loads = client.run(model_loads)
    spans = [
        (s["start"], s["stop"])
        for task in stream.data
        if "omeloc-region-" in str(task["key"])
        for s in task["startstops"]
        if s["action"] == "compute"
    ]
    assert len(spans) == 4, spans  # one inference task per image
    assert _most_at_once(spans) == at_once, spans
    assert list(loads.values()) == [1], loads
    assert_same_pixels(plate, ref)


def test_each_worker_check_says_why_it_cannot_use_the_checkpoint(setup, tmp_path):
    from omeloc.jobs.predict import worker_checkpoint_problem
    from omeloc.learn.checkpoint import CheckpointRef

    _, ckpt, _ = setup
    key = CheckpointRef(ckpt).key
    assert worker_checkpoint_problem(str(ckpt), key) is None
    assert "No such file" in worker_checkpoint_problem(str(tmp_path / "elsewhere"), key)
    assert "differs" in worker_checkpoint_problem(str(ckpt), "checkpoint:another")


def test_only_a_lost_scheduler_becomes_a_scheduler_error():
    from types import SimpleNamespace

    from distributed.comm.core import CommClosedError

    from omeloc.compute import scheduler_errors
    from omeloc.errors import CorruptDataError, SchedulerError

    connected = SimpleNamespace(
        status="running", scheduler=SimpleNamespace(address="tcp://10.0.0.1:8786")
    )
    gone = SimpleNamespace(
        status="closed", scheduler=SimpleNamespace(address="tcp://10.0.0.1:8786")
    )
    with pytest.raises(FileNotFoundError), scheduler_errors(connected):
        raise FileNotFoundError("a task's own error")  # the scheduler is fine: not its fault
    with pytest.raises(CorruptDataError), scheduler_errors(gone):
        raise CorruptDataError("omeloc's own error, already one line")
    for client, err in (
        (connected, CommClosedError("in <TCP>: Stream is closed")),
        (gone, TimeoutError()),
        (gone, OSError("Timed out trying to connect")),
    ):
        with (
            pytest.raises(SchedulerError, match="Lost the Dask scheduler at tcp://10.0.0.1:8786"),
            scheduler_errors(client),
        ):
            raise err
