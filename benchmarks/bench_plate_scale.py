"""Plates of thousands of images: time, peak memory and metadata reads per image.

A synthetic plate of N images (fields of 32², one level, one chunk per plane, channels actin
and WAVE2) and a tiny U-Net (depth 2, 4 base channels, 1 training step).  Each plate size runs
in a fresh subprocess, which measures in turn:

- ``open_plate`` and ``describe`` (``omeloc info``): seconds and metadata reads per image;
- ``predict --dry-run``: seconds and metadata reads per image;
- ``predict`` (into a copy of the plate): seconds, peak RSS of the process, metadata reads
  per image, and the overhead per image: (predict − model time) / N, where the model time is
  the engine's (``predict_numpy``) over the same fields, same model, tile and precision,
  measured in the same process;
- what predict keeps per image (``tracemalloc``, after the timings): the opened plate view
  and the lazy prediction (its Dask graph).

Store reads are counted by wrapping zarr's local store (:mod:`omeloc.testing.storecount`): on
an object store each is a round trip.

    python benchmarks/bench_plate_scale.py [--images 96 384 3456] [--cache DIR] [--out FILE]

Plates are made once into ``--cache`` (default a temporary folder) and reused.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from _report import run_child

#: images → (rows, columns, fields per well)
LAYOUTS = {96: (4, 6, 4), 384: (16, 24, 1), 3456: (16, 24, 9), 19968: (16, 24, 52)}

CHILD = r"""
import json, resource, shutil, sys, tempfile, time
from pathlib import Path
import numpy as np
import torch
import omeloc
from omeloc.engine.inference import get_model, predict_numpy, resolve_device, resolve_precision
from omeloc.learn.stain import VirtualStain
from omeloc.ngff.info import describe
from omeloc.testing.storecount import count_store_reads

plate, ckpt, n = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
dry_only = len(sys.argv) > 4 and sys.argv[4] == "dry"
row = {"images": n}

def timed(name, fn):
    with count_store_reads() as reads:
        t = time.perf_counter()
        out = fn()
        row[name + "_s"] = time.perf_counter() - t
    row[name + "_metadata_reads_per_image"] = reads.metadata / n
    return out

opened = timed("open_plate", lambda: omeloc.open_plate(plate))
timed("info", lambda: describe(plate))
timed("dry_run", lambda: omeloc.predict(plate, ckpt, dry_run=True, progress=False))
if dry_only:  # the plates too large to predict here: open and dry run only
    row["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(row))
    sys.exit(0)
with tempfile.TemporaryDirectory() as tmp:
    copy = Path(tmp) / plate.name
    shutil.copytree(plate, copy)
    res = timed("predict", lambda: omeloc.predict(copy, ckpt, progress=False))
row["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

# the engine alone on the same fields: same model, tile, overlap, batch size and precision
stain = VirtualStain(ckpt)
cfg = stain.tiling()
dev = resolve_device(cfg.device)
prec = resolve_precision(cfg.precision, dev)
model = get_model(stain.ref, dev)
x = np.stack([np.asarray(img.level(0)[:1]) for img in opened.images]).astype(np.float32)
t = time.perf_counter()
for field in x:
    predict_numpy(model, field, tile=(cfg.tile, cfg.tile), overlap=(cfg.overlap, cfg.overlap), blend=cfg.blend,
                  batch_size=cfg.batch_size, device=dev, precision=prec, out_channels=1)
row["model_s"] = time.perf_counter() - t
row["overhead_ms_per_image"] = 1000 * (row["predict_s"] - row["model_s"]) / n

# what predict keeps per image (tracemalloc, after the timings): the opened view and the lazy prediction
import gc, tracemalloc
from omeloc.jobs.predict import lazy_prediction, plan_prediction
def kept(fn):
    gc.collect(); tracemalloc.start()
    out = fn(); gc.collect()
    size = tracemalloc.get_traced_memory()[0]; tracemalloc.stop()
    return out, size / n
view, row["view_bytes_per_image"] = kept(lambda: omeloc.open_plate(plate))
job = plan_prediction(view, ckpt)
lazy_prediction(job, view.images[0])
_, row["lazy_prediction_bytes_per_image"] = kept(lambda: [lazy_prediction(job, img) for img in view.images])
print(json.dumps(row))
"""  # noqa: E501


def _plate(cache: Path, n: int) -> Path:
    import omeloc

    rows, cols, fields = LAYOUTS.get(n, (1, n, 1))
    path = cache / f"plate_{n}.zarr"
    if not (path / "zarr.json").exists():
        omeloc.make_plate(
            path,
            rows=rows,
            cols=cols,
            fields=fields,
            size=32,
            chunks=None,
            levels=1,
            channels=("actin", "WAVE2"),
            overwrite=True,
        )
    return path


def _model(cache: Path) -> Path:
    import omeloc

    out = cache / "model"
    done = list(out.rglob("weights*"))
    if done:
        return done[0].parent
    seed = omeloc.make_plate(
        cache / "seed.zarr",
        rows=1,
        cols=2,
        fields=1,
        size=64,
        chunks=None,
        levels=1,
        channels=("actin", "WAVE2"),
        overwrite=True,
    )
    return omeloc.train(
        seed,
        "actin",
        "WAVE2",
        out=out,
        steps=1,
        crop=32,
        batch_size=2,
        depth=2,
        base_channels=4,
        val_wells=["A2"],
        progress=False,
    ).checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, nargs="*", default=[96, 384, 3456])
    parser.add_argument(
        "--dry-run-only",
        type=int,
        nargs="*",
        default=[],
        metavar="N",
        help="plate sizes (e.g. 19968) timed for open and dry run only",
    )
    parser.add_argument(
        "--cache", type=Path, default=None, help="folder for the plates and the model (kept)"
    )
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "plate_scale.json"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cache = args.cache or Path(tmp)
        cache.mkdir(parents=True, exist_ok=True)
        ckpt = _model(cache)
        runs = []
        for n in args.dry_run_only:
            plate = _plate(cache, n)
            row = run_child(CHILD, [str(plate), str(ckpt), str(n), "dry"], f"{n} images (dry run)")
            runs.append(row)
            print(
                f"{n:5d} images  open {row['open_plate_s']:6.2f} s "
                f"({row['open_plate_metadata_reads_per_image']:.2f} reads/img)  dry-run "
                f"{row['dry_run_s']:6.2f} s  peak RSS {row['peak_rss_mb']:6.0f} MB",
                flush=True,
            )
        for n in args.images:
            plate = _plate(cache, n)
            row = run_child(CHILD, [str(plate), str(ckpt), str(n)], f"{n} images")
            runs.append(row)
            print(
                f"{n:5d} images  open {row['open_plate_s']:6.2f} s "
                f"({row['open_plate_metadata_reads_per_image']:.2f} reads/img)  info "
                f"{row['info_s']:6.2f} s  dry-run {row['dry_run_s']:6.2f} s "
                f"({row['dry_run_metadata_reads_per_image']:.2f} reads/img)  predict "
                f"{row['predict_s']:7.2f} s ({row['predict_metadata_reads_per_image']:.2f} "
                f"reads/img)  model {row['model_s']:6.2f} s  overhead "
                f"{row['overhead_ms_per_image']:5.1f} ms/img  peak RSS {row['peak_rss_mb']:6.0f} "
                f"MB  kept per image: view {row['view_bytes_per_image']:6.0f} B, lazy prediction "
                f"{row['lazy_prediction_bytes_per_image']:6.0f} B",
                flush=True,
            )
    result = {
        "benchmark": "omeloc plate scale (fields of 32², one level, tiny U-Net)",
        "runs": runs,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "loadavg_at_end": os.getloadavg(),
        },
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
