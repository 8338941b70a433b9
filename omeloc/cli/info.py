"""``omeloc info``: describe a plate or image (:func:`omeloc.ngff.info.describe`)."""

from __future__ import annotations

import argparse
import json

from omeloc.cli._common import EXIT_OK

HELP = "Describe a plate or image: version, wells, channels, levels, chunks, append-friendliness."
EXAMPLES = (
    "omeloc info plate.zarr",
    "omeloc info plate.zarr/B/3/0 --json",
    "omeloc info export.zarr --series 1",
    "omeloc info plate.ozx",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``omeloc info`` to ``parser``."""
    parser.add_argument("path", help="plate or image path or URL")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.add_argument(
        "--series",
        default=None,
        help="which series of a bioformats2raw wrapper (default: the only one)",
    )


def run(args: argparse.Namespace) -> int:
    """Print the description as text or JSON."""
    from omeloc.ngff.info import describe, format_description

    d = describe(args.path, series=args.series)
    print(json.dumps(d, indent=2) if args.json else format_description(d))
    return EXIT_OK
