"""The write protocol under attack (issue 18): races for the lock, kills during a backup, a full
disk, readers during a write, Ctrl-C leftovers, and a storm of random kills.

Every test ends with every original byte intact (``tree_digest``) or with the result an
uninterrupted run gives, and with nothing left behind (journal, lock, stash, backup).
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_same_pixels, random_plate_images, tree_digest

import omeloc
from omeloc.cli import main
from omeloc.errors import ConcurrentWriteError, InputError
from omeloc.ngff.format import chunk_coords
from omeloc.ngff.writer import write_plate
from omeloc.writeback import protocol
from omeloc.writeback.journal import JOURNAL_KEY, StoreIO
from omeloc.writeback.lock import LOCK_KEY, PlateLock
from omeloc.writeback.protocol import PENDING_KEY, add_channel, recover

_META = {"zarr.json", ".zattrs", ".zarray", ".zgroup", ".zmetadata"}

from writeback_writer import WRITER_PATH, make_data  # noqa: E402


# -- helpers -----------------------------------------------------------------------------------
def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMELOC_TEST_")}
    return dict(env, OMP_NUM_THREADS="1", **extra)


def _writer(
    tmp_path: Path, plate: Path, seed: int = 1, overwrite: bool = False, **env: str
) -> subprocess.Popen:
    script = WRITER_PATH
    return subprocess.Popen(
        [sys.executable, str(script), str(plate), str(seed), "1" if overwrite else "0"],
        env=_env(**env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _cli(*args: str, **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "omeloc.cli", "-q", *args],
        env=_env(**env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


_DEFAULT_SIGINT = (
    "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT}); sys.argv[0] = 'omeloc'; "
    "runpy.run_module('omeloc.cli', run_name='__main__', alter_sys=True)"
)


def _interruptible_cli(*args: str, **env: str) -> subprocess.Popen:
    """:func:`_cli`, taking Ctrl-C (SIGINT) as a terminal would deliver it, whatever this test
    process ignores or blocks (both are inherited through exec)."""
    return subprocess.Popen(
        [sys.executable, "-c", _DEFAULT_SIGINT, "-q", *args],
        env=_env(**env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _root_attrs(plate: Path) -> dict:
    if (plate / "zarr.json").exists():
        return json.loads((plate / "zarr.json").read_text()).get("attributes", {})
    return json.loads((plate / ".zattrs").read_text())


def _journal(plate: Path) -> dict | None:
    return _root_attrs(plate).get(JOURNAL_KEY)


def _lock(plate: Path) -> dict | None:
    try:
        return json.loads((plate / LOCK_KEY).read_text())
    except (FileNotFoundError, ValueError):
        return None


def _wait(cond, proc: subprocess.Popen | None, what: str, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not cond():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the process ended before {what}: {proc.communicate()}")
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _chunks(digest: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in digest.items() if k.rsplit("/", 1)[-1] not in _META}


def _clean(plate: Path) -> None:
    """No journal, no lock, no stash or backup files, and one omero entry per channel everywhere."""
    assert _journal(plate) is None
    leftovers = [
        p.name for p in plate.iterdir() if p.name.startswith(".omeloc")
    ]  # files and folders
    assert not leftovers, leftovers
    for img in omeloc.open_plate(plate).images:
        assert len(img.omero["channels"]) == img.shape[img.axes.index("c")], img.path
        assert not any(PENDING_KEY in c for c in img.omero["channels"]), img.path


def _semantic(path: Path, name: str = "pred") -> dict:
    """Pixels of every level and the metadata, minus the per-run fields (run id, time)."""
    out = {}
    for img in omeloc.open_plate(path).images:
        prov = {
            k: v
            for k, v in img.attrs["omeloc"]["channels"][name].items()
            if k not in ("run_id", "created")
        }
        out[img.path] = (
            img.omero,
            prov,
            [img.level(i).compute().tobytes() for i in range(len(img.level_paths))],
        )
    return out


def _new_chunks(plate: Path, index: int) -> int:
    """Level-0 chunk files of channel ``index`` in every image."""
    io = StoreIO(str(plate))
    n = 0
    for img in omeloc.open_plate(plate).images:
        rel = f"{img.path}/{img.level_paths[0]}"
        doc = io.read_json(io.array_doc(rel))
        for key in io.list(rel):
            coords = chunk_coords(key[len(rel) + 1 :], doc)
            n += coords is not None and coords[img.axes.index("c")] == index
    return n


# -- fixtures ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Per NGFF version: a template, the template plus channel "pred" (seed 1), and that
    overwritten (seed 2)."""
    root = tmp_path_factory.mktemp("tiny")
    out = {}
    for version in ("0.4", "0.5"):
        plate = write_plate(
            root / f"t{version}.zarr",
            random_plate_images("A", ("1", "2"), ("0",), (2, 64, 48)),
            channel_names=["actin", "WAVE2"],
            ngff_version=version,
            chunks=(32, 32),
            levels=2,
        )
        appended = root / f"append{version}.zarr"
        shutil.copytree(plate, appended)
        add_channel(appended, "pred", make_data(appended, 1), provenance={"model": "m1"})
        overwritten = root / f"over{version}.zarr"
        shutil.copytree(appended, overwritten)
        add_channel(
            overwritten,
            "pred",
            make_data(overwritten, 2),
            overwrite=True,
            provenance={"model": "m1"},
        )
        out[version] = (plate, appended, overwritten)
    return out


@pytest.fixture(scope="module")
def trained(tiny_trained):
    """A plate, a tiny model for actin → WAVE2, and the plate with that model's prediction."""
    plate, ckpt, ref = tiny_trained()
    return plate, str(ckpt), ref


def _copy(src: Path, tmp_path: Path, name: str = "p.zarr") -> Path:
    dst = tmp_path / name
    shutil.copytree(src, dst)
    return dst


# -- holes 4, 5, 9: one lock, taken atomically before anything else ------------------------------
def test_lock_is_taken_by_exactly_one_of_many_threads(tiny, tmp_path):
    plate = _copy(tiny["0.5"][0], tmp_path)
    before = tree_digest(plate)
    barrier, won, refused, locks = threading.Barrier(8), [], [], []

    def contend():
        lock = PlateLock(StoreIO(str(plate)), purpose="test")
        barrier.wait()
        try:
            lock.__enter__()
        except ConcurrentWriteError:
            refused.append(1)
            return
        won.append(1)
        locks.append(lock)

    threads = [threading.Thread(target=contend) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert (len(won), len(refused)) == (1, 7)
    locks[0].release()
    assert tree_digest(plate) == before


def test_dead_writers_lock_is_taken_over_live_or_foreign_ones_refused(tiny, tmp_path):
    plate = _copy(tiny["0.5"][0], tmp_path)
    before = tree_digest(plate)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    me = {
        "host": socket.gethostname(),
        "pid_start": None,
        "heartbeat": time.time(),
        "purpose": "add_channel",
    }
    (plate / LOCK_KEY).write_text(json.dumps({**me, "run_id": "d" * 32, "pid": dead.pid}))
    with PlateLock(StoreIO(str(plate)), purpose="test") as lock:
        assert lock.taken_over["run_id"] == "d" * 32
    assert tree_digest(plate) == before
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        garbled = {
            "run_id": "g",
            "pid": "abc",
            "host": "two\nlines",
            "heartbeat": "soon",
            "purpose": "x\ny",
        }
        for holder in ({**me, "run_id": "e" * 32, "pid": sleeper.pid}, "not json", garbled):
            (plate / LOCK_KEY).write_text(holder if isinstance(holder, str) else json.dumps(holder))
            with pytest.raises(ConcurrentWriteError, match="being written") as info:
                add_channel(plate, "x", make_data(plate, 1))
            msg = str(info.value)
            assert len(msg.splitlines()) == 1 and f"omeloc recover {plate} --force" in msg, msg
            assert "omeloc.recover(" not in msg
        assert recover(plate, force=True) is None  # --force takes it, and releases it
    finally:
        sleeper.kill()
        sleeper.wait()
    assert tree_digest(plate) == before


def test_rechunk_holds_the_source_lock(tiny, tmp_path):
    from omeloc.writeback.rechunk import rechunk

    src = _copy(tiny["0.5"][0], tmp_path)
    before = tree_digest(src)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        holder = {
            "run_id": "f" * 32,
            "pid": sleeper.pid,
            "host": socket.gethostname(),
            "pid_start": None,
            "heartbeat": time.time(),
            "purpose": "add_channel",
        }
        (src / LOCK_KEY).write_text(json.dumps(holder))
        with pytest.raises(ConcurrentWriteError, match="being written"):
            rechunk(src, tmp_path / "copy.zarr")
        assert not (tmp_path / "copy.zarr").exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    (src / LOCK_KEY).unlink()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rechunk(src, tmp_path / "copy.zarr")
    assert not [w for w in caught if ".omeloc" in str(w.message)]
    assert tree_digest(src) == before
    assert_same_pixels(src, tmp_path / "copy.zarr")


@pytest.mark.slow
def test_two_predicts_racing_for_the_lock_exactly_one_writes(trained, tmp_path):
    template, ckpt, ref = trained
    plate = _copy(template, tmp_path)
    env = {"OMELOC_TEST_PAUSE_AT": "before_lock", "OMELOC_TEST_PAUSE_SECONDS": "3"}
    first = _cli("predict", str(plate), "--model", ckpt, **env)
    time.sleep(0.1)
    second = _cli("predict", str(plate), "--model", ckpt, **env)
    results = [p.communicate(timeout=300) for p in (first, second)]
    codes = sorted(p.returncode for p in (first, second))
    assert codes == [0, 2], results
    loser_err = results[[first.returncode, second.returncode].index(2)][1].strip()
    assert len(loser_err.splitlines()) == 1, loser_err
    assert "being written" in loser_err or "already exists" in loser_err, loser_err
    _clean(plate)
    assert_same_pixels(plate, ref)


@pytest.mark.slow
def test_predict_during_a_paused_recover_is_refused(trained, tmp_path, capsys):
    template, ckpt, ref = trained
    plate = _copy(template, tmp_path)
    original = tree_digest(plate)
    killed = _cli("predict", str(plate), "--model", ckpt, OMELOC_TEST_KILL_AT="level0_mid")
    killed.communicate(timeout=300)
    assert killed.returncode == -signal.SIGKILL
    assert _journal(plate) is not None
    # recover holds the lock, has deleted the new chunks and waits before restoring the documents
    # (stopped there, SIGSTOP, while predict runs: a live holder however slow predict is under load)
    rec = _cli(
        "recover", str(plate), OMELOC_TEST_PAUSE_AT="rollback_docs", OMELOC_TEST_PAUSE_SECONDS="4"
    )
    _wait(
        lambda: (_lock(plate) or {}).get("purpose") == "recover" and _new_chunks(plate, 2) == 0,
        rec,
        "recover to hold the lock",
    )
    rec.send_signal(signal.SIGSTOP)
    try:
        code = main(["-q", "predict", str(plate), "--model", ckpt])
    finally:
        rec.send_signal(signal.SIGCONT)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "being written" in err, err
    out, rec_err = rec.communicate(timeout=120)
    assert rec.returncode == 0, rec_err
    assert "rolled back" in out
    assert tree_digest(plate) == original
    assert main(["-q", "predict", str(plate), "--model", ckpt]) == 0
    _clean(plate)
    assert_same_pixels(plate, ref)


def test_heartbeat_is_refreshed_during_a_long_pixel_phase(tiny, tmp_path, monkeypatch):
    template, reference, _ = tiny["0.5"]
    plate = _copy(template, tmp_path)
    proc = _writer(
        tmp_path, plate, OMELOC_TEST_PAUSE_AT="level0_written", OMELOC_TEST_PAUSE_SECONDS="7"
    )
    _wait(lambda: (_journal(plate) or {}).get("phase") == "resized", proc, "the pixel phase")
    beats = set()
    t_end = time.time() + 5
    while time.time() < t_end:
        beats.add((_lock(plate) or {}).get("heartbeat"))
        time.sleep(0.1)
    assert len(beats - {None}) >= 3, beats  # refreshed every ~2 s while the main thread waits
    # seen from another host with a short stale_after, the live writer is still alive
    monkeypatch.setattr(socket, "gethostname", lambda: "another-host")
    with pytest.raises(ConcurrentWriteError, match="being written"):
        recover(plate, stale_after=1)
    monkeypatch.undo()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    _clean(plate)
    assert _semantic(plate) == _semantic(reference)


# -- hole 3: an overwrite cannot lose the previous channel ------------------------------------
@pytest.mark.slow
def test_kill_during_overwrite_backup_keeps_the_previous_channel(trained, tmp_path, capsys):
    _, ckpt, ref = trained
    plate = _copy(ref, tmp_path)
    before = tree_digest(plate)
    killed = _cli(
        "predict",
        str(plate),
        "--model",
        ckpt,
        "--overwrite",
        OMELOC_TEST_KILL_AT="backup_mid",
        OMELOC_TEST_AT_CALL="4",
    )
    killed.communicate(timeout=300)
    assert killed.returncode == -signal.SIGKILL
    assert len([p for p in (plate / ".omeloc_backup").rglob("*") if p.is_file()]) == 4
    assert _chunks(before).items() <= _chunks(tree_digest(plate)).items(), (
        "the old channel was touched"
    )
    assert main(["recover", str(plate)]) == 0
    assert "rolled back" in capsys.readouterr().out
    assert tree_digest(plate) == before
    assert main(["-q", "predict", str(plate), "--model", ckpt, "--overwrite", "--wells", "A1"]) == 0
    _clean(plate)
    assert_same_pixels(plate, ref)  # A2 kept its previous (non-zero) values, A1 was predicted again
    a2 = omeloc.open_plate(plate).image("A/2/0").channel("WAVE2 (virtual)").compute()
    assert a2.any()


def test_rollback_refuses_a_backup_that_is_not_intact(tiny, tmp_path, capsys):
    _, appended, _ = tiny["0.5"]
    plate = _copy(appended, tmp_path)
    proc = _writer(tmp_path, plate, seed=2, overwrite=True, OMELOC_TEST_KILL_AT="resized")
    proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL and _journal(plate)["phase"] == "resized"
    victim = next(
        p for p in (plate / ".omeloc_backup").rglob("*") if p.is_file() and "manifest" not in p.name
    )
    victim.unlink()
    killed_state = tree_digest(plate)
    assert main(["recover", str(plate)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not intact" in err, err
    after = tree_digest(plate)
    after.pop(LOCK_KEY, None)  # the dead writer's lock was taken over; recover released it
    killed_state.pop(LOCK_KEY, None)
    assert after == killed_state, "a refused rollback changed the plate"


# -- hole 6: a full disk never leaves a half-written plate ---------------------------------------
def _fill_disk(monkeypatch, frees_on_delete: bool, writes_allowed: int = 2) -> dict:
    """From the pixel phase on, the disk is full after ``writes_allowed`` writes; deleting may
    free it."""
    from zarr.storage import LocalStore

    state = {"started": False, "full": False, "writes": 0, "refused": 0}
    real_set, real_delete = LocalStore.set, LocalStore.delete
    real_fault = protocol.fault_point

    def fault(point):
        if point == "resized":
            state["started"] = True
        real_fault(point)

    async def set_(self, key, value):
        if state["started"]:
            state["writes"] += 1
            state["full"] = state["full"] or state["writes"] > writes_allowed
        if state["full"]:
            state["refused"] += 1
            raise OSError(errno.ENOSPC, "No space left on device")
        return await real_set(self, key, value)

    async def delete(self, key):
        if frees_on_delete:
            state["full"], state["started"] = False, False
        return await real_delete(self, key)

    monkeypatch.setattr(protocol, "fault_point", fault)
    monkeypatch.setattr(LocalStore, "set", set_)
    monkeypatch.setattr(LocalStore, "delete", delete)
    return state


@pytest.mark.slow
def test_full_disk_including_stash_then_recover(trained, tmp_path, capsys, monkeypatch):
    template, ckpt, ref = trained
    plate = _copy(template, tmp_path)
    before = tree_digest(plate)
    state = _fill_disk(monkeypatch, frees_on_delete=False)
    code = main(["predict", str(plate), "--model", ckpt])
    monkeypatch.undo()
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "space" in err.lower() and f"omeloc recover {plate}" in err, err
    assert state["refused"] > 2  # pixels, the stash and the rollback's own writes were all refused
    assert main(["recover", str(plate)]) == 0
    assert tree_digest(plate) == before
    assert main(["-q", "predict", str(plate), "--model", ckpt]) == 0
    assert_same_pixels(plate, ref)


@pytest.mark.slow
def test_full_disk_freed_by_the_rollback_leaves_the_plate_as_it_was(
    trained, tmp_path, capsys, monkeypatch
):
    template, ckpt, _ = trained
    plate = _copy(template, tmp_path)
    before = tree_digest(plate)
    state = _fill_disk(monkeypatch, frees_on_delete=True)
    code = main(["predict", str(plate), "--model", ckpt])
    monkeypatch.undo()
    err = capsys.readouterr().err.strip()
    assert (
        code == 2 and len(err.splitlines()) == 1 and "No space left" in err and "rolled back" in err
    ), err
    assert state["refused"] >= 1
    assert tree_digest(plate) == before


# -- hole 8: readers never see a channel count without its omero entry ----------------------------
@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_readers_never_see_channels_without_omero_entries(tiny, tmp_path, version):
    template, reference, _ = tiny[version]
    plate = _copy(template, tmp_path)
    v3 = version == "0.5"
    images = [(img.path, img.level_paths) for img in omeloc.open_plate(plate).images]
    group_doc, array_doc = ("zarr.json", "zarr.json") if v3 else (".zattrs", ".zarray")

    def snapshot(path, levels):
        attrs = json.loads((plate / path / group_doc).read_text())
        omero = (attrs["attributes"]["ome"] if v3 else attrs)["omero"]
        shapes = [json.loads((plate / path / lv / array_doc).read_text())["shape"] for lv in levels]
        return omero["channels"], [s[0] for s in shapes]

    seen = {"reads": 0, "pending": 0, "bad": []}
    stop = threading.Event()

    def reader():
        while not stop.is_set():
            for path, levels in images:
                channels, counts = snapshot(path, levels)
                seen["reads"] += 1
                seen["pending"] += any(PENDING_KEY in c and c["active"] is False for c in channels)
                if any(n != len(channels) for n in counts):
                    time.sleep(
                        0.01
                    )  # two documents cannot change at once: a mismatch may last one write
                    channels, counts = snapshot(path, levels)
                    if any(n != len(channels) for n in counts):
                        seen["bad"].append((path, len(channels), counts))

    proc = _writer(
        tmp_path, plate, OMELOC_TEST_PAUSE_AT="level0_written", OMELOC_TEST_PAUSE_SECONDS="2"
    )
    thread = threading.Thread(target=reader)
    thread.start()
    try:
        _, err = proc.communicate(timeout=120)
    finally:
        stop.set()
        thread.join()
    assert proc.returncode == 0, err
    assert not seen["bad"], seen["bad"][:5]
    assert seen["pending"] > 0, "the reader never saw the write in progress"
    _clean(plate)
    assert _semantic(plate) == _semantic(reference)


# -- hole 10: Ctrl-C leftovers, empty names --------------------------------------------------------
@pytest.mark.slow
def test_recover_removes_and_reports_what_ctrl_c_left(trained, tmp_path, capsys):
    template, ckpt, _ = trained
    plate = _copy(template, tmp_path)
    original = tree_digest(plate)
    proc = _interruptible_cli(
        "predict",
        str(plate),
        "--model",
        ckpt,
        OMELOC_TEST_PAUSE_AT="level0_written",
        OMELOC_TEST_PAUSE_SECONDS="60",
    )
    _wait(
        lambda: (_journal(plate) or {}).get("phase") == "resized" and _new_chunks(plate, 2) == 8,
        proc,
        "level 0 to be written",
    )
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    stash = [p for p in (plate / ".omeloc_resume").rglob("*") if p.is_file()]
    assert stash, "Ctrl-C kept no finished chunks (nothing to test)"
    assert _journal(plate) is None and _lock(plate) is None
    assert main(["recover", str(plate)]) == 0
    out = capsys.readouterr().out
    assert f"removed {len(stash)} file(s)" in out, out
    assert tree_digest(plate) == original


@pytest.mark.parametrize("name", ["", "   ", "two\nlines"])
def test_empty_or_control_character_names_are_refused(trained, tmp_path, capsys, name):
    template, ckpt, _ = trained
    plate = _copy(template, tmp_path)
    before = tree_digest(plate)
    code = main(["predict", str(plate), "--model", ckpt, "--name", name])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    with pytest.raises(InputError):
        add_channel(
            plate,
            name,
            {img.path: np.zeros(img.shape[1:]) for img in omeloc.open_plate(plate).images},
        )
    assert tree_digest(plate) == before


# -- the kill storm ------------------------------------------------------------------------------
APPEND_POINTS = [
    "lock_taken",
    "journal",
    "resized",
    "level0_mid",
    "level0_written",
    "level1_written",
    "metadata",
    "complete",
    "timer",
]
OVERWRITE_POINTS = ["backup_mid", "backup_mid", "backup_mid", *APPEND_POINTS]


def _storm_round(rng: random.Random, tiny, tmp_path: Path, n: int) -> bool:
    """One random kill and its recovery; whether the writer was really killed."""
    version = rng.choice(["0.4", "0.5"])
    template, appended, overwritten = tiny[version]
    overwrite = rng.random() < 0.5
    start, reference = (appended, overwritten) if overwrite else (template, appended)
    seed = 2 if overwrite else 1
    point = rng.choice(OVERWRITE_POINTS if overwrite else APPEND_POINTS)
    plate = _copy(start, tmp_path, f"storm{n}.zarr")
    before = tree_digest(plate)
    env = (
        {}
        if point == "timer"
        else {"OMELOC_TEST_KILL_AT": point, "OMELOC_TEST_AT_CALL": str(rng.randint(1, 8))}
    )
    proc = _writer(tmp_path, plate, seed=seed, overwrite=overwrite, **env)
    if point == "timer":
        time.sleep(rng.uniform(1.0, 2.5))
        proc.kill()
    _, err = proc.communicate(timeout=120)
    what = f"round {n}: {version} {'overwrite' if overwrite else 'append'} killed at {point}"
    assert proc.returncode in (0, -signal.SIGKILL), f"{what}: {err[-2000:]}"
    if (
        not overwrite
    ):  # an append never touches an original chunk (an overwrite's are restored below)
        assert _chunks(before).items() <= _chunks(tree_digest(plate)).items(), what
    if rng.random() < 0.5:
        outcome = recover(plate)
        after = tree_digest(plate)
        if outcome == "rollback" or (outcome is None and after == before):
            changed = sorted(k for k in set(after) | set(before) if after.get(k) != before.get(k))
            assert after == before, (
                f"{what}: recover ({outcome}) did not restore every byte: {changed[:5]}"
            )
        else:
            # finished by recover, or the run had completed before the kill (only its lock was left)
            assert _semantic(plate) == _semantic(reference), f"{what}: recover ({outcome})"
    else:
        try:
            add_channel(
                plate,
                "pred",
                make_data(plate, seed),
                overwrite=overwrite,
                provenance={"model": "m1"},
            )
        except InputError:  # the killed run had completed: its channel exists already
            assert not overwrite and recover(plate) in (None, "finish"), what
        assert _semantic(plate) == _semantic(reference), what
    _clean(plate)
    shutil.rmtree(plate)
    return proc.returncode == -signal.SIGKILL


@pytest.mark.slow
@pytest.mark.parametrize("seed", [int(os.environ.get("OMELOC_STORM_SEED", "18"))])
def test_kill_storm(tiny, tmp_path, seed):
    """20 random kills (points, versions, append/overwrite), each followed by recover or a rerun.
    ``OMELOC_STORM_SEED`` picks another storm."""
    rng = random.Random(seed)
    kills = rounds = 0
    while kills < 20:
        rounds += 1
        assert rounds <= 40, f"only {kills} kills in {rounds} rounds"
        kills += _storm_round(rng, tiny, tmp_path, rounds)
