"""Evaluate a virtual channel against the real one, field by field, over a plate.

:func:`evaluate` reads one field at a time (both channels at one pyramid level), scores
it with :func:`omeloc.analysis.metrics.field_metrics`, and writes, into an output folder outside
the plate (the plate is only read):

- ``metrics.csv`` — one row per field: ``well``, ``row``, ``column``, ``field``, ``path``
  and every metric of :data:`omeloc.analysis.metrics.METRIC_NAMES`.  ``pearson_r``, ``ssim``,
  ``psnr``, ``nrmse``, ``mae`` are on the whole field; the ``*_fg`` columns on the
  foreground (truth above Otsu's threshold, by default); ``noise_ceiling`` is the Pearson
  r ceiling of the truth field (Ounkomol et al. 2018) and ``pearson_r_rel`` r divided by it.
- ``wells.csv`` — one row per well: the mean of each metric over the well's fields,
  ``n_fields``, and the screening readout of the chosen metric (``z``, ``flag``,
  ``control``; see :mod:`omeloc.analysis.screening`).
- ``summary.json`` — settings, plate-wide means, flagged wells, the files written.
- ``heatmap_<metric>.png`` — the chosen metric per well, laid out as the plate.
- ``montage.png`` — input | virtual | real | difference for selected wells (their first
  field).

Memory: one field (two channels, plus a few float64 work arrays of the same size) at a
time, whatever the plate size; pick a coarser ``level`` for very large fields.
"""

from __future__ import annotations

import csv
import difflib
import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask
import numpy as np

from omeloc.errors import InputError
from omeloc.analysis.metrics import METRIC_NAMES, field_metrics, summarize
from omeloc.ngff.plate import Image, Plate, open_plate
from omeloc.analysis.figures import montage, plate_heatmap
from omeloc.analysis.screening import screen

__all__ = ["evaluate", "EvaluationResult", "source_channel_from_provenance"]

logger = logging.getLogger(__name__)

_FIELD_KEYS = ("well", "row", "column", "field", "path")


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


def _check_metric(metric: str) -> str:
    if metric in METRIC_NAMES:
        return metric
    close = difflib.get_close_matches(metric, METRIC_NAMES, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise InputError(f"Expected a metric among {', '.join(METRIC_NAMES)}. Got {metric!r} instead.{hint}")


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


def _score_field(image: Image, pred: str, truth: str, level: int, foreground: str | float,
                 noise_ceiling: bool) -> dict[str, Any]:
    p, t = _read(image, (pred, truth), level)
    row: dict[str, Any] = {
        "well": image.well.replace("/", "") if image.well else "",
        "row": image.well.split("/")[0] if image.well else "",
        "column": image.well.split("/")[1] if image.well else "",
        "field": image.field or "",
        "path": image.path,
    }
    row.update(field_metrics(p, t, foreground=foreground, with_noise_ceiling=noise_ceiling))
    return row


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


def evaluate(
    plate: str | Path | Plate, pred: str, truth: str, *, out: str | Path, level: int = 0,
    wells: Sequence[str] | None = None, source: str | None = None, metric: str = "pearson_r",
    montage_wells: Sequence[str] | None = None, control_wells: Sequence[str] | None = None,
    foreground: str | float = "otsu", noise_ceiling: bool = True, z_threshold: float = 3.0,
    storage_options: Mapping[str, Any] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> EvaluationResult:
    """Score a virtual channel against the real one per field and per well; write tables and figures.

    Parameters
    ----------
    plate : path, URL or Plate
        The plate (or a single image) holding both channels.  It is only read.
    pred, truth : str
        Channel names of the virtual (predicted) and the real channel.
    out : path
        Output folder (created; must not be inside the plate).
    level : int
        Pyramid level to score (0 = full resolution).
    wells : sequence of str, optional
        Wells to evaluate (``"B3"`` or ``"B/3"``); default all.
    source : str, optional
        The input channel shown in montages; default the virtual channel's provenance
        (``attrs["omeloc"]["channels"][pred]["source_channels"]``), else no input column.
    metric : str
        Metric for the heat map, the montage picks and the screening z-score.
    montage_wells : sequence of str, optional
        Wells to show in ``montage.png``; default the worst, median and best well by
        ``metric``; an empty list draws no montage.
    control_wells : sequence of str, optional
        Control wells for the robust z-score; default all evaluated wells.
    foreground : "otsu" or float
        Foreground of the truth for the ``*_fg`` metrics (see
        :func:`omeloc.analysis.metrics.foreground_mask`).
    noise_ceiling : bool
        Estimate the Pearson r noise ceiling of each truth field.
    z_threshold : float
        Flag wells with ``|z| > z_threshold``.
    storage_options : mapping, optional
        fsspec options when ``plate`` is a URL.
    progress : callable, optional
        Called as ``progress(done, total)`` after each field.

    Returns
    -------
    EvaluationResult

    Raises
    ------
    ChannelNotFoundError
        ``pred``, ``truth`` or ``source`` is not a channel of the plate (the message lists
        the channels there are).
    InputError
        Unknown metric, output folder inside the plate, unknown control wells.

    Examples
    --------
    >>> res = evaluate("plate.zarr", "WAVE2 (virtual)", "WAVE2", out="eval")  # doctest: +SKIP
    >>> res.flagged  # doctest: +SKIP
    ['C/4']
    """
    metric = _check_metric(metric)
    if not isinstance(plate, Plate):
        plate = open_plate(plate, storage_options=storage_options)
    out_dir = _check_out(plate, out)
    well_sel = _well_paths(plate, wells)
    images = [img for w in well_sel for img in plate.wells[w].images] if well_sel else list(plate.images)
    first = images[0]
    if source is None:
        source = source_channel_from_provenance(first, pred)
        if source is not None and source not in first.channel_names:
            logger.warning("provenance names source channel %r, which the plate lacks: montage without input",
                           source)
            source = None
    _check_channels(first, pred, truth, source)
    n_levels = min(len(img.level_paths) for img in images)
    if not 0 <= level < n_levels:
        raise InputError(f"Expected a level between 0 and {n_levels - 1}. Got {level} instead.")
    for img in images[1:]:
        _check_channels(img, pred, truth, source)
    controls = _well_paths(plate, control_wells)
    evaluated = {img.well for img in images}
    if controls is not None and not set(controls) <= evaluated:
        raise InputError(
            f"Expected control wells among the evaluated wells. Got {', '.join(sorted(set(controls) - evaluated))} "
            f"instead. Add them to --wells or drop them from --control-wells."
        )
    montage_sel = _well_paths(plate, montage_wells)

    # -- per field --------------------------------------------------------------------------
    rows: list[dict[str, Any]] = []
    for n, img in enumerate(images, 1):
        rows.append(_score_field(img, pred, truth, level, foreground, noise_ceiling))
        logger.debug("scored %s: %s=%.4f", img.path or img.url, metric, rows[-1][metric])
        if progress is not None:
            progress(n, len(images))

    # -- per well + screening ---------------------------------------------------------------
    by_well: dict[str, list[dict[str, Any]]] = {}
    for img, r in zip(images, rows):
        by_well.setdefault(img.well or "", []).append(r)
    well_rows: list[dict[str, Any]] = []
    for wpath, frows in by_well.items():
        row_name, _, col_name = wpath.partition("/")
        well_rows.append({"well": wpath.replace("/", ""), "row": row_name, "column": col_name, "path": wpath,
                          "n_fields": len(frows), **summarize(frows)})
    if plate.is_plate:
        readout = screen({w["path"]: w[metric] for w in well_rows}, controls, threshold=z_threshold,
                         metric=metric)
        for w, s in zip(well_rows, readout):
            w.update({"z": s["z"], "flag": s["flag"], "control": s["control"]})

    # -- files ------------------------------------------------------------------------------
    out_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {
        "metrics_csv": _write_csv(out_dir / "metrics.csv", rows),
        "wells_csv": _write_csv(out_dir / "wells.csv", well_rows),
    }
    flagged = [w["path"] for w in well_rows if w.get("flag")]
    if plate.is_plate:
        heat = plate_heatmap(
            {w["path"]: w[metric] for w in well_rows}, plate.rows, plate.columns,
            out_dir / f"heatmap_{metric}.png", title=f"{pred} vs {truth}: {metric} (level {level})",
            label=metric, flagged=flagged,
        )
        files["heatmap"] = heat.path
    picks = montage_sel if montage_sel is not None else (
        _pick_montage_wells(well_rows, metric) if plate.is_plate else [""])
    if picks:
        by_path = {w["path"]: w for w in well_rows}
        mrows = []
        for wpath in picks:
            img = plate.wells[wpath].images[0] if wpath else images[0]
            names = (source, pred, truth) if source else (pred, truth)
            arrays = _read(img, names, level)
            src = arrays[0] if source else None
            value = by_path[wpath][metric] if wpath in by_path else math.nan
            label = f"{img.name}  well {metric}={value:.3f}" if math.isfinite(value) else img.name
            mrows.append((label, src, arrays[-2], arrays[-1]))
        titles = (f"input ({source})" if source else "input", f"virtual ({pred})", f"real ({truth})",
                  "virtual − real")
        files["montage"] = montage(mrows, out_dir / "montage.png", titles=titles).path

    summary = {
        "plate": plate.path, "pred": pred, "truth": truth, "source": source, "level": level,
        "metric": metric, "foreground": foreground, "n_fields": len(rows), "n_wells": len(well_rows),
        "fields_mean": summarize(rows), "wells_mean": summarize(well_rows),
        "control_wells": controls if controls is not None else "all", "z_threshold": z_threshold,
        "flagged_wells": flagged,
        "definitions": {
            "whole_field": "pearson_r, ssim, psnr, nrmse, mae over every pixel of the field",
            "foreground": f"*_fg over truth pixels above the {foreground} threshold",
            "ssim": "Gaussian window sigma 1.5 (11 taps), sample covariance, K1 0.01, K2 0.03",
            "data_range": "truth max - min of each field (SSIM and PSNR)",
            "nrmse": "RMSE / sqrt(mean(truth^2))",
            "noise_ceiling": "1/sqrt(1 + var_noise/(var_truth - var_noise)), var_noise by Immerkaer (1996)",
            "wells": "mean over the well's fields",
            "z": "(x - median(controls)) / (1.4826 MAD(controls)) of the well metric",
        },
        "files": {k: str(v) for k, v in files.items()},
    }
    path = out_dir / "summary.json"
    files["summary_json"] = path
    summary["files"]["summary_json"] = str(path)
    path.write_text(json.dumps(_json_safe(summary), indent=2, allow_nan=False) + "\n")
    logger.info("evaluated %d field(s) in %d well(s): mean %s %.4f", len(rows), len(well_rows), metric,
                summary["fields_mean"][metric])
    return EvaluationResult(fields=rows, wells=well_rows, summary=summary, files=files)
