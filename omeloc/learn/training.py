"""Training a U-Net or pix2pix on crops read straight from OME-Zarr plates: :func:`train`.

A plain PyTorch loop, composed of parts with one job each:

- :mod:`omeloc.learn.split`: training and validation wells (never the same well on both sides);
- :mod:`omeloc.learn.sampling`: batch ``i`` of random crops, a function of ``(seed, i)``,
  read from zarr on demand and prefetched on a thread;
- :mod:`omeloc.learn.objectives`: the U-Net or pix2pix step (mixed precision on GPU);
- :mod:`omeloc.learn.trainer`: the loop, validation every ``val_every`` steps and ``DIR/last.pt``,
  so a killed run continues with ``resume=True`` exactly where it stopped;
- :mod:`omeloc.learn.budget`: with ``minutes``, the step time measured and the number of steps
  (and so the learning-rate schedule) fitted to the budget;
- :mod:`omeloc.learn.log`: the CSV log and learning curves.

The result is a checkpoint folder (:mod:`omeloc.learn.checkpoint`) that :func:`omeloc.predict`
takes.
"""

from __future__ import annotations

import logging
import math
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from omeloc import __version__
from omeloc.analysis.metrics import pearson_r
from omeloc.config import DEFAULT_STEPS, MODELS, TrainConfig, resolve
from omeloc.engine.device import resolve_device, resolve_precision
from omeloc.errors import InputError
from omeloc.learn.budget import StepTiming, fit_steps, measure
from omeloc.learn.checkpoint import (
    META_FILE,
    STATE_FILE,
    WEIGHTS_FILE,
    Checkpoint,
    load_state,
    save_checkpoint,
)
from omeloc.learn.log import CURVES_FILE, LOG_FILE, TrainLog, write_curves
from omeloc.learn.objectives import Objective, build_objective
from omeloc.learn.sampling import CropSampler, channel_statistics
from omeloc.learn.split import Split, split_by_well
from omeloc.learn.trainer import LoopResult, Trainer, score_crops
from omeloc.learn.units import PixelSize, pixel_size_of
from omeloc.ngff.plate import Plate, open_plate

__all__ = ["MODELS", "TrainResult", "train"]

logger = logging.getLogger(__name__)


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
    warnings
        Lines the user must read: the model does not beat the no-learning baseline (with the
        fix); empty when all is well.
    budget
        With ``minutes``: how many steps the budget fitted and why (``None`` without a budget).
    """

    checkpoint: Path
    metrics: dict[str, Any]
    steps: int
    seconds: float
    log: Path
    curves: Path | None
    history: list[dict[str, Any]] = field(default_factory=list, repr=False)
    warnings: list[str] = field(default_factory=list)
    budget: str | None = None

    def summary(self) -> str:
        m = self.metrics
        return (
            f"trained {self.steps} steps in {self.seconds:.1f} s → {self.checkpoint}\n"
            f"  validation Pearson r {m.get('val_pearson_r', float('nan')):.3f} "
            f"(no-learning baseline {m.get('baseline_pearson_r', float('nan')):.3f}), "
            f"structure r {m.get('val_structure_r', float('nan')):.3f}, "
            f"L1 {m.get('val_l1', float('nan')):.4f}"
            + (
                f" (best validation, step {m['best_step']})"
                if m.get("best_step") is not None
                else ""
            )
            + "\n"
            f"  log {self.log}"
            + (f", curves {self.curves}" if self.curves else "")
            + (f"\n  {self.budget}" if self.budget else "")
            + "".join(f"\n{w}" for w in self.warnings)
        )


@dataclass
class _Run:
    """Everything a run needs before its first step (made by :func:`_prepare`)."""

    cfg: TrainConfig
    sources: list[str]
    targets: list[str]
    out: Path
    plates: list[Plate]
    split: Split
    device: torch.device
    precision: str
    sampler: CropSampler
    val_sampler: CropSampler
    state: dict[str, Any] | None
    normalization: dict[str, Any] = field(default_factory=dict)
    device_defaults: dict[str, int] = field(default_factory=dict)
    """The options set by device because none was given
    (:meth:`TrainConfig.with_device_defaults`)."""
    timing: StepTiming | None = None
    """With ``minutes``: what the budget was fitted to."""
    pixel: PixelSize | None = None
    """The pixel size of the training images at the training level (recorded in the checkpoint)."""
    fitted_steps: int | None = None
    """With ``minutes``: the steps first fitted to the measured pace."""
    budget_cap: int | None = None
    """With ``minutes``: the most steps the user allowed (``steps`` beside ``minutes``)."""


def train(
    plate: Any,
    source: str | Sequence[str],
    target: str | Sequence[str],
    config: TrainConfig | None = None,
    *,
    out: str | Path = "omeloc-model",
    resume: bool = False,
    overwrite: bool = False,
    progress: Any = True,
    report: Callable[[str], None] | None = None,
    **overrides: Any,
) -> TrainResult:
    """Train a model that predicts ``target`` from ``source`` and save a checkpoint folder.

    Parameters
    ----------
    plate
        A plate path/URL or :class:`~omeloc.ngff.plate.Plate`, or a list of them (crops come from
        all).
    source, target
        Channel label(s): what the model reads and what it predicts.
    config
        What to learn and how (:class:`~omeloc.config.TrainConfig`: model, steps, crop, ...).
    out
        Checkpoint folder to write (``weights.pt``, ``checkpoint.json``, ``last.pt``,
        ``train_log.csv``, ``curves.png``).
    resume, overwrite
        Continue from ``out/last.pt``; replace an existing checkpoint in ``out``.
    progress
        A progress bar with losses and validation metrics (``True``), or a ``(done, total)``
        callback.
    report
        Called with each line worth telling the user before the first step (the device
        defaults chosen, the steps a budget of ``minutes`` allows); they are also logged (INFO).
    **overrides
        Any :class:`~omeloc.config.TrainConfig` field, applied over ``config`` (``steps=500``,
        ``minutes=5``).

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

    Examples
    --------
    >>> omeloc.train("plate.zarr", "actin", "WAVE2", out="models/actin-wave2", steps=500)  # doctest: +SKIP
    >>> omeloc.train("plate.zarr", "actin", "WAVE2", out="models/actin-wave2", minutes=10)  # doctest: +SKIP
    """  # noqa: E501
    t_start = time.perf_counter()
    tell = _teller(report)
    run = _prepare(
        plate, source, target, resolve(TrainConfig, config, overrides), out, resume, overwrite
    )
    if not run.pixel.known:
        tell(
            f"note: {run.plates[0].path} has no physical pixel size (no unit on its y/x axes): "
            f"recorded as 1 per pixel (omeloc import-tiff --pixel-size writes one)"
        )
    if run.device_defaults:
        tell(
            f"device defaults ({run.device.type}): "
            + ", ".join(f"{k} {v}" for k, v in run.device_defaults.items())
            + " (options given explicitly win)"
        )
    trainer, baseline_r = _trainer(run)
    if (
        trainer.cfg.steps is None
    ):  # a budget of minutes: measure, then fit the steps and the schedule
        _fit_budget(run, trainer, t_start, tell)
    loop = trainer.run(
        progress, desc=f"train {run.cfg.model} {'+'.join(run.sources)}→{'+'.join(run.targets)}"
    )
    return _finish(run, trainer, loop, baseline_r, t_start)


def _teller(report: Callable[[str], None] | None) -> Callable[[str], None]:
    def tell(line: str) -> None:
        logger.info("%s", line)
        if report is not None:
            report(line)

    return tell


def _fit_budget(run: _Run, trainer: Trainer, t_start: float, tell: Callable[[str], None]) -> None:
    """Measure the step time, set the steps so that the run ends within ``cfg.minutes``, set the
    deadline.

    The last validation's save is kept out of the budget's training time (the checkpoint and
    the learning curves are written after it).
    """
    cfg = run.cfg
    run.timing = measure(trainer)
    deadline = t_start + cfg.minutes * 60.0 - run.timing.validation
    left = deadline - time.perf_counter()
    steps = fit_steps(left, run.timing, val_every=cfg.val_every, cap=cfg.steps)
    trainer.set_steps(steps)
    trainer.deadline, trainer.cap = deadline, cfg.steps
    run.cfg = trainer.cfg
    run.fitted_steps, run.budget_cap = steps, cfg.steps
    capped = f", capped by --steps {cfg.steps}" if cfg.steps == steps else ""
    tell(
        f"budget {cfg.minutes:g} min: {steps} steps ({run.timing.describe()}; {left:.1f} s left "
        f"after preparation; re-fitted to the pace as it runs){capped}"
    )


# -- before the first step ---------------------------------------------------------------------
def _prepare(
    plate: Any,
    source: str | Sequence[str],
    target: str | Sequence[str],
    cfg: TrainConfig,
    out: str | Path,
    resume: bool,
    overwrite: bool,
) -> _Run:
    """Check everything, open the plates, split them, build the samplers, load the resume state.

    Nothing is written before every check has passed (except ``out`` itself, created last).
    """
    sources, targets = _channels(source, target)
    out = _check_out(out, resume, overwrite)
    plates = _open_all(plate)
    for p in plates:  # every channel in every plate, checked before anything runs
        for ch in sources + targets:
            p.images[0].channel_index(ch)
    split = split_by_well(plates, cfg.val_wells)
    dev = resolve_device(cfg.device)
    # mixed precision for training on CUDA only: bf16 autocast for training on CPU is slower
    # and its gradients less safe, so off CUDA training always runs in fp32
    amp = resolve_precision(cfg.precision, dev) if dev.type == "cuda" else "fp32"
    state = load_state(out) if resume else None
    cfg, chosen = _settle(cfg, dev, split.train_images + split.val_images, state)
    # samplers first: they check crop size, levels and channels from metadata alone
    sampler = CropSampler(
        split.train_images,
        sources,
        targets,
        normalization={},
        crop=cfg.crop,
        level=cfg.level,
        seed=cfg.seed,
        augment=cfg.augment,
        min_foreground=cfg.min_foreground,
        foreground_weight=cfg.foreground_weight,
        intensity_augment=cfg.intensity_augment,
        z_window=cfg.z_window,
    )
    val_sampler = CropSampler(
        split.val_images,
        sources,
        targets,
        normalization={},
        crop=cfg.crop,
        level=cfg.level,
        seed=cfg.seed + 1,
        augment=False,
        min_foreground=cfg.min_foreground,
        z_window=cfg.z_window,
    )
    run = _Run(
        cfg,
        sources,
        targets,
        out,
        plates,
        split,
        dev,
        amp,
        sampler,
        val_sampler,
        state=state,
        device_defaults=chosen,
    )
    run.pixel = (
        pixel_size_of(split.train_images[0], cfg.level)
        if split.train_images
        else PixelSize(1.0, 1.0, known=False)
    )
    run.normalization = _normalization(run, overwrite)
    sampler.normalization = val_sampler.normalization = run.normalization
    out.mkdir(parents=True, exist_ok=True)
    return run


def _settle(
    cfg: TrainConfig, dev: torch.device, images: Sequence[Any], state: dict[str, Any] | None
) -> tuple[TrainConfig, dict[str, int]]:
    """``cfg`` with the device defaults and the number of steps settled; the defaults chosen.

    A default crop larger than the smallest image shrinks to fit it (an explicit one is checked
    by the sampler).  Steps: those given; a resumed budgeted run's planned steps; ``None`` while
    a budget of ``minutes`` is still to be measured; else :data:`~omeloc.config.DEFAULT_STEPS`.
    """
    crop_given = cfg.crop is not None
    cfg, chosen = cfg.with_device_defaults(dev.type)
    if not crop_given and images:
        multiple = 2**cfg.depth
        side = min(
            (
                min(dict(zip(img.axes, img.shapes[cfg.level]))[a] for a in "yx")
                for img in images
                if cfg.level < len(img.level_paths)
            ),
            default=0,
        )
        if side < cfg.crop and side >= multiple:
            cfg = cfg.replace(crop=side - side % multiple)
            chosen["crop"] = cfg.crop
    if cfg.minutes is not None and state is not None and state["meta"].get("steps"):
        cfg = cfg.replace(steps=int(state["meta"]["steps"]))
    elif cfg.minutes is None and cfg.steps is None:
        cfg = cfg.replace(steps=DEFAULT_STEPS)
    return cfg, chosen


def _channels(
    source: str | Sequence[str], target: str | Sequence[str]
) -> tuple[list[str], list[str]]:
    sources, targets = _as_list(source), _as_list(target)
    if not sources or not targets:
        raise InputError("Expected at least one source and one target channel.")
    same = sorted(set(sources) & set(targets))
    if same:
        raise InputError(
            f"Channel {same[0]!r} is both source and target; a model must predict a different "
            f"channel than it reads. Pick another --target."
        )
    return sources, targets


def _check_out(out: str | Path, resume: bool, overwrite: bool) -> Path:
    out = Path(out).expanduser().resolve()
    has_ckpt = (out / META_FILE).exists() or (out / STATE_FILE).exists()
    if has_ckpt and not (resume or overwrite):
        raise InputError(
            f"{out} already holds a checkpoint. Pass resume=True (--resume) to continue it or "
            f"overwrite=True (--overwrite) to replace it."
        )
    if resume and not (out / STATE_FILE).exists():
        raise InputError(
            f"Nothing to resume in {out}: no {STATE_FILE}. Drop --resume to start a new run."
        )
    return out


def _normalization(run: _Run, overwrite: bool) -> dict[str, Any]:
    """The resumed run's statistics (after checking it is the same task), or new ones measured on
    the training wells."""
    if run.state is not None:
        prev = run.state["meta"]
        if (
            prev["source"] != run.sources
            or prev["target"] != run.targets
            or prev["model"] != run.cfg.model
        ):
            raise InputError(
                f"{run.out} holds a {prev['model']} run {prev['source']} → {prev['target']}; "
                f"cannot resume it as {run.cfg.model} {run.sources} → {run.targets}. Use another "
                "--out."
            )
        return prev["normalization"]
    stats = channel_statistics(
        run.split.train_images, run.sources + run.targets, level=run.cfg.level, seed=run.cfg.seed
    )
    if overwrite and run.out.exists():
        for name in (META_FILE, WEIGHTS_FILE, STATE_FILE, LOG_FILE, CURVES_FILE):
            (run.out / name).unlink(missing_ok=True)
    return stats


def _as_list(x: str | Sequence[str]) -> list[str]:
    return [x] if isinstance(x, str) else list(x)


def _open_all(plates: Any) -> list[Plate]:
    items = plates if isinstance(plates, (list, tuple)) else [plates]
    if not items:
        raise InputError("Expected at least one plate to train on. Got none.")
    return [p if isinstance(p, Plate) else open_plate(p) for p in items]


def _trainer(run: _Run) -> tuple[Trainer, float]:
    """The loop of ``run`` (networks seeded, resumed state loaded), and the no-learning baseline
    r."""
    val_x, val_y = run.val_sampler.fixed(run.cfg.val_crops)
    mid = run.cfg.z_window // 2  # the first source's own plane
    baseline_r = pearson_r(val_x[:, mid : mid + 1], val_y[:, :1])
    objective = build_objective(
        run.cfg, len(run.sources), len(run.targets), run.device, run.precision
    )
    start, seconds_before, log = 0, 0.0, TrainLog(run.out / LOG_FILE)
    if run.state is not None:
        objective.load_state_dict(run.state)
        start = int(run.state["step"])
        if run.cfg.steps is not None and start >= run.cfg.steps:
            logger.info("%s already trained %d steps (>= %d)", run.out, start, run.cfg.steps)
        seconds_before = float(run.state["meta"].get("seconds", 0.0))
        log = TrainLog.resume(run.out / LOG_FILE, start)
    meta = {
        "model": run.cfg.model,
        "source": run.sources,
        "target": run.targets,
        "normalization": run.normalization,
    }
    trainer = Trainer(
        objective,
        run.sampler,
        val_x,
        val_y,
        run.cfg,
        run.out,
        meta,
        log,
        start=start,
        seconds_before=seconds_before,
        best=(run.state or {}).get("best"),
    )
    return trainer, baseline_r


# -- after the last step -----------------------------------------------------------------------
def _finish(
    run: _Run, trainer: Trainer, loop: LoopResult, baseline_r: float, t_start: float
) -> TrainResult:
    """Save the checkpoint and the learning curves; the result with the final metrics."""
    run.cfg = trainer.cfg  # the steps a budget settled on
    metrics = {
        "val_pearson_r": loop.val_pearson_r,
        "baseline_pearson_r": baseline_r,
        "val_l1": loop.val_l1,
        "val_structure_r": loop.val_structure_r,
        "best_step": loop.best_step,
        "val_crops": len(trainer.val_x),
        "train_seconds": loop.seconds,
        "steps_per_second": loop.steps_per_second,
        "crops_rejected": run.sampler.rejected,
        "crops_drawn": run.sampler.drawn,
    }
    if len(run.targets) > 1:
        metrics["per_target"] = _per_target(run, trainer)
    if run.timing is not None:
        metrics.update(
            budget_minutes=run.cfg.minutes,
            measured_step_seconds=run.timing.step,
            measured_validation_seconds=run.timing.validation,
            measuring_seconds=run.timing.spent,
        )
    _save(run, trainer.objective, trainer, loop, metrics)
    rows = trainer.log.rows
    curves = (
        write_curves(
            rows,
            run.out / CURVES_FILE,
            f"{run.cfg.model}: {'+'.join(run.sources)} → "
            f"{'+'.join(run.targets)} ({loop.step} steps)",
            baseline=baseline_r,
        )
        if rows
        else None
    )
    total = time.perf_counter() - t_start
    logger.info(
        "trained %s → %s in %.1f s (val r %.3f, baseline %.3f)",
        run.sources,
        run.targets,
        total,
        loop.val_pearson_r,
        baseline_r,
    )
    warnings = [w for w in (_baseline_warning(run.cfg, loop.val_pearson_r, baseline_r),) if w]
    for w in warnings:
        logger.warning("%s", w)
    return TrainResult(
        checkpoint=run.out,
        metrics=metrics,
        steps=loop.step,
        seconds=total,
        log=trainer.log.path,
        curves=curves,
        history=rows,
        warnings=warnings,
        budget=_budget_note(run, loop.step),
    )


def _budget_note(run: _Run, steps: int) -> str | None:
    """With ``minutes``: how many steps the budget fitted, and what set that number."""
    cfg, timing = run.cfg, run.timing
    if timing is None or cfg.minutes is None:
        return None
    first = f"first fitted {run.fitted_steps}, " if run.fitted_steps not in (None, steps) else ""
    if run.budget_cap is not None and steps >= run.budget_cap:
        why = f"capped by --steps {run.budget_cap}"
    else:
        why = "what fits the minutes left at the pace measured, re-fitted as the run went"
    return (
        f"budget {cfg.minutes:g} min: {steps} steps fitted ({first}{why}; {timing.step:.2f} s/step "
        f"and {timing.validation:.2f} s/validation measured). More steps: a larger --minutes or a "
        "smaller model"
    )


def _baseline_warning(cfg: TrainConfig, val_r: float, baseline_r: float) -> str | None:
    """A warning when the model does not beat the source channel itself (the no-learning
    baseline)."""
    if not (math.isfinite(val_r) and math.isfinite(baseline_r)) or val_r > baseline_r:
        return None
    longer = (
        f"--minutes {max(10, 3 * int(cfg.minutes or 0))}"
        if cfg.minutes
        else f"--steps {3 * (cfg.steps or 1)}"
    )
    depth, base = cfg.depth or 3, cfg.base_channels or 16
    small = (max(2, depth - 1), max(4, base // 2))
    smaller = (
        f" or a smaller model that learns in fewer steps (--depth {small[0]} --base-channels "
        f"{small[1]})"
        if small != (depth, base)
        else ""
    )
    return (
        f"WARNING: validation Pearson r {val_r:.3f} is not above the no-learning baseline "
        f"{baseline_r:.3f} (the source channel itself): this model is worse than doing nothing. "
        f"Fix: train longer ({longer}){smaller}; do not predict with it yet."
    )


def _per_target(run: _Run, trainer: Trainer) -> dict[str, dict[str, float]]:
    """Validation ``pearson_r``, ``structure_r`` and ``l1`` of the final weights, for each target
    channel."""
    import copy

    net = copy.deepcopy(trainer.objective.net)
    net.load_state_dict(trainer.final_weights())
    out = {}
    for k, name in enumerate(run.targets):
        m = score_crops(
            net,
            trainer.val_x,
            trainer.val_y[:, k : k + 1],
            run.device,
            trainer.objective.precision,
            run.cfg.batch_size,
            channel=k,
        )
        out[name] = {f"val_{key}": value for key, value in m.items()}
    return out


def _save(
    run: _Run, objective: Objective, trainer: Trainer, loop: LoopResult, metrics: dict[str, Any]
) -> Path:
    """Write the checkpoint (weights + JSON with provenance and metrics) into ``run.out``."""
    cfg = run.cfg
    tile, overlap = _tile_advice(cfg.depth, 2**cfg.depth)
    net = objective.net.to(memory_format=torch.contiguous_format)
    ckpt = Checkpoint(
        path=run.out,
        architecture=dict(net.config),
        model=cfg.model,
        source=run.sources,
        target=run.targets,
        normalization=run.normalization,
        tile=tile,
        overlap=overlap,
        level=cfg.level,
        provenance=_provenance(run, objective, trainer, loop.step),
        metrics=metrics,
        pixel_size=run.pixel.to_json() if run.pixel is not None else None,
    )
    weights = {k: v.contiguous() for k, v in trainer.final_weights().items()}
    return save_checkpoint(ckpt, weights)


def _provenance(
    run: _Run, objective: Objective, trainer: Trainer, steps_done: int
) -> dict[str, Any]:
    """The checkpoint's record of the run: the configuration (``TrainConfig.to_dict``) with what
    it resolved to."""
    cfg = run.cfg
    settings = {
        k: v for k, v in cfg.to_dict().items() if k != "val_wells"
    }  # val_wells: the wells chosen
    return {
        "plates": [_absolute(p.path) for p in run.plates],
        "train_wells": run.split.train_wells,
        "val_wells": run.split.val_wells,
        "val_heldout": bool(run.split.val_wells),
        **settings,
        "lr": objective.lr,
        "loss": objective.loss_name,
        "betas": list(objective.betas),
        "lambda_l1": cfg.lambda_l1 if cfg.model == "pix2pix" else None,
        "val_every": trainer.val_every,
        "device": str(run.device),
        "precision": run.precision,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "omeloc": __version__,
        "host": platform.node(),
        "steps_done": steps_done,
        "device_defaults": run.device_defaults,
    }


def _absolute(path: str) -> str:
    """A local plate path made absolute (``evaluate`` finds the training plate from any folder);
    URLs as they are."""
    return path if "://" in path else str(Path(path).expanduser().resolve())


def _tile_advice(depth: int, multiple: int) -> tuple[int, int]:
    overlap = max(16, min(64, 4 * 2**depth))
    tile = 512
    return tile - tile % multiple, overlap
