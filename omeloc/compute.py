"""Choosing where a Dask graph runs: the local threaded scheduler, a LocalCluster, or a cluster.

One code path: callers build a graph and call :func:`compute` with the client this module
hands them (``None`` means Dask's local threaded scheduler).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import dask

from omeloc.errors import InputError, SchedulerError

__all__ = ["dask_client", "compute"]

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def dask_client(
    client: Any = None,
    *,
    scheduler: str | None = None,
    workers: int | None = None,
    threads_per_worker: int = 1,
    timeout: float = 10.0,
) -> Iterator[Any]:
    """Yield the ``distributed.Client`` to compute on, or ``None`` for the local threaded scheduler.

    Parameters
    ----------
    client
        An existing ``distributed.Client``: used as is, not closed.
    scheduler
        Address of a running scheduler (``tcp://host:8786``); connected for the duration.
    workers
        Start a process-based ``LocalCluster`` with this many workers (scripts that do this
        need an ``if __name__ == "__main__":`` guard).
    threads_per_worker
        Threads per LocalCluster worker (torch's intra-op threads are set per worker).
    timeout
        Seconds to wait for a scheduler before giving up.

    Raises
    ------
    SchedulerError
        The scheduler cannot be reached.
    """
    given = sum(x is not None for x in (client, scheduler, workers))
    if given > 1:
        raise InputError("Give at most one of client, scheduler (--scheduler) and workers (--workers).")
    if client is not None:
        yield client
        return
    if scheduler is None and workers is None:
        yield None
        return
    from distributed import Client, LocalCluster

    if workers is not None:
        if workers < 1:
            raise InputError(f"Expected --workers >= 1. Got {workers} instead.")
        with LocalCluster(
            n_workers=workers, threads_per_worker=threads_per_worker, processes=True,
            dashboard_address=None, silence_logs=logging.ERROR,
        ) as cluster, Client(cluster) as c:
            logger.info("started a LocalCluster with %d worker processes", workers)
            yield c
        return
    try:
        c = Client(scheduler, timeout=timeout)
    except (OSError, TimeoutError) as err:
        raise SchedulerError(
            f"Cannot reach the Dask scheduler at {scheduler} ({type(err).__name__}). "
            f"Start it (dask scheduler) or fix --scheduler."
        ) from err
    try:
        yield c
    finally:
        c.close()


def compute(*collections: Any, client: Any = None, progress: bool = False, desc: str = "") -> Sequence[Any]:
    """Compute Dask collections on ``client`` (or locally), optionally with a progress bar and ETA."""
    if client is None:
        if progress:
            from omeloc.progress import TqdmCallback

            with TqdmCallback(desc=desc):
                return dask.compute(*collections)
        return dask.compute(*collections)
    futures = client.compute(list(collections))
    if progress:
        from distributed import progress as dprogress

        dprogress(futures)
    return client.gather(futures)
