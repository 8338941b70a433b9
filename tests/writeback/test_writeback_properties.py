"""Property-based write-back: random shapes, chunkings, channel counts, levels and NGFF versions."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import omeloc
from omeloc.writeback.protocol import add_channel


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    height=st.integers(8, 70),
    width=st.integers(8, 70),
    chunk=st.integers(4, 40),
    channels=st.integers(1, 3),
    levels=st.integers(1, 3),
    ngff=st.sampled_from(["0.4", "0.5"]),
    dtype=st.sampled_from(["uint8", "uint16", "float32"]),
    seed=st.integers(0, 2**16),
)
def test_add_channel_keeps_originals_and_writes_every_level(
    height, width, chunk, channels, levels, ngff, dtype, seed
):
    rng = np.random.default_rng(seed)
    data = (rng.random((channels, height, width)) * 200).astype(dtype)
    new = (rng.random((height, width)) * 200).astype(dtype)
    with tempfile.TemporaryDirectory() as tmp:
        path = omeloc.write_image(
            Path(tmp) / "img.zarr",
            data,
            channel_names=[f"ch{i}" for i in range(channels)],
            ngff_version=ngff,
            chunks=(chunk, chunk),
            levels=levels,
        )
        before = omeloc.open_image(path)
        originals = [before.level(k).compute() for k in range(len(before.level_paths))]
        add_channel(path, "virtual", new, scheduler="synchronous")
        img = omeloc.open_image(path)
        assert img.channel_names == tuple(f"ch{i}" for i in range(channels)) + ("virtual",)
        assert len(img.omero["channels"]) == channels + 1
        for k, orig in enumerate(originals):
            arr = img.level(k).compute()
            assert arr.shape == (channels + 1, *orig.shape[1:]) and arr.dtype == orig.dtype
            np.testing.assert_array_equal(arr[:channels], orig)  # the user's pixels, untouched
        np.testing.assert_array_equal(img.level(0).compute()[channels], new)
        for k in range(
            1, len(img.level_paths)
        ):  # lower levels: downsampled from level 0, same size as the others
            lower = img.level(k).compute()[channels]
            assert lower.shape == originals[k].shape[1:]
            assert np.isfinite(lower.astype(float)).all()
            assert lower.min() >= new.min() and lower.max() <= new.max()
