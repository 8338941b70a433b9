"""ONNX weights run by onnxruntime: a callable from ``N x ...`` float32 tensors to tensors."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import torch

from omeloc.errors import CheckpointError

__all__ = ["OnnxRunner", "run_onnx"]


class OnnxRunner:
    """An onnxruntime session over one ``.onnx`` file (CUDA when asked for and available, else CPU).

    Raises
    ------
    CheckpointError
        onnxruntime is not installed, or the file is not a loadable ONNX model.
    """

    def __init__(
        self, path: str | Path, device: torch.device | str = "cpu", threads: int | None = None
    ) -> None:
        try:
            import onnxruntime as ort
        except ImportError as err:  # pragma: no cover - the bmz extra is missing
            raise CheckpointError(
                f"Running ONNX weights needs onnxruntime ({err}); install omeloc[bmz]."
            ) from None
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(threads or torch.get_num_threads())
        opts.log_severity_level = 3
        providers = ["CPUExecutionProvider"]
        if (
            torch.device(device).type == "cuda"
            and "CUDAExecutionProvider" in ort.get_available_providers()
        ):
            providers.insert(0, "CUDAExecutionProvider")
        try:
            self.session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
        except Exception as err:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise CheckpointError(
                f"onnxruntime cannot load {Path(path).name} ({str(err).splitlines()[0][:160]}). "
                f"Re-export the ONNX weights."
            ) from None
        self.input_name = self.session.get_inputs()[0].name
        self._lock = threading.Lock()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        arr = np.ascontiguousarray(x.detach().float().cpu().numpy())
        with self._lock:
            (y,) = self.session.run(None, {self.input_name: arr})[:1]
        return torch.from_numpy(np.asarray(y, dtype=np.float32)).to(x.device)

    def __repr__(self) -> str:
        return f"OnnxRunner({self.input_name!r})"


def run_onnx(path: str | Path, x: np.ndarray) -> np.ndarray:
    """One call of an ONNX file on a numpy array (tests and export checks)."""
    return OnnxRunner(path)(torch.from_numpy(np.asarray(x, dtype=np.float32))).numpy()
