"""omeloc: virtual stains for OME-Zarr HCS plates.

Public API (imported lazily, so ``import omeloc`` and the CLI start fast):

- :func:`open_plate`, :func:`open_image` — lazy plate/image views (``omeloc.plate``)
- :func:`write_plate`, :func:`write_image` — new OME-Zarr plates/images (``omeloc.hcs_writer``)
- :func:`make_plate` — synthetic plates with known protein relationships (``omeloc.synthetic``)
- :func:`import_tiff` — TIFF folder to OME-Zarr HCS plate (``omeloc.tiff_import``)
- :func:`add_channel`, :func:`recover`, :func:`rechunk` — write a new channel into every image
  and level, safely (``omeloc.writeback``, ``omeloc.rechunking``)
- :func:`evaluate`, :func:`screen` — virtual vs real channel metrics, figures, screening z-scores
- :func:`train`, :func:`load_checkpoint` — U-Net / pix2pix from Zarr crops, checkpoints (``omeloc.training``)
- :func:`predict`, :func:`predict_array` — tiled, blended lazy inference written back as a channel
- :func:`relate`, :func:`run_demo` — the relationship matrix of a plate's channels; the built-in demo
- :func:`dask_client` — run on a local cluster or a scheduler address (``omeloc.scheduler``)
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    "open_plate": "omeloc.plate",
    "open_image": "omeloc.plate",
    "Plate": "omeloc.plate",
    "Well": "omeloc.plate",
    "Image": "omeloc.plate",
    "write_plate": "omeloc.hcs_writer",
    "write_image": "omeloc.hcs_writer",
    "make_plate": "omeloc.synthetic",
    "import_tiff": "omeloc.tiff_import",
    "describe": "omeloc.info",
    "OmelocError": "omeloc.errors",
    "render_field": "omeloc.synthetic_cells",
    "simulate_field": "omeloc.synthetic_cells",
    "CHANNELS": "omeloc.synthetic_cells",
    "add_channel": "omeloc.writeback",
    "recover": "omeloc.writeback",
    "WritePlan": "omeloc.writeback",
    "AddChannelResult": "omeloc.writeback",
    "rechunk": "omeloc.rechunking",
    "evaluate": "omeloc.evaluation",
    "EvaluationResult": "omeloc.evaluation",
    "screen": "omeloc.screening",
    "dask_client": "omeloc.scheduler",
    "UNet": "omeloc.models",
    "predict": "omeloc.prediction",
    "relate": "omeloc.relationships",
    "RelateResult": "omeloc.relationships",
    "run_demo": "omeloc.demo",
    "PredictResult": "omeloc.prediction",
    "PatchGAN": "omeloc.models",
    "train": "omeloc.training",
    "TrainResult": "omeloc.training",
    "load_checkpoint": "omeloc.checkpoint",
    "Checkpoint": "omeloc.checkpoint",
    "CheckpointRef": "omeloc.checkpoint",
    "CropSampler": "omeloc.sampling",
    "predict_array": "omeloc.inference",
    "normalize": "omeloc.normalization",
    "denormalize": "omeloc.normalization",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'omeloc' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
