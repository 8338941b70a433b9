"""``omeloc synth``: a synthetic plate with known protein relationships
(:func:`omeloc.make_plate`)."""

from __future__ import annotations

import argparse

from omeloc.cli._common import EXIT_OK, add_overwrite, counting_bar, csv_list

HELP = (
    "Make a synthetic plate with known protein relationships (actin, WAVE2, IRSp53, vinculin, "
    "tubulin, nuclei)."
)
EXAMPLES = (
    "omeloc synth plate.zarr",
    "omeloc synth plate.zarr --rows 4 --cols 6 --fields 2 --size 512 --ngff 0.4",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``omeloc synth`` to ``parser``."""
    from omeloc.data.synthetic import PERTURBATIONS

    parser.add_argument("out", help="plate to create")
    parser.add_argument("--rows", type=int, default=2)
    parser.add_argument("--cols", type=int, default=3)
    parser.add_argument("--fields", type=int, default=2)
    parser.add_argument("--size", type=int, default=256, help="field size in pixels (square)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ngff", choices=["0.4", "0.5"], default="0.5")
    parser.add_argument("--chunk", type=int, default=256, help="chunk size along y and x")
    parser.add_argument("--levels", type=int, default=3, help="pyramid levels")
    parser.add_argument(
        "--perturbed-wells",
        type=csv_list,
        default=None,
        metavar="B2,C3",
        help="wells where a perturbation breaks a protein relationship (a simulated hit)",
    )
    parser.add_argument(
        "--perturbation",
        choices=sorted(PERTURBATIONS),
        default="wave2_cytoplasmic",
        help="what happens in the perturbed wells (default: WAVE2 leaves the cell edge)",
    )
    add_overwrite(parser)


def run(args: argparse.Namespace) -> int:
    """Write the plate and say what it holds."""
    from omeloc.data.synthetic import make_plate

    n = args.rows * args.cols * args.fields
    with counting_bar("synth", args.progress, total=n) as report:
        path = make_plate(
            args.out,
            rows=args.rows,
            cols=args.cols,
            fields=args.fields,
            size=args.size,
            seed=args.seed,
            ngff=args.ngff,
            chunks=(args.chunk, args.chunk),
            levels=args.levels,
            perturbed_wells=args.perturbed_wells or (),
            perturbation=args.perturbation,
            overwrite=args.overwrite,
            progress=report,
        )
    print(
        f"wrote synthetic plate {path} ({args.rows}x{args.cols} wells, {args.fields} field(s) "
        f"each, {args.size}x{args.size} px, NGFF {args.ngff})"
    )
    return EXIT_OK
