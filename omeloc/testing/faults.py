"""Fault injection: the one hook through which tests kill or pause omeloc at a named point.

The library calls :func:`fault_point` at the points where a crash matters (each phase of the
write-back protocol, each written block, each training step, the middle of a TIFF import).
It does nothing unless one of these environment variables is set by a test:

``OMELOC_TEST_KILL_AT=<point>``
    SIGKILL this process when it reaches ``<point>``.
``OMELOC_TEST_PAUSE_AT=<point>`` (with ``OMELOC_TEST_PAUSE_SECONDS``, default 5)
    sleep there, to hold a write open while a test starts another process.
``OMELOC_TEST_KILL_WORKER_ONCE=<marker file>``
    the first Dask *worker* process that reaches point ``"predict_block"`` creates the marker
    and SIGKILLs itself (the scheduler must move the task to another worker).

Counted points: a point named ``"level0_block"`` (each level-0 block written) is also reported as
``"level0_mid"`` from its second call on in a process, ``"backup_file"`` (each chunk copied into an
overwrite's backup) as ``"backup_mid"``, and ``"batch_document"`` (each document of a concurrent
round of metadata writes) as ``"batch_mid"``, so a test can kill a run half-way through its pixels,
its backup or a round of document writes.  ``OMELOC_TEST_AT_CALL=<n>`` moves that to the n-th call.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

__all__ = ["fault_point", "ENV_VARS"]

logger = logging.getLogger(__name__)

ENV_VARS = ("OMELOC_TEST_KILL_AT", "OMELOC_TEST_PAUSE_AT", "OMELOC_TEST_KILL_WORKER_ONCE")
_COUNTS: dict[str, int] = {}
#: counted point → the name it is also reported as from the n-th call on (n: OMELOC_TEST_AT_CALL,
#: default 2)
_COUNTED = {
    "level0_block": "level0_mid",
    "backup_file": "backup_mid",
    "batch_document": "batch_mid",
}
_LOCK = threading.Lock()


def fault_point(point: str) -> None:
    """Kill or pause here if a test asked for it (a no-op otherwise)."""
    if not any(var in os.environ for var in ENV_VARS):
        return
    if point in _COUNTED:
        with _LOCK:
            _COUNTS[point] = _COUNTS.get(point, 0) + 1
            if _COUNTS[point] >= int(os.environ.get("OMELOC_TEST_AT_CALL", "2")):
                point = _COUNTED[point]
    if os.environ.get("OMELOC_TEST_PAUSE_AT") == point:
        time.sleep(float(os.environ.get("OMELOC_TEST_PAUSE_SECONDS", "5")))
    if os.environ.get("OMELOC_TEST_KILL_AT") == point:
        _kill(f"OMELOC_TEST_KILL_AT={point}")
    if point == "predict_block" and os.environ.get("OMELOC_TEST_KILL_WORKER_ONCE"):
        _kill_worker_once(os.environ["OMELOC_TEST_KILL_WORKER_ONCE"])


def _kill(why: str) -> None:
    logger.warning("%s: killing process %d", why, os.getpid())
    os.kill(os.getpid(), signal.SIGKILL)


def _kill_worker_once(marker: str) -> None:
    try:
        from distributed import get_worker

        get_worker()
    except (ImportError, ValueError):
        return  # not on a distributed worker
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return
    _kill("OMELOC_TEST_KILL_WORKER_ONCE")
