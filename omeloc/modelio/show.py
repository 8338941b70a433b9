"""``omeloc show``'s library side: the description of a checkpoint folder or a BMZ package."""

from __future__ import annotations

from pathlib import Path

from omeloc.modelio.describe import ModelDescription, describe_checkpoint

__all__ = ["show_model"]


def show_model(model: str | Path) -> tuple[ModelDescription, tuple[Path, ...]]:
    """The :class:`ModelDescription` of ``model`` and the figures beside it (curves, cover).

    Opens a package without loading its weights or running its code (no ``--trust-code`` needed
    to look at it).

    Raises
    ------
    CheckpointError
        Neither a readable checkpoint nor a readable package.
    """
    from omeloc.learn.checkpoint import load_checkpoint
    from omeloc.modelio.bmz_import import _load_descr, _locate, describe_package, is_package

    if is_package(model):
        folder, rdf, digest = _locate(model)
        descr = _load_descr(rdf)
        sources = (getattr(c, "source", c) for c in (descr.covers or ()))
        covers = tuple(folder / Path(str(getattr(s, "path", s))).name for s in sources)
        return describe_package(descr, digest), tuple(c for c in covers if c.is_file())
    ckpt = load_checkpoint(model)
    figures = tuple(p for p in (ckpt.path / "curves.png",) if p.is_file())
    return describe_checkpoint(ckpt), figures
