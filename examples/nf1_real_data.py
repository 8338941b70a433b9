"""Real cells: the NF1 Cell Painting slice (5 wells; DAPI, GFP = ER, RFP = F-actin).

import the TIFF folder into an OME-Zarr HCS plate → train actin (RFP) → ER (GFP) on 4 wells →
predict "ER (virtual)" into all 5 → evaluate on the held-out well, beside the no-learning
baseline (Pearson r of raw actin vs ER).

    python examples/nf1_real_data.py OUT_DIR [--data ../shared/data/nf1_plate2] [--quick]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import omeloc
from omeloc.analysis.metrics import pearson_r
from omeloc.data.tiff_import import NF1_PATTERN

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parent.parent / "shared" / "data" / "nf1_plate2"
HELD_OUT = "H12"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    plate_path = omeloc.import_tiff(
        args.data,
        args.out / "nf1.zarr",
        pattern=NF1_PATTERN,
        channel_names={"RFP": "actin", "GFP": "ER", "DAPI": "nuclei"},
        overwrite=True,
    )
    steps = 10 if args.quick else 600
    trained = omeloc.train(
        plate_path,
        "actin",
        "ER",
        out=args.out / "model",
        overwrite=True,
        steps=steps,
        val_wells=[HELD_OUT],
        depth=2 if args.quick else 3,
        base_channels=4 if args.quick else 16,
        crop=64 if args.quick else 128,
    )
    pred = omeloc.predict(plate_path, trained.checkpoint, overwrite=True)
    print(pred.summary())
    res = omeloc.evaluate(
        plate_path, "ER (virtual)", "ER", out=args.out / "evaluation", source="actin"
    )
    img = omeloc.open_plate(plate_path).well(HELD_OUT).images[0]
    baseline = pearson_r(img.channel("actin").compute(), img.channel("ER").compute())
    held = [r for r in res.fields if r["well"] == HELD_OUT][0]
    print(
        f"held-out well {HELD_OUT}: Pearson r virtual ER vs real ER {held['pearson_r']:.3f} "
        f"(baseline raw actin vs ER {baseline:.3f})"
    )
    return {
        "plate": plate_path,
        "heldout_r": held["pearson_r"],
        "baseline_r": baseline,
        "evaluation": res,
    }


if __name__ == "__main__":
    main()
