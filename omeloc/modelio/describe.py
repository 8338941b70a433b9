"""What a model is, as a frozen record: :class:`ModelDescription` (inputs, outputs, axes, halo,
tile size rules, pixel size, normalization, identity), the one description every adapter gives.

An omeloc checkpoint, a BioImage Model Zoo package and an exported package describe themselves
with the same record (:func:`describe_checkpoint`, :func:`omeloc.modelio.bmz_import.open_package`),
so ``omeloc show`` prints one layout and ``omeloc export`` writes one mapping (BMZ spec 0.5).
The record is versioned JSON (:meth:`ModelDescription.to_json` / :meth:`from_json`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from omeloc.errors import InputError

__all__ = [
    "FORMAT",
    "AxisSpec",
    "ModelDescription",
    "Step",
    "TensorSpec",
    "describe_checkpoint",
    "valid_size",
]

FORMAT = "omeloc-model-description"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class AxisSpec:
    """One axis of a tensor: ``kind`` is ``batch``, ``channel``, ``space``, ``index`` or ``time``.

    Sizes: ``size`` fixed, else ``min + k * step`` (``step`` 0 means only ``min``); an output
    axis whose size follows an input axis has ``size=None, min=None`` and ``same_as``.
    """

    id: str
    kind: str
    size: int | None = None
    min: int | None = None
    step: int | None = None
    halo: int = 0
    scale: float = 1.0
    unit: str | None = None
    channel_names: tuple[str, ...] = ()
    same_as: str | None = None
    """``"tensor.axis"`` this output axis copies its size from."""

    def valid(self, n: int) -> int:
        """The smallest size this axis accepts that is ``>= n`` (raises when none is)."""
        return valid_size(n, self.size, self.min, self.step)


def valid_size(n: int, size: int | None, lo: int | None, step: int | None) -> int:
    """The smallest size ``>= n`` of the rule (fixed ``size``, or ``lo + k * step``).

    Examples
    --------
    >>> valid_size(100, None, 64, 16)
    112
    >>> valid_size(10, None, 64, 16)
    64
    """
    if size is not None:
        if n > size:
            raise InputError(f"Expected at most {size} px on a fixed-size axis. Got {n} instead.")
        return int(size)
    lo = int(lo or 1)
    if n <= lo or not step:
        if n > lo and not step:
            raise InputError(f"Expected at most {lo} px on a fixed-size axis. Got {n} instead.")
        return lo
    return lo + -(-(n - lo) // int(step)) * int(step)


@dataclass(frozen=True)
class Step:
    """One pre- or postprocessing operation, named as BMZ names it (``scale_linear``, ...)."""

    name: str
    kwargs: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def of(cls, name: str, **kwargs: Any) -> Step:
        return cls(name, tuple(sorted((k, _frozen(v)) for k, v in kwargs.items())))

    def args(self) -> dict[str, Any]:
        """The keyword arguments as a plain dict (lists for tuples)."""
        return {k: _thawed(v) for k, v in self.kwargs}

    def text(self) -> str:
        """``scale_linear(gain=0.1, offset=-2)``."""
        return f"{self.name}(" + ", ".join(f"{k}={_short(v)}" for k, v in self.args().items()) + ")"


def _frozen(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return tuple(_frozen(x) for x in v)
    if isinstance(v, Mapping):
        return tuple(sorted((str(k), _frozen(x)) for k, x in v.items()))
    return v


def _thawed(v: Any) -> Any:
    return [_thawed(x) for x in v] if isinstance(v, tuple) else v


def _short(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, list):
        return "[" + ", ".join(_short(x) for x in v) + "]"
    return repr(v) if isinstance(v, str) else str(v)


@dataclass(frozen=True)
class TensorSpec:
    """An input or output tensor: its axes (in order) and its processing steps."""

    id: str
    axes: tuple[AxisSpec, ...]
    processing: tuple[Step, ...] = ()
    description: str = ""

    @property
    def layout(self) -> str:
        """One letter per axis: ``bcyx``, ``bczyx`` (``i`` index, ``t`` time)."""
        letters = {"batch": "b", "channel": "c", "index": "i", "time": "t"}
        return "".join(letters.get(a.kind, a.id[:1]) for a in self.axes)

    def axis(self, letter: str) -> AxisSpec | None:
        """The axis of layout letter ``letter`` (``"y"``, ``"c"``), or ``None``."""
        for a, c in zip(self.axes, self.layout):
            if c == letter:
                return a
        return None

    @property
    def channel_names(self) -> tuple[str, ...]:
        c = self.axis("c")
        return c.channel_names if c is not None else (self.id,)

    def text(self) -> str:
        """One line per tensor for ``omeloc show``."""
        sizes = []
        for a, c in zip(self.axes, self.layout):
            if a.kind == "batch":
                continue
            if a.kind == "channel":
                sizes.append(f"c={len(a.channel_names)} ({', '.join(a.channel_names)})")
            elif a.size is not None:
                sizes.append(f"{c}={a.size}")
            elif a.same_as:
                sizes.append(f"{c}=as {a.same_as}")
            else:
                sizes.append(f"{c}={a.min}+k*{a.step}")
            if a.halo:
                sizes[-1] += f" halo {a.halo}"
        return f"{self.id} [{self.layout}] " + ", ".join(sizes)


@dataclass(frozen=True)
class ModelDescription:
    """What a model takes and gives: the record every adapter's ``describe()`` returns.

    Attributes
    ----------
    name, kind
        A display name; ``"omeloc-checkpoint"``, ``"bmz"`` or ``"onnx"``.
    inputs, outputs
        The tensors, axes and processing (normalization as BMZ steps).
    weights
        Weight formats available (``torchscript``, ``onnx``, ``pytorch_state_dict``, ...).
    pixel_size
        ``(y, x)`` spacing the model was trained at, with ``unit`` (``None``: not declared).
    identity
        ``id``, ``version``, ``sha256`` (of the package file) where known.
    training, metrics, authors, license, citations, documentation
        What ``omeloc show`` lists before a model runs over a plate.
    """

    name: str
    kind: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    weights: tuple[str, ...] = ()
    pixel_size: tuple[float, float] | None = None
    unit: str | None = None
    identity: tuple[tuple[str, str], ...] = ()
    training: tuple[tuple[str, Any], ...] = ()
    metrics: tuple[tuple[str, Any], ...] = ()
    authors: tuple[str, ...] = ()
    license: str | None = None
    citations: tuple[str, ...] = ()
    documentation: str = field(default="", repr=False)

    @property
    def halo(self) -> int:
        """Largest halo of any output spatial axis (pixels the model spoils at a tile's edge)."""
        return max((a.halo for t in self.outputs for a in t.axes if a.kind == "space"), default=0)

    def ident(self, key: str) -> str | None:
        return dict(self.identity).get(key)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            **json.loads(json.dumps(asdict(self))),
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> ModelDescription:
        """Parse :meth:`to_json`'s output (raises :class:`InputError` on anything else)."""
        if not isinstance(doc, Mapping) or doc.get("format") != FORMAT:
            raise InputError(f"Expected a {FORMAT} document. Got {str(doc)[:60]!r} instead.")
        if int(doc.get("format_version", 0)) > FORMAT_VERSION:
            raise InputError(
                f"Model description version {doc['format_version']} is newer than this "
                f"omeloc reads ({FORMAT_VERSION}). Upgrade omeloc."
            )
        try:

            def tensor(t: Mapping[str, Any]) -> TensorSpec:
                axes = tuple(
                    AxisSpec(**{**a, "channel_names": tuple(a.get("channel_names", ()))})
                    for a in t["axes"]
                )
                steps = tuple(
                    Step(s["name"], _frozen(s.get("kwargs", ()))) for s in t.get("processing", ())
                )
                return TensorSpec(str(t["id"]), axes, steps, str(t.get("description", "")))

            pairs = ("identity", "training", "metrics")
            return cls(
                name=str(doc["name"]),
                kind=str(doc["kind"]),
                inputs=tuple(tensor(t) for t in doc["inputs"]),
                outputs=tuple(tensor(t) for t in doc["outputs"]),
                weights=tuple(doc.get("weights", ())),
                pixel_size=tuple(doc["pixel_size"]) if doc.get("pixel_size") else None,
                unit=doc.get("unit"),
                authors=tuple(doc.get("authors", ())),
                license=doc.get("license"),
                citations=tuple(doc.get("citations", ())),
                documentation=str(doc.get("documentation", "")),
                **{k: tuple((str(a), _frozen(b)) for a, b in doc.get(k, ())) for k in pairs},
            )
        except (KeyError, TypeError, ValueError) as err:
            raise InputError(f"Malformed model description ({err}).") from None

    def text(self) -> str:
        """What ``omeloc show`` prints."""
        lines = [f"{self.name}  ({self.kind})"]
        lines += [f"  {k}: {v}" for k, v in self.identity if v]
        lines.append("  inputs:")
        for t in self.inputs:
            lines.append(f"    {t.text()}")
            lines += [f"      preprocessing: {s.text()}" for s in t.processing]
        lines.append("  outputs:")
        for t in self.outputs:
            lines.append(f"    {t.text()}")
            lines += [f"      postprocessing: {s.text()}" for s in t.processing]
        if self.weights:
            lines.append(f"  weights: {', '.join(self.weights)}")
        if self.pixel_size:
            lines.append(
                f"  pixel size: {self.pixel_size[0]:g} x {self.pixel_size[1]:g} "
                f"{self.unit or ''}".rstrip()
            )
        else:
            lines.append("  pixel size: not declared")
        if self.halo:
            lines.append(f"  halo: {self.halo} px")
        for title, pairs in (("training", self.training), ("metrics", self.metrics)):
            if pairs:
                lines.append(f"  {title}:")
                lines += [f"    {k}: {_short(_thawed(v))}" for k, v in pairs]
        if self.authors:
            lines.append(f"  authors: {'; '.join(self.authors)}")
        if self.license:
            lines.append(f"  license: {self.license}")
        lines += [f"  cite: {c}" for c in self.citations]
        return "\n".join(lines)

    def replace(self, **changes: Any) -> ModelDescription:
        return replace(self, **changes)


def _spatial(
    tensor: str, multiple: int, halo: int = 0, out: bool = False
) -> tuple[AxisSpec, AxisSpec]:
    if out:
        return tuple(AxisSpec(a, "space", same_as=f"{tensor}.{a}", halo=halo) for a in ("y", "x"))  # type: ignore
    return tuple(AxisSpec(a, "space", min=multiple, step=multiple) for a in ("y", "x"))  # type: ignore


def scale_linear_for(stats: Sequence[Mapping[str, Any]], inverse: bool = False) -> Step:
    """omeloc's percentile normalization ``(x - low) / (high - low)`` as a BMZ ``scale_linear`` step
    (per channel), or its inverse ``y * (high - low) + low``."""
    lows = [float(s["low"]) for s in stats]
    spans = [float(s["high"]) - float(s["low"]) for s in stats]
    if inverse:
        gain, offset = spans, lows
    else:
        gain = [1.0 / d for d in spans]
        offset = [-lo / d for lo, d in zip(lows, spans)]
    if len(stats) == 1:
        return Step.of("scale_linear", gain=gain[0], offset=offset[0])
    return Step.of("scale_linear", axis="channel", gain=gain, offset=offset)


def describe_checkpoint(ckpt: Any) -> ModelDescription:
    """The :class:`ModelDescription` of an omeloc :class:`~omeloc.learn.checkpoint.Checkpoint`."""
    arch = ckpt.architecture
    multiple = 2 ** int(arch.get("depth", 4))
    norm = ckpt.normalization
    src = TensorSpec(
        "input",
        (
            AxisSpec("batch", "batch"),
            AxisSpec("channel", "channel", channel_names=tuple(ckpt.source)),
            *_spatial("input", multiple),
        ),
        (scale_linear_for([norm[c] for c in ckpt.source]),),
    )
    dst = TensorSpec(
        "output",
        (
            AxisSpec("batch", "batch"),
            AxisSpec("channel", "channel", channel_names=tuple(ckpt.target)),
            *_spatial("input", multiple, out=True),
        ),
        (scale_linear_for([norm[c] for c in ckpt.target], inverse=True),),
    )
    prov = ckpt.provenance or {}
    pixel = prov.get("pixel_size")
    training = {
        k: prov[k]
        for k in (
            "plates",
            "train_wells",
            "val_wells",
            "steps",
            "seed",
            "crop",
            "batch_size",
            "level",
            "versions",
        )
        if k in prov
    }
    training = {
        "model": ckpt.model,
        "architecture": json.dumps(arch, sort_keys=True),
        **training,
        "tile advice": ckpt.tile,
        "overlap advice": ckpt.overlap,
    }
    metrics = {k: v for k, v in (ckpt.metrics or {}).items() if isinstance(v, (int, float, str))}
    return ModelDescription(
        name=f"{'+'.join(ckpt.source)} -> {'+'.join(ckpt.target)}",
        kind="omeloc-checkpoint",
        inputs=(src,),
        outputs=(dst,),
        weights=("omeloc weights.pt",),
        pixel_size=tuple(float(p) for p in pixel[-2:])
        if isinstance(pixel, (list, tuple))
        else None,
        unit=prov.get("pixel_unit"),
        identity=(("path", str(ckpt.path)),),
        training=tuple((k, _frozen(v)) for k, v in training.items()),
        metrics=tuple((k, v) for k, v in metrics.items()),
    )
