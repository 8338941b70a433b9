"""Training / validation split by well: the fields of one well are never on both sides.

:func:`default_val_wells` is the one rule for which wells are held out when the user names
none (every fourth well, at least one); :func:`split_by_well` applies it to the plates a model
trains on, and :func:`omeloc.relate` uses it to choose the wells it scores on.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from omeloc.errors import InputError
from omeloc.ngff.plate import Image, Plate

__all__ = ["Split", "check_wells_left", "default_val_wells", "split_by_well"]

logger = logging.getLogger(__name__)

W = TypeVar("W")


def default_val_wells(wells: Sequence[W]) -> list[W]:
    """The wells held out when none are named: every fourth well (4th, 8th, ...), else the last
    one."""
    return list(wells[3::4] or wells[-1:])


def check_wells_left(held_out: int, total: int) -> None:
    """Raise :class:`~omeloc.errors.InputError` when ``held_out`` of ``total`` wells leaves none
    to train on."""
    if held_out >= total:
        raise InputError(
            f"Expected some wells left for training. Got all {total} wells held out: "
            f"pass fewer --val-wells."
        )


@dataclass(frozen=True)
class Split:
    """Images to train and to validate on, and the names of their wells.

    ``val_wells`` is empty when nothing is held out (a single well, or single images): then
    ``val_images`` are the training images themselves.
    """

    train_images: list[Image]
    val_images: list[Image]
    train_wells: list[str]
    val_wells: list[str]


def split_by_well(plates: Sequence[Plate], val_wells: Sequence[str] | None) -> Split:
    """Training and validation images of ``plates``; validation is whole wells (never a crop of a
    training well).

    Parameters
    ----------
    plates
        Opened plates (or single images opened as plates; these have no wells to hold out).
    val_wells
        Well names (``"B3"``) or paths (``"B/3"``) to hold out, in any of the plates; ``None``:
        :func:`default_val_wells` of all wells (none when there is only one).

    Raises
    ------
    InputError
        An unknown well, every well held out, or ``val_wells`` with single images.
    """
    singles = [img for p in plates if not p.is_plate for img in p.images]
    if singles:  # single images (not plates): no wells to hold out
        if val_wells:
            raise InputError(
                "--val-wells needs plates; single images have no wells. Drop --val-wells, or "
                "train on a plate."
            )
        logger.warning(
            "training on single image(s): validation crops come from the training images"
        )
        imgs = singles + [img for p in plates if p.is_plate for img in p.images]
        return Split(imgs, imgs, [i.name for i in imgs], [])
    wells = [w for p in plates for w in p.wells.values()]
    chosen = {id(w) for w in _held_out(wells, val_wells)}
    train = [w for w in wells if id(w) not in chosen]
    val = [w for w in wells if id(w) in chosen]
    check_wells_left(len(wells) - len(train), len(wells))
    train_imgs = [img for w in train for img in w.images]
    val_imgs = [img for w in val for img in w.images]
    if not val_imgs:
        if plates[0].is_plate:
            logger.warning("only one well: validation crops come from the training well")
        val_imgs = train_imgs
    return Split(train_imgs, val_imgs, [w.name for w in train], [w.name for w in val])


def _held_out(wells: list, val_wells: Sequence[str] | None) -> list:
    if val_wells is None:
        return default_val_wells(wells) if len(wells) >= 2 else []
    held = []
    for v in val_wells:
        hits = [w for w in wells if v in (w.name, w.path)]
        if not hits:
            raise InputError(
                f"No well {v!r} to hold out for validation. Wells: "
                f"{', '.join(w.name for w in wells)}."
            )
        held.extend(hits)
    return held
