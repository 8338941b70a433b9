"""``omeloc evaluate``: score a virtual channel against the real one (:func:`omeloc.evaluate`)."""

from __future__ import annotations

import argparse
import math
import textwrap

from omeloc.cli._common import EXIT_OK, counting_bar

HELP = "Score a virtual channel against the real one per field and well; tables, heat map, montage."
DESCRIPTION = (
    "Scores every field and well, labelled by the checkpoint's split (train, validation = held "
    "out, unseen); held-out wells are summarised first, each score beside the no-learning baseline "
    "(the source channel itself). Only held-out and unseen wells say how well the model predicts. "
    "The noise ceiling is the highest Pearson r a perfect prediction could reach given the truth's "
    "pixel noise (Ounkomol et al. 2018); it reads 'not estimable' when that noise is under 1% of "
    "a field's variance, as on most real images, whose errors are not pixel noise."
)
EXAMPLES = (
    "omeloc evaluate plate.zarr --pred 'WAVE2 (virtual)' --truth WAVE2",
    "omeloc evaluate plate.zarr --pred 'WAVE2 (virtual)' --truth WAVE2 --control-wells B2,B3 --out "
    "eval",
    "omeloc evaluate plate.zarr --pred 'DNA (virtual)' --truth DNA --segment nuclei --metric "
    "nuclei_f1",
)

#: metrics shown in the one-line summary, in this order
SHOWN = (
    "pearson_r",
    "pearson_r_fg",
    "ssim",
    "psnr",
    "nrmse",
    "mae",
    "noise_ceiling",
    "nuclei_f1",
    "nuclei_dice",
    "nuclei_count_error",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``omeloc evaluate`` to ``parser`` (the scoring options from
    ``EvaluateConfig``)."""
    from omeloc.analysis.evaluate import EvaluateConfig

    parser.description = HELP + "\n\n" + textwrap.fill(DESCRIPTION, 88)
    parser.add_argument(
        "plate", help="plate holding both channels (only read, but for the result tables)"
    )
    parser.add_argument("--pred", required=True, help="virtual channel name")
    parser.add_argument("--truth", required=True, help="real channel name")
    parser.add_argument("--out", default="evaluation", help="output folder (default: evaluation)")
    EvaluateConfig.add_arguments(parser)
    parser.add_argument(
        "--no-tables",
        dest="tables",
        action="store_false",
        default=None,
        help="do not write the results as tables into the plate (default: write them when "
        "ngio is installed; see omeloc info)",
    )


_SPLIT_TITLES = {
    "validation": "held-out wells (validation)",
    "unseen": "unseen wells",
    "train": "training wells (the model saw them)",
    "unknown": "wells (split unknown: pass --model)",
}


def _stats(mean: dict) -> str:
    """``pearson_r 0.83 (baseline 0.60), ...``; the noise ceiling 'not estimable' when NaN."""
    parts = []
    for k in SHOWN:
        v = mean.get(k)
        if not isinstance(v, (int, float)):
            continue
        if math.isnan(v):
            if k == "noise_ceiling":
                parts.append("noise_ceiling not estimable")
            continue
        base = mean.get(f"baseline_{k}")
        parts.append(
            f"{k} {v:.3f}"
            + (
                f" (baseline {base:.3f})"
                if isinstance(base, float) and not math.isnan(base)
                else ""
            )
        )
    return ", ".join(parts)


def run(args: argparse.Namespace) -> int:
    """Evaluate, then print the mean metrics, the flagged wells and the files written."""
    from omeloc.analysis.evaluate import EvaluateConfig, evaluate

    config = EvaluateConfig.from_args(args)
    with counting_bar("evaluate", args.progress) as report:
        res = evaluate(
            args.plate,
            args.pred,
            args.truth,
            out=args.out,
            config=config,
            progress=report,
            tables=args.tables,
        )
    for part in res.summary.get("splits", []):
        wells = ", ".join(part["wells"][:8]) + (" ..." if len(part["wells"]) > 8 else "")
        print(
            f"{_SPLIT_TITLES[part['split']]} ({wells}): {part['n_fields']} field(s), mean "
            f"{_stats(part['fields_mean'])}"
        )
    print(
        f"all {len(res.fields)} field(s) in {len(res.wells)} well(s): mean "
        f"{_stats(res.summary['fields_mean'])}"
    )
    if res.flagged:
        print(
            f"flagged wells (|z| >= {args.z_threshold} on {args.metric}): {', '.join(res.flagged)}"
        )
    for key, path in res.files.items():
        print(f"  {key}: {path}")
    return EXIT_OK
