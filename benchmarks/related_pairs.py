"""The seed study's finding within a time budget: related proteins translate, tubulin does not.

A synthetic plate (``omeloc.make_plate``: 2 × 4 wells, 2 fields of 256² each, seed 3; ground
truth by construction) is related with ``omeloc.relate(minutes=M)``, held-out well B4:

- U-Net (``relate``'s small model, steps fitted to ``--minutes`` per pair): actin → WAVE2,
  IRSp53, vinculin (related) and actin → tubulin (unrelated: only the cell footprint is shared);
- pix2pix (``model="pix2pix"``) for the same minutes on the three related pairs.

Each model is scored on the held-out well's whole fields (``heldout_scores``): whole-field
Pearson r and structure r (σ 4 px detail, footprint removed), each beside the no-learning
baseline (the raw actin image scored the same way).  Prints a Markdown table and saves
``benchmarks/results/related_pairs_<minutes>min.json`` (with the load averages before and after)::

    python benchmarks/related_pairs.py --minutes 2          # the issue's comparison: ~17 min on 2 CPU cores
    python benchmarks/related_pairs.py --minutes 0.2        # a smoke run (numbers meaningless)
    python benchmarks/related_pairs.py --minutes 2 --models pix2pix --pix2pix-warmup 0.5 --spectral-norm \\
        --lr 1e-3 --out benchmarks/results/related_pairs_2min_p2p_w05_sn_lr1e-3.json

Each pix2pix row also records, from its training log, the validation (held-out crops) r at the
last validation of the L1-only warm-up and at the end (``phases``).
"""  # noqa: E501

from __future__ import annotations

import argparse
import csv
import os
import tempfile
import time
from pathlib import Path


import omeloc
from _report import machine, report

HERE = Path(__file__).resolve().parent
HELD_OUT = "B4"
RELATED = ("WAVE2", "IRSp53", "vinculin")
UNRELATED = ("tubulin",)
TARGETS = {"unet": RELATED + UNRELATED, "pix2pix": RELATED}
"""The targets of actin each model is trained for."""
COLUMNS = (
    ("pearson_r", "baseline_r", "whole-field r"),
    ("structure_r", "baseline_structure_r", "structure r"),
)


def relate_model(
    plate: Path,
    model: str,
    minutes: float,
    work: Path,
    options: dict,
    only: list[str] | None = None,
) -> list[dict]:
    """``omeloc.relate`` of actin against :data:`TARGETS` ``[model]`` (those in ``only``); one
    row per pair."""
    t0 = time.perf_counter()
    targets = [t for t in TARGETS[model] if not only or t in only]
    res = omeloc.relate(
        plate,
        ["actin", *targets],
        sources=["actin"],
        out=work / model,
        model=model,
        minutes=minutes,
        val_wells=[HELD_OUT],
        on_pair=lambda r: print_row(model, r),
        **options,
    )
    rows = []
    for r in res.rows:
        ckpt = omeloc.load_checkpoint(r["checkpoint"])
        rows.append(
            {
                **{k: v for k, v in r.items() if k != "checkpoint"},
                "model": model,
                "steps": ckpt.provenance["steps_done"],
                "train_seconds": ckpt.metrics["train_seconds"],
                "val_crop_r": ckpt.metrics["val_pearson_r"],
                "settings": {
                    k: ckpt.provenance[k]
                    for k in (
                        "depth",
                        "base_channels",
                        "crop",
                        "batch_size",
                        "loss",
                        "lr",
                        "warmup",
                        "spectral_norm",
                    )
                },
            }
        )
        if model == "pix2pix":
            run_dir = (
                Path(r["checkpoint"])
                if Path(r["checkpoint"]).is_dir()
                else Path(r["checkpoint"]).parent
            )
            rows[-1]["phases"] = warmup_phases(run_dir / "train_log.csv")
    print(f"  {model}: {(time.perf_counter() - t0) / 60:.1f} min for {len(rows)} pairs", flush=True)
    return rows


def warmup_phases(log: Path) -> dict:
    """Validation r and structure r at the last validation of the L1-only warm-up and at the end.

    The switch is the first logged row with a ``gan`` loss: the budget re-plans the total steps
    once the (slower) adversarial steps are timed, so ``warmup * steps`` of the final total is
    not where the switch happened.
    """
    with log.open() as fh:
        rows = list(csv.DictReader(fh))
    switch = next((int(r["step"]) for r in rows if r["gan"] not in ("", None)), None)
    val = [r for r in rows if r["val_pearson_r"] not in ("", None)]
    out: dict = {"switch_step": switch, "switch_seconds": None}
    if switch is not None:
        out["switch_seconds"] = next(float(r["seconds"]) for r in rows if int(r["step"]) >= switch)
    picks = {
        "warmup_end": [r for r in val if switch is None or int(r["step"]) < switch],
        "end": val,
    }
    for name, rs in picks.items():
        if rs:
            out[name] = {
                "step": int(rs[-1]["step"]),
                "seconds": float(rs[-1]["seconds"]),
                "val_r": float(rs[-1]["val_pearson_r"]),
                "val_structure_r": float(rs[-1]["val_structure_r"] or "nan"),
            }
    return out


def print_row(model: str, r: dict) -> None:
    """One finished pair, as soon as it is scored."""
    print(
        f"  {model:<8} actin → {r['target']:<9} r {r['pearson_r']:.3f} ({r['baseline_r']:.3f})  "
        f"structure r {r['structure_r']:.3f} ({r['baseline_structure_r']:.3f})  {r['seconds']:.0f} "
        "s",
        flush=True,
    )


def table(rows: list[dict]) -> str:
    """The Markdown table: each score beside its baseline, steps and seconds per pair."""
    head = (
        "| model | task | "
        + " | ".join(f"{t} (baseline)" for _, _, t in COLUMNS)
        + " | steps | seconds |"
    )
    lines = [head, "|" + "---|" * (len(COLUMNS) + 4)]
    for r in rows:
        kind = "related" if r["target"] in RELATED else "unrelated"
        cells = " | ".join(f"{r[k]:.3f} ({r[b]:.3f})" for k, b, _ in COLUMNS)
        lines.append(
            f"| {r['model']} | actin → {r['target']} ({kind}) | {cells} | {r['steps']} | "
            f"{r['seconds']:.0f} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--minutes", type=float, default=2.0, help="training minutes per pair (default 2)"
    )
    parser.add_argument("--models", default="unet,pix2pix", help="comma-separated: unet, pix2pix")
    parser.add_argument(
        "--pix2pix-warmup",
        type=float,
        default=None,
        help="pix2pix: fraction of the steps on L1 alone (default: the library's)",
    )
    parser.add_argument(
        "--spectral-norm", action="store_true", help="pix2pix: spectral-normalized discriminator"
    )
    parser.add_argument(
        "--lr",
        type=float,
        default=None,
        help="pix2pix: learning rate (default: the library's, 2e-4)",
    )
    parser.add_argument(
        "--targets",
        default=None,
        help=(
            "comma-separated subset of the targets to train (default: all; e.g. a rerun of one "
            "pair)"
        ),
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="results JSON (default benchmarks/results/related_pairs_<minutes>min.json)",
    )
    args = parser.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    args.targets = (
        [t.strip() for t in args.targets.split(",") if t.strip()] if args.targets else None
    )
    for t in args.targets or ():
        if t not in RELATED + UNRELATED:
            parser.error(f"unknown target {t!r}: use {', '.join(RELATED + UNRELATED)}")
    for m in args.models:
        if m not in TARGETS:
            parser.error(f"unknown model {m!r}: use {', '.join(TARGETS)}")
    if args.out is None:
        args.out = HERE / "results" / f"related_pairs_{args.minutes:g}min.json"
    return args


def main(argv: list[str] | None = None) -> dict:
    """Make the plate, relate each model, print the table, save the JSON."""
    args = parse_args(argv)
    p2p = {
        k: v
        for k, v in (
            ("warmup", args.pix2pix_warmup),
            ("spectral_norm", args.spectral_norm or None),
            ("lr", args.lr),
        )
        if v is not None
    }
    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="omeloc-related-"))
    plate = omeloc.make_plate(work / "synthetic.zarr", rows=2, cols=4, fields=2, size=256, seed=3)
    print(
        f"synthetic plate 2x4 wells x 2 fields of 256², held-out well {HELD_OUT}; {args.minutes:g} "
        f"min per pair; load average {load_before[0]:.2f}",
        flush=True,
    )
    rows = []
    for model in args.models:
        rows += relate_model(
            plate, model, args.minutes, work, p2p if model == "pix2pix" else {}, args.targets
        )
    results = {
        "minutes_per_pair": args.minutes,
        "held_out": HELD_OUT,
        "pix2pix_options": p2p,
        "rows": rows,
        "machine": machine(load_before),
    }
    return report(results, table(rows), args.out)


if __name__ == "__main__":
    main()
