"""Virtual stains on real cells within a time budget: NF1 (held-out well H12) and BPAE (held-out region).

Two task sets (``--tasks``, default ``nf1``):

- ``nf1``: the NF1 slice in ``../shared/data/nf1_plate2`` (5 wells, one field each; DAPI = nuclei,
  GFP = ER, RFP = F-actin) imported into an OME-Zarr plate; actin → ER and nuclei → ER, trained
  on wells B7, D6, D7, F7 and scored on the whole field of well H12;
- ``bpae``: the one BPAE field in ``../shared/data/bpae`` (680 × 1100: actin, mito, nuclei) cut
  in two and written as a plate of two wells: the left three quarters (x < 825) as well A1, the
  right-most quarter (x ≥ 825, 680 × 275) as well A2, never seen in training; actin → mito and
  nuclei → actin, trained on A1 and scored on the whole of A2.

For each task a U-Net is trained for ``--minutes`` (``omeloc.train(minutes=...)``: the device
defaults, the steps fitted to the budget) and the held-out field is predicted in memory and scored:

- whole-field r: Pearson r of prediction vs real target;
- foreground r: the same over the target's Otsu foreground (the cells, not the background);
- structure r: Pearson r of the fine structure (image minus its σ 4 px blur: footprint removed);

each beside the no-learning baseline (the raw source image scored the same way), and the
minutes the task took (training and scoring).  Prints a Markdown table and saves
``benchmarks/results/real_cells_<tasks>_<minutes>min.json`` unless ``--out`` is given (with the
machine's load average before and after)::

    python benchmarks/real_cells.py --minutes 10                 # the issue's budget: ~21 min
    python benchmarks/real_cells.py --minutes 3 --tasks bpae     # ~7 min
    python benchmarks/real_cells.py --minutes 2 --tasks nf1,bpae --recipe structure --tta

``--recipe structure`` trains with GroupNorm, residual blocks, L1 + SSIM, a high-pass detail
term, crops biased towards the target's foreground and intensity augmentation.  (``keep_best``
is left out: the only held-out well is the one scored, so choosing a checkpoint by it would
score the choice on its own data.)
"""  # noqa: E501

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import omeloc
from _report import machine, report
from omeloc.analysis.relate import heldout_scores
from omeloc.data.tiff_import import NF1_PATTERN

HERE = Path(__file__).resolve().parent
DATA = Path(os.environ.get("OMELOC_SHARED_DATA", HERE.parent.parent / "shared" / "data"))
NF1 = DATA / "nf1_plate2"
BPAE = DATA / "bpae"
BPAE_CHANNELS = ("actin", "mito", "nuclei")
PCA = DATA / "pca_brightfield"
PCA_CHANNELS = {
    "ch1": "brightfield",
    "ch2": "ER",
    "ch3": "AGP",
    "ch4": "Mito",
    "ch5": "DNA",
    "ch6": "RNA",
}
BPAE_SPLIT = 0.75
"""The BPAE field's columns left of this fraction of its width are trained on; the rest is held
out."""
RECIPES = {
    "default": {},
    "structure": {
        "norm": "group",
        "block": "residual",
        "loss": "l1+ssim",
        "detail": 1.0,
        "foreground_weight": 0.5,
        "intensity_augment": True,
    },
}
COLUMNS = (
    ("pearson_r", "baseline_r", "whole-field r"),
    ("foreground_r", "baseline_foreground_r", "foreground r"),
    ("structure_r", "baseline_structure_r", "structure r"),
)


def nf1_plate(folder: Path, work: Path) -> Path:
    """The NF1 slice imported to OME-Zarr (channels actin, ER, nuclei; one field per well)."""
    return omeloc.import_tiff(
        folder,
        work / "nf1.zarr",
        pattern=NF1_PATTERN,
        channel_names={"RFP": "actin", "GFP": "ER", "DAPI": "nuclei"},
    )


def bpae_plate(folder: Path, work: Path) -> Path:
    """The BPAE field as a two-well plate: A1 = the left three quarters (training), A2 = the rest
    (held out)."""
    import tifffile

    field = np.stack([tifffile.imread(folder / f"BPAE_{c}.tif") for c in BPAE_CHANNELS])
    if not np.all(field == np.round(field)) or field.min() < 0 or field.max() > 65535:
        raise ValueError("BPAE values are expected to be whole numbers in the 16-bit range")
    field = field.astype(np.uint16)  # the TIFFs hold 16-bit counts as float32: stored losslessly
    split = int(field.shape[-1] * BPAE_SPLIT)
    images = {("A", "1", "0"): field[..., :split], ("A", "2", "0"): field[..., split:]}
    return omeloc.write_plate(
        work / "bpae.zarr", images, channel_names=list(BPAE_CHANNELS), levels=2
    )


def pca_plate(folder: Path, work: Path) -> Path:
    """The brightfield Cell Painting half-field (540 × 1080) as a plate of four 270 × 540 quarters:
    A1, A2 (top left, top right), B1, B2 (bottom left, bottom right: held out)."""
    import tifffile

    field = np.stack(
        [tifffile.imread(folder / f"r03c03f03p01-{c}sk1fk1fl1.tiff") for c in PCA_CHANNELS]
    )
    h, w = field.shape[-2] // 2, field.shape[-1] // 2
    images = {
        (r, c, "0"): field[..., i * h : (i + 1) * h, j * w : (j + 1) * w]
        for i, r in enumerate("AB")
        for j, c in enumerate("12")
    }
    return omeloc.write_plate(
        work / "pca.zarr", images, channel_names=list(PCA_CHANNELS.values()), levels=2
    )


def pca_plate_per_field(folder: Path, work: Path) -> Path:
    """:func:`pca_plate` with each quarter's brightfield scaled by its own median and
    interquartile range (``(x - median) / IQR * 500 + 20000``, as 16-bit counts): per-field
    robust normalization of the label-free channel done to the data, to see what it buys."""
    plate = omeloc.open_plate(pca_plate(folder, work / "raw"))
    images = {}
    for img in plate.images:
        field = img.level(0).compute().astype(np.float64)
        bf = field[0]
        q25, q50, q75 = np.percentile(bf, [25, 50, 75])
        field[0] = np.clip((bf - q50) / (q75 - q25) * 500 + 20000, 0, 65535)
        images[(img.well[0], img.well[2:], img.field)] = np.round(field).astype(np.uint16)
    return omeloc.write_plate(
        work / "pca.zarr", images, channel_names=list(PCA_CHANNELS.values()), levels=2
    )


@dataclass(frozen=True)
class TaskSet:
    """One data set: how to build its plate, the well held out, the (source, target) pairs."""

    build: Callable[[Path, Path], Path]
    folder: Path
    held_out: str
    pairs: tuple[tuple[str, str], ...]
    split: str


TASK_SETS = {
    "nf1": TaskSet(
        nf1_plate,
        NF1,
        "H12",
        (("actin", "ER"), ("nuclei", "ER")),
        "trained on wells B7, D6, D7, F7, scored on well H12",
    ),
    "bpae": TaskSet(
        bpae_plate,
        BPAE,
        "A2",
        (("actin", "mito"), ("nuclei", "actin")),
        f"trained on the left {BPAE_SPLIT:.0%} of the field (A1), scored on the right-most quarter "
        "(A2)",
    ),
    "pca": TaskSet(
        pca_plate,
        PCA,
        "B2",
        (("brightfield", "DNA"),),
        "the brightfield half-field cut in four 270 x 540 quarters: trained on A1, A2, B1, "
        "scored on B2",
    ),
    "pca-field": TaskSet(
        pca_plate_per_field,
        PCA,
        "B2",
        (("brightfield", "DNA"),),
        "as pca, each quarter's brightfield scaled by its own median and IQR",
    ),
}


#: targets that are nuclear stains: scored by segmentation too (omeloc.analysis.segmentation)
NUCLEAR = ("DNA", "nuclei")


def nuclei_heldout(plate, well: str, ckpt: Path, source: str, target: str, tta: bool) -> dict:
    """Nuclei segmented alike on the virtual and the real stain of the held-out well's fields
    (mean over fields)."""
    from omeloc.analysis.segmentation import nuclei_scores

    stain = omeloc.VirtualStain(ckpt)
    rows = []
    for img in plate.well(well).images:
        src = img.channel(source, 0).compute().astype(np.float32)
        pred = stain(src[None], device="cpu", tta=tta)[0]
        rows.append(nuclei_scores(pred, img.channel(target, 0).compute()))
    return {
        k: float(np.nanmean([r[k] for r in rows]))
        for k in ("nuclei_f1", "nuclei_dice", "nuclei_count_error", "nuclei_true", "nuclei_pred")
    }


def run_task(
    plate: Path,
    held_out: str,
    source: str,
    target: str,
    minutes: float,
    recipe: dict,
    tta: bool,
    work: Path,
) -> dict:
    """Train ``source → target`` for ``minutes``, score the held-out well's field; one result
    row."""
    t0 = time.perf_counter()
    res = omeloc.train(
        plate,
        source,
        target,
        out=work / f"{plate.stem}-{source}-{target}",
        overwrite=True,
        minutes=minutes,
        val_wells=[held_out],
        progress=False,
        report=lambda line: print(f"  {line}", flush=True),
        **recipe,
    )
    t_train = time.perf_counter() - t0
    scores = heldout_scores(omeloc.open_plate(plate), [held_out], res.checkpoint, tta=tta)[target]
    if target in NUCLEAR:
        scores.update(
            nuclei_heldout(omeloc.open_plate(plate), held_out, res.checkpoint, source, target, tta)
        )
    prov = omeloc.load_checkpoint(res.checkpoint).provenance
    return {
        "task": f"{source} → {target}",
        "data": plate.stem,
        "held_out": held_out,
        **scores,
        "steps": res.steps,
        "train_minutes": t_train / 60,
        "minutes": (time.perf_counter() - t0) / 60,
        "val_crop_r": res.metrics["val_pearson_r"],
        "model": {
            k: prov[k]
            for k in ("depth", "base_channels", "crop", "batch_size", "norm", "block", "loss")
        },
    }


def table(rows: list[dict]) -> str:
    """The Markdown table of the rows: each score beside its baseline, steps and minutes."""
    head = (
        "| data | task | "
        + " | ".join(f"{title} (baseline)" for _, _, title in COLUMNS)
        + " | steps | minutes |"
    )
    lines = [head, "|" + "---|" * (len(COLUMNS) + 4)]
    for r in rows:
        cells = " | ".join(f"{r[k]:.3f} ({r[b]:.3f})" for k, b, _ in COLUMNS)
        nuclei = (
            f" nuclei F1 {r['nuclei_f1']:.3f}, Dice {r['nuclei_dice']:.3f}"
            if "nuclei_f1" in r
            else ""
        )
        lines.append(
            f"| {r['data']} | {r['task']}{nuclei} | {cells} | {r['steps']} | {r['minutes']:.1f} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line; ``--tasks`` checked against :data:`TASK_SETS` and their data folders."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--minutes", type=float, default=10.0, help="training minutes per task (default 10)"
    )
    parser.add_argument(
        "--tasks",
        default="nf1",
        help=f"comma-separated task sets: {', '.join(TASK_SETS)} (default nf1)",
    )
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="default")
    parser.add_argument("--tta", action="store_true", help="score with test-time augmentation")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a TrainConfig option over the recipe's (e.g. lr=0.01, crop=96); repeatable",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="results JSON (default benchmarks/results/real_cells_<tasks>_<minutes>min.json)",
    )
    args = parser.parse_args(argv)
    args.tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    args.options = dict(RECIPES[args.recipe])
    for item in args.set:
        key, _, value = item.partition("=")
        args.options[key] = (
            json.loads(value) if value[:1] in "0123456789-[{tf" or value == "null" else value
        )
    for name in args.tasks:
        if name not in TASK_SETS:
            parser.error(f"unknown task set {name!r}: use {', '.join(TASK_SETS)}")
        if not TASK_SETS[name].folder.is_dir():
            parser.error(
                f"real data folder {TASK_SETS[name].folder} is missing (see shared/data/README.md)"
            )
    if args.out is None:
        suffix = "" if args.recipe == "default" else f"_{args.recipe}"
        args.out = (
            HERE / "results" / f"real_cells_{'_'.join(args.tasks)}_{args.minutes:g}min{suffix}.json"
        )
    return args


def main(argv: list[str] | None = None) -> dict:
    """Run the task sets of ``--tasks`` one task at a time; print the table, save the JSON."""
    args = parse_args(argv)
    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="omeloc-real-cells-"))
    print(
        f"{args.minutes:g} min per task, recipe {args.recipe}{', TTA' if args.tta else ''}; "
        f"load average {load_before[0]:.2f}",
        flush=True,
    )
    rows = []
    for name in args.tasks:
        ts = TASK_SETS[name]
        plate = ts.build(ts.folder, work)
        print(f"{name}: {ts.split}", flush=True)
        for source, target in ts.pairs:
            rows.append(
                run_task(
                    plate, ts.held_out, source, target, args.minutes, args.options, args.tta, work
                )
            )
            print(table(rows[-1:]).splitlines()[-1], flush=True)
    results = {
        "minutes_per_task": args.minutes,
        "tasks": args.tasks,
        "splits": {n: TASK_SETS[n].split for n in args.tasks},
        "recipe": args.recipe,
        "recipe_options": args.options,
        "tta": args.tta,
        "rows": rows,
        "machine": machine(load_before),
    }
    return report(results, table(rows), args.out)


if __name__ == "__main__":
    main()
