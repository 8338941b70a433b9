"""Configuration objects: each option written once, validated once.

A configuration is a frozen dataclass whose fields carry their CLI help in
:func:`option` metadata.  From that one declaration come

- the Python API: ``train(plate, "actin", "WAVE2", config=TrainConfig(steps=500))`` or the
  same as keyword overrides, ``train(plate, "actin", "WAVE2", steps=500)`` (:func:`resolve`);
- the CLI options: :meth:`Config.add_arguments` adds ``--steps`` etc. to an argparse parser,
  :meth:`Config.from_args` reads them back;
- the provenance written into checkpoints and plates: :meth:`Config.to_dict`.

Three configurations cover the package: :class:`TrainConfig` (what a model learns and how),
:class:`TilingConfig` (how a model is applied to large images) and :class:`ComputeConfig`
(where the work runs: threads here, a local cluster, or a Dask scheduler).
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, TypeVar

from omeloc.errors import InputError

__all__ = ["option", "Config", "TrainConfig", "TilingConfig", "ComputeConfig", "resolve", "csv_list"]

C = TypeVar("C", bound="Config")


def csv_list(text: str) -> list[str]:
    """``"B2, C3"`` → ``["B2", "C3"]`` (the CLI's comma-separated lists)."""
    return [part.strip() for part in text.split(",") if part.strip()]


def option(default: Any, help: str = "", *, choices: Sequence[Any] | None = None, parse: Callable[[str], Any] | None = None,
           metavar: str | None = None, cli: bool = True) -> Any:
    """A configuration field: its default, its CLI help and how the CLI parses it.

    Parameters
    ----------
    default
        Default value (immutable: tuples, not lists).
    help
        One line for ``--help``; the default is appended.
    choices
        Allowed values, checked by :meth:`Config.validate` and by argparse.
    parse
        Function turning the CLI text into the value (default: the type of ``default``).
    metavar
        Placeholder shown in ``--help``.
    cli
        ``False`` for options that only the Python API offers.
    """
    meta = {"help": help, "choices": tuple(choices) if choices else None, "parse": parse, "metavar": metavar, "cli": cli}
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass(frozen=True)
class Config:
    """Base of the configuration dataclasses (see the module docstring)."""

    #: option names that this class exposes on the command line under another flag
    _flags: ClassVar[Mapping[str, str]] = {}

    def __post_init__(self) -> None:
        self.validate()

    # -- Python API ---------------------------------------------------------------------
    def validate(self) -> None:
        """Raise :class:`~omeloc.errors.InputError` (one line) for a value out of range."""
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            value = getattr(self, f.name)
            if choices and value not in choices:
                raise InputError(f"{f.name}={value!r} is not one of {', '.join(map(str, choices))}; choose one of them")

    def replace(self: C, **overrides: Any) -> C:
        """A copy with some options changed; an unknown option name is an error that lists the known ones."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise InputError(f"unknown {type(self).__name__} option(s) {', '.join(unknown)}; "
                             f"known: {', '.join(sorted(names))}")
        return dataclasses.replace(self, **overrides)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly values (tuples as lists), for provenance."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not f.metadata.get("cli", True) and not _jsonable(value):
                continue
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    # -- command line -------------------------------------------------------------------
    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser | Any, *, only: Sequence[str] | None = None,
                      skip: Sequence[str] = (), defaults: Mapping[str, Any] | None = None) -> None:
        """Add one ``--option`` per field to ``parser`` (``only``/``skip`` select; ``defaults`` override)."""
        defaults = dict(defaults or {})
        for f in dataclasses.fields(cls):
            if not f.metadata.get("cli", True) or f.name in skip or (only is not None and f.name not in only):
                continue
            _add_argument(parser, f, defaults.get(f.name, f.default), cls._flags.get(f.name))

    @classmethod
    def from_args(cls: type[C], args: argparse.Namespace, **extra: Any) -> C:
        """The configuration from parsed CLI arguments (fields missing in ``args`` keep their default)."""
        values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
        values.update(extra)
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def _jsonable(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool, list, tuple, dict))


def _add_argument(parser: Any, f: dataclasses.Field, default: Any, flag: str | None) -> None:
    flag = flag or "--" + f.name.replace("_", "-")
    meta = f.metadata
    help_text = meta.get("help", "")
    if isinstance(default, bool):
        if default:
            parser.add_argument("--no-" + flag[2:], dest=f.name, action="store_false", help=help_text + " (off)")
        else:
            parser.add_argument(flag, dest=f.name, action="store_true", help=help_text)
        return
    parse = meta.get("parse") or (type(default) if default is not None else str)
    shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
    kwargs: dict[str, Any] = {"dest": f.name, "type": parse, "default": default,
                              "help": f"{help_text} (default: {shown})" if help_text else None}
    if meta.get("choices"):
        kwargs["choices"] = meta["choices"]
    if meta.get("metavar"):
        kwargs["metavar"] = meta["metavar"]
    parser.add_argument(flag, **kwargs)


def resolve(cls: type[C], config: C | None, overrides: Mapping[str, Any]) -> C:
    """``config`` (or the defaults) with keyword ``overrides`` applied; lists become tuples.

    This is how every public function accepts both ``config=`` and plain keywords.
    """
    if config is not None and not isinstance(config, cls):
        raise InputError(f"config must be a {cls.__name__}, not {type(config).__name__}")
    base = config if config is not None else cls()
    return base.replace(**{k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}) if overrides else base


# ---------------------------------------------------------------------------------------------
DEVICES_HELP = "auto, cpu, cuda, cuda:1, mps"
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
BLENDS = ("cosine", "gaussian", "linear", "constant")


@dataclasses.dataclass(frozen=True)
class TrainConfig(Config):
    """What a model learns and how (``omeloc train``; see :func:`omeloc.train`)."""

    model: str = option("unet", "architecture", choices=("unet", "pix2pix"))
    steps: int = option(2000, "optimizer steps")
    val_wells: tuple[str, ...] | None = option(None, "wells held out for validation (default: every fourth well)",
                                               parse=csv_list, metavar="B2,C3")
    crop: int = option(256, "crop side in pixels (multiple of 2**depth)")
    batch_size: int = option(8, "crops per step")
    level: int = option(0, "pyramid level to train on")
    lr: float | None = option(None, "learning rate (default 3e-3 U-Net, 2e-4 pix2pix)", parse=float)
    seed: int = option(0, "random seed (crops, weights)")
    device: str = option("auto", DEVICES_HELP)
    precision: str = option("auto", "numeric precision of the forward pass", choices=PRECISIONS)
    depth: int = option(4, "U-Net depth")
    base_channels: int = option(32, "U-Net width (32: 7.8 M parameters at depth 4)")
    norm: str = option("batch", "normalization layers", choices=("batch", "instance", "group", "none"))
    lambda_l1: float = option(100.0, "pix2pix weight of the L1 term")
    loss: str = option("mse", "U-Net loss", choices=("mse", "l1"))
    schedule: str = option("cosine", "learning-rate schedule", choices=("cosine", "constant"))
    val_every: int | None = option(None, "validate every N steps (default: 10 times per run)", parse=int)
    val_crops: int = option(16, "validation crops")
    min_foreground: float = option(0.02, "reject crops whose target foreground fraction is below this")
    augment: bool = option(True, "random flips and 90-degree rotations")
    prefetch: int = option(2, "batches read ahead in a background thread")

    def validate(self) -> None:
        super().validate()
        for name in ("steps", "crop", "batch_size", "depth", "base_channels", "val_crops"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be at least 1 (got {getattr(self, name)})")
        if self.level < 0:
            raise InputError(f"level must be 0 or more (got {self.level})")
        if self.crop % (2 ** self.depth):
            raise InputError(f"crop {self.crop} must be a multiple of 2**depth = {2 ** self.depth}; "
                             f"use e.g. --crop {max(1, self.crop // 2 ** self.depth) * 2 ** self.depth}")
        if self.lr is not None and not self.lr > 0:
            raise InputError(f"lr must be positive (got {self.lr})")


@dataclasses.dataclass(frozen=True)
class TilingConfig(Config):
    """How a model is applied to images larger than a tile (``omeloc predict``)."""

    tile: int | None = option(None, "tile size in pixels (default: the checkpoint's advice)", parse=int)
    overlap: int | None = option(None, "tile overlap in pixels (default: the checkpoint's)", parse=int)
    blend: str = option("cosine", "tile blending window", choices=BLENDS)
    batch_size: int = option(4, "tiles per forward pass")
    device: str = option("auto", DEVICES_HELP)
    precision: str = option("auto", "numeric precision of the forward pass", choices=PRECISIONS)

    def validate(self) -> None:
        super().validate()
        if self.batch_size < 1:
            raise InputError(f"batch_size must be at least 1 (got {self.batch_size})")


@dataclasses.dataclass(frozen=True)
class ComputeConfig(Config):
    """Where the work runs.

    Nothing set: dask's threaded scheduler in this process.  ``scheduler`` is where the graph runs,
    with the meaning Dask gives it: the name of a local scheduler (``"threads"``,
    ``"synchronous"``) or the address of a running Dask scheduler (``"tcp://host:8786"``, whose
    workers must read the plate and the checkpoint).  ``workers=N``: a local cluster of N worker
    processes, closed afterwards.  ``client``: a ``distributed.Client`` the caller manages
    (Python API only).
    """

    LOCAL_SCHEDULERS: ClassVar[tuple[str, ...]] = ("threads", "sync", "synchronous", "single-threaded")

    scheduler: str | None = option(None, "a running Dask scheduler", metavar="tcp://HOST:PORT")
    workers: int | None = option(None, "start a local cluster of N worker processes", parse=int)
    client: Any = option(None, cli=False)

    def validate(self) -> None:
        super().validate()
        given = [n for n in ("scheduler", "workers", "client") if getattr(self, n) is not None]
        if len(given) > 1:
            raise InputError(f"give only one of {' and '.join(given)}: they say where the work runs")
        if self.scheduler is not None and self.scheduler not in self.LOCAL_SCHEDULERS and "://" not in self.scheduler:
            raise InputError(f"scheduler {self.scheduler!r} is neither an address (tcp://host:port) nor one of "
                             f"{', '.join(self.LOCAL_SCHEDULERS)}; fix --scheduler")
        if self.workers is not None and self.workers < 1:
            raise InputError(f"workers must be at least 1 (got {self.workers})")

    @property
    def address(self) -> str | None:
        """The scheduler address, or None when the work runs in this process or on a local cluster."""
        return self.scheduler if self.scheduler and self.scheduler not in self.LOCAL_SCHEDULERS else None

    @property
    def local_scheduler(self) -> str | None:
        """The local Dask scheduler name, if one was given."""
        return self.scheduler if self.scheduler in self.LOCAL_SCHEDULERS else None
