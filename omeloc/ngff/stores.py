"""Where a plate's bytes are: folders, fsspec URLs, zipped OME-Zarr (``.ozx``), bioformats2raw
wrappers.

- **Zipped OME-Zarr** (RFC-9 ``.ozx``, or a plain ``.zip`` of a Zarr hierarchy) opens by its
  plain local path, and so does any node inside it (``plate.ozx/B/3/0``): zarr's
  :class:`~zarr.storage.ZipStore`, read-only.  A zip cannot be changed in place safely (no
  chunk can be replaced without rewriting the archive), so :func:`check_writable` refuses a
  write there and names the fix.
- **bioformats2raw wrappers** (a root with ``bioformats2raw.layout``) hold one image per
  series in groups ``0``, ``1``, ... (or as the ``OME`` group's ``series`` attribute lists
  them); :func:`wrapper_series` finds them and :func:`pick_series` chooses one.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import errno
import logging
import os
import socket
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import zarr

from omeloc.errors import InputError, ReadOnlyStoreError, StoreAccessError
from omeloc.ngff.documents import CachedStore, DocumentCache

__all__ = [
    "WRAPPER_KEY",
    "ZIP_SUFFIXES",
    "IO_CONCURRENCY",
    "cached_store",
    "check_writable",
    "env_count",
    "fsspec_options",
    "gather_bounded",
    "io_concurrency",
    "missing_bucket",
    "open_group",
    "open_node",
    "pick_series",
    "shutdown_io_loops",
    "store_failure",
    "store_outage",
    "wrapper_series",
    "write_refusal",
    "zip_location",
]

logger = logging.getLogger(__name__)

#: The attribute that marks a bioformats2raw wrapper (NGFF "bioformats2raw.layout" transitional
#: layout).
WRAPPER_KEY = "bioformats2raw.layout"
#: Local files opened as zipped Zarr hierarchies.
ZIP_SUFFIXES = (".ozx", ".zip")
#: The most series :func:`wrapper_series` probes for when the wrapper does not list them.
MAX_SERIES = 4096


def zip_location(url: str | os.PathLike[str]) -> tuple[Path, str] | None:
    """``(zip file, path inside it)`` when local ``url`` is, or lies inside, a zipped Zarr; else
    ``None``.

    Examples
    --------
    >>> zip_location("s3://bucket/plate.ozx") is None  # URLs other than local paths are not opened as zips
    True
    """  # noqa: E501
    text = str(url)
    if "://" in text:
        return None
    parts = Path(text).parts
    for n in range(len(parts), 0, -1):
        head = Path(*parts[:n])
        if head.suffix.lower() in ZIP_SUFFIXES and head.is_file():
            return head, "/".join(parts[n:])
    return None


@lru_cache(maxsize=16)
def _zip_store(path: str, mtime_ns: int, size: int) -> zarr.storage.ZipStore:
    """One read-only ZipStore per zip file version (its modification time and size are in the
    key)."""
    return zarr.storage.ZipStore(path, mode="r", read_only=True)


#: requests in flight at once in a concurrent round of metadata reads or writes (on object storage
#: each is a round trip); ``OMELOC_IO_CONCURRENCY`` changes it
IO_CONCURRENCY = 64


def env_count(name: str, default: int) -> int:
    """A positive whole number from the environment variable ``name`` (``default`` when unset or not
    one)."""
    try:
        return max(1, int(os.environ.get(name, default)))
    except ValueError:
        return default


def io_concurrency() -> int:
    """How many store requests a concurrent round keeps in flight (``OMELOC_IO_CONCURRENCY``,
    default 64)."""
    return env_count("OMELOC_IO_CONCURRENCY", IO_CONCURRENCY)


async def gather_bounded(
    fn: Callable[[Any], Any], items: Sequence[Any], *, return_exceptions: bool = False
) -> list[Any]:
    """``await fn(item)`` for every item, at most :func:`io_concurrency` in flight; results in
    order."""
    gate = asyncio.Semaphore(io_concurrency())

    async def one(item: Any) -> Any:
        async with gate:
            return await fn(item)

    return await asyncio.gather(*(one(item) for item in items), return_exceptions=return_exceptions)


def fsspec_options(url: str, storage_options: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The fsspec options omeloc opens ``url`` with: the caller's, and on S3 one request per object
    read.

    s3fs (2024.12 on) asks for an object's size with a ``HEAD`` before every whole-object read,
    to split large ones over ``max_concurrency`` connections: two round trips for every metadata
    document and chunk. omeloc's objects are small and many are in flight already, so on
    ``s3://`` it sets ``max_concurrency=1`` (unless the caller set it): one ``GET`` per read.
    """
    options = dict(storage_options or {})
    if url.split("://", 1)[0].lower() in ("s3", "s3a"):
        options.setdefault("max_concurrency", 1)
    return options or None


def _where(
    url: str, storage_options: Mapping[str, Any] | None, documents: DocumentCache | None = None
) -> dict[str, Any]:
    """The ``store``/``path``/``storage_options`` arguments that open ``url`` with zarr (read-only
    by default).

    With ``documents`` the store's metadata reads go through that cache
    (:mod:`omeloc.ngff.documents`).
    """
    located = zip_location(url)
    if located is not None:
        zpath, inner = located
        stat = zpath.stat()
        return {
            "store": _zip_store(str(zpath.resolve()), stat.st_mtime_ns, stat.st_size),
            "path": inner or None,
        }
    options = fsspec_options(url, storage_options)
    if documents is None:
        return {"store": url, **({"storage_options": options} if options else {})}
    return {"store": cached_store(url, storage_options, documents)}


def cached_store(
    url: str,
    storage_options: Mapping[str, Any] | None,
    documents: DocumentCache,
    *,
    mode: str = "r",
) -> CachedStore:
    """The store of ``url`` (a folder or fsspec URL), its metadata reads shared through
    ``documents``."""
    from zarr.core.sync import sync
    from zarr.storage._common import make_store_path

    where = sync(
        make_store_path(url, mode=mode, storage_options=fsspec_options(url, storage_options))
    )
    if where.path:  # zarr roots a folder or URL store at the node itself
        raise InputError(f"Cannot open {url} as a store root. Pass the plate's folder or URL.")
    return CachedStore(where.store, documents)


def open_node(
    url: str, storage_options: Mapping[str, Any] | None = None
) -> zarr.Group | zarr.Array:
    """Open the Zarr node at ``url`` read-only: a folder, an fsspec URL, or a node inside a local
    zip.

    Raises whatever zarr raises for a missing or unreadable node (the caller translates it).
    """
    return zarr.open(mode="r", **_where(url, storage_options))


def open_group(
    url: str,
    storage_options: Mapping[str, Any] | None = None,
    *,
    use_consolidated: bool | None = None,
    zarr_format: int | None = None,
    documents: DocumentCache | None = None,
) -> zarr.Group:
    """Open the Zarr group at ``url`` read-only, like :func:`open_node` (zips included).

    With ``zarr_format`` known (and ``use_consolidated=False``) zarr reads one metadata
    document (v3 ``zarr.json``; v2 ``.zgroup`` and ``.zattrs``) instead of probing every kind.
    With ``documents``, every metadata document read through the group is read once.
    """
    return zarr.open_group(
        mode="r",
        use_consolidated=use_consolidated,
        zarr_format=zarr_format,
        **_where(url, storage_options, documents),
    )


def check_writable(url: str | os.PathLike[str]) -> None:
    """Refuse a write into a zipped OME-Zarr (read-only here) with the fix; nothing else is checked.

    Raises
    ------
    ReadOnlyStoreError
        ``url`` is, or lies inside, a ``.ozx`` / ``.zip`` file.
    """
    located = zip_location(url)
    if located is None:
        return
    zpath = located[0]
    folder = zpath.with_suffix(".zarr")
    raise ReadOnlyStoreError(
        f"{zpath} is a zipped OME-Zarr, which omeloc reads but does not write (a zip cannot be "
        f"changed in place). Unzip it into a folder (`python -m zipfile -e {zpath} {folder}`) and "
        f"predict into {folder}; re-zip it afterwards if you need a .ozx."
    )


def wrapper_series(ome: Mapping[str, Any], open_group: Callable[[str], Any]) -> list[str] | None:
    """The series paths of a bioformats2raw wrapper, ``None`` when ``ome`` is not one.

    Parameters
    ----------
    ome : Mapping
        The NGFF metadata of the root (NGFF 0.5 keeps ``bioformats2raw.layout`` under ``ome``,
        0.4 at the top level of the attributes).
    open_group : callable
        Opens a group below the root by relative path and returns its NGFF metadata; raises
        ``FileNotFoundError``, ``KeyError`` or ``ValueError`` (omeloc's not-found and
        not-OME-Zarr errors are both) when there is none.
    """
    if WRAPPER_KEY not in ome:
        return None
    try:
        listed = open_group("OME").get("series")
    except (FileNotFoundError, KeyError, ValueError):
        listed = None
    if isinstance(listed, Sequence) and not isinstance(listed, str) and listed:
        return [str(s) for s in listed]
    found = []
    for i in range(MAX_SERIES):
        try:
            if "multiscales" not in open_group(str(i)):
                break
        except (FileNotFoundError, KeyError, ValueError):
            break
        found.append(str(i))
    return found


def pick_series(url: str, series: Sequence[str], wanted: str | int | None) -> str:
    """The series to open: ``wanted``, or the only one; otherwise an error that lists them.

    Raises
    ------
    InputError
        No series, an unknown ``wanted``, or several series and no choice.
    """
    if not series:
        raise InputError(
            f"{url} is a bioformats2raw wrapper without any series (no group 0, no OME/series "
            f"list). Point omeloc at an OME-Zarr plate or image."
        )
    shown = ", ".join(series[:12]) + (" ..." if len(series) > 12 else "")
    if wanted is None:
        if len(series) == 1:
            return series[0]
        raise InputError(
            f"{url} is a bioformats2raw wrapper with {len(series)} series ({shown}). Choose one "
            f"with --series (series=...), or point omeloc at it: {url.rstrip('/')}/{series[0]}."
        )
    if str(wanted) not in series:
        raise InputError(f"{url} has no series {str(wanted)!r}. Series: {shown}.")
    return str(wanted)


# -- object-store failures ------------------------------------------------------------------
#: exception type names (botocore, aiohttp, urllib3, google-auth) that mean "the endpoint cannot be
#: reached"
_UNREACHABLE = frozenset(
    {
        "EndpointConnectionError",
        "ConnectTimeoutError",
        "ConnectTimeout",
        "ReadTimeoutError",
        "ClientConnectorError",
        "ClientConnectorDNSError",
        "ServerDisconnectedError",
        "ConnectionClosedError",
        "ClientOSError",
        "NewConnectionError",
        "MaxRetryError",
        "ServerTimeoutError",
        "ProxyConnectionError",
    }
)
#: error codes and type names that mean "the credentials may not do this"
_DENIED = frozenset(
    {
        "AccessDenied",
        "Forbidden",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "AllAccessDisabled",
        "NoCredentialsError",
        "PartialCredentialsError",
        "ExpiredToken",
        "InvalidToken",
        "403",
    }
)
_CONNECTION_ERRNOS = {
    errno.ECONNREFUSED,
    errno.ECONNRESET,
    errno.EHOSTUNREACH,
    errno.ENETUNREACH,
    errno.ETIMEDOUT,
}
_FIX_ENDPOINT = (
    "Check the endpoint URL (AWS_ENDPOINT_URL or storage_options), the network, and that the "
    "server runs."
)
_FIX_CREDENTIALS = (
    "Check the credentials (AWS_ACCESS_KEY_ID / AWS_PROFILE or storage_options) and the bucket's "
    "policy."
)


def _chain(err: BaseException) -> list[BaseException]:
    """``err`` and its causes and contexts (each once, at most 16)."""
    seen: list[BaseException] = []
    todo: list[BaseException | None] = [err]
    while todo and len(seen) < 16:
        one = todo.pop(0)
        if one is None or any(one is s for s in seen):
            continue
        seen.append(one)
        todo += [one.__cause__, one.__context__, *(getattr(one, "exceptions", None) or ())]
    return seen


def _short(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= 160 else text[:157] + "..."


def store_failure(err: BaseException) -> StoreAccessError | None:
    """The one-line :class:`StoreAccessError` for an object-store failure anywhere in ``err``'s
    chain, else None.

    Recognised: an unreachable endpoint (connection refused, DNS, time-out: botocore, aiohttp,
    urllib3 and builtin errors), a missing bucket (``NoSuchBucket``), denied access
    (``AccessDenied``, bad or missing credentials).  Anything else (a bug, a corrupt chunk) is left
    to the caller.
    """
    if isinstance(err, StoreAccessError):
        return err
    for one in _chain(err):
        name = type(one).__name__
        code = str(((getattr(one, "response", None) or {}).get("Error") or {}).get("Code") or "")
        if (
            name in _UNREACHABLE
            or isinstance(one, socket.gaierror)
            or (isinstance(one, ConnectionError) and not isinstance(one, PermissionError))
            or (isinstance(one, OSError) and one.errno in _CONNECTION_ERRNOS)
        ):
            return StoreAccessError(
                f"Cannot reach the object store ({_short(one)}). {_FIX_ENDPOINT}"
            )
        if code == "NoSuchBucket" or name == "NoSuchBucket":
            return StoreAccessError(
                f"The bucket does not exist ({_short(one)}). Check the URL's bucket name."
            )
        if (
            code in _DENIED
            or name in _DENIED
            or (
                isinstance(one, PermissionError)
                and any(
                    d.lower() in str(one).lower()
                    for d in ("Access Denied", "AccessDenied", "Forbidden")
                )
            )
        ):
            return StoreAccessError(
                f"Access to the object store was denied ({_short(one)}). {_FIX_CREDENTIALS}"
            )
    return None


#: S3 error codes of a store that is busy or failing (its client retried them, with backoff, and
#: gave up)
_OUTAGE_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "InternalError",
        "ServiceUnavailable",
        "RequestTimeout",
        "RequestTimeTooSkewed",
        "503",
        "500",
        "502",
        "504",
    }
)


def store_outage(err: BaseException) -> str | None:
    """What a store that kept failing said (5xx, throttling: ``"SlowDown: ..."``), else None.

    botocore retries these itself (``AWS_MAX_ATTEMPTS``, default 5 attempts with exponential
    backoff) and s3fs backs off further on ``SlowDown``; what reaches omeloc has outlived both.
    """
    for one in _chain(err):
        response = getattr(one, "response", None) or {}
        code = str((response.get("Error") or {}).get("Code") or "")
        status = int((response.get("ResponseMetadata") or {}).get("HTTPStatusCode") or 0)
        if code in _OUTAGE_CODES or status >= 500:
            return _short(one)
        if (
            isinstance(one, OSError)
            and one.errno in (errno.EBUSY, errno.EAGAIN)
            and not isinstance(one, PermissionError)
        ):  # s3fs's translation of SlowDown (EBUSY) and of 5xx answers
            return _short(one)
    return None


#: fsspec protocols whose first path component is a bucket (container)
_BUCKET_PROTOCOLS = ("s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "oss", "r2")


def missing_bucket(url: str, storage_options: Mapping[str, Any] | None = None) -> str | None:
    """The bucket of object-store ``url`` when that bucket does not exist (else None; never raises).

    A key that is absent and a bucket that is absent look alike to zarr (both "not found"); this
    one extra request tells the user which it is.
    """
    protocol, _, rest = url.partition("://")
    if protocol.lower() not in _BUCKET_PROTOCOLS or not rest:
        return None
    bucket = rest.split("/", 1)[0]
    try:
        import fsspec

        fs, _ = fsspec.core.url_to_fs(url, **dict(storage_options or {}))
        return None if fs.exists(bucket) else bucket
    except Exception:  # noqa: BLE001 - unknown: say nothing rather than guess
        return None


def shutdown_io_loops(timeout: float = 2.0) -> None:
    """Cancel what is still pending on zarr's and fsspec's I/O loops, inside those loops.

    When a request fails, its siblings (other metadata documents read concurrently, retries
    sleeping) are still suspended on the loop; left there, they are closed at exit by garbage
    collection in another thread and context, and aiobotocore prints ~60 lines of "Exception
    ignored in: <coroutine ...> was created in a different Context".  Cancelling them in their
    own loop lets them unwind cleanly.  Registered with :mod:`atexit` (it runs before zarr's
    own clean-up, which only stops the loop) and safe to call at any time.
    """
    loops = []
    with contextlib.suppress(Exception):
        from zarr.core import sync as zsync

        loops.append(zsync.loop[0])
    with contextlib.suppress(Exception):
        import fsspec.asyn

        loops.append(fsspec.asyn.loop[0])
    for loop in loops:
        if loop is None or loop.is_closed() or not loop.is_running():
            continue

        async def cancel_pending() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        try:
            asyncio.run_coroutine_threadsafe(cancel_pending(), loop).result(timeout)
        except Exception as err:  # noqa: BLE001 - a clean-up must not raise
            logger.debug("could not cancel the pending I/O of %r: %s", loop, err)


atexit.register(shutdown_io_loops)


def write_refusal(err: BaseException, what: str, url: str) -> ReadOnlyStoreError | StoreAccessError:
    """The one-line error for a write the store refused, worded by its cause (full disk,
    permissions, network).

    Parameters
    ----------
    err : BaseException
        What the store raised.
    what : str
        What was being written (``"Cannot write zarr.json in plate.zarr"``), for the message.
    url : str
        The store, for the message.
    """
    reason = f"{type(err).__name__}: {' '.join(str(err).split())[:120]}"
    for one in _chain(err):
        if isinstance(one, OSError) and one.errno in (errno.ENOSPC, errno.EDQUOT):
            return ReadOnlyStoreError(
                f"{what} ({reason}): the disk is full. Free some space and retry; "
                f"if a write was interrupted, `omeloc recover {url}` rolls it back."
            )
    failure = store_failure(err)
    if failure is not None:
        return StoreAccessError(f"{what}: {failure}")
    return ReadOnlyStoreError(
        f"{what} ({reason}). The store is read-only or unreachable: use a writable copy "
        f"of the plate or fix its permissions."
    )
