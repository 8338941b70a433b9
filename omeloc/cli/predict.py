"""``omeloc predict``: a virtual channel into every image of a plate (:func:`omeloc.predict`).

The tiling options come from :class:`~omeloc.config.TilingConfig`, where the work runs from
:class:`~omeloc.config.ComputeConfig`.
"""

from __future__ import annotations

import argparse

from omeloc.cli._common import EXIT_OK, add_overwrite, csv_list
from omeloc.config import ComputeConfig, TilingConfig

HELP = "Predict a virtual channel with a trained model and write it into every image of the plate."
EXAMPLES = (
    "omeloc predict plate.zarr --model models/actin-wave2",
    "omeloc predict plate.zarr --model models/actin-wave2 --wells B2,B3 --dry-run",
    "omeloc predict plate.zarr --model models/actin-wave2 --workers 2",
    "omeloc predict plate.zarr --model vs-model.zip --source Phase3D",
    "omeloc predict s3://lab/plate.zarr --model /shared/actin-wave2 --scheduler tcp://gpu-head:8786",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``omeloc predict`` to ``parser``."""
    parser.add_argument(
        "plate",
        help="plate (or image) path or URL; must take a new channel in place (see omeloc info)",
    )
    parser.add_argument(
        "--model",
        required=True,
        help="checkpoint folder written by omeloc train, or a BioImage Model Zoo package "
        "(.zip, folder or rdf.yaml)",
    )
    parser.add_argument(
        "--source",
        type=csv_list,
        default=None,
        metavar="CH1,CH2",
        help="BMZ package: the plate channels its input channels read, in order "
        "(default: the package's channel names)",
    )
    parser.add_argument(
        "--trust-code",
        action="store_true",
        help="BMZ package: allow pytorch_state_dict weights, whose architecture is Python "
        "code from the package (run only code you have read)",
    )
    parser.add_argument(
        "--name",
        default=None,
        help="label of the new channel; for a model of several targets one per target, "
        "comma-separated (default: '<target> (virtual)')",
    )
    parser.add_argument(
        "--wells",
        type=csv_list,
        default=None,
        metavar="B2,B3",
        help="wells to predict (default: all)",
    )
    parser.add_argument(
        "--acquisition",
        default=None,
        metavar="ID",
        help="predict only the fields of this plate acquisition (id or name; see omeloc info)",
    )
    add_overwrite(parser, "replace a virtual channel of that name")
    TilingConfig.add_arguments(parser)
    ComputeConfig.add_arguments(parser.add_mutually_exclusive_group())
    parser.add_argument(
        "--rescale",
        action="store_true",
        help="resample images whose pixel size differs from the model's by more than 10%% to it "
        "(and the prediction back); without it they are refused",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="check everything, say what would be written, write nothing",
    )


def run(args: argparse.Namespace) -> int:
    """Predict (or plan, with ``--dry-run``) and print the summary."""
    from omeloc.jobs.predict import predict

    res = predict(
        args.plate,
        args.model,
        name=args.name,
        wells=args.wells,
        overwrite=args.overwrite,
        tiling=TilingConfig.from_args(args),
        compute=ComputeConfig.from_args(args),
        dry_run=args.dry_run,
        progress=args.progress,
        acquisition=args.acquisition,
        rescale=args.rescale,
        source=args.source,
        trust_code=args.trust_code,
    )
    print(res.summary())
    if not res.dry_run:
        print(
            f"open it: napari --plugin napari-ome-zarr {res.plate}   (or: omeloc info {res.plate})"
        )
    return EXIT_OK
