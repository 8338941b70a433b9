"""The preflight of :func:`omeloc.writeback.protocol.add_channel`: every check, before anything
changes.

:func:`preflight` reads the plate's metadata (and lists the chunk keys of every level) and
returns a :class:`WritePlan`, or raises the one error that tells the user what to fix:

- every image shares its channel count, dtype and axes with the first one;
- every level of every image agrees with its level 0 (:func:`level_problems`): the same
  number of dimensions, channels and dtype, other non-spatial axes of the same length, and
  spatial sizes that the scale transforms explain to within a pixel of rounding (a level 0 that
  declares 40000² over a level 1 of 32² is refused before anything is written or computed);
- the name is new, or (with ``overwrite``) a virtual channel omeloc wrote into every image;
  several names (a prediction and its uncertainty) are written as one job: all new, or all
  omeloc's virtual channels side by side;
- the one layout rule (:func:`omeloc.ngff.layout.write_problems`): no file that holds an
  *original* channel is rewritten (a chunk or shard may hold ``k > 1`` channels; one that
  holds omeloc's virtual channels is rewritten after a backup; else a
  :class:`~omeloc.errors.LayoutError` that names ``omeloc rechunk``);
- ``omero.channels`` has one entry per channel, or there is none (the write-back then adds
  the block, labels ``c0, c1, ...`` as omeloc reads them);
- no chunk files lie beyond the channel count (left by an interrupted foreign write);
- the data: one array per image, of the shape of level 0 without the ``c`` axis (with a
  leading axis of one entry per name when there are several names), numeric, finite
  (checked here for in-memory arrays, inside the write tasks for dask arrays).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import dask.array as da
import numpy as np

from omeloc.errors import InputError, LayoutError
from omeloc.ngff.format import chunk_coords, join_path
from omeloc.ngff.layout import shared_channels, write_problems
from omeloc.ngff.plate import Image, Plate
from omeloc.writeback.journal import StoreIO

__all__ = [
    "RECHUNK_HINT",
    "SIZE_SLACK",
    "ArrayLike",
    "DataArg",
    "ImagePlan",
    "WritePlan",
    "level_problems",
    "omero_note",
    "preflight",
    "without_axis",
]

ArrayLike = Any  # numpy array, dask array, or anything np.asarray accepts
DataArg = (
    ArrayLike | Mapping[str, ArrayLike | Callable[[], ArrayLike]] | Callable[[Image], ArrayLike]
)

#: the fix a :class:`~omeloc.errors.LayoutError` names
RECHUNK_HINT = (
    "Copy the plate into an append-friendly layout (chunk 1 along c), e.g. "
    "omeloc.rechunk(src, dst) (`omeloc rechunk SRC DST`), then add the channel to the copy."
)


def without_axis(seq: tuple[int, ...], axis: int) -> tuple[int, ...]:
    """``seq`` (a shape or block) without its entry ``axis`` (the channel axis)."""
    return seq[:axis] + seq[axis + 1 :]


@dataclass(frozen=True)
class ImagePlan:
    """What :func:`add_channel` writes into one image."""

    path: str
    """Image path relative to the target (``"B/3/0"``, ``""`` for a standalone image)."""
    url: str
    c_axis: int
    level_paths: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    """Shapes of every level after the write (channel axis included)."""
    write_blocks: tuple[tuple[int, ...], ...]
    """The zarr write unit (shard, else chunk) of every level: one Dask task each."""
    data: da.Array = field(repr=False, compare=False)
    """The new channels' level-0 values: ``(k, *plane)``, one entry per name, chunked ``k`` on
    axis 0."""
    labels: tuple[str, ...] = ()
    """The labels of the omero block the write adds (the image has none); empty when it has one."""
    metadata: tuple[Any, ...] = field(default=(), repr=False, compare=False)
    """The zarr metadata of every level after the write (its new shape): the write tasks open the
    arrays from it instead of reading their documents again."""

    def level_metadata(self, level: int) -> Any:
        """The zarr metadata of ``level`` after the write, ``None`` when not known."""
        return self.metadata[level] if self.metadata else None

    def array_path(self, level: int) -> str:
        """Key of level ``level``'s array relative to the target (``"B/3/0/0"``)."""
        return join_path("", self.path, self.level_paths[level])


@dataclass(frozen=True)
class WritePlan:
    """Everything :func:`add_channel` would do, found by the preflight (``dry_run=True``)."""

    target: str
    names: tuple[str, ...]
    """The channels written (one job): ``names[i]`` at index ``channel_index + i``."""
    mode: str
    """``"append"`` (a new channel) or ``"overwrite"`` (replace omeloc's virtual channel)."""
    channel_index: int
    """Index of the first channel written."""
    n_channels: int
    """Channel count before the write."""
    dtype: str
    ngff_version: str
    images: tuple[ImagePlan, ...]
    pending_recovery: str | None = None
    """``"rollback"`` or ``"finish"`` when a dead run's journal will be dealt with first."""
    shared: bool = False
    """Whether the files the write rewrites hold other (virtual) channels: they are backed up
    first."""

    @property
    def name(self) -> str:
        """The (first) channel written."""
        return self.names[0]

    @property
    def k(self) -> int:
        """Number of channels written."""
        return len(self.names)

    @property
    def indices(self) -> tuple[int, ...]:
        """Indices of the channels written."""
        return tuple(range(self.channel_index, self.channel_index + self.k))

    @property
    def adds_omero(self) -> tuple[str, ...]:
        """Paths of the images without omero metadata, which the write gives the block."""
        return tuple(img.path for img in self.images if img.labels)

    @property
    def tasks(self) -> int:
        """Number of region-write tasks (chunks or shards written, all levels)."""
        n = 0
        for img in self.images:
            for shape, block in zip(img.shapes, img.write_blocks):
                n += math.prod(
                    math.ceil(s / b)
                    for i, (s, b) in enumerate(zip(shape, block))
                    if i != img.c_axis
                )
        return n

    @property
    def nbytes(self) -> int:
        """Uncompressed bytes of the new channel, all levels."""
        item = np.dtype(self.dtype).itemsize
        return sum(
            math.prod(s for i, s in enumerate(shape) if i != img.c_axis) * item * self.k
            for img in self.images
            for shape in img.shapes
        )

    @property
    def levels(self) -> int:
        """Pyramid levels of the deepest image."""
        return max(len(i.level_paths) for i in self.images)

    def describe(self) -> str:
        """A short human-readable summary."""
        verb = "replace channel" if self.mode == "overwrite" else "append channel"
        what = (
            f"{verb} {self.name!r}"
            if self.k == 1
            else f"{verb}s {', '.join(map(repr, self.names))}"
        )
        lines = [
            (
                f"{what} at index {self.channel_index} of {self.target} "
                f"({len(self.images)} image(s), {self.tasks} write tasks, {self.nbytes / 1e6:.1f} "
                f"MB {self.dtype})"
            )
        ]
        if self.pending_recovery:
            lines.append(f"first: {self.pending_recovery} an interrupted omeloc run")
        if self.adds_omero:
            lines.append(omero_note(self))
        for img in self.images[:5]:
            lines.append(
                f"  {img.path or '.'}: levels {', '.join(img.level_paths)} -> shapes "
                f"{list(img.shapes)}"
            )
        if len(self.images) > 5:
            lines.append(f"  ... {len(self.images) - 5} more")
        return "\n".join(lines)


def preflight(
    plate: Plate,
    io: StoreIO,
    name: str | tuple[str, ...],
    data: DataArg,
    *,
    overwrite: bool,
    target: str,
    pending: str | None = None,
    rollback_n: int | None = None,
) -> WritePlan:
    """Check everything a write of channel ``name`` depends on, and plan it; nothing is changed.

    Parameters
    ----------
    plate : Plate
        The target, opened.
    io : StoreIO
        Raw access to the target's store (to list chunk keys).
    name, data, overwrite
        As given to :func:`~omeloc.writeback.protocol.add_channel` (``name``: one name, or a
        tuple of names written as one job).
    target : str
        The target's path or URL, for messages.
    pending : str, optional
        ``"rollback"`` / ``"finish"``: a dead run's journal that the real run deals with first.
    rollback_n : int, optional
        A dry run before a pending rollback sees the store as the killed run left it; the
        plan is made against the channel count that the rollback restores instead.

    Raises
    ------
    InputError, LayoutError
        See the module docstring.
    """
    names = (name,) if isinstance(name, str) else tuple(name)
    _check_levels(plate, target, rollback_n)
    n_c, dtype = _shared_layout(plate, rollback_n)
    mode, index = _mode(plate, names, overwrite, target, n_c)
    _check_chunk_layout(plate, names, mode, target, n_c, rollback_n, index)
    if (
        rollback_n is None
    ):  # also lists every level: a linked folder leaving the store is refused here
        _check_no_stray_chunks(plate, io, target, n_c)
    values = _resolve_data(plate, data)
    images = tuple(
        _image_plan(img, values[img.path], mode, n_c, target, len(names)) for img in plate.images
    )
    # other existing channels in the files the write rewrites (appended channels after the first
    # land in the same unit or in new ones; an overwrite's own channels count too: its backup covers
    # them anyway)
    shared = any(
        any(mates.values())
        for img in plate.images
        for mates in (
            [shared_channels(img, j) for j in range(index, index + len(names))]
            if mode == "overwrite"
            else [shared_channels(img)]
        )
    )
    return WritePlan(
        target=target,
        names=names,
        mode=mode,
        channel_index=index,
        n_channels=n_c,
        dtype=str(dtype),
        ngff_version=plate.ngff_version,
        images=images,
        pending_recovery=pending,
        shared=shared,
    )


def omero_note(plan: WritePlan) -> str:
    """One line saying which images get an omero block, and with which labels."""
    first = next(img for img in plan.images if img.labels)
    return (
        f"{len(plan.adds_omero)} image(s) had no omero metadata: the write adds it, channels "
        f"labelled {', '.join(first.labels)} (as omeloc reads them) and "
        f"{', '.join(map(repr, plan.names))}"
    )


def _shared_layout(plate: Plate, rollback_n: int | None) -> tuple[int, np.dtype]:
    """Channel count and dtype that every image shares, with its axes (else an InputError)."""
    first = plate.images[0]
    n_c, dtype, axes = first.shape[first.axes.index("c")], first.dtype, first.axes
    if rollback_n is not None:
        n_c = rollback_n
    for img in plate.images:
        c = img.shape[img.axes.index("c")]
        if rollback_n is not None and c >= n_c:  # the channels the rollback removes
            c = n_c
        if (c, img.dtype, img.axes) != (n_c, dtype, axes):
            raise InputError(
                f"Image {img.path} has {c} channels, dtype {img.dtype}, axes {''.join(img.axes)} "
                f"but {first.path} has {n_c}, {dtype}, {''.join(axes)}: the plate's wells are "
                "inconsistent. Make every image share channels, dtype and axes before adding a "
                "channel."
            )
    return n_c, dtype


#: how far (in pixels) a level's size may be from what its scale transform says (tools round
#: differently)
SIZE_SLACK = 1


def level_problems(img: Image, rollback_n: int | None = None) -> list[str]:
    """Why the levels of ``img`` disagree with its level 0 (empty: they agree).

    Level ``i`` must have level 0's number of dimensions, channel count (``rollback_n`` caps
    both when a pending rollback will remove the channels a killed run added), dtype and the
    sizes of the other non-spatial axes; along ``y``, ``x`` (and ``z``) its size must be the
    level above's times ``scale_above / scale_i``, to within :data:`SIZE_SLACK` pixels (so the
    rounding of deep pyramids does not add up).  When the scale
    transforms do not differ between two levels (missing, or all 1), only "not larger than the
    level above" is required.
    """
    shapes = img.shapes
    base, c_axis = shapes[0], img.axes.index("c")
    dtypes = [np.dtype(img.zarr_array(i).dtype) for i in range(len(shapes))]
    problems = []
    for i in range(1, len(shapes)):
        where = f"level {img.level_paths[i]!r}"
        shape = shapes[i]
        if len(shape) != len(base):
            problems.append(
                f"{where} has {len(shape)} dimensions, level {img.level_paths[0]!r} {len(base)}"
            )
            continue
        c0, ci = base[c_axis], shape[c_axis]
        if rollback_n is not None:
            c0, ci = min(c0, rollback_n), min(ci, rollback_n)
        if ci != c0:
            problems.append(f"{where} has {ci} channels, level {img.level_paths[0]!r} {c0}")
        if dtypes[i] != dtypes[0]:
            problems.append(
                f"{where} has dtype {dtypes[i]}, level {img.level_paths[0]!r} {dtypes[0]}"
            )
        problems += _size_problems(img, i, where)
    return problems


def _size_problems(img: Image, i: int, where: str) -> list[str]:
    """The spatial and other non-channel sizes of level ``i`` against level 0 and the scales."""
    base, shape, above = img.shapes[0], img.shapes[i], img.shapes[i - 1]
    # the scale transforms as NGFF gives them: one per level, one entry per axis
    scales = img.scales
    problems = []
    for ax, name in enumerate(img.axes):
        if name == "c":
            continue
        if name not in ("y", "x", "z"):
            if shape[ax] != base[ax]:
                problems.append(
                    f"{where} has {shape[ax]} along {name}, level {img.level_paths[0]!r} {base[ax]}"
                )
            continue
        s0 = scales[i - 1][ax] if ax < len(scales[i - 1]) else 1.0
        si = scales[i][ax] if i < len(scales) and ax < len(scales[i]) else 1.0
        if not (math.isfinite(s0) and math.isfinite(si) and s0 > 0 and si > 0):
            problems.append(
                f"{where} has scale {si} along {name} (the level above: {s0}); scales must be "
                "positive"
            )
            continue
        if math.isclose(s0, si):
            if shape[ax] > above[ax]:
                problems.append(
                    f"{where} is larger along {name} ({shape[ax]}) than the level above "
                    f"({above[ax]})"
                )
            continue
        expected = above[ax] * s0 / si
        if abs(shape[ax] - expected) > SIZE_SLACK:
            problems.append(
                f"{where} has {shape[ax]} px along {name} where the level above ({above[ax]} px) "
                f"and the scales ({s0} vs {si}) say {expected:g}"
            )
    return problems


def _check_levels(plate: Plate, target: str, rollback_n: int | None) -> None:
    """Every level of every image agrees with its level 0 (:func:`level_problems`), else an
    InputError."""
    for img in plate.images:
        problems = level_problems(img, rollback_n)
        if problems:
            raise InputError(
                f"Image {img.path or target} has pyramid levels that disagree with its level 0 "
                f"({'; '.join(problems[:3])}). Rebuild its pyramid (or fix the arrays' metadata) "
                f"before adding a channel."
            )


def _virtual_index(img: Image, name: str) -> int | None:
    """Index of ``name`` when it is a virtual channel omeloc wrote into ``img``, else None."""
    entry = ((img.attrs.get("omeloc") or {}).get("channels") or {}).get(name) or {}
    if entry.get("virtual") is True and name in img.channel_names:
        return img.channel_names.index(name)
    return None


def _mode(
    plate: Plate, names: tuple[str, ...], overwrite: bool, target: str, n_c: int
) -> tuple[str, int]:
    """``("append", n_c)``, or ``("overwrite", index)`` when replacing omeloc's channels ``names``
    (side by side from ``index``)."""
    if len(set(names)) != len(names):
        raise InputError(f"Expected distinct channel names. Got {list(names)} instead.")
    present = [n for n in names if n in plate.images[0].channel_names]
    if not present:
        return "append", n_c
    if len(present) != len(names):
        raise InputError(
            f"Channels {present} exist in {target} but {[n for n in names if n not in present]} do "
            "not: channels written together are added together or replaced together. Choose new "
            "names for all of them."
        )
    index = _overwrite_index(plate, names[0], overwrite, target)
    for j, name in enumerate(names[1:], 1):
        if _overwrite_index(plate, name, overwrite, target) != index + j:
            raise InputError(
                f"Channels {list(names)} of {target} are not side by side as omeloc wrote them: "
                f"they cannot be replaced as one write. Choose new names."
            )
    return "overwrite", index


def _overwrite_index(plate: Plate, name: str, overwrite: bool, target: str) -> int:
    """The index of omeloc's virtual channel ``name`` that ``overwrite`` allows to replace (else
    an InputError)."""
    virtual = [_virtual_index(img, name) for img in plate.images]
    if not overwrite:
        raise InputError(
            f"Channel {name!r} already exists in {target}. Choose another name, or pass "
            f"overwrite=True (--overwrite) to replace it if omeloc wrote it."
        )
    if any(v is None for v in virtual) or len(set(virtual)) != 1:
        raise InputError(
            f"Channel {name!r} in {target} is not a virtual channel written by omeloc in every "
            f"image, so overwrite=True may not replace it. Choose another name."
        )
    return int(virtual[0])


def _check_chunk_layout(
    plate: Plate,
    names: tuple[str, ...],
    mode: str,
    target: str,
    n_c: int,
    rollback_n: int | None,
    index: int,
) -> None:
    """No file holding an original channel is rewritten (the one layout rule), and one omero
    entry per channel."""
    for img in plate.images:
        written = range(index, index + len(names)) if mode == "overwrite" else [None]
        problems = [p for j in written for p in write_problems(img, j)]
        if problems:
            verb = (
                f"Replacing channel {names[0]!r} of"
                if mode == "overwrite"
                else "Adding a channel to"
            )
            raise LayoutError(
                f"{verb} {img.path or target} would rewrite chunks that hold other channels "
                f"({'; '.join(problems[:3])}). {RECHUNK_HINT}"
            )
        channels = img.omero.get("channels") or []
        if channels and len(channels) != n_c and rollback_n is None:
            raise InputError(
                f"Image {img.path or target} has {n_c} channels but {len(channels)} omero.channels "
                f"entries. Fix its omero metadata (one entry per channel) before adding a channel."
            )


def _stray_chunks(keys: list[str], arr_rel: str, img: Image, level: int, n_c: int) -> list[str]:
    """The chunk keys among ``keys`` (those below the level's array ``arr_rel``) at or beyond
    channel ``n_c``."""
    doc = img.zarr_array(level).metadata.to_dict()  # the document as opened: no second read
    c_axis = img.axes.index("c")
    block = img.write_chunks(level)[c_axis]
    stray = []
    for key in keys:
        coords = chunk_coords(key[len(arr_rel) + 1 :] if arr_rel else key, doc)
        if coords is not None and len(coords) > c_axis and coords[c_axis] * block >= n_c:
            stray.append(key)
    return stray


def _level_keys(plate: Plate, io: StoreIO) -> dict[str, list[str]]:
    """The keys below every level array of the plate: a walk of each level on a local store (a
    linked folder that leaves the store is refused there), else one listing of the whole plate (on
    an object store a listing page holds 1,000 keys: one request instead of one per array)."""
    arrays = [join_path("", img.path, lv) for img in plate.images for lv in img.level_paths]
    if io.local_root is not None:
        return {rel: io.list(rel) for rel in arrays}
    found: dict[str, list[str]] = {rel: [] for rel in arrays}
    owners = set(arrays)
    for key in io.list(""):
        parts = key.split("/")
        for n in range(len(parts) - 1, 0, -1):  # the deepest array the key lies below
            head = "/".join(parts[:n])
            if head in owners:
                found[head].append(key)
                break
    return found


def _check_no_stray_chunks(plate: Plate, io: StoreIO, target: str, n_c: int) -> None:
    listed = _level_keys(plate, io)
    for img in plate.images:
        for level in range(len(img.level_paths)):
            arr_rel = join_path("", img.path, img.level_paths[level])
            stray = _stray_chunks(listed[arr_rel], arr_rel, img, level, n_c)
            if stray:
                raise LayoutError(
                    f"Level {img.level_paths[level]!r} of {img.path or target} has chunk files "
                    f"beyond its {n_c} channels ({stray[0]}, ...; {len(stray)} in all), left by an "
                    f"interrupted write. Delete them (they hold no visible data) and retry."
                )


def _resolve_data(plate: Plate, data: DataArg) -> dict[str, Any]:
    """One array (or dask array) per image path, from any of the forms ``data`` may take."""
    paths = [img.path for img in plate.images]
    if callable(data) and not isinstance(data, (np.ndarray, da.Array)):
        return {img.path: data(img) for img in plate.images}
    if isinstance(data, Mapping):
        keys = {str(k).strip("/") for k in data}
        missing = [p for p in paths if p not in keys]
        extra = sorted(keys - set(paths))
        if missing or extra:
            raise InputError(
                "Expected data for exactly the images "
                f"{paths[:6]}{' ...' if len(paths) > 6 else ''}. Missing: {missing[:6]}; unknown: "
                f"{extra[:6]}. Give one array per image path."
            )
        values = {str(k).strip("/"): v for k, v in data.items()}
        return {p: (values[p]() if callable(values[p]) else values[p]) for p in paths}
    if plate.is_plate:
        raise InputError(
            f"Expected a mapping from image path to array for plate {plate.path}. "
            f"Got one {type(data).__name__} instead. Pass {{'{paths[0]}': array, ...}}."
        )
    return {paths[0]: data}


def _as_dask(
    value: Any, where: str, want_shape: tuple[int, ...], blocks: tuple[int, ...]
) -> da.Array:
    """``value`` as a dask array chunked like the zarr write blocks, its shape and dtype checked."""
    arr = value if isinstance(value, da.Array) else np.asarray(value)
    if arr.dtype.kind not in "biuf":
        raise InputError(f"Expected numeric data for {where}. Got dtype {arr.dtype} instead.")
    if tuple(arr.shape) != tuple(want_shape):
        raise InputError(
            f"Expected data of shape {tuple(want_shape)} for {where} (level 0 without the c axis; "
            f"one plane per channel name first when several are written). Got {tuple(arr.shape)} "
            "instead."
        )
    if isinstance(arr, np.ndarray):
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise InputError(
                f"Data for {where} has NaN or infinite values. Replace them (e.g. np.nan_to_num) "
                "first."
            )
        arr = da.from_array(arr, chunks=blocks)
    return arr.rechunk(_aligned(arr.chunks, blocks))


def _aligned(chunks: tuple[tuple[int, ...], ...], blocks: tuple[int, ...]) -> tuple[Any, ...]:
    """Chunks for the write tasks: the data's own along an axis where each of its blocks starts on a
    write-block boundary (e.g. prediction regions), else the write blocks."""
    out: list[Any] = []
    for c, b in zip(chunks, blocks):
        starts = np.cumsum((0, *c[:-1]))
        out.append(c if all(int(x) % b == 0 for x in starts) else b)
    return tuple(out)


def _image_plan(img: Image, value: Any, mode: str, n_c: int, target: str, k: int = 1) -> ImagePlan:
    """The shapes after the write, the write blocks and the checked data of one image (``k``
    channels)."""
    c_axis = img.axes.index("c")
    shapes = []
    for s in img.shapes:
        s = list(s)
        s[c_axis] = n_c + k if mode == "append" else n_c
        shapes.append(tuple(s))
    blocks = tuple(img.write_chunks(level) for level in range(len(img.level_paths)))
    plane, plane_block = without_axis(img.shape, c_axis), without_axis(blocks[0], c_axis)
    if k == 1:  # one channel: the plane itself (the leading axis of one is added here)
        arr = _as_dask(value, f"image {img.path or target}", plane, plane_block)[None]
    else:
        arr = _as_dask(value, f"image {img.path or target}", (k, *plane), (k, *plane_block))
    labels = () if img.omero.get("channels") else tuple(img.channel_names[:n_c])
    metadata = tuple(
        img.zarr_array(n).metadata.update_shape(shape) for n, shape in enumerate(shapes)
    )
    return ImagePlan(
        path=img.path,
        url=img.url,
        c_axis=c_axis,
        level_paths=img.level_paths,
        shapes=tuple(shapes),
        write_blocks=blocks,
        data=arr,
        labels=labels,
        metadata=metadata,
    )
