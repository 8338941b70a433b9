"""``omeloc demo``: the whole journey on a synthetic plate (:func:`omeloc.jobs.demo.run_demo`)."""

from __future__ import annotations

import argparse

from omeloc.cli._common import EXIT_OK, add_overwrite

HELP = (
    "The whole journey on a synthetic plate: make it, train actin -> WAVE2, predict into the "
    "plate, evaluate (4–5 minutes on 2 free CPU cores, measured)."
)
EXAMPLES = ("omeloc demo", "omeloc demo my-demo --steps 200")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``omeloc demo`` to ``parser``."""
    parser.add_argument(
        "dir", nargs="?", default="omeloc-demo", help="folder for everything (default: omeloc-demo)"
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=300,
        help="training steps (default 300; the whole demo: 4–5 minutes on 2 free CPU cores)",
    )
    parser.add_argument("--size", type=int, default=256, help="field size in pixels")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, mps")
    add_overwrite(parser, "replace an earlier demo in DIR")


def run(args: argparse.Namespace) -> int:
    """Run the demo and print where everything is."""
    from omeloc.jobs.demo import run_demo

    res = run_demo(
        args.dir,
        steps=args.steps,
        size=args.size,
        overwrite=args.overwrite,
        device=args.device,
        progress=args.progress,
    )
    print(res.summary())
    return EXIT_OK
