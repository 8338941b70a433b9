"""The seed study's finding, measured: related proteins translate, an unrelated one does not.

Part 1 (synthetic, ground truth known by construction): one plate, actin → WAVE2, IRSp53,
vinculin and tubulin, each with a U-Net and with pix2pix, trained on 7 wells and scored on the
held-out well's whole fields (Pearson r), beside the no-learning baseline (r between the raw
source and the target).

Part 2 (real cells): the NF1 plate in ``../shared/data/nf1_plate2`` imported to OME-Zarr;
actin (RFP) → ER (GFP), trained on 4 wells, scored on H12, beside the baseline.

Prints a table and saves ``benchmarks/results/translate.json``::

    python benchmarks/translate_proteins.py                  # ~30 min on 2 CPU cores
    python benchmarks/translate_proteins.py --quick          # a smoke run (minutes, numbers meaningless)
    python benchmarks/translate_proteins.py --skip-real      # synthetic part only
"""  # noqa: E501

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

import omeloc
from omeloc.analysis.relate import heldout_scores

HERE = Path(__file__).resolve().parent
NF1 = HERE.parent.parent / "shared" / "data" / "nf1_plate2"
from omeloc.data.tiff_import import NF1_PATTERN  # noqa: E402

TARGETS = ["WAVE2", "IRSp53", "vinculin", "tubulin"]


def _run(plate, source, target, model, out, settings, val):
    t0 = time.perf_counter()
    res = omeloc.train(
        plate,
        source,
        target,
        model=model,
        out=out,
        val_wells=[val],
        overwrite=True,
        progress=False,
        **settings,
    )
    seconds = time.perf_counter() - t0
    sc = heldout_scores(omeloc.open_plate(plate), [val], res.checkpoint, settings["level"])[target]
    r, b = sc["pearson_r"], sc["baseline_r"]
    row = {
        "source": source,
        "target": target,
        "model": model,
        "heldout_r": r,
        "baseline_r": b,
        "structure_r": sc["structure_r"],
        "baseline_structure_r": sc["baseline_structure_r"],
        "val_crop_r": res.metrics["val_pearson_r"],
        "train_seconds": seconds,
        "steps_per_second": res.metrics["steps_per_second"],
    }
    print(
        f"  {source:>6} → {target:<9} {model:<8} held-out r {r:6.3f}   baseline {b:6.3f}   "
        f"structure r {sc['structure_r']:6.3f} (baseline {sc['baseline_structure_r']:6.3f})   "
        f"({seconds:5.0f} s)",
        flush=True,
    )
    return row


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--skip-real", action="store_true")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--models", default="unet,pix2pix")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "translate.json")
    args = parser.parse_args(argv)
    steps = args.steps or (6 if args.quick else 300)
    size = 96 if args.quick else 256
    settings = dict(
        steps=steps,
        crop=64 if args.quick else 96,
        batch_size=8,
        depth=3,
        base_channels=16,
        level=0,
        seed=0,
    )
    models = args.models.split(",")
    work = Path(tempfile.mkdtemp(prefix="omeloc-translate-"))
    results: dict = {
        "machine": {
            "platform": platform.platform(),
            "cpus": torch.get_num_threads(),
            "torch": torch.__version__,
            "cuda": torch.cuda.is_available(),
        },
        "settings": {**settings, "field_size": size, "models": models},
        "synthetic": [],
        "nf1": [],
    }
    print(
        f"synthetic plate 2x4 wells x 2 fields of {size}², held-out well B4; {steps} steps, crop "
        f"{settings['crop']}, batch 8, U-Net depth 3 width 16"
    )
    plate = omeloc.make_plate(
        work / "synthetic.zarr",
        rows=2,
        cols=4,
        fields=2,
        size=size,
        seed=3,
        chunks=(min(size, 256),) * 2,
    )
    for target in TARGETS:
        for model in models:
            results["synthetic"].append(
                _run(plate, "actin", target, model, work / f"{target}-{model}", settings, "B4")
            )
    if not args.skip_real and NF1.is_dir():
        print("NF1 plate (real): actin (RFP) → ER (GFP), trained on B7, D6, D7, F7, scored on H12")
        nf1 = omeloc.import_tiff(
            NF1,
            work / "nf1.zarr",
            pattern=NF1_PATTERN,
            channel_names={"RFP": "actin", "GFP": "ER", "DAPI": "nuclei"},
        )
        real = dict(settings)
        for model in models:
            results["nf1"].append(
                _run(nf1, "actin", "ER", model, work / f"nf1-{model}", real, "H12")
            )
        results["nf1_dna"] = [_run(nf1, "nuclei", "ER", "unet", work / "nf1-dapi", real, "H12")]
    elif not args.skip_real:
        print(f"(real data folder {NF1} missing: NF1 part skipped)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"saved {args.out}")
    return results


if __name__ == "__main__":
    main()
