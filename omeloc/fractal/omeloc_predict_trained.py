"""Fractal task ``omeloc_predict_trained`` (the parallel part of ``omeloc_train_and_predict``)."""

from __future__ import annotations

from typing import Any

from pydantic import Field, validate_call

from omeloc.fractal._common import predict_one_image, run_task
from omeloc.fractal.models import PredictInitArgs


@validate_call
def omeloc_predict_trained(
    *,
    zarr_url: str,
    init_args: PredictInitArgs,
    target_name: str | None = None,
    tta: bool = False,
    uncertainty: bool = False,
    overwrite: bool = False,
    tile: int | None = Field(default=None, ge=16),
) -> dict[str, Any]:
    """Predict the virtual stain of the model the init task trained into one image.

    Args:
        zarr_url: Path or URL of one OME-Zarr image (a field of a plate).
        init_args: Set by the init task: the checkpoint folder it trained.
        target_name: Label of the new channel (default: `<target> (virtual)`).
        tta: Test-time augmentation: average the 8 flips/rotations of every tile (8x compute).
        uncertainty: Also write the spread of the 8 variants as `<target> (uncertainty)`
            (implies tta).
        overwrite: Replace a virtual channel of that name written by omeloc before.
        tile: Tile size in pixels (default: the checkpoint's advice).
    """
    return predict_one_image(
        zarr_url,
        init_args.model,
        source_channel=None,
        target_name=target_name,
        tta=tta,
        uncertainty=uncertainty,
        overwrite=overwrite,
        tile=tile,
    )


if __name__ == "__main__":
    run_task(omeloc_predict_trained)
