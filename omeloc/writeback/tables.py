"""Result tables inside the plate, in the Fractal/ngio table convention, written crash-safe.

A table is a group ``tables/<name>`` below the plate (or image) root, listed in the
``tables`` attribute of ``tables/``, with ``type`` (``feature_table``), ``table_version``,
``backend`` (``anndata_v1`` by default; ``parquet_v1``, ``csv_v1``, ``json_v1``) and its
index key in the table's attributes: what ngio 1.1 (``OmeZarrPlate.get_table``), Fractal's
tasks and AnnData (``anndata.read_zarr``) read.  The table itself is written by ngio
(``OmeZarrPlate.add_table`` / ``OmeZarrContainer.add_table``), never by hand.

Crash safety, as for channels (DESIGN invariant 8: one writer at a time):

1. take the plate lock (:class:`~omeloc.writeback.lock.PlateLock`); refuse while a channel
   write's journal is pending (``omeloc recover`` first); roll back a dead table write;
2. back up, verified, every file the write replaces (the ``tables/`` group documents and
   every file below ``tables/<name>`` of the tables written) into ``.omeloc_tables_backup``;
3. journal (:data:`TABLES_JOURNAL_KEY` in the root attributes): names, the backup manifest,
   the writer's identity; the raw root document is kept to restore it byte for byte;
4. delete the old tables of those names, write the new ones through ngio;
5. put the root document back (removing the journal), drop the backup, re-consolidate if the
   plate was consolidated, release the lock.

A write that fails or is killed is rolled back (by itself, or by the next table write):
the files below ``tables/<name>`` are deleted, the backup is put back, the root document is
restored; the tree is then byte-for-byte what it was.  A rerun replaces the tables.

ngio and pandas are imported only here and only when a table is written: omeloc works
without them (the ``fractal`` extra installs them).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import re
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from omeloc.errors import (
    ConcurrentWriteError,
    CorruptDataError,
    InputError,
    JournalError,
    OmelocError,
    ReadOnlyStoreError,
)
from omeloc.ngff import format as fmt
from omeloc.ngff.format import join_path, safe_key
from omeloc.testing.faults import fault_point
from omeloc.writeback import journal as jr
from omeloc.writeback.lock import PlateLock

__all__ = [
    "BACKENDS",
    "TABLES_BACKUP_PREFIX",
    "TABLES_JOURNAL_KEY",
    "TableData",
    "TablesWritten",
    "list_tables",
    "ngio_available",
    "recover_tables",
    "result_tables",
    "write_result_tables",
    "write_tables",
]

logger = logging.getLogger(__name__)

TABLES_JOURNAL_KEY = "omeloc_tables_journal"
TABLES_BACKUP_PREFIX = ".omeloc_tables_backup"
TABLES_GROUP = "tables"
#: ngio's table backends omeloc writes with
BACKENDS = ("anndata", "parquet", "csv", "json")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def ngio_available() -> bool:
    """Whether ngio (and so table writing) is installed (``pip install 'omeloc[fractal]'``)."""
    try:
        import ngio  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass(frozen=True)
class TableData:
    """One table to write: its name, rows and index column.

    Attributes
    ----------
    name : str
        Name under ``tables/`` (letters, digits, ``_ . -``).
    rows : tuple of Mapping
        One mapping per row, column → value (str, int, float, bool); every row has the
        index column, its values distinct.
    index_key : str
        The column that identifies a row (``path`` of a field or a well).
    """

    name: str
    rows: tuple[Mapping[str, Any], ...]
    index_key: str = "path"

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise InputError(
                f"Expected a table name of letters, digits, '_', '.', '-' (up to 128). "
                f"Got {self.name!r} instead."
            )
        if not self.rows:
            raise InputError(
                f"Expected at least one row for table {self.name!r}. Got none instead."
            )
        keys = [r.get(self.index_key) for r in self.rows]
        if any(not isinstance(k, str) or not k for k in keys) or len(set(keys)) != len(keys):
            raise InputError(
                f"Expected distinct non-empty {self.index_key!r} values in table {self.name!r}. "
                f"Got {keys[:5]} instead."
            )

    def dataframe(self) -> Any:
        """The rows as a pandas DataFrame (columns in first-seen order; bools as 0/1)."""
        import pandas as pd

        columns: list[str] = []
        for r in self.rows:
            columns += [k for k in r if k not in columns]
        data = {c: [_cell(r.get(c)) for r in self.rows] for c in columns}
        return pd.DataFrame(data, columns=columns)


def _cell(value: Any) -> Any:
    """A table cell: bools as int (ngio's AnnData backend stores numbers in X), None as NaN."""
    if isinstance(value, bool):
        return int(value)
    if value is None:
        return math.nan
    return value


@dataclass(frozen=True)
class TablesWritten:
    """What :func:`write_tables` did."""

    target: str
    names: tuple[str, ...]
    backend: str
    replaced: tuple[str, ...]
    """The names that existed before and were replaced."""
    recovered: bool = False
    """Whether a dead table write was rolled back first."""


# -- reading ----------------------------------------------------------------------------
def list_tables(
    url: str | Path,
    storage_options: Mapping[str, Any] | None = None,
    zarr_format: int | None = None,
) -> list[dict[str, str]]:
    """The tables of a plate or image: ``name``, ``type``, ``backend`` (read-only, without ngio).

    A missing ``tables/`` group, or one that does not follow the convention, lists nothing.
    """
    from omeloc.ngff.stores import open_group

    base = str(url).rstrip("/")
    try:
        group = open_group(
            f"{base}/{TABLES_GROUP}",
            storage_options,
            use_consolidated=False,
            zarr_format=zarr_format,
        )
        names = group.attrs.get("tables")
    except Exception:  # noqa: BLE001 - no readable tables group: no tables
        return []
    if not isinstance(names, list):
        return []
    out = []
    for name in names:
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            continue
        try:
            attrs = dict(
                open_group(
                    f"{base}/{TABLES_GROUP}/{name}",
                    storage_options,
                    use_consolidated=False,
                    zarr_format=zarr_format,
                ).attrs
            )
        except Exception:  # noqa: BLE001 - listed but missing: shown without a type
            attrs = {}
        out.append(
            {
                "name": name,
                "type": str(attrs.get("type", "")),
                "backend": str(attrs.get("backend", "")),
            }
        )
    return out


# -- the journal ------------------------------------------------------------------------
def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _table_prefix(name: str) -> str:
    return join_path("", TABLES_GROUP, name)


def _backup_key(run_id: str, key: str) -> str:
    return join_path("", TABLES_BACKUP_PREFIX, run_id, key)


def _replaced_keys(io: jr.StoreIO, names: Sequence[str]) -> list[str]:
    """Every file the write may replace: the tables group docs, all below the tables."""
    keys = [k for k in io.metadata_docs(TABLES_GROUP) if io.get(k) is not None]
    for name in names:
        keys += io.list(_table_prefix(name))
    return keys


def _new_journal(io: jr.StoreIO, run_id: str, names: Sequence[str]) -> dict[str, Any]:
    """Back up what the write replaces (verified); the journal that records it."""
    files: dict[str, str] = {}
    for key in _replaced_keys(io, names):
        data = io.get(key)
        if data is None:
            continue
        io.set(_backup_key(run_id, key), data)
        files[key] = _digest(data)
    bad = [k for k, d in files.items() if _digest(io.get(_backup_key(run_id, k)) or b"") != d]
    if bad:
        raise CorruptDataError(
            f"The backup of {bad[0]} in {io.url} does not read back as written; no table was "
            f"touched. Check the store (disk full or failing?) and retry."
        )
    root_doc = io.get(io.attrs_doc(""))
    return {
        "version": 1,
        "run_id": run_id,
        **jr.writer_identity(),
        "heartbeat": time.time(),
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "names": list(names),
        "backup": files,
        "root_doc": None if root_doc is None else root_doc.decode("utf-8"),
    }


def _validated(io: jr.StoreIO, journal: Any) -> dict[str, Any]:
    """A table journal read from a plate (untrusted): its keys must stay below ``tables/``."""
    fix = (
        f"Inspect it and remove the key {TABLES_JOURNAL_KEY!r} from the root attributes of "
        f"{io.url} by hand."
    )
    if not isinstance(journal, Mapping):
        raise JournalError(f"The table journal of {io.url} is not a mapping. {fix}")
    names, backup, run_id = journal.get("names"), journal.get("backup"), journal.get("run_id")
    if not (isinstance(run_id, str) and re.fullmatch(r"[0-9a-f]{32}", run_id)):
        raise JournalError(f"The table journal of {io.url} has no valid run id. {fix}")
    if not (
        isinstance(names, list)
        and names
        and all(isinstance(n, str) and _NAME.fullmatch(n) for n in names)
    ):
        raise JournalError(f"The table journal of {io.url} names no valid tables. {fix}")
    if not isinstance(backup, Mapping) or not all(isinstance(v, str) for v in backup.values()):
        raise JournalError(f"The table journal of {io.url} has no valid backup manifest. {fix}")
    allowed = set(io.metadata_docs(TABLES_GROUP))
    prefixes = tuple(_table_prefix(n) + "/" for n in names)
    for key in backup:
        key = safe_key(str(key), f"The table journal of {io.url} names", fix)
        if key not in allowed and not key.startswith(prefixes):
            raise JournalError(
                f"The table journal of {io.url} names {key!r}, outside its tables. {fix}"
            )
    if journal.get("root_doc") is not None and not isinstance(journal.get("root_doc"), str):
        raise JournalError(
            f"The table journal of {io.url} holds a root document that is not text. {fix}"
        )
    return dict(journal)


def _prune_local(io: jr.StoreIO, rel: str) -> None:
    """Remove the empty folders below (and of) ``rel`` on a local store (left by deleted keys)."""
    if io.local_root is None:
        return
    top = io.local_root / io.key(rel)[len(io.prefix) + 1 if io.prefix else 0 :]
    if not top.is_dir() or top.is_symlink():
        return
    for folder in sorted(
        (p for p in top.rglob("*") if p.is_dir() and not p.is_symlink()),
        key=lambda p: len(p.parts),
        reverse=True,
    ):
        with contextlib.suppress(OSError):
            folder.rmdir()
    with contextlib.suppress(OSError):
        top.rmdir()


def _drop_backup(io: jr.StoreIO, run_id: str) -> None:
    for key in io.list(join_path("", TABLES_BACKUP_PREFIX, run_id)):
        io.delete(key)
    _prune_local(io, TABLES_BACKUP_PREFIX)


def _rollback(io: jr.StoreIO, journal: Mapping[str, Any]) -> None:
    """Undo a table write: its tables' files deleted, the backup put back, the root doc restored."""
    journal = _validated(io, journal)
    run_id, backup = journal["run_id"], journal["backup"]
    missing = [k for k, d in backup.items() if _digest(io.get(_backup_key(run_id, k)) or b"") != d]
    if missing:
        raise CorruptDataError(
            f"Cannot roll back the table write {run_id} in {io.url}: the backup of {missing[0]} "
            f"is missing or altered, so nothing was deleted. Restore the plate from a copy."
        )
    for name in journal["names"]:
        for key in io.list(_table_prefix(name)):
            io.delete(key)
        _prune_local(io, _table_prefix(name))
    for key in io.metadata_docs(TABLES_GROUP):
        if key not in backup and io.get(key) is not None:
            io.delete(key)  # the tables group did not exist before
    for key in backup:
        io.set(key, io.get(_backup_key(run_id, key)) or b"")
    _prune_local(io, TABLES_GROUP)
    _drop_backup(io, run_id)
    _restore_root(io, journal)


def _restore_root(io: jr.StoreIO, journal: Mapping[str, Any]) -> None:
    """The root document as it was before the write (which removes the journal)."""
    text = journal.get("root_doc")
    if text is not None and TABLES_JOURNAL_KEY not in fmt.attributes_in(
        json.loads(text), io.zarr_format
    ):
        io.set(io.attrs_doc(""), text.encode("utf-8"))
    else:
        io.update_attrs("", {}, remove=[TABLES_JOURNAL_KEY])


def _alive(journal: Mapping[str, Any], stale_after: float) -> bool:
    return jr.writer_alive({**journal, "run_id": str(journal.get("run_id"))}, stale_after)


def recover_tables(
    target: str | Path,
    *,
    storage_options: Mapping[str, Any] | None = None,
    stale_after: float = 3600.0,
    force: bool = False,
) -> bool:
    """Roll back a table write that was killed; whether there was one.

    Raises
    ------
    ConcurrentWriteError
        Another writer holds the plate lock, or the table write is alive (and not ``force``).
    """
    io = jr.StoreIO(str(target), storage_options)
    with PlateLock(io, purpose="recover_tables", stale_after=stale_after, force=force):
        return _recover_stale(io, stale_after, force=force)


def recover_stale_tables(io: jr.StoreIO, stale_after: float, *, force: bool = False) -> bool:
    """Under the caller's plate lock: roll back a dead table write (``omeloc recover`` calls it)."""
    return _recover_stale(io, stale_after, force=force)


def _recover_stale(io: jr.StoreIO, stale_after: float, *, force: bool = False) -> bool:
    journal = io.read_attrs("").get(TABLES_JOURNAL_KEY)
    if not journal:
        for key in io.list(
            TABLES_BACKUP_PREFIX
        ):  # a backup without a journal: a write killed before it
            io.delete(key)
        _prune_local(io, TABLES_BACKUP_PREFIX)
        return False
    if not force and isinstance(journal, Mapping) and _alive(journal, stale_after):
        raise ConcurrentWriteError(
            f"{io.url} has a table write in progress (run "
            f"{str(journal.get('run_id'))[:32]}). Wait for it to finish and retry."
        )
    logger.warning("rolling back the interrupted table write in %s", io.url)
    _rollback(io, journal)
    return True


# -- writing ----------------------------------------------------------------------------
def _open_ngio(url: str, storage_options: Mapping[str, Any] | None, is_plate: bool) -> Any:
    """The ngio plate (or image container) at ``url``, writable."""
    import ngio

    store: Any = url
    if storage_options and "://" in url:
        import fsspec

        store = fsspec.get_mapper(url, **dict(storage_options))
    try:
        if is_plate:
            return ngio.open_ome_zarr_plate(store, mode="r+", cache=False)
        return ngio.open_ome_zarr_container(store, mode="r+", cache=False)
    except Exception as err:  # ngio's validation errors name the problem
        kind = "plate" if is_plate else "image"
        raise InputError(
            f"ngio cannot open {url} as an OME-Zarr {kind} to write its tables "
            f"({type(err).__name__}: {' '.join(str(err).split())[:160]})."
        ) from err


def _ngio_table(table: TableData) -> Any:
    import ngio
    from ngio.tables.v1 import FeatureTableMeta

    meta = FeatureTableMeta(index_key=table.index_key, index_type="str")
    return ngio.FeatureTable(table.dataframe(), meta=meta)


def _is_plate(io: jr.StoreIO) -> bool:
    from omeloc.ngff.format import ngff_attrs

    return "plate" in ngff_attrs(io.read_attrs(""), io.zarr_format)


def _consolidated(io: jr.StoreIO) -> bool:
    from omeloc.ngff.format import is_consolidated

    docs = {}
    for key in io.root_docs():
        raw = io.get(key)
        docs[key] = None if raw is None else raw.decode("utf-8")
    return is_consolidated(docs, io.zarr_format)


def write_tables(
    target: str | Path,
    tables: Sequence[TableData],
    *,
    backend: str = "anndata",
    storage_options: Mapping[str, Any] | None = None,
    stale_after: float = 3600.0,
) -> TablesWritten:
    """Write (or replace) result tables into a plate (``tables/`` at its root) or image, crash-safe.

    Parameters
    ----------
    target : path or URL
        The plate (or a single image) root.
    tables : sequence of TableData
        The tables; each replaces a table of that name.
    backend : str
        ngio's table backend: ``"anndata"`` (default), ``"parquet"``, ``"csv"``, ``"json"``.
    storage_options : mapping, optional
        fsspec options for URLs.
    stale_after : float
        Seconds without a heartbeat after which a writer on another host counts as dead.

    Returns
    -------
    TablesWritten

    Raises
    ------
    InputError
        Bad table, backend, or a plate ngio cannot open; ngio not installed.
    ConcurrentWriteError
        Another writer holds the plate lock, or a channel write must be recovered first.
    ReadOnlyStoreError
        The store cannot be written.
    """
    if backend not in BACKENDS:
        raise InputError(
            f"Expected a table backend among {', '.join(BACKENDS)}. Got {backend!r} instead."
        )
    tables = tuple(tables)
    names = [t.name for t in tables]
    if not tables or len(set(names)) != len(names):
        raise InputError(f"Expected one or more tables with distinct names. Got {names} instead.")
    if not ngio_available():
        raise InputError(
            "Writing tables into the plate needs ngio. Install it: pip install 'omeloc[fractal]'."
        )
    io = jr.StoreIO(str(target), storage_options)
    with PlateLock(io, purpose="write_tables", stale_after=stale_after) as lock:
        if io.read_attrs("").get(jr.JOURNAL_KEY):
            raise ConcurrentWriteError(
                f"{io.url} has an unfinished channel write. Run `omeloc recover {io.url}` "
                f"first, then write the tables again."
            )
        recovered = _recover_stale(io, stale_after)
        existing = {t["name"] for t in list_tables(io.url, storage_options, io.zarr_format)}
        consolidated = _consolidated(io)
        journal = _new_journal(io, lock.run_id, names)
        jr.ACTIVE_RUNS.add(lock.run_id)
        try:
            io.update_attrs("", {TABLES_JOURNAL_KEY: journal})
            fault_point("tables_journal")
            _write_through_ngio(io, tables, backend, storage_options, lock)
        except BaseException as err:
            ours = isinstance(err, OmelocError)
            logger.log(
                logging.INFO if ours else logging.WARNING,
                "writing tables %s failed: rolling back",
                names,
            )
            _rollback(io, journal)
            if isinstance(err, OmelocError) or not isinstance(err, Exception):
                raise
            raise InputError(
                f"Writing table(s) {', '.join(names)} into {io.url} failed "
                f"({type(err).__name__}: {' '.join(str(err).split())[:160]}); the plate was "
                f"rolled back as it was."
            ) from err
        finally:
            jr.ACTIVE_RUNS.discard(lock.run_id)
        # the tables are complete: from here on a failure leaves them in place (a leftover backup is
        # removed by the next table write; a journal left behind is rolled back by it)
        _restore_root(io, journal)
        _drop_backup(io, lock.run_id)
        if consolidated:
            _consolidate(io)
    logger.info("wrote table(s) %s into %s (%s)", ", ".join(names), io.url, backend)
    return TablesWritten(
        target=io.url,
        names=tuple(names),
        backend=backend,
        replaced=tuple(n for n in names if n in existing),
        recovered=recovered,
    )


def _write_through_ngio(
    io: jr.StoreIO,
    tables: Sequence[TableData],
    backend: str,
    storage_options: Mapping[str, Any] | None,
    lock: PlateLock,
) -> None:
    """Delete the old tables of these names, then let ngio write each new one."""
    for t in tables:
        for key in io.list(_table_prefix(t.name)):
            io.delete(key)
        _prune_local(io, _table_prefix(t.name))
    container = _open_ngio(io.url, storage_options, _is_plate(io))
    for n, t in enumerate(tables):
        lock.ensure()
        container.add_table(t.name, _ngio_table(t), backend=backend, overwrite=True)
        if n == 0:
            fault_point("table_written")


def _consolidate(io: jr.StoreIO) -> None:
    """Refresh the consolidated metadata of the root so readers that use it see the tables."""
    import zarr

    with (
        warnings.catch_warnings(),
        contextlib.suppress(Exception),
    ):  # a cache: a failure only leaves it stale
        warnings.simplefilter(
            "ignore"
        )  # zarr: consolidated metadata is not in the v3 specification
        zarr.consolidate_metadata(io.store, path=io.prefix or None, zarr_format=io.zarr_format)


def result_tables(
    prefix: str, fields: Sequence[Mapping[str, Any]], wells: Sequence[Mapping[str, Any]]
) -> tuple[TableData, TableData]:
    """A per-field and a per-well feature table, ``<prefix>_fields`` and ``<prefix>_wells``.

    ``prefix`` is made safe for a table name (``"WAVE2 (virtual)"`` → ``"WAVE2_virtual"``).
    """
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", prefix).strip("_.-")[:100] or "omeloc"
    return (TableData(f"{safe}_fields", tuple(fields)), TableData(f"{safe}_wells", tuple(wells)))


def write_result_tables(
    plate: Any,
    prefix: str,
    fields: Sequence[Mapping[str, Any]],
    wells: Sequence[Mapping[str, Any]],
    want: bool | None = None,
    *,
    backend: str = "anndata",
    storage_options: Mapping[str, Any] | None = None,
) -> dict[str, str]:
    """The results of a plate run as tables in the plate (``omeloc evaluate``); the tables written.

    Parameters
    ----------
    plate : Plate
        The plate scored (a single image writes no tables).
    prefix : str
        Names the tables (:func:`result_tables`), e.g. the virtual channel's name.
    fields, wells : sequence of Mapping
        Rows per field and per well (each with a distinct ``path``).
    want : bool or None
        ``True``: write them (fail if impossible); ``False``: do not; ``None`` (default): write
        them when ngio is installed and the plate can be written, else say why not (INFO).

    Returns
    -------
    dict
        ``fields_table`` / ``wells_table`` → ``<plate>/tables/<name>`` (empty when none written).
    """
    if want is False:
        return {}
    why_not = None
    if not getattr(plate, "is_plate", False):
        why_not = "a single image, not a plate"
    elif not ngio_available():
        why_not = "ngio is not installed (pip install 'omeloc[fractal]')"
    if why_not is not None:
        if want:
            raise InputError(
                f"Expected a plate and ngio to write result tables. Got {why_not} instead."
            )
        logger.info("result tables not written into the plate: %s", why_not)
        return {}
    tables = result_tables(prefix, fields, wells)
    so = storage_options if storage_options is not None else getattr(plate, "storage_options", None)
    try:
        write_tables(plate.path, tables, backend=backend, storage_options=so)
    except ReadOnlyStoreError as err:
        if want:
            raise
        logger.warning("result tables not written into the plate: %s", err)
        return {}
    base = str(plate.path).rstrip("/")
    return {
        "fields_table": f"{base}/{TABLES_GROUP}/{tables[0].name}",
        "wells_table": f"{base}/{TABLES_GROUP}/{tables[1].name}",
    }
