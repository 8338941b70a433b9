"""Which wells a model was trained and validated on, read from its checkpoint (for ``evaluate``).

A score on a training well says how well the model remembers; only held-out (validation)
wells and wells of other plates (``unseen``) say how well it predicts.  ``omeloc train``
records ``train_wells``, ``val_wells`` and ``plates`` in the checkpoint's provenance
(:func:`omeloc.learn.training.train`); this module reads them back and labels each
evaluated well ``train``, ``validation`` or ``unseen`` (``unknown`` without a checkpoint).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omeloc.errors import CheckpointError

__all__ = ["SPLITS", "TrainingSplit", "read_training_split"]

logger = logging.getLogger(__name__)

#: The values of the ``split`` column, in the order the summary lists them.
SPLITS = ("validation", "unseen", "train", "unknown")


def _names(value: Any) -> frozenset[str]:
    return frozenset(str(v) for v in value) if isinstance(value, list) else frozenset()


def _same_plate(recorded: str, plate_path: str) -> bool:
    """Whether a plate recorded at training time may be the plate evaluated now.

    The same path, or the same folder name (a copy or a move of the training plate): erring
    towards ``train`` never passes training wells off as unseen ones.
    """
    a, b = recorded.rstrip("/"), plate_path.rstrip("/")
    if a == b or a.rsplit("/", 1)[-1] == b.rsplit("/", 1)[-1]:
        return True
    if "://" in a or "://" in b:
        return False
    try:
        return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()
    except (OSError, RuntimeError):
        return False


@dataclass(frozen=True)
class TrainingSplit:
    """The wells a checkpoint was trained and validated on, and its no-learning baseline.

    Attributes
    ----------
    checkpoint : str
        The checkpoint folder read (empty when none was found).
    plates : tuple of str
        The plates it was trained on, as recorded.
    train_wells, val_wells : frozenset of str
        Well names (``"B3"``).
    baseline_r : float or None
        The validation Pearson r of the source channel itself, as ``train`` measured it.
    val_r : float or None
        The model's validation Pearson r at the end of training.
    """

    checkpoint: str
    plates: tuple[str, ...]
    train_wells: frozenset[str]
    val_wells: frozenset[str]
    baseline_r: float | None = None
    val_r: float | None = None

    @classmethod
    def unknown(cls) -> TrainingSplit:
        """No checkpoint: every well is ``unknown``."""
        return cls("", (), frozenset(), frozenset())

    def split_of(self, well: str, plate_path: str) -> str:
        """``train``, ``validation``, ``unseen`` (another plate, or a well it never saw) or
        ``unknown``."""
        if not self.checkpoint:
            return "unknown"
        if self.plates and not any(_same_plate(p, plate_path) for p in self.plates):
            return "unseen"
        if well in self.val_wells:
            return "validation"
        return "train" if well in self.train_wells else "unseen"


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def read_training_split(checkpoint: str | Path) -> TrainingSplit:
    """The split recorded in a checkpoint folder's ``checkpoint.json`` (untrusted: checked here).

    Raises
    ------
    CheckpointError
        No readable ``checkpoint.json`` in the folder.
    """
    folder = Path(checkpoint).expanduser()
    meta_path = folder / "checkpoint.json" if folder.is_dir() else folder
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(
            f"Cannot read the training split from {meta_path} ({err}). Pass the folder "
            f"that 'omeloc train --out' wrote as --model."
        ) from None
    prov = meta.get("provenance") if isinstance(meta, Mapping) else None
    prov = prov if isinstance(prov, Mapping) else {}
    metrics = meta.get("metrics") if isinstance(meta, Mapping) else None
    metrics = metrics if isinstance(metrics, Mapping) else {}
    plates = prov.get("plates")
    return TrainingSplit(
        checkpoint=str(folder.resolve()),
        plates=tuple(str(p) for p in plates) if isinstance(plates, list) else (),
        train_wells=_names(prov.get("train_wells")),
        val_wells=_names(prov.get("val_wells")),
        baseline_r=_number(metrics.get("baseline_pearson_r")),
        val_r=_number(metrics.get("val_pearson_r")),
    )
