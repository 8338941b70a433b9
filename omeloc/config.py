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

__all__ = [
    "DEVICE_DEFAULTS",
    "ComputeConfig",
    "Config",
    "TilingConfig",
    "TrainConfig",
    "csv_list",
    "option",
    "resolve",
]

C = TypeVar("C", bound="Config")


def csv_list(text: str) -> list[str]:
    """``"B2, C3"`` → ``["B2", "C3"]`` (the CLI's comma-separated lists)."""
    return [part.strip() for part in text.split(",") if part.strip()]


def option(
    default: Any,
    help: str = "",
    *,
    choices: Sequence[Any] | None = None,
    parse: Callable[[str], Any] | None = None,
    metavar: str | None = None,
    cli: bool = True,
) -> Any:
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
    meta = {
        "help": help,
        "choices": tuple(choices) if choices else None,
        "parse": parse,
        "metavar": metavar,
        "cli": cli,
    }
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
                raise InputError(
                    f"{f.name}={value!r} is not one of {', '.join(map(str, choices))}; choose one "
                    "of them"
                )

    def replace(self: C, **overrides: Any) -> C:
        """A copy with some options changed; an unknown option name is an error that lists the
        known ones."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise InputError(
                f"unknown {type(self).__name__} option(s) {', '.join(unknown)}; "
                f"known: {', '.join(sorted(names))}"
            )
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
    def add_arguments(
        cls,
        parser: argparse.ArgumentParser | Any,
        *,
        only: Sequence[str] | None = None,
        skip: Sequence[str] = (),
        defaults: Mapping[str, Any] | None = None,
    ) -> None:
        """Add one ``--option`` per field to ``parser`` (``only``/``skip`` select; ``defaults``
        override)."""
        defaults = dict(defaults or {})
        for f in dataclasses.fields(cls):
            if (
                not f.metadata.get("cli", True)
                or f.name in skip
                or (only is not None and f.name not in only)
            ):
                continue
            _add_argument(parser, f, defaults.get(f.name, f.default), cls._flags.get(f.name))

    @classmethod
    def from_args(cls: type[C], args: argparse.Namespace, **extra: Any) -> C:
        """The configuration from parsed CLI arguments (fields missing in ``args`` keep their
        default)."""
        values = {
            f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)
        }
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
            parser.add_argument(
                "--no-" + flag[2:],
                dest=f.name,
                action="store_false",
                help=f"{help_text} (on by default; this flag turns it off)",
            )
        else:
            parser.add_argument(flag, dest=f.name, action="store_true", help=help_text)
        return
    parse = meta.get("parse") or (type(default) if default is not None else str)
    shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
    kwargs: dict[str, Any] = {
        "dest": f.name,
        "type": parse,
        "default": default,
        "help": f"{help_text} (default: {shown})"
        if help_text and default is not None
        else help_text or None,
    }
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
    return (
        base.replace(**{k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()})
        if overrides
        else base
    )


# ---------------------------------------------------------------------------------------------
DEVICES_HELP = "auto, cpu, cuda, cuda:1, mps"
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
BLENDS = ("cosine", "gaussian", "linear", "constant")


MODELS = ("unet", "pix2pix")
LOSSES = ("mse", "l1", "mse+ssim", "l1+ssim")
SCHEDULES = ("cosine", "constant")
BLOCKS = ("conv", "residual", "convnext")
NORMS = ("batch", "instance", "group", "none")
KEEP_BEST = ("pearson_r", "structure_r", "l1")
#: steps of a run given neither ``steps`` nor ``minutes``
DEFAULT_STEPS = 2000
#: what the device-dependent options (``None`` in :class:`TrainConfig`) become when not given:
#: sized to learn within minutes on a CPU, the larger model and crops on a GPU
DEVICE_DEFAULTS: Mapping[str, Mapping[str, int]] = {
    "cpu": {"depth": 3, "base_channels": 16, "crop": 128, "batch_size": 4},
    "gpu": {"depth": 4, "base_channels": 32, "crop": 256, "batch_size": 8},
}


@dataclasses.dataclass(frozen=True)
class TrainConfig(Config):
    """What a model learns and how (``omeloc train``, :func:`omeloc.train`, :func:`omeloc.relate`).

    :meth:`validate` checks every value that needs no plate (model, loss, schedule, precision,
    sizes, the crop being a multiple of ``2**depth``); the plate-dependent checks (channels,
    wells, crop vs image size) happen in :func:`omeloc.train`.

    Attributes
    ----------
    model : {"unet", "pix2pix"}
        A U-Net trained with a pixel loss, or pix2pix (U-Net generator + 70×70 PatchGAN,
        L1 + λ·cGAN).
    steps
        Optimizer steps in total (with ``resume``, the run continues up to this number).
        Default :data:`DEFAULT_STEPS`; with ``minutes``, the most steps the budget may choose.
    minutes
        Train for this long instead of a fixed number of steps: the step time is measured on a
        few steps (whose updates are discarded), the number of steps is fitted so that the run
        (preparation, training, validations) ends within the budget, and the learning-rate
        schedule is fitted to that number, then re-fitted to the pace as the run goes
        (:mod:`omeloc.learn.budget`).  A resumed run finishes the plan saved with it.
    val_wells
        Wells held out for validation (names like ``B3``).  Default: every fourth well.
    crop, batch_size, level
        Crop side (a multiple of ``2**depth``), crops per step, pyramid level read.
        ``None``: by device (:data:`DEVICE_DEFAULTS`; a default crop shrinks to fit small images).
    lr
        Adam learning rate; default 3e-3 for the U-Net, 2e-4 (β1 = 0.5) for pix2pix.
    seed
        Same seed, same data, same device → same weights (with ``minutes``, the same number of
        steps too: that one depends on the measured speed).
    device, precision
        ``"auto"`` uses CUDA (then MPS, then CPU); mixed precision (bf16/fp16) on CUDA only.
    depth, base_channels, norm, block
        U-Net shape.  Depth and width ``None``: by device (CPU 3 and 16: 0.5 M parameters;
        GPU 4 and 32: 7.8 M).  ``norm``: batch, instance, group (GroupNorm, independent of
        the batch) or none.  ``block``: two plain 3×3 convolutions (``"conv"``), the same with
        a residual connection (``"residual"``), or a ConvNeXt block (``"convnext"``: 7×7
        depthwise convolution, norm, 4× pointwise expansion, GELU, residual).
    lambda_l1
        Weight of the L1 term for pix2pix (100 in Isola et al.).
    loss : {"mse", "l1", "mse+ssim", "l1+ssim"}
        Pixel loss of the U-Net (default mse: on synthetic actin → WAVE2 it reached held-out r 0.84
        where L1 reached 0.76 in the same 300 steps); ``+ssim`` adds ``1 - SSIM`` (Gaussian
        window, σ 1.5).  pix2pix always uses L1, as in the paper.
    detail
        Weight of an L1 term on high-pass detail (image minus its Gaussian blur, σ 4 px: the
        scale :func:`~omeloc.analysis.metrics.structure_r` removes); 0 disables.
    schedule : {"cosine", "constant"}
        Learning rate over the run: a 5 % linear warm-up then cosine decay to 5 % of ``lr``
        (a function of the step alone, so resumed runs follow it exactly), or constant.
    val_every, val_crops
        Validation interval (default: ten times per run) and number of fixed validation crops.
    min_foreground
        Reject crops whose source has less than this fraction of foreground (0 disables).
    foreground_weight
        Bias crops towards the target's foreground: a crop whose target has a foreground
        fraction ``f`` is kept with probability ``1 - w + w * min(1, f / 0.25)`` (0: uniform).
    augment
        Random flips and 90° rotations.
    intensity_augment
        Random gain (0.8–1.25), offset (±0.05), Gaussian blur (σ up to 1 px, a third of the
        crops) and noise (std up to 0.03) of the normalized source; the target is unchanged.
    keep_best : {None, "pearson_r", "structure_r", "l1"}
        Keep the weights of the validation with the best value of this metric (on the held-out
        crops) instead of the last ones.
    warmup
        pix2pix: the fraction of the steps during which the generator learns on L1 alone (no
        discriminator), before the adversarial loss starts (default 0.5).
    spectral_norm
        pix2pix: spectral normalization on every discriminator convolution (no instance norm;
        default on).  With these and the U-Net's learning rate, pix2pix came within 0.02
        structure r of the U-Net at 2 minutes per pair, where the paper's settings (lr 2e-4,
        no warm-up) stayed 0.3–0.65 below it (``benchmarks/README.md``, related pairs).
    prefetch
        Batches read ahead on a background thread (0: read in the loop).
    """

    model: str = option("unet", "architecture", choices=MODELS)
    steps: int | None = option(
        None,
        f"optimizer steps (default {DEFAULT_STEPS}; with --minutes: at most this many)",
        parse=int,
    )
    minutes: float | None = option(
        None,
        "train for this many minutes: steps and learning-rate schedule fitted to "
        "the measured step time",
        parse=float,
    )
    val_wells: tuple[str, ...] | None = option(
        None,
        "wells held out for validation (default: every fourth well)",
        parse=csv_list,
        metavar="B2,C3",
    )
    crop: int | None = option(
        None,
        "crop side in pixels, a multiple of 2**depth (default by device: 128 CPU, 256 GPU)",
        parse=int,
    )
    batch_size: int | None = option(
        None, "crops per step (default by device: 4 CPU, 8 GPU)", parse=int
    )
    level: int = option(0, "pyramid level to train on")
    lr: float | None = option(None, "learning rate (default 3e-3)", parse=float)
    seed: int = option(0, "random seed (crops, weights)")
    device: str = option("auto", DEVICES_HELP)
    precision: str = option("auto", "numeric precision of the forward pass", choices=PRECISIONS)
    depth: int | None = option(None, "U-Net depth (default by device: 3 CPU, 4 GPU)", parse=int)
    base_channels: int | None = option(
        None,
        "U-Net width (default by device: 16 CPU, 32 GPU: 7.8 M parameters at depth 4)",
        parse=int,
    )
    norm: str = option("batch", "normalization layers", choices=NORMS)
    block: str = option("conv", "U-Net block: conv, residual or convnext", choices=BLOCKS)
    lambda_l1: float = option(100.0, "pix2pix weight of the L1 term")
    loss: str = option("mse", "U-Net loss", choices=LOSSES)
    detail: float = option(0.0, "weight of an L1 loss on high-pass detail (0: off)")
    schedule: str = option("cosine", "learning-rate schedule", choices=SCHEDULES)
    val_every: int | None = option(
        None, "validate every N steps (default: 10 times per run)", parse=int
    )
    val_crops: int = option(16, "validation crops")
    min_foreground: float = option(
        0.02, "reject crops whose source has less than this fraction of foreground"
    )
    foreground_weight: float = option(
        0.0, "bias crops towards the target's foreground (0 uniform .. 1)"
    )
    augment: bool = option(True, "random flips and 90-degree rotations")
    intensity_augment: bool = option(False, "random gain, offset, blur and noise of the source")
    keep_best: str | None = option(
        None,
        "keep the weights with the best validation pearson_r, structure_r or l1",
        metavar="METRIC",
    )
    warmup: float = option(
        0.5, "pix2pix: fraction of the steps trained on L1 alone before the adversarial loss"
    )
    spectral_norm: bool = option(True, "pix2pix: spectral-normalized discriminator")
    prefetch: int = option(2, "batches read ahead in a background thread")
    z_window: int = option(
        1,
        "planes the model sees around each output plane (odd; 1: per-plane 2D; >1: a 2.5D "
        "model, a 3D convolution collapsing z before the 2D U-Net)",
        parse=int,
        metavar="K",
    )

    def validate(self) -> None:
        # the messages are those omeloc.train has always given (tests and users match on them)
        if self.model not in MODELS:
            raise InputError(f"Unknown model {self.model!r}. Use one of {', '.join(MODELS)}.")
        if self.loss not in LOSSES:
            raise InputError(f"Unknown loss {self.loss!r}. Use one of {', '.join(LOSSES)}.")
        if self.schedule not in SCHEDULES:
            raise InputError(
                f"Unknown learning-rate schedule {self.schedule!r}. Use cosine or constant."
            )
        if (self.steps or 1) < 1 or (self.batch_size or 1) < 1 or self.val_crops < 1:
            raise InputError(
                f"Expected steps, batch size and validation crops >= 1. Got {self.steps}, "
                f"{self.batch_size}, {self.val_crops} instead."
            )
        if self.precision not in PRECISIONS:
            raise InputError(f"Unknown precision {self.precision!r}. Use auto, fp32, bf16 or fp16.")
        super().validate()
        self._validate_recipe()
        for name in ("depth", "base_channels"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise InputError(f"{name} must be at least 1 (got {getattr(self, name)})")
        if self.crop is not None and self.depth is not None and self.crop % 2**self.depth:
            multiple = 2**self.depth
            lo = max(multiple, self.crop - self.crop % multiple)
            raise InputError(
                f"Expected a crop that is a multiple of {multiple} (U-Net depth {self.depth}). Got "
                f"{self.crop} instead: pass --crop {lo} or {lo + multiple}."
            )
        if self.level < 0:
            raise InputError(f"level must be 0 or more (got {self.level})")
        if self.z_window < 1 or self.z_window % 2 == 0:
            raise InputError(
                "Expected an odd --z-window (1, 3, 5, ...: the output plane and as many planes "
                f"above as below). Got {self.z_window} instead."
            )
        if self.lr is not None and not self.lr > 0:
            raise InputError(f"lr must be positive (got {self.lr})")
        if self.val_every is not None and self.val_every < 1:
            raise InputError(f"val_every must be at least 1 (got {self.val_every})")

    def _validate_recipe(self) -> None:
        """The options of the budget and the recipe (minutes, weights, fractions, keep_best)."""
        if self.minutes is not None and not self.minutes > 0:
            raise InputError(f"Expected --minutes > 0. Got {self.minutes} instead.")
        for name in ("detail", "lambda_l1"):
            if not getattr(self, name) >= 0:
                raise InputError(f"Expected {name} >= 0. Got {getattr(self, name)} instead.")
        for name in ("foreground_weight", "warmup"):
            if not 0 <= getattr(self, name) <= 1:
                raise InputError(
                    f"Expected {name} between 0 and 1. Got {getattr(self, name)} instead."
                )
        if self.keep_best is not None and self.keep_best not in KEEP_BEST:
            raise InputError(
                f"Unknown --keep-best metric {self.keep_best!r}. Use one of {', '.join(KEEP_BEST)}."
            )

    def with_device_defaults(self, device_type: str) -> tuple[TrainConfig, dict[str, int]]:
        """This configuration with the options left ``None`` set for ``device_type``, and those set.

        ``device_type`` is a ``torch.device.type``: ``"cuda"`` and ``"mps"`` get the GPU
        defaults, anything else the CPU ones (:data:`DEVICE_DEFAULTS`).  Options given
        explicitly are kept.
        """
        table = DEVICE_DEFAULTS["gpu" if device_type in ("cuda", "mps") else "cpu"]
        chosen = {k: v for k, v in table.items() if getattr(self, k) is None}
        return self.replace(**chosen), chosen


def parse_batch_size(text: str) -> int | str:
    """``--batch-size``: a whole number of tiles, or ``auto``."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a whole number or 'auto', got {text!r}"
        ) from None


@dataclasses.dataclass(frozen=True)
class TilingConfig(Config):
    """How a model is applied to images larger than a tile (``omeloc predict``).

    ``tta``: test-time augmentation; every tile is predicted in its 8 flips and 90° rotations,
    each mapped back, and the 8 averaged (8× the compute).  ``uncertainty``: the same, and the
    spread of the 8 written as a second channel (``omeloc predict`` only).
    """

    tile: int | None = option(
        None, "tile size in pixels (default: the checkpoint's advice)", parse=int
    )
    overlap: int | None = option(
        None, "tile overlap in pixels (default: the checkpoint's)", parse=int
    )
    blend: str = option("cosine", "tile blending window", choices=BLENDS)
    batch_size: int | str = option(
        "auto",
        "tiles per forward pass, or 'auto': 4 on a CPU, on a GPU as many as "
        "fit half its free memory",
        parse=parse_batch_size,
    )
    device: str = option("auto", DEVICES_HELP)
    precision: str = option("auto", "numeric precision of the forward pass", choices=PRECISIONS)
    tta: bool = option(
        False, "test-time augmentation: average the 8 flips/rotations of every tile (8x compute)"
    )
    uncertainty: bool = option(
        False,
        "also write the spread (standard deviation) of the 8 test-time variants as channel "
        "'<target> (uncertainty)' beside the prediction, in the same write (implies --tta)",
    )

    def validate(self) -> None:
        super().validate()
        if self.batch_size != "auto" and (
            isinstance(self.batch_size, bool)
            or not isinstance(self.batch_size, int)
            or self.batch_size < 1
        ):
            raise InputError(f"batch_size must be at least 1 or 'auto' (got {self.batch_size!r})")


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

    LOCAL_SCHEDULERS: ClassVar[tuple[str, ...]] = (
        "threads",
        "threading",
        "sync",
        "synchronous",
        "single-threaded",
        "processes",
        "multiprocessing",
    )

    scheduler: str | None = option(None, "a running Dask scheduler", metavar="tcp://HOST:PORT")
    workers: int | None = option(None, "start a local cluster of N worker processes", parse=int)
    client: Any = option(None, cli=False)

    def validate(self) -> None:
        super().validate()
        if sum(getattr(self, n) is not None for n in ("scheduler", "workers", "client")) > 1:
            raise InputError(
                "Give at most one of client, scheduler (--scheduler) and workers (--workers)."
            )
        if (
            self.scheduler is not None
            and self.scheduler not in self.LOCAL_SCHEDULERS
            and "://" not in self.scheduler
        ):
            raise InputError(
                f"scheduler {self.scheduler!r} is neither an address (tcp://host:port) nor one of "
                f"{', '.join(self.LOCAL_SCHEDULERS)}; fix --scheduler"
            )
        if self.workers is not None and self.workers < 1:
            raise InputError(f"Expected --workers >= 1. Got {self.workers} instead.")

    @property
    def address(self) -> str | None:
        """The scheduler address, or None when the work runs in this process or on a local
        cluster."""
        return (
            self.scheduler
            if self.scheduler and self.scheduler not in self.LOCAL_SCHEDULERS
            else None
        )

    @property
    def local_scheduler(self) -> str | None:
        """The local Dask scheduler name, if one was given."""
        return self.scheduler if self.scheduler in self.LOCAL_SCHEDULERS else None

    def connected(self, client: Any) -> "ComputeConfig":
        """The same place to run once :func:`omeloc.compute.dask_client` has started it.

        ``client`` is what ``dask_client`` yielded: a ``distributed.Client`` (kept, so nobody
        starts a second cluster), or ``None`` (the local scheduler, by name if one was given).
        """
        if client is not None:
            return ComputeConfig(client=client)
        return ComputeConfig(scheduler=self.local_scheduler)
