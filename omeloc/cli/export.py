"""``omeloc export``: a trained checkpoint as a BMZ package, a TorchScript or an ONNX file."""

from __future__ import annotations

import argparse

from omeloc.cli._common import EXIT_OK, add_overwrite, csv_list

HELP = "Export a trained model as a BioImage Model Zoo package (spec 0.5), ONNX or TorchScript."
EXAMPLES = (
    "omeloc export models/actin-wave2 --format bmz --out actin-wave2.zip",
    "omeloc export models/actin-wave2 --format bmz --onnx --out actin-wave2.zip --author 'A. "
    "Person'",
    "omeloc export models/actin-wave2 --format onnx --out actin-wave2.onnx",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``omeloc export`` to ``parser``."""
    parser.add_argument("model", help="checkpoint folder written by omeloc train")
    parser.add_argument(
        "--format",
        choices=("bmz", "onnx", "torchscript"),
        default="bmz",
        help="bmz: a package (zip, or a folder when --out has no .zip suffix); onnx / "
        "torchscript: one file of the network (normalized in, normalized out)",
    )
    parser.add_argument("--out", required=True, help="the file (or folder) to write")
    parser.add_argument(
        "--onnx", action="store_true", help="bmz: add ONNX weights beside the torch ones"
    )
    parser.add_argument(
        "--plate",
        default=None,
        help="bmz: plate to cut the test tensors and cover from (default: the training plate)",
    )
    parser.add_argument(
        "--author",
        type=csv_list,
        default=["omeloc user"],
        metavar="NAME[,NAME]",
        help="bmz: author names",
    )
    parser.add_argument("--license", default="CC-BY-4.0", help="bmz: SPDX license id")
    parser.add_argument(
        "--title", default=None, help="bmz: model name (default: 'omeloc SOURCE to TARGET')"
    )
    add_overwrite(parser, "replace an existing --out")


def run(args: argparse.Namespace) -> int:
    """Export and print what was written."""
    from pathlib import Path

    from omeloc.errors import InputError

    if args.format == "bmz":
        from omeloc.modelio.export_bmz import export_bmz

        res = export_bmz(
            args.model,
            args.out,
            plate=args.plate,
            onnx=args.onnx,
            authors=args.author,
            license=args.license,
            name=args.title,
            overwrite=args.overwrite,
        )
        print(res.summary())
        return EXIT_OK
    from omeloc.learn.checkpoint import load_checkpoint
    from omeloc.modelio.export_onnx import export_onnx, export_torchscript

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise InputError(f"{out} exists. Pass --overwrite to replace it, or choose another --out.")
    net = load_checkpoint(args.model).build_model("cpu")
    (export_onnx if args.format == "onnx" else export_torchscript)(net, out)
    print(
        f"wrote {args.format} {out} (the network alone: inputs and outputs normalized as in "
        "the checkpoint)"
    )
    return EXIT_OK
