"""``omeloc relate``: which channel predicts which (:func:`omeloc.relate`)."""

from __future__ import annotations

import argparse

from omeloc.cli._common import EXIT_OK, csv_list
from omeloc.config import TrainConfig, resolve

HELP = (
    "Train a small model for every ordered pair of channels (--minutes: the training time of each "
    "model); held-out Pearson r matrix vs baseline."
)
EXAMPLES = (
    "omeloc relate plate.zarr --channels actin,WAVE2,IRSp53,vinculin,tubulin",
    "omeloc relate plate.zarr --channels actin,WAVE2,tubulin --sources actin --budget 200 --out "
    "rel",
    "omeloc relate plate.zarr --channels actin,WAVE2,tubulin --sources actin --minutes 2",
)


#: the TrainConfig fields offered on the command line (the others:
#: :data:`~omeloc.jobs.relate.RELATE_CONFIG`)
OPTIONS = ("model", "minutes", "val_wells", "level", "seed", "device")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``omeloc relate`` to ``parser``."""
    from omeloc.jobs.relate import RELATE_CONFIG, RELATE_STEPS

    parser.add_argument("plate", help="plate (only read)")
    parser.add_argument("--channels", type=csv_list, required=True, metavar="A,B,C")
    parser.add_argument(
        "--sources",
        type=csv_list,
        default=None,
        metavar="A",
        help="only these sources (default: all)",
    )
    parser.add_argument(
        "--budget",
        type=int,
        default=None,
        help=f"training steps per pair (default {RELATE_STEPS}; with --minutes: at most this many)",
    )
    TrainConfig.add_arguments(parser, only=OPTIONS, defaults=RELATE_CONFIG.to_dict())
    parser.add_argument(
        "--joint",
        action="store_true",
        help="one multi-output model per source instead of one model per pair (faster)",
    )
    parser.add_argument("--out", default="relate", help="output folder (default: relate)")


def run(args: argparse.Namespace) -> int:
    """Train the pairs, print the table and the files written."""
    from omeloc.jobs.relate import RELATE_CONFIG, relate

    config = resolve(TrainConfig, RELATE_CONFIG, {name: getattr(args, name) for name in OPTIONS})
    res = relate(
        args.plate,
        args.channels,
        config,
        out=args.out,
        sources=args.sources,
        budget=args.budget,
        joint=args.joint,
        progress=args.progress,
    )
    print(res.table())
    for key, path in res.files.items():
        print(f"  {key}: {path}")
    return EXIT_OK
