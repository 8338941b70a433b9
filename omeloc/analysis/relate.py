"""``omeloc relate``: which proteins predict which — the seed study's proposed use.

For every ordered pair of channels (source → target) a small model is trained on the
training wells and scored on held-out wells by the Pearson r of its prediction against the
real target, beside the no-learning baseline (Pearson r of the raw source against the
target).  Functionally related proteins translate well; unrelated ones do not.  Nothing is
written into the plate: held-out predictions are computed in memory.
"""

from __future__ import annotations

import csv
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from omeloc.errors import InputError
from omeloc.ngff.plate import Plate, open_plate

__all__ = ["relate", "RelateResult", "relation_heatmap"]

logger = logging.getLogger(__name__)


@dataclass
class RelateResult:
    """The relationship matrix and where it was written."""

    channels: list[str]
    rows: list[dict]
    """One dict per ordered pair: ``source``, ``target``, ``pearson_r``, ``baseline_r``, ``gain``,
    ``structure_r``, ``baseline_structure_r``, ``checkpoint``, ``seconds``.  ``structure_r``
    (fine structure only) is the score that separates related from unrelated proteins: any model
    learns the cell footprint, which lifts the whole-field ``pearson_r`` of unrelated pairs too."""
    files: dict[str, Path] = field(default_factory=dict)

    def matrix(self, key: str = "pearson_r") -> np.ndarray:
        """``matrix[i, j]`` = ``key`` for source ``channels[i]`` → target ``channels[j]`` (NaN on the diagonal)."""
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
                for j in range(len(self.channels)))
            lines.append(s.ljust(width + 2) + cells)
        lines.append("held-out Pearson r of the trained model (no-learning baseline in brackets)")
        st = self.matrix("structure_r")
        lines.append("")
        lines.append(head)
        for i, s in enumerate(self.channels):
            if s not in trained:
                continue
            lines.append(s.ljust(width + 2) + "".join(
                "-".rjust(16) if i == j else f"{st[i, j]:.2f}".rjust(16) for j in range(len(self.channels))))
        lines.append("held-out structure r (fine detail: filaments, edges, adhesions; footprint removed)")
        return "\n".join(lines)


def heldout_scores(plate: Plate, wells: Sequence[str], ckpt_path: Path, level: int = 0,
                   device: str = "auto") -> dict[str, dict[str, float]]:
    """Held-out scores of a checkpoint, per target: its prediction vs the real target, and the raw source's.

    Every field of ``wells`` is predicted whole, in memory (nothing is written).  For each
    target channel of the checkpoint, returns the means over the fields of ``pearson_r`` and
    ``structure_r`` (:func:`omeloc.analysis.metrics.structure_r`: fine structure only, the cell
    footprint removed) of the model, and ``baseline_r`` and ``baseline_structure_r`` of the
    no-learning baseline (the first source image itself).
    """
    from omeloc.learn.checkpoint import CheckpointRef, load_checkpoint
    from omeloc.engine.inference import predict_array
    from omeloc.analysis.metrics import pearson_r, structure_r
    from omeloc.learn.normalization import denormalize, finite, normalize

    ckpt = load_checkpoint(ckpt_path)
    ref = CheckpointRef(ckpt_path)
    keys = ("pearson_r", "baseline_r", "structure_r", "baseline_structure_r")
    scores: dict[str, dict[str, list[float]]] = {t: {k: [] for k in keys} for t in ckpt.target}
    for well in wells:
        for img in plate.well(well).images:
            srcs = [np.asarray(img.channel(c, level).compute(), dtype=np.float32) for c in ckpt.source]
            x = np.stack([finite(normalize(a, ckpt.normalization[c])) for a, c in zip(srcs, ckpt.source)])
            y = predict_array(ref, x, tile=ckpt.tile, overlap=ckpt.overlap, device=device,
                              out_channels=len(ckpt.target)).compute()
            base = finite(srcs[0])
            for k, t in enumerate(ckpt.target):
                tru = np.asarray(img.channel(t, level).compute(), dtype=np.float32)
                pred = denormalize(y[k], ckpt.normalization[t])
                sc = scores[t]
                sc["pearson_r"].append(pearson_r(pred, tru))
                sc["baseline_r"].append(pearson_r(base, tru))
                sc["structure_r"].append(structure_r(pred, tru))
                sc["baseline_structure_r"].append(structure_r(base, tru))
    return {t: {k: float(np.nanmean(v)) if v else float("nan") for k, v in sc.items()} for t, sc in scores.items()}


def relate(
    plate: str | Path,
    channels: Sequence[str],
    *,
    out: str | Path = "relate",
    sources: Sequence[str] | None = None,
    val_wells: Sequence[str] | None = None,
    budget: int = 300,
    model: str = "unet",
    depth: int = 3,
    base_channels: int = 16,
    crop: int = 96,
    batch_size: int = 4,
    level: int = 0,
    seed: int = 0,
    device: str = "auto",
    joint: bool = False,
    progress: bool = False,
    on_pair: Callable[[dict], None] | None = None,
) -> RelateResult:
    """Train a small model for every ordered pair of channels and score it on held-out wells.

    Parameters
    ----------
    plate
        The plate (only read).
    channels
        Channel names; every ordered pair ``(a, b)``, ``a != b``, is trained.
    out
        Output folder: ``relate.csv`` (``source, target, pearson_r, baseline_r, gain``),
        ``relate.png`` (heat maps of both matrices) and one checkpoint per pair in ``models/``.
    sources
        Restrict the sources to these channels (default: all of ``channels``).
    val_wells
        Held-out wells; default every fourth well (at least one).
    budget
        Training steps per pair.
    model, depth, base_channels, crop, batch_size
        The small model trained for each pair and its crops (defaults: a 0.5 M-parameter U-Net,
        96-pixel crops, 4 per step: ~45 s per pair for 300 steps on 2 CPU cores).
    level
        Pyramid level to train and score on.
    seed
        Seed of every training run (the same for all pairs).
    device
        ``"auto"``, ``"cpu"``, ``"cuda"``, ``"mps"``.
    joint
        Train one model per source that predicts all other channels at once (a multi-output
        U-Net; ``len(sources)`` runs instead of ``len(sources) * (len(channels) - 1)``), and
        score each output.  Separate models (the default) are what the seed study did.
    progress
        Progress bars of the training runs.
    on_pair
        Called with each finished row.

    Returns
    -------
    RelateResult
    """
    from omeloc.learn.training import train

    opened = open_plate(plate)
    channels = list(dict.fromkeys(channels))
    if len(channels) < 2:
        raise InputError(f"Expected at least two channels to relate. Got {channels} instead.")
    for c in channels:
        opened.images[0].channel_index(c)  # raises ChannelNotFoundError with the list
    sources = list(sources) if sources else channels
    for s in sources:
        if s not in channels:
            raise InputError(f"Expected --sources among --channels ({', '.join(channels)}). Got {s!r} instead.")
    if budget < 1:
        raise InputError(f"Expected a budget of at least 1 training step per pair. Got {budget} instead.")
    wells = [w.path for w in opened.wells.values()]
    if val_wells is None:
        val = wells[3::4] or wells[-1:]
    else:
        val = [opened.well(w).path for w in val_wells]
    if len(val) >= len(wells):
        raise InputError(f"Expected some wells left for training. Got all {len(wells)} wells held out: "
                         f"pass fewer --val-wells.")
    out_dir = Path(out).expanduser().resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    jobs: list[tuple[str, list[str]]] = []
    for s in sources:
        targets = [t for t in channels if t != s]
        jobs.extend([(s, targets)] if joint else [(s, [t]) for t in targets])
    for s, targets in jobs:
        t0 = time.perf_counter()
        ckpt_dir = out_dir / "models" / f"{s}__{'+'.join(targets)}".replace("/", "_")
        trained = train(opened.path, s, targets, model=model, out=ckpt_dir, steps=budget, val_wells=val, crop=crop,
                        overwrite=True, batch_size=batch_size, level=level, seed=seed, device=device, depth=depth,
                        base_channels=base_channels, progress=progress)
        scores = heldout_scores(opened, val, Path(trained.checkpoint), level, device)
        seconds = (time.perf_counter() - t0) / len(targets)
        for t in targets:
            sc = scores[t]
            row = {"source": s, "target": t, "pearson_r": sc["pearson_r"], "baseline_r": sc["baseline_r"],
                   "gain": sc["pearson_r"] - sc["baseline_r"], "structure_r": sc["structure_r"],
                   "baseline_structure_r": sc["baseline_structure_r"],
                   "checkpoint": str(trained.checkpoint), "seconds": seconds}
            logger.info("%s -> %s: held-out r %.3f (baseline %.3f), structure r %.3f", s, t, sc["pearson_r"],
                        sc["baseline_r"], sc["structure_r"])
            rows.append(row)
            if on_pair is not None:
                on_pair(row)
    res = RelateResult(channels=channels, rows=rows)
    csv_path = out_dir / "relate.csv"
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["source", "target", "pearson_r", "baseline_r", "gain",
                                               "structure_r", "baseline_structure_r", "seconds", "checkpoint"])
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in row.items()})
    res.files["relate_csv"] = csv_path
    res.files["heatmap"] = relation_heatmap(res, out_dir / "relate.png")
    return res


def relation_heatmap(result: RelateResult, path: str | Path) -> Path:
    """Three heat maps side by side: held-out Pearson r, held-out structure r, and the baseline r."""
    from omeloc.analysis.figures import _new_figure, _save

    n = len(result.channels)
    panels = (("pearson_r", "trained model (held-out r)"),
              ("structure_r", "fine structure (held-out)"),
              ("baseline_r", "no learning: r(source, target)"))
    fig = _new_figure(len(panels) * (1.2 + 0.7 * n), 1.4 + 0.7 * n, 150)
    for k, (key, title) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), k + 1)
        m = result.matrix(key)
        im = ax.imshow(np.ma.masked_invalid(m), vmin=-0.2 if np.nanmin(m) < 0 else 0, vmax=1, cmap="viridis")
        ax.set_xticks(range(n), result.channels, rotation=45, ha="right")
        ax.set_yticks(range(n), result.channels)
        ax.set_xlabel("target")
        ax.set_ylabel("source")
        ax.set_title(title, fontsize=9)
        for i in range(n):
            for j in range(n):
                if np.isfinite(m[i, j]):
                    ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=7,
                            color="white" if m[i, j] < 0.6 else "black")
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    saved, _ = _save(fig, path, 150)
    return saved
