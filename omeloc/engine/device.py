"""Where and at which precision a forward pass runs: device names, precision, autocast, memory
format.

Pure torch helpers shared by inference (:mod:`omeloc.engine.inference`) and training
(:mod:`omeloc.learn.training`): no model cache, no tiling, no store.
"""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager

import torch

from omeloc.config import PRECISIONS  # the one list (config.py imports no torch)
from omeloc.errors import InputError

__all__ = [
    "PRECISIONS",
    "autocast",
    "autocast_dtype",
    "cpu_has_bf16",
    "resolve_device",
    "resolve_precision",
    "to_channels_last",
    "uses_channels_last",
]

_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` → CUDA if present, then Apple MPS, then CPU; other names are checked.

    Raises
    ------
    InputError
        The name is unknown or the device is not available here.
    """
    if isinstance(device, torch.device):
        device = str(device)
    name = str(device).strip().lower()
    mps = getattr(torch.backends, "mps", None)
    mps_ok = bool(mps is not None and mps.is_available())
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if mps_ok else torch.device("cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError) as err:
        raise InputError(f"Unknown device {device!r}. Use auto, cpu, cuda, cuda:N or mps.") from err
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(
                f"Device {device!r} is not available (no CUDA here). Use device='auto' or 'cpu'."
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InputError(
                f"Device {device!r} does not exist ({torch.cuda.device_count()} GPUs). "
                f"Use cuda:0..cuda:{torch.cuda.device_count() - 1}."
            )
        return dev
    if dev.type == "mps":
        if not mps_ok:
            raise InputError(
                f"Device {device!r} is not available (no Apple MPS here). Use device='auto' or "
                "'cpu'."
            )
        return dev
    raise InputError(f"Unsupported device {device!r}. Use auto, cpu, cuda, cuda:N or mps.")


def cpu_has_bf16() -> bool:
    """Whether this CPU has native bf16 instructions (AVX512-BF16 or AMX), as oneDNN reports it."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # pragma: no cover - older torch
        return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """Turn ``precision`` into ``"fp32"``, ``"bf16"`` or ``"fp16"`` for ``device``.

    ``"auto"`` picks bf16 on CUDA GPUs that support it (else fp16), bf16 on CPUs with native
    bf16 instructions (AVX512-BF16 / AMX; else fp32) and fp32 on Apple MPS.

    Raises
    ------
    InputError
        ``precision`` is not one of :data:`PRECISIONS`.

    Examples
    --------
    >>> resolve_precision("fp16", torch.device("cpu"))
    'fp16'
    """
    if precision not in PRECISIONS:
        raise InputError(f"Unknown precision {precision!r}. Use one of {', '.join(PRECISIONS)}.")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type == "cpu":
        return "bf16" if cpu_has_bf16() else "fp32"
    return "fp32"


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a resolved precision (``None`` for ``"fp32"``: no autocast)."""
    try:
        return _DTYPES[precision]
    except KeyError:
        raise InputError(
            f"Expected a resolved precision (fp32, bf16 or fp16). Got {precision!r} instead."
        ) from None


def autocast(device: torch.device, precision: str, enabled: bool = True) -> AbstractContextManager:
    """A context in which forward passes on ``device`` run at ``precision`` (a resolved one).

    ``"fp32"`` (or ``enabled=False``) gives a context that changes nothing.
    """
    dtype = autocast_dtype(precision)
    if dtype is None or not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def uses_channels_last(device: torch.device) -> bool:
    """Whether models and inputs on ``device`` should use channels_last memory (CPU and CUDA)."""
    return device.type in ("cpu", "cuda")


def to_channels_last(
    x: torch.Tensor | torch.nn.Module, device: torch.device
) -> torch.Tensor | torch.nn.Module:
    """``x`` (a 4D tensor or a module) in channels_last memory format where the device gains from
    it."""
    if not uses_channels_last(device):
        return x
    if isinstance(x, torch.nn.Module):
        return x.to(memory_format=torch.channels_last)
    return x.contiguous(memory_format=torch.channels_last)
