"""Fractal task ``omeloc_evaluate`` (non-parallel): score a virtual channel, tables in the plate."""

from __future__ import annotations

import re
from typing import Any

from pydantic import Field, validate_call

from omeloc.fractal._common import plate_of, run_task


@validate_call
def omeloc_evaluate(
    *,
    zarr_urls: list[str],
    zarr_dir: str,
    pred: str = Field(min_length=1),
    truth: str = Field(min_length=1),
    out: str | None = None,
    level: int = Field(default=0, ge=0),
    control_wells: list[str] | None = None,
    metric: str = "pearson_r",
    z_threshold: float = Field(default=3.0, gt=0),
) -> dict[str, Any]:
    """Score a virtual channel against the real one per field and well; results into the plate.

    Runs `omeloc evaluate` on the images of the list (the fields of one plate): Pearson r,
    SSIM, PSNR, NRMSE, MAE, the noise ceiling, and per well the robust z-score screening
    readout against the control wells. The per-field and per-well rows are written as
    feature tables `<pred>_fields` and `<pred>_wells` into the plate's `tables/` (the
    Fractal/ngio table convention, AnnData backend), and as CSV files, figures and a summary
    into `out`.

    Args:
        zarr_urls: The images to score (Fractal's image list); all fields of one plate.
        zarr_dir: The dataset's folder (the CSV/figure folder goes below it by default).
        pred: Label of the virtual channel.
        truth: Label of the real channel.
        out: Folder for the CSV files and figures (default: `<zarr_dir>/omeloc_evaluation/<pred>`).
        level: Pyramid level to score at.
        control_wells: Wells of the screening readout's reference (default: all wells).
        metric: Metric of the screening readout and the heat map.
        z_threshold: A well is flagged when |z| exceeds this.
    """
    from omeloc.analysis.evaluate import evaluate

    plate = plate_of(zarr_urls)
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", pred).strip("_.-") or "virtual"
    folder = out or f"{zarr_dir.rstrip('/')}/omeloc_evaluation/{safe}"
    wells = sorted({img.well for img in plate.images if img.well})
    evaluate(
        plate,
        pred,
        truth,
        out=folder,
        tables=True,
        level=level,
        control_wells=control_wells,
        metric=metric,
        z_threshold=z_threshold,
        wells=wells,
    )
    return {}


if __name__ == "__main__":
    run_task(omeloc_evaluate)
