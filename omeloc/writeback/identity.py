"""Who writes a plate, and the one rule that says whether that writer is still alive.

The plate lock (:mod:`omeloc.writeback.lock`) and the write-back journal
(:mod:`omeloc.writeback.record`) both record their writer as a :class:`WriterIdentity`
(host, pid, the process's start time and the host's boot id), and both ask
:func:`writer_alive` whether it still runs: so the lock, the journal and ``recover`` can
never disagree about one writer.

The rule (a writer is alive unless it is *provably* dead):

- a run of this process is alive exactly while it is registered (:func:`running`);
- on the same host (and boot), the pid must exist and, where both are known, started at the
  recorded time (a pid reused by another process is not the writer);
- the same host name with another boot id: the host was rebooted since, the writer is gone;
- on another host, its heartbeat must be younger than ``max(stale_after, MISSED_BEATS x
  interval)``, which a live writer (refreshing every ``interval`` seconds) never reaches;
  the clocks of the hosts must agree to within that.

Both records are stored flat, as omeloc always wrote them (``pid``, ``host``,
``pid_start``; ``boot_id`` since this module), so locks and journals of earlier versions
are read and older versions read ours.
"""

from __future__ import annotations

import collections
import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "HEARTBEAT_SECONDS",
    "MISSED_BEATS",
    "WriterIdentity",
    "is_running_here",
    "process_start_time",
    "register",
    "running",
    "unregister",
    "writer_alive",
]

#: how often a lock holder refreshes its heartbeat (seconds)
HEARTBEAT_SECONDS = 2.0
#: a writer on another host is dead only after this many heartbeats were missed (at least)
MISSED_BEATS = 15
#: the largest pid a Linux kernel hands out (``pid_max`` is at most 2**22)
_MAX_PID = 2**22

_LIVE: collections.Counter[str] = collections.Counter()
_LIVE_GUARD = threading.Lock()


def process_start_time(pid: int) -> str | None:
    """Start time of process ``pid`` (clock ticks since boot, from /proc), or None where unknown.

    With the pid it identifies a process across pid reuse.
    """
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _boot_id() -> str | None:
    """The kernel's boot id (changes at every boot), or None where unknown."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as fh:
            return fh.read().strip() or None
    except OSError:
        return None


@dataclass(frozen=True)
class WriterIdentity:
    """One process that writes a plate: where it runs and which process it is.

    Attributes
    ----------
    host : str
        ``socket.gethostname()`` of the writer.
    pid : int
        Its process id.
    pid_start : str or None
        Its start time in clock ticks since boot (``/proc/<pid>/stat``), where known.
    boot_id : str or None
        The host's boot id, where known (older records have none).
    """

    host: str
    pid: int
    pid_start: str | None = None
    boot_id: str | None = None

    @classmethod
    def current(cls) -> WriterIdentity:
        """This process."""
        pid = os.getpid()
        return cls(
            host=socket.gethostname(),
            pid=pid,
            pid_start=process_start_time(pid),
            boot_id=_boot_id(),
        )

    def to_json(self) -> dict[str, Any]:
        """The flat fields a lock or journal document holds (``boot_id`` only when known)."""
        out: dict[str, Any] = {"pid": self.pid, "host": self.host, "pid_start": self.pid_start}
        if self.boot_id is not None:
            out["boot_id"] = self.boot_id
        return out

    @classmethod
    def from_json(cls, doc: Any) -> WriterIdentity | None:
        """The identity held by a lock or journal document; ``None`` when it holds no valid one.

        A plate is untrusted input: a pid out of range, a host that is not a string, ... is
        not an identity omeloc recorded.
        """
        if not isinstance(doc, Mapping):
            return None
        pid, host = doc.get("pid"), doc.get("host")
        start, boot = doc.get("pid_start"), doc.get("boot_id")
        if not (isinstance(pid, int) and not isinstance(pid, bool) and 0 < pid <= _MAX_PID):
            return None
        if not (isinstance(host, str) and host):
            return None
        if not all(v is None or isinstance(v, str) for v in (start, boot)):
            return None
        return cls(host=host, pid=pid, pid_start=start, boot_id=boot)


def register(run_id: str) -> None:
    """Count ``run_id`` as a live run of this process (until as many :func:`unregister` calls)."""
    with _LIVE_GUARD:
        _LIVE[run_id] += 1


def unregister(run_id: str) -> None:
    """Undo one :func:`register` of ``run_id``."""
    with _LIVE_GUARD:
        _LIVE[run_id] -= 1
        if _LIVE[run_id] <= 0:
            del _LIVE[run_id]


@contextlib.contextmanager
def running(run_id: str) -> Iterator[None]:
    """Register ``run_id`` as a live run of this process for the duration (may nest)."""
    register(run_id)
    try:
        yield
    finally:
        unregister(run_id)


def is_running_here(run_id: str) -> bool:
    """Whether ``run_id`` is a live run of this process."""
    with _LIVE_GUARD:
        return _LIVE[run_id] > 0


def writer_alive(
    writer: WriterIdentity,
    run_id: str,
    heartbeat: float,
    *,
    stale_after: float,
    interval: float = HEARTBEAT_SECONDS,
) -> bool:
    """Whether the writer of run ``run_id`` may still be running (see the module docstring).

    Parameters
    ----------
    writer : WriterIdentity
        Who wrote the lock or journal.
    run_id : str
        The run it recorded.
    heartbeat : float
        Its last sign of life (``time.time()``), used for writers on other hosts.
    stale_after : float
        Seconds without a heartbeat after which a writer on another host is dead (never less
        than ``MISSED_BEATS`` heartbeats).
    interval : float
        The writer's heartbeat interval.
    """
    if is_running_here(run_id):
        return True
    if writer.host == socket.gethostname():
        return _process_alive(writer)
    timeout = max(float(stale_after), MISSED_BEATS * float(interval))
    return time.time() - float(heartbeat) <= timeout


def _process_alive(writer: WriterIdentity) -> bool:
    """Whether the writer's process, on this host, still runs."""
    boot = _boot_id()
    if writer.boot_id is not None and boot is not None and writer.boot_id != boot:
        return False  # the host was rebooted since
    if writer.pid == os.getpid():
        return False  # our own process, but not a live run: a call that died half-way
    try:
        os.kill(writer.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process: it exists
    except (OverflowError, ValueError):
        return False
    return writer.pid_start is None or writer.pid_start == process_start_time(writer.pid)
