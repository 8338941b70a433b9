"""The training log: one CSV row per logged step, and the learning-curve figure drawn from it.

The CSV is rewritten whole (through a temporary file and a rename) each time the training
state is saved, so the log on disk always matches ``last.pt``: a resumed run keeps the rows up
to the step it resumes from (:meth:`TrainLog.resume`) and appends after them.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["CURVES_FILE", "LOG_FIELDS", "LOG_FILE", "TrainLog", "write_curves"]

LOG_FILE = "train_log.csv"
CURVES_FILE = "curves.png"
LOG_FIELDS = [
    "step",
    "loss",
    "l1",
    "gan",
    "d_loss",
    "val_l1",
    "val_pearson_r",
    "seconds",
    "val_structure_r",
]


class TrainLog:
    """Rows of the training log (dicts keyed by :data:`LOG_FIELDS`; ``""`` where a value is absent).

    Parameters
    ----------
    path
        The CSV file (``DIR/train_log.csv``).
    rows
        Rows logged so far.
    """

    def __init__(self, path: str | Path, rows: list[dict[str, Any]] | None = None) -> None:
        self.path = Path(path)
        self.rows: list[dict[str, Any]] = list(rows or [])

    @classmethod
    def resume(cls, path: str | Path, upto: int) -> TrainLog:
        """The log at ``path`` with the rows of steps ``<= upto`` (empty if there is no file)."""
        path = Path(path)
        if not path.exists():
            return cls(path)
        with path.open() as fh:
            rows = [r for r in csv.DictReader(fh) if int(r["step"]) <= upto]
        for r in rows:
            for k, v in r.items():
                r[k] = (float(v) if k != "step" else int(v)) if v not in ("", None) else ""
        return cls(path, rows)

    def append(self, row: Mapping[str, Any]) -> None:
        """Add one row."""
        self.rows.append(dict(row))

    def write(self) -> Path:
        """Write every row to :attr:`path`, atomically."""
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with tmp.open("w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=LOG_FIELDS)
            w.writeheader()
            for r in self.rows:
                w.writerow({k: r.get(k, "") for k in LOG_FIELDS})
        os.replace(tmp, self.path)
        return self.path


def write_curves(
    rows: list[dict[str, Any]], path: str | Path, title: str, baseline: float | None = None
) -> Path | None:
    """Learning curves (train and validation L1, validation Pearson r) as a PNG; ``None`` without
    matplotlib.

    ``baseline``: the no-learning baseline's validation Pearson r, drawn as a dashed line.
    """
    try:
        from omeloc.analysis.figures import new_figure, save_figure
    except ImportError:  # pragma: no cover - matplotlib is a dependency
        return None
    fig = new_figure(8, 3.2, 110)
    ax1, ax2 = fig.subplots(1, 2)
    steps = [r["step"] for r in rows]
    ax1.plot(steps, [r["l1"] for r in rows], lw=1, label="train L1")
    val = [
        (r["step"], r["val_l1"], r["val_pearson_r"])
        for r in rows
        if r.get("val_l1") not in (None, "")
    ]
    if val:
        ax1.plot([v[0] for v in val], [v[1] for v in val], "o-", ms=3, label="validation L1")
        ax2.plot([v[0] for v in val], [v[2] for v in val], "o-", ms=3, color="C2")
    if baseline is not None and math.isfinite(baseline):
        ax2.axhline(
            baseline, color="C3", ls="--", lw=1.2, label=f"no-learning baseline {baseline:.3f}"
        )
        ax2.legend(frameon=False, loc="lower right")
    ax1.set_xlabel("step")
    ax1.set_ylabel("L1 (normalized units)")
    ax1.legend(frameon=False)
    ax2.set_xlabel("step")
    ax2.set_ylabel("validation Pearson r")
    ax2.set_ylim(-0.1, 1.03)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path, 110)[0]
