"""The ``omeloc`` command line: thin commands, each parsing arguments and calling one library function.

Exit codes: 0 success; 2 bad input or usage (an :class:`~omeloc.errors.OmelocError`, printed as
one line, no traceback); 1 an unexpected failure (traceback with ``-v``); 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence

from omeloc import __version__
from omeloc.errors import OmelocError

logger = logging.getLogger("omeloc")

EXIT_OK, EXIT_FAILURE, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130

_COMMANDS: dict[str, Callable[[argparse.Namespace], int | None]] = {}


def _command(name: str) -> Callable:
    def register(func: Callable[[argparse.Namespace], int | None]) -> Callable:
        _COMMANDS[name] = func
        return func

    return register


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _progress_bar(total: int | None, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, unit="img", leave=False)


# -- commands --------------------------------------------------------------------------------
@_command("info")
def _info(args: argparse.Namespace) -> int:
    from omeloc.ngff.info import describe, format_description

    d = describe(args.path)
    print(json.dumps(d, indent=2) if args.json else format_description(d))
    return EXIT_OK


@_command("synth")
def _synth(args: argparse.Namespace) -> int:
    from omeloc.data.synthetic import make_plate

    n = args.rows * args.cols * args.fields
    with _progress_bar(n, "synth", args.progress) as bar:
        path = make_plate(
            args.out, rows=args.rows, cols=args.cols, fields=args.fields, size=args.size,
            seed=args.seed, ngff=args.ngff, chunks=(args.chunk, args.chunk), levels=args.levels,
            perturbed_wells=args.perturbed_wells or (), perturbation=args.perturbation, overwrite=args.overwrite,
            progress=lambda k: bar.update(k - bar.n),
        )
    print(f"wrote synthetic plate {path} ({args.rows}x{args.cols} wells, {args.fields} field(s) each, "
          f"{args.size}x{args.size} px, NGFF {args.ngff})")
    return EXIT_OK


@_command("import-tiff")
def _import_tiff(args: argparse.Namespace) -> int:
    from omeloc.data.tiff_import import import_tiff

    rename = {}
    for item in args.channel_names or []:
        if "=" not in item:
            raise OmelocError(f"--channel-names expects OLD=NEW pairs. Got {item!r} instead.")
        old, new = item.split("=", 1)
        rename[old] = new
    bar = _progress_bar(None, "import", args.progress)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    try:
        path = import_tiff(
            args.folder, args.out, pattern=args.pattern, channel_names=rename, ngff_version=args.ngff,
            chunks=(args.chunk, args.chunk), levels=args.levels, overwrite=args.overwrite, progress=progress,
        )
    finally:
        bar.close()
    print(f"wrote plate {path}")
    return EXIT_OK


@_command("rechunk")
def _rechunk(args: argparse.Namespace) -> int:
    from omeloc.ngff.rechunk import rechunk

    path = rechunk(args.src, args.dst, overwrite=args.overwrite)
    print(f"wrote {path} (one channel per chunk: new channels can now be appended in place)")
    return EXIT_OK


@_command("recover")
def _recover(args: argparse.Namespace) -> int:
    from omeloc.writeback.protocol import recover

    outcome = recover(args.plate, force=args.force)
    messages = {
        None: "nothing to recover: no interrupted write-back in this plate",
        "rollback": "rolled back an interrupted write-back; the plate is as it was before that run",
        "finish": "finished an interrupted write-back whose pixels and metadata were complete",
    }
    print(f"{args.plate}: {messages[outcome]}")
    return EXIT_OK


def _foreground(value: str) -> str | float:
    if value == "otsu":
        return value
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'otsu' or a number, got {value!r}") from None


@_command("evaluate")
def _evaluate(args: argparse.Namespace) -> int:
    from omeloc.analysis.evaluate import evaluate

    bar = _progress_bar(None, "evaluate", args.progress)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    try:
        res = evaluate(
            args.plate, args.pred, args.truth, out=args.out, level=args.level, wells=args.wells,
            source=args.source, metric=args.metric, montage_wells=args.montage_wells,
            control_wells=args.control_wells, foreground=args.foreground,
            noise_ceiling=not args.no_noise_ceiling, z_threshold=args.z_threshold, progress=progress,
        )
    finally:
        bar.close()
    mean = res.summary.get("fields_mean", {})
    shown = ("pearson_r", "pearson_r_fg", "ssim", "psnr", "nrmse", "mae", "noise_ceiling")
    stats = ", ".join(f"{k} {mean[k]:.3f}" for k in shown if isinstance(mean.get(k), (int, float)))
    print(f"{len(res.fields)} field(s) in {len(res.wells)} well(s): mean {stats}")
    if res.flagged:
        print(f"flagged wells (|z| >= {args.z_threshold} on {args.metric}): {', '.join(res.flagged)}")
    for key, path in res.files.items():
        print(f"  {key}: {path}")
    return EXIT_OK


@_command("predict")
def _predict(args: argparse.Namespace) -> int:
    from omeloc.jobs.predict import predict

    res = predict(
        args.plate, args.model, name=args.name, wells=args.wells, overwrite=args.overwrite, tile=args.tile,
        overlap=args.overlap, blend=args.blend, batch_size=args.batch_size, device=args.device,
        precision=args.precision, scheduler=args.scheduler, workers=args.workers, dry_run=args.dry_run,
        progress=args.progress,
    )
    print(res.summary())
    if not res.dry_run:
        print(f"open it: napari --plugin napari-ome-zarr {res.plate}   (or: omeloc info {res.plate})")
    return EXIT_OK


@_command("train")
def _train(args: argparse.Namespace) -> int:
    from omeloc.learn.training import train

    res = train(
        args.plates, args.source, args.target, model=args.model, out=args.out, steps=args.steps,
        val_wells=args.val_wells, crop=args.crop, batch_size=args.batch_size, level=args.level, lr=args.lr,
        seed=args.seed, device=args.device, depth=args.depth, base_channels=args.base_channels,
        resume=args.resume, overwrite=args.overwrite, progress=args.progress,
    )
    print(res.summary())
    print(f"next: omeloc predict PLATE --model {res.checkpoint}")
    return EXIT_OK


@_command("demo")
def _demo(args: argparse.Namespace) -> int:
    from omeloc.jobs.demo import run_demo

    res = run_demo(args.dir, steps=args.steps, size=args.size, overwrite=args.overwrite, device=args.device,
                   progress=args.progress)
    print(res.summary())
    return EXIT_OK


@_command("relate")
def _relate(args: argparse.Namespace) -> int:
    from omeloc.analysis.relate import relate

    res = relate(args.plate, args.channels, out=args.out, sources=args.sources, val_wells=args.val_wells,
                 budget=args.budget, model=args.model, level=args.level, seed=args.seed, device=args.device,
                 joint=args.joint, progress=args.progress)
    print(res.table())
    for key, path in res.files.items():
        print(f"  {key}: {path}")
    return EXIT_OK


# -- parser ----------------------------------------------------------------------------------
def _examples(*lines: str) -> str:
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``omeloc`` command."""
    from omeloc.data.synthetic import PERTURBATIONS
    from omeloc.data.tiff_import import DEFAULT_PATTERN

    common = argparse.ArgumentParser(add_help=False)
    verbosity = common.add_mutually_exclusive_group()
    verbosity.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)")
    verbosity.add_argument("-q", "--quiet", action="store_true", help="only errors; no progress bars")

    parser = argparse.ArgumentParser(
        prog="omeloc",
        description="Virtual stains for OME-Zarr HCS plates: train, predict into the plate, evaluate.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
        epilog=_examples("omeloc synth plate.zarr", "omeloc info plate.zarr"),
    )
    parser.add_argument("--version", action="version", version=f"omeloc {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def add(name: str, help: str, examples: Sequence[str]) -> argparse.ArgumentParser:
        return sub.add_parser(
            name, help=help, description=help, parents=[common],
            formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_examples(*examples),
        )

    p = add("demo", "The whole journey on a synthetic plate: make it, train actin -> WAVE2, predict into the plate, "
                    "evaluate.", ["omeloc demo", "omeloc demo my-demo --steps 200"])
    p.add_argument("dir", nargs="?", default="omeloc-demo", help="folder for everything (default: omeloc-demo)")
    p.add_argument("--steps", type=int, default=300, help="training steps (default 300: ~3 minutes on 2 CPU cores)")
    p.add_argument("--size", type=int, default=256, help="field size in pixels")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, mps")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier demo in DIR")

    p = add("info", "Describe a plate or image: version, wells, channels, levels, chunks, append-friendliness.",
            ["omeloc info plate.zarr", "omeloc info plate.zarr/B/3/0 --json"])
    p.add_argument("path", help="plate or image path or URL")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")

    p = add("synth", "Make a synthetic plate with known protein relationships (actin, WAVE2, IRSp53, vinculin, tubulin, nuclei).",
            ["omeloc synth plate.zarr", "omeloc synth plate.zarr --rows 4 --cols 6 --fields 2 --size 512 --ngff 0.4"])
    p.add_argument("out", help="plate to create")
    p.add_argument("--rows", type=int, default=2)
    p.add_argument("--cols", type=int, default=3)
    p.add_argument("--fields", type=int, default=2)
    p.add_argument("--size", type=int, default=256, help="field size in pixels (square)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ngff", choices=["0.4", "0.5"], default="0.5")
    p.add_argument("--chunk", type=int, default=256, help="chunk size along y and x")
    p.add_argument("--levels", type=int, default=3, help="pyramid levels")
    p.add_argument("--perturbed-wells", type=_csv, default=None, metavar="B2,C3",
                   help="wells where a perturbation breaks a protein relationship (a simulated hit)")
    p.add_argument("--perturbation", choices=sorted(PERTURBATIONS), default="wave2_cytoplasmic",
                   help="what happens in the perturbed wells (default: WAVE2 leaves the cell edge)")
    p.add_argument("--overwrite", action="store_true")

    p = add("import-tiff", "Import a folder of per-well, per-channel TIFFs into an OME-Zarr HCS plate.",
            [r"omeloc import-tiff nf1_plate2/ nf1.zarr --pattern '(?P<well>[A-P]\d{1,2})_01_(?P<channel>[1-3])_(?P<site>\d)_(?P<stain>DAPI|GFP|RFP)_001\.tif'",
             "omeloc import-tiff tiffs/ plate.zarr --ngff 0.4 --channel-names RFP=actin,GFP=ER"])
    p.add_argument("folder")
    p.add_argument("out")
    p.add_argument("--pattern", default=DEFAULT_PATTERN,
                   help="regex with named groups well (or row+column), channel, optional stain and field/site "
                        f"(default: {DEFAULT_PATTERN})")
    p.add_argument("--channel-names", type=_csv, default=None, metavar="OLD=NEW,...")
    p.add_argument("--ngff", choices=["0.4", "0.5"], default="0.5")
    p.add_argument("--chunk", type=int, default=256)
    p.add_argument("--levels", type=int, default=None)
    p.add_argument("--overwrite", action="store_true")

    p = add("rechunk", "Copy a plate or image with one channel per chunk, so new channels can be appended in place.",
            ["omeloc rechunk plate.zarr plate-c1.zarr"])
    p.add_argument("src", help="plate or image to copy (only read)")
    p.add_argument("dst", help="new local directory")
    p.add_argument("--overwrite", action="store_true", help="replace DST if it exists")

    p = add("recover", "Roll back (or finish) an interrupted write-back of a virtual channel.",
            ["omeloc recover plate.zarr", "omeloc recover plate.zarr --force"])
    p.add_argument("plate")
    p.add_argument("--force", action="store_true",
                   help="recover even if the writer looks alive (another host, fresh heartbeat)")

    from omeloc.analysis.metrics import METRIC_NAMES

    p = add("evaluate", "Score a virtual channel against the real one per field and well; tables, heat map, montage.",
            ["omeloc evaluate plate.zarr --pred 'WAVE2 (virtual)' --truth WAVE2",
             "omeloc evaluate plate.zarr --pred 'WAVE2 (virtual)' --truth WAVE2 --control-wells B2,B3 --out eval"])
    p.add_argument("plate", help="plate holding both channels (only read)")
    p.add_argument("--pred", required=True, help="virtual channel name")
    p.add_argument("--truth", required=True, help="real channel name")
    p.add_argument("--out", default="evaluation", help="output folder (default: evaluation)")
    p.add_argument("--level", type=int, default=0, help="pyramid level (default 0)")
    p.add_argument("--wells", type=_csv, default=None, metavar="B2,B3")
    p.add_argument("--source", default=None, help="input channel shown in montages (default: from provenance)")
    p.add_argument("--metric", choices=METRIC_NAMES, default="pearson_r", help="metric for heat map and z-scores")
    p.add_argument("--montage-wells", type=_csv, default=None, metavar="B2,C3")
    p.add_argument("--control-wells", type=_csv, default=None, metavar="B2,B3",
                   help="reference wells for the screening z-score (default: all wells)")
    p.add_argument("--foreground", type=_foreground, default="otsu", help="'otsu' or an intensity threshold")
    p.add_argument("--no-noise-ceiling", action="store_true", help="skip the Pearson r noise-ceiling estimate")
    p.add_argument("--z-threshold", type=float, default=3.0)

    p = add("predict", "Predict a virtual channel with a trained model and write it into every image of the plate.",
            ["omeloc predict plate.zarr --model models/actin-wave2",
             "omeloc predict plate.zarr --model models/actin-wave2 --wells B2,B3 --dry-run",
             "omeloc predict plate.zarr --model models/actin-wave2 --workers 2",
             "omeloc predict s3://lab/plate.zarr --model /shared/actin-wave2 --scheduler tcp://gpu-head:8786"])
    p.add_argument("plate", help="plate (or image) path or URL; must take a new channel in place (see omeloc info)")
    p.add_argument("--model", required=True, help="checkpoint folder written by omeloc train")
    p.add_argument("--name", default=None, help="label of the new channel (default: '<target> (virtual)')")
    p.add_argument("--wells", type=_csv, default=None, metavar="B2,B3", help="wells to predict (default: all)")
    p.add_argument("--overwrite", action="store_true", help="replace a virtual channel of that name")
    p.add_argument("--tile", type=int, default=None, help="tile size in pixels (default: the checkpoint's advice)")
    p.add_argument("--overlap", type=int, default=None, help="tile overlap in pixels (default: the checkpoint's)")
    p.add_argument("--blend", default="cosine", help="tile blending: cosine, gaussian, linear or constant")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    where = p.add_mutually_exclusive_group()
    where.add_argument("--scheduler", default=None, metavar="tcp://HOST:PORT", help="a running Dask scheduler")
    where.add_argument("--workers", type=int, default=None, help="start a local cluster of N worker processes")
    p.add_argument("--dry-run", action="store_true", help="check everything, say what would be written, write nothing")

    p = add("train", "Train a U-Net or pix2pix to predict one channel from another, on crops read from the plate(s).",
            ["omeloc train plate.zarr --source actin --target WAVE2 --out models/actin-wave2",
             "omeloc train plate.zarr --source actin --target vinculin --model pix2pix --steps 5000 --val-wells B2,C3",
             "omeloc train plate.zarr --source actin --target WAVE2 --out models/actin-wave2 --resume"])
    p.add_argument("plates", nargs="+", metavar="PLATE", help="plate(s) to train on (only read)")
    p.add_argument("--source", type=_csv, required=True, metavar="A[,B]", help="input channel(s)")
    p.add_argument("--target", type=_csv, required=True, metavar="T", help="channel(s) to predict")
    p.add_argument("--model", choices=["unet", "pix2pix"], default="unet")
    p.add_argument("--out", default="omeloc-model", help="checkpoint folder (default: omeloc-model)")
    p.add_argument("--steps", type=int, default=2000, help="optimizer steps (default 2000)")
    p.add_argument("--val-wells", type=_csv, default=None, metavar="B2,C3",
                   help="wells held out for validation (default: every fourth well)")
    p.add_argument("--crop", type=int, default=256, help="crop side in pixels (multiple of 2**depth; default 256)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--level", type=int, default=0, help="pyramid level to train on (default 0)")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default 3e-3 U-Net, 2e-4 pix2pix)")
    p.add_argument("--depth", type=int, default=4, help="U-Net depth (default 4)")
    p.add_argument("--base-channels", type=int, default=32, help="U-Net width (default 32: 7.8 M parameters)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    again = p.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    again.add_argument("--overwrite", action="store_true", help="replace the checkpoint in --out")

    p = add("relate", "Train a small model for every ordered pair of channels; held-out Pearson r matrix vs baseline.",
            ["omeloc relate plate.zarr --channels actin,WAVE2,IRSp53,vinculin,tubulin",
             "omeloc relate plate.zarr --channels actin,WAVE2,tubulin --sources actin --budget 200 --out rel"])
    p.add_argument("plate", help="plate (only read)")
    p.add_argument("--channels", type=_csv, required=True, metavar="A,B,C")
    p.add_argument("--sources", type=_csv, default=None, metavar="A", help="only these sources (default: all)")
    p.add_argument("--val-wells", type=_csv, default=None, metavar="B2,C3",
                   help="held-out wells (default: every fourth well)")
    p.add_argument("--budget", type=int, default=300, help="training steps per pair (default 300)")
    p.add_argument("--model", choices=["unet", "pix2pix"], default="unet")
    p.add_argument("--level", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--joint", action="store_true",
                   help="one multi-output model per source instead of one model per pair (faster)")
    p.add_argument("--out", default="relate", help="output folder (default: relate)")
    return parser


def _configure_logging(args: argparse.Namespace) -> None:
    level = logging.ERROR if args.quiet else (logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if args.verbose == 0:
        for noisy in ("distributed", "ome_zarr", "numcodecs"):
            logging.getLogger(noisy).setLevel(logging.ERROR)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``omeloc`` command; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return EXIT_BAD_INPUT
    _configure_logging(args)
    args.progress = not args.quiet and sys.stderr.isatty()
    try:
        code = _COMMANDS[args.command](args)
    except OmelocError as err:
        print(f"omeloc {args.command}: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"omeloc {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as err:  # an unexpected failure: one line, the traceback with -v
        if args.verbose:
            raise
        print(f"omeloc {args.command}: failed: {type(err).__name__}: {err} (run with -v for the traceback)",
              file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK if code is None else code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
