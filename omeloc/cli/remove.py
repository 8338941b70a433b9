"""``omeloc remove``: take channels omeloc wrote out of a plate
(:func:`omeloc.writeback.remove.remove_channel`)."""

from __future__ import annotations

import argparse

from omeloc.cli._common import EXIT_OK

HELP = (
    "Remove a virtual channel omeloc wrote (and its uncertainty channel) from every image, "
    "crash-safe; original channels are never removed."
)
EXAMPLES = (
    "omeloc remove plate.zarr --channel 'WAVE2 (virtual)'",
    "omeloc remove plate.zarr --channel 'WAVE2 (virtual)' --channel 'WAVE2 (uncertainty)'",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``omeloc remove`` to ``parser``."""
    parser.add_argument("plate", help="plate or image path or URL")
    parser.add_argument(
        "--channel",
        action="append",
        required=True,
        metavar="NAME",
        help="a channel omeloc wrote; repeat for several (they must be the last channels)",
    )


def run(args: argparse.Namespace) -> int:
    """Remove the channels and say what was done."""
    from omeloc.writeback.remove import remove_channel

    res = remove_channel(args.plate, args.channel)
    done = "; an interrupted write-back was dealt with first" if res.recovered else ""
    print(
        f"removed channel(s) {', '.join(map(repr, res.names))} from {res.images} image(s) of "
        f"{args.plate} ({res.files_deleted} file(s) deleted){done}"
    )
    return EXIT_OK
