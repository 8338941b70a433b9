"""Metrics against their reference implementations (scipy, scikit-image) on known inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage, stats
from skimage import filters
from skimage import metrics as skm

from omeloc.analysis import metrics as M
from omeloc.errors import InputError


def _pair(shape=(64, 72), seed=0, noise=0.3):
    rng = np.random.default_rng(seed)
    truth = ndimage.gaussian_filter(rng.random(shape), 3) * 1000 + 100
    pred = truth + rng.normal(0, noise * truth.std(), shape)
    return pred, truth


def test_pearson_matches_scipy():
    pred, truth = _pair()
    assert M.pearson_r(pred, truth) == pytest.approx(
        stats.pearsonr(pred.ravel(), truth.ravel())[0], abs=1e-12
    )
    mask = truth > np.median(truth)
    assert M.pearson_r(pred, truth, mask) == pytest.approx(
        stats.pearsonr(pred[mask], truth[mask])[0], abs=1e-12
    )
    assert M.pearson_r(truth, truth) == pytest.approx(1.0)
    assert M.pearson_r(-truth, truth) == pytest.approx(-1.0)
    assert math.isnan(M.pearson_r(np.ones((8, 8)), truth[:8, :8]))


def test_pearson_on_uint16():
    pred, truth = _pair()
    p, t = pred.astype(np.uint16), truth.astype(np.uint16)
    want = stats.pearsonr(p.ravel().astype(float), t.ravel().astype(float))[0]
    assert M.pearson_r(p, t) == pytest.approx(want, abs=1e-12)


@pytest.mark.parametrize("gaussian", [True, False])
def test_ssim_matches_skimage(gaussian):
    pred, truth = _pair(seed=1)
    rng = float(truth.max() - truth.min())
    want = skm.structural_similarity(truth, pred, data_range=rng, gaussian_weights=gaussian)
    want_sym = skm.structural_similarity(pred, truth, data_range=rng, gaussian_weights=gaussian)
    got = M.ssim(pred, truth, gaussian=gaussian)  # default data_range = truth range
    assert got == pytest.approx(want, abs=1e-6)
    assert got == pytest.approx(want_sym, abs=1e-6)
    assert M.ssim(truth, truth) == pytest.approx(1.0)


def test_ssim_map_and_mask():
    pred, truth = _pair(seed=2)
    rng = float(truth.max() - truth.min())
    _, full = skm.structural_similarity(
        truth, pred, data_range=rng, gaussian_weights=True, full=True
    )
    smap = M.ssim_map(pred, truth)
    assert smap.shape == (64 - 10, 72 - 10)
    np.testing.assert_allclose(smap, full[5:-5, 5:-5], atol=1e-6)
    mask = truth > np.median(truth)
    assert M.ssim(pred, truth, mask=mask) == pytest.approx(
        full[5:-5, 5:-5][mask[5:-5, 5:-5]].mean(), abs=1e-6
    )


def test_ssim_averages_planes():
    pred, truth = _pair(shape=(3, 40, 40), seed=3)
    rng = float(truth.max() - truth.min())
    want = np.mean(
        [
            skm.structural_similarity(truth[i], pred[i], data_range=rng, gaussian_weights=True)
            for i in range(3)
        ]
    )
    assert M.ssim(pred, truth) == pytest.approx(want, abs=1e-6)


def test_ssim_too_small():
    with pytest.raises(InputError, match="at least 11x11"):
        M.ssim(np.zeros((8, 8)), np.zeros((8, 8)))


def test_psnr_matches_skimage():
    pred, truth = _pair(seed=4)
    rng = float(truth.max() - truth.min())
    assert M.psnr(pred, truth) == pytest.approx(
        skm.peak_signal_noise_ratio(truth, pred, data_range=rng), abs=1e-9
    )
    assert M.psnr(pred, truth, data_range=65535) == pytest.approx(
        skm.peak_signal_noise_ratio(truth, pred, data_range=65535), abs=1e-9
    )
    assert M.psnr(truth, truth) == math.inf


@pytest.mark.parametrize("norm", ["euclidean", "min-max", "mean"])
def test_nrmse_matches_skimage(norm):
    pred, truth = _pair(seed=5)
    want = skm.normalized_root_mse(truth, pred, normalization=norm)
    assert M.nrmse(pred, truth, normalization=norm) == pytest.approx(want, rel=1e-12)


def test_mae():
    pred, truth = _pair(seed=6)
    assert M.mae(pred, truth) == pytest.approx(np.abs(pred - truth).mean())
    assert M.mae([1, 2, 3], [1, 2, 5]) == pytest.approx(2 / 3)


def test_shape_mismatch():
    with pytest.raises(InputError, match="same shape"):
        M.pearson_r(np.zeros((4, 4)), np.zeros((4, 5)))


def test_otsu_matches_skimage():
    rng = np.random.default_rng(7)
    img = np.concatenate([rng.normal(100, 10, 3000), rng.normal(400, 40, 1000)]).reshape(40, 100)
    assert M.otsu_threshold(img) == pytest.approx(filters.threshold_otsu(img), rel=1e-12)
    mask = M.foreground_mask(img)
    assert mask.sum() == pytest.approx(1000, abs=20)
    assert M.foreground_mask(img, 90).mean() == pytest.approx(0.10, abs=0.002)
    with pytest.raises(InputError):
        M.foreground_mask(img, "triangle")


def test_noise_estimate_and_ceiling():
    rng = np.random.default_rng(8)
    signal = ndimage.gaussian_filter(rng.random((256, 256)), 4)
    signal = (signal - signal.mean()) / signal.std()
    sigma = 0.5
    noisy = signal + rng.normal(0, sigma, signal.shape)
    var = M.estimate_noise_variance(noisy)
    assert var == pytest.approx(sigma**2, rel=0.05)
    # the ceiling is the r a perfect (noise-free) prediction reaches
    ceiling = M.noise_ceiling(noisy)
    assert ceiling == pytest.approx(M.pearson_r(signal, noisy), abs=0.01)
    assert M.noise_ceiling(noisy, noise_variance=sigma**2) == pytest.approx(
        1 / math.sqrt(1 + sigma**2 / (noisy.var() - sigma**2))
    )
    assert M.noise_ceiling(rng.normal(0, 1, (64, 64))) < 0.2  # pure noise: no ceiling to speak of


def test_field_metrics_keys_and_values():
    pred, truth = _pair(seed=9)
    out = M.field_metrics(pred, truth)
    assert tuple(out) == M.METRIC_NAMES
    assert out["pearson_r"] == pytest.approx(M.pearson_r(pred, truth))
    fg = truth > filters.threshold_otsu(truth)
    assert out["pearson_r_fg"] == pytest.approx(stats.pearsonr(pred[fg], truth[fg])[0], abs=1e-12)
    assert out["fg_fraction"] == pytest.approx(fg.mean())
    assert 0 < out["noise_ceiling"] <= 1
    assert out["pearson_r_rel"] == pytest.approx(out["pearson_r"] / out["noise_ceiling"])
    rows = [out, M.field_metrics(truth, truth)]
    s = M.summarize(rows, ("pearson_r", "psnr"))
    assert s["pearson_r"] == pytest.approx((out["pearson_r"] + 1) / 2)
    assert s["psnr"] == math.inf


def test_ssim_in_strips_equals_whole(monkeypatch):
    """SSIM is computed in row strips (bounded memory); strip seams must not change the map."""
    pred, truth = _pair(shape=(2, 50, 30), seed=10)
    whole = M.ssim_map(pred, truth)
    monkeypatch.setattr(M, "_STRIP_PIXELS", 100)  # 3 output rows per strip
    strips = M.ssim_map(pred, truth)
    np.testing.assert_allclose(strips, whole, rtol=0, atol=1e-12)
    rng = float(truth.max() - truth.min())
    want = np.mean(
        [
            skm.structural_similarity(truth[i], pred[i], data_range=rng, gaussian_weights=True)
            for i in range(2)
        ]
    )
    assert M.ssim(pred, truth) == pytest.approx(want, abs=1e-6)


@pytest.mark.parametrize("scale", [0.5, 2.0])
def test_noise_ceiling_on_real_image(shared_data, scale):
    """Real BPAE actin (native noise ~1.6 % of its s.d.) plus known noise: the ceiling estimated
    from the noisy image alone is the r that the clean image reaches against it."""
    import tifffile

    img = tifffile.imread(shared_data / "bpae" / "BPAE_actin.tif").astype(np.float64)
    noisy = img + np.random.default_rng(0).normal(0, scale * img.std(), img.shape)
    assert M.noise_ceiling(img) > 0.99
    assert M.noise_ceiling(noisy) == pytest.approx(M.pearson_r(img, noisy), abs=0.01)


def test_gaussian_blur_matches_scipy_and_structure_r_ignores_the_footprint():
    from scipy import ndimage

    rng = np.random.default_rng(0)
    x = rng.random((40, 52))
    for sigma in (1.0, 2.5, 4.0):
        np.testing.assert_allclose(
            M.gaussian_blur(x, sigma),
            ndimage.gaussian_filter(x, sigma, mode="reflect", truncate=3),
            atol=1e-12,
        )
    yy, xx = np.mgrid[:96, :96]
    footprint = np.exp(-((yy - 48) ** 2 + (xx - 48) ** 2) / (2 * 20.0**2))
    fibres = (np.sin(xx / 1.5) > 0.9) * footprint  # fine structure inside the cell
    truth = 100 * footprint + 40 * fibres
    blurred = ndimage.gaussian_filter(
        truth, 6
    )  # what a model that only sees the cell would predict
    assert M.pearson_r(blurred, truth) > 0.9
    assert abs(M.structure_r(blurred, truth)) < 0.3
    assert M.structure_r(truth + rng.normal(0, 1, truth.shape), truth) > 0.9
