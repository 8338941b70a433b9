"""``omeloc import-tiff``: per-well, per-channel TIFFs into an OME-Zarr plate
(:func:`omeloc.import_tiff`)."""

from __future__ import annotations

import argparse

from omeloc.cli._common import EXIT_OK, add_overwrite, counting_bar, csv_list
from omeloc.errors import OmelocError

HELP = (
    "Import a folder of HCS TIFFs (Opera Phenix, ImageXpress, CellVoyager exports, OME-TIFFs) into "
    "an OME-Zarr plate, or the TIFF files of one field (a channel per file) into a single OME-Zarr "
    "image."
)
EXAMPLES = (
    "omeloc import-tiff phenix_export/ plate.zarr --preset phenix --channel-names 5=DNA,2=ER,3=AGP",
    (
        r"omeloc import-tiff nf1_plate2/ nf1.zarr --pattern "
        r"'(?P<well>[A-P]\d{1,2})_01_(?P<channel>[1-3])_(?P<site>\d)_(?P<stain>DAPI|GFP|RFP)_001\.tif'"
    ),
    "omeloc import-tiff tiffs/ plate.zarr --ngff 0.4 --channel-names RFP=actin,GFP=ER",
    "omeloc import-tiff BPAE_actin.tif BPAE_mito.tif BPAE_nuclei.tif bpae.zarr   # one field: "
    "channels actin, mito, nuclei",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``omeloc import-tiff`` to ``parser``."""
    from omeloc.data.tiff_import import DEFAULT_PATTERN, PRESETS

    parser.add_argument(
        "folder",
        nargs="+",
        metavar="FOLDER | FILE...",
        help="a folder of a plate's TIFFs, or the TIFF files of one field (a channel per file)",
    )
    parser.add_argument("out", help="the OME-Zarr plate (or, from files, image) to write")
    names = parser.add_mutually_exclusive_group()
    names.add_argument(
        "--pattern",
        default=None,
        help=(
            "regex with named groups well (or row+column; letter or numeric rows), channel "
            "(optional: without it each file holds every channel), stain, field/site, plane/z, "
            f"time (default: {DEFAULT_PATTERN})"
        ),
    )
    names.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default=None,
        help=(
            "an instrument's file naming: phenix (Opera Phenix/Operetta "
            "r01c01f01p01-ch1sk1fk1fl1.tiff), imagexpress (Plate_B02_s1_w1.tif), cellvoyager "
            "(W1_B03_T0001F001L01A01Z01C01.tif), nf1"
        ),
    )
    parser.add_argument(
        "--file-axes",
        default=None,
        metavar="AXES",
        help="axes of multi-plane TIFFs that do not name them, e.g. CYX",
    )
    parser.add_argument("--channel-names", type=csv_list, default=None, metavar="OLD=NEW,...")
    parser.add_argument("--ngff", choices=["0.4", "0.5"], default="0.5")
    parser.add_argument("--chunk", type=int, default=256)
    parser.add_argument("--levels", type=int, default=None)
    parser.add_argument(
        "--pixel-size",
        type=csv_list,
        default=None,
        metavar="UM[,UM[,UM]]",
        help="micrometers per pixel: y=x, or y,x, or z,y,x (default: from the OME-XML or the "
        "TIFF resolution tags, else none)",
    )
    add_overwrite(parser)


def parse_renames(items: list[str] | None) -> dict[str, str]:
    """``["RFP=actin", "GFP=ER"]`` → ``{"RFP": "actin", "GFP": "ER"}``; a pair without ``=`` is
    an error."""
    rename = {}
    for item in items or []:
        if "=" not in item:
            raise OmelocError(f"--channel-names expects OLD=NEW pairs. Got {item!r} instead.")
        old, new = item.split("=", 1)
        rename[old] = new
    return rename


def _pixel_size(items: list[str] | None) -> list[float] | None:
    """``["0.65"]`` → ``[0.65]``; a value that is not a number is an error (the range is checked
    by the writer)."""
    if items is None:
        return None
    try:
        return [float(v) for v in items]
    except ValueError:
        raise OmelocError(
            f"--pixel-size expects micrometers per pixel (0.65, or y,x, or z,y,x). "
            f"Got {','.join(items)!r} instead."
        ) from None


def run(args: argparse.Namespace) -> int:
    """Import the folder and say where the plate is."""
    from pathlib import Path

    from omeloc.data.tiff_import import import_tiff, import_tiff_files

    rename = parse_renames(args.channel_names)
    inputs = [Path(p) for p in args.folder]
    if len(inputs) > 1 or inputs[0].is_file():
        if args.pattern or args.preset:
            raise OmelocError(
                "--pattern and --preset name a folder's files; pass a folder, or drop them."
            )
        path = import_tiff_files(
            inputs,
            args.out,
            channel_names=rename,
            file_axes=args.file_axes,
            ngff_version=args.ngff,
            chunks=(args.chunk, args.chunk),
            levels=args.levels,
            overwrite=args.overwrite,
        )
        print(f"wrote image {path} (channels from the file names; omeloc info {path})")
        return EXIT_OK
    with counting_bar("import", args.progress) as report:
        path = import_tiff(
            inputs[0],
            args.out,
            pattern=args.pattern,
            preset=args.preset,
            channel_names=rename,
            file_axes=args.file_axes,
            ngff_version=args.ngff,
            chunks=(args.chunk, args.chunk),
            levels=args.levels,
            overwrite=args.overwrite,
            progress=report,
            pixel_size=_pixel_size(args.pixel_size),
        )
    print(f"wrote plate {path}")
    return EXIT_OK
