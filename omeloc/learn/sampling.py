"""Random training crops read on demand from OME-Zarr plates (never a whole-plate load).

:class:`CropSampler` holds only metadata (which images, which channel indices, shapes).  A
batch is drawn by picking an image, a plane (t, z) and a square window, reading exactly that
window of the source and target channels from the zarr array (a few chunks per channel),
normalizing, rejecting mostly-empty crops (and, optionally, crops with little target foreground),
flipping/rotating and, optionally, jittering the source's intensity, sharpness and noise.  Batch
``i`` is a pure function of ``(seed, i)``, so training is reproducible, resumable at any step, and
batches can be prefetched by a background thread without changing what they contain.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from omeloc.errors import InputError
from omeloc.learn.normalization import normalize_channels, percentile_stats
from omeloc.ngff.plate import Image

__all__ = ["CropSampler", "channel_statistics", "check_z_window"]


@dataclass(frozen=True)
class _Source:
    image: Image
    axes: tuple[str, ...]
    shape: tuple[int, ...]
    source_idx: tuple[int, ...]
    target_idx: tuple[int, ...]


def _plane_key(
    axes: Sequence[str], c: int, t: int, z: int, ys: slice, xs: slice
) -> tuple[Any, ...]:
    key: list[Any] = []
    for ax in axes:
        key.append({"c": c, "t": t, "z": z, "y": ys, "x": xs}.get(ax, 0))
    return tuple(key)


def check_z_window(img: Image, n_z: int | None, z_window: int) -> None:
    """Refuse a z-window on an image without z planes, or wider than its stack.

    Raises
    ------
    InputError
        One line naming the image, its planes and the fix.
    """
    if n_z is None or n_z < 2:
        raise InputError(
            f"A --z-window of {z_window} needs z-stacks, but image {img.url} has "
            f"{'no z axis' if n_z is None else 'one z plane'}. Train a 2D model (--z-window 1)."
        )
    if z_window > n_z:
        raise InputError(
            f"Expected a --z-window of at most the {n_z} planes of image {img.url}. Got {z_window} "
            f"instead: pass --z-window {n_z - 1 + n_z % 2} or less."
        )


def channel_statistics(
    images: Sequence[Image],
    channels: Sequence[str],
    *,
    level: int = 0,
    max_fields: int = 12,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """Percentile statistics of each channel, from a sample of at most ``max_fields`` images.

    Reads one plane per sampled image and channel (the middle z, the first t) at ``level``;
    writes nothing.  See :func:`omeloc.learn.normalization.percentile_stats`.
    """
    if not images:
        raise InputError(
            "Expected at least one image to measure normalization statistics. Got none."
        )
    rng = np.random.default_rng(seed)
    picked = [
        images[i]
        for i in sorted(rng.choice(len(images), min(max_fields, len(images)), replace=False))
    ]
    stats: dict[str, dict[str, Any]] = {}
    for ch in channels:
        planes = []
        for img in picked:
            arr = img.zarr_array(level)
            shape = dict(zip(img.axes, arr.shape))
            key = _plane_key(
                img.axes, img.channel_index(ch), 0, shape.get("z", 1) // 2, slice(None), slice(None)
            )
            planes.append(np.asarray(arr[key]))
        stats[ch] = percentile_stats(planes, seed=seed)
    return stats


def jitter(src: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Intensity augmentation of a normalized ``(C, Y, X)`` source crop (a new float32 array).

    Gain in [0.8, 1.25] (log-uniform) and offset in [-0.05, 0.05]; with probability 1/3 a
    Gaussian blur of σ in [0.3, 1] px; Gaussian noise of std in [0, 0.03].
    """
    from omeloc.analysis.metrics import gaussian_blur

    gain = float(np.exp(rng.uniform(np.log(0.8), np.log(1.25))))
    out = src.astype(np.float32) * gain + float(rng.uniform(-0.05, 0.05))
    if rng.random() < 1 / 3:
        out = gaussian_blur(out, float(rng.uniform(0.3, 1.0)), dtype=np.float32)
    noise = float(rng.uniform(0.0, 0.03))
    return (out + rng.normal(0.0, noise, out.shape)).astype(np.float32)


class CropSampler:
    """Random (source, target) crops from a set of images, normalized and augmented.

    Parameters
    ----------
    images
        The images to draw from (e.g. the fields of the training wells, of one or more plates).
    source, target
        Channel labels; each image must have them all.
    normalization
        Per-channel ``{"low", "high"}`` statistics (:func:`channel_statistics`).
    crop
        Side of the square crops, in pixels of ``level``.
    level
        Pyramid level to read.
    seed
        Batch ``i`` depends only on ``(seed, i)``.
    augment
        Random flips and 90° rotations (the same for source and target).
    min_foreground
        Reject a crop whose normalized source has fewer than this fraction of pixels above
        ``foreground_level``; after ``max_tries`` rejections the last crop is kept.
    foreground_weight
        Bias towards the target's foreground: a crop whose target has a fraction ``f`` of
        pixels above ``foreground_level`` is kept with probability ``1 - w + w * min(1, f / 0.25)``
        (0: every crop that passes ``min_foreground`` is kept, as before).
    intensity_augment
        Jitter the source of each crop: gain 0.8–1.25, offset ±0.05, a Gaussian blur of σ up
        to 1 px on a third of the crops, Gaussian noise of std up to 0.03 (normalized units).
    z_window
        Odd number of source planes around the crop's plane (1: that plane only).  The source
        crop is then ``(C * z_window, crop, crop)``, each channel's planes together, lowest z
        first; planes beyond the stack repeat its first or last (as prediction pads them).
    """

    def __init__(
        self,
        images: Sequence[Image],
        source: Sequence[str],
        target: Sequence[str],
        *,
        normalization: Mapping[str, Mapping[str, Any]],
        crop: int = 256,
        level: int = 0,
        seed: int = 0,
        augment: bool = True,
        min_foreground: float = 0.02,
        foreground_level: float = 0.15,
        max_tries: int = 10,
        foreground_weight: float = 0.0,
        intensity_augment: bool = False,
        z_window: int = 1,
    ) -> None:
        if not images:
            raise InputError("Expected at least one image to sample crops from. Got none.")
        if crop < 8:
            raise InputError(f"Expected a crop of at least 8 pixels. Got {crop} instead.")
        self.source, self.target = list(source), list(target)
        self.normalization = {k: dict(v) for k, v in normalization.items()}
        self.crop, self.level, self.seed = int(crop), int(level), int(seed)
        self.augment, self.min_foreground = bool(augment), float(min_foreground)
        self.foreground_level, self.max_tries = float(foreground_level), int(max_tries)
        self.foreground_weight, self.intensity_augment = (
            float(foreground_weight),
            bool(intensity_augment),
        )
        self.z_window = int(z_window)
        self.rejected = 0
        self.drawn = 0
        self._sources: list[_Source] = []
        for img in images:
            if level >= len(img.level_paths):
                raise InputError(
                    f"Expected a pyramid level below {len(img.level_paths)} for {img.url}. "
                    f"Got level {level} instead: pass a smaller --level."
                )
            shape = tuple(img.shapes[level])
            sizes = dict(zip(img.axes, shape))
            if self.z_window > 1:
                check_z_window(img, sizes.get("z"), self.z_window)
            if sizes["y"] < crop or sizes["x"] < crop:
                raise InputError(
                    f"Image {img.name} is {sizes['y']}x{sizes['x']} pixels at level {level}, "
                    f"smaller than the {crop}-pixel crop. Pass a crop of at most "
                    f"{min(sizes['y'], sizes['x'])} (--crop) or a lower --level."
                )
            self._sources.append(
                _Source(
                    image=img,
                    axes=img.axes,
                    shape=shape,
                    source_idx=tuple(img.channel_index(c) for c in self.source),
                    target_idx=tuple(img.channel_index(c) for c in self.target),
                )
            )

    @property
    def images(self) -> list[Image]:
        return [s.image for s in self._sources]

    # -- reading ------------------------------------------------------------------------------
    def read(self, i: int, t: int, z: int, y: int, x: int) -> tuple[np.ndarray, np.ndarray]:
        """The normalized ``(source, target)`` window of image ``i`` at plane (t, z), corner (y,
        x)."""
        s = self._sources[i]
        arr = s.image.zarr_array(self.level)
        ys, xs = slice(y, y + self.crop), slice(x, x + self.crop)

        def planes(indices: Sequence[int], names: Sequence[str], zk: int) -> np.ndarray:
            raw = [np.asarray(arr[_plane_key(s.axes, c, t, zk, ys, xs)]) for c in indices]
            return normalize_channels(raw, [self.normalization[n] for n in names]).astype(
                np.float32, copy=False
            )

        target = planes(s.target_idx, self.target, z)
        if self.z_window == 1:
            return planes(s.source_idx, self.source, z), target
        n_z, h = dict(zip(s.axes, s.shape))["z"], self.z_window // 2
        zs = np.clip(
            np.arange(z - h, z + h + 1), 0, n_z - 1
        )  # beyond the stack: its first or last plane
        src = np.stack(
            [planes(s.source_idx, self.source, int(k)) for k in zs], axis=1
        )  # (C, K, crop, crop)
        return src.reshape(-1, *src.shape[-2:]), target

    def _draw(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        for attempt in range(self.max_tries + 1):
            i = int(rng.integers(len(self._sources)))
            sizes = dict(zip(self._sources[i].axes, self._sources[i].shape))
            t = int(rng.integers(sizes.get("t", 1)))
            z = int(rng.integers(sizes.get("z", 1)))
            y = int(rng.integers(sizes["y"] - self.crop + 1))
            x = int(rng.integers(sizes["x"] - self.crop + 1))
            src, tgt = self.read(i, t, z, y, x)
            self.drawn += 1
            if attempt == self.max_tries or self._accept(src, tgt, rng):
                break
            self.rejected += 1
        if self.augment:
            k = int(rng.integers(4))
            flip = bool(rng.integers(2))
            src, tgt = (np.rot90(a, k, axes=(-2, -1)) for a in (src, tgt))
            if flip:
                src, tgt = src[..., ::-1], tgt[..., ::-1]
        if self.intensity_augment:
            src = jitter(np.ascontiguousarray(src), rng)
        return np.ascontiguousarray(src), np.ascontiguousarray(tgt)

    def _accept(self, src: np.ndarray, tgt: np.ndarray, rng: np.random.Generator) -> bool:
        """Whether a drawn crop is kept: enough source foreground, then the target-foreground
        bias."""
        if (
            self.min_foreground > 0
            and float((src > self.foreground_level).mean()) < self.min_foreground
        ):
            return False
        if (
            self.foreground_weight <= 0
        ):  # no draw from rng: the batches of earlier versions stay the same
            return True
        fraction = float((tgt > self.foreground_level).mean())
        keep = 1.0 - self.foreground_weight + self.foreground_weight * min(1.0, fraction / 0.25)
        return bool(rng.random() < keep)

    def batch(self, index: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """Batch number ``index``: arrays ``(N, C_source, crop, crop)`` and
        ``(N, C_target, crop, crop)``."""
        rng = np.random.default_rng([self.seed, int(index)])
        pairs = [self._draw(rng) for _ in range(batch_size)]
        return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])

    def fixed(self, n: int, seed: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``n`` crops without augmentation, the same on every call (for validation)."""
        augment, self.augment = self.augment, False
        try:
            rng = np.random.default_rng([self.seed if seed is None else seed, 1 << 30])
            pairs = [self._draw(rng) for _ in range(n)]
        finally:
            self.augment = augment
        return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])

    def batches(
        self, start: int, stop: int, batch_size: int, prefetch: int = 2
    ) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """Batches ``start`` … ``stop - 1``, read ahead by a background thread.

        Yields ``(index, source, target)``.  Reading (zarr decompression releases the GIL)
        overlaps the model's step, and the contents do not depend on the prefetch depth.
        """
        if prefetch <= 0:
            for i in range(start, stop):
                yield (i, *self.batch(i, batch_size))
            return
        q: queue.Queue = queue.Queue(maxsize=prefetch)
        stop_event = threading.Event()

        def worker() -> None:
            try:
                for i in range(start, stop):
                    if stop_event.is_set():
                        return
                    item = (i, *self.batch(i, batch_size))
                    while not stop_event.is_set():
                        try:
                            q.put(item, timeout=0.1)
                            break
                        except queue.Full:
                            continue
            except BaseException as err:  # noqa: BLE001 - re-raised in the consumer
                q.put(err)

        thread = threading.Thread(target=worker, name="omeloc-crops", daemon=True)
        thread.start()
        try:
            for _ in range(start, stop):
                item = q.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop_event.set()
            thread.join(timeout=5)
