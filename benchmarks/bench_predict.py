"""Plate prediction throughput and peak memory: 4, 16 and 64 fields; 1 vs 2 Dask workers; end to end vs the engine.

Each measurement runs in a fresh subprocess (so peak RSS is that run's alone): a synthetic
plate of N fields (512 x 512 px, chunks 256) is made, then ``omeloc.predict`` writes the
virtual channel with the default U-Net (7.8 M parameters; weights from a 1-step training: the
speed does not depend on them) through the full path: zarr → normalize → tiled inference →
write-back at every level.

    python benchmarks/bench_predict.py [--fields 4 16 64] [--size 512] [--out benchmarks/results/predict.json]

In the threads runs the same subprocess then times the engine alone on the same fields
(``predict_numpy`` on each whole field already in memory and normalized; same model, tile,
overlap, blend, batch size and precision as the plate run, model already loaded): the column
``e2e/engine`` is the plate path's megapixels per second over the engine's (target ≥ 0.9); ``warm``
the same for a second plate predicted in the same process (model loaded, torch's kernels ready,
as in the engine-alone measurement).

Prints a table and saves JSON.  Figures depend on the machine: compare only runs made here.
"""  # noqa: E501

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from _report import run_child

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
import omeloc
root, n_fields, size, mode, ckpt = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
cols = min(n_fields, 8)
rows = max(1, n_fields // cols)
plate = omeloc.make_plate(root / f"plate_{n_fields}_{mode}.zarr", rows=rows, cols=cols, fields=n_fields // (rows * cols),
                          size=size, chunks=(256, 256), levels=3, channels=("actin", "WAVE2"), seed=0)
kw = {}
if mode.startswith("workers"):
    kw["workers"] = int(mode[len("workers"):])
warm_plate = None
if mode == "threads":  # a second plate, predicted after the first: the model loaded, torch's kernels ready
    warm_plate = omeloc.make_plate(root / f"plate_{n_fields}_{mode}_warm.zarr", rows=rows, cols=cols,
                                   fields=n_fields // (rows * cols), size=size, chunks=(256, 256), levels=3,
                                   channels=("actin", "WAVE2"), seed=0)
t = time.perf_counter()
res = omeloc.predict(plate, ckpt, **kw)
seconds = time.perf_counter() - t
self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
child_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
row = {"fields": n_fields, "mode": mode, "megapixels": res.megapixels, "seconds": seconds,
       "megapixels_per_second": res.megapixels / seconds, "peak_rss_mb_driver": self_kb / 1024,
       "peak_rss_mb_largest_worker": child_kb / 1024}
if mode == "threads":  # the engine alone, same model / tiles / precision, fields already in memory
    import numpy as np
    from omeloc.engine.inference import get_model, predict_numpy, resolve_device, resolve_precision
    from omeloc.learn.stain import VirtualStain
    stain = VirtualStain(ckpt)
    cfg = stain.tiling()
    dev = resolve_device(cfg.device)
    prec = resolve_precision(cfg.precision, dev)
    model = get_model(stain.ref, dev)
    fields = [np.asarray(stain.normalize(np.asarray(img.channel("actin"))[None])) for img in omeloc.open_plate(plate).images]
    t = time.perf_counter()
    for x in fields:
        predict_numpy(model, x, tile=(cfg.tile, cfg.tile), overlap=(cfg.overlap, cfg.overlap), blend=cfg.blend,
                      batch_size=cfg.batch_size, device=dev, precision=prec, out_channels=1)
    engine_s = time.perf_counter() - t
    t = time.perf_counter()
    omeloc.predict(warm_plate, ckpt)
    warm_s = time.perf_counter() - t
    row.update(engine_seconds=engine_s, engine_megapixels_per_second=res.megapixels / engine_s,
               e2e_over_engine=engine_s / seconds, warm_seconds=warm_s, warm_e2e_over_engine=engine_s / warm_s,
               tile=cfg.tile, overlap=cfg.overlap, precision=prec)
print(json.dumps(row))
"""  # noqa: E501


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fields", type=int, nargs="+", default=[4, 16, 64])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--modes", nargs="+", default=["threads", "workers1", "workers2"])
    parser.add_argument(
        "--worker-fields", type=int, default=16, help="plate size for the 1-vs-2-worker comparison"
    )
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "predict.json"
    )
    args = parser.parse_args()

    import omeloc

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        seed_plate = omeloc.make_plate(
            root / "seed.zarr", rows=1, cols=2, fields=1, size=256, channels=("actin", "WAVE2")
        )
        ckpt = omeloc.train(
            seed_plate,
            "actin",
            "WAVE2",
            out=root / "model",
            steps=1,
            val_wells=["A2"],
            progress=False,
        ).checkpoint
        runs = []
        plan = [(n, "threads") for n in args.fields]
        plan += [(args.worker_fields, m) for m in args.modes if m != "threads"]
        for n, mode in plan:
            row = run_child(
                CHILD, [str(root), str(n), str(args.size), mode, str(ckpt)], f"{n} fields / {mode}"
            )
            runs.append(row)
            print(
                f"{n:4d} fields  {mode:9s} {row['megapixels']:7.1f} MPix  {row['seconds']:7.1f} s  "
                f"{row['megapixels_per_second']:6.2f} MPix/s  peak RSS driver "
                f"{row['peak_rss_mb_driver']:6.0f} MB  largest worker "
                f"{row['peak_rss_mb_largest_worker']:6.0f} MB"
                + (
                    f"  engine {row['engine_megapixels_per_second']:6.2f} MPix/s  e2e/engine "
                    f"{row['e2e_over_engine']:.2f} (warm {row['warm_e2e_over_engine']:.2f})"
                    if "engine_seconds" in row
                    else ""
                ),
                flush=True,
            )
    by_mode = {r["mode"]: r for r in runs if r["fields"] == args.worker_fields}
    speedup = None
    if "workers1" in by_mode and "workers2" in by_mode:
        speedup = (
            by_mode["workers2"]["megapixels_per_second"]
            / by_mode["workers1"]["megapixels_per_second"]
        )
        print(f"2 workers over 1: {speedup:.2f}x")
    result = {
        "benchmark": "omeloc.predict plate throughput",
        "size": args.size,
        "runs": runs,
        "speedup_2_over_1_workers": speedup,
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
