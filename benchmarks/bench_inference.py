"""Benchmark omeloc's tiled inference against MONAI's ``sliding_window_inference`` in fp32.

Same process, same torch threads, same network, same precision, runs alternating: MONAI's
``BasicUNet(spatial_dims=2, features=(32, 64, 128, 256, 512, 32))`` (instance norm after every
convolution; seeded random weights, eval mode) on a smooth cell-like field of ``--size``² px,
gaussian blending, fp32, on the CPU:

- ``monai``: ``sliding_window_inference(roi 256², overlap 0.25 (64 px), sw_batch_size 4,
  mode="gaussian")`` on the module as MONAI users run it;
- ``omeloc_monai_tiles``: ``predict_array(tile=256, overlap=64, blend="gaussian",
  batch_size=4)``: MONAI's tile geometry (the same 11 x 11 tiles on 2048²);
- ``omeloc_default``: ``predict_array(blend="gaussian")`` with omeloc's default tiles
  (256 px, 32 px overlap, batch "auto" = 4 on a CPU).

Both sides get the field in memory and return it in memory (plate predict runs whole fields up
to 4096² as one region the same way).  Each kind first runs once on a 256 x 1024 strip
(warm-up: oneDNN primitives, model preparation), then ``--rounds`` rounds time every kind once,
the order reversed every other round; the figures are MONAI's seconds over omeloc's (per round
and the median), wall clock and process CPU time, with the load average beside each run.
``--profile`` adds torch.profiler's operator table of one batch of 4 tiles for the module as
MONAI runs it and as omeloc prepares it.  Results: ``benchmarks/results/inference.json``.

Run: ``python benchmarks/bench_inference.py --size 2048`` (needs ``pip install -e '.[bench]'``);
``--size 1024`` for a quicker look; ``--seams-only`` for the seam step (seconds, saved to
``benchmarks/results/seams.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
FEATURES = (32, 64, 128, 256, 512, 32)
KINDS = ("monai", "omeloc_monai_tiles", "omeloc_default")


def make_image(size: int, seed: int = 0) -> np.ndarray:
    """A smooth, cell-like float32 image in [0, 1] of shape (1, size, size)."""
    rng = np.random.default_rng(seed)
    from scipy.ndimage import gaussian_filter

    img = gaussian_filter(rng.random((size, size), dtype=np.float32), 6)
    img = (img - img.min()) / (img.max() - img.min() + 1e-9)
    img += 0.05 * rng.standard_normal((size, size)).astype(np.float32)
    return img[None].astype(np.float32)


def _autocast(precision: str):
    import contextlib

    import torch

    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast("cpu", dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def seam_net():
    """Three 3x3 convolutions (receptive-field radius 3 px), random weights (seed 0)."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.Tanh(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.Tanh(),
        nn.Conv2d(8, 1, 3, padding=1),
    ).eval()


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
    res: dict = {
        "size": size,
        "tile": tile,
        "overlap": overlap,
        "output_std": std,
        "bf16_vs_fp32_whole_max_over_std": float(np.abs(whole["bf16"] - whole["fp32"]).max() / std),
    }
    for prec, ref in whole.items():
        for blend in ("gaussian", "cosine"):
            for label, trim in (("before_trim0", 0), ("after_default_trim", None)):
                tiled = predict_array(
                    model,
                    image,
                    tile=tile,
                    overlap=overlap,
                    blend=blend,
                    trim=trim,
                    device="cpu",
                    precision=prec,
                    out_channels=1,
                ).compute()[0]
                res[f"{prec}_{blend}_{label}_max_over_std"] = float(np.abs(tiled - ref).max() / std)
    return res


def print_seams(res: dict) -> None:
    print(
        f"seams: {res['size']}² image, tile {res['tile']}, overlap {res['overlap']}, "
        f"max |tiled - whole| / std(output)"
    )
    print(f"{'precision':>9} {'blend':>9} {'trim 0 (before)':>16} {'default trim':>14}")
    for prec in ("fp32", "bf16"):
        for blend in ("gaussian", "cosine"):
            print(
                f"{prec:>9} {blend:>9} {res[f'{prec}_{blend}_before_trim0_max_over_std']:>16.2e} "
                f"{res[f'{prec}_{blend}_after_default_trim_max_over_std']:>14.2e}"
            )
    print(f"bf16 vs fp32, whole image: {res['bf16_vs_fp32_whole_max_over_std']:.2e}", flush=True)


def basic_unet():
    """MONAI's BasicUNet of the issue (features 32...512), seeded random weights, eval mode."""
    import torch
    from monai.networks.nets import BasicUNet

    torch.manual_seed(0)
    return BasicUNet(spatial_dims=2, in_channels=1, out_channels=1, features=FEATURES).eval()


def runners(net):
    """One function per kind: field (1, H, W) float32 → prediction (1, H, W) float32."""
    import torch
    from monai.inferers import sliding_window_inference

    from omeloc import predict_array

    def monai(field: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            x = torch.from_numpy(field[None])
            y = sliding_window_inference(
                x,
                roi_size=(256, 256),
                sw_batch_size=4,
                predictor=net,
                overlap=0.25,
                mode="gaussian",
            )
        return y[0].numpy()

    def omeloc(**tiles):
        def run(field: np.ndarray) -> np.ndarray:
            return predict_array(
                net,
                field,
                blend="gaussian",
                device="cpu",
                precision="fp32",
                out_channels=1,
                **tiles,
            ).compute()

        return run

    return {
        "monai": monai,
        "omeloc_monai_tiles": omeloc(tile=256, overlap=64, batch_size=4),
        "omeloc_default": omeloc(),
    }


def timed(fn, field: np.ndarray) -> tuple[dict, np.ndarray]:
    load = os.getloadavg()[0]
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn(field)
    return {
        "wall_s": time.perf_counter() - w0,
        "cpu_s": time.process_time() - c0,
        "load_before": load,
        "load_after": os.getloadavg()[0],
    }, out


def profile_ops(net, rows: int = 10) -> dict:
    """Operator table of one batch of 4 tiles of 256²: the module as MONAI runs it, and as omeloc
    prepares it (:func:`omeloc.engine.cache.prepare_model`, channels_last input)."""
    import copy

    import torch
    from torch.profiler import ProfilerActivity, profile

    from omeloc.engine.cache import prepare_model

    x = torch.rand(4, 1, 256, 256)
    prepared = prepare_model(copy.deepcopy(net), torch.device("cpu"))
    out = {}
    for name, model, inp in (
        ("monai_module", net, x),
        ("omeloc_prepared", prepared, x.contiguous(memory_format=torch.channels_last)),
    ):
        with torch.inference_mode():
            model(inp)
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                model(inp)
        table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)
        print(name, table, sep="\n", flush=True)
        out[name] = {
            e.key: e.self_cpu_time_total / 1e6
            for e in prof.key_averages()
            if e.self_cpu_time_total > 0.01 * prof.key_averages().self_cpu_time_total
        }
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=2048)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--profile", action="store_true")
    p.add_argument("--out", default=str(HERE / "results" / "inference.json"))
    p.add_argument(
        "--seams-only",
        action="store_true",
        help="only the seam comparison (seconds), saved to results/seams.json",
    )
    args = p.parse_args(argv)
    if args.seams_only:
        res = run_seams()
        print_seams(res)
        (HERE / "results" / "seams.json").write_text(json.dumps(res, indent=2))
        return
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    net = basic_unet()
    run = runners(net)
    results: dict = {
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "loadavg_start": os.getloadavg(),
        },
        "model": {
            "name": f"monai BasicUNet features={FEATURES}",
            "params": sum(q.numel() for q in net.parameters()),
        },
        "size": args.size,
        "precision": "fp32",
        "blend": "gaussian",
        "runs": [],
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
    }
    if args.profile:
        results["profile_self_cpu_s"] = profile_ops(net)
    warm = make_image(1024, seed=1)[:, :256, :]  # 5 tiles: a batch of 4 and one of 1
    for kind in KINDS:
        t, _ = timed(run[kind], warm)
        print(f"warm-up {kind}: {t['wall_s']:.1f} s", flush=True)
    field = make_image(args.size)
    outputs = {}
    for r in range(args.rounds):
        order = KINDS if r % 2 == 0 else KINDS[::-1]
        for kind in order:
            t, outputs[kind] = timed(run[kind], field)
            results["runs"].append({"round": r, "kind": kind, **t})
            print(
                f"round {r} {kind}: wall {t['wall_s']:.1f} s, cpu {t['cpu_s']:.1f} s, "
                f"load {t['load_before']:.1f} -> {t['load_after']:.1f}",
                flush=True,
            )
    results["ratios"] = ratios(results["runs"], args.rounds)
    std = float(outputs["monai"].std())
    results["agreement_max_abs_over_std"] = {
        k: float(np.abs(outputs[k] - outputs["monai"]).max() / std) for k in KINDS[1:]
    }
    results["machine"]["loadavg_end"] = os.getloadavg()
    results["targets"] = {"omeloc_monai_tiles": 1.2, "omeloc_default": 1.5}
    print(json.dumps({k: results[k] for k in ("ratios", "agreement_max_abs_over_std")}, indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))


def ratios(runs: list[dict], rounds: int) -> dict:
    """MONAI's seconds over omeloc's, per round and their median, for wall and CPU time."""
    out: dict = {}
    for kind in KINDS[1:]:
        for clock in ("wall_s", "cpu_s"):
            per = []
            for r in range(rounds):
                t = {x["kind"]: x[clock] for x in runs if x["round"] == r}
                per.append(t["monai"] / t[kind])
            out[f"{kind}_{clock}"] = {"per_round": per, "median": statistics.median(per)}
    return out


if __name__ == "__main__":
    main()
