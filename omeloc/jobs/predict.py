"""Plate prediction: a checkpoint's virtual channel into every image of a plate, in one Dask graph.

source channel(s), read lazily → normalized with the checkpoint's statistics → tiled
inference (:func:`omeloc.engine.inference.predict_array`) → mapped back to the target channel's
intensity units → written with the write-back protocol (:func:`omeloc.writeback.protocol.add_channel`:
every level, omero entry and provenance written by the driver once the pixels are there).

The model enters the graph as a :class:`~omeloc.learn.checkpoint.CheckpointRef` (a path and a
content key), so each worker process loads it once from the (shared) file system through the
inference engine's per-process cache; no weights are pickled into tasks.
"""

from __future__ import annotations

import contextlib
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

from omeloc.errors import ChannelNotFoundError, CheckpointError, InputError
from omeloc.ngff.plate import Image, Plate, open_plate

__all__ = ["predict", "PredictResult", "default_channel_name"]

logger = logging.getLogger(__name__)


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

    @property
    def megapixels_per_second(self) -> float:
        return self.megapixels / self.seconds if self.seconds > 0 else float("nan")

    def summary(self) -> str:
        """The lines the CLI prints."""
        if self.dry_run:
            return (f"dry run: would write channel {self.name!r} (index {self.channel_index}) into {self.images} "
                    f"image(s) of {self.plate}, predicting {len(self.predicted)} image(s), "
                    f"{self.megapixels:.1f} megapixels; nothing was written\n{self.plan.describe()}")
        extra = f" (first: {self.recovered} of an interrupted run)" if self.recovered else ""
        return (f"wrote channel {self.name!r} (index {self.channel_index}) into {self.images} image(s) of "
                f"{self.plate}{extra}\npredicted {len(self.predicted)} image(s), {self.megapixels:.1f} megapixels "
                f"in {self.seconds:.1f} s ({self.megapixels_per_second:.2f} megapixels/s)")


def default_channel_name(target: str) -> str:
    """``"WAVE2"`` → ``"WAVE2 (virtual)"``."""
    return f"{target} (virtual)"


def _check_channels(plate: Plate, source: Sequence[str], target: Sequence[str], ckpt_path: Path) -> None:
    names = plate.channel_names
    missing = [s for s in source if s not in names]
    if missing:
        raise ChannelNotFoundError(
            f"The checkpoint {ckpt_path} predicts from channel(s) {', '.join(map(repr, missing))}, which plate "
            f"{plate.path} does not have (channels: {', '.join(names)}). Use a model trained on these channel "
            f"names, or rename the plate's channels."
        )


def _select(plate: Plate, wells: Sequence[str] | None) -> set[str]:
    if wells is None:
        return {img.path for img in plate.images}
    chosen = set()
    for w in wells:
        well = plate.well(str(w))  # raises with the list of wells for an unknown one
        chosen.update(img.path for img in well.images)
    if not chosen:
        raise InputError("Expected at least one well to predict. Got an empty --wells list instead.")
    return chosen


def _to_model_axes(img: Image, level: int, source_idx: Sequence[int]) -> tuple[da.Array, tuple[int, ...]]:
    """Level data as (..., C, Y, X) with the source channels, and the order to undo the move."""
    arr = img.level(level)
    axes = list(img.axes)
    c, y, x = axes.index("c"), axes.index("y"), axes.index("x")
    if (y, x) != (len(axes) - 2, len(axes) - 1):
        raise InputError(f"Expected y and x to be the last axes of {img.url}. Got axes {''.join(axes)} instead.")
    others = [i for i in range(len(axes)) if i not in (c, y, x)]
    arr = arr.transpose(*others, c, y, x)
    return arr[..., list(source_idx), :, :], tuple(others)


def _normalized_source(img: Image, level: int, ckpt: Any) -> da.Array:
    from omeloc.learn.normalization import finite, normalize

    idx = [img.channel_index(s) for s in ckpt.source]
    arr, _ = _to_model_axes(img, level, idx)
    planes = [finite(normalize(arr[..., k, :, :].astype(np.float32), ckpt.normalization[s]))
              for k, s in enumerate(ckpt.source)]
    return da.stack(planes, axis=-3)


def _gpu_workers(client: Any) -> bool:
    if client is None:
        return False
    try:
        info = client.scheduler_info()
    except Exception:  # noqa: BLE001 - no info: no annotation
        return False
    workers = info.get("workers", {}).values()
    return bool(workers) and all("GPU" in (w.get("resources") or {}) for w in workers)


def resume_key(ckpt_key: str, settings: Mapping[str, Any]) -> str:
    """Identity of a prediction job: same checkpoint and settings → same key."""
    blob = json.dumps({"checkpoint": ckpt_key, **settings}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def predict(
    plate: str | Path,
    model: str | Path,
    *,
    name: str | None = None,
    wells: Sequence[str] | None = None,
    overwrite: bool = False,
    tile: int | None = None,
    overlap: int | None = None,
    blend: str = "cosine",
    batch_size: int = 4,
    device: str = "auto",
    precision: str = "auto",
    client: Any = None,
    scheduler: str | None = None,
    workers: int | None = None,
    dry_run: bool = False,
    progress: bool = False,
    color: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
    on_plan: Callable[[Any], None] | None = None,
) -> PredictResult:
    """Predict a virtual channel with a trained checkpoint and write it into the plate.

    Parameters
    ----------
    plate
        Path or URL of an OME-Zarr HCS plate (or a single multiscale image), NGFF 0.4 or 0.5,
        in an append-friendly layout (one channel per chunk; see ``omeloc info``).
    model
        A checkpoint folder written by :func:`omeloc.train`.
    name
        Label of the new channel; default ``"<target> (virtual)"``.
    wells
        Wells to predict (``"B3"`` or ``"B/3"``); default all.  Every image of the plate gets
        the channel (viewers expect one channel list per plate): images of other wells hold
        zeros, or keep their previous virtual values when ``overwrite`` replaces the channel.
    overwrite
        Replace a virtual channel of that name written by omeloc before.
    tile, overlap, blend, batch_size, device, precision
        Tiled inference settings (:func:`omeloc.predict_array`); tile and overlap default
        to the checkpoint's advice.
    client, scheduler, workers
        Where the graph runs: a ``distributed.Client``, a scheduler address
        (``tcp://host:8786``), or a new process-based LocalCluster of ``workers`` workers;
        none of them: Dask's local threaded scheduler.  On a cluster the checkpoint folder
        must be readable by every worker; when every worker advertises a ``GPU`` resource
        (``dask worker --resources GPU=1``, dask-cuda), inference tasks ask for one.
    dry_run
        Check everything (checkpoint, channels, layout, journal) and say what would be
        written, without writing anything.
    progress
        Progress bars with ETA while pixels are computed and written.
    color
        Hex colour of the omero entry; default a palette colour not used yet.
    storage_options
        fsspec options for URLs.
    on_plan
        Called with the write plan before pixels are computed (for logs and tests).

    Returns
    -------
    PredictResult

    Raises
    ------
    CheckpointError
        The checkpoint is missing, truncated or unsafe.
    ChannelNotFoundError
        The plate lacks the checkpoint's source channel(s).
    InputError, LayoutError, ReadOnlyStoreError, ConcurrentWriteError, SchedulerError
        Bad settings, a layout that would rewrite original chunks, a read-only store,
        another run writing the plate, an unreachable scheduler.  The plate is unchanged.

    Examples
    --------
    >>> omeloc.predict("plate.zarr", "models/actin-wave2")             # doctest: +SKIP
    >>> with distributed.Client("tcp://gpu-head:8786") as client:        # doctest: +SKIP
    ...     omeloc.predict("s3://lab/plate.zarr", "/shared/models/actin-wave2", client=client)
    """
    from omeloc.learn.checkpoint import CheckpointRef, load_checkpoint
    from omeloc.engine.inference import predict_array
    from omeloc.learn.normalization import denormalize
    from omeloc.compute import dask_client
    from omeloc.writeback.protocol import add_channel

    t0 = time.perf_counter()
    ckpt = load_checkpoint(model)
    if len(ckpt.target) != 1:
        raise CheckpointError(
            f"The checkpoint {ckpt.path} predicts {len(ckpt.target)} channels ({', '.join(ckpt.target)}); "
            f"omeloc predict writes one channel per run. Train one model per target channel."
        )
    target = ckpt.target[0]
    name = name or default_channel_name(target)
    opened = open_plate(plate, storage_options)
    _check_channels(opened, ckpt.source, ckpt.target, ckpt.path)
    chosen = _select(opened, wells)
    level = 0
    if getattr(ckpt, "level", 0) not in (0, None):
        logger.warning("the checkpoint was trained on pyramid level %s; predicting at full resolution (level 0)",
                       ckpt.level)
    tile = int(tile or ckpt.tile)
    overlap = int(ckpt.overlap if overlap is None else overlap)
    ref = CheckpointRef(ckpt.path)
    # what a rerun must match to resume a killed run
    settings = {"name": name, "wells": sorted(chosen), "tile": tile, "overlap": overlap, "blend": blend,
                "precision": precision, "source": list(ckpt.source), "target": target, "overwrite": overwrite}
    key = resume_key(ref.key, settings)
    existing = name in opened.channel_names

    with dask_client(client, scheduler=scheduler, workers=workers) as c:
        annotate = dask.annotate(resources={"GPU": 1}) if _gpu_workers(c) else contextlib.nullcontext()
        data: dict[str, da.Array] = {}
        megapixels = 0.0
        for img in opened.images:
            out_shape = tuple(s for a, s in zip(img.axes, img.shapes[level]) if a != "c")
            if img.path in chosen:
                src = _normalized_source(img, level, ckpt)
                with annotate:
                    pred = predict_array(ref, src, tile=tile, overlap=overlap, blend=blend, batch_size=batch_size,
                                         device=device, precision=precision, out_channels=1)
                values = denormalize(pred[..., 0, :, :], ckpt.normalization[target])
                megapixels += float(np.prod(out_shape)) / 1e6
            elif existing and overwrite:
                values = img.level(level)[_channel_slice(img, img.channel_index(name))]
            else:
                blocks = tuple(b for a, b in zip(img.axes, img.write_chunks(level)) if a != "c")
                values = da.zeros(out_shape, dtype=np.float32, chunks=blocks)
            data[img.path] = values
        provenance = {
            "source_channels": list(ckpt.source), "target_channel": target, "model": str(ckpt.path),
            "model_key": ref.key, "architecture": ckpt.architecture.get("architecture"),
            "predicted_images": sorted(chosen), "tile": tile, "overlap": overlap, "blend": blend,
            "precision": precision,
        }
        kwargs = dict(color=color, overwrite=overwrite, provenance=provenance, client=c, progress=progress,
                      storage_options=storage_options, resume_key=key)
        if opened.is_plate:
            payload: Any = data
        else:
            payload = next(iter(data.values()))
        plan = add_channel(opened.path, name, payload, dry_run=True, **kwargs)
        if on_plan is not None:
            on_plan(plan)
        ckpt.build_model("cpu")  # the weights load (safely) and fit the architecture, before any write
        if dry_run:
            return PredictResult(plate=opened.path, name=name, channel_index=plan.channel_index,
                                 images=len(plan.images), predicted=tuple(sorted(chosen)), megapixels=megapixels,
                                 seconds=time.perf_counter() - t0, dry_run=True, plan=plan)
        result = add_channel(opened.path, name, payload, **kwargs)
    seconds = time.perf_counter() - t0
    logger.info("predicted %.1f megapixels into %r in %.1f s", megapixels, name, seconds)
    return PredictResult(plate=opened.path, name=name, channel_index=result.channel_index, images=result.images,
                         predicted=tuple(sorted(chosen)), megapixels=megapixels, seconds=seconds,
                         recovered=result.recovered)


def _channel_slice(img: Image, index: int) -> tuple:
    sl: list[Any] = [slice(None)] * len(img.axes)
    sl[img.axes.index("c")] = index
    return tuple(sl)
