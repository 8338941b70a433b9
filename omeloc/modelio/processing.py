"""BMZ pre- and postprocessing steps in torch, applied tile by tile inside an adapter.

Each :class:`~omeloc.modelio.describe.Step` named as the BioImage Model Zoo spec 0.5 names it
(``scale_linear``, ``fixed_zero_mean_unit_variance``, ``zero_mean_unit_variance``,
``scale_range``, ``clip``, ``sigmoid``, ``softmax``, ``binarize``, ``ensure_dtype``) becomes
a function of an ``N x C x [Z x] H x W`` tensor, with the formulas (and ``eps``) of
bioimageio.core, so a package runs the same with or without it.  Sample statistics
(``zero_mean_unit_variance``, ``scale_range``, percentile ``clip``) are measured over the tensor
the adapter is given: a whole field when the tile covers it (the default for such models).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from omeloc.errors import InputError
from omeloc.modelio.describe import Step

__all__ = ["SAMPLE_STATISTICS", "SUPPORTED_STEPS", "compile_steps"]

#: steps whose statistics are measured on the data (per sample), not stored in the package
SAMPLE_STATISTICS = ("zero_mean_unit_variance", "scale_range")
SUPPORTED_STEPS = (
    "scale_linear",
    "fixed_zero_mean_unit_variance",
    "zero_mean_unit_variance",
    "scale_range",
    "clip",
    "sigmoid",
    "softmax",
    "binarize",
    "ensure_dtype",
)

Op = Callable[[torch.Tensor], torch.Tensor]


def _along(
    values: float | Sequence[float], axis: str | None, axes: Sequence[str], x: torch.Tensor
) -> torch.Tensor:
    """``values`` broadcast along ``axis`` of ``x`` (axes named by ``axes``)."""
    v = torch.as_tensor(values, dtype=torch.float32, device=x.device)
    if v.ndim == 0 or axis is None:
        return v
    shape = [1] * x.ndim
    shape[list(axes).index(axis)] = v.numel()
    return v.reshape(shape)


def _reduce_dims(kwargs: dict, axes: Sequence[str]) -> list[int]:
    named = kwargs.get("axes")
    if named is None:
        return [i for i, a in enumerate(axes) if a not in ("batch", "b")]
    missing = [a for a in named if a not in axes]
    if missing:
        raise InputError(
            f"A processing step reduces over axes {missing} that its tensor "
            f"({', '.join(axes)}) does not have. Fix the package's rdf.yaml."
        )
    return [list(axes).index(a) for a in named]


def _step(step: Step, axes: Sequence[str]) -> Op:
    k = step.args()
    name = step.name
    eps = float(k.get("eps", 1e-6))
    if name == "scale_linear":
        return lambda x: (
            x * _along(k.get("gain", 1.0), k.get("axis"), axes, x)
            + _along(k.get("offset", 0.0), k.get("axis"), axes, x)
        )
    if name == "fixed_zero_mean_unit_variance":
        return lambda x: (
            (x - _along(k["mean"], k.get("axis"), axes, x))
            / (_along(k["std"], k.get("axis"), axes, x) + eps)
        )
    if name == "zero_mean_unit_variance":

        def zmuv(x: torch.Tensor) -> torch.Tensor:
            dims = _reduce_dims(k, axes)
            mean = x.mean(dim=dims, keepdim=True)
            std = x.std(dim=dims, keepdim=True, unbiased=False)
            return (x - mean) / (std + eps)

        return zmuv
    if name in ("scale_range", "clip"):

        def percentile(x: torch.Tensor, q: float) -> torch.Tensor:
            dims = _reduce_dims(k, axes)
            keep = [i for i in range(x.ndim) if i not in dims]
            moved = x.permute(*keep, *dims).reshape(*[x.shape[i] for i in keep], -1)
            val = torch.quantile(moved.float(), q / 100.0, dim=-1, keepdim=True)
            shape = [x.shape[i] if i in keep else 1 for i in range(x.ndim)]
            return val.reshape(shape)

        if name == "scale_range":
            lo_q, hi_q = float(k.get("min_percentile", 0.0)), float(k.get("max_percentile", 100.0))
            if k.get("reference_tensor"):
                raise InputError(
                    "scale_range with a reference_tensor is not supported by omeloc; "
                    "use a package whose steps refer to their own tensor."
                )

            def scale_range(x: torch.Tensor) -> torch.Tensor:
                lo, hi = percentile(x, lo_q), percentile(x, hi_q)
                return (x - lo) / (hi - lo + eps)

            return scale_range

        def clip(x: torch.Tensor) -> torch.Tensor:
            lo = k.get("min")
            hi = k.get("max")
            lo = (
                percentile(x, float(k["min_percentile"]))
                if k.get("min_percentile") is not None
                else lo
            )
            hi = (
                percentile(x, float(k["max_percentile"]))
                if k.get("max_percentile") is not None
                else hi
            )
            lo_t = torch.as_tensor(lo, dtype=x.dtype, device=x.device) if lo is not None else None
            hi_t = torch.as_tensor(hi, dtype=x.dtype, device=x.device) if hi is not None else None
            return torch.clamp(x, min=lo_t, max=hi_t)

        return clip
    if name == "sigmoid":
        return torch.sigmoid
    if name == "softmax":
        dim = list(axes).index(k.get("axis", "channel"))
        return lambda x: torch.softmax(x, dim=dim)
    if name == "binarize":
        return lambda x: (x > _along(k["threshold"], k.get("axis"), axes, x)).float()
    if name == "ensure_dtype":
        return lambda x: (
            x.float()
        )  # omeloc computes in float32; the write-back casts to the plate's dtype
    raise InputError(
        f"Unsupported processing step {name!r}; omeloc supports {', '.join(SUPPORTED_STEPS)}."
    )


def compile_steps(steps: Sequence[Step], axes: Sequence[str]) -> Op:
    """One function applying ``steps`` in order to a tensor with axes named ``axes``.

    Raises
    ------
    InputError
        A step omeloc does not implement (the message lists those it does).
    """
    ops = [_step(s, axes) for s in steps]

    def run(x: torch.Tensor) -> torch.Tensor:
        for op in ops:
            x = op(x)
        return x

    return run
