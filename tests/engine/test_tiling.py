"""Tile geometry, weight maps and the accumulator (pure numpy)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from omeloc.errors import InputError
from omeloc.engine.tiling import (
    BLEND_MODES,
    Accumulator,
    as_pair,
    check_tiling,
    check_trim,
    pad_to_multiple,
    tile_grid,
    tile_starts,
    weight_map,
    weight_profile,
)


@settings(max_examples=200, deadline=None)
@given(length=st.integers(1, 700), tile=st.integers(1, 300), data=st.data())
def test_tile_starts_cover_with_overlap(length, tile, data):
    overlap = data.draw(st.integers(0, tile - 1))
    starts = tile_starts(length, tile, overlap)
    size = min(tile, length)
    assert starts[0] == 0 and starts[-1] + size == length
    assert starts == sorted(set(starts))
    for a, b in zip(starts, starts[1:]):
        assert a + size - b >= overlap  # neighbours overlap by at least `overlap`
    if length > tile:  # no wasted tile: one fewer would not cover
        assert (len(starts) - 1) * (tile - overlap) + tile < length + (tile - overlap)


@pytest.mark.parametrize(
    "shape,tile,overlap,n",
    [
        ((40, 70), 32, 8, 2 * 3),
        ((20, 30), 64, 16, 1),  # image smaller than the tile
        ((128, 96), (64, 48), (16, 0), 3 * 2),
        ((256, 256), 256, 32, 1),
    ],
)
def test_tile_grid_counts_and_shapes(shape, tile, overlap, n):
    grid = tile_grid(shape, tile, overlap)
    assert len(grid) == n
    cover = np.zeros(shape, int)
    shapes = set()
    for sy, sx in grid:
        cover[sy, sx] += 1
        shapes.add((sy.stop - sy.start, sx.stop - sx.start))
    assert cover.min() >= 1 and len(shapes) == 1


@pytest.mark.parametrize("blend", BLEND_MODES)
@pytest.mark.parametrize("length,ramp", [(1, None), (7, None), (64, 16), (64, 0), (33, 40)])
def test_weight_profile_positive_peak_one(blend, length, ramp):
    w = weight_profile(length, blend, ramp)
    assert w.shape == (length,)
    assert w.min() > 0 and w.max() == pytest.approx(1.0)
    np.testing.assert_allclose(w, w[::-1])  # symmetric


@pytest.mark.parametrize("blend", ["linear", "cosine"])
def test_ramps_cross_fade_to_one(blend):
    ramp = 16
    w = weight_profile(64, blend, ramp)
    # tile B starts where tile A's last `ramp` pixels begin: weights sum to one
    np.testing.assert_allclose(w[-ramp:] + w[:ramp], 1.0, atol=1e-12)


def test_weight_map_outer_product_never_zero():
    m = weight_map((10, 20), "gaussian")
    assert m.shape == (10, 20) and m.min() > 0
    np.testing.assert_allclose(
        m, np.outer(weight_profile(10, "gaussian"), weight_profile(20, "gaussian"))
    )
    assert weight_map((5, 6), "constant").min() == 1.0


def test_bad_arguments_raise_input_error():
    with pytest.raises(InputError, match="overlap < tile"):
        check_tiling(32, 32)
    with pytest.raises(InputError):
        check_tiling(0, 0)
    with pytest.raises(InputError):
        check_tiling(32, -1)
    with pytest.raises(InputError, match="Unknown blend"):
        weight_profile(8, "hamming")
    with pytest.raises(InputError):
        as_pair((1, 2, 3), "tile")
    with pytest.raises(InputError):
        as_pair("big", "tile")
    assert as_pair(5, "tile") == (5, 5) and as_pair([3, 4], "tile") == (3, 4)


def test_pad_to_multiple_reflects_and_handles_tiny_images():
    a = np.arange(2 * 5 * 7, dtype=np.float32).reshape(2, 5, 7)
    p, (h, w) = pad_to_multiple(a, 4)
    assert p.shape == (2, 8, 8) and (h, w) == (5, 7)
    np.testing.assert_array_equal(p[:, :5, :7], a)
    np.testing.assert_array_equal(p[:, 5, :7], a[:, 3])  # reflect, not edge
    same, _ = pad_to_multiple(a[:, :4, :4], 4)
    assert same.shape == (2, 4, 4)
    tiny, _ = pad_to_multiple(np.ones((1, 1, 3)), 16)
    assert tiny.shape == (1, 16, 16) and np.all(tiny == 1)


@pytest.mark.parametrize("blend", BLEND_MODES)
def test_accumulator_is_exact_for_consistent_tiles(blend):
    rng = np.random.default_rng(0)
    truth = rng.random((2, 3, 37, 53)).astype(np.float32)
    acc = Accumulator(truth.shape, blend, ramp=(5, 7))
    for idx in np.ndindex(2):
        for win in tile_grid((37, 53), (16, 24), (5, 7)):
            acc.add(idx, win, truth[(*idx, slice(None), *win)])
    np.testing.assert_array_equal(acc.finalize(), truth)


def test_accumulator_refuses_uncovered_pixels():
    acc = Accumulator((1, 4, 4))
    acc.add((), (slice(0, 2), slice(0, 4)), np.ones((1, 2, 4)))
    with pytest.raises(InputError, match="not covered"):
        acc.finalize()


@pytest.mark.parametrize("blend", BLEND_MODES)
def test_trimmed_profile_is_zero_on_margins_only(blend):
    w = weight_profile(40, blend, ramp=8, trim=(5, 3))
    assert np.all(w[:5] == 0) and np.all(w[-3:] == 0)
    assert w[5:-3].min() > 0 and w.max() == pytest.approx(1.0)
    np.testing.assert_array_equal(weight_profile(32, blend, 8, 0), weight_profile(32, blend, 8))
    with pytest.raises(InputError, match="trim"):
        weight_profile(8, blend, trim=4)


def test_check_trim_defaults_and_limits():
    assert check_trim(None, 24) == (6, 6) and check_trim(None, (16, 3)) == (4, 0)
    assert check_trim(12, 24) == (12, 12) and check_trim((0, 2), (8, 4)) == (0, 2)
    for bad in (13, -1, (1, 3)):
        with pytest.raises(InputError, match="trim"):
            check_trim(bad, (24, 5))


@settings(max_examples=150, deadline=None)
@given(
    h=st.integers(1, 200),
    w=st.integers(1, 200),
    tile=st.integers(2, 64),
    data=st.data(),
    blend=st.sampled_from(BLEND_MODES),
)
def test_trimmed_tiles_cover_every_pixel(h, w, tile, data, blend):
    """Zero-weight margins never leave a pixel uncovered: every trim <= overlap // 2 works."""
    overlap = data.draw(st.integers(0, tile - 1))
    trim = data.draw(st.integers(0, overlap // 2))
    acc = Accumulator((1, h, w), blend, ramp=overlap - 2 * trim, trim=trim)
    for win in tile_grid((h, w), tile, overlap):
        acc.add((), win, np.ones((1, win[0].stop - win[0].start, win[1].stop - win[1].start)))
    np.testing.assert_array_equal(acc.finalize(), 1.0)  # finalize raises on an uncovered pixel


@pytest.mark.parametrize("blend", BLEND_MODES)
def test_trimmed_margins_get_no_weight_inside_the_region(blend):
    """A tile whose margin disagrees with its neighbours changes nothing; at the region's
    edges the margin is kept (nothing else covers it)."""
    rng = np.random.default_rng(1)
    truth = rng.random((1, 50, 70))
    acc = Accumulator(truth.shape, blend, ramp=4, trim=3)
    for win in tile_grid((50, 70), 24, 10):
        tile = truth[(slice(None), *win)].copy()
        inner_y = slice(0 if win[0].start == 0 else 3, None if win[0].stop == 50 else -3)
        inner_x = slice(0 if win[1].start == 0 else 3, None if win[1].stop == 70 else -3)
        noisy = tile + 100.0
        noisy[:, inner_y, inner_x] = tile[:, inner_y, inner_x]
        acc.add((), win, noisy)
    np.testing.assert_allclose(acc.finalize(), truth.astype(np.float32), rtol=1e-6)
