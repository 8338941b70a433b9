"""An omeloc generator as a single file: TorchScript (``torch.jit.trace``) or ONNX (opset 17).

Both are traced from the trained network in float32 on CPU with a tile of the checkpoint's
size rules; batch, height and width stay free (ONNX dynamic axes).  Normalization is not in the
file: a bare TorchScript/ONNX file maps normalized inputs to normalized outputs (the BMZ
package carries the normalization as pre/postprocessing).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from omeloc.errors import CheckpointError

__all__ = ["OPSET", "export_onnx", "export_torchscript"]

OPSET = 17


def _example(net: torch.nn.Module, size: int) -> torch.Tensor:
    m = int(getattr(net, "multiple", 1) or 1)
    side = max(m, -(-size // m) * m)
    return torch.zeros(1, int(net.config["in_channels"]), side, side)


def export_torchscript(net: torch.nn.Module, path: str | Path, size: int = 64) -> Path:
    """Trace ``net`` (eval mode, CPU, float32) and save it as TorchScript at ``path``."""
    net = net.cpu().float().eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(net, _example(net, size), check_trace=False)
    traced.save(str(path))
    return Path(path)


def export_onnx(net: torch.nn.Module, path: str | Path, size: int = 64) -> Path:
    """Export ``net`` to ONNX (opset :data:`OPSET`, dynamic batch/height/width) at ``path``.

    Raises
    ------
    CheckpointError
        The exporter (torch.onnx, with onnx installed) fails.
    """
    net = net.cpu().float().eval()
    dyn = {"input": {0: "batch", 2: "y", 3: "x"}, "output": {0: "batch", 2: "y", 3: "x"}}
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                net,
                (_example(net, size),),
                str(path),
                input_names=["input"],
                output_names=["output"],
                dynamic_axes=dyn,
                opset_version=OPSET,
                dynamo=False,
            )
    except Exception as err:  # noqa: BLE001 - the exporter raises many kinds
        raise CheckpointError(
            f"ONNX export failed ({type(err).__name__}: {str(err).splitlines()[0][:160]}). "
            f"Install omeloc[bmz] (onnx) or export --format torchscript."
        ) from None
    return Path(path)
