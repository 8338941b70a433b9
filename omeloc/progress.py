"""Progress reporting: one small protocol (:class:`ProgressReporter`) and its implementations.

Every long-running call of omeloc (train, predict, import, rechunk, relate, evaluate) takes a
``progress`` argument (:data:`ProgressArg`) and reports through :func:`reporter`:

- ``False`` / ``None``: :class:`QuietProgress`, nothing is shown;
- ``True``: :class:`ConsoleProgress` (a tqdm bar with rate and ETA) when stderr is a
  terminal, else :class:`LogProgress`: a plain line every few seconds (step, rate, ETA,
  loss; ``OMELOC_PROGRESS_EVERY`` seconds, default 10), for ``nohup``, ``tee``, SLURM and CI
  logs, where a bar would print nothing useful;
- a callable ``(done, total)`` (what a napari widget passes): :class:`CallbackProgress`;
- any object with the protocol's methods: used as it is.

A Dask compute on a local scheduler reports its finished tasks through
:class:`DaskProgress` (``TqdmCallback`` is its former name); on a ``distributed`` cluster,
:func:`cluster_progress` reports the scheduler's count of finished tasks to the same reporters.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable
from typing import IO, Any, Protocol, Self, runtime_checkable

from dask.callbacks import Callback

__all__ = [
    "CallbackProgress",
    "ConsoleProgress",
    "DaskProgress",
    "LogProgress",
    "Progress",
    "ProgressArg",
    "ProgressReporter",
    "QuietProgress",
    "TqdmCallback",
    "cluster_progress",
    "reporter",
]


@runtime_checkable
class ProgressReporter(Protocol):
    """What every progress display implements."""

    def start(self, total: int | None, desc: str = "", unit: str = "it", initial: int = 0) -> None:
        """A run of ``total`` steps (``None``: unknown yet) begins, ``initial`` of them done."""

    def update(self, done: int, total: int | None = None, **info: float) -> None:
        """``done`` steps are done (``total``: when it changed); ``info``: figures (``l1=...``)."""

    def close(self) -> None:
        """The run is over (finished or failed)."""


#: The one convention for ``progress`` arguments (see the module docstring).
ProgressArg = bool | None | Callable[[int, int], None] | ProgressReporter


class QuietProgress:
    """Shows nothing."""

    def start(self, total: int | None, desc: str = "", unit: str = "it", initial: int = 0) -> None:
        """Nothing."""

    def update(self, done: int, total: int | None = None, **info: float) -> None:
        """Nothing."""

    def close(self) -> None:
        """Nothing."""


class CallbackProgress:
    """Calls ``fn(done, total)`` at every update (the form a napari widget passes)."""

    def __init__(self, fn: Callable[[int, int], None]) -> None:
        self.fn = fn
        self.total = 0

    def start(self, total: int | None, desc: str = "", unit: str = "it", initial: int = 0) -> None:
        """Remember the total."""
        self.total = total or 0

    def update(self, done: int, total: int | None = None, **info: float) -> None:
        """Call the function."""
        if total is not None:
            self.total = total
        self.fn(done, self.total)

    def close(self) -> None:
        """Nothing to close."""


def _figures(info: dict[str, float]) -> str:
    return ", ".join(
        f"{k} {v:.4g}" for k, v in info.items() if isinstance(v, int | float) and math.isfinite(v)
    )


class ConsoleProgress:
    """A tqdm bar on stderr with the rate, the ETA and the latest figures (``loss``, ...)."""

    def __init__(self, leave: bool = False) -> None:
        self.leave = leave
        self._bar: Any = None

    def start(self, total: int | None, desc: str = "", unit: str = "it", initial: int = 0) -> None:
        """Open the bar."""
        from tqdm.auto import tqdm

        self._bar = tqdm(
            total=total, initial=initial, desc=desc, unit=unit, leave=self.leave, dynamic_ncols=True
        )

    def update(self, done: int, total: int | None = None, **info: float) -> None:
        """Move the bar to ``done``."""
        if self._bar is None:
            return
        if total is not None and total != self._bar.total:
            self._bar.total = total
            self._bar.refresh()
        if info:
            self._bar.set_postfix_str(_figures(info), refresh=False)
        self._bar.update(done - self._bar.n)

    def close(self) -> None:
        """Close the bar."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class LogProgress:
    """A plain line every ``every`` seconds (``train: step 120/300 (40%), 3.1 step/s, ETA 58 s``).

    For logs that are not a terminal (``nohup``, ``tee``, SLURM, CI).  The first line comes
    after ``every`` seconds (a short run prints nothing), a last one when a run that printed
    lines ends.

    Parameters
    ----------
    stream : file, optional
        Where the lines go (default ``sys.stderr`` at the time of writing).
    every : float, optional
        Seconds between lines (default: ``OMELOC_PROGRESS_EVERY`` from the environment, else 10).
    clock : callable
        The time source (tests pass their own).
    """

    def __init__(
        self,
        stream: IO[str] | None = None,
        every: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if every is None:
            every = float(os.environ.get("OMELOC_PROGRESS_EVERY", "10"))
        self.stream, self.every, self.clock = stream, float(every), clock
        self.desc, self.unit, self.total = "", "it", None
        self.done = self.initial = 0
        self.info: dict[str, float] = {}
        self.printed = 0
        self._t0 = self._last = 0.0

    def start(self, total: int | None, desc: str = "", unit: str = "it", initial: int = 0) -> None:
        """Start the clock."""
        self.desc, self.unit, self.total = desc, unit, total
        self.done = self.initial = initial
        self.printed = 0
        self._t0 = self._last = self.clock()

    def update(self, done: int, total: int | None = None, **info: float) -> None:
        """Record ``done``; write a line when ``every`` seconds passed since the last one."""
        self.done = done
        if total is not None:
            self.total = total
        self.info.update(info)
        now = self.clock()
        if now - self._last >= self.every:
            self._last = now
            self._write(self.line(now))

    def close(self) -> None:
        """Write the last line (when the run printed any)."""
        if self.printed:
            self._write(
                self.line(self.clock()) + " (done)"
                if self.done == self.total
                else self.line(self.clock())
            )

    def line(self, now: float) -> str:
        """The line that says where the run stands at time ``now``."""
        elapsed = max(now - self._t0, 1e-9)
        rate = (self.done - self.initial) / elapsed
        head = f"{self.desc or 'progress'}: {self.unit} {self.done}"
        parts = [
            head + (f"/{self.total} ({100 * self.done / self.total:.0f}%)" if self.total else "")
        ]
        parts.append(f"{rate:.3g} {self.unit}/s")
        if self.total and rate > 0 and self.done < self.total:
            parts.append(f"ETA {_duration((self.total - self.done) / rate)}")
        figures = _figures(self.info)
        return ", ".join(parts + ([figures] if figures else []))

    def _write(self, text: str) -> None:
        stream = self.stream if self.stream is not None else sys.stderr
        print(text, file=stream, flush=True)
        self.printed += 1


def _duration(seconds: float) -> str:
    """``58 s``, ``12 min``, ``3.5 h``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def reporter(progress: ProgressArg) -> ProgressReporter:
    """The :class:`ProgressReporter` a ``progress`` argument asks for (see the module docstring)."""
    if progress is None or progress is False:
        return QuietProgress()
    if progress is True:
        return ConsoleProgress() if _is_terminal() else LogProgress()
    if isinstance(progress, ProgressReporter):
        return progress
    if callable(progress):
        return CallbackProgress(progress)
    raise TypeError(
        f"Expected progress True, False, a callable (done, total) or a reporter. Got {progress!r}."
    )


class DaskProgress(Callback):
    """Report the finished Dask tasks of a local compute (default reporter: ``reporter(True)``)."""

    def __init__(self, desc: str = "", progress: ProgressArg = True, **_: Any) -> None:
        super().__init__()
        self._desc = desc
        self._reporter = reporter(progress)
        self._done = 0

    def _start_state(self, dsk, state) -> None:
        total = sum(len(state[k]) for k in ("ready", "waiting", "running", "finished"))
        self._done = 0
        self._reporter.start(total, desc=self._desc, unit="task")

    def _posttask(self, key, result, dsk, state, worker_id) -> None:
        self._done += 1
        self._reporter.update(self._done)

    def _finish(self, dsk, state, errored) -> None:
        self._reporter.close()


def cluster_progress(
    futures: Any, desc: str = "", progress: ProgressArg = True, interval: str = "500ms"
) -> None:
    """Report the tasks behind ``futures`` as a ``distributed`` scheduler finishes them; return when
    all are done or one failed (what ``distributed.progress`` does, through omeloc's reporters).

    Parameters
    ----------
    futures
        The futures of a ``client.compute`` (or anything ``distributed``'s progress bars take).
    desc
        The label of the bar or log line.
    progress
        A :data:`ProgressArg`: a bar in a terminal, a line every few seconds in a log, a callable
        ``(done, total)``.
    interval
        How often the scheduler sends its counts.
    """
    from distributed.diagnostics.progressbar import TextProgressBar

    shown = reporter(progress)

    class _Bar(TextProgressBar):
        started = False

        def _draw_bar(self, remaining: int, all: int, **_: Any) -> None:  # noqa: A002 (distributed's name)
            if not self.started:
                shown.start(all, desc=desc, unit="task")
                self.started = True
            shown.update(all - remaining, all)

        def _draw_stop(self, **_: Any) -> None:
            shown.close()

    try:
        _Bar(futures if isinstance(futures, list | tuple) else [futures], interval=interval)
    finally:
        shown.close()


#: The former name of :class:`DaskProgress`.
TqdmCallback = DaskProgress


class Progress:
    """Report ``done`` out of ``total`` steps to a :data:`ProgressArg` (context manager).

    Examples
    --------
    >>> seen = []
    >>> with Progress(lambda done, total: seen.append((done, total)), total=2) as bar:
    ...     bar.advance()
    ...     bar.advance()
    >>> seen
    [(1, 2), (2, 2)]
    """

    def __init__(self, progress: ProgressArg, total: int, desc: str = "", unit: str = "it") -> None:
        self.total = total
        self.done = 0
        self._reporter = reporter(progress)
        self._reporter.start(total, desc=desc, unit=unit)

    def advance(self, n: int = 1, **info: float) -> None:
        """Count ``n`` more steps as done."""
        self.done += n
        self._reporter.update(self.done, **info)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self._reporter.close()
