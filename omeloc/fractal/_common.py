"""What omeloc's Fractal tasks share: the image behind a ``zarr_url``, a channel by label or
wavelength id, the plate of an image list, and the runner that turns errors into one line.

No task logic lives here: the tasks call :func:`omeloc.predict`, :func:`omeloc.train` and
:func:`omeloc.evaluate`, the functions the CLI calls.
"""

from __future__ import annotations

import logging
import posixpath
import sys
from collections.abc import Callable, Sequence
from typing import Any

from omeloc.errors import (
    ChannelNotFoundError,
    ConcurrentWriteError,
    InputError,
    NotOmeZarrError,
    OmelocError,
)
from omeloc.fractal.models import ChannelInput

__all__ = ["channel_label", "check_plate_unlocked", "image_at", "plate_of", "run_task"]

logger = logging.getLogger(__name__)

#: exit status of a task refused for bad input (as the CLI's)
EXIT_BAD_INPUT = 2


def image_at(zarr_url: str) -> Any:
    """The OME-Zarr image at ``zarr_url`` (a field of a plate, or a standalone image).

    Raises
    ------
    NotOmeZarrError
        ``zarr_url`` is a plate, a well, or not OME-Zarr at all.
    """
    from omeloc.ngff.plate import open_image

    try:
        return open_image(zarr_url)
    except OmelocError as err:
        raise NotOmeZarrError(
            f"zarr_url {zarr_url} is not an OME-Zarr image ({err}) Pass the URL of one "
            f"image (e.g. plate.zarr/B/03/0), not of a plate or a well."
        ) from err


def channel_label(image: Any, channel: ChannelInput) -> str:
    """The label of the image's channel chosen by ``channel`` (label or ``wavelength_id``).

    Raises
    ------
    ChannelNotFoundError
        No channel has that label or wavelength id (the message lists those there are).
    """
    entries = list(image.omero.get("channels") or [])
    if channel.label is not None:
        if channel.label in image.channel_names:
            return channel.label
        raise ChannelNotFoundError(
            f"Image {image.url} has no channel labelled {channel.label!r} (labels: "
            f"{', '.join(map(repr, image.channel_names))})."
        )
    ids = [
        str(e.get("wavelength_id")) if isinstance(e, dict) and e.get("wavelength_id") else None
        for e in entries
    ]
    if channel.wavelength_id in ids:
        return image.channel_names[ids.index(channel.wavelength_id)]
    known = ", ".join(repr(i) for i in ids if i) or "none"
    raise ChannelNotFoundError(
        f"Image {image.url} has no channel with wavelength_id {channel.wavelength_id!r} "
        f"(wavelength ids: {known})."
    )


def _plate_root(image_url: str) -> str:
    """The plate root of a plate's field URL (``<plate>/<row>/<column>/<field>``)."""
    return posixpath.dirname(posixpath.dirname(posixpath.dirname(image_url.rstrip("/"))))


def plate_of(zarr_urls: Sequence[str], wells: Sequence[str] | None = None) -> Any:
    """The plate of the images of ``zarr_urls``, restricted to those images (and ``wells``).

    Raises
    ------
    InputError
        No images, images of several plates, an image that is not a field of the plate, or
        wells none of the images are in.
    """
    import dataclasses

    from omeloc.ngff.plate import open_plate

    if not zarr_urls:
        raise InputError("Expected at least one image in zarr_urls. Got none instead.")
    roots = sorted({_plate_root(u) for u in zarr_urls})
    if len(roots) != 1:
        raise InputError(
            f"Expected images of one plate in zarr_urls. Got images of {len(roots)} plates instead "
            f"({', '.join(roots[:3])})."
        )
    plate = open_plate(roots[0])
    if not plate.is_plate:
        raise InputError(
            f"Expected the images of zarr_urls to be fields of an HCS plate. "
            f"{roots[0]} is not a plate."
        )
    rel = {u.rstrip("/")[len(roots[0]) + 1 :] for u in zarr_urls}
    unknown = sorted(rel - {img.path for img in plate.images})
    if unknown:
        raise InputError(
            f"Expected zarr_urls to be images of plate {roots[0]}. Got {unknown[0]!r}, which its "
            f"wells do not list, instead."
        )
    if wells is not None:
        chosen = {plate.well(str(w)).path for w in wells}
        rel = {p for p in rel if p.rsplit("/", 1)[0] in chosen}
        if not rel:
            raise InputError(
                f"Expected images in wells {', '.join(map(str, wells))} among zarr_urls. Got none."
            )
    images = tuple(img for img in plate.images if img.path in rel)
    kept = {img.well for img in images}
    return dataclasses.replace(
        plate, images=images, wells={k: w for k, w in plate.wells.items() if w.path in kept}
    )


def check_plate_unlocked(image_url: str) -> None:
    """Refuse a per-image write while a live omeloc run holds the lock of the image's whole plate.

    Parallel per-image tasks lock their own image only; a plate-level run (``omeloc predict
    PLATE``, ``recover``, ``rechunk``, a table write) locks the plate root.  A store this
    process cannot write is left to the write's own refusal.
    """
    from omeloc.writeback.journal import StoreIO
    from omeloc.writeback.lock import peek

    root = _plate_root(image_url)
    try:
        io = StoreIO(root)
    except OmelocError:
        return
    try:
        peek(io, stale_after=3600.0)
    except ConcurrentWriteError as err:
        raise ConcurrentWriteError(
            f"The plate of {image_url} is locked by a plate-wide omeloc run: {err}"
        ) from err


def run_task(task: Callable[..., Any]) -> None:
    """Fractal's command line (``--args-json``, ``--out-json``) for ``task``, by fractal-task-tools.

    Bad input (arguments failing validation, an unknown channel, a ``zarr_url`` that is not an
    image, ...) ends the task with one line on stderr and exit status 2; the plate is unchanged
    (omeloc writes nothing before its checks, and rolls back a write that fails).
    """
    import functools

    from fractal_task_tools.task_wrapper import run_fractal_task
    from pydantic import ValidationError

    @functools.wraps(task)
    def guarded(**kwargs: Any) -> Any:
        try:
            return task(**kwargs)
        except ValidationError as err:
            _fail(task.__name__, _validation_line(err))
        except OmelocError as err:
            _fail(task.__name__, " ".join(str(err).split()))
        except TypeError as err:  # an unknown argument in the JSON
            _fail(task.__name__, " ".join(str(err).split()))

    run_fractal_task(task_function=guarded)


def _validation_line(err: Any) -> str:
    parts = []
    for e in err.errors()[:3]:
        where = ".".join(str(x) for x in e.get("loc", ())) or "arguments"
        parts.append(f"{where}: {e.get('msg')}")
    more = f" (+{err.error_count() - 3} more)" if err.error_count() > 3 else ""
    return "invalid arguments: " + "; ".join(parts) + more


def _fail(name: str, message: str) -> None:
    print(f"{name}: error: {message}", file=sys.stderr)
    raise SystemExit(EXIT_BAD_INPUT)


def predict_one_image(
    zarr_url: str,
    model: str,
    *,
    source_channel: ChannelInput | None,
    target_name: str | None,
    tta: bool,
    uncertainty: bool,
    overwrite: bool,
    tile: int | None,
) -> dict[str, Any]:
    """:func:`omeloc.predict` into the one image at ``zarr_url``; the image-list update for Fractal.

    The write addresses the image group alone (its own lock and journal, see
    :mod:`omeloc.fractal`), so parallel calls on different images of one plate do not collide.
    """
    image = image_at(zarr_url)
    label = None if source_channel is None else channel_label(image, source_channel)
    check_plate_unlocked(zarr_url)
    from omeloc.config import (  # torch comes with these: after the cheap checks
        ComputeConfig,
        TilingConfig,
    )
    from omeloc.jobs.predict import load_stain, predict

    stain = load_stain(model)
    if label is not None and label not in stain.source:
        raise ChannelNotFoundError(
            f"The model {model} reads channel(s) {', '.join(map(repr, stain.source))}; the "
            f"channel chosen by {source_channel.model_dump(exclude_none=True)} in {zarr_url} is "
            f"{label!r}. Choose the channel "
            f"the model was trained on, or a model trained on {label!r}."
        )
    res = predict(
        zarr_url,
        stain,
        name=target_name,
        overwrite=overwrite,
        tiling=TilingConfig(tile=tile, tta=tta or uncertainty, uncertainty=uncertainty),
        compute=ComputeConfig(),
        progress=False,
    )
    logger.info("%s", res.summary())
    return {"image_list_updates": [{"zarr_url": zarr_url}]}
