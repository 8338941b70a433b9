"""Training by time: how many steps fit in a budget of minutes, measured on this machine.

:func:`measure` runs a few optimizer steps on real batches, times them, and puts the weights
and optimizer states back (the measured updates are discarded, so the run that follows starts
from the seeded initial weights and its learning-rate schedule covers exactly the steps it
makes).  It also times one validation and one save of the training state.
:func:`fit_steps` turns the seconds left and those timings into a number of steps.

A step's time is the model's step plus the reading of a batch: with small models both are
bound by Python and the prefetching thread barely overlaps them (measured: a 3-step estimate
of the larger of the two was 2.7x too short for a tiny U-Net).  The estimate only sets the
first plan: :meth:`~omeloc.learn.trainer.Trainer.run` re-fits the steps to the deadline at every
logged row from the loop's recent pace, so a machine that slows down (or speeds up) mid-run still
ends near the budget.
"""

from __future__ import annotations

import copy
import io
import math
import time
from dataclasses import dataclass
from typing import Any

import torch

from omeloc.engine.device import to_channels_last
from omeloc.learn.objectives import lr_factor

__all__ = ["FallingRate", "StepTiming", "fit_steps", "measure", "refit_steps"]

#: steps timed (after one untimed warm-up step) to estimate the step time
MEASURED_STEPS = 3


@dataclass(frozen=True)
class StepTiming:
    """Seconds measured before a budgeted run (see :func:`measure`)."""

    step: float
    """One training step, batch reading included (median of the timed steps)."""
    validation: float
    """One validation with its ``last.pt`` save and log write."""
    spent: float
    """Seconds the measurement itself took (part of the budget)."""

    def describe(self) -> str:
        return (
            f"{self.step:.3f} s/step, {self.validation:.2f} s/validation (measured over "
            f"{MEASURED_STEPS} steps)"
        )


def measure(trainer: Any, steps: int = MEASURED_STEPS) -> StepTiming:
    """Time ``steps`` training steps of ``trainer`` (a :class:`~omeloc.learn.trainer.Trainer`) and
    undo them.

    The batches are those the run will use first (batch ``i`` depends on ``(seed, i)`` only);
    the networks' weights, their normalization statistics and the optimizers' states are
    restored afterwards, so measuring does not change what the run learns.
    """
    t0 = time.perf_counter()
    objective, sampler, cfg = trainer.objective, trainer.sampler, trainer.cfg
    saved = copy.deepcopy(objective.state_dict())
    to_channels_last(objective.net, trainer.device)
    objective.net.train()
    reads, computes = [], []
    try:
        for i in range(steps + 1):  # step 0 warms up (allocations, kernels) and is not timed
            t_read = time.perf_counter()
            xb, yb = sampler.batch(trainer.start + i, cfg.batch_size)
            t_step = time.perf_counter()
            trainer.step(trainer.start + i, xb, yb, total=max(steps + 1, 2))
            _sync(trainer.device)
            if i:
                reads.append(t_step - t_read)
                computes.append(time.perf_counter() - t_step)
        t_val = time.perf_counter()
        trainer.validate()
        torch.save(objective.state_dict(), io.BytesIO())
        validation = time.perf_counter() - t_val
    finally:
        objective.load_state_dict(saved)
    return StepTiming(
        step=_median(reads) + _median(computes),
        validation=validation,
        spent=time.perf_counter() - t0,
    )


def fit_steps(
    seconds_left: float, timing: StepTiming, *, val_every: int | None = None, cap: int | None = None
) -> int:
    """The number of steps whose training and validations fit in ``seconds_left``.

    Validations: ten per run (the default interval), or one every ``val_every`` steps.  At
    least 1 (a budget already spent still trains one step); at most ``cap`` when given.
    """
    if val_every is None:
        steps = (seconds_left - 10 * timing.validation) / max(timing.step, 1e-6)
    else:
        steps = (seconds_left - timing.validation) / max(
            timing.step + timing.validation / val_every, 1e-6
        )
    steps = max(1, math.floor(steps))
    return min(steps, cap) if cap is not None else steps


def refit_steps(
    step: int, start: int, elapsed: float, seconds_left: float, cap: int | None = None
) -> int:
    """The total steps that end the run within ``seconds_left``, at the pace of steps ``start`` …
    ``step``.

    ``elapsed`` seconds were spent on those steps (validations included); the result is at
    least ``step`` (stop now) and at most ``cap``.
    """
    pace = elapsed / max(step - start, 1)
    total = step + max(0, math.floor(seconds_left / pace))
    return min(total, cap) if cap is not None else total


class FallingRate:
    """The learning-rate factor of a budgeted run, whose planned steps are re-fitted as it goes.

    :func:`~omeloc.learn.objectives.lr_factor` of the current plan, except that past the
    warm-up it never rises: a re-fit that stretches the run moves the cosine back, and the
    rate is then held until the schedule falls below it again.  (A rising rate mid-run undid
    learned structure: held-out r 0.78 → 0.64 after one such stretch, NF1 actin → ER.)
    """

    def __init__(self) -> None:
        self.ceiling: float | None = None

    def factor(self, step: int, steps: int, schedule: str) -> float:
        """The factor of 0-based ``step`` of a run now planned for ``steps`` steps."""
        f = lr_factor(step, steps, schedule)
        if self.ceiling is not None and f > self.ceiling:
            return self.ceiling
        if schedule != "constant" and step >= max(
            1, steps // 20
        ):  # past the warm-up: from here on it only falls
            self.ceiling = f
        return f


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
