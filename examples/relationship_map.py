"""Which proteins predict which: the relationship map of the seed study, on a synthetic plate.

For every ordered pair of channels a small model is trained on some wells and scored on held-out
wells; related pairs (actin → WAVE2, IRSp53, vinculin) translate well, an unrelated one
(actin → tubulin) does not.  Writes relate.csv and relate.png.

    python examples/relationship_map.py OUT_DIR [--quick]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import omeloc


def main(argv: list[str] | None = None) -> omeloc.RelateResult:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    size, budget = (96, 10) if args.quick else (256, 300)
    plate_path = omeloc.make_plate(
        args.out / "plate.zarr",
        rows=2,
        cols=4,
        fields=2,
        size=size,
        seed=3,
        chunks=(min(size, 256),) * 2,
        overwrite=True,
    )
    channels = (
        ["actin", "WAVE2", "tubulin"]
        if args.quick
        else ["actin", "WAVE2", "IRSp53", "vinculin", "tubulin"]
    )
    res = omeloc.relate(
        plate_path,
        channels,
        out=args.out / "relate",
        budget=budget,
        val_wells=["B4"],
        sources=None if not args.quick else ["actin"],
    )
    print(res.table())
    for key, path in res.files.items():
        print(f"{key}: {path}")
    return res


if __name__ == "__main__":
    main()
