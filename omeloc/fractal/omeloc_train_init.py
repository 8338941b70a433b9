"""Fractal task ``omeloc_train_init``: the init part of the train-and-predict compound task."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, validate_call

from omeloc.fractal._common import channel_label, plate_of, run_task
from omeloc.fractal.models import ChannelInput


@validate_call
def omeloc_train_init(
    *,
    zarr_urls: list[str],
    zarr_dir: str,
    source_channel: ChannelInput,
    target_channel: ChannelInput,
    wells: list[str] | None = None,
    model_dir: str | None = None,
    steps: int = Field(default=500, ge=1),
    minutes: float | None = Field(default=None, gt=0),
    val_wells: list[str] | None = None,
    crop: int | None = Field(default=None, ge=8),
    batch_size: int | None = Field(default=None, ge=1),
    depth: int | None = Field(default=None, ge=1, le=6),
    base_channels: int | None = Field(default=None, ge=1),
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train a virtual-stain model on chosen wells; hand every image of the list to the prediction.

    Runs `omeloc train` once on the fields of the chosen wells (crops read straight from the
    plate, validation split by well), saves a checkpoint folder, and returns one parallel
    prediction per image of the list, so that every image of the plate gets the channel.

    Args:
        zarr_urls: The images of the plate (Fractal's image list).
        zarr_dir: The dataset's folder (the model goes below it by default).
        source_channel: The channel the model reads, by label or wavelength_id.
        target_channel: The channel the model learns to predict, by label or wavelength_id.
        wells: Wells to train on (e.g. control wells `B03`); default: every well of the list.
        model_dir: Checkpoint folder (default: `<zarr_dir>/omeloc_models/<source>-<target>`).
        steps: Optimizer steps (with `minutes`: at most this many).
        minutes: Train for this many minutes instead of a fixed number of steps.
        val_wells: Wells held out for validation (default: every fourth training well).
        crop: Crop side in pixels, a multiple of 2**depth (default by device: 128 CPU, 256 GPU).
        batch_size: Crops per step (default by device).
        depth: U-Net depth (default by device: 3 CPU, 4 GPU).
        base_channels: U-Net width (default by device: 16 CPU, 32 GPU).
        overwrite: Replace an existing checkpoint folder.
    """
    from omeloc.learn.training import train

    plate = plate_of(zarr_urls, wells)
    first = plate.images[0]
    source, target = channel_label(first, source_channel), channel_label(first, target_channel)
    out = model_dir or str(
        Path(zarr_dir) / "omeloc_models" / f"{source}-{target}".replace("/", "_")
    )
    sizes = {
        k: v
        for k, v in {
            "crop": crop,
            "batch_size": batch_size,
            "depth": depth,
            "base_channels": base_channels,
        }.items()
        if v is not None
    }
    res = train(
        plate,
        source,
        target,
        out=out,
        steps=steps,
        minutes=minutes,
        val_wells=val_wells,
        overwrite=overwrite,
        progress=False,
        **sizes,
    )
    return {
        "parallelization_list": [
            {"zarr_url": u, "init_args": {"model": str(res.checkpoint)}} for u in zarr_urls
        ]
    }


if __name__ == "__main__":
    run_task(omeloc_train_init)
