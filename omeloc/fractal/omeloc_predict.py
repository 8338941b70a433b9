"""Fractal task ``omeloc_predict`` (parallel): a virtual channel into one image of a plate."""

from __future__ import annotations

from typing import Any

from pydantic import Field, validate_call

from omeloc.fractal._common import predict_one_image, run_task
from omeloc.fractal.models import ChannelInput


@validate_call
def omeloc_predict(
    *,
    zarr_url: str,
    model: str = Field(min_length=1),
    source_channel: ChannelInput | None = None,
    target_name: str | None = None,
    tta: bool = False,
    uncertainty: bool = False,
    overwrite: bool = False,
    tile: int | None = Field(default=None, ge=16),
) -> dict[str, Any]:
    """Predict a virtual stain with a trained omeloc model and add it to the image as a new channel.

    Runs omeloc's own prediction (`omeloc predict`) on one image: tiled inference, intensities
    mapped back to the target channel's units, the channel appended at every pyramid level
    without rewriting existing chunks, crash-safe (a failed or killed run is rolled back).

    Args:
        zarr_url: Path or URL of one OME-Zarr image (a field of a plate).
        model: Checkpoint folder written by `omeloc train` (or the training task).
        source_channel: The channel the model reads, by label or wavelength_id; checked against the
            model's own source channel (default: the model's source channel by label).
        target_name: Label of the new channel (default: `<target> (virtual)`).
        tta: Test-time augmentation: average the 8 flips/rotations of every tile (8x compute).
        uncertainty: Also write the spread of the 8 variants as `<target> (uncertainty)`
            (implies tta).
        overwrite: Replace a virtual channel of that name written by omeloc before.
        tile: Tile size in pixels (default: the checkpoint's advice).
    """
    return predict_one_image(
        zarr_url,
        model,
        source_channel=source_channel,
        target_name=target_name,
        tta=tta,
        uncertainty=uncertainty,
        overwrite=overwrite,
        tile=tile,
    )


if __name__ == "__main__":
    run_task(omeloc_predict)
