"""The training loop: batches in, optimizer steps, periodic validation, resumable state.

:class:`Trainer` runs an :class:`~omeloc.learn.objectives.Objective` over the batches of a
:class:`~omeloc.learn.sampling.CropSampler` (batch ``i`` depends only on ``(seed, i)``).  Every
``log_every`` steps it appends the mean losses to the :class:`~omeloc.learn.log.TrainLog`;
every ``val_every`` steps (and at the last) it scores the fixed validation crops, writes the
log and ``last.pt`` (the log first: a resume keeps the rows up to the saved step), so a killed
run continues from there with the same result as an uninterrupted one.

With ``keep_best`` the weights of the validation with the best value of that metric are kept
(in memory and in ``last.pt``) and become the checkpoint's weights at the end.  The number of
steps can be set after construction (:meth:`Trainer.set_steps`), once a budget of minutes has
been turned into steps (:mod:`omeloc.learn.budget`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from omeloc.analysis.metrics import pearson_r, structure_r
from omeloc.config import TrainConfig
from omeloc.engine.device import autocast, to_channels_last
from omeloc.errors import InputError
from omeloc.learn.budget import FallingRate, refit_steps
from omeloc.learn.checkpoint import WEIGHTS_FILE, save_state
from omeloc.learn.log import TrainLog
from omeloc.learn.objectives import Objective
from omeloc.learn.sampling import CropSampler
from omeloc.testing.faults import fault_point

__all__ = ["LoopResult", "Trainer", "score_crops"]

_LOSSES = ("loss", "l1", "gan", "d_loss")


#: the validation metrics, and whether larger is better
METRICS = {"l1": False, "pearson_r": True, "structure_r": True}


def score_crops(
    net: torch.nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    device: torch.device,
    precision: str,
    batch_size: int,
    channel: int | None = None,
) -> dict[str, float]:
    """``l1``, pooled ``pearson_r`` and ``structure_r`` of ``net`` on crops ``x`` → ``y`` (first
    target).

    ``channel``: score only that output channel of ``net`` against ``y`` (one target's crops).
    The network runs in eval mode (its mode is restored afterwards).
    """
    was_training = net.training
    net.eval()
    preds = []
    with torch.inference_mode(), autocast(device, precision, enabled=device.type == "cuda"):
        for i in range(0, len(x), batch_size):
            preds.append(
                net(torch.from_numpy(x[i : i + batch_size]).to(device)).float().cpu().numpy()
            )
    net.train(was_training)
    pred = np.concatenate(preds)
    if channel is not None:
        pred = pred[:, channel : channel + 1]
    return {
        "l1": float(np.abs(pred - y).mean()),
        "pearson_r": pearson_r(pred, y),
        "structure_r": structure_r(pred[:, 0], y[:, 0]),
    }


@dataclass
class LoopResult:
    """Where a run of :meth:`Trainer.run` ended."""

    step: int
    """Steps done in total (including those before a resume)."""
    val_l1: float
    val_pearson_r: float
    """Of the weights kept: the last ones, or with ``keep_best`` the best ones."""
    seconds: float
    """Training seconds in total (including those before a resume)."""
    steps_per_second: float
    """Of this run."""
    val_structure_r: float = math.nan
    best_step: int | None = None
    """With ``keep_best``: the step whose weights were kept."""


class _Bar:
    """The run's progress (:func:`omeloc.progress.reporter`): steps with the current losses."""

    def __init__(self, progress: Any, total: int, initial: int, desc: str) -> None:
        from omeloc.progress import reporter

        self.total, self.done = total, initial
        self.reporter = reporter(progress)
        self.reporter.start(total, desc=desc, unit="step", initial=initial)

    def set_total(self, total: int) -> None:
        self.total = total
        self.reporter.update(self.done, total)

    def advance(self, l1: float, val_r: float) -> None:
        self.done += 1
        self.reporter.update(self.done, l1=l1, val_r=val_r)

    def close(self) -> None:
        self.reporter.close()


def _early_refit(done: int) -> bool:
    """Whether a budgeted run re-fits its steps after ``done`` steps besides validations: 10, 20,
    40, 80, ..."""
    return done >= 10 and done % 10 == 0 and (done // 10) & (done // 10 - 1) == 0


class Trainer:
    """The loop of one training run (see the module docstring).

    Parameters
    ----------
    objective
        Networks, optimizers and losses (its generator is trained in place).
    sampler
        Training crops, normalized.
    val_x, val_y
        The fixed validation crops.
    cfg
        Steps, batch size, schedule, validation interval, prefetch, ``keep_best``.  ``steps``
        may be ``None`` until :meth:`set_steps` is called (a budget of minutes).
    out
        The checkpoint folder (``last.pt`` is written there).
    meta
        What ``last.pt`` records besides weights (model, channels, normalization).
    log
        The training log (with the rows before ``start`` when resuming).
    start, seconds_before, best
        The step to start from, the training seconds already spent and the best weights so far
        (``resume``; ``best`` as :attr:`best` holds it).

    Attributes
    ----------
    best : dict or None
        With ``keep_best``: ``{"metric", "value", "step", "metrics", "weights"}`` of the best
        validation so far (weights on the CPU).
    deadline : float or None
        A ``time.perf_counter()`` value by which the run should end (a budget of minutes): after
        10, 20, 40, 80, ... steps and at every logged row, the total steps are re-fitted to the
        loop's recent pace (:func:`~omeloc.learn.budget.refit_steps`), at most :attr:`cap`.
    """

    def __init__(
        self,
        objective: Objective,
        sampler: CropSampler,
        val_x: np.ndarray,
        val_y: np.ndarray,
        cfg: TrainConfig,
        out: Path,
        meta: dict[str, Any],
        log: TrainLog,
        *,
        start: int = 0,
        seconds_before: float = 0.0,
        best: dict[str, Any] | None = None,
    ) -> None:
        self.objective, self.sampler, self.cfg = objective, sampler, cfg
        self.val_x, self.val_y = val_x, val_y
        self.out, self.meta, self.log = Path(out), meta, log
        self.start, self.seconds_before = start, seconds_before
        self.best = best if best is not None and best.get("metric") == cfg.keep_best else None
        self.device = objective.device
        self.val_every = self.log_every = 1
        self.deadline: float | None = None
        self.cap: int | None = None
        self._last_fit: tuple[int, float] | None = None
        self._rate = FallingRate()
        """A budgeted run's learning-rate factor: past its warm-up it never rises again (re-fits
        move the end)."""
        if cfg.steps is not None:
            self.set_steps(cfg.steps)

    def set_steps(self, steps: int, *, intervals: bool = True) -> None:
        """Train ``steps`` steps in total: the schedule follows, and the validation and log
        intervals unless ``intervals`` is false (a re-fit in the middle of a run keeps them)."""
        self.cfg = self.cfg.replace(steps=int(steps))
        if intervals:
            self.val_every = self.cfg.val_every or max(1, steps // 10)
            self.log_every = max(1, min(self.val_every, steps // 100 or 1))

    def validate(self) -> dict[str, float]:
        """``l1``, ``pearson_r`` and ``structure_r`` of the generator on the validation crops."""
        o = self.objective
        return score_crops(
            o.net, self.val_x, self.val_y, self.device, o.precision, self.cfg.batch_size
        )

    def save_state(self, step: int, seconds: float) -> None:
        """Write ``last.pt``: weights, optimizer states, the step, the planned steps,
        :attr:`meta`, :attr:`best`."""
        state = {
            **self.objective.state_dict(),
            "step": step,
            "meta": {**self.meta, "seconds": seconds, "steps": self.cfg.steps},
        }
        if self.best is not None:
            state["best"] = self.best
        save_state(self.out, state)

    def final_weights(self) -> dict[str, torch.Tensor]:
        """The generator's weights to save: the best ones with ``keep_best`` (when any was
        scored), else the last."""
        return self.best["weights"] if self.best is not None else self.objective.net.state_dict()

    def run(self, progress: Any = True, desc: str = "train") -> LoopResult:
        """Train from :attr:`start` to ``cfg.steps``; ``progress``: a bar (True) or a
        ``(done, total)`` callback."""
        net = self.objective.net
        bar = _Bar(progress, self.cfg.steps, self.start, desc)
        to_channels_last(net, self.device)
        net.train()
        t_loop = time.perf_counter()
        self._last_fit, self._rate = (
            (self.start, t_loop),
            FallingRate(),
        )  # (the budget's measuring steps came before)
        acc: dict[str, list[float]] = {k: [] for k in _LOSSES}
        val: dict[str, float] = {}
        step = self.start
        # a budgeted run's end moves (re-fits): batches are drawn up to the cap and the loop stops
        # at the end
        limit = self.cfg.steps if self.deadline is None else (self.cap or self.start + 10**9)
        try:
            for step_idx, xb, yb in self.sampler.batches(
                self.start, limit, self.cfg.batch_size, prefetch=self.cfg.prefetch
            ):
                if step_idx >= self.cfg.steps:
                    break
                losses = self.step(step_idx, xb, yb)
                step = step_idx + 1
                for k, v in losses.items():
                    acc[k].append(v.item())
                is_val = step % self.val_every == 0 or step == self.cfg.steps
                if step % self.log_every == 0 or is_val:
                    val = self._log_row(step, acc, t_loop, is_val) or val
                    acc = {k: [] for k in _LOSSES}
                elif _early_refit(step - self.start):
                    self._refit(step, is_val)
                if bar.total != self.cfg.steps:
                    bar.set_total(self.cfg.steps)
                bar.advance(losses["l1"].item(), val.get("pearson_r", math.nan))
        finally:
            bar.close()
        return self._finish(step, val, t_loop)

    def _refit(self, step: int, validated: bool) -> None:
        """With a :attr:`deadline`: the total steps re-fitted to the recent pace (see
        :mod:`omeloc.learn.budget`).

        The pace is that of the steps since the last re-fit (at least 5 of them): a machine that
        slows down in the middle of the run is followed within a few steps.  A run ends on a
        validated step: out of time elsewhere, it makes one more step (validated as the last).
        """
        if self.deadline is None or step >= self.cfg.steps:
            return
        now = time.perf_counter()
        last_step, last_time = self._last_fit or (self.start, now)
        if step - last_step >= 5:
            total = refit_steps(step, last_step, now - last_time, self.deadline - now, self.cap)
            self._last_fit = (step, now)
            total = max(total, step if validated else step + 1)
            if total != self.cfg.steps:
                # the intervals stay, unless the run shrank so much that it would validate fewer
                # than 3 times
                self.set_steps(
                    total, intervals=not self.cfg.val_every and total - step < 3 * self.val_every
                )

    def step(
        self, step_idx: int, xb: np.ndarray, yb: np.ndarray, total: int | None = None
    ) -> dict[str, torch.Tensor]:
        """One optimizer step on batch ``step_idx`` of a run of ``total`` steps (default
        ``cfg.steps``)."""
        o = self.objective
        steps = total or self.cfg.steps
        o.begin_step(step_idx, steps, self.cfg.schedule)
        if self.deadline is not None:
            o.set_lr(o.lr * self._rate.factor(step_idx, steps, self.cfg.schedule))
        x = torch.from_numpy(xb).to(self.device, non_blocking=True)
        y = torch.from_numpy(yb).to(self.device, non_blocking=True)
        losses = o.step(to_channels_last(x, self.device), y)
        if not torch.isfinite(losses["loss"]):
            raise InputError(
                f"Training diverged at step {step_idx + 1} (loss {losses['loss'].item()}). Lower "
                f"the learning rate (--lr) or check the plate for NaN/inf pixels."
            )
        return losses

    def _log_row(
        self, step: int, acc: dict[str, list[float]], t_loop: float, is_val: bool
    ) -> dict[str, float] | None:
        """Append the mean losses since the last row; at a validation step also score, save and
        log."""
        row: dict[str, Any] = {k: (float(np.mean(v)) if v else "") for k, v in acc.items()}
        row["step"] = step
        row["seconds"] = self.seconds_before + time.perf_counter() - t_loop
        val = None
        if is_val:
            val = self.validate()
            row["val_l1"], row["val_pearson_r"], row["val_structure_r"] = (
                val["l1"],
                val["pearson_r"],
                val["structure_r"],
            )
            self._consider_best(step, val)
        self._refit(step, is_val)  # before the save: a resumed run follows the same plan
        self.log.append(row)
        if is_val:  # the log first: a resume keeps the rows up to the saved step
            self.log.write()
            self.save_state(step, row["seconds"])
            fault_point(f"train_step_{step}")
        return val

    def _consider_best(self, step: int, val: dict[str, float]) -> None:
        """Keep the current weights if ``cfg.keep_best``'s metric is the best so far."""
        metric = self.cfg.keep_best
        if metric is None or not math.isfinite(val[metric]):
            return
        value, larger = float(val[metric]), METRICS[metric]
        if self.best is not None and not (
            value > self.best["value"] if larger else value < self.best["value"]
        ):
            return
        weights = {
            k: v.detach().to("cpu", copy=True) for k, v in self.objective.net.state_dict().items()
        }
        self.best = {
            "metric": metric,
            "value": value,
            "step": step,
            "metrics": dict(val),
            "weights": weights,
        }

    def _finish(self, step: int, val: dict[str, float], t_loop: float) -> LoopResult:
        if step > self.start or not (self.out / WEIGHTS_FILE).exists():
            if not val:
                val = self.validate()
                self._consider_best(step, val)
            self.save_state(step, self.seconds_before + time.perf_counter() - t_loop)
            self.log.write()
        else:
            val = self.validate()
        best_step = None
        if self.best is not None:
            val, best_step = self.best["metrics"], int(self.best["step"])
        now = time.perf_counter()
        return LoopResult(
            step=step,
            val_l1=val["l1"],
            val_pearson_r=val["pearson_r"],
            seconds=self.seconds_before + now - t_loop,
            steps_per_second=max(step - self.start, 0) / max(now - t_loop, 1e-9),
            val_structure_r=val.get("structure_r", math.nan),
            best_step=best_step,
        )
