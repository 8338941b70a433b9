"""The per-process model cache: model references, loading once per process, inference preparation.

A :class:`ModelRef` (``key`` + ``load(device)``) is a tiny object that Dask tasks share; an
in-memory ``nn.Module`` or callable is wrapped into an :class:`InMemoryModel`.  Every process
loads a model once (:func:`get_model`), prepared for inference (:func:`prepare_model`: eval
mode, no gradients, BatchNorm folded, channels_last).
"""

from __future__ import annotations

import copy
import logging
import threading
import uuid
from collections import OrderedDict
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F

from omeloc.engine.device import to_channels_last
from omeloc.errors import InputError

__all__ = [
    "InMemoryModel",
    "InstanceNormAsGroupNorm",
    "ModelRef",
    "clear_model_cache",
    "fold_batchnorm",
    "get_model",
    "model_loads",
    "prepare_model",
    "swap_instance_norms",
]

logger = logging.getLogger(__name__)

_CACHE_SIZE = 4
_cache: OrderedDict[tuple[str, str], Any] = OrderedDict()
_cache_lock = threading.Lock()
_loads: dict[str, int] = {}


@runtime_checkable
class ModelRef(Protocol):
    """A model that can be loaded by name in any process (e.g. a checkpoint path).

    ``key`` identifies the weights (two refs with the same key load the same model);
    ``load(device)`` returns the model on ``device``.  Refs are pickled into the graph, so
    they must be small (a path, not weights).
    """

    key: str

    def load(self, device: torch.device) -> Any:
        """Return the model (an ``nn.Module`` or a callable) on ``device``."""
        ...


class InMemoryModel:
    """A ModelRef around a model object already in memory (an ``nn.Module`` or a callable).

    ``load`` returns a deep copy of a module moved to the device (the caller's module is
    never changed: not moved, not switched to eval mode), or the callable itself.

    Raises
    ------
    InputError
        ``model`` is not callable.
    """

    def __init__(self, model: Any, key: str | None = None) -> None:
        if not callable(model):
            raise InputError(
                f"Expected a model: an nn.Module, a callable or a ModelRef. "
                f"Got {type(model).__name__} instead."
            )
        self.model = model
        self.key = key or f"in-memory:{type(model).__name__}:{uuid.uuid4().hex}"

    def load(self, device: torch.device) -> Any:
        """A copy of the module on ``device``, or the callable itself."""
        if isinstance(self.model, torch.nn.Module):
            return copy.deepcopy(self.model).to(device)
        return self.model

    def __repr__(self) -> str:
        return f"InMemoryModel({type(self.model).__name__}, key={self.key!r})"


def fold_batchnorm(module: torch.nn.Module) -> torch.nn.Module:
    """Fold every eval-mode ``BatchNorm2d`` that follows a ``Conv2d`` in an ``nn.Sequential``.

    The convolution absorbs the normalization (exact up to float rounding) and the norm
    becomes ``nn.Identity``: ~9 % faster on CPU for the default U-Net.  Changes ``module``
    in place (call it on a copy) and returns it.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    if isinstance(module, torch.nn.Sequential):
        for i in range(len(module) - 1):
            conv, bn = module[i], module[i + 1]
            if (
                type(conv) is torch.nn.Conv2d
                and type(bn) is torch.nn.BatchNorm2d
                and not conv.training
                and not bn.training
                and bn.track_running_stats
            ):
                module[i] = fuse_conv_bn_eval(conv, bn)
                module[i + 1] = torch.nn.Identity()
    for child in module.children():
        fold_batchnorm(child)
    return module


class InstanceNormAsGroupNorm(torch.nn.Module):
    """An ``InstanceNorm2d`` without running statistics, as a GroupNorm of one channel per group.

    The two are the same normalization (mean and variance of each channel of each sample over
    y and x, then the channel's affine map), equal up to float rounding (~1e-5 of the output's
    scale).  On CPU, ``instance_norm`` reshapes a channels_last input to ``(1, N*C, H, W)``
    and copies it back and forth around a batch norm; ``group_norm`` has a channels_last
    kernel.  On MONAI's BasicUNet (instance norm after every convolution) that copy made
    channels_last slower than the plain layout (``benchmarks/README.md``, inference).
    """

    def __init__(self, norm: torch.nn.modules.instancenorm._InstanceNorm) -> None:
        super().__init__()
        self.weight, self.bias, self.eps = norm.weight, norm.bias, float(norm.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:  # unbatched (C, H, W): what InstanceNorm2d itself does
            return F.instance_norm(x[None], weight=self.weight, bias=self.bias, eps=self.eps)[0]
        return F.group_norm(x, x.shape[1], self.weight, self.bias, self.eps)


def swap_instance_norms(module: torch.nn.Module) -> torch.nn.Module:
    """Replace every ``InstanceNorm2d`` that uses no running statistics by
    :class:`InstanceNormAsGroupNorm` (in place; call it on a copy), and return ``module``."""
    for name, child in module.named_children():
        if type(child) is torch.nn.InstanceNorm2d and not child.track_running_stats:
            setattr(module, name, InstanceNormAsGroupNorm(child))
        else:
            swap_instance_norms(child)
    return module


def prepare_model(model: Any, device: torch.device) -> Any:
    """Make a loaded model ready for inference on ``device`` (in place for modules).

    Modules: moved to ``device``, eval mode, no gradients, BatchNorm folded into the
    preceding convolutions (:func:`fold_batchnorm`) and, on CPU/CUDA, channels_last memory
    format; on CPU, instance norms computed by the channels_last group-norm kernel
    (:func:`swap_instance_norms`).  Plain callables are returned as they are.
    """
    if isinstance(model, torch.nn.Module):
        model = fold_batchnorm(model.to(device).eval())
        if torch.device(device).type == "cpu":
            model = swap_instance_norms(model)
        for p in model.parameters():
            p.requires_grad_(False)
        model = to_channels_last(model, device)
    return model


def get_model(ref: ModelRef, device: torch.device | str = "cpu") -> Any:
    """The model of ``ref`` on ``device``, loaded at most once per process (thread-safe).

    The cache holds the last few models (keyed by ``(ref.key, device)``); a prepared model is
    in eval mode, without gradients and, on CPU/CUDA, in channels_last memory format.
    """
    dev = torch.device(device)
    cache_key = (str(ref.key), str(dev))
    with _cache_lock:
        model = _cache.get(cache_key)
        if model is None:
            logger.info("loading model %s on %s", ref.key, dev)
            model = prepare_model(ref.load(dev), dev)
            _loads[str(ref.key)] = _loads.get(str(ref.key), 0) + 1
            _cache[cache_key] = model
            while len(_cache) > _CACHE_SIZE:
                _cache.popitem(last=False)
        else:
            _cache.move_to_end(cache_key)
        return model


def model_loads(key: str | None = None) -> int:
    """How many times this process has loaded a model (``key``: one model's content key) from its
    source.

    On a Dask cluster, ``client.run(model_loads)`` tells how often each worker loaded the model:
    once per worker process is the design (the model is never pickled into tasks).
    """
    with _cache_lock:
        return _loads.get(key, 0) if key is not None else sum(_loads.values())


def clear_model_cache() -> None:
    """Forget every cached model of this process."""
    with _cache_lock:
        _cache.clear()
