"""``omeloc recover``: roll back or finish an interrupted write-back (:func:`omeloc.recover`)."""

from __future__ import annotations

import argparse

from omeloc.cli._common import EXIT_OK

HELP = (
    "Roll back (or finish) an interrupted write-back of a virtual channel, or an interrupted "
    "rechunk."
)
EXAMPLES = ("omeloc recover plate.zarr", "omeloc recover plate.zarr --force")

MESSAGES = {
    None: "nothing to recover: no interrupted write-back in this plate",
    "rollback": "rolled back an interrupted write-back; the plate is as it was before that run",
    "finish": "finished an interrupted write-back whose pixels and metadata were complete",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``omeloc recover`` to ``parser``."""
    parser.add_argument("plate")
    parser.add_argument(
        "--force",
        action="store_true",
        help="recover even if the writer looks alive (another host, fresh heartbeat)",
    )


def run(args: argparse.Namespace) -> int:
    """Recover and say what was done."""
    from omeloc.writeback.protocol import recover_report
    from omeloc.writeback.rechunk import finish_copy

    source = finish_copy(args.plate)
    if source is not None:
        print(
            f"{args.plate}: finished the interrupted rechunk: copied {source} again (one channel "
            "per chunk)"
        )
        return EXIT_OK
    report = recover_report(args.plate, force=args.force)
    extra = (
        f"; removed {report.leftovers} file(s) that interrupted runs left (resume stash, backups)"
        if report.leftovers
        else ""
    )
    print(f"{args.plate}: {MESSAGES[report.outcome]}{extra}")
    return EXIT_OK
