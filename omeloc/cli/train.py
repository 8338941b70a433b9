"""``omeloc train``: a U-Net or pix2pix from crops of the plate(s) (:func:`omeloc.train`).

The training options come from :class:`~omeloc.config.TrainConfig` (the subset in
:data:`OPTIONS`; the others are Python-API only).
"""

from __future__ import annotations

import argparse

from omeloc.cli._common import EXIT_OK, csv_list
from omeloc.config import TrainConfig

HELP = (
    "Train a U-Net or pix2pix to predict one channel from another, on crops read from the plate(s)."
)
EXAMPLES = (
    "omeloc train plate.zarr --source actin --target WAVE2 --out models/actin-wave2 --minutes 10",
    "omeloc train plate.zarr --source actin --target vinculin --model pix2pix --steps 5000 "
    "--val-wells B2,C3",
    (
        "omeloc train plate.zarr --source actin --target WAVE2 --minutes 10 --norm group --block "
        "residual --loss l1+ssim --detail 1 --keep-best structure_r"
    ),
    "omeloc train plate.zarr --source actin --target WAVE2 --out models/actin-wave2 --resume",
    "omeloc train zstack.zarr --source phase --target nuclei,membrane --z-window 5 --minutes 10",
)

#: the TrainConfig fields offered on the command line
OPTIONS = (
    "model",
    "steps",
    "minutes",
    "val_wells",
    "crop",
    "batch_size",
    "level",
    "lr",
    "depth",
    "base_channels",
    "norm",
    "block",
    "loss",
    "detail",
    "foreground_weight",
    "intensity_augment",
    "keep_best",
    "warmup",
    "spectral_norm",
    "val_every",
    "seed",
    "device",
    "z_window",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``omeloc train`` to ``parser``."""
    parser.add_argument(
        "plates", nargs="+", metavar="PLATE", help="plate(s) to train on (only read)"
    )
    parser.add_argument(
        "--source", type=csv_list, required=True, metavar="A[,B]", help="input channel(s)"
    )
    parser.add_argument(
        "--target", type=csv_list, required=True, metavar="T", help="channel(s) to predict"
    )
    parser.add_argument(
        "--out", default="omeloc-model", help="checkpoint folder (default: omeloc-model)"
    )
    TrainConfig.add_arguments(parser, only=OPTIONS)
    again = parser.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    again.add_argument("--overwrite", action="store_true", help="replace the checkpoint in --out")


def run(args: argparse.Namespace) -> int:
    """Train, print the summary and the next command."""
    from omeloc.learn.training import train

    config = TrainConfig.from_args(args)
    res = train(
        args.plates,
        args.source,
        args.target,
        config=config,
        out=args.out,
        resume=args.resume,
        overwrite=args.overwrite,
        progress=args.progress,
        report=None if args.quiet else print,
    )
    print(res.summary())
    if res.warnings:
        print(
            f"next: retrain as the warning says (omeloc predict PLATE --model {res.checkpoint} "
            f"would write a prediction worse than the source channel)"
        )
    else:
        print(f"next: omeloc predict PLATE --model {res.checkpoint}")
    return EXIT_OK
