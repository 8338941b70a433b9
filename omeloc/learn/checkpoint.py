"""Self-describing, safely loadable model checkpoints.

A checkpoint is a folder::

    DIR/checkpoint.json   architecture, source/target channels, normalization statistics,
                          tile advice, training provenance, validation metrics
    DIR/weights.pt        the (generator's) state dict, loaded with ``weights_only=True``
    DIR/last.pt           training state for ``resume`` (optimizers, step, RNG), same rules
    DIR/train_log.csv     one row per logged step
    DIR/curves.png        learning curves

Weights are never unpickled as arbitrary objects: :func:`load_checkpoint` and
:func:`load_state` use ``torch.load(..., weights_only=True)``, which refuses anything but
tensors and plain containers, so a tampered file raises :class:`~omeloc.errors.CheckpointError`
instead of running code.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from omeloc.errors import CheckpointError, InputError

FORMAT = "omeloc-checkpoint"
FORMAT_VERSION = 1
#: the deepest pyramid level a checkpoint may say it was trained on (2**16 downsampling)
MAX_LEVEL = 16
META_FILE = "checkpoint.json"
WEIGHTS_FILE = "weights.pt"
STATE_FILE = "last.pt"

__all__ = [
    "ARCHITECTURE_LIMITS",
    "MAX_LEVEL",
    "MAX_PARAMETERS",
    "Checkpoint",
    "CheckpointRef",
    "atomic_torch_save",
    "build_network",
    "check_architecture",
    "load_checkpoint",
    "load_state",
    "save_checkpoint",
    "save_state",
]


#: the largest U-Net a checkpoint may describe: integer settings from 1 to these, and at most
#: MAX_PARAMETERS weights (a checkpoint is untrusted input: depth 10**6 must not exhaust memory)
ARCHITECTURE_LIMITS = {
    "depth": 10,
    "base_channels": 1024,
    "in_channels": 1024,
    "out_channels": 1024,
    "z_window": 63,
}
MAX_PARAMETERS = 2**30


def check_architecture(architecture: Any, where: str = "The checkpoint") -> None:
    """Refuse an architecture whose sizes are not small positive integers or whose weights would be
    absurd.

    Raises
    ------
    CheckpointError
        One line naming the setting and the allowed range.
    """
    if not isinstance(architecture, dict):
        raise CheckpointError(
            f"{where} has architecture {architecture!r}, not a JSON object. Retrain."
        )
    for key, top in ARCHITECTURE_LIMITS.items():
        value = architecture.get(key, 1)
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= top:
            raise CheckpointError(
                f"{where} has architecture {key}={repr(value)[:40]}; expected an integer from 1 "
                f"to {top}. Retrain, or restore {META_FILE}."
            )
    depth, base = int(architecture.get("depth", 4)), int(architecture.get("base_channels", 32))
    weights = 40 * sum(
        (base * 2**i) ** 2 for i in range(depth + 1)
    )  # an upper bound of the U-Net's weights
    if weights > MAX_PARAMETERS:
        raise CheckpointError(
            f"{where} has an architecture of about {weights:.1e} weights (depth {depth}, "
            f"base_channels {base}), more than the {MAX_PARAMETERS:.1e} omeloc builds. "
            f"Retrain smaller."
        )


def build_network(architecture: dict[str, Any]) -> torch.nn.Module:
    """The (untrained) network an architecture dict describes
    (``{"architecture": "unet", ...}``)."""
    from omeloc.learn.models import UNet

    check_architecture(architecture)
    arch = dict(architecture)
    kind = arch.pop("architecture", None)
    if kind != "unet":
        raise CheckpointError(
            f"Unknown architecture {kind!r} in checkpoint; this omeloc builds 'unet' generators. "
            f"Upgrade omeloc or retrain."
        )
    try:
        return UNet(**arch)
    except (TypeError, ValueError) as err:
        raise CheckpointError(
            f"Checkpoint architecture {architecture} does not describe a U-Net: {err}."
        ) from err


@dataclass
class Checkpoint:
    """What :func:`load_checkpoint` returns: the metadata of a trained model and its weights' path.

    Attributes
    ----------
    path
        The checkpoint folder.
    architecture
        Constructor arguments of the generator, with ``"architecture": "unet"``.
    model
        ``"unet"`` or ``"pix2pix"`` (how it was trained; both predict with the U-Net).
    source, target
        Channel labels the model reads and predicts, in order.
    normalization
        Per-channel ``{"low", "high"}`` percentile statistics (sources and targets).
    tile, overlap, level
        Tile advice for prediction and the pyramid level it was trained on.
    provenance
        Plates, wells, steps, seed, versions, settings.
    metrics
        Validation metrics (``val_pearson_r``, ``baseline_pearson_r``, ...).
    pixel_size
        The training level's pixel size (``{"y", "x", "z", "unit"}``, unit ``"micrometer"`` or
        ``None`` when the plate had none; :class:`~omeloc.learn.units.PixelSize`); ``None`` for
        checkpoints written before omeloc recorded it.
    """

    path: Path
    architecture: dict[str, Any]
    model: str
    source: list[str]
    target: list[str]
    normalization: dict[str, dict[str, Any]]
    tile: int = 512
    overlap: int = 32
    level: int = 0
    provenance: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    pixel_size: dict[str, Any] | None = None

    @property
    def pixel(self) -> Any:
        """:attr:`pixel_size` as a :class:`~omeloc.learn.units.PixelSize` (``None`` when not
        recorded)."""
        from omeloc.learn.units import PixelSize

        return PixelSize.from_json(self.pixel_size)

    @property
    def z_window(self) -> int:
        """Planes the model reads around each output plane (1: a 2D model)."""
        return int(self.architecture.get("z_window", 1))

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("path")
        return {"format": FORMAT, "format_version": FORMAT_VERSION, **d}

    def build_model(self, device: str | torch.device = "cpu") -> torch.nn.Module:
        """The generator with its trained weights, in eval mode on ``device``."""
        net = build_network(self.architecture)
        state = _safe_load(self.path / WEIGHTS_FILE)
        try:
            net.load_state_dict(state)
        except (RuntimeError, TypeError, KeyError) as err:
            raise CheckpointError(
                f"The weights in {self.path / WEIGHTS_FILE} do not fit the architecture in "
                f"{META_FILE} ({str(err).splitlines()[0]}). Retrain or restore the original file."
            ) from None
        return net.to(device).eval()


def save_checkpoint(ckpt: Checkpoint, state_dict: dict[str, torch.Tensor]) -> Path:
    """Write ``weights.pt`` and ``checkpoint.json`` into ``ckpt.path`` (atomically each)."""
    folder = Path(ckpt.path)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_torch_save({k: v.detach().cpu() for k, v in state_dict.items()}, folder / WEIGHTS_FILE)
    tmp = folder / f".{META_FILE}.tmp"
    tmp.write_text(json.dumps(ckpt.to_json(), indent=2, default=_json_default))
    os.replace(tmp, folder / META_FILE)
    return folder


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save(obj, path)`` through a temporary file and a rename: ``path`` is never half
    written."""
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _safe_load(path: Path) -> Any:
    if not path.is_file():
        raise CheckpointError(
            f"Missing {path.name} in checkpoint {path.parent}. Pass the folder that "
            f"'omeloc train --out' wrote."
        )
    try:
        with (
            warnings.catch_warnings()
        ):  # torch warns about pickle protocols on stderr: one error line is enough
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(err))
        what = f"the Python object {found.group(1)}" if found else "Python objects besides tensors"
        raise CheckpointError(
            f"Refused to load {path}: it holds {what}, which omeloc never unpickles. Use a "
            f"checkpoint written by 'omeloc train' (weights only)."
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, AttributeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"Cannot read {path} (truncated or not a torch file: {first[:160]}). "
            f"Restore it or retrain."
        ) from None


def save_state(folder: str | Path, state: dict[str, Any]) -> Path:
    """Write the resume state (``last.pt``: tensors and plain containers only) into ``folder``,
    atomically."""
    path = Path(folder) / STATE_FILE
    atomic_torch_save(state, path)
    return path


def load_state(folder: str | Path) -> dict[str, Any]:
    """The resume state (``last.pt``) of a checkpoint folder, loaded with ``weights_only=True``."""
    return _safe_load(Path(folder) / STATE_FILE)


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint folder's metadata (weights are loaded by :meth:`Checkpoint.build_model`).

    Raises
    ------
    CheckpointError
        The folder or its files are missing, unreadable or not an omeloc checkpoint.
    """
    folder = Path(path).expanduser()
    if folder.is_file() and folder.name in (META_FILE, WEIGHTS_FILE):
        folder = folder.parent
    meta_path = folder / META_FILE
    if not folder.exists():
        raise CheckpointError(
            f"No checkpoint at {folder}: the folder does not exist. Pass the folder that "
            f"'omeloc train --out' wrote."
        )
    if not meta_path.is_file():
        raise CheckpointError(
            f"{folder} is not an omeloc checkpoint: it has no {META_FILE}. Pass the folder "
            f"that 'omeloc train --out' wrote."
        )
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(
            f"{meta_path} is not valid JSON ({err}). Restore it or retrain."
        ) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f'{meta_path} is not an omeloc checkpoint (no "format": "{FORMAT}").')
    version = meta.get("format_version", 0)
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise CheckpointError(
            f"{meta_path} has format_version {str(version)[:40]!r}, not a whole number "
            f"(this omeloc writes {FORMAT_VERSION}). Restore the file or retrain."
        )
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{meta_path} has format version {meta['format_version']}; this omeloc reads "
            f"up to {FORMAT_VERSION}. Upgrade omeloc."
        )
    try:
        ckpt = Checkpoint(
            path=folder.resolve(),
            architecture=dict(meta["architecture"]),
            model=str(meta.get("model", "unet")),
            source=list(meta["source"]),
            target=list(meta["target"]),
            normalization=dict(meta["normalization"]),
            tile=int(meta.get("tile", 512)),
            overlap=int(meta.get("overlap", 32)),
            level=int(meta.get("level", 0)),
            provenance=dict(meta.get("provenance", {})),
            metrics=dict(meta.get("metrics", {})),
            pixel_size=meta.get("pixel_size"),
        )
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(
            f"{meta_path} lacks or mangles a required field ({err}). Restore it or retrain."
        ) from None
    if not 0 <= ckpt.level <= MAX_LEVEL:
        raise CheckpointError(
            f"{meta_path} says it was trained on pyramid level {ckpt.level}, not a level "
            f"between 0 and {MAX_LEVEL}. Restore the file or retrain."
        )
    check_architecture(ckpt.architecture, str(meta_path))
    _ = ckpt.pixel  # refuses a mangled pixel size
    for ch in ckpt.source + ckpt.target:
        if ch not in ckpt.normalization:
            raise CheckpointError(
                f"{meta_path} has no normalization statistics for channel {ch!r}. Retrain."
            )
    if not (folder / WEIGHTS_FILE).is_file():
        raise CheckpointError(
            f"Missing {WEIGHTS_FILE} in checkpoint {folder}. Restore it or retrain."
        )
    return ckpt


class CheckpointRef:
    """A checkpoint by path: small enough to travel in a Dask graph, loaded once per worker.

    ``key`` is a digest of the weights file and the metadata, so a retrained model in the same
    folder is never confused with the old one in a worker's model cache.
    """

    def __init__(self, path: str | Path | Checkpoint) -> None:
        ckpt = path if isinstance(path, Checkpoint) else load_checkpoint(path)
        self.path = str(ckpt.path)
        h = hashlib.sha256()
        for name in (META_FILE, WEIGHTS_FILE):
            h.update((ckpt.path / name).read_bytes())
        self.key = f"checkpoint:{h.hexdigest()[:20]}"

    def load(self, device: torch.device | str) -> torch.nn.Module:
        """The trained generator on ``device`` (read from the folder: call it in the process that
        runs it)."""
        return load_checkpoint(self.path).build_model(device)

    def __repr__(self) -> str:
        return f"CheckpointRef({self.path!r}, key={self.key!r})"


def check_level(ckpt: Checkpoint, levels: int, where: str) -> None:
    """Refuse a checkpoint trained on a pyramid level that the images at ``where`` do not have.

    Raises
    ------
    InputError
        ``ckpt.level`` is not below ``levels`` (the plate's pyramid depth).
    """
    if ckpt.level >= levels:
        raise InputError(
            f"The checkpoint {ckpt.path} was trained on pyramid level {ckpt.level}, but {where} "
            f"has {levels} level(s) (0 to {levels - 1}): its pixel size does not match any level "
            f"there. Use a model trained on this plate's levels (omeloc train --level)."
        )
