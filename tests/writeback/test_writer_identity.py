"""One writer identity and one liveness rule: lock and journal never disagree about a writer."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

from omeloc.writeback.identity import WriterIdentity, process_start_time, running
from omeloc.writeback.lock import lock_stale
from omeloc.writeback.record import BackupSummary, ImageEntry, Journal

RUN = "ab" * 16


def _journal(writer: WriterIdentity, heartbeat: float, run_id: str = RUN) -> Journal:
    return Journal(
        run_id=run_id,
        writer=writer,
        started="2026-01-01T00:00:00+00:00",
        heartbeat=heartbeat,
        phase="resized",
        mode="append",
        names=("x",),
        channel_index=2,
        n_channels=2,
        zarr_format=3,
        images=(ImageEntry(path="A/1/0", c_axis=0, arrays=("A/1/0/0",)),),
        docs={},
    )


@pytest.fixture(scope="module")
def sleeper():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    time.sleep(0.2)
    yield proc
    proc.kill()
    proc.wait()


def _cases(sleeper) -> dict[str, tuple[WriterIdentity, float, bool]]:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    here, now = socket.gethostname(), time.time()
    me = WriterIdentity.current()
    live = WriterIdentity(
        host=here, pid=sleeper.pid, pid_start=process_start_time(sleeper.pid), boot_id=me.boot_id
    )
    return {  # name: (writer, heartbeat, alive)
        "live process here": (live, 0.0, True),
        "live process, start time unknown": (WriterIdentity(host=here, pid=sleeper.pid), 0.0, True),
        "dead process here": (WriterIdentity(host=here, pid=dead.pid), now, False),
        "pid reused by another process": (
            WriterIdentity(host=here, pid=sleeper.pid, pid_start="1"),
            now,
            False,
        ),
        "rebooted since": (
            WriterIdentity(host=here, pid=sleeper.pid, boot_id="another-boot"),
            now,
            False,
        )
        if me.boot_id
        else (WriterIdentity(host=here, pid=dead.pid), now, False),
        "this process, no live run": (me, now, False),
        "another host, fresh heartbeat": (WriterIdentity(host="elsewhere", pid=1), now - 5, True),
        "another host, silent for 2 h": (
            WriterIdentity(host="elsewhere", pid=1),
            now - 7200,
            False,
        ),
    }


def test_lock_and_journal_apply_the_same_liveness_rule(sleeper):
    for name, (writer, beat, alive) in _cases(sleeper).items():
        holder = {"run_id": RUN, "purpose": "add_channel", **writer.to_json(), "heartbeat": beat}
        assert lock_stale(holder, stale_after=3600) is (not alive), name
        assert _journal(writer, beat).writer_alive(stale_after=3600) is alive, name


def test_a_live_run_of_this_process_is_alive_for_lock_and_journal():
    me = WriterIdentity.current()
    holder = {"run_id": RUN, **me.to_json(), "heartbeat": 0.0}
    with running(RUN):
        assert not lock_stale(holder, 3600) and _journal(me, 0.0).writer_alive(3600)
    assert lock_stale(holder, 3600) and not _journal(me, 0.0).writer_alive(3600)


def test_another_hosts_writer_gets_at_least_fifteen_heartbeats():
    holder = {
        "run_id": RUN,
        **WriterIdentity(host="elsewhere", pid=1).to_json(),
        "heartbeat": time.time() - 20,
    }
    assert not lock_stale(holder, stale_after=1)  # 20 s < 15 x 2 s
    assert _journal(WriterIdentity(host="elsewhere", pid=1), time.time() - 20).writer_alive(
        stale_after=1
    )


def test_identity_from_an_untrusted_document_is_refused_not_guessed():
    for doc in (
        {"pid": "12", "host": "h"},
        {"pid": 0, "host": "h"},
        {"pid": 2**40, "host": "h"},
        {"pid": 5},
        {"pid": 5, "host": "h", "pid_start": 7},
        "text",
        None,
    ):
        assert WriterIdentity.from_json(doc) is None, doc
    assert WriterIdentity.from_json({"pid": os.getpid(), "host": "h"}) == WriterIdentity(
        host="h", pid=os.getpid()
    )


def test_journal_record_round_trips_through_its_json():
    journal = _journal(WriterIdentity.current(), time.time()).at_phase(
        "backed_up", backup=BackupSummary(files=3, bytes=300, manifest="f" * 64)
    )
    doc = journal.to_json()
    assert doc["version"] == 1 and doc["phase"] == "backed_up" and "names" not in doc
    assert Journal.from_json(doc, zarr_format=3) == journal
    assert (
        journal["backup"] == {"files": 3, "bytes": 300, "manifest": "f" * 64} and {**journal} == doc
    )  # JSON keys
    several = journal.replace(names=("x", "x 1"), chunks_restored=True).to_json()
    assert several["names"] == ["x", "x 1"] and several["chunks_restored"] is True
