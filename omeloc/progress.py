"""Progress reporting: the one ``progress`` convention (:class:`Progress`) and a tqdm bar for Dask's local schedulers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Union

from dask.callbacks import Callback

__all__ = ["TqdmCallback", "Progress", "ProgressArg"]


class TqdmCallback(Callback):
    """Show the number of finished Dask tasks as a tqdm bar while a local compute runs."""

    def __init__(self, desc: str = "", **tqdm_kwargs: Any) -> None:
        super().__init__()
        self._desc = desc
        self._kwargs = tqdm_kwargs
        self._bar = None

    def _start_state(self, dsk, state) -> None:
        from tqdm.auto import tqdm

        total = sum(len(state[k]) for k in ("ready", "waiting", "running", "finished"))
        self._bar = tqdm(total=total, desc=self._desc, unit="task", leave=False, **self._kwargs)

    def _posttask(self, key, result, dsk, state, worker_id) -> None:
        if self._bar is not None:
            self._bar.update(1)

    def _finish(self, dsk, state, errored) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


#: The one convention for ``progress`` arguments: ``False``/``None`` shows nothing, ``True``
#: shows a tqdm bar, a callable receives ``(done, total)`` after each step.
ProgressArg = Union[bool, None, Callable[[int, int], None]]


class Progress:
    """Report ``done`` out of ``total`` steps to a :data:`ProgressArg` (context manager).

    Examples
    --------
    >>> with Progress(True, total=10, desc="fields") as bar:  # doctest: +SKIP
    ...     for _ in range(10):
    ...         bar.advance()
    """

    def __init__(self, progress: ProgressArg, total: int, desc: str = "", unit: str = "it") -> None:
        self.total = total
        self.done = 0
        self._callback = progress if callable(progress) else None
        self._bar = None
        if progress is True:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, leave=False)

    def advance(self, n: int = 1) -> None:
        """Count ``n`` more steps as done."""
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
        if self._callback is not None:
            self._callback(self.done, self.total)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.close()
