"""Progress and cancel of a job on a worker thread (no Qt): omeloc.napari._progress."""

from __future__ import annotations

import threading

import dask
import dask.array as da
import pytest

from omeloc.errors import OmelocError
from omeloc.napari._progress import Cancelled, TaskProgress, Tracker


def _graph():
    return da.ones((64, 64), chunks=8).sum()


def test_task_progress_counts_only_the_graphs_of_its_own_thread():
    seen = []
    tracker = Tracker(seen.append, threading.Event())
    other = []
    with TaskProgress(tracker):
        worker = threading.Thread(
            target=lambda: other.append(dask.compute(_graph(), scheduler="threads"))
        )
        worker.start()
        worker.join()
        n_before = len(seen)
        (total,) = dask.compute(_graph(), scheduler="threads")
    assert (
        other and n_before == 0
    )  # a graph computed on another thread (the viewer's reads) is not counted
    assert total == 64 * 64
    assert seen[0].done == 0 and seen[-1].done == seen[-1].total > 0
    assert seen[-1].percent == 100 and seen[-1].rate > 0 and seen[-1].eta == 0


def test_cancel_stops_the_graph_at_the_next_task_with_an_omeloc_error():
    cancel = threading.Event()
    seen = []

    def emit(snap):
        seen.append(snap)
        if snap.done == 3:
            cancel.set()

    with TaskProgress(Tracker(emit, cancel)), pytest.raises(Cancelled) as err:
        dask.compute(_graph(), scheduler="synchronous")
    assert isinstance(err.value, OmelocError)  # the write-back rolls back exactly on its own errors
    assert "rolled back" in str(err.value)
    assert max(s.done for s in seen) == 3 < seen[0].total


def test_cancel_spares_graphs_of_other_threads():
    cancel = threading.Event()
    cancel.set()
    result = []
    with TaskProgress(Tracker(lambda snap: None, cancel)):
        worker = threading.Thread(target=lambda: result.append(dask.compute(_graph())[0]))
        worker.start()
        worker.join()
    assert result == [64 * 64]
