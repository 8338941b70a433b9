"""Run a job on a napari thread worker with progress, cancel and one-line outcomes (Qt).

Qt is imported when a job starts, not with the module: every module of omeloc imports in an
environment without a Qt binding (the widgets need one only when they are built).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any

from omeloc.errors import OmelocError
from omeloc.napari._progress import Cancelled, Snapshot, Tracker

__all__ = ["Job", "describe_error"]


@functools.cache
def _relay_class() -> type:
    """A QObject class whose signals carry what the worker thread reports to the main thread
    (queued)."""
    from qtpy.QtCore import QObject, Signal

    class Relay(QObject):
        progressed = Signal(object)
        noted = Signal(object)

    return Relay


def describe_error(err: BaseException) -> str:
    """The line a widget shows for a failed job: omeloc's own message (problem and fix) as it is."""
    if isinstance(err, Cancelled):
        return f"cancelled: {err}"
    if isinstance(err, OmelocError):
        return f"error: {err}"
    return f"failed: {type(err).__name__}: {err}"


class Job:
    """One job on a napari thread worker (:func:`napari.qt.threading.create_worker`).

    Parameters
    ----------
    fn
        Called on the worker thread as ``fn(tracker, note)``: ``tracker`` is the ``progress``
        callback to hand to the job (:class:`~omeloc.napari._progress.Tracker`), ``note(obj)``
        sends anything else to ``on_note`` on the main thread.
    on_progress, on_done, on_error, on_note
        Called on the main thread with a :class:`Snapshot`, the return value, the exception,
        and each noted object.
    unit, outcome
        What a progress step is; what a cancelled job leaves behind.
    """

    def __init__(
        self,
        fn: Callable[[Tracker, Callable[[Any], None]], Any],
        *,
        on_progress: Callable[[Snapshot], None],
        on_done: Callable[[Any], None],
        on_error: Callable[[BaseException], None],
        on_note: Callable[[Any], None] | None = None,
        on_finish: Callable[[], None] | None = None,
        unit: str = "task",
        outcome: str = "the plate was rolled back as it was before the run",
    ) -> None:
        from napari.qt.threading import create_worker

        self.cancel_event = threading.Event()
        self._relay = _relay_class()()
        self._relay.progressed.connect(on_progress)
        if on_note is not None:
            self._relay.noted.connect(on_note)
        tracker = Tracker(self._relay.progressed.emit, self.cancel_event, unit, outcome)
        self.worker = create_worker(fn, tracker, self._relay.noted.emit, _ignore_errors=True)
        self.worker.returned.connect(on_done)
        self.worker.errored.connect(on_error)
        if on_finish is not None:
            self.worker.finished.connect(on_finish)
        self.finished = False
        """Whether the job has ended and its outcome was handed to ``on_done`` or ``on_error``."""
        self.worker.finished.connect(self._mark_finished)
        self.worker.start()

    def _mark_finished(self) -> None:
        self.finished = True

    def cancel(self) -> None:
        """Stop the job at its next step (it raises :class:`Cancelled` there)."""
        self.cancel_event.set()

    @property
    def running(self) -> bool:
        """Whether the job has not ended yet."""
        return not self.finished
