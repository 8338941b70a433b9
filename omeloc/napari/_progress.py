"""Progress and cancellation of a job running on a worker thread (no Qt here).

The jobs report progress through omeloc's one convention (``progress(done, total)``,
:data:`omeloc.progress.ProgressArg`).  Plate prediction computes its pixels with Dask's local
scheduler, so :class:`TaskProgress` counts the finished Dask tasks of the graphs computed *on
the thread that entered it* (the napari worker), leaving the viewer's own Dask reads alone.

Cancelling raises :class:`Cancelled` at the next reported step.  It is an
:class:`~omeloc.errors.OmelocError`, so the write-back treats it as a refused write: the plate
is rolled back exactly as it was (no chunks are kept for a resume), as after any error.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dask.callbacks import Callback

from omeloc.errors import OmelocError

__all__ = ["Cancelled", "Snapshot", "TaskProgress", "Tracker"]


class Cancelled(OmelocError, RuntimeError):
    """The user cancelled the job from the viewer."""


@dataclass(frozen=True)
class Snapshot:
    """Where a job stands: ``done`` of ``total`` steps of its current ``stage``, rate and ETA."""

    done: int
    total: int
    rate: float
    """Steps per second since the stage began."""
    eta: float
    """Seconds left in the stage (``nan`` before the first step)."""
    stage: int = 1
    unit: str = "task"

    @property
    def percent(self) -> int:
        """Progress of the stage, 0-100."""
        return int(100 * self.done / self.total) if self.total else 0

    def text(self) -> str:
        """``"stage 1: 12/40 tasks, 3.1 tasks/s, ETA 9 s"``."""
        eta = "…" if self.eta != self.eta else f"{self.eta:.0f} s"
        return (
            f"stage {self.stage}: {self.done}/{self.total} {self.unit}s, "
            f"{self.rate:.1f} {self.unit}s/s, ETA {eta}"
        )


class Tracker:
    """Turns ``(done, total)`` steps into :class:`Snapshot` s sent to ``emit``, and stops on cancel.

    Parameters
    ----------
    emit
        Called with each :class:`Snapshot` (from the worker thread).
    cancel
        Set it (from any thread) to stop the job at its next step with :class:`Cancelled`.
    unit
        What a step is (``"task"``, ``"step"``).
    outcome
        What a cancelled job leaves behind, said in the :class:`Cancelled` message.
    """

    def __init__(
        self,
        emit: Callable[[Snapshot], None],
        cancel: threading.Event,
        unit: str = "task",
        outcome: str = "the plate was rolled back as it was before the run",
    ) -> None:
        self.emit, self.cancel, self.unit, self.outcome = emit, cancel, unit, outcome
        self.stage, self._t0 = 0, time.perf_counter()

    def begin(self, total: int) -> None:
        """A new stage of ``total`` steps begins (a new Dask graph)."""
        self.check()
        self.stage += 1
        self._t0 = time.perf_counter()
        self.emit(Snapshot(0, total, 0.0, float("nan"), self.stage, self.unit))

    def __call__(self, done: int, total: int) -> None:
        """Report ``done`` of ``total`` steps (the ``progress`` callback of a job)."""
        self.check()
        if self.stage == 0:
            self.stage = 1
        elapsed = max(time.perf_counter() - self._t0, 1e-9)
        rate = done / elapsed
        eta = (total - done) / rate if rate > 0 else float("nan")
        self.emit(Snapshot(done, total, rate, eta, self.stage, self.unit))

    def check(self) -> None:
        """Raise :class:`Cancelled` when the user asked to stop."""
        if self.cancel.is_set():
            raise Cancelled(f"Cancelled from the viewer; {self.outcome}.")


class TaskProgress(Callback):
    """Count the finished tasks of the Dask graphs computed locally on this thread (context
    manager).

    Graphs computed on other threads (napari reading the plate's layers) are not counted, and
    cancelling never interrupts them.
    """

    def __init__(self, tracker: Tracker) -> None:
        super().__init__()
        self.tracker = tracker
        self._thread = threading.get_ident()
        self._done, self._total = 0, 0

    def _ours(self) -> bool:
        return threading.get_ident() == self._thread

    def _start_state(self, dsk: Any, state: dict[str, Any]) -> None:
        if self._ours():
            self._done = 0
            self._total = sum(len(state[k]) for k in ("ready", "waiting", "running", "finished"))
            self.tracker.begin(self._total)

    def _posttask(self, key: Any, result: Any, dsk: Any, state: Any, worker_id: Any) -> None:
        if self._ours():
            self._done += 1
            self.tracker(self._done, self._total)
