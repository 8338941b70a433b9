"""A tqdm progress bar (with ETA) for Dask's local schedulers."""

from __future__ import annotations

from typing import Any

from dask.callbacks import Callback

__all__ = ["TqdmCallback"]


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
