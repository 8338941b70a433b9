"""Evaluate a virtual channel against the real one, field by field, over a plate.

:func:`evaluate` reads one field at a time (both channels at one pyramid level), scores
it with :func:`omeloc.analysis.metrics.field_metrics`, and writes, into an output folder outside
the plate (and, with ``tables=``, as tables into the plate):

- ``metrics.csv`` — one row per field: ``well``, ``row``, ``column``, ``field``, ``path``,
  ``split`` (``train``, ``validation`` or ``unseen`` by the checkpoint's split, see
  :mod:`omeloc.analysis.training_split`; ``unknown`` without a checkpoint), every metric of
  :data:`omeloc.analysis.metrics.METRIC_NAMES`, and ``baseline_<metric>``: the same metric for
  the no-learning baseline (the source channel itself, rescaled to the truth's mean and
  standard deviation in each field).  ``pearson_r``, ``ssim``,
  ``psnr``, ``nrmse``, ``mae`` are on the whole field; the ``*_fg`` columns on the
  foreground (truth above Otsu's threshold, by default); ``noise_ceiling`` is the Pearson
  r ceiling of the truth field (Ounkomol et al. 2018) and ``pearson_r_rel`` r divided by it;
  both are NaN ("not estimable") when the estimated pixel noise is under
  :data:`CEILING_MIN_NOISE` of the field's variance: the ceiling would read 1.000 and says
  nothing (real images' errors are focus, illumination and biology, not pixel noise).
- ``wells.csv`` — one row per well: the mean of each metric over the well's fields,
  ``n_fields``, and the screening readout of the chosen metric (``z``, ``flag``,
  ``control``; see :mod:`omeloc.analysis.screening`).
- ``summary.json`` — settings, means per split (held-out wells first) and plate-wide,
  flagged wells, the files written.
- ``heatmap_<metric>.png`` — the chosen metric per well, laid out as the plate, with each
  well's value printed and the held-out (validation) wells outlined.
- ``montage.png`` — input | virtual | real | difference for selected wells (their first
  field).

Memory: one field (two channels, plus a few float64 work arrays of the same size) at a
time, whatever the plate size; pick a coarser ``level`` for very large fields.
"""

from __future__ import annotations

import argparse
import csv
import difflib
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask
import numpy as np

from omeloc.analysis.figures import montage, plate_heatmap
from omeloc.analysis.metrics import METRIC_NAMES, field_metrics, summarize
from omeloc.analysis.screening import screen
from omeloc.analysis.segmentation import SEGMENT_METRICS
from omeloc.analysis.training_split import SPLITS, TrainingSplit, read_training_split
from omeloc.config import Config, csv_list, option, resolve
from omeloc.errors import InputError
from omeloc.ngff.plate import Image, Plate, open_plate
from omeloc.progress import Progress, ProgressArg
from omeloc.writeback.tables import write_result_tables

__all__ = [
    "evaluate",
    "EvaluateConfig",
    "EvaluationResult",
    "parse_foreground",
    "source_channel_from_provenance",
]

logger = logging.getLogger(__name__)

_FIELD_KEYS = ("well", "row", "column", "field", "path", "split")

#: Metrics scored for the no-learning baseline too (as ``baseline_<metric>``).
BASELINE_METRICS = (
    "pearson_r",
    "ssim",
    "psnr",
    "nrmse",
    "mae",
    "pearson_r_fg",
    "ssim_fg",
    "nrmse_fg",
    "mae_fg",
    "structure_r",
)

#: Below this fraction of the truth's variance, the estimated pixel noise makes no ceiling:
#: it would be above 0.995 and read as 1.000 (see the module docstring).
CEILING_MIN_NOISE = 0.01

NOISE_CEILING_HELP = (
    "the highest Pearson r a perfect prediction could reach given the truth's pixel noise, "
    "1/sqrt(1 + var_noise/(var_truth - var_noise)) (Ounkomol et al. 2018), var_noise by "
    "Immerkaer's estimator; 'not estimable' where that noise is under 1%% of the field's variance "
    "(real images: their errors are not pixel noise)"
)


@dataclass(frozen=True)
class EvaluationResult:
    """What :func:`evaluate` measured and wrote.

    Attributes
    ----------
    fields : list of dict
        One row per field (the rows of ``metrics.csv``).
    wells : list of dict
        One row per well (the rows of ``wells.csv``).
    summary : dict
        The content of ``summary.json``.
    files : dict of str to Path
        ``metrics_csv``, ``wells_csv``, ``summary_json``, and ``heatmap`` / ``montage``
        when drawn.
    """

    fields: list[dict[str, Any]]
    wells: list[dict[str, Any]]
    summary: dict[str, Any]
    files: dict[str, Path] = field(default_factory=dict)

    def column(self, name: str, table: str = "fields") -> list[Any]:
        """One column of the per-field (``table="fields"``) or per-well table."""
        rows = self.fields if table == "fields" else self.wells
        return [r.get(name) for r in rows]

    @property
    def flagged(self) -> list[str]:
        """Wells whose screening z-score passed the threshold."""
        return [r["well"] for r in self.wells if r.get("flag")]


def source_channel_from_provenance(image: Image, channel: str) -> str | None:
    """The source channel recorded for a virtual channel, or ``None``.

    Reads ``attrs["omeloc"]["channels"][channel]["source_channels"]`` (a name or a list of
    names; the first is returned), as written by :func:`omeloc.writeback.protocol.add_channel`.
    """
    record = (image.attrs.get("omeloc") or {}).get("channels", {}).get(channel) or {}
    src = record.get("source_channels") if isinstance(record, Mapping) else None
    if isinstance(src, str):
        return src or None
    if isinstance(src, Sequence) and src:
        return str(src[0])
    return None


def parse_foreground(value: str) -> str | float:
    """``--foreground``: ``"otsu"`` or a number.

    Raises
    ------
    argparse.ArgumentTypeError
        Neither ``"otsu"`` nor a number (argparse shows the message).
    """
    if value == "otsu":
        return value
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'otsu' or a number, got {value!r}") from None


def _check_metric(metric: str) -> str:
    if metric in METRIC_NAMES + SEGMENT_METRICS:
        return metric
    close = difflib.get_close_matches(metric, METRIC_NAMES + SEGMENT_METRICS, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise InputError(
        f"Expected a metric among {', '.join(METRIC_NAMES)}. Got {metric!r} instead.{hint}"
    )


@dataclass(frozen=True)
class EvaluateConfig(Config):
    """What :func:`evaluate` scores and how it reads the result (``omeloc evaluate``).

    Attributes
    ----------
    level : int
        Pyramid level to score (0 = full resolution).
    wells : tuple of str, optional
        Wells to evaluate (``"B3"`` or ``"B/3"``); default all.
    source : str, optional
        The input channel shown in montages; default the virtual channel's provenance
        (``attrs["omeloc"]["channels"][pred]["source_channels"]``), else no input column.
    metric : str
        Metric for the heat map, the montage picks and the screening z-score.
    montage_wells : tuple of str, optional
        Wells to show in ``montage.png``; default the worst, median and best well by
        ``metric``; an empty tuple draws no montage.
    control_wells : tuple of str, optional
        Control wells for the robust z-score; default all evaluated wells.
    foreground : "otsu" or float
        Foreground of the truth for the ``*_fg`` metrics (see
        :func:`omeloc.analysis.metrics.foreground_mask`).
    noise_ceiling : bool
        Estimate the Pearson r noise ceiling of each truth field (:data:`NOISE_CEILING_HELP`).
    model : str, optional
        The checkpoint whose train / validation wells label the ``split`` column; default the
        one the virtual channel's provenance names (``model_path``), when it can be found.
    z_threshold : float
        Flag wells with ``|z| > z_threshold``.
    segment : {None, "nuclei"}
        Also segment nuclei on both channels (:mod:`omeloc.analysis.segmentation`) and score
        them: the ``nuclei_*`` columns (count error, Dice, F1 at IoU 0.5), a heat map of
        ``nuclei_f1``; needs ``omeloc[segment]``.
    """

    level: int = option(0, "pyramid level")
    wells: tuple[str, ...] | None = option(
        None, "wells to evaluate (default: all)", parse=csv_list, metavar="B2,B3"
    )
    source: str | None = option(
        None,
        "input channel: shown in montages, and scored as the no-learning "
        "baseline (default: from provenance)",
    )
    metric: str = option(
        "pearson_r", "metric for heat map and z-scores", choices=METRIC_NAMES + SEGMENT_METRICS
    )
    montage_wells: tuple[str, ...] | None = option(
        None,
        "wells shown in the montage (default: worst, median, best)",
        parse=csv_list,
        metavar="B2,C3",
    )
    control_wells: tuple[str, ...] | None = option(
        None,
        "reference wells for the screening z-score (default: all wells)",
        parse=csv_list,
        metavar="B2,B3",
    )
    foreground: str | float = option(
        "otsu", "'otsu' or an intensity threshold", parse=parse_foreground
    )
    noise_ceiling: bool = option(True, "estimate the noise ceiling: " + NOISE_CEILING_HELP)
    z_threshold: float = option(3.0, "flag wells whose |z| passes this")
    segment: str | None = option(
        None,
        "segment objects on both channels and score them (count error, Dice, F1 at IoU 0.5)",
        choices=("nuclei",),
    )
    model: str | None = option(
        None,
        "checkpoint whose train/validation wells mark the split column "
        "(default: the one the virtual channel's provenance names)",
    )

    def validate(self) -> None:
        # not super().validate(): an unknown metric gets its "did you mean" message here
        _check_metric(self.metric)
        if self.segment not in (None, "nuclei"):
            raise InputError(f"Expected --segment nuclei. Got {self.segment!r} instead.")
        if self.metric in SEGMENT_METRICS and self.segment is None:
            raise InputError(
                f"Metric {self.metric!r} needs segmentation scores: add --segment nuclei."
            )


def _check_out(plate: Plate, out: str | Path) -> Path:
    out_p = Path(out).expanduser().resolve()
    if "://" not in plate.path:
        root = Path(plate.path).expanduser().resolve()
        if out_p == root or root in out_p.parents:
            raise InputError(
                f"Expected an output folder outside the plate. Got {out_p} inside {root} instead. "
                f"Evaluation never writes into the plate: pick another --out."
            )
    if out_p.exists() and not out_p.is_dir():
        raise InputError(f"Expected --out to be a folder. Got the file {out_p} instead.")
    return out_p


def _well_paths(plate: Plate, names: Sequence[str] | None) -> list[str] | None:
    """Well names (``B3``) or paths (``B/3``) → paths; ``None`` stays ``None``."""
    if names is None:
        return None
    return [plate.well(str(n)).path for n in names]


def _check_channels(image: Image, pred: str, truth: str, source: str | None) -> None:
    for name in (pred, truth) + ((source,) if source else ()):
        image.channel_index(name)  # raises ChannelNotFoundError listing the available names
    if pred == truth:
        raise InputError(f"Expected two different channels to compare. Got {pred!r} twice.")


def _read(image: Image, names: Sequence[str], level: int) -> list[np.ndarray]:
    arrays = [image.channel(n, level) for n in names]
    return [np.asarray(a) for a in dask.compute(*arrays)]


# -- 1. what to evaluate (everything checked before anything is read) -----------------------------
@dataclass(frozen=True)
class _Job:
    """The checked inputs of one evaluation."""

    plate: Plate
    pred: str
    truth: str
    out_dir: Path
    images: list[Image]
    source: str | None
    controls: list[str] | None  # well paths; None: all wells
    montage_wells: list[str] | None  # well paths; None: pick worst, median, best
    config: EvaluateConfig
    split: TrainingSplit


def _source_channel(first: Image, pred: str, source: str | None) -> str | None:
    """``source``, else the one the virtual channel's provenance names (when the plate has it)."""
    if source is not None:
        return source
    source = source_channel_from_provenance(first, pred)
    if source is not None and source not in first.channel_names:
        logger.warning(
            "provenance names source channel %r, which the plate lacks: montage without input",
            source,
        )
        source = None
    return source


def _check_controls(
    plate: Plate, images: list[Image], control_wells: Sequence[str] | None
) -> list[str] | None:
    controls = _well_paths(plate, control_wells)
    evaluated = {img.well for img in images}
    if controls is not None and not set(controls) <= evaluated:
        raise InputError(
            f"Expected control wells among the evaluated wells. "
            f"Got {', '.join(sorted(set(controls) - evaluated))} instead. "
            f"Add them to --wells or drop them from --control-wells."
        )
    return controls


def _prepare(plate: Plate, pred: str, truth: str, out: str | Path, cfg: EvaluateConfig) -> _Job:
    out_dir = _check_out(plate, out)
    well_sel = _well_paths(plate, cfg.wells)
    images = (
        [img for w in well_sel for img in plate.wells[w].images] if well_sel else list(plate.images)
    )
    source = _source_channel(images[0], pred, cfg.source)
    _check_channels(images[0], pred, truth, source)
    n_levels = min(len(img.level_paths) for img in images)
    if not 0 <= cfg.level < n_levels:
        raise InputError(f"Expected a level between 0 and {n_levels - 1}. Got {cfg.level} instead.")
    for img in images[1:]:
        _check_channels(img, pred, truth, source)
    controls = _check_controls(plate, images, cfg.control_wells)
    return _Job(
        plate,
        pred,
        truth,
        out_dir,
        images,
        source,
        controls,
        _well_paths(plate, cfg.montage_wells),
        cfg,
        _training_split(images[0], pred, cfg.model),
    )


def _training_split(first: Image, pred: str, model: str | None) -> TrainingSplit:
    """The split of ``model``, else of the checkpoint the channel's provenance names (if it is
    here)."""
    if model is not None:
        return read_training_split(model)
    record = (first.attrs.get("omeloc") or {}).get("channels", {}).get(pred) or {}
    given = record.get("model_path") if isinstance(record, Mapping) else None
    if (
        isinstance(given, str)
        and given
        and "://" not in given
        and (Path(given).expanduser() / "checkpoint.json").is_file()
    ):
        return read_training_split(given)
    logger.warning(
        "no checkpoint found for %r: the split column reads 'unknown' (pass --model to mark the "
        "training and held-out wells)",
        pred,
    )
    return TrainingSplit.unknown()


# -- 2. score each field --------------------------------------------------------------------------
def _baseline_image(source: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """The no-learning baseline: the source rescaled to the truth's mean and standard deviation."""
    s = source.astype(np.float64)
    sd = float(s.std())
    scaled = (s - s.mean()) / sd if sd > 0 else np.zeros_like(s)
    return scaled * float(truth.std()) + float(truth.mean())


def _estimable_ceiling(metrics: dict[str, Any]) -> dict[str, Any]:
    """NaN noise ceiling (and relative r) where the pixel noise is too small to make one."""
    ceiling = metrics.get("noise_ceiling")
    if (
        isinstance(ceiling, float)
        and math.isfinite(ceiling)
        and ceiling > 1 / math.sqrt(1 + CEILING_MIN_NOISE)
    ):
        metrics = {**metrics, "noise_ceiling": math.nan, "pearson_r_rel": math.nan}
    return metrics


def _score_field(image: Image, job: _Job) -> dict[str, Any]:
    cfg = job.config
    names = (job.pred, job.truth) + ((job.source,) if job.source else ())
    arrays = _read(image, names, cfg.level)
    p, t = arrays[0], arrays[1]
    well = image.well.replace("/", "") if image.well else ""
    row: dict[str, Any] = {
        "well": well,
        "row": image.well.split("/")[0] if image.well else "",
        "column": image.well.split("/")[1] if image.well else "",
        "field": image.field or "",
        "path": image.path,
        "split": job.split.split_of(well, job.plate.path),
    }
    row.update(
        _estimable_ceiling(
            field_metrics(p, t, foreground=cfg.foreground, with_noise_ceiling=cfg.noise_ceiling)
        )
    )
    if job.source:
        base = field_metrics(
            _baseline_image(arrays[2], t), t, foreground=cfg.foreground, with_noise_ceiling=False
        )
        row.update({f"baseline_{k}": base[k] for k in BASELINE_METRICS})
    if cfg.segment == "nuclei":
        from omeloc.analysis.segmentation import nuclei_scores

        row.update(nuclei_scores(p, t))
    return row


def _score_fields(job: _Job, progress: ProgressArg) -> list[dict[str, Any]]:
    """One row per field: where it is and every metric (one field in memory at a time)."""
    cfg = job.config
    rows: list[dict[str, Any]] = []
    with Progress(progress, total=len(job.images), desc="evaluate", unit="field") as bar:
        for img in job.images:
            rows.append(_score_field(img, job))
            logger.debug(
                "scored %s: %s=%.4f", img.path or img.url, cfg.metric, rows[-1][cfg.metric]
            )
            bar.advance()
    return rows


# -- 3. aggregate per well, screen ----------------------------------------------------------------
def _aggregate_wells(job: _Job, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per well: the mean of each metric over its fields; on plates, the screening
    readout."""
    by_well: dict[str, list[dict[str, Any]]] = {}
    for img, r in zip(job.images, rows):
        by_well.setdefault(img.well or "", []).append(r)
    well_rows: list[dict[str, Any]] = []
    for wpath, frows in by_well.items():
        row_name, _, col_name = wpath.partition("/")
        well_rows.append(
            {
                "well": wpath.replace("/", ""),
                "row": row_name,
                "column": col_name,
                "path": wpath,
                "split": frows[0]["split"],
                "n_fields": len(frows),
                **summarize(frows, _SCORED),
                **_segment_means(job, frows),
            }
        )
    if job.plate.is_plate:
        metric = job.config.metric
        readout = screen(
            {w["path"]: w[metric] for w in well_rows},
            job.controls,
            threshold=job.config.z_threshold,
            metric=metric,
        )
        for w, s in zip(well_rows, readout):
            w.update({"z": s["z"], "flag": s["flag"], "control": s["control"]})
    return well_rows


def _segment_means(job: _Job, rows: list[dict[str, Any]]) -> dict[str, float]:
    """With ``segment``: the well's nuclei scores (counts summed, the count error of the sums,
    the rest means)."""
    if job.config.segment is None:
        return {}
    means = summarize(rows, SEGMENT_METRICS)
    true, pred = sum(r["nuclei_true"] for r in rows), sum(r["nuclei_pred"] for r in rows)
    means.update(
        nuclei_true=float(true),
        nuclei_pred=float(pred),
        nuclei_count_error=abs(pred - true) / true if true else math.nan,
    )
    return means


# -- 4. write tables, figures, summary ------------------------------------------------------------
def _pick_montage_wells(wells: list[dict[str, Any]], metric: str) -> list[str]:
    """Worst, median and best well by ``metric`` (distinct, finite values only)."""
    scored = sorted((r for r in wells if math.isfinite(r[metric])), key=lambda r: r[metric])
    if not scored:
        return [r["path"] for r in wells[:1]]
    picks = [scored[0], scored[len(scored) // 2], scored[-1]]
    out: list[str] = []
    for r in picks:
        if r["path"] not in out:
            out.append(r["path"])
    return out


def _fmt(value: Any) -> Any:
    if isinstance(value, float):
        return repr(value)
    return value


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    columns: list[str] = []
    for r in rows:
        columns += [k for k in r if k not in columns]
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: _fmt(v) for k, v in r.items()})
    return path


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _draw_heatmap(
    job: _Job, well_rows: list[dict[str, Any]], flagged: list[str], metric: str | None = None
) -> Path:
    metric, plate = metric or job.config.metric, job.plate
    held = [w["path"] for w in well_rows if w["split"] == "validation"]
    title = f"{job.pred} vs {job.truth}: {metric} (level {job.config.level})"
    if held:
        title += "\nheld-out (validation) wells outlined black and white"
    return plate_heatmap(
        {w["path"]: w[metric] for w in well_rows},
        plate.rows,
        plate.columns,
        job.out_dir / f"heatmap_{metric}.png",
        title=title,
        label=metric,
        flagged=flagged,
        held_out=held,
        annotate=True,
    ).path


def _draw_montage(job: _Job, well_rows: list[dict[str, Any]], picks: list[str]) -> Path:
    """input | virtual | real | difference for the first field of each picked well."""
    metric, source = job.config.metric, job.source
    by_path = {w["path"]: w for w in well_rows}
    mrows = []
    for wpath in picks:
        img = job.plate.wells[wpath].images[0] if wpath else job.images[0]
        names = (source, job.pred, job.truth) if source else (job.pred, job.truth)
        arrays = _read(img, names, job.config.level)
        src = arrays[0] if source else None
        value = by_path[wpath][metric] if wpath in by_path else math.nan
        split = by_path[wpath]["split"] if wpath in by_path else ""
        name = f"{img.name} ({split})" if split and split != "unknown" else img.name
        label = f"{name}  well {metric}={value:.3f}" if math.isfinite(value) else name
        mrows.append((label, src, arrays[-2], arrays[-1]))
    titles = (
        f"input ({source})" if source else "input",
        f"virtual ({job.pred})",
        f"real ({job.truth})",
        "virtual − real",
    )
    return montage(mrows, job.out_dir / "montage.png", titles=titles).path


def _definitions(foreground: str | float) -> dict[str, str]:
    return {
        "whole_field": "pearson_r, ssim, psnr, nrmse, mae over every pixel of the field",
        "foreground": f"*_fg over truth pixels above the {foreground} threshold",
        "ssim": "Gaussian window sigma 1.5 (11 taps), sample covariance, K1 0.01, K2 0.03",
        "data_range": "truth max - min of each field (SSIM and PSNR)",
        "nrmse": "RMSE / sqrt(mean(truth^2))",
        "noise_ceiling": (
            "1/sqrt(1 + var_noise/(var_truth - var_noise)), var_noise by Immerkaer (1996); "
            f"not estimable (NaN) where var_noise < {CEILING_MIN_NOISE:g} var_truth"
        ),
        "baseline": (
            "baseline_<metric>: the source channel rescaled to the truth's mean and standard "
            "deviation per field (no learning)"
        ),
        "split": (
            "train / validation: the checkpoint's wells; unseen: wells (or plates) it never saw"
        ),
        "wells": "mean over the well's fields",
        "z": "(x - median(controls)) / (1.4826 MAD(controls)) of the well metric",
        "nuclei": (
            "both channels segmented alike (Gaussian sigma 2, Otsu, holes filled, "
            "distance-transform watershed, objects >= 30 px); count error |pred - true| / true, "
            "Dice of the foregrounds, F1 of objects matched one to one (Hungarian) at IoU >= 0.5"
        ),
    }


_SCORED = METRIC_NAMES + tuple(f"baseline_{k}" for k in BASELINE_METRICS)


def _split_summaries(
    rows: list[dict[str, Any]], well_rows: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Means per split, held-out wells first (:data:`SPLITS` order); splits without wells left
    out."""
    out = []
    for split in SPLITS:
        wells = [w for w in well_rows if w["split"] == split]
        if wells:
            out.append(
                {
                    "split": split,
                    "wells": [w["well"] for w in wells],
                    "n_wells": len(wells),
                    "n_fields": sum(1 for r in rows if r["split"] == split),
                    "fields_mean": summarize([r for r in rows if r["split"] == split], _SCORED),
                }
            )
    return out


def _summary(
    job: _Job,
    rows: list[dict[str, Any]],
    well_rows: list[dict[str, Any]],
    flagged: list[str],
    files: dict[str, Path],
) -> dict[str, Any]:
    cfg = job.config
    return {
        "plate": job.plate.path,
        "pred": job.pred,
        "truth": job.truth,
        "source": job.source,
        "level": cfg.level,
        "metric": cfg.metric,
        "foreground": cfg.foreground,
        "n_fields": len(rows),
        "n_wells": len(well_rows),
        "fields_mean": {
            **summarize(rows, _SCORED),
            **(summarize(rows, SEGMENT_METRICS) if cfg.segment else {}),
        },
        "wells_mean": {
            **summarize(well_rows, _SCORED),
            **(summarize(well_rows, SEGMENT_METRICS) if cfg.segment else {}),
        },
        **({"segment": cfg.segment} if cfg.segment else {}),
        "splits": _split_summaries(rows, well_rows),
        "checkpoint": job.split.checkpoint or None,
        "training_baseline_r": job.split.baseline_r,
        "training_val_r": job.split.val_r,
        "control_wells": job.controls if job.controls is not None else "all",
        "z_threshold": cfg.z_threshold,
        "flagged_wells": flagged,
        "definitions": _definitions(cfg.foreground),
        "files": {k: str(v) for k, v in files.items()},
    }


def _write_outputs(
    job: _Job, rows: list[dict[str, Any]], well_rows: list[dict[str, Any]]
) -> tuple[dict[str, Any], dict[str, Path]]:
    """Write the tables, the figures and ``summary.json``; return the summary and the files."""
    job.out_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {
        "metrics_csv": _write_csv(job.out_dir / "metrics.csv", rows),
        "wells_csv": _write_csv(job.out_dir / "wells.csv", well_rows),
    }
    flagged = [w["path"] for w in well_rows if w.get("flag")]
    if job.plate.is_plate:
        files["heatmap"] = _draw_heatmap(job, well_rows, flagged)
        if job.config.segment and job.config.metric != "nuclei_f1":
            files["heatmap_nuclei_f1"] = _draw_heatmap(job, well_rows, flagged, "nuclei_f1")
    picks = (
        job.montage_wells
        if job.montage_wells is not None
        else (_pick_montage_wells(well_rows, job.config.metric) if job.plate.is_plate else [""])
    )
    if picks:
        files["montage"] = _draw_montage(job, well_rows, picks)
    summary = _summary(job, rows, well_rows, flagged, files)
    path = job.out_dir / "summary.json"
    files["summary_json"] = path
    summary["files"]["summary_json"] = str(path)
    path.write_text(json.dumps(_json_safe(summary), indent=2, allow_nan=False) + "\n")
    return summary, files


def evaluate(
    plate: str | Path | Plate,
    pred: str,
    truth: str,
    *,
    out: str | Path,
    config: EvaluateConfig | None = None,
    storage_options: Mapping[str, Any] | None = None,
    progress: ProgressArg = None,
    tables: bool | None = False,
    **overrides: Any,
) -> EvaluationResult:
    """Score a virtual channel against the real one per field and per well; write tables and
    figures.

    Three steps: score every field, aggregate per well (with the screening z-score on
    plates), write ``metrics.csv``, ``wells.csv``, the heat map, the montage and
    ``summary.json`` (see the module docstring).

    Parameters
    ----------
    plate : path, URL or Plate
        The plate (or a single image) holding both channels.  It is only read.
    pred, truth : str
        Channel names of the virtual (predicted) and the real channel.
    out : path
        Output folder (created; must not be inside the plate).
    config : EvaluateConfig, optional
        Level, wells, source, metric, montage and control wells, foreground, noise ceiling,
        z threshold; default :class:`EvaluateConfig` ().
    storage_options : mapping, optional
        fsspec options when ``plate`` is a URL.
    progress : bool or callable, optional
        ``True``: a progress bar; a callable is called as ``progress(done, total)`` after
        each field (:data:`omeloc.progress.ProgressArg`).
    tables : bool, optional
        Also write the per-field and per-well rows as tables into the plate
        (``tables/<pred>_fields``, ``tables/<pred>_wells``; the Fractal/ngio convention, through
        ngio, crash-safe: :func:`omeloc.writeback.tables.write_result_tables`).  ``None``: when
        ngio is installed and the plate writable (``omeloc evaluate``'s default); ``False``
        (default): the plate is only read.
    **overrides
        Any :class:`EvaluateConfig` field, e.g. ``level=1, metric="ssim"``.

    Returns
    -------
    EvaluationResult

    Raises
    ------
    ChannelNotFoundError
        ``pred``, ``truth`` or ``source`` is not a channel of the plate (the message lists
        the channels there are).
    InputError
        Unknown metric or option, output folder inside the plate, unknown control wells.

    Examples
    --------
    >>> res = evaluate("plate.zarr", "WAVE2 (virtual)", "WAVE2", out="eval", level=1)  # doctest: +SKIP
    >>> res.flagged  # doctest: +SKIP
    ['C/4']
    """  # noqa: E501
    cfg = resolve(EvaluateConfig, config, overrides)
    if not isinstance(plate, Plate):
        plate = open_plate(plate, storage_options=storage_options)
    job = _prepare(plate, pred, truth, out, cfg)
    rows = _score_fields(job, progress)
    well_rows = _aggregate_wells(job, rows)
    summary, files = _write_outputs(job, rows, well_rows)
    files.update(
        write_result_tables(plate, pred, rows, well_rows, tables, storage_options=storage_options)
    )
    logger.info(
        "evaluated %d field(s) in %d well(s): mean %s %.4f",
        len(rows),
        len(well_rows),
        cfg.metric,
        summary["fields_mean"][cfg.metric],
    )
    return EvaluationResult(fields=rows, wells=well_rows, summary=summary, files=files)
