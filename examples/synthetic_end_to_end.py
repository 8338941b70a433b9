"""Synthetic plate, end to end, through the Python API.

make a plate with known protein relationships → train actin → WAVE2 on all wells but one →
predict "WAVE2 (virtual)" into every image (all pyramid levels) → evaluate against the real
WAVE2 (tables, plate heat map, montage) → read the new channel back like any viewer would.

    python examples/synthetic_end_to_end.py OUT_DIR [--quick]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import omeloc


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument(
        "--quick", action="store_true", help="tiny settings (seconds; for the test suite)"
    )
    args = parser.parse_args(argv)
    size, steps = (96, 20) if args.quick else (256, 400)
    args.out.mkdir(parents=True, exist_ok=True)

    plate_path = omeloc.make_plate(
        args.out / "plate.zarr",
        rows=2,
        cols=3,
        fields=2,
        size=size,
        seed=1,
        chunks=(min(size, 256),) * 2,
        overwrite=True,
    )
    trained = omeloc.train(
        plate_path,
        "actin",
        "WAVE2",
        model="unet",
        out=args.out / "model",
        overwrite=True,
        steps=steps,
        val_wells=["B3"],
        depth=3 if not args.quick else 2,
        base_channels=16 if not args.quick else 4,
        crop=64 if args.quick else 128,
    )
    pred = omeloc.predict(plate_path, trained.checkpoint, overwrite=True)
    print(pred.summary())
    res = omeloc.evaluate(
        plate_path, "WAVE2 (virtual)", "WAVE2", out=args.out / "evaluation", source="actin"
    )

    plate = omeloc.open_plate(plate_path)
    print("channels now:", ", ".join(plate.channel_names))
    virtual = plate.images[0].to_xarray().sel(c="WAVE2 (virtual)")  # named dims, channel labels
    heldout = [r["pearson_r"] for r in res.fields if r["well"] == "B3"]
    print(f"held-out well B3: Pearson r {sum(heldout) / len(heldout):.3f}")
    for key, path in res.files.items():
        print(f"{key}: {path}")
    return {
        "plate": plate_path,
        "checkpoint": trained.checkpoint,
        "evaluation": res,
        "virtual": virtual,
    }


if __name__ == "__main__":
    main()
