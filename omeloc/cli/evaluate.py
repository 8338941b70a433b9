"""``omeloc evaluate``: score a virtual channel against the real one (:func:`omeloc.evaluate`)."""

from __future__ import annotations

import argparse

from omeloc.cli._common import EXIT_OK, counting_bar

HELP = "Score a virtual channel against the real one per field and well; tables, heat map, montage."
EXAMPLES = ("omeloc evaluate plate.zarr --pred 'WAVE2 (virtual)' --truth WAVE2",
            "omeloc evaluate plate.zarr --pred 'WAVE2 (virtual)' --truth WAVE2 --control-wells B2,B3 --out eval",
            "omeloc evaluate plate.zarr --pred 'DNA (virtual)' --truth DNA --segment nuclei --metric nuclei_f1")

#: metrics shown in the one-line summary, in this order
SHOWN = ("pearson_r", "pearson_r_fg", "ssim", "psnr", "nrmse", "mae", "noise_ceiling", "nuclei_f1", "nuclei_dice",
         "nuclei_count_error")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``omeloc evaluate`` to ``parser`` (the scoring options from ``EvaluateConfig``)."""
    from omeloc.analysis.evaluate import EvaluateConfig

    parser.add_argument("plate", help="plate holding both channels (only read, but for the result tables)")
    parser.add_argument("--pred", required=True, help="virtual channel name")
    parser.add_argument("--truth", required=True, help="real channel name")
    parser.add_argument("--out", default="evaluation", help="output folder (default: evaluation)")
    EvaluateConfig.add_arguments(parser)
    parser.add_argument("--no-tables", dest="tables", action="store_false", default=None,
                        help="do not write the results as tables into the plate (default: write them when "
                             "ngio is installed; see omeloc info)")


def run(args: argparse.Namespace) -> int:
    """Evaluate, then print the mean metrics, the flagged wells and the files written."""
    from omeloc.analysis.evaluate import EvaluateConfig, evaluate

    config = EvaluateConfig.from_args(args)
    with counting_bar("evaluate", args.progress) as report:
        res = evaluate(args.plate, args.pred, args.truth, out=args.out, config=config, progress=report,
                       tables=args.tables)
    mean = res.summary.get("fields_mean", {})
    stats = ", ".join(f"{k} {mean[k]:.3f}" for k in SHOWN if isinstance(mean.get(k), (int, float)))
    print(f"{len(res.fields)} field(s) in {len(res.wells)} well(s): mean {stats}")
    if res.flagged:
        print(f"flagged wells (|z| >= {args.z_threshold} on {args.metric}): {', '.join(res.flagged)}")
    for key, path in res.files.items():
        print(f"  {key}: {path}")
    return EXIT_OK
