"""``omeloc rechunk``: copy a plate with one channel per chunk (:func:`omeloc.rechunk`)."""

from __future__ import annotations

import argparse

from omeloc.cli._common import EXIT_OK, add_overwrite

HELP = "Copy a plate or image with one channel per chunk, so new channels can be appended in place."
EXAMPLES = ("omeloc rechunk plate.zarr plate-c1.zarr",)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``omeloc rechunk`` to ``parser``."""
    parser.add_argument("src", help="plate or image to copy (only read)")
    parser.add_argument(
        "dst", help="new local directory or URL (an interrupted copy there is redone)"
    )
    add_overwrite(parser, "replace DST if it exists")


def run(args: argparse.Namespace) -> int:
    """Copy and say what the copy allows."""
    from omeloc.writeback.rechunk import rechunk

    path = rechunk(args.src, args.dst, overwrite=args.overwrite, progress=args.progress)
    print(f"wrote {path} (one channel per chunk: new channels can now be appended in place)")
    return EXIT_OK
