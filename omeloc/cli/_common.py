"""What the command modules share: exit codes, list parsing, progress bars, help epilogs."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from omeloc.config import csv_list

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "add_overwrite",
    "counting_bar",
    "csv_list",
    "examples",
    "known_failure",
]

EXIT_OK, EXIT_FAILURE, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130


def examples(*lines: str) -> str:
    """The ``examples:`` epilog of a command's ``--help``."""
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


@contextmanager
def counting_bar(
    desc: str, enabled: Any, total: int | None = None, unit: str = "img"
) -> Iterator[Callable[..., None]]:
    """The command's progress (:func:`omeloc.progress.reporter` of ``enabled``) and the callback
    that moves it.

    The callback takes ``(done)`` or ``(done, total)``: the number of steps done so far and,
    when the library knows it only once it has started, the total.
    """
    from omeloc.progress import reporter

    shown = reporter(enabled or False)
    shown.start(total, desc=desc, unit=unit)

    def report(done: int, total: int | None = None, *_: Any) -> None:
        shown.update(done, total)

    try:
        yield report
    finally:
        shown.close()


def add_overwrite(parser: argparse.ArgumentParser | Any, help: str | None = None) -> None:
    """The ``--overwrite`` flag most commands have."""
    parser.add_argument("--overwrite", action="store_true", help=help)


def known_failure(err: BaseException) -> str | None:
    """The one-line message (exit 2) for a failure that is the user's environment, not a bug; else
    None.

    An object store that cannot be reached, a missing bucket, denied access
    (:func:`omeloc.ngff.stores.store_failure`).
    """
    from omeloc.ngff.stores import store_failure

    failure = store_failure(err)
    return None if failure is None else str(failure)
