"""Benchmark omeloc's tiled inference against MONAI's sliding window and the bare forward pass.

For each image size (default 1024, 2048, 4096) and the default U-Net (7.76 M params), at the
same precision, it measures

(a) ``omeloc``: zarr array → :func:`omeloc.predict_array` → zarr array, end to end;
(b) ``monai``: MONAI's ``sliding_window_inference`` (Gaussian, roi 256², overlap 0.25,
    sw_batch_size 4) on the image in memory;
(c) ``forward``: the model's forward pass alone on the minimal set of tiles (the image cut
    into non-overlapping tiles of the block size omeloc uses, in memory).

Every measurement runs in a fresh subprocess (peak memory = ``ru_maxrss`` of that process,
which includes ~0.3-0.4 GB for torch itself).  Each subprocess warms up on the same shapes
once, then times ``--reps`` runs and keeps the best; the driver repeats subprocesses
``--repeats`` times and keeps the best.  A quality step measures bf16 vs fp32 and tiled vs
whole-image agreement; a ``seams`` step compares tiled and whole-image output of a 3-layer conv
net (receptive field 3 px) with and without the trimmed tile margins, in fp32 and bf16.  Results
are printed and saved to ``benchmarks/results/inference.json``.

``--memory-sizes`` (default 6144) adds sizes where only omeloc's peak memory is measured.

Run: ``python benchmarks/bench_inference.py`` (about 12 minutes on 2 CPU cores);
``--sizes 1024 2048 --repeats 1`` for a quick look; ``--seams-only`` for the seam step alone
(seconds; saved to ``benchmarks/results/seams.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def make_image(size: int, seed: int = 0) -> np.ndarray:
    """A smooth, cell-like float32 image in [0, 1] of shape (1, size, size)."""
    rng = np.random.default_rng(seed)
    from scipy.ndimage import gaussian_filter

    img = gaussian_filter(rng.random((size, size), dtype=np.float32), 6)
    img = (img - img.min()) / (img.max() - img.min() + 1e-9)
    img += 0.05 * rng.standard_normal((size, size)).astype(np.float32)
    return img[None].astype(np.float32)


def load_model(weights: str):
    import torch

    from omeloc.learn.models import UNet

    model = UNet()
    model.load_state_dict(torch.load(weights, weights_only=True))
    return model.eval()


def _autocast(precision: str):
    import contextlib

    import torch

    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast("cpu", dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


# --------------------------------------------------------------------------------------
# workers (each runs in its own process)
# --------------------------------------------------------------------------------------

def run_omeloc(args) -> float:
    import dask.array as da
    import zarr

    from omeloc.engine.inference import predict_array

    model = load_model(args.weights)
    out_path = Path(args.workdir) / f"out-{args.size}.zarr"

    def once() -> float:
        t0 = time.perf_counter()
        src = da.from_zarr(zarr.open_array(args.input, mode="r"))
        pred = predict_array(model, src, tile=args.tile, overlap=args.overlap, blend="cosine",
                             batch_size=args.batch_size, device="cpu", precision=args.precision,
                             out_channels=1)
        dst = zarr.create_array(str(out_path), shape=pred.shape, chunks=src.chunksize,
                                dtype="float32", overwrite=True)
        da.store(pred, dst, lock=False, compute=True)
        return time.perf_counter() - t0

    once()  # warm-up: model load, oneDNN primitives for these shapes
    return min(once() for _ in range(args.reps))


def run_monai(args) -> float:
    import torch
    import zarr
    from monai.inferers import sliding_window_inference

    model = load_model(args.weights).to(memory_format=torch.channels_last)
    if args.worker == "monai_folded":  # MONAI given omeloc's prepared (BatchNorm-folded) model
        from omeloc.engine.inference import prepare_model

        model = prepare_model(model, torch.device("cpu"))
    image = torch.from_numpy(np.asarray(zarr.open_array(args.input, mode="r")[:]))[None]

    def once() -> float:
        t0 = time.perf_counter()
        with torch.inference_mode(), _autocast(args.precision):
            out = sliding_window_inference(image, roi_size=(256, 256), sw_batch_size=4,
                                           predictor=model, overlap=0.25, mode="gaussian")
        out.float().numpy()
        return time.perf_counter() - t0

    once()
    return min(once() for _ in range(args.reps))


def run_forward(args) -> float:
    import torch
    import zarr

    from omeloc.engine.inference import prepare_model

    # the same prepared model omeloc runs (eval, BatchNorm folded, channels_last)
    model = prepare_model(load_model(args.weights), torch.device("cpu"))
    image = np.asarray(zarr.open_array(args.input, mode="r")[:])
    b = args.block
    tiles = [torch.from_numpy(np.ascontiguousarray(image[None, :, y:y + b, x:x + b]))
             .contiguous(memory_format=torch.channels_last)
             for y in range(0, args.size, b) for x in range(0, args.size, b)]

    def once() -> float:
        t0 = time.perf_counter()
        with torch.inference_mode(), _autocast(args.precision):
            for t in tiles:
                model(t).float()
        return time.perf_counter() - t0

    once()
    return min(once() for _ in range(args.reps))


def run_quality(args) -> dict:
    """bf16 vs fp32 on the whole image, and omeloc tiled vs whole image (same precision)."""
    import dask.array as da
    import torch

    from omeloc.engine.inference import predict_array

    model = load_model(args.weights).to(memory_format=torch.channels_last)
    image = make_image(args.size, seed=1)
    x = torch.from_numpy(image[None]).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        fp32 = model(x)[0].numpy()
        with _autocast("bf16"):
            bf16 = model(x)[0].float().numpy()
    std = float(fp32.std())
    res = {
        "size": args.size,
        "output_std_fp32": std,
        "bf16_vs_fp32_max_abs_over_std": float(np.abs(bf16 - fp32).max() / std),
        "bf16_vs_fp32_rmse_over_std": float(np.sqrt(((bf16 - fp32) ** 2).mean()) / std),
        "bf16_vs_fp32_pearson_r": float(np.corrcoef(bf16.ravel(), fp32.ravel())[0, 1]),
    }
    from monai.inferers import sliding_window_inference

    with torch.inference_mode(), _autocast("bf16"):
        mon = sliding_window_inference(x, roi_size=(256, 256), sw_batch_size=4, predictor=model,
                                       overlap=0.25, mode="gaussian")[0].float().numpy()
    res["monai_bf16_vs_whole_bf16_max_abs_over_std"] = float(np.abs(mon - bf16).max() / std)
    res["monai_bf16_vs_whole_bf16_rmse_over_std"] = float(np.sqrt(((mon - bf16) ** 2).mean()) / std)
    block = args.block
    for overlap in (16, 32, 64):
        src = da.from_array(image, chunks=(1, block, block))
        for prec, ref in (("fp32", fp32), ("bf16", bf16)):
            tiled = predict_array(model, src, tile=block + 2 * overlap, overlap=overlap,
                                  device="cpu", precision=prec, out_channels=1).compute()[0]
            res[f"tiled_vs_whole_{prec}_overlap{overlap}_max_abs_over_std"] = float(
                np.abs(tiled - ref).max() / std)
            res[f"tiled_vs_whole_{prec}_overlap{overlap}_rmse_over_std"] = float(
                np.sqrt(((tiled - ref) ** 2).mean()) / std)
    return res


def seam_net():
    """Three 3x3 convolutions (receptive-field radius 3 px), random weights (seed 0)."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.Tanh(), nn.Conv2d(8, 8, 3, padding=1),
                         nn.Tanh(), nn.Conv2d(8, 1, 3, padding=1)).eval()


def run_seams(size: int = 300, tile: int = 128, overlap: int = 24) -> dict:
    """Tiled vs whole-image output of :func:`seam_net` (issue 16's seam test), a few seconds.

    For fp32 and bf16 (the whole image at the same precision is the reference) and the
    gaussian and cosine blends: max abs error over the image, as a ratio of the output's std,
    with the old weights (``trim=0``) and the default trimmed margins (``overlap // 4``).
    """
    import torch

    from omeloc.engine.inference import predict_array

    model = seam_net()
    image = make_image(size, seed=3)
    x = torch.from_numpy(image[None])
    with torch.inference_mode():
        whole = {"fp32": model(x)[0].numpy()}
        with _autocast("bf16"):
            whole["bf16"] = model(x)[0].float().numpy()
    std = float(whole["fp32"].std())
    res: dict = {"size": size, "tile": tile, "overlap": overlap, "output_std": std,
                 "bf16_vs_fp32_whole_max_over_std": float(np.abs(whole["bf16"] - whole["fp32"]).max() / std)}
    for prec, ref in whole.items():
        for blend in ("gaussian", "cosine"):
            for label, trim in (("before_trim0", 0), ("after_default_trim", None)):
                tiled = predict_array(model, image, tile=tile, overlap=overlap, blend=blend, trim=trim,
                                      device="cpu", precision=prec, out_channels=1).compute()[0]
                res[f"{prec}_{blend}_{label}_max_over_std"] = float(np.abs(tiled - ref).max() / std)
    return res


def print_seams(res: dict) -> None:
    print(f"seams: {res['size']}² image, tile {res['tile']}, overlap {res['overlap']}, "
          f"max |tiled - whole| / std(output)")
    print(f"{'precision':>9} {'blend':>9} {'trim 0 (before)':>16} {'default trim':>14}")
    for prec in ("fp32", "bf16"):
        for blend in ("gaussian", "cosine"):
            print(f"{prec:>9} {blend:>9} {res[f'{prec}_{blend}_before_trim0_max_over_std']:>16.2e} "
                  f"{res[f'{prec}_{blend}_after_default_trim_max_over_std']:>14.2e}")
    print(f"bf16 vs fp32, whole image: {res['bf16_vs_fp32_whole_max_over_std']:.2e}", flush=True)


def worker(args) -> None:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    fn = {"omeloc": run_omeloc, "monai": run_monai, "monai_folded": run_monai, "forward": run_forward,
          "quality": run_quality, "seams": lambda a: run_seams()}[args.worker]
    result = fn(args)
    out = result if isinstance(result, dict) else {"seconds": result}
    out["peak_rss_mb"] = _maxrss_mb()
    print("RESULT " + json.dumps(out), flush=True)


def calibrated_unet():
    """The default UNet(), random weights, BatchNorm statistics calibrated on the test image.

    Plain random init leaves the output almost constant (std ~4e-4 around the bias), which
    makes precision comparisons meaningless; calibrated running statistics give unit-scale
    activations, as in a trained network.
    """
    import torch

    from omeloc.learn.models import UNet

    model = UNet()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # cumulative average
    model.train()
    img = make_image(512, seed=2)
    with torch.no_grad():
        for y in (0, 256):
            for x in (0, 256):
                model(torch.from_numpy(img[None, :, y:y + 256, x:x + 256]))
    return model.eval()


# --------------------------------------------------------------------------------------
# driver
# --------------------------------------------------------------------------------------

def spawn(kind: str, size: int, common: list[str], env: dict) -> dict:
    cmd = [sys.executable, __file__, "--worker", kind, "--size", str(size), *common]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"{kind} {size} failed:\n{proc.stdout}\n{proc.stderr}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096])
    p.add_argument("--precision", default="bf16", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--block", type=int, default=1024, help="zarr chunk size (y, x) of input/output")
    p.add_argument("--overlap", type=int, default=32, help="omeloc halo/overlap in pixels")
    p.add_argument("--tile", type=int, default=0, help="omeloc tile (default block + 2*overlap)")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--repeats", type=int, default=2, help="fresh subprocesses per measurement")
    p.add_argument("--reps", type=int, default=1, help="timed runs inside a subprocess")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    p.add_argument("--out", default=str(HERE / "results" / "inference.json"))
    p.add_argument("--skip-quality", action="store_true")
    p.add_argument("--seams-only", action="store_true",
                   help="only the seam comparison (seconds), saved to results/seams.json")
    p.add_argument("--memory-sizes", type=int, nargs="*", default=[6144],
                   help="extra sizes where only omeloc's peak memory is measured (one run)")
    # worker-only
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, help=argparse.SUPPRESS)
    p.add_argument("--input", help=argparse.SUPPRESS)
    p.add_argument("--weights", help=argparse.SUPPRESS)
    p.add_argument("--workdir", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if not args.tile:
        args.tile = args.block + 2 * args.overlap
    if args.worker:
        worker(args)
        return
    if args.seams_only:
        res = run_seams()
        print_seams(res)
        (HERE / "results" / "seams.json").write_text(json.dumps(res, indent=2))
        return

    import torch
    import zarr

    env = dict(os.environ)
    results: dict = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "torch": torch.__version__, "torch_threads": args.threads or torch.get_num_threads(),
                    "loadavg_start": os.getloadavg(),
                    "ld_preload": env.get("LD_PRELOAD", "")},
        "settings": {"precision": args.precision, "block": args.block, "tile": args.tile,
                     "overlap": args.overlap, "batch_size": args.batch_size, "blend": "cosine",
                     "monai": {"roi": 256, "overlap": 0.25, "mode": "gaussian", "sw_batch_size": 4},
                     "repeats": args.repeats, "reps": args.reps, "channels_last": True},
        "sizes": {},
    }
    with tempfile.TemporaryDirectory(prefix="omeloc-bench-") as tmp:
        torch.manual_seed(0)
        model = calibrated_unet()
        results["model"] = {"name": "UNet()", "params": sum(p.numel() for p in model.parameters())}
        weights = str(Path(tmp) / "unet.pt")
        torch.save(model.state_dict(), weights)
        common = ["--weights", weights, "--workdir", tmp, "--precision", args.precision,
                  "--block", str(args.block), "--overlap", str(args.overlap), "--tile", str(args.tile),
                  "--batch-size", str(args.batch_size), "--reps", str(args.reps),
                  "--threads", str(args.threads)]
        if not args.skip_quality:
            # 512-pixel blocks on a 1024 image: seams cross the middle both ways
            q = spawn("quality", 1024, [*common, "--block", "512"], env)
            results["quality"] = q
            print("quality", json.dumps(q, indent=1), flush=True)
            results["seams"] = spawn("seams", 300, common, env)
            print_seams(results["seams"])
        for size in args.sizes:
            path = str(Path(tmp) / f"in-{size}.zarr")
            arr = zarr.create_array(path, shape=(1, size, size), chunks=(1, args.block, args.block),
                                    dtype="float32", overwrite=True)
            arr[:] = make_image(size)
            entry: dict = {"megapixels": size * size / 1e6}
            kinds = ("omeloc", "monai", "forward") + (("monai_folded",) if size == 2048 else ())
            for kind in kinds:
                runs = [spawn(kind, size, [*common, "--input", path], env) for _ in range(args.repeats)]
                best = min(runs, key=lambda r: r["seconds"])
                entry[kind] = {"seconds": best["seconds"],
                               "mpix_per_s": entry["megapixels"] / best["seconds"],
                               "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
                               "all_seconds": [r["seconds"] for r in runs]}
                print(size, kind, json.dumps(entry[kind]), flush=True)
            entry["ratio_a_over_b"] = entry["omeloc"]["mpix_per_s"] / entry["monai"]["mpix_per_s"]
            entry["ratio_c_over_a"] = entry["forward"]["mpix_per_s"] / entry["omeloc"]["mpix_per_s"]
            entry["loadavg_after"] = os.getloadavg()
            results["sizes"][str(size)] = entry
            print(size, "a/b = %.2f  c/a = %.3f" % (entry["ratio_a_over_b"], entry["ratio_c_over_a"]),
                  flush=True)
        results["memory_only"] = {}
        for size in args.memory_sizes:
            path = str(Path(tmp) / f"in-{size}.zarr")
            arr = zarr.create_array(path, shape=(1, size, size), chunks=(1, args.block, args.block),
                                    dtype="float32", overwrite=True)
            arr[:] = make_image(size)
            r = spawn("omeloc", size, [*common, "--input", path], env)
            results["memory_only"][str(size)] = {"omeloc_peak_rss_mb": r["peak_rss_mb"],
                                                 "omeloc_seconds": r["seconds"]}
            print(size, "omeloc", json.dumps(r), flush=True)
            Path(path).exists() and __import__("shutil").rmtree(path)
    results["machine"]["loadavg_end"] = os.getloadavg()
    results["targets"] = {"a_over_b_min": 1.5, "c_over_a_max": 1.15}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
