"""Training a U-Net or pix2pix on crops read straight from OME-Zarr plates.

A plain PyTorch loop: :class:`~omeloc.learn.sampling.CropSampler` draws batch ``i`` from the
training wells (prefetched on a thread), the model takes a step (mixed precision on GPU),
every ``val_every`` steps the fixed validation crops of the held-out wells are scored, and
``DIR/last.pt`` is saved so a killed run continues with ``resume=True`` exactly where it
stopped (batch ``i`` depends only on ``(seed, i)``).  The result is a checkpoint folder
(:mod:`omeloc.learn.checkpoint`) that :func:`omeloc.predict` takes.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from omeloc import __version__
from omeloc.learn.checkpoint import (META_FILE, STATE_FILE, WEIGHTS_FILE, Checkpoint, _atomic_torch_save, load_state,
                         save_checkpoint)
from omeloc.errors import InputError
from omeloc.engine.inference import resolve_device
from omeloc.testing.faults import fault_point
from omeloc.analysis.metrics import pearson_r
from omeloc.learn.models import PatchGAN, UNet
from .models.pix2pix import BETAS, LAMBDA_L1, LR, discriminator_loss, generator_loss
from omeloc.ngff.plate import Image, Plate, open_plate
from omeloc.learn.sampling import CropSampler, channel_statistics

__all__ = ["train", "TrainResult", "MODELS"]

logger = logging.getLogger(__name__)

MODELS = ("unet", "pix2pix")
LOG_FILE = "train_log.csv"
CURVES_FILE = "curves.png"
_LOG_FIELDS = ["step", "loss", "l1", "gan", "d_loss", "val_l1", "val_pearson_r", "seconds"]


@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes
    ----------
    checkpoint
        The checkpoint folder (what ``omeloc predict --model`` takes).
    metrics
        Validation metrics of the final model (``val_pearson_r``, ``baseline_pearson_r``,
        ``val_l1``) and training figures (``seconds``, ``steps_per_second``, ...).
    steps
        Steps trained in total (including those before a resume).
    log, curves
        The CSV log and the PNG of the learning curves.
    """

    checkpoint: Path
    metrics: dict[str, Any]
    steps: int
    seconds: float
    log: Path
    curves: Path | None
    history: list[dict[str, Any]] = field(default_factory=list, repr=False)

    def summary(self) -> str:
        m = self.metrics
        return (f"trained {self.steps} steps in {self.seconds:.1f} s → {self.checkpoint}\n"
                f"  validation Pearson r {m.get('val_pearson_r', float('nan')):.3f} "
                f"(no-learning baseline {m.get('baseline_pearson_r', float('nan')):.3f}), "
                f"L1 {m.get('val_l1', float('nan')):.4f}\n"
                f"  log {self.log}" + (f", curves {self.curves}" if self.curves else ""))


def _as_list(x: str | Sequence[str]) -> list[str]:
    return [x] if isinstance(x, str) else list(x)


def _open_all(plates: Any) -> list[Plate]:
    items = plates if isinstance(plates, (list, tuple)) else [plates]
    if not items:
        raise InputError("Expected at least one plate to train on. Got none.")
    return [p if isinstance(p, Plate) else open_plate(p) for p in items]


def _split(plates: list[Plate], val_wells: Sequence[str] | None) -> tuple[list[Image], list[Image], list[str], list[str]]:
    """Training and validation images; validation is whole wells (never a crop of a training well)."""
    singles = [img for p in plates if not p.is_plate for img in p.images]
    if singles:  # single images (not plates): no wells to hold out
        if val_wells:
            raise InputError("--val-wells needs plates; single images have no wells. Drop --val-wells, or "
                             "train on a plate.")
        logger.warning("training on single image(s): validation crops come from the training images")
        imgs = singles + [img for p in plates if p.is_plate for img in p.images]
        return imgs, imgs, [i.name for i in imgs], []
    names = [(p, w) for p in plates for w in p.wells.values()]
    if val_wells is None:
        if len(names) >= 2:
            chosen = {id(w) for _, w in names[3::4] or names[-1:]}
        else:
            chosen = set()
    else:
        chosen = set()
        for v in val_wells:
            hits = [w for p, w in names if v in (w.name, w.path)]
            if not hits:
                all_names = ", ".join(w.name for _, w in names)
                raise InputError(f"No well {v!r} to hold out for validation. Wells: {all_names}.")
            chosen.update(id(w) for w in hits)
    train_imgs = [img for _, w in names if id(w) not in chosen for img in w.images]
    val_imgs = [img for _, w in names if id(w) in chosen for img in w.images]
    if not train_imgs:
        raise InputError(f"Expected some wells left for training. Got all {len(names)} wells held out: "
                         f"pass fewer --val-wells.")
    train_names = [w.name for _, w in names if id(w) not in chosen]
    val_names = [w.name for _, w in names if id(w) in chosen]
    if not val_imgs:
        if plates[0].is_plate:
            logger.warning("only one well: validation crops come from the training well")
        val_imgs = train_imgs
    return train_imgs, val_imgs, train_names, val_names


def _tile_advice(depth: int, multiple: int) -> tuple[int, int]:
    overlap = max(16, min(64, 4 * 2 ** depth))
    tile = 512
    return tile - tile % multiple, overlap


def _autocast(device: torch.device, precision: str):
    if device.type == "cuda" and precision in ("bf16", "fp16"):
        return torch.autocast("cuda", dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
    return torch.autocast("cpu", enabled=False)


def _score(net: torch.nn.Module, x: np.ndarray, y: np.ndarray, device: torch.device, precision: str,
           batch_size: int) -> tuple[float, float]:
    """(L1, pooled Pearson r) of ``net`` on crops ``x`` → ``y``."""
    was_training = net.training
    net.eval()
    preds = []
    with torch.inference_mode(), _autocast(device, precision):
        for i in range(0, len(x), batch_size):
            preds.append(net(torch.from_numpy(x[i:i + batch_size]).to(device)).float().cpu().numpy())
    net.train(was_training)
    pred = np.concatenate(preds)
    return float(np.abs(pred - y).mean()), pearson_r(pred, y)


def _write_curves(rows: list[dict[str, Any]], path: Path, title: str) -> Path | None:
    try:
        from omeloc.analysis.figures import _new_figure, _save
    except ImportError:  # pragma: no cover - matplotlib is a dependency
        return None
    fig = _new_figure(8, 3.2, 110)
    ax1, ax2 = fig.subplots(1, 2)
    steps = [r["step"] for r in rows]
    ax1.plot(steps, [r["l1"] for r in rows], lw=1, label="train L1")
    val = [(r["step"], r["val_l1"], r["val_pearson_r"]) for r in rows if r.get("val_l1") not in (None, "")]
    if val:
        ax1.plot([v[0] for v in val], [v[1] for v in val], "o-", ms=3, label="validation L1")
        ax2.plot([v[0] for v in val], [v[2] for v in val], "o-", ms=3, color="C2")
    ax1.set_xlabel("step")
    ax1.set_ylabel("L1 (normalized units)")
    ax1.legend(frameon=False)
    ax2.set_xlabel("step")
    ax2.set_ylabel("validation Pearson r")
    ax2.set_ylim(-0.1, 1.0)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path, 110)[0]


def train(
    plate: Any,
    source: str | Sequence[str],
    target: str | Sequence[str],
    *,
    model: str = "unet",
    out: str | Path = "omeloc-model",
    steps: int = 2000,
    val_wells: Sequence[str] | None = None,
    crop: int = 256,
    batch_size: int = 8,
    level: int = 0,
    lr: float | None = None,
    seed: int = 0,
    device: str = "auto",
    precision: str = "auto",
    depth: int = 4,
    base_channels: int = 32,
    norm: str = "batch",
    lambda_l1: float = LAMBDA_L1,
    loss: str = "mse",
    schedule: str = "cosine",
    val_every: int | None = None,
    val_crops: int = 16,
    min_foreground: float = 0.02,
    augment: bool = True,
    resume: bool = False,
    overwrite: bool = False,
    prefetch: int = 2,
    progress: bool = True,
) -> TrainResult:
    """Train a model that predicts ``target`` from ``source`` and save a checkpoint folder.

    Parameters
    ----------
    plate
        A plate path/URL or :class:`~omeloc.ngff.plate.Plate`, or a list of them (crops come from all).
    source, target
        Channel label(s): what the model reads and what it predicts.
    model : {"unet", "pix2pix"}
        A U-Net trained with L1, or pix2pix (U-Net generator + 70×70 PatchGAN, L1 + λ·cGAN).
    out
        Checkpoint folder to write (``weights.pt``, ``checkpoint.json``, ``last.pt``,
        ``train_log.csv``, ``curves.png``).
    steps
        Optimizer steps in total (with ``resume``, the run continues up to this number).
    val_wells
        Wells held out for validation (names like ``B3``).  Default: every fourth well.
    crop, batch_size, level
        Crop side (a multiple of ``2**depth``), crops per step, pyramid level read.
    lr
        Adam learning rate; default 3e-3 for the U-Net, 2e-4 (β1 = 0.5) for pix2pix.
    seed
        Same seed, same data, same device → same weights.
    device, precision
        ``"auto"`` uses CUDA (then MPS, then CPU); mixed precision (bf16/fp16) on CUDA only.
    depth, base_channels, norm
        U-Net shape (defaults: 4, 32, batch norm: 7.8 M parameters).
    lambda_l1
        Weight of the L1 term for pix2pix (100 in Isola et al.).
    loss : {"l1", "mse"}
        Pixel loss of the U-Net (default mse: on synthetic actin → WAVE2 it reached held-out r 0.84
        where L1 reached 0.76 in the same 300 steps). pix2pix always uses L1, as in the paper.
    schedule : {"cosine", "constant"}
        Learning rate over the run: a 5 % linear warm-up then cosine decay to 5 % of ``lr``
        (a function of the step alone, so resumed runs follow it exactly), or constant.
    val_every, val_crops
        Validation interval (default: ten times per run) and number of fixed validation crops.
    min_foreground
        Reject crops whose source has less than this fraction of foreground (0 disables).
    augment
        Random flips and 90° rotations.
    resume
        Continue from ``out/last.pt``.
    overwrite
        Replace an existing checkpoint in ``out``.
    prefetch
        Batches read ahead on a background thread (0: read in the loop).
    progress
        Show a progress bar with losses and validation metrics.

    Returns
    -------
    TrainResult

    Raises
    ------
    InputError
        Unknown model, source equals target, crop too large for the images or not a multiple
        of ``2**depth``, all wells held out, ``out`` holds a checkpoint and neither
        ``resume`` nor ``overwrite`` is set.
    ChannelNotFoundError
        A channel is not in the plate.
    """
    t_start = time.perf_counter()
    sources, targets = _as_list(source), _as_list(target)
    if model not in MODELS:
        raise InputError(f"Unknown model {model!r}. Use one of {', '.join(MODELS)}.")
    if not sources or not targets:
        raise InputError("Expected at least one source and one target channel.")
    same = sorted(set(sources) & set(targets))
    if same:
        raise InputError(f"Channel {same[0]!r} is both source and target; a model must predict a different "
                         f"channel than it reads. Pick another --target.")
    if loss not in ("l1", "mse"):
        raise InputError(f"Unknown loss {loss!r}. Use l1 or mse.")
    if schedule not in ("cosine", "constant"):
        raise InputError(f"Unknown learning-rate schedule {schedule!r}. Use cosine or constant.")
    if steps < 1 or batch_size < 1 or val_crops < 1:
        raise InputError(f"Expected steps, batch size and validation crops >= 1. Got {steps}, {batch_size}, "
                         f"{val_crops} instead.")
    multiple = 2 ** depth
    if crop % multiple:
        lo = max(multiple, crop - crop % multiple)
        raise InputError(f"Expected a crop that is a multiple of {multiple} (U-Net depth {depth}). Got {crop} "
                         f"instead: pass --crop {lo} or {lo + multiple}.")
    out = Path(out).expanduser().resolve()
    has_ckpt = (out / META_FILE).exists() or (out / STATE_FILE).exists()
    if has_ckpt and not (resume or overwrite):
        raise InputError(f"{out} already holds a checkpoint. Pass resume=True (--resume) to continue it or "
                         f"overwrite=True (--overwrite) to replace it.")
    if resume and not (out / STATE_FILE).exists():
        raise InputError(f"Nothing to resume in {out}: no {STATE_FILE}. Drop --resume to start a new run.")

    plates = _open_all(plate)
    for p in plates:  # every channel in every plate, checked before anything runs
        for ch in sources + targets:
            p.images[0].channel_index(ch)
    train_imgs, val_imgs, train_names, val_names = _split(plates, val_wells)
    dev = resolve_device(device)
    if precision not in ("auto", "fp32", "bf16", "fp16"):
        raise InputError(f"Unknown precision {precision!r}. Use auto, fp32, bf16 or fp16.")
    amp = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if (dev.type == "cuda" and precision == "auto") \
        else (precision if dev.type == "cuda" else "fp32")

    # samplers first: they check crop size, levels and channels from metadata alone
    sampler = CropSampler(train_imgs, sources, targets, normalization={}, crop=crop, level=level,
                          seed=seed, augment=augment, min_foreground=min_foreground)
    val_sampler = CropSampler(val_imgs, sources, targets, normalization={}, crop=crop, level=level,
                              seed=seed + 1, augment=False, min_foreground=min_foreground)
    state = load_state(out) if resume else None
    if state is not None:
        prev = state["meta"]
        if prev["source"] != sources or prev["target"] != targets or prev["model"] != model:
            raise InputError(f"{out} holds a {prev['model']} run {prev['source']} → {prev['target']}; cannot resume it "
                             f"as {model} {sources} → {targets}. Use another --out.")
        normalization = prev["normalization"]
    else:
        normalization = channel_statistics(train_imgs, sources + targets, level=level, seed=seed)
        if overwrite and out.exists():
            for name in (META_FILE, WEIGHTS_FILE, STATE_FILE, LOG_FILE, CURVES_FILE):
                (out / name).unlink(missing_ok=True)
    sampler.normalization = val_sampler.normalization = normalization
    out.mkdir(parents=True, exist_ok=True)
    val_x, val_y = val_sampler.fixed(val_crops)
    baseline_r = pearson_r(val_x[:, :1], val_y[:, :1])

    torch.manual_seed(seed)
    net = UNet(len(sources), len(targets), depth=depth, base_channels=base_channels, norm=norm).to(dev)
    disc = PatchGAN(len(sources) + len(targets)).to(dev) if model == "pix2pix" else None
    if lr is None:
        lr = LR if model == "pix2pix" else 3e-3
    betas = BETAS if model == "pix2pix" else (0.9, 0.999)
    opt = torch.optim.Adam(net.parameters(), lr=lr, betas=betas)
    opt_d = torch.optim.Adam(disc.parameters(), lr=lr, betas=betas) if disc is not None else None
    scaler = torch.amp.GradScaler("cuda", enabled=(amp == "fp16"))
    start = 0
    if state is not None:
        net.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        if disc is not None:
            disc.load_state_dict(state["discriminator"])
            opt_d.load_state_dict(state["optimizer_d"])
        start = int(state["step"])
        if start >= steps:
            logger.info("%s already trained %d steps (>= %d)", out, start, steps)

    if val_every is None:
        val_every = max(1, steps // 10)
    log_every = max(1, min(val_every, steps // 100 or 1))
    log_path = out / LOG_FILE
    history: list[dict[str, Any]] = []
    if state is not None and log_path.exists():
        with log_path.open() as fh:
            history = [r for r in csv.DictReader(fh) if int(r["step"]) <= start]
            for r in history:
                for k, v in r.items():
                    r[k] = (float(v) if k != "step" else int(v)) if v not in ("", None) else ""
    seconds_before = float(state["meta"].get("seconds", 0.0)) if state is not None else 0.0

    arch = dict(net.config)
    tile, overlap = _tile_advice(depth, multiple)
    provenance = {
        "plates": [p.path for p in plates], "train_wells": train_names, "val_wells": val_names,
        "val_heldout": bool(val_names), "steps": steps, "seed": seed, "crop": crop, "batch_size": batch_size,
        "lr": lr, "schedule": schedule, "loss": loss if model == "unet" else "l1+cgan", "betas": list(betas), "lambda_l1": lambda_l1 if model == "pix2pix" else None,
        "level": level, "augment": augment, "min_foreground": min_foreground, "device": str(dev),
        "precision": amp, "torch": torch.__version__, "python": platform.python_version(),
        "omeloc": __version__, "host": platform.node(),
    }
    meta = {"model": model, "source": sources, "target": targets, "normalization": normalization}

    def save_state(step: int, seconds: float) -> None:
        blob = {"model": net.state_dict(), "optimizer": opt.state_dict(), "step": step,
                "meta": {**meta, "seconds": seconds}}
        if disc is not None:
            blob["discriminator"] = disc.state_dict()
            blob["optimizer_d"] = opt_d.state_dict()
        _atomic_torch_save(blob, out / STATE_FILE)

    def write_log() -> None:
        tmp = out / f".{LOG_FILE}.tmp"
        with tmp.open("w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=_LOG_FIELDS)
            w.writeheader()
            for r in history:
                w.writerow({k: r.get(k, "") for k in _LOG_FIELDS})
        os.replace(tmp, log_path)

    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        tqdm = None
    bar = tqdm(total=steps, initial=start, desc=f"train {model} {'+'.join(sources)}→{'+'.join(targets)}",
               disable=not progress or tqdm is None, unit="step", dynamic_ncols=True) if tqdm else None
    if dev.type in ("cpu", "cuda"):
        net = net.to(memory_format=torch.channels_last)
    net.train()
    t_loop = time.perf_counter()
    acc: dict[str, list[float]] = {"loss": [], "l1": [], "gan": [], "d_loss": []}
    val_l1 = val_r = math.nan
    step = start
    try:
        for step_idx, xb, yb in sampler.batches(start, steps, batch_size, prefetch=prefetch):
            for o in (opt, opt_d):
                if o is not None:
                    for g in o.param_groups:
                        g["lr"] = lr * _lr_factor(step_idx, steps, schedule)
            x = torch.from_numpy(xb).to(dev, non_blocking=True)
            y = torch.from_numpy(yb).to(dev, non_blocking=True)
            if dev.type in ("cpu", "cuda"):
                x = x.contiguous(memory_format=torch.channels_last)
            with _autocast(dev, amp):
                fake = net(x)
            fake = fake.float()
            if disc is None:
                l1 = (fake - y).abs().mean()
                loss_value = (fake - y).square().mean() if loss == "mse" else l1
                gan, d_loss = None, None
            else:
                # discriminator step on real vs (detached) fake pairs
                opt_d.zero_grad(set_to_none=True)
                with _autocast(dev, amp):
                    d_loss = discriminator_loss(disc(x, y).float(), disc(x, fake.detach()).float())
                scaler.scale(d_loss).backward()
                scaler.step(opt_d)
                # generator step: fool D, stay close to the target
                with _autocast(dev, amp):
                    d_fake = disc(x, fake).float()
                loss_value, gan, l1 = generator_loss(d_fake, fake, y, lambda_l1)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss_value).backward()
            scaler.step(opt)
            scaler.update()
            if not torch.isfinite(loss_value):
                raise InputError(f"Training diverged at step {step_idx + 1} (loss {loss_value.item()}). Lower the learning "
                                 f"rate (--lr) or check the plate for NaN/inf pixels.")
            step = step_idx + 1
            acc["loss"].append(loss_value.item())
            acc["l1"].append(l1.item())
            if gan is not None:
                acc["gan"].append(gan.item())
                acc["d_loss"].append(d_loss.item())
            is_val = step % val_every == 0 or step == steps
            if step % log_every == 0 or is_val:
                row: dict[str, Any] = {k: (float(np.mean(v)) if v else "") for k, v in acc.items()}
                row["step"] = step
                row["seconds"] = seconds_before + time.perf_counter() - t_loop
                if is_val:
                    val_l1, val_r = _score(net, val_x, val_y, dev, amp, batch_size)
                    row["val_l1"], row["val_pearson_r"] = val_l1, val_r
                history.append(row)
                acc = {k: [] for k in acc}
                if is_val:  # the log first: a resume keeps the rows up to the saved step
                    write_log()
                    save_state(step, row["seconds"])
                    fault_point(f"train_step_{step}")
            if bar is not None:
                bar.update(1)
                bar.set_postfix(l1=f"{l1.item():.4f}", val_r=f"{val_r:.3f}", refresh=False)
    finally:
        if bar is not None:
            bar.close()
    if step > start or not (out / WEIGHTS_FILE).exists():
        if math.isnan(val_l1):
            val_l1, val_r = _score(net, val_x, val_y, dev, amp, batch_size)
        save_state(step, seconds_before + time.perf_counter() - t_loop)
        write_log()
    else:
        val_l1, val_r = _score(net, val_x, val_y, dev, amp, batch_size)
    seconds = seconds_before + time.perf_counter() - t_loop
    trained_steps = max(step - start, 0)
    metrics = {
        "val_pearson_r": val_r, "baseline_pearson_r": baseline_r, "val_l1": val_l1,
        "val_crops": int(len(val_x)), "train_seconds": seconds,
        "steps_per_second": trained_steps / max(time.perf_counter() - t_loop, 1e-9),
        "crops_rejected": sampler.rejected, "crops_drawn": sampler.drawn,
    }
    net_cpu = net.to(memory_format=torch.contiguous_format)
    ckpt = Checkpoint(path=out, architecture=arch, model=model, source=sources, target=targets,
                      normalization=normalization, tile=tile, overlap=overlap, level=level,
                      provenance={**provenance, "steps_done": step}, metrics=metrics)
    save_checkpoint(ckpt, net_cpu.state_dict())
    curves = _write_curves(history, out / CURVES_FILE,
                           f"{model}: {'+'.join(sources)} → {'+'.join(targets)} ({step} steps)") if history else None
    total = time.perf_counter() - t_start
    logger.info("trained %s → %s in %.1f s (val r %.3f, baseline %.3f)", sources, targets, total, val_r, baseline_r)
    return TrainResult(checkpoint=out, metrics=metrics, steps=step, seconds=total, log=log_path, curves=curves,
                       history=history)


def _lr_factor(step: int, steps: int, schedule: str) -> float:
    """Multiplier of the base learning rate at 0-based ``step`` of ``steps``."""
    if schedule == "constant":
        return 1.0
    warm = max(1, steps // 20)
    if step < warm:
        return (step + 1) / warm
    progress = (step - warm) / max(1, steps - warm)
    return 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
