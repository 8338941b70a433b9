"""``omeloc relate``: which proteins predict which — the seed study's proposed use.

For every ordered pair of channels (source → target) a small model is trained on the
training wells and scored on held-out wells (:mod:`omeloc.analysis.relate`: the scores, the
table and the heat maps).  Functionally related proteins translate well; unrelated ones do
not.  Nothing is written into the plate.
"""

from __future__ import annotations

import csv
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from omeloc.analysis.relate import RelateResult, heldout_scores, relation_heatmap
from omeloc.config import TrainConfig, resolve
from omeloc.errors import InputError
from omeloc.ngff.plate import Plate, open_plate

__all__ = ["RELATE_CONFIG", "RELATE_STEPS", "RelateResult", "relate"]

logger = logging.getLogger(__name__)


#: The small model :func:`relate` trains for each pair unless told otherwise: a 0.5 M-parameter
#: U-Net on 96-pixel crops, 4 per step, :data:`RELATE_STEPS` steps (~45 s per pair on 2 CPU
#: cores) unless a number of steps (``budget``) or of minutes (``minutes``) is given.
RELATE_CONFIG = TrainConfig(depth=3, base_channels=16, crop=96, batch_size=4)
RELATE_STEPS = 300


def relate(
    plate: str | Path,
    channels: Sequence[str],
    config: TrainConfig | None = None,
    *,
    out: str | Path = "relate",
    sources: Sequence[str] | None = None,
    budget: int | None = None,
    joint: bool = False,
    progress: bool = False,
    on_pair: Callable[[dict], None] | None = None,
    **overrides: Any,
) -> RelateResult:
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
        Any :class:`~omeloc.config.TrainConfig` field (``val_wells``, ``model``, ``depth``,
        ``crop``, ``seed``, ...). ``minutes=M`` trains each model for ``M`` minutes (the same rule
        as ``omeloc train --minutes``: steps and schedule fitted to the measured step time), so a
        run takes about ``M`` times the number of models, plus the held-out scoring of each.

    Returns
    -------
    RelateResult
    """
    # Over 60 lines only through its parameter docs (the public API's reference); the body is ~25.
    opened = open_plate(plate)
    channels, sources = _check_channels(opened, channels, sources)
    if budget is not None:
        if budget < 1:
            raise InputError(
                f"Expected a budget of at least 1 training step per pair. Got {budget} instead."
            )
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
        for group in [targets] if joint else [[t] for t in targets]:
            for row in _relate_pair(opened, s, group, cfg, out_dir, progress):
                rows.append(row)
                if on_pair is not None:
                    on_pair(row)
    res = RelateResult(channels=channels, rows=rows)
    res.files["relate_csv"] = _write_csv(rows, out_dir / "relate.csv")
    res.files["heatmap"] = relation_heatmap(res, out_dir / "relate.png")
    return res


def _check_channels(
    opened: Plate, channels: Sequence[str], sources: Sequence[str] | None
) -> tuple[list[str], list[str]]:
    """Channels without repeats (at least two, all in the plate) and the sources among them."""
    channels = list(dict.fromkeys(channels))
    if len(channels) < 2:
        raise InputError(f"Expected at least two channels to relate. Got {channels} instead.")
    for c in channels:
        opened.images[0].channel_index(c)  # raises ChannelNotFoundError with the list
    sources = list(sources) if sources else channels
    for s in sources:
        if s not in channels:
            raise InputError(
                f"Expected --sources among --channels ({', '.join(channels)}). Got {s!r} instead."
            )
    return channels, sources


def _val_wells(opened: Plate, names: Sequence[str] | None) -> list[str]:
    """Paths of the held-out wells: those named, else
    :func:`~omeloc.learn.split.default_val_wells`."""
    from omeloc.learn.split import check_wells_left, default_val_wells

    wells = [w.path for w in opened.wells.values()]
    val = default_val_wells(wells) if names is None else [opened.well(w).path for w in names]
    check_wells_left(len(val), len(wells))
    return val


def _relate_pair(
    opened: Plate, source: str, targets: list[str], cfg: TrainConfig, out_dir: Path, progress: bool
) -> list[dict]:
    """Train ``source → targets`` on the training wells; one row per target, scored on
    ``cfg.val_wells``."""
    from omeloc.learn.training import train

    t0 = time.perf_counter()
    ckpt_dir = out_dir / "models" / f"{source}__{'+'.join(targets)}".replace("/", "_")
    trained = train(
        opened.path, source, targets, cfg, out=ckpt_dir, overwrite=True, progress=progress
    )
    scores = heldout_scores(
        opened, list(cfg.val_wells), Path(trained.checkpoint), cfg.level, cfg.device
    )
    seconds = (time.perf_counter() - t0) / len(targets)
    rows = []
    for t in targets:
        sc = scores[t]
        rows.append(
            {
                "source": source,
                "target": t,
                "pearson_r": sc["pearson_r"],
                "baseline_r": sc["baseline_r"],
                "gain": sc["pearson_r"] - sc["baseline_r"],
                "structure_r": sc["structure_r"],
                "baseline_structure_r": sc["baseline_structure_r"],
                "foreground_r": sc["foreground_r"],
                "baseline_foreground_r": sc["baseline_foreground_r"],
                "checkpoint": str(trained.checkpoint),
                "seconds": seconds,
            }
        )
        logger.info(
            "%s -> %s: held-out r %.3f (baseline %.3f), structure r %.3f",
            source,
            t,
            sc["pearson_r"],
            sc["baseline_r"],
            sc["structure_r"],
        )
    return rows


def _write_csv(rows: list[dict], path: Path) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(
            f,
            fieldnames=[
                "source",
                "target",
                "pearson_r",
                "baseline_r",
                "gain",
                "structure_r",
                "baseline_structure_r",
                "foreground_r",
                "baseline_foreground_r",
                "seconds",
                "checkpoint",
            ],
        )
        writer.writeheader()
        for row in rows:
            writer.writerow(
                {k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in row.items()}
            )
    return path
