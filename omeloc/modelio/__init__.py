"""Models in and out: one adapter interface between the engine and a model.

DESIGN.md, "Models in and out":

- :mod:`~omeloc.modelio.describe` — :class:`ModelDescription`, the record every model gives
- :mod:`~omeloc.modelio.bmz_import` — open and check a BioImage Model Zoo package
- :mod:`~omeloc.modelio.processing` — BMZ pre/postprocessing steps in torch
- :mod:`~omeloc.modelio.runtime` — :class:`PackageModel` (``describe()`` + ``__call__(batch)``)
- :mod:`~omeloc.modelio.onnx_runtime` — ONNX weights through onnxruntime
- :mod:`~omeloc.modelio.adapter` — a package where plate prediction expects a model
- :mod:`~omeloc.modelio.export_bmz`, :mod:`~omeloc.modelio.export_onnx` — export (BMZ 0.5,
  ONNX, TorchScript)
- :mod:`~omeloc.modelio.show` — ``omeloc show``
"""

from omeloc.modelio.describe import (
    AxisSpec,
    ModelDescription,
    Step,
    TensorSpec,
    describe_checkpoint,
)

__all__ = ["AxisSpec", "ModelDescription", "Step", "TensorSpec", "describe_checkpoint"]
