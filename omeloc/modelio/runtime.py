"""A BMZ package as a model omeloc's engine runs: :class:`PackageModel` and its :class:`PackageRef`.

:class:`PackageModel` is the adapter: ``describe()`` gives the package's
:class:`~omeloc.modelio.describe.ModelDescription` and ``__call__(batch)`` maps an
``N x C x H x W`` float32 tile (the plate's source channels, in their own units) to
``N x C' x H x W`` in the output's units: the tile is padded (reflect) to a size the package's
rules accept, arranged in the package's axes (``b``, ``c``, ``z`` of 1, ``y``, ``x``), put through
its preprocessing, its weights (TorchScript, ONNX through onnxruntime, or a trusted
state dict) and its postprocessing, and cropped back.  The engine's tiling, blending,
test-time augmentation, Dask distribution and write-back are those of omeloc's own models.

:class:`PackageRef` is the :class:`~omeloc.engine.cache.ModelRef` that travels in the graph (a
path, flags and a content key); each worker opens and checks the package once.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from omeloc.modelio.bmz_import import Package, PackageError, open_package
from omeloc.modelio.describe import ModelDescription, TensorSpec
from omeloc.modelio.processing import compile_steps

__all__ = [
    "PackageModel",
    "PackageRef",
    "check_test_output",
    "from_model_layout",
    "to_model_layout",
]

logger = logging.getLogger(__name__)


def to_model_layout(x: torch.Tensor, spec: TensorSpec) -> torch.Tensor:
    """``N x C x H x W`` → the tensor's own axes (no channel axis: C is 1; ``z``: of size 1)."""
    lay = spec.layout
    if "c" not in lay:
        x = x[:, 0]
    if "z" in lay:
        x = x.unsqueeze(-3)
    if "b" not in lay:
        x = x[0]
    return x


def from_model_layout(y: torch.Tensor, spec: TensorSpec) -> torch.Tensor:
    """The tensor's own axes → ``N x C x H x W``."""
    lay = spec.layout
    if "b" not in lay:
        y = y.unsqueeze(0)
        lay = "b" + lay
    if "z" in lay:
        y = y.squeeze(lay.index("z"))
        lay = lay.replace("z", "")
    if "c" not in lay:
        y = y.unsqueeze(1)
    return y


def _import_architecture(source: Path, name: str) -> Any:
    """The callable ``name`` of the package's architecture file (runs that file: trusted only)."""
    mod_name = f"omeloc_bmz_arch_{abs(hash(str(source)))}"
    spec = importlib.util.spec_from_file_location(mod_name, source)
    if spec is None or spec.loader is None:
        raise PackageError(f"Cannot import the architecture file {source.name}.")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as err:  # noqa: BLE001 - untrusted code fails in any way
        raise PackageError(
            f"The package's architecture file {source.name} fails to import "
            f"({type(err).__name__}: {err})."
        ) from None
    if not hasattr(module, name):
        raise PackageError(f"The package's architecture file {source.name} has no {name!r}.")
    return getattr(module, name)


def _load_weights(pkg: Package, device: torch.device) -> Any:
    fmt, wfile = pkg.weights_format, pkg.weights_file
    if fmt == "torchscript":
        try:
            net = torch.jit.load(str(wfile), map_location=device)
        except Exception as err:  # noqa: BLE001 - torch.jit raises many kinds
            raise PackageError(
                f"Cannot load the TorchScript weights {wfile.name} "
                f"({str(err).splitlines()[0][:160]}). Re-download the package."
            ) from None
        return net.eval()
    if fmt == "onnx":
        from omeloc.modelio.onnx_runtime import OnnxRunner

        return OnnxRunner(wfile, device)
    src, name, kwargs = pkg.architecture  # type: ignore[misc]
    net = _import_architecture(src, name)(**dict(kwargs))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            state = torch.load(wfile, map_location="cpu", weights_only=True)
        net.load_state_dict(state)
    except Exception as err:  # noqa: BLE001 - a foreign module fails in any way
        raise PackageError(
            f"The state dict {wfile.name} does not load into {name} "
            f"({str(err).splitlines()[0][:160]})."
        ) from None
    for p in net.parameters():
        p.requires_grad_(False)
    return net.to(device).eval()


class PackageModel:
    """The adapter: a package's weights with its processing, for ``N x C x H x W`` tiles.

    Not an ``nn.Module`` on purpose: the engine runs it as a callable (no BatchNorm folding,
    channels_last or autocast of foreign weights: they run in float32 as their authors tested).
    """

    multiple = 1

    def __init__(self, pkg: Package, device: torch.device | str = "cpu") -> None:
        self.pkg, self.device = pkg, torch.device(device)
        d = pkg.description
        self.input, self.output = d.inputs[0], d.outputs[0]
        self.net = _load_weights(pkg, self.device)
        self.pre = compile_steps(self.input.processing, [a.id for a in self.input.axes])
        self.post = compile_steps(self.output.processing, [a.id for a in self.output.axes])
        self.out_channels = len(self.output.channel_names)
        b = self.input.axis("b")
        self.batch_one = b is not None and b.size == 1

    def describe(self) -> ModelDescription:
        return self.pkg.description

    def valid_shape(self, h: int, w: int) -> tuple[int, int]:
        """The padded ``(h, w)`` the package accepts for a tile of ``(h, w)``."""
        return self.input.axis("y").valid(h), self.input.axis("x").valid(w)

    def run_model_layout(self, x: torch.Tensor) -> torch.Tensor:
        """Preprocessing, weights, postprocessing on a tensor in the package's own axes."""
        x = self.pre(x.float())
        with torch.inference_mode():
            if self.batch_one and x.shape[0] > 1:
                y = torch.cat([torch.as_tensor(self.net(x[i : i + 1])) for i in range(x.shape[0])])
            else:
                y = self.net(x)
        y = y[0] if isinstance(y, (tuple, list)) else y
        return self.post(torch.as_tensor(y).float())

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        """``N x C x H x W`` (source units) → ``N x C' x H x W`` (output units)."""
        batch = torch.as_tensor(batch, dtype=torch.float32).to(self.device)
        h, w = batch.shape[-2:]
        ph, pw = self.valid_shape(h, w)
        if (ph, pw) != (h, w):
            mode = "reflect" if ph - h < h and pw - w < w else "replicate"
            batch = F.pad(batch, (0, pw - w, 0, ph - h), mode=mode)
        y = from_model_layout(
            self.run_model_layout(to_model_layout(batch, self.input)), self.output
        )
        return y[..., :h, :w]

    def __repr__(self) -> str:
        return f"PackageModel({self.pkg.description.name!r}, {self.pkg.weights_format})"


class PackageRef:
    """A package by path, small enough for a Dask graph; loaded (and checked) once per process."""

    def __init__(self, pkg: Package, trust_code: bool = False) -> None:
        self.path, self.trust_code, self.weights = (
            str(pkg.path),
            bool(trust_code),
            pkg.weights_format,
        )
        self.key = pkg.key

    def open(self) -> Package:
        pkg = open_package(self.path, trust_code=self.trust_code, weights=self.weights)
        if pkg.key != self.key:
            raise PackageError(
                f"The package at {self.path} changed since the run was planned "
                f"(content key {pkg.key} vs {self.key}); rerun."
            )
        return pkg

    def load(self, device: torch.device | str) -> PackageModel:
        return PackageModel(self.open(), device)

    def __repr__(self) -> str:
        return f"PackageRef({self.path!r}, key={self.key!r})"


def _test_tensor(pkg: Package, tensor: Any, what: str) -> np.ndarray:
    from omeloc.modelio.bmz_import import _inside

    src = getattr(getattr(tensor, "test_tensor", None), "source", None)
    if src is None:
        raise PackageError(
            f"The package has no test {what} tensor; omeloc checks a package against its "
            f"test output before it runs. Re-export it with test tensors."
        )
    path = _inside(pkg.folder, src, f"test {what}")
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError) as err:
        raise PackageError(
            f"The test {what} {path.name} is not a readable .npy file ({err})."
        ) from None


def check_test_output(model: PackageModel) -> float:
    """Run the package's test input and compare with its test output (as bioimageio.core does).

    Returns the largest absolute difference.  Raises :class:`PackageError` when more elements
    than the package's tolerance allows differ by more than ``atol + rtol * |expected|``.
    """
    pkg = model.pkg
    x = _test_tensor(pkg, pkg.descr.inputs[0], "input")
    expected = _test_tensor(pkg, pkg.descr.outputs[0], "output").astype(np.float64)
    got = (
        model.run_model_layout(torch.from_numpy(x.astype(np.float32)).to(model.device))
        .cpu()
        .numpy()
    )
    if got.shape != expected.shape:
        raise PackageError(
            f"The package's test input gives an output of shape {got.shape}, not its test "
            f"output's {expected.shape}: the package does not reproduce; omeloc refuses it."
        )
    rtol, atol, per_million = 1e-3, 1e-3, 100
    cfg = getattr(getattr(pkg.descr, "config", None), "bioimageio", None)
    for tol in getattr(cfg, "reproducibility_tolerance", ()) or ():
        if not tol.weights_formats or pkg.weights_format in tol.weights_formats:
            rtol, atol = float(tol.relative_tolerance), float(tol.absolute_tolerance)
            per_million = float(tol.mismatched_elements_per_million)
            break
    diff = np.abs(got - expected)
    bad = int(np.count_nonzero(diff > atol + rtol * np.abs(expected)))
    if bad > per_million * expected.size / 1e6:
        raise PackageError(
            f"The package's {pkg.weights_format} weights do not reproduce its test output "
            f"({bad} of {expected.size} values differ, max |diff| {float(diff.max()):.3g} > "
            f"atol {atol:g} + rtol {rtol:g}); omeloc refuses to run it."
        )
    return float(diff.max()) if diff.size else 0.0
