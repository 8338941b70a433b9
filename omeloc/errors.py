"""omeloc's error hierarchy.

Every error a user can cause derives from :class:`OmelocError` and from the builtin
exception it resembles, so ``except ValueError`` keeps working for callers that do not know
omeloc.  Messages are one line: what is wrong, then how to fix it.
"""

from __future__ import annotations

__all__ = [
    "OmelocError",
    "InputError",
    "NotOmeZarrError",
    "PathNotFoundError",
    "ChannelNotFoundError",
    "LayoutError",
    "ReadOnlyStoreError",
    "ConcurrentWriteError",
    "CheckpointError",
    "SchedulerError",
    "CorruptDataError",
    "UnsafePathError",
    "JournalError",
    "StoreAccessError",
    "StoreFailedError",
]


class OmelocError(Exception):
    """Base class of every error omeloc raises on purpose (bad input, refused operation)."""


class InputError(OmelocError, ValueError):
    """An argument or a piece of data is not what omeloc expects."""


class NotOmeZarrError(OmelocError, ValueError):
    """A path is not an OME-Zarr image or plate, or its metadata is broken."""


class PathNotFoundError(OmelocError, FileNotFoundError):
    """A path, well or image named by the user or by metadata does not exist."""


class ChannelNotFoundError(OmelocError, LookupError):
    """A channel name is not among the image's channels."""


class LayoutError(OmelocError, ValueError):
    """The store's chunk layout would force rewriting original chunks."""


class ReadOnlyStoreError(OmelocError, PermissionError):
    """The store cannot be written."""


class ConcurrentWriteError(OmelocError, RuntimeError):
    """Another omeloc run holds the plate's write journal."""


class CheckpointError(OmelocError, ValueError):
    """A checkpoint is missing, truncated, unsafe or for other channels."""


class SchedulerError(OmelocError, ConnectionError):
    """A Dask scheduler cannot be reached."""


class CorruptDataError(OmelocError, OSError):
    """Pixels cannot be read: a chunk file is corrupted, truncated or unreadable."""


class UnsafePathError(InputError):
    """A path read from a plate, a journal or a checkpoint would leave its store (``..``,
    absolute, symlink)."""


class JournalError(InputError):
    """A write-back journal found in a plate is malformed, tampered with or names foreign keys."""


class StoreAccessError(OmelocError, OSError):
    """An object store cannot be used: its endpoint is unreachable, a bucket is missing, access
    is denied."""


class StoreFailedError(OmelocError, OSError):
    """An object store kept failing (5xx answers, throttling, time-outs) after its client's retries.

    Not the user's input: the command line exits 1 (:attr:`exit_code`); the plate was left as it
    was before the run (rolled back), or the message says how to finish it.
    """

    exit_code = 1
