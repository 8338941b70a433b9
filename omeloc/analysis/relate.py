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
from typing import TYPE_CHECKING, Any

import numpy as np

from omeloc.config import TrainConfig, resolve
from omeloc.errors import InputError
from omeloc.ngff.plate import Image, Plate, open_plate

if TYPE_CHECKING:
    from omeloc.learn.stain import VirtualStain

__all__ = ["RELATE_CONFIG", "RELATE_STEPS", "RelateResult", "heldout_scores", "relate", "relation_heatmap"]

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
                   device: str = "auto", tta: bool = False) -> dict[str, dict[str, float]]:
    """Held-out scores of a checkpoint, per target: its prediction vs the real target, and the raw source's.

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
    return {t: {k: float(np.nanmean(v)) if v else float("nan") for k, v in sc.items()} for t, sc in scores.items()}


_SCORES = ("pearson_r", "baseline_r", "structure_r", "baseline_structure_r", "foreground_r", "baseline_foreground_r")


def _field_scores(stain: VirtualStain, img: Image, level: int, device: str,
                  tta: bool = False) -> dict[str, dict[str, float]]:
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
        out[t] = {"pearson_r": pearson_r(p, tru), "baseline_r": pearson_r(base, tru),
                  "structure_r": structure_r(p, tru), "baseline_structure_r": structure_r(base, tru),
                  "foreground_r": pearson_r(p, tru, fg), "baseline_foreground_r": pearson_r(base, tru, fg)}
    return out


#: The small model :func:`relate` trains for each pair unless told otherwise: a 0.5 M-parameter
#: U-Net on 96-pixel crops, 4 per step, :data:`RELATE_STEPS` steps (~45 s per pair on 2 CPU
#: cores) unless a number of steps (``budget``) or of minutes (``minutes``) is given.
RELATE_CONFIG = TrainConfig(depth=3, base_channels=16, crop=96, batch_size=4)
RELATE_STEPS = 300


def relate(plate: str | Path, channels: Sequence[str], config: TrainConfig | None = None, *,
           out: str | Path = "relate", sources: Sequence[str] | None = None, budget: int | None = None,
           joint: bool = False, progress: bool = False, on_pair: Callable[[dict], None] | None = None,
           **overrides: Any) -> RelateResult:
    """Train a small model for every ordered pair of channels and score it on held-out wells.

    Parameters
    ----------
    plate
        The plate (only read).
    channels
        Channel names; every ordered pair ``(a, b)``, ``a != b``, is trained.
    config
        The training of each pair (:class:`~omeloc.config.TrainConfig`); default
        :data:`RELATE_CONFIG`.  Its ``val_wells`` (default every fourth well, at least one) are
        held out, its ``level`` and ``device`` also serve for scoring.
    out
        Output folder: ``relate.csv`` (``source, target, pearson_r, baseline_r, gain``),
        ``relate.png`` (heat maps of both matrices) and one checkpoint per pair in ``models/``.
    sources
        Restrict the sources to these channels (default: all of ``channels``).
    budget
        Training steps per pair (the configuration's ``steps``; :data:`RELATE_STEPS` unless
        ``minutes`` is given, where it is the most steps a pair may take).
    joint
        Train one model per source that predicts all other channels at once (a multi-output
        U-Net; ``len(sources)`` runs instead of ``len(sources) * (len(channels) - 1)``), and
        score each output.  Separate models (the default) are what the seed study did.
    progress
        Progress bars of the training runs.
    on_pair
        Called with each finished row.
    **overrides
        Any :class:`~omeloc.config.TrainConfig` field (``val_wells``, ``model``, ``depth``, ``crop``, ``seed``, ...).
        ``minutes=M`` trains each model for ``M`` minutes (the same rule as ``omeloc train
        --minutes``: steps and schedule fitted to the measured step time), so a run takes about
        ``M`` times the number of models, plus the held-out scoring of each.

    Returns
    -------
    RelateResult
    """
    # Over 60 lines only through its parameter docs (the public API's reference); the body is ~25.
    opened = open_plate(plate)
    channels, sources = _check_channels(opened, channels, sources)
    if budget is not None:
        if budget < 1:
            raise InputError(f"Expected a budget of at least 1 training step per pair. Got {budget} instead.")
        overrides = {**overrides, "steps": budget}
    cfg = resolve(TrainConfig, RELATE_CONFIG if config is None else config, overrides)
    cfg = cfg.replace(val_wells=tuple(_val_wells(opened, cfg.val_wells)))
    if cfg.steps is None and cfg.minutes is None:
        cfg = cfg.replace(steps=RELATE_STEPS)
    out_dir = Path(out).expanduser().resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for s in sources:
        targets = [t for t in channels if t != s]
        for group in ([targets] if joint else [[t] for t in targets]):
            for row in _relate_pair(opened, s, group, cfg, out_dir, progress):
                rows.append(row)
                if on_pair is not None:
                    on_pair(row)
    res = RelateResult(channels=channels, rows=rows)
    res.files["relate_csv"] = _write_csv(rows, out_dir / "relate.csv")
    res.files["heatmap"] = relation_heatmap(res, out_dir / "relate.png")
    return res


def _check_channels(opened: Plate, channels: Sequence[str],
                    sources: Sequence[str] | None) -> tuple[list[str], list[str]]:
    """Channels without repeats (at least two, all in the plate) and the sources among them."""
    channels = list(dict.fromkeys(channels))
    if len(channels) < 2:
        raise InputError(f"Expected at least two channels to relate. Got {channels} instead.")
    for c in channels:
        opened.images[0].channel_index(c)  # raises ChannelNotFoundError with the list
    sources = list(sources) if sources else channels
    for s in sources:
        if s not in channels:
            raise InputError(f"Expected --sources among --channels ({', '.join(channels)}). Got {s!r} instead.")
    return channels, sources


def _val_wells(opened: Plate, names: Sequence[str] | None) -> list[str]:
    """Paths of the held-out wells: those named, else :func:`~omeloc.learn.split.default_val_wells`."""
    from omeloc.learn.split import check_wells_left, default_val_wells

    wells = [w.path for w in opened.wells.values()]
    val = default_val_wells(wells) if names is None else [opened.well(w).path for w in names]
    check_wells_left(len(val), len(wells))
    return val


def _relate_pair(opened: Plate, source: str, targets: list[str], cfg: TrainConfig, out_dir: Path,
                 progress: bool) -> list[dict]:
    """Train ``source → targets`` on the training wells; one row per target, scored on ``cfg.val_wells``."""
    from omeloc.learn.training import train

    t0 = time.perf_counter()
    ckpt_dir = out_dir / "models" / f"{source}__{'+'.join(targets)}".replace("/", "_")
    trained = train(opened.path, source, targets, cfg, out=ckpt_dir, overwrite=True, progress=progress)
    scores = heldout_scores(opened, list(cfg.val_wells), Path(trained.checkpoint), cfg.level, cfg.device)
    seconds = (time.perf_counter() - t0) / len(targets)
    rows = []
    for t in targets:
        sc = scores[t]
        rows.append({"source": source, "target": t, "pearson_r": sc["pearson_r"], "baseline_r": sc["baseline_r"],
                     "gain": sc["pearson_r"] - sc["baseline_r"], "structure_r": sc["structure_r"],
                     "baseline_structure_r": sc["baseline_structure_r"], "foreground_r": sc["foreground_r"],
                     "baseline_foreground_r": sc["baseline_foreground_r"],
                     "checkpoint": str(trained.checkpoint), "seconds": seconds})
        logger.info("%s -> %s: held-out r %.3f (baseline %.3f), structure r %.3f", source, t, sc["pearson_r"],
                    sc["baseline_r"], sc["structure_r"])
    return rows


def _write_csv(rows: list[dict], path: Path) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["source", "target", "pearson_r", "baseline_r", "gain",
                                               "structure_r", "baseline_structure_r", "foreground_r",
                                               "baseline_foreground_r", "seconds", "checkpoint"])
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in row.items()})
    return path


def relation_heatmap(result: RelateResult, path: str | Path) -> Path:
    """Three heat maps side by side: held-out Pearson r, held-out structure r, and the baseline r."""
    from omeloc.analysis.figures import new_figure, save_figure

    n = len(result.channels)
    panels = (("pearson_r", "trained model (held-out r)"),
              ("structure_r", "fine structure (held-out)"),
              ("baseline_r", "no learning: r(source, target)"))
    fig = new_figure(len(panels) * (1.2 + 0.7 * n), 1.4 + 0.7 * n, 150)
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
    saved, _ = save_figure(fig, path, 150)
    return saved
