"""Synthetic cells and plates: pixels, determinism, and the biology that holds by construction."""

from __future__ import annotations

import numpy as np
import pytest

import omeloc
from omeloc.errors import InputError
from omeloc.data.synthetic import ATTRS_KEY, field_rng, make_plate, row_name
from omeloc.data.synthetic_cells import (
    CHANNELS,
    PERTURBATIONS,
    gaussian_blur,
    render_field,
    simulate_field,
)

SIZE = 224


@pytest.fixture(scope="module")
def field():
    return simulate_field(SIZE, np.random.default_rng(7), n_cells=4)


@pytest.fixture(scope="module")
def perturbed():
    return {
        p: simulate_field(SIZE, np.random.default_rng(7), n_cells=4, perturbation=p)
        for p in PERTURBATIONS
    }


def _signal(f, channel):
    return f.clean[channel] - f.background[channel]


def _near_cells(f):
    """Cell pixels plus a margin of ~3 px (where the PSF spills the edge signal)."""
    return gaussian_blur((f.labels > 0).astype(np.float32), 1.5) > 0.02


def _edge_enrichment(f, channel, width=3.0):
    """(signal fraction within ``width`` px of the cell edge) / (area fraction there)."""
    near = _near_cells(f)
    edge = near & ((f.labels == 0) | (f.edge_distance < width))
    s = _signal(f, channel)
    return float(s[edge].sum() / s[near].sum()) / float(edge.sum() / near.sum())


def _adhesion_enrichment(f, channel, radius=4.0):
    near = _near_cells(f)
    yy, xx = np.mgrid[: near.shape[0], : near.shape[1]]
    fa = np.zeros(near.shape, bool)
    for y, x in f.adhesions:
        fa |= (yy - y) ** 2 + (xx - x) ** 2 < radius**2
    fa &= near
    s = _signal(f, channel)
    return float(s[fa].sum() / s[near].sum()) / float(fa.sum() / near.sum()), fa


def _hp(a, sigma=3.0):
    return a - gaussian_blur(a, sigma)


def _corr(a, b, mask):
    a, b = a[mask] - a[mask].mean(), b[mask] - b[mask].mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


# -- pixels -------------------------------------------------------------------------------------
def test_render_field_channels_dtype_and_range():
    imgs = render_field((96, 128), np.random.default_rng(0))
    assert tuple(imgs) == CHANNELS
    for name, img in imgs.items():
        assert img.dtype == np.uint16 and img.shape == (96, 128), name
        assert 100 <= np.median(img) <= 300, name  # mostly background: offset + background
        assert img.max() < 65535, name  # nothing saturates
    assert imgs["actin"].max() > 1000


def test_noise_is_poisson_plus_read_noise(field):
    bg = field.labels == 0
    far = bg & (gaussian_blur((field.labels > 0).astype(np.float32), 4) < 1e-4)
    for c in ("actin", "tubulin"):
        resid = field.images[c][far].astype(float) - field.clean[c][far]
        assert abs(resid.mean()) < 1.0
        # variance = Poisson (background electrons) + read noise^2 (16) (+ rounding 1/12)
        expected = field.background[c] - 100 + 16 + 1 / 12
        assert resid.var() == pytest.approx(expected, rel=0.15)


def test_same_generator_state_gives_identical_pixels():
    a = render_field(80, np.random.default_rng(5))
    b = render_field(80, np.random.default_rng(5))
    c = render_field(80, np.random.default_rng(6))
    assert all(np.array_equal(a[k], b[k]) for k in CHANNELS)
    assert not np.array_equal(a["actin"], c["actin"])


# -- biology by construction ----------------------------------------------------------------------
def test_wave2_and_irsp53_concentrate_at_the_edge(field):
    assert _edge_enrichment(field, "WAVE2") > 1.25
    assert _edge_enrichment(field, "IRSp53") > 1.25
    # within the lamellipodia the edge enrichment is much stronger
    near = _near_cells(field)
    lam = near & ((field.labels == 0) | (field.edge_distance < 3))
    lam &= gaussian_blur(field.lamellipodium, 3) > 0.05
    s = _signal(field, "WAVE2")
    assert (s[lam].sum() / s[near].sum()) / (lam.sum() / near.sum()) > 3
    # tubulin and vinculin do not
    assert _edge_enrichment(field, "tubulin") < 0.8
    assert _edge_enrichment(field, "vinculin") < 0.8


def test_vinculin_sits_on_the_ends_of_actin_fibres(field):
    assert len(field.adhesions) >= 8
    enrichment, fa = _adhesion_enrichment(field, "vinculin")
    assert enrichment > 4
    actin = _signal(field, "actin")
    assert np.median(actin[fa]) > 2 * np.median(actin[field.labels > 0])


def test_highpass_actin_predicts_related_channels_not_tubulin(field):
    near = _near_cells(field)
    hp_actin = _hp(field.clean["actin"])
    r = {c: _corr(hp_actin, _hp(field.clean[c]), near) for c in CHANNELS[1:]}
    assert abs(r["tubulin"]) < 0.08, r
    for c in ("WAVE2", "IRSp53", "vinculin"):
        assert r[c] > 0.1, r
        assert r[c] > 3 * abs(r["tubulin"]), r


@pytest.mark.parametrize(
    ("perturbation", "channel"),
    [
        ("wave2_cytoplasmic", "WAVE2"),
        ("irsp53_cytoplasmic", "IRSp53"),
        ("vinculin_diffuse", "vinculin"),
    ],
)
def test_perturbation_breaks_one_relationship_only(field, perturbed, perturbation, channel):
    p = perturbed[perturbation]
    for c in CHANNELS:  # every other channel is pixel-identical
        if c != channel:
            assert np.array_equal(p.images[c], field.images[c]), c
    assert not np.array_equal(p.images[channel], field.images[channel])
    if channel == "vinculin":
        assert _adhesion_enrichment(p, channel)[0] < 1.5
        assert _adhesion_enrichment(field, channel)[0] > 3 * _adhesion_enrichment(p, channel)[0]
    else:
        assert _edge_enrichment(p, channel) < 0.7
        assert _edge_enrichment(field, channel) > 2.5 * _edge_enrichment(p, channel)
    # the protein is moved, not removed: the same amount per cell, give or take what the
    # PSF and filopodia put outside the field in the unperturbed image
    rel = 0.1
    assert _signal(p, channel).sum() == pytest.approx(_signal(field, channel).sum(), rel=rel)


def test_bad_inputs_are_refused():
    with pytest.raises(InputError, match="perturbation"):
        render_field(64, np.random.default_rng(0), perturbation="wave2")
    with pytest.raises(InputError, match="field size"):
        render_field(8, np.random.default_rng(0))


# -- plates -------------------------------------------------------------------------------------
def test_row_names():
    assert [row_name(i) for i in (0, 1, 25, 26, 27, 31)] == ["A", "B", "Z", "AA", "AB", "AF"]


@pytest.mark.parametrize("ngff", ["0.4", "0.5"])
def test_make_plate_opens_with_channels_truth_and_pixels(tmp_path, ngff):
    path = make_plate(
        tmp_path / "s.zarr",
        rows=2,
        cols=2,
        fields=2,
        size=(64, 80),
        seed=3,
        ngff=ngff,
        chunks=(32, 32),
        levels=2,
        perturbed_wells=["B2"],
    )
    plate = omeloc.open_plate(path)
    assert plate.ngff_version == ngff
    assert list(plate.rows) == ["A", "B"] and list(plate.columns) == ["1", "2"]
    assert tuple(plate.channel_names) == CHANNELS
    assert len(plate.images) == 8
    img = plate.image("B/2/1")
    assert img.shapes[0] == (6, 64, 80) and img.dtype == np.uint16
    truth = plate.attrs[ATTRS_KEY]
    assert truth["relationships"]["actin->tubulin"] == "unrelated"
    assert truth["relationships"]["actin->WAVE2"] == "related"
    assert truth["perturbed_wells"] == ["B/2"]
    assert truth["perturbation"] == "wave2_cytoplasmic" and truth["seed"] == 3
    assert set(truth["channels"]) == set(CHANNELS)
    # pixels: each field is a function of (seed, position) only
    expect = render_field((64, 80), field_rng(3, 1, 1, 1), perturbation="wave2_cytoplasmic")
    got = np.asarray(img.level(0))
    for k, c in enumerate(CHANNELS):
        assert np.array_equal(got[k], expect[c]), c
    normal = render_field((64, 80), field_rng(3, 0, 1, 0))
    assert np.array_equal(np.asarray(plate.image("A/2/0").level(0))[0], normal["actin"])


def test_make_plate_is_deterministic_and_layout_independent(tmp_path):
    a = make_plate(
        tmp_path / "a.zarr",
        rows=1,
        cols=1,
        fields=1,
        size=48,
        seed=9,
        levels=1,
        channels=("actin", "tubulin"),
    )
    b = make_plate(
        tmp_path / "b.zarr",
        rows=2,
        cols=2,
        fields=1,
        size=48,
        seed=9,
        levels=1,
        channels=("actin", "tubulin"),
    )
    pa, pb = omeloc.open_plate(a), omeloc.open_plate(b)
    assert tuple(pa.channel_names) == ("actin", "tubulin")
    a0, b0 = (np.asarray(p.image("A/1/0").level(0)) for p in (pa, pb))
    assert np.array_equal(a0, b0)


def test_make_plate_refuses_bad_arguments_before_writing(tmp_path):
    target = tmp_path / "x.zarr"
    with pytest.raises(InputError, match="perturbed wells"):
        make_plate(target, rows=2, cols=2, perturbed_wells=["C1"], size=32)
    with pytest.raises(InputError, match="well like"):
        make_plate(target, perturbed_wells=["2B"], size=32)
    with pytest.raises(InputError, match="channel"):
        make_plate(target, channels=("actin", "GFP"), size=32)
    with pytest.raises(InputError, match="perturbation"):
        make_plate(target, perturbation="nope", size=32)
    with pytest.raises(InputError, match="rows"):
        make_plate(target, rows=0, size=32)
    assert not target.exists()
    make_plate(target, rows=1, cols=1, fields=1, size=32, levels=1)
    with pytest.raises(InputError, match="overwrite"):
        make_plate(target, rows=1, cols=1, fields=1, size=32, levels=1)
    make_plate(target, rows=1, cols=1, fields=1, size=32, levels=1, overwrite=True)
