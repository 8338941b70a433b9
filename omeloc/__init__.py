"""omeloc: virtual stains for OME-Zarr HCS plates.

Public API (imported lazily, so ``import omeloc`` and the CLI start fast):

- :func:`open_plate`, :func:`open_image` — lazy plate/image views (``omeloc.ngff.plate``)
- :func:`write_plate`, :func:`write_image` — new OME-Zarr plates/images (``omeloc.ngff.writer``)
- :func:`make_plate` — synthetic plates with known protein relationships (``omeloc.data.synthetic``)
- :func:`import_tiff` — TIFF folder to OME-Zarr HCS plate (``omeloc.data.tiff_import``)
- :func:`add_channel`, :func:`recover`, :func:`rechunk` — write a new channel into every image
  and level, safely (``omeloc.writeback.protocol``, ``omeloc.writeback.rechunk``)
- :func:`evaluate`, :func:`screen` — virtual vs real channel metrics, figures, screening z-scores
- :func:`train`, :func:`load_checkpoint` — U-Net / pix2pix from Zarr crops, checkpoints
  (``omeloc.learn.training``)
- :func:`predict`, :func:`predict_array` — tiled, blended lazy inference written back as a channel
- :func:`relate`, :func:`run_demo` — the relationship matrix of a plate's channels; the built-in
  demo
- :class:`VirtualStain` — a checkpoint applied to numpy or dask arrays (normalize → model → target
  units)
- :class:`TrainConfig`, :class:`TilingConfig`, :class:`ComputeConfig` — options of train / predict /
  where work runs
- :func:`dask_client` — run on a local cluster or a scheduler address (``omeloc.compute``)
- :class:`ProgressReporter` (:class:`LogProgress`, :class:`ConsoleProgress`, :class:`QuietProgress`)
  — what a ``progress`` argument may be besides ``True``/``False`` and a ``(done, total)`` callable
  (``omeloc.progress``)
- :func:`export_bmz`, :func:`show_model`, :class:`ModelDescription` — models in and out (BMZ, ONNX;
  ``omeloc.modelio``)
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    "open_plate": "omeloc.ngff.plate",
    "open_image": "omeloc.ngff.plate",
    "Plate": "omeloc.ngff.plate",
    "Well": "omeloc.ngff.plate",
    "Image": "omeloc.ngff.plate",
    "write_plate": "omeloc.ngff.writer",
    "write_image": "omeloc.ngff.writer",
    "make_plate": "omeloc.data.synthetic",
    "import_tiff": "omeloc.data.tiff_import",
    "import_tiff_files": "omeloc.data.tiff_import",
    "describe": "omeloc.ngff.info",
    "OmelocError": "omeloc.errors",
    "render_field": "omeloc.data.synthetic_cells",
    "simulate_field": "omeloc.data.synthetic_cells",
    "CHANNELS": "omeloc.data.synthetic_cells",
    "add_channel": "omeloc.writeback.protocol",
    "recover": "omeloc.writeback.protocol",
    "remove_channel": "omeloc.writeback.remove",
    "WritePlan": "omeloc.writeback.protocol",
    "AddChannelResult": "omeloc.writeback.protocol",
    "rechunk": "omeloc.writeback.rechunk",
    "evaluate": "omeloc.analysis.evaluate",
    "EvaluationResult": "omeloc.analysis.evaluate",
    "EvaluateConfig": "omeloc.analysis.evaluate",
    "screen": "omeloc.analysis.screening",
    "dask_client": "omeloc.compute",
    "UNet": "omeloc.learn.models",
    "predict": "omeloc.jobs.predict",
    "relate": "omeloc.jobs.relate",
    "RelateResult": "omeloc.analysis.relate",
    "run_demo": "omeloc.jobs.demo",
    "PredictResult": "omeloc.jobs.predict",
    "PatchGAN": "omeloc.learn.models",
    "train": "omeloc.learn.training",
    "TrainResult": "omeloc.learn.training",
    "load_checkpoint": "omeloc.learn.checkpoint",
    "Checkpoint": "omeloc.learn.checkpoint",
    "CheckpointRef": "omeloc.learn.checkpoint",
    "CropSampler": "omeloc.learn.sampling",
    "predict_array": "omeloc.engine.inference",
    "RegionInferer": "omeloc.engine.inferer",
    "TileSettings": "omeloc.engine.inferer",
    "VirtualStain": "omeloc.learn.stain",
    "TrainConfig": "omeloc.config",
    "TilingConfig": "omeloc.config",
    "ComputeConfig": "omeloc.config",
    "normalize": "omeloc.learn.normalization",
    "denormalize": "omeloc.learn.normalization",
    "ProgressReporter": "omeloc.progress",
    "LogProgress": "omeloc.progress",
    "ConsoleProgress": "omeloc.progress",
    "QuietProgress": "omeloc.progress",
    "write_tables": "omeloc.writeback.tables",
    "TableData": "omeloc.writeback.tables",
    # issue 28: z-stacks, physical units, segmentation-based scores
    "make_z_plate": "omeloc.data.synthetic_z",
    "PixelSize": "omeloc.learn.units",
    "pixel_size_of": "omeloc.learn.units",
    "segment_nuclei": "omeloc.analysis.segmentation",
    "match_objects": "omeloc.analysis.segmentation",
    "nuclei_scores": "omeloc.analysis.segmentation",
    "ModelDescription": "omeloc.modelio.describe",
    "export_bmz": "omeloc.modelio.export_bmz",
    "show_model": "omeloc.modelio.show",
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
