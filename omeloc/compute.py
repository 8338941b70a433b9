"""Choosing where a Dask graph runs: the local threaded scheduler, a LocalCluster, or a cluster.

One code path: callers build a graph and call :func:`compute` with the client this module
hands them (``None`` means a local Dask scheduler).  Where to run is a
:class:`~omeloc.config.ComputeConfig`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import CancelledError
from typing import Any

import dask

from omeloc.config import ComputeConfig
from omeloc.errors import OmelocError, SchedulerError

__all__ = [
    "compute",
    "connect",
    "dask_client",
    "local_cluster",
    "run_on_workers",
    "scheduler_address",
    "scheduler_errors",
]

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def dask_client(
    config: ComputeConfig | Any = None,
    *,
    scheduler: str | None = None,
    workers: int | None = None,
    threads_per_worker: int = 1,
    timeout: float = 10.0,
) -> Iterator[Any]:
    """Yield the ``distributed.Client`` to compute on, or ``None`` for a local Dask scheduler.

    Parameters
    ----------
    config
        Where the work runs (:class:`~omeloc.config.ComputeConfig`).  For the keyword form,
        an existing ``distributed.Client`` (used as is, not closed) or ``None``.
    scheduler, workers
        The keyword form of ``config.scheduler`` and ``config.workers`` (only without a
        ``ComputeConfig``): the address of a running scheduler (``tcp://host:8786``),
        connected for the duration, or a local scheduler name (``"threads"``: yields ``None``);
        a process-based ``LocalCluster`` of ``workers`` workers, closed afterwards (scripts that
        do this need an ``if __name__ == "__main__":`` guard).
    threads_per_worker
        Threads per LocalCluster worker (torch's intra-op threads are set per worker).
    timeout
        Seconds to wait for a scheduler before giving up.

    Raises
    ------
    InputError
        More than one place to run was given.
    SchedulerError
        The scheduler cannot be reached.

    Examples
    --------
    >>> with dask_client(ComputeConfig(workers=2)) as client:   # doctest: +SKIP
    ...     compute(graph, client=client)
    """
    if not isinstance(config, ComputeConfig):
        config = ComputeConfig(client=config, scheduler=scheduler, workers=workers)
    elif scheduler is not None or workers is not None:
        config = config.replace(
            **{k: v for k, v in (("scheduler", scheduler), ("workers", workers)) if v is not None}
        )
    if config.client is not None:
        yield config.client
    elif config.workers is not None:
        with local_cluster(config.workers, threads_per_worker) as client:
            yield client
    elif config.address is not None:
        with connect(config.address, timeout) as client:
            yield client
    else:
        yield None


@contextlib.contextmanager
def local_cluster(workers: int, threads_per_worker: int = 1) -> Iterator[Any]:
    """A process-based ``LocalCluster`` of ``workers`` workers and its client, closed afterwards."""
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=workers,
            threads_per_worker=threads_per_worker,
            processes=True,
            dashboard_address=None,
            silence_logs=logging.ERROR,
        ) as cluster,
        Client(cluster) as client,
    ):
        logger.info("started a LocalCluster with %d worker processes", workers)
        yield client


@contextlib.contextmanager
def connect(address: str, timeout: float = 10.0) -> Iterator[Any]:
    """A client of the running scheduler at ``address``, closed afterwards.

    While connected, the client's own log records about a lost scheduler ("Failed to reconnect
    to scheduler", the traceback of the reconnect loop that closing cancels) are dropped:
    omeloc reports a lost scheduler itself, in one line (:func:`scheduler_errors`).

    Raises
    ------
    SchedulerError
        The scheduler cannot be reached within ``timeout`` seconds.
    """
    from distributed import Client

    try:
        client = Client(address, timeout=timeout)
    except (OSError, TimeoutError) as err:
        raise SchedulerError(
            f"Cannot reach the Dask scheduler at {address} ({type(err).__name__}). "
            f"Start it (dask scheduler) or fix --scheduler."
        ) from err
    _ADDRESSES[client] = address
    client_log, drop = logging.getLogger("distributed.client"), _DropReconnectFailure()
    client_log.addFilter(drop)
    try:
        yield client
    finally:
        try:
            client.close()
        finally:
            client_log.removeFilter(drop)


class _DropReconnectFailure(logging.Filter):
    """Drops the client's reconnect noise once its scheduler is gone (omeloc raises SchedulerError
    instead).

    Two records: "Failed to reconnect to scheduler", and the traceback of the reconnect loop
    that closing the client cancels (an ``asyncio.CancelledError``).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if str(record.msg).startswith("Failed to reconnect to scheduler"):
            return False
        return not (record.exc_info and isinstance(record.exc_info[1], asyncio.CancelledError))


#: client → the address :func:`connect` gave it (a closed client forgets its scheduler's address)
_ADDRESSES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
#: what distributed says when a client has lost its scheduler
_LOST_WORDS = (
    "scheduler-connection-lost",
    "scheduler connection lost",
    "lost the connection to the scheduler",
)


def scheduler_address(client: Any) -> str:
    """The address of ``client``'s scheduler (``tcp://host:port``), or ``"its scheduler"`` when
    unknown."""
    try:
        known = _ADDRESSES.get(client)
    except TypeError:  # not weak-referenceable (not a distributed.Client)
        known = None
    return known or getattr(getattr(client, "scheduler", None), "address", None) or "its scheduler"


@contextlib.contextmanager
def scheduler_errors(client: Any, address: str | None = None) -> Iterator[None]:
    """Turn a lost connection to ``client``'s scheduler into a one-line :class:`SchedulerError`.

    Maps what distributed raises when its scheduler goes away (``CommClosedError``, ``OSError``
    or ``TimeoutError`` from the client, futures cancelled because the "scheduler connection
    lost", ``ClosedClientError`` once the client gave up reconnecting) and leaves every other
    error as it is (a task's own ``OSError`` while the client is connected, omeloc's errors).

    Raises
    ------
    SchedulerError
        The scheduler went away (killed, unreachable) inside the block.
    """
    address = address or scheduler_address(client)
    try:
        yield
    except OmelocError:
        raise
    except Exception as err:
        if client is None or not _scheduler_lost(client, err):
            raise
        raise SchedulerError(
            f"Lost the Dask scheduler at {address} ({_reason(err)}). Check that the scheduler and "
            f"its workers run (dask scheduler, dask worker), restart them if they died, then rerun."
        ) from err


def _scheduler_lost(client: Any, err: BaseException) -> bool:
    from distributed.client import ClosedClientError
    from distributed.comm.core import CommClosedError

    if isinstance(err, CommClosedError | ClosedClientError):
        return True
    if not isinstance(err, OSError | TimeoutError | CancelledError):
        return False
    if any(word in str(err).lower() for word in _LOST_WORDS):
        return True
    return getattr(client, "status", "running") not in ("running", "newly-created")


def _reason(err: BaseException) -> str:
    if isinstance(err, CancelledError):
        return "the computation was cancelled: the client lost its connection"
    if type(err).__name__ == "ClosedClientError":
        return "the client gave up reconnecting and closed"
    text = str(err).strip().splitlines()[0][:150] if str(err).strip() else ""
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def run_on_workers(client: Any, fn: Callable[..., Any], *args: Any) -> dict[str, Any]:
    """``fn(*args)`` on every worker of ``client`` (outside the task graph): worker address →
    result.

    A worker where ``fn`` raised maps to the exception.

    Raises
    ------
    SchedulerError
        The scheduler went away.
    """
    with scheduler_errors(client):
        return dict(client.run(fn, *args, on_error="return"))


def _resource_annotated(collections: Sequence[Any]) -> bool:
    """Whether a layer of ``collections``' graphs asks for a worker resource
    (``dask.annotate(resources=...)``)."""
    for coll in collections:
        graph = getattr(coll, "__dask_graph__", lambda: None)()
        for layer in getattr(graph, "layers", {}).values():
            if "resources" in (getattr(layer, "annotations", None) or {}):
                return True
    return False


def compute(
    *collections: Any,
    client: Any = None,
    progress: bool = False,
    desc: str = "",
    scheduler: str | None = None,
) -> Sequence[Any]:
    """Compute Dask collections on ``client`` (or locally), optionally with a progress bar and ETA.

    On a client, graphs that carry resource annotations (``resources={"GPU": 1}``) are computed
    without Dask's low-level task fusion, which drops annotations (dask/dask#7036): otherwise
    the scheduler would never see that an inference task needs a GPU.

    Parameters
    ----------
    collections
        Dask collections.
    client
        A ``distributed.Client``; ``None``: a local scheduler.
    progress
        Show the finished tasks (:mod:`omeloc.progress`: a bar in a terminal, a line every few
        seconds in a log), locally and on a client alike.
    desc
        Label of the local progress bar.
    scheduler
        Local Dask scheduler name (``"threads"``, ``"synchronous"``) when ``client`` is ``None``;
        default: Dask's (threads).

    Raises
    ------
    SchedulerError
        ``client``'s scheduler went away during the computation.
    """
    if client is None:
        kwargs = {"scheduler": scheduler} if scheduler is not None else {}
        if progress:
            from omeloc.progress import DaskProgress

            with DaskProgress(desc=desc, progress=progress):
                return dask.compute(*collections, **kwargs)
        return dask.compute(*collections, **kwargs)
    keep_annotations = _resource_annotated(collections)
    with (
        scheduler_errors(client),
        dask.config.set({"optimization.fuse.active": False} if keep_annotations else {}),
    ):
        futures = client.compute(list(collections))
        if progress:
            from omeloc.progress import cluster_progress

            cluster_progress(futures, desc=desc, progress=progress)
        return client.gather(futures)
