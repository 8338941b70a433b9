"""Plate prediction: a checkpoint's virtual channel into every image of a plate, in one Dask graph.

Three steps, each a function of its own:

1. :func:`plan_prediction` — read the checkpoint (once) and the plate's metadata, check that
   the plate has the model's source channels, choose the images to predict, settle the tiling
   (a :class:`PredictionJob`);
2. :func:`lazy_prediction` — per image, the lazy virtual channel: per *region* (the whole field
   up to 4096² px, else multiples of the write block; :mod:`omeloc.jobs.regions`) one task reads
   the source channel(s) once (a halo only where regions split) and normalizes them with the
   checkpoint's statistics, one task runs the tiled inference and maps the output back to the
   target channel's intensity units; zeros (or the previous values) for the images not chosen;
3. the write, with the write-back protocol (:func:`omeloc.writeback.protocol.add_channel`: every
   level, omero entry and provenance written by the driver once the pixels are there).

The model enters the graph as a :class:`~omeloc.learn.checkpoint.CheckpointRef` (a path and a
content key), so each worker process loads it once from the (shared) file system through the
inference engine's per-process cache; no weights are pickled into tasks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np

from omeloc.compute import dask_client, run_on_workers, scheduler_errors
from omeloc.config import ComputeConfig, TilingConfig, resolve
from omeloc.errors import (
    ChannelNotFoundError,
    CheckpointError,
    InputError,
    OmelocError,
    SchedulerError,
)
from omeloc.jobs.regions import REGION_SIDE, RegionSettings, region_prediction, region_settings
from omeloc.engine.cache import get_model
from omeloc.learn.checkpoint import CheckpointRef, check_level
from omeloc.learn.stain import VirtualStain
from omeloc.learn.tta import TTARef
from omeloc.learn.units import check_pixel_size, pixel_size_of
from omeloc.ngff.iostats import IOSummary, measure_io
from omeloc.ngff.plate import Image, Plate, label_text, open_plate

__all__ = [
    "PredictResult",
    "PredictionJob",
    "check_workers_read_checkpoint",
    "default_channel_name",
    "gpu_annotation",
    "lazy_prediction",
    "plan_prediction",
    "predict",
    "resume_key",
    "worker_checkpoint_problem",
    "write_prediction",
]

logger = logging.getLogger(__name__)

#: the pyramid level predictions are made at (and written to; lower levels are built from it)
LEVEL = 0


@dataclass(frozen=True)
class PredictResult:
    """What :func:`predict` did (or, with ``dry_run``, would do)."""

    plate: str
    name: str
    """Label of the virtual channel."""
    channel_index: int
    images: int
    """Images given the channel (all images of the plate)."""
    predicted: tuple[str, ...]
    """Image paths whose pixels were predicted (the others hold zeros)."""
    megapixels: float
    """Level-0 megapixels predicted."""
    seconds: float
    dry_run: bool = False
    recovered: str | None = None
    plan: Any = field(default=None, repr=False, compare=False)
    notes: tuple[str, ...] = ()
    """Lines the write-back had to tell (e.g. an omero block added to images without one)."""
    uncertainty: str | None = None
    """Label of the uncertainty channel written beside the prediction (``uncertainty=True``)."""
    channels: tuple[str, ...] = ()
    """Labels of every channel written (one per target of the model, then their uncertainties)."""
    io: IOSummary | None = field(default=None, compare=False)
    """The store requests the run made, the bytes they moved and the time they were in flight."""

    @classmethod
    def of(
        cls, job: PredictionJob, outcome: Any, seconds: float, dry_run: bool = False
    ) -> PredictResult:
        """The result of ``job``: ``outcome`` is the write plan (``dry_run``) or what the
        write-back returned."""
        common: dict[str, Any] = {
            "plate": job.plate.path,
            "name": job.name,
            "channel_index": outcome.channel_index,
            "predicted": tuple(sorted(job.chosen)),
            "megapixels": job.megapixels(),
            "seconds": seconds,
            "channels": job.names,
            "uncertainty": job.spread_names[0] if job.spread_names else None,
        }
        if dry_run:
            return cls(images=len(outcome.images), dry_run=True, plan=outcome, **common)
        return cls(
            images=outcome.images,
            recovered=outcome.recovered,
            notes=tuple(getattr(outcome, "notes", ())),
            **common,
        )

    @property
    def megapixels_per_second(self) -> float:
        """Throughput of the run, end to end."""
        return self.megapixels / self.seconds if self.seconds > 0 else float("nan")

    def _what(self) -> str:
        if len(self.channels) > 2 or (len(self.channels) == 2 and not self.uncertainty):
            return "channels " + ", ".join(map(repr, self.channels))
        return f"channel {self.name!r}" + (f" and {self.uncertainty!r}" if self.uncertainty else "")

    def summary(self) -> str:
        """The lines the CLI prints."""
        if self.dry_run:
            what = self._what()
            return (
                f"dry run: would write {what} (index {self.channel_index}) into {self.images} "
                f"image(s) of {self.plate}, predicting {len(self.predicted)} image(s), "
                f"{self.megapixels:.1f} megapixels; nothing was written\n{self.plan.describe()}"
                + (f"\n{self.io.line(self.images)}" if self.io is not None else "")
            )
        extra = f" (first: {self.recovered} of an interrupted run)" if self.recovered else ""
        what = self._what()
        return (
            f"wrote {what} (index {self.channel_index}) into {self.images} image(s) of "
            f"{self.plate}{extra}\npredicted {len(self.predicted)} image(s), {self.megapixels:.1f} "
            f"megapixels in {self.seconds:.1f} s ({self.megapixels_per_second:.2f} megapixels/s)"
            + "".join(f"\n{note}" for note in self.notes)
            + (f"\n{self.io.line(self.images)}" if self.io is not None else "")
        )


@dataclass(frozen=True)
class PredictionJob:
    """What :func:`plan_prediction` settled: which model, which images, which settings.

    Attributes
    ----------
    plate
        The opened plate (or single image).
    stain
        The checkpoint, applied as a :class:`~omeloc.learn.stain.VirtualStain`.
    name
        Label of the (first) virtual channel.
    chosen
        Paths of the images to predict.
    tiling
        Tiling settings, tile and overlap settled (the checkpoint's advice unless given).
    overwrite
        Replace an earlier virtual channel of that name.
    """

    plate: Plate
    stain: VirtualStain
    name: str
    chosen: frozenset[str]
    tiling: TilingConfig
    overwrite: bool = False
    region_side: int = REGION_SIDE
    """Most pixels per side of one inference region (:mod:`omeloc.jobs.regions`)."""
    region_cache: dict = field(default_factory=dict, repr=False, compare=False)
    model_given: str | None = None
    """The checkpoint path as the user gave it (never resolved: provenance must not leak local
    paths)."""
    virtual_names: tuple[str, ...] = ()
    """Labels of the virtual channels, one per target of the model (default: ``(name,)``)."""
    rescale: bool = False
    """Resample images whose pixel size differs from the model's (and the prediction back)."""

    @property
    def target(self) -> str:
        """The (first) channel the model predicts."""
        return self.stain.target[0]

    @property
    def predicted_names(self) -> tuple[str, ...]:
        """Labels of the virtual channels, one per target of the model, in the model's order."""
        return self.virtual_names or (self.name,)

    @property
    def spread_names(self) -> tuple[str, ...]:
        """With ``uncertainty``: the labels of the uncertainty channels, one per virtual channel."""
        return (
            tuple(uncertainty_channel_name(n) for n in self.predicted_names)
            if self.tiling.uncertainty
            else ()
        )

    @property
    def names(self) -> tuple[str, ...]:
        """The channels written: the predictions, then with ``uncertainty`` their spreads."""
        return self.predicted_names + self.spread_names

    @property
    def existing(self) -> bool:
        """Whether the plate has a channel of one of these names already."""
        return any(n in self.plate.channel_names for n in self.predicted_names)

    def settings(self) -> dict[str, Any]:
        """What a rerun must match to resume a killed run (see :func:`resume_key`)."""
        t = self.tiling
        return {
            "name": self.name,
            "wells": sorted(self.chosen),
            "tile": t.tile,
            "overlap": t.overlap,
            "blend": t.blend,
            "precision": t.precision,
            "source": self.stain.source,
            "target": self.target if len(self.stain.target) == 1 else self.stain.target,
            **({"names": list(self.predicted_names)} if len(self.predicted_names) > 1 else {}),
            **({"rescale": True} if self.rescale else {}),
            "overwrite": self.overwrite,
            **({"tta": True} if t.tta or t.uncertainty else {}),
            **({"uncertainty": True} if t.uncertainty else {}),
        }

    def _predicted_images(self) -> str | list[str]:
        """``"all"`` when every image of the plate was predicted, else their paths: the record is
        stored in every image, so a list of all of them made the metadata grow with the square of
        the plate (33 kB in each of 3,456 images)."""
        return "all" if len(self.chosen) == len(self.plate.images) else sorted(self.chosen)

    def provenance(self) -> dict[str, Any]:
        """The facts stored with the channel in the plate (``predicted_images``: ``"all"``, or the
        paths of the images whose pixels were predicted)."""
        ckpt, t = self.stain.checkpoint, self.tiling
        return {
            "source_channels": self.stain.source,
            "target_channel": self.target,
            "model": Path(ckpt.path).name,
            "model_key": self.stain.ref.key,
            **({"model_path": self.model_given} if self.model_given else {}),
            "architecture": ckpt.architecture.get("architecture"),
            "predicted_images": self._predicted_images(),
            "tile": t.tile,
            "overlap": t.overlap,
            "blend": t.blend,
            "precision": t.precision,
            "tta": t.tta or t.uncertainty,
            **({"model_pixel_size": ckpt.pixel_size} if ckpt.pixel_size else {}),
            **({"rescaled": True} if self.rescale else {}),
            **getattr(self.stain, "provenance", {}),  # a BMZ package: its id, version, sha256
        }

    def provenances(self) -> list[dict[str, Any]]:
        """One provenance record per channel written (each names its target; an uncertainty channel
        says what it measures)."""
        base, targets = self.provenance(), self.stain.target
        many = (
            {"target_channels": list(targets), "channels": list(self.predicted_names)}
            if len(targets) > 1
            else {}
        )
        records = [{**base, **many, "target_channel": t} for t in targets]
        if not self.spread_names:
            return records
        return [{**r, "uncertainty_channel": u} for r, u in zip(records, self.spread_names)] + [
            {**r, "uncertainty_of": n, "measure": "standard deviation of the 8 test-time variants"}
            for r, n in zip(records, self.predicted_names)
        ]

    def megapixels(self) -> float:
        """Level-0 megapixels of the chosen images."""
        return sum(
            float(np.prod(_plane_shape(img))) / 1e6
            for img in self.plate.images
            if img.path in self.chosen
        )


def default_channel_name(target: str) -> str:
    """``"WAVE2"`` → ``"WAVE2 (virtual)"``."""
    return f"{target} (virtual)"


def uncertainty_channel_name(name: str) -> str:
    """``"WAVE2 (virtual)"`` → ``"WAVE2 (uncertainty)"``; any other name
    ``"<name> (uncertainty)"``."""
    return f"{name.removesuffix(' (virtual)')} (uncertainty)"


def resume_key(ckpt_key: str, settings: Mapping[str, Any]) -> str:
    """Identity of a prediction job: same checkpoint and settings → same key."""
    blob = json.dumps({"checkpoint": ckpt_key, **settings}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


# -- step 1: plan ------------------------------------------------------------------------------
def load_stain(
    model: str | Path | VirtualStain, source: Sequence[str] | None = None, trust_code: bool = False
) -> VirtualStain:
    """The checkpoint as a :class:`VirtualStain` (a BMZ package as a
    :class:`~omeloc.modelio.adapter.PackageStain`), refused unless it predicts at least one
    channel."""
    if isinstance(model, VirtualStain):
        stain = model
    else:  # the model-loading seam: a checkpoint folder, or a BMZ package (omeloc.modelio)
        from omeloc.modelio.adapter import open_model

        stain = open_model(model, source=source, trust_code=trust_code)
    if not stain.target:
        raise CheckpointError(
            f"The checkpoint {stain.checkpoint.path} predicts no channel. Retrain it."
        )
    return stain


def virtual_names(name: str | Sequence[str] | None, targets: Sequence[str]) -> tuple[str, ...]:
    """The labels of the virtual channels: ``name`` (one label, or one per target, comma-separated
    or a sequence), by default ``"<target> (virtual)"`` for each target.

    Raises
    ------
    InputError
        An empty label, or a number of labels other than the model's number of targets.
    """
    if name is None:
        return tuple(default_channel_name(t) for t in targets)
    if isinstance(name, str):
        parts = [name] if len(targets) == 1 else [p.strip() for p in name.split(",")]
    else:
        parts = list(name)
    if not all(isinstance(p, str) and p.strip() for p in parts):
        raise InputError(
            f"Expected a non-empty channel name (--name). Got {name!r} instead. "
            f"Omit --name for the default '<target> (virtual)'."
        )
    if len(parts) != len(targets) or len(set(parts)) != len(parts):
        raise InputError(
            f"Expected {len(targets)} distinct channel names (--name A,B), one per target of the "
            f"model ({', '.join(targets)}). Got {name!r} instead. Omit --name for '<target> "
            "(virtual)'."
        )
    return tuple(parts)


def plan_prediction(
    plate: str | Path | Plate,
    model: str | Path | VirtualStain,
    *,
    name: str | None = None,
    wells: Sequence[str] | None = None,
    overwrite: bool = False,
    tiling: TilingConfig | None = None,
    storage_options: Mapping[str, Any] | None = None,
    acquisition: str | int | None = None,
    rescale: bool = False,
    source: Sequence[str] | None = None,
    trust_code: bool = False,
) -> PredictionJob:
    """Read the checkpoint and the plate's metadata, check them against each other, choose the
    images.

    Reads no pixels and writes nothing.  Parameters as in :func:`predict`.

    Raises
    ------
    CheckpointError, ChannelNotFoundError, InputError
        See :func:`predict`.
    """
    stain = load_stain(model, source, trust_code)
    labels = virtual_names(name, stain.target)
    opened = plate if isinstance(plate, Plate) else open_plate(plate, storage_options)
    _check_channels(opened, stain)
    check_level(stain.checkpoint, min(len(img.level_paths) for img in opened.images), opened.path)
    if stain.checkpoint.level not in (LEVEL, None):
        logger.warning(
            "the checkpoint was trained on pyramid level %s; predicting at full resolution (level "
            "0)",
            stain.checkpoint.level,
        )
    job = PredictionJob(
        plate=opened,
        stain=stain,
        name=labels[0],
        virtual_names=labels,
        chosen=frozenset(_select(opened, wells, acquisition)),
        tiling=stain.tiling(tiling),
        overwrite=overwrite,
        model_given=None if isinstance(model, VirtualStain) else str(model),
        rescale=rescale,
    )
    _tell_pixel_sizes(job)
    _check_plane_sizes(job)
    _check_z(job)
    _check_companion(job)
    return job


def _tell_pixel_sizes(job: PredictionJob) -> None:
    """Check every chosen image's pixel size against the model's (refusing a mismatch without
    ``rescale``); log the notes once per pixel size, not once per image."""
    groups: dict[Any, list[Image]] = {}
    for img in job.plate.images:
        if img.path in job.chosen:
            image_zoom(job, img)  # refuses an image > 10 % from the model's size, naming it
            groups.setdefault(pixel_size_of(img, LEVEL), []).append(img)
    for images in groups.values():
        if len(images) == len(job.plate.images):
            where = f"plate {job.plate.path}"
        else:
            some = ", ".join(img.path for img in images[:3]) + (", ..." if len(images) > 3 else "")
            where = f"{len(images)} image(s) of {job.plate.path} ({some})"
        for note in check_pixel_size(
            job.stain.checkpoint.pixel, pixel_size_of(images[0], LEVEL), where, rescale=job.rescale
        )[1]:
            (logger.warning if note.startswith("resampling") else logger.info)("%s", note)


def image_zoom(job: PredictionJob, img: Image) -> tuple[tuple[float, float], list[str]]:
    """The (y, x) resampling of ``img`` to the model's pixel size, and the notes to tell (see
    :func:`omeloc.learn.units.check_pixel_size`: refused when they differ and ``job.rescale`` is
    off)."""
    where = (
        f"plate {job.plate.path}"
        if len(job.plate.images) == 1
        else f"image {img.path} of {job.plate.path}"
    )
    return check_pixel_size(
        job.stain.checkpoint.pixel, pixel_size_of(img, LEVEL), where, rescale=job.rescale
    )


def _check_z(job: PredictionJob) -> None:
    """A 2.5D model (``z_window`` > 1) needs z-stacks: every chosen image has a z axis of more
    than one plane."""
    k = job.stain.checkpoint.z_window
    if k == 1:
        return
    for img in job.plate.images:
        n_z = dict(zip(img.axes, img.shapes[LEVEL])).get("z", 1)
        if img.path in job.chosen and n_z < 2:
            raise InputError(
                f"The checkpoint {job.stain.checkpoint.path} is a 2.5D model reading {k} z planes "
                f"around each output plane, but image {img.path or img.url} has "
                f"{'no z axis' if 'z' not in img.axes else 'one z plane'}. Predict z-stacks with "
                f"it, or use a 2D model (trained with --z-window 1)."
            )


def _check_companion(job: PredictionJob) -> None:
    """An overwrite that adds or drops the uncertainty channel: the companion must be removable
    first.

    The channel(s) :func:`companion_removals` names are taken out (:func:`omeloc.remove_channel`)
    before the write; they must be the plate's last channels, which is checked here.
    """
    removals = companion_removals(job)
    if not removals:
        return
    labels = list(job.plate.channel_names)
    if set(labels[len(labels) - len(removals) :]) != set(removals):
        raise InputError(
            f"Channel(s) {', '.join(map(repr, removals))} of {job.plate.path} must go before this "
            f"--overwrite, but other channels follow them: omeloc removes only the last channels. "
            f"Choose another --name."
        )


def companion_removals(job: PredictionJob) -> tuple[str, ...]:
    """Channels an overwrite removes before writing, so it may add or drop the uncertainty channel.

    For each predicted channel: replacing a prediction that has an uncertainty channel without
    ``uncertainty`` removes that channel (it would be stale); replacing one without, with
    ``uncertainty``, removes the prediction itself, so the two are appended side by side as one
    write.
    """
    if not (job.existing and job.overwrite):
        return ()
    records = (job.plate.images[0].attrs.get("omeloc") or {}).get("channels", {})
    removals: list[str] = []
    for name in job.predicted_names:
        record = records.get(name) if isinstance(records, Mapping) else None
        companion = record.get("uncertainty_channel") if isinstance(record, Mapping) else None
        if companion and not job.tiling.uncertainty:
            removals.append(str(companion))
        elif job.tiling.uncertainty and not companion and name in job.plate.channel_names:
            removals.append(name)
    return tuple(removals)


def _check_channels(plate: Plate, stain: VirtualStain) -> None:
    names = plate.channel_names
    missing = [s for s in stain.source if s not in names]
    if missing:
        raise ChannelNotFoundError(
            f"The checkpoint {stain.checkpoint.path} predicts from channel(s) "
            f"{', '.join(map(repr, missing))}, which plate {plate.path} does not have (channels: "
            f"{', '.join(map(label_text, names))}). Use a model trained on these "
            f"channel names, or rename the plate's channels."
            if not hasattr(stain, "channel_hint")
            else (
                f"{stain.checkpoint.path} reads channel(s) {', '.join(map(repr, missing))}, which "
                f"plate {plate.path} does not have (channels: "
                f"{', '.join(map(label_text, names))}). {stain.channel_hint}"
            )
        )


def _check_plane_sizes(job: PredictionJob) -> None:
    """Every chosen image is at least as large as the tile overlap (the halo each block reads)."""
    need = max(int(job.tiling.overlap or 0), 1)
    for img in job.plate.images:
        y, x = img.shape[img.axes.index("y")], img.shape[img.axes.index("x")]
        if img.path in job.chosen and min(y, x) < need:
            raise InputError(
                f"Image {img.path or img.url} is {y} x {x} pixels, smaller than the tile overlap "
                f"of {need} px. Predict images of at least {need} px per side, or pass a smaller "
                "--overlap."
            )


def _select(
    plate: Plate, wells: Sequence[str] | None, acquisition: str | int | None = None
) -> set[str]:
    """Paths of the images to predict: those of ``wells`` (default all), of one ``acquisition``
    if given."""
    if wells is None:
        chosen = {img.path for img in plate.images}
    else:
        chosen = set()
        for w in wells:
            well = plate.well(str(w))  # raises with the list of wells for an unknown one
            chosen.update(img.path for img in well.images)
        if not chosen:
            raise InputError(
                "Expected at least one well to predict. Got an empty --wells list instead."
            )
    if acquisition is None:
        return chosen
    chosen &= {
        img.path for img in plate.acquisition_images(acquisition)
    }  # raises for an unknown one
    if not chosen:
        raise InputError(
            f"Acquisition {acquisition!r} of {plate.path} has no field in the chosen wells. "
            f"Choose other --wells or another --acquisition (see omeloc info)."
        )
    return chosen


# -- step 2: the lazy prediction ---------------------------------------------------------------
def lazy_prediction(
    job: PredictionJob, img: Image, annotate: Callable[[], Any] = contextlib.nullcontext
) -> da.Array:
    """The virtual channel of one image at level 0, lazily: ``img``'s axes without ``c``, float32
    (with several targets or ``uncertainty``: a leading axis, one plane per name of ``job.names``).

    Predicted for a chosen image; for the others, the channel's previous values when it is
    being overwritten, else zeros.  ``annotate`` makes a fresh context manager for the model's
    part of the graph (e.g. ``lambda: dask.annotate(resources={"GPU": 1})``).
    """
    if img.path in job.chosen:
        _check_yx_last(img)
        return region_prediction(
            img.reader(LEVEL),
            img.axes,
            img.write_chunks(LEVEL),
            _region_settings(job, img),
            side=job.region_side,
            annotate=annotate,
        )
    if job.existing and job.overwrite:
        planes = [img.level(LEVEL)[_channel_slice(img, img.channel_index(n))] for n in job.names]
    else:
        blocks = tuple(b for a, b in zip(img.axes, img.write_chunks(LEVEL)) if a != "c")
        planes = [da.zeros(_plane_shape(img), dtype=np.float32, chunks=blocks)] * len(job.names)
    return planes[0] if len(planes) == 1 else da.stack(planes)


def _check_yx_last(img: Image) -> None:
    """Refuse an image whose y and x are not its last axes."""
    axes = list(img.axes)
    if (axes.index("y"), axes.index("x")) != (len(axes) - 2, len(axes) - 1):
        raise InputError(
            f"Expected y and x to be the last axes of {img.url}. Got axes {''.join(axes)} instead."
        )


def _region_settings(job: PredictionJob, img: Image) -> RegionSettings:
    """What the region tasks of ``img`` share; computed once per distinct channel order (the
    model is checked then)."""
    index = tuple(img.channel_index(s) for s in job.stain.source)
    zoom = image_zoom(job, img)[0]
    key = (index, img.axes.index("c"), zoom)
    cache = job.region_cache
    if key not in cache:
        stain, norm = job.stain, job.stain.checkpoint.normalization
        spread = job.tiling.uncertainty
        ref = TTARef(stain.ref, spread=spread) if job.tiling.tta or spread else stain.ref
        plane_axes = [a for a in img.axes if a != "c"]
        cache[key] = region_settings(
            ref,
            index,
            key[1],
            [norm[c] for c in stain.source],
            [norm[c] for c in stain.target],
            job.tiling,
            zoom=zoom,
            z_window=stain.checkpoint.z_window,
            z_axis=plane_axes.index("z") if "z" in plane_axes else -1,
        )
    return cache[key]


def _plane_shape(img: Image) -> tuple[int, ...]:
    return tuple(s for a, s in zip(img.axes, img.shapes[LEVEL]) if a != "c")


def _channel_slice(img: Image, index: int) -> tuple:
    sl: list[Any] = [slice(None)] * len(img.axes)
    sl[img.axes.index("c")] = index
    return tuple(sl)


def gpu_annotation(client: Any) -> Callable[[], Any]:
    """A factory of fresh annotation contexts for inference tasks.

    When every worker of ``client`` advertises a ``GPU`` resource (``dask worker --resources
    GPU=1``, dask-cuda), inference tasks ask for one; otherwise nothing is annotated.  A new
    context per call: ``dask.annotate`` is a generator-based context manager, which can be
    entered only once.
    """
    if _gpu_workers(client):
        return lambda: dask.annotate(resources={"GPU": 1})
    return contextlib.nullcontext


def _gpu_workers(client: Any) -> bool:
    if client is None:
        return False
    with scheduler_errors(client):
        info = client.scheduler_info()
    workers = info.get("workers", {}).values()
    return bool(workers) and all("GPU" in (w.get("resources") or {}) for w in workers)


# -- the checkpoint as the workers see it --------------------------------------------------------
def check_workers_read_checkpoint(client: Any, stain: VirtualStain) -> None:
    """Refuse, before any write, a checkpoint that a worker of ``client`` cannot read (or reads
    differently).

    Each worker opens the checkpoint's metadata and weights and compares their content key with
    the driver's (:func:`worker_checkpoint_problem`, run with ``client.run``).  Nothing is
    checked without a client (the local scheduler reads what the driver reads), nor on workers
    that join later (a task failing there rolls the write back).

    Raises
    ------
    InputError
        One line naming the workers, the folder and the fix (a file system every worker mounts).
    SchedulerError
        The scheduler went away.
    """
    if client is None:
        return
    seen = run_on_workers(client, worker_checkpoint_problem, stain.ref.path, stain.ref.key)
    if not seen:
        logger.info(
            "no Dask worker yet: the checkpoint's readability is not checked before the write"
        )
    bad = {
        w: (f"{type(r).__name__}: {r}" if isinstance(r, BaseException) else str(r))
        for w, r in sorted(seen.items())
        if r is not None
    }
    if not bad:
        return
    names = ", ".join(list(bad)[:4]) + (f" and {len(bad) - 4} more" if len(bad) > 4 else "")
    raise InputError(
        f"{len(bad)} of {len(seen)} Dask worker(s) ({names}) cannot read the checkpoint "
        f"{stain.ref.path} ({next(iter(bad.values()))}); nothing was written. Put the checkpoint "
        "folder on a shared file system that every worker mounts at the same path (or copy it to "
        "that path on every node), then rerun."
    )


def worker_checkpoint_problem(path: str, key: str) -> str | None:
    """On a worker: ``None`` when the checkpoint at ``path`` reads and has content key ``key``;
    else why not."""
    from omeloc.learn.checkpoint import META_FILE, WEIGHTS_FILE, CheckpointRef

    try:
        for name in (META_FILE, WEIGHTS_FILE):
            with open(Path(path) / name, "rb") as f:
                f.read(1)
        seen = CheckpointRef(path).key
    except OmelocError as err:
        return str(err).split(". ")[0]
    except OSError as err:
        return f"{err.strerror or type(err).__name__}: {err.filename or path}"
    return None if seen == key else "its copy differs from the driver's (another content key)"


# -- the whole job -----------------------------------------------------------------------------
def predict(
    plate: str | Path | Plate,
    model: str | Path | VirtualStain,
    *,
    name: str | None = None,
    wells: Sequence[str] | None = None,
    overwrite: bool = False,
    tiling: TilingConfig | None = None,
    compute: ComputeConfig | None = None,
    dry_run: bool = False,
    progress: bool = False,
    color: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
    on_plan: Callable[[Any], None] | None = None,
    acquisition: str | int | None = None,
    rescale: bool = False,
    source: Sequence[str] | None = None,
    trust_code: bool = False,
    **overrides: Any,
) -> PredictResult:
    """Predict a virtual channel with a trained checkpoint and write it into the plate.

    Parameters
    ----------
    plate
        Path or URL of an OME-Zarr HCS plate (or a single multiscale image), NGFF 0.4 or 0.5,
        in an append-friendly layout (one channel per chunk; see ``omeloc info``).
    model
        A checkpoint folder written by :func:`omeloc.train`, or a BioImage Model Zoo package
        (``.zip``, folder or ``rdf.yaml``; :mod:`omeloc.modelio`).
    source, trust_code
        For a package: the plate channels its input channels read (default: its own channel
        names); allow ``pytorch_state_dict`` weights, whose architecture is Python code.
    name, overwrite
        Label of the new channel (default ``"<target> (virtual)"``); replace a virtual channel
        of that name written by omeloc before (with its uncertainty channel, if it has one).
    wells
        Wells to predict (``"B3"`` or ``"B/3"``); default all.  Every image gets the channel
        (viewers expect one channel list per plate): images of other wells hold zeros, or
        keep their previous values when ``overwrite`` replaces the channel.
    acquisition
        Predict only the fields of this plate acquisition (its ``id`` or ``name``, as
        ``omeloc info`` lists them); combined with ``wells``, the fields in both.
    tiling, compute
        How the model is tiled (:class:`~omeloc.config.TilingConfig`; tile and overlap default
        to the checkpoint's advice; ``uncertainty=True`` also writes the spread of the 8
        test-time variants as ``"<target> (uncertainty)"`` in the same crash-safe write) and where
        the graph runs (:class:`~omeloc.config.ComputeConfig`; on a cluster every worker must read
        the checkpoint folder, checked before any write; when every worker advertises a ``GPU``
        resource, inference tasks ask for one).
    rescale
        Resample images whose pixel size differs from the model's by more than 10 % to the
        model's (and the prediction back to the image's grid); without it such images are refused.
    dry_run, on_plan
        Check everything and say what would be written, without writing anything; a function
        called with the write plan before pixels are computed (for logs and tests).
    progress, color, storage_options
        Progress bars with ETA; hex colour of the omero entry; fsspec options for URLs.
    **overrides
        Fields of ``tiling`` or ``compute`` as keywords (``tile=256``, ``workers=2``, ``client=``).

    Raises
    ------
    CheckpointError, ChannelNotFoundError, InputError, LayoutError, ReadOnlyStoreError, ConcurrentWriteError, SchedulerError
        A bad checkpoint (or one a worker cannot read), missing source channels, bad settings, a
        layout that would rewrite original chunks, a read-only store, another writer, a lost or
        unreachable scheduler: the plate is unchanged (rolled back when the write had begun).

    Examples
    --------
    >>> omeloc.predict("plate.zarr", "models/actin-wave2", tile=512, workers=2)  # doctest: +SKIP
    """  # noqa: E501
    # Over 60 lines only through its parameter docs (the public API's reference); the body is ~25.
    with measure_io(per_key=False) as meter:  # totals: no entry per key of the plate
        result = _predict(
            plate,
            model,
            name=name,
            wells=wells,
            overwrite=overwrite,
            tiling=tiling,
            compute=compute,
            acquisition=acquisition,
            rescale=rescale,
            source=source,
            trust_code=trust_code,
            dry_run=dry_run,
            on_plan=on_plan,
            progress=progress,
            color=color,
            storage_options=storage_options,
            overrides=overrides,
        )
    return dataclasses.replace(result, io=meter.summary())


def _predict(
    plate: str | Plate,
    model: Any,
    *,
    name: str | None,
    wells: Sequence[str] | None,
    overwrite: bool,
    tiling: TilingConfig | None,
    compute: ComputeConfig | None,
    acquisition: str | int | None,
    rescale: bool,
    source: Any,
    trust_code: bool,
    dry_run: bool,
    on_plan: Callable[[Any], None] | None,
    progress: bool,
    color: str | None,
    storage_options: Mapping[str, Any] | None,
    overrides: Mapping[str, Any],
) -> PredictResult:
    """The body of :func:`predict` (its I/O is measured around it)."""
    t0 = time.perf_counter()
    tiling, compute = split_overrides(tiling, compute, overrides)
    job = plan_prediction(
        plate,
        model,
        name=name,
        wells=wells,
        overwrite=overwrite,
        tiling=tiling,
        storage_options=storage_options,
        acquisition=acquisition,
        rescale=rescale,
        source=source,
        trust_code=trust_code,
    )
    with dask_client(compute) as client:
        job = _remove_companions(job, client, dry_run, storage_options)
        annotate = gpu_annotation(client)
        data = {img.path: lazy_prediction(job, img, annotate) for img in job.plate.images}
        write = functools.partial(
            write_prediction,
            job,
            data,
            compute=compute.connected(client),
            color=color,
            progress=progress,
            storage_options=storage_options,
        )
        plan = write(dry_run=True)
        if on_plan is not None:
            on_plan(plan)
        _check_model(job, client)
        if dry_run:
            outcome = plan
        else:
            # the write plans again under the lock: this plan's lazy arrays (~3 kB per image) go
            # first
            del plan
            outcome = _written(write, job)
    result = PredictResult.of(job, outcome, seconds=time.perf_counter() - t0, dry_run=dry_run)
    if not dry_run:
        logger.info(
            "predicted %.1f megapixels into %r in %.1f s",
            result.megapixels,
            job.name,
            result.seconds,
        )
    return result


def _remove_companions(
    job: PredictionJob, client: Any, dry_run: bool, storage_options: Mapping[str, Any] | None
) -> PredictionJob:
    """Take out what :func:`companion_removals` names (once the model checks pass); the job on
    the plate after."""
    removals = companion_removals(job)
    if not removals:
        return job
    if dry_run:
        if job.tiling.uncertainty:
            raise InputError(
                f"--dry-run cannot plan adding an uncertainty channel beside {job.name!r} (the "
                f"prediction is removed, then written again with it). Run without --dry-run."
            )
        return job
    _check_model(job, client)  # everything checked before the plate changes
    from omeloc.writeback.remove import remove_channel

    remove_channel(job.plate.path, removals, storage_options=storage_options)
    logger.info("removed channel(s) %s before the overwrite", list(removals))
    return dataclasses.replace(job, plate=open_plate(job.plate.path, storage_options))


def _check_model(job: PredictionJob, client: Any) -> None:
    """Before any write: the weights load (safely) and fit the architecture, and every worker reads
    them.

    The check loads the model through the engine's per-process cache: a local run on the CPU then
    predicts with that model instead of building a second one (~0.25 s for the default U-Net)."""
    ref = getattr(job.stain, "ref", None)
    if isinstance(ref, CheckpointRef):
        get_model(ref, "cpu")
    else:
        job.stain.checkpoint.build_model("cpu")
    check = getattr(job.stain, "check_workers", None)  # a BMZ package checks its own readability
    check(client) if check is not None else check_workers_read_checkpoint(client, job.stain)


def _written(write: Callable[[], Any], job: PredictionJob) -> Any:
    """``write()``; a lost scheduler is said in one line with what became of the plate."""
    try:
        return write()
    except SchedulerError as err:
        # add_channel rolled the plate back before re-raising (if it could not, it raised
        # ReadOnlyStoreError)
        raise SchedulerError(
            f"{err} The plate {job.plate.path} was rolled back as it was before this run; "
            f"rerunning the same command keeps the chunks already written."
        ) from err


def split_overrides(
    tiling: TilingConfig | None, compute: ComputeConfig | None, overrides: Mapping[str, Any]
) -> tuple[TilingConfig, ComputeConfig]:
    """``tiling`` and ``compute`` (or their defaults) with keyword ``overrides`` sorted into them.

    Raises
    ------
    TypeError
        A keyword that is a field of neither (as for any unexpected keyword argument).
    """
    tiling_names = {f.name for f in dataclasses.fields(TilingConfig)}
    compute_names = {f.name for f in dataclasses.fields(ComputeConfig)}
    unknown = sorted(set(overrides) - tiling_names - compute_names)
    if unknown:
        raise TypeError(f"predict() got an unexpected keyword argument {unknown[0]!r}")
    return (
        resolve(TilingConfig, tiling, {k: v for k, v in overrides.items() if k in tiling_names}),
        resolve(ComputeConfig, compute, {k: v for k, v in overrides.items() if k in compute_names}),
    )


def write_prediction(
    job: PredictionJob,
    data: Mapping[str, da.Array],
    *,
    compute: ComputeConfig | None = None,
    color: str | None = None,
    progress: bool = False,
    storage_options: Mapping[str, Any] | None = None,
    dry_run: bool = False,
) -> Any:
    """Write a job's lazy prediction into the plate with
    :func:`~omeloc.writeback.protocol.add_channel`.

    ``data`` maps image paths to :func:`lazy_prediction` arrays; ``compute`` says where the
    pixels are computed (an already started client, or a local scheduler); the plate opened by
    :func:`plan_prediction` is reused (unless an interrupted run must be recovered first).  Returns
    the :class:`~omeloc.writeback.protocol.AddChannelResult`, or with ``dry_run`` the write plan.
    """
    from omeloc.writeback.protocol import add_channel

    payload: Any = dict(data) if job.plate.is_plate else next(iter(data.values()))
    names = job.name if len(job.names) == 1 else job.names
    return add_channel(
        job.plate,
        names,
        payload,
        color=color,
        overwrite=job.overwrite,
        provenance=job.provenances(),
        compute=compute,
        progress=progress,
        storage_options=storage_options,
        resume_key=resume_key(job.stain.ref.key, job.settings()),
        dry_run=dry_run,
    )
