"""A BMZ package where plate prediction expects a model: :class:`PackageStain`.

Plate prediction (:mod:`omeloc.jobs.predict`) applies a model through a small surface: its
source and target channel names, a :class:`~omeloc.engine.cache.ModelRef` (``ref``), per-channel
statistics for the engine's normalization hooks, tile advice and provenance.  An omeloc
checkpoint gives it as :class:`~omeloc.learn.stain.VirtualStain`; :class:`PackageStain` gives
the same for a package, with the package's own pre/postprocessing inside its adapter
(:class:`~omeloc.modelio.runtime.PackageModel`), so the engine's statistics are the identity
and everything else — tiling, blending, TTA/uncertainty, Dask, write-back — is one path.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omeloc.config import TilingConfig, resolve
from omeloc.errors import InputError
from omeloc.modelio.bmz_import import Package, PackageError, is_package, open_package
from omeloc.modelio.describe import ModelDescription
from omeloc.modelio.processing import SAMPLE_STATISTICS
from omeloc.modelio.runtime import PackageModel, PackageRef, check_test_output

__all__ = ["MAX_TILE", "PackageStain", "is_package", "open_model"]

logger = logging.getLogger(__name__)

#: the largest tile omeloc searches for a size the package accepts
MAX_TILE = 4096
DEFAULT_TILE, DEFAULT_OVERLAP = 512, 32
_IDENTITY = {"low": 0.0, "high": 1.0}


@dataclass
class _PackageRecord:
    """What the prediction job reads from ``stain.checkpoint``: path, level, identity statistics."""

    path: Path
    normalization: dict[str, dict[str, float]]
    architecture: dict[str, Any]
    package: Package = field(repr=False)
    trust_code: bool = False
    level: int = 0
    reproduced: float | None = None
    pixel_size: dict[str, Any] | None = None
    """Not compared with the plate's yet (a package's declared pixel size is only shown)."""

    @property
    def pixel(self) -> Any:
        """No training pixel size to check against (see :attr:`pixel_size`)."""
        return None

    @property
    def z_window(self) -> int:
        """Packages run plane by plane (one z plane in, one out)."""
        return 1

    def build_model(self, device: str = "cpu") -> PackageModel:
        """Load the weights and check that the package reproduces its test output (once)."""
        model = PackageModel(self.package, device)
        if self.reproduced is None:
            self.reproduced = check_test_output(model)
        return model


class PackageStain:
    """A BMZ package applied to a plate: the package's inputs read from plate channels ``source``.

    Parameters
    ----------
    path
        The package (``.zip``, folder or ``rdf.yaml``).
    source
        Plate channels for the package's input channels, in order (default: the package's own
        channel names).
    trust_code, weights
        See :func:`omeloc.modelio.bmz_import.open_package`.
    """

    def __init__(
        self,
        path: str | Path,
        source: Sequence[str] | None = None,
        trust_code: bool = False,
        weights: str | None = None,
    ) -> None:
        pkg = open_package(path, trust_code=trust_code, weights=weights)
        d = pkg.description
        names = list(d.inputs[0].channel_names)
        if source is not None:
            source = [str(s) for s in source]
            if len(source) != len(names):
                raise InputError(
                    f"The package reads {len(names)} channel(s) ({', '.join(names)}); --source "
                    "names "
                    f"{len(source)} ({', '.join(source)}). Give one plate channel per input "
                    "channel."
                )
            names = source
        self.package, self.description = pkg, d
        self.source_names, self.target_names = names, list(d.outputs[0].channel_names)
        self.ref = PackageRef(pkg, trust_code)
        stats = {n: dict(_IDENTITY) for n in [*self.source_names, *self.target_names]}
        self.checkpoint = _PackageRecord(
            path=pkg.path,
            normalization=stats,
            package=pkg,
            trust_code=trust_code,
            architecture={"architecture": f"bmz:{pkg.weights_format}"},
        )
        self.channel_hint = (
            "Map the package's inputs to plate channels with --source, e.g. --source "
            + ",".join(["CHANNEL"] * len(names))
            + "."
        )

    def __repr__(self) -> str:
        return f"PackageStain({self.description.name!r}, {self.package.weights_format})"

    @property
    def source(self) -> list[str]:
        return list(self.source_names)

    @property
    def target(self) -> list[str]:
        return list(self.target_names)

    def describe(self) -> ModelDescription:
        return self.description

    @property
    def sample_statistics(self) -> bool:
        """Whether a preprocessing step measures statistics on the data (whole-field tiles)."""
        return any(
            s.name in SAMPLE_STATISTICS
            or (s.name == "clip" and any("percentile" in k for k, _ in s.kwargs))
            for s in self.description.inputs[0].processing
        )

    def tiling(self, tiling: TilingConfig | None = None, **overrides: Any) -> TilingConfig:
        """Tile and overlap that the package's size rules and halo allow (the user's where they do).

        Raises
        ------
        InputError
            No tile up to :data:`MAX_TILE` px satisfies the rules with a core inside the halo.
        """
        cfg = resolve(TilingConfig, tiling, overrides)
        inp = self.description.inputs[0]
        ya, xa = inp.axis("y"), inp.axis("x")
        halo = self.description.halo
        need = 4 * halo  # the engine gives a quarter of the overlap zero weight: at least the halo
        overlap = int(cfg.overlap) if cfg.overlap is not None else max(DEFAULT_OVERLAP, need)
        if overlap < need:
            logger.warning(
                "overlap %d px raised to %d px: the package spoils %d px at each tile edge",
                overlap,
                need,
                halo,
            )
            overlap = need
        want = int(cfg.tile) if cfg.tile else (MAX_TILE if self.sample_statistics else DEFAULT_TILE)
        tile = self._valid_tile(want, ya, xa)
        if tile is None or tile <= overlap:
            rules = f"y {_rule(ya)}, x {_rule(xa)}"
            raise InputError(
                f"No tile satisfies the package's input size rules ({rules}) with an overlap of "
                f"{overlap} px (4 x its halo of {halo} px): a tile must be larger than the "
                "overlap. "
                f"The package cannot be tiled; fix its size rules or halo."
            )
        if cfg.tile and tile != int(cfg.tile):
            logger.warning(
                "tile %d px changed to %d px, the next size the package accepts", cfg.tile, tile
            )
        return cfg.replace(tile=tile, overlap=overlap)

    @staticmethod
    def _valid_tile(want: int, ya: Any, xa: Any) -> int | None:
        for n in range(max(1, want), MAX_TILE + 1):
            try:
                if ya.valid(n) == n and xa.valid(n) == n:
                    return n
            except InputError:
                break
        for n in range(min(want, MAX_TILE), 0, -1):  # fixed sizes: the largest accepted below
            try:
                if ya.valid(n) == n and xa.valid(n) == n:
                    return n
            except InputError:
                continue
        return None

    @property
    def provenance(self) -> dict[str, Any]:
        """What the written channel records of the package."""
        d, pkg = self.description, self.package
        return {
            "package_id": d.ident("id") or None,
            "package_version": d.ident("version") or None,
            "package_sha256": pkg.sha256,
            "package_name": d.name,
            "weights_format": pkg.weights_format,
            "weights_sha256": pkg.weights_sha256,
            "package_source_map": dict(zip(d.inputs[0].channel_names, self.source_names)),
        }

    def check_workers(self, client: Any) -> None:
        """Refuse, before any write, a package that a worker of ``client`` cannot open."""
        if client is None:
            return
        from omeloc.compute import run_on_workers

        seen = run_on_workers(
            client,
            worker_package_problem,
            self.ref.path,
            self.ref.trust_code,
            self.ref.weights,
            self.ref.key,
        )
        bad = {w: r for w, r in sorted(seen.items()) if r is not None}
        if bad:
            raise InputError(
                f"{len(bad)} of {len(seen)} Dask worker(s) cannot open the package "
                f"{self.ref.path} ({next(iter(bad.values()))}); nothing was written. Put it on a "
                f"file system every worker mounts at the same path."
            )


def worker_package_problem(path: str, trust_code: bool, weights: str, key: str) -> str | None:
    """On a worker: ``None`` when the package opens with content key ``key``; else why not."""
    try:
        pkg = open_package(path, trust_code=trust_code, weights=weights)
    except (PackageError, OSError) as err:
        return str(err).split(". ")[0]
    return None if pkg.key == key else "its copy differs from the driver's (another content key)"


def _rule(a: Any) -> str:
    return f"{a.size} px" if a.size is not None else f"{a.min} + k*{a.step} px"


def open_model(
    model: Any,
    *,
    source: Sequence[str] | None = None,
    trust_code: bool = False,
    weights: str | None = None,
) -> Any:
    """The model plate prediction runs: a :class:`PackageStain` for a BMZ package, else a
    :class:`~omeloc.learn.stain.VirtualStain` of the checkpoint folder (``source`` then renames
    nothing: a checkpoint knows its channels)."""
    from omeloc.learn.stain import VirtualStain

    if isinstance(model, (VirtualStain, PackageStain)):
        return model
    if is_package(model):
        return PackageStain(model, source=source, trust_code=trust_code, weights=weights)
    if source is not None:
        raise InputError(
            "--source maps plate channels to a BMZ package's inputs; an omeloc checkpoint reads "
            "the channels it was trained on. Omit --source."
        )
    return VirtualStain(model)
