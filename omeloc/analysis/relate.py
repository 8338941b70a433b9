"""The relationship matrix of ``omeloc relate``: held-out scores, the table and the heat maps.

For every ordered pair of channels (source → target) :func:`omeloc.jobs.relate.relate` trains
a small model; this module scores it on held-out wells by the Pearson r of its prediction
against the real target, beside the no-learning baseline (Pearson r of the raw source
against the target), and shows the matrix.  Nothing is written into the plate: held-out
predictions are computed in memory.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from omeloc.ngff.plate import Image, Plate

if TYPE_CHECKING:
    from omeloc.learn.stain import VirtualStain

__all__ = ["RelateResult", "heldout_scores", "relation_heatmap"]

logger = logging.getLogger(__name__)


@dataclass
class RelateResult:
    """The relationship matrix and where it was written."""

    channels: list[str]
    rows: list[dict]
    """One dict per ordered pair: ``source``, ``target``, ``pearson_r``, ``baseline_r``, ``gain``,
    ``structure_r``, ``baseline_structure_r``, ``foreground_r``, ``baseline_foreground_r``,
    ``checkpoint``, ``seconds``.  ``structure_r``
    (fine structure only) is the score that separates related from unrelated proteins: any model
    learns the cell footprint, which lifts the whole-field ``pearson_r`` of unrelated pairs too."""
    files: dict[str, Path] = field(default_factory=dict)

    def matrix(self, key: str = "pearson_r") -> np.ndarray:
        """``matrix[i, j]`` = ``key`` for source ``channels[i]`` → target ``channels[j]`` (NaN on
        the diagonal)."""
        n = len(self.channels)
        m = np.full((n, n), np.nan)
        for r in self.rows:
            if r["source"] in self.channels and r["target"] in self.channels:
                m[self.channels.index(r["source"]), self.channels.index(r["target"])] = r[key]
        return m

    def table(self) -> str:
        """The matrix as text (rows: source, columns: target)."""
        m, b = self.matrix(), self.matrix("baseline_r")
        width = max(len(c) for c in self.channels) + 2
        head = "source \\ target".ljust(width + 2) + "".join(c.rjust(16) for c in self.channels)
        lines = [head]
        trained = {r["source"] for r in self.rows}
        for i, s in enumerate(self.channels):
            if s not in trained:
                continue
            cells = "".join(
                "-".rjust(16) if i == j else f"{m[i, j]:.2f} ({b[i, j]:+.2f})".rjust(16)
                for j in range(len(self.channels))
            )
            lines.append(s.ljust(width + 2) + cells)
        lines.append("held-out Pearson r of the trained model (no-learning baseline in brackets)")
        st = self.matrix("structure_r")
        lines.append("")
        lines.append(head)
        for i, s in enumerate(self.channels):
            if s not in trained:
                continue
            lines.append(
                s.ljust(width + 2)
                + "".join(
                    "-".rjust(16) if i == j else f"{st[i, j]:.2f}".rjust(16)
                    for j in range(len(self.channels))
                )
            )
        lines.append(
            "held-out structure r (fine detail: filaments, edges, adhesions; footprint removed)"
        )
        return "\n".join(lines)


def heldout_scores(
    plate: Plate,
    wells: Sequence[str],
    ckpt_path: Path,
    level: int = 0,
    device: str = "auto",
    tta: bool = False,
) -> dict[str, dict[str, float]]:
    """Held-out scores of a checkpoint, per target: its prediction vs the real target, and the raw
    source's.

    Every field of ``wells`` is predicted whole, in memory (nothing is written).  For each
    target channel of the checkpoint, returns the means over the fields of ``pearson_r``,
    ``structure_r`` (:func:`omeloc.analysis.metrics.structure_r`: fine structure only, the cell
    footprint removed) and ``foreground_r`` (Pearson r over the target's Otsu foreground:
    :func:`omeloc.analysis.metrics.foreground_mask`) of the model, and ``baseline_r``,
    ``baseline_structure_r`` and ``baseline_foreground_r`` of the no-learning baseline (the
    first source image itself).  ``tta``: predict with test-time augmentation (the mean of the 8
    flips/rotations of each tile).
    """
    from omeloc.learn.stain import VirtualStain

    stain = VirtualStain(ckpt_path)
    scores: dict[str, dict[str, list[float]]] = {t: {k: [] for k in _SCORES} for t in stain.target}
    for well in wells:
        for img in plate.well(well).images:
            for t, field_scores in _field_scores(stain, img, level, device, tta).items():
                for k, v in field_scores.items():
                    scores[t][k].append(v)
    return {
        t: {k: float(np.nanmean(v)) if v else float("nan") for k, v in sc.items()}
        for t, sc in scores.items()
    }


_SCORES = (
    "pearson_r",
    "baseline_r",
    "structure_r",
    "baseline_structure_r",
    "foreground_r",
    "baseline_foreground_r",
)


def _field_scores(
    stain: VirtualStain, img: Image, level: int, device: str, tta: bool = False
) -> dict[str, dict[str, float]]:
    """The scores of one field (whole, in memory) for each target of ``stain``."""
    from omeloc.analysis.metrics import foreground_mask, pearson_r, structure_r
    from omeloc.learn.normalization import finite

    srcs = [np.asarray(img.channel(c, level).compute(), dtype=np.float32) for c in stain.source]
    pred = stain(np.stack(srcs, axis=-3), device=device, tta=tta)
    base = finite(srcs[0])
    out = {}
    for k, t in enumerate(stain.target):
        tru = np.asarray(img.channel(t, level).compute(), dtype=np.float32)
        p, fg = pred[..., k, :, :], foreground_mask(tru)
        out[t] = {
            "pearson_r": pearson_r(p, tru),
            "baseline_r": pearson_r(base, tru),
            "structure_r": structure_r(p, tru),
            "baseline_structure_r": structure_r(base, tru),
            "foreground_r": pearson_r(p, tru, fg),
            "baseline_foreground_r": pearson_r(base, tru, fg),
        }
    return out


def relation_heatmap(result: RelateResult, path: str | Path) -> Path:
    """Three heat maps side by side: held-out Pearson r, held-out structure r, and the baseline
    r."""
    from omeloc.analysis.figures import new_figure, save_figure

    n = len(result.channels)
    panels = (
        ("pearson_r", "trained model (held-out r)"),
        ("structure_r", "fine structure (held-out)"),
        ("baseline_r", "no learning: r(source, target)"),
    )
    fig = new_figure(len(panels) * (1.2 + 0.7 * n), 1.4 + 0.7 * n, 150)
    for k, (key, title) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), k + 1)
        m = result.matrix(key)
        im = ax.imshow(
            np.ma.masked_invalid(m), vmin=-0.2 if np.nanmin(m) < 0 else 0, vmax=1, cmap="viridis"
        )
        ax.set_xticks(range(n), result.channels, rotation=45, ha="right")
        ax.set_yticks(range(n), result.channels)
        ax.set_xlabel("target")
        ax.set_ylabel("source")
        ax.set_title(title, fontsize=9)
        for i in range(n):
            for j in range(n):
                if np.isfinite(m[i, j]):
                    ax.text(
                        j,
                        i,
                        f"{m[i, j]:.2f}",
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if m[i, j] < 0.6 else "black",
                    )
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    saved, _ = save_figure(fig, path, 150)
    return saved
