"""Virtual stains on real cells within a time budget: NF1 actin → ER and nuclei → ER, held-out well H12.

The NF1 slice in ``../shared/data/nf1_plate2`` (5 wells, one field each; DAPI = nuclei, GFP = ER,
RFP = F-actin) is imported into an OME-Zarr plate; for each task a U-Net is trained for
``--minutes`` on wells B7, D6, D7, F7 (``omeloc.train(minutes=...)``: the device defaults, the
steps fitted to the budget) and the whole held-out field H12 is predicted in memory and scored:

- whole-field r: Pearson r of prediction vs real target;
- foreground r: the same over the target's Otsu foreground (the cells, not the background);
- structure r: Pearson r of the fine structure (image minus its σ 4 px blur: footprint removed);

each beside the no-learning baseline (the raw source image scored the same way), and the
minutes the task took (training and scoring).  Prints a Markdown table and saves
``benchmarks/results/real_cells.json`` (with the machine's load average before and after)::

    python benchmarks/real_cells.py --minutes 10                 # the issue's budget: ~21 min
    python benchmarks/real_cells.py --minutes 2                  # a short look: ~5 min
    python benchmarks/real_cells.py --minutes 2 --recipe structure --tta

``--recipe structure`` trains with GroupNorm, residual blocks, L1 + SSIM, a high-pass detail
term, crops biased towards the target's foreground and intensity augmentation.  (``keep_best``
is left out: the only held-out well is the one scored, so choosing a checkpoint by it would
score the choice on its own data.)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

import omeloc
from omeloc.analysis.relate import heldout_scores
from omeloc.data.tiff_import import NF1_PATTERN

HERE = Path(__file__).resolve().parent
NF1 = HERE.parent.parent / "shared" / "data" / "nf1_plate2"
HELD_OUT = "H12"
TASKS = (("actin", "ER"), ("nuclei", "ER"))
RECIPES = {
    "default": {},
    "structure": dict(norm="group", block="residual", loss="l1+ssim", detail=1.0, foreground_weight=0.5,
                      intensity_augment=True),
}
COLUMNS = (("pearson_r", "baseline_r", "whole-field r"), ("foreground_r", "baseline_foreground_r", "foreground r"),
           ("structure_r", "baseline_structure_r", "structure r"))


def run_task(plate: Path, source: str, target: str, minutes: float, recipe: dict, tta: bool, work: Path) -> dict:
    """Train ``source → target`` for ``minutes``, score the held-out field; one result row."""
    t0 = time.perf_counter()
    res = omeloc.train(plate, source, target, out=work / f"{source}-{target}", overwrite=True, minutes=minutes,
                       val_wells=[HELD_OUT], progress=False, report=lambda line: print(f"  {line}", flush=True),
                       **recipe)
    t_train = time.perf_counter() - t0
    scores = heldout_scores(omeloc.open_plate(plate), [HELD_OUT], res.checkpoint, tta=tta)[target]
    prov = omeloc.load_checkpoint(res.checkpoint).provenance
    return {"task": f"{source} → {target}", **scores, "steps": res.steps, "train_minutes": t_train / 60,
            "minutes": (time.perf_counter() - t0) / 60, "val_crop_r": res.metrics["val_pearson_r"],
            "model": {k: prov[k] for k in ("depth", "base_channels", "crop", "batch_size", "norm", "block", "loss")}}


def table(rows: list[dict]) -> str:
    """The Markdown table of the rows: each score beside its baseline, steps and minutes."""
    head = "| task | " + " | ".join(f"{title} (baseline)" for _, _, title in COLUMNS) + " | steps | minutes |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 3)]
    for r in rows:
        cells = " | ".join(f"{r[k]:.3f} ({r[b]:.3f})" for k, b, _ in COLUMNS)
        lines.append(f"| {r['task']} | {cells} | {r['steps']} | {r['minutes']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="training minutes per task (default 10)")
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="default")
    parser.add_argument("--tta", action="store_true", help="score with test-time augmentation")
    parser.add_argument("--data", type=Path, default=NF1)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "real_cells.json")
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        parser.error(f"real data folder {args.data} is missing (see shared/data/README.md)")
    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="omeloc-real-cells-"))
    plate = omeloc.import_tiff(args.data, work / "nf1.zarr", pattern=NF1_PATTERN,
                               channel_names={"RFP": "actin", "GFP": "ER", "DAPI": "nuclei"})
    print(f"NF1: trained on B7, D6, D7, F7, scored on {HELD_OUT}; {args.minutes:g} min per task, recipe "
          f"{args.recipe}{', TTA' if args.tta else ''}; load average {load_before[0]:.2f}", flush=True)
    rows = []
    for source, target in TASKS:
        rows.append(run_task(plate, source, target, args.minutes, RECIPES[args.recipe], args.tta, work))
        print(table(rows[-1:]).splitlines()[-1], flush=True)
    results = {
        "minutes_per_task": args.minutes, "recipe": args.recipe, "recipe_options": RECIPES[args.recipe],
        "tta": args.tta, "rows": rows,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "torch": torch.__version__, "cuda": torch.cuda.is_available(),
                    "loadavg_before": load_before, "loadavg_after": os.getloadavg()},
    }
    print(table(rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"saved {args.out}")
    return results


if __name__ == "__main__":
    main()
