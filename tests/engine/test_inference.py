"""predict_array: exactness with 2*x, seams with a real conv net, laziness, model handling."""

from __future__ import annotations

import pickle
import threading

import dask
import dask.array as da
import numpy as np
import pytest
import torch
from torch import nn

from omeloc.engine.inference import (
    InMemoryModel,
    ModelRef,
    clear_model_cache,
    fold_batchnorm,
    get_model,
    predict_array,
    resolve_device,
    resolve_precision,
)
from omeloc.engine.tiling import BLEND_MODES
from omeloc.errors import InputError
from omeloc.learn.models import UNet


class Doubler(nn.Module):
    """2 * x, with a size multiple so the padding path runs too."""

    multiple = 16

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        assert x.shape[-1] % 16 == 0 and x.shape[-2] % 16 == 0
        return 2 * x


def _rand(shape, chunks, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return da.from_array((rng.random(shape) * 1000).astype(dtype), chunks=chunks)


CASES = [
    # shape (..., C, Y, X), chunks, tile, overlap
    ((1, 40, 70), (1, 32, 32), 16, 4),
    ((1, 40, 70), (1, 40, 70), 32, 8),
    ((1, 20, 30), (1, 20, 30), 64, 16),  # image smaller than the tile
    ((3, 128, 96), (2, 64, 64), (48, 32), (16, 0)),  # several channels per chunk
    ((2, 3, 1, 70, 40), (1, 2, 1, 32, 32), 24, 6),  # (t, z, c, y, x)
    ((1, 33, 47), (1, 11, 13), 40, 12),  # chunks smaller than the halo
]


@pytest.mark.parametrize("blend", BLEND_MODES)
@pytest.mark.parametrize("case", CASES, ids=[str(c[0]) for c in CASES])
def test_times_two_is_exact(case, blend):
    shape, chunks, tile, overlap = case
    x = _rand(shape, chunks)
    y = predict_array(
        lambda t: 2 * t,
        x,
        tile=tile,
        overlap=overlap,
        blend=blend,
        batch_size=3,
        device="cpu",
        precision="fp32",
        out_channels=shape[-3],
    )
    assert y.dtype == np.float32 and y.shape == x.shape
    assert y.chunks[:-3] == x.chunks[:-3] and y.chunks[-2:] == x.chunks[-2:]
    assert y.chunks[-3] == (shape[-3],)
    np.testing.assert_array_equal(y.compute(), 2 * x.compute())


@pytest.mark.parametrize("blend", ["cosine", "gaussian"])
def test_times_two_exact_with_padding_uint16_and_numpy_input(blend):
    x = (np.arange(50 * 37, dtype=np.uint16) * 7).reshape(1, 50, 37)
    model = Doubler()
    y = predict_array(
        model, x, tile=24, overlap=8, blend=blend, device="cpu", precision="fp32", out_channels=1
    )
    np.testing.assert_array_equal(y.compute(), 2 * x.astype(np.float32))


class SmallNet(nn.Module):
    """Three 3x3 convolutions: receptive-field radius 3."""

    def __init__(self, cin=2, cout=1) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(
            nn.Conv2d(cin, 8, 3, padding=1),
            nn.Tanh(),
            nn.Conv2d(8, 8, 3, padding=1),
            nn.Tanh(),
            nn.Conv2d(8, cout, 3, padding=1),
        )

    def forward(self, x):
        return self.net(x)


def _whole(model, x, dtype=torch.float32):
    with torch.no_grad():
        return model.to(dtype)(torch.from_numpy(x).to(dtype)[None])[0].float().numpy()


def test_block_halo_removes_chunk_seams_exactly():
    """One tile per block and a halo >= receptive field: tiled == whole image (fp32 rounding)."""
    net = SmallNet().eval()
    img = np.random.default_rng(1).random((2, 128, 96)).astype(np.float32)
    # tile = chunk + 2 * overlap: blocks stay separate, each runs as a single tile
    tiled = predict_array(
        net,
        da.from_array(img, chunks=(2, 64, 48)),
        tile=(72, 56),
        overlap=4,
        device="cpu",
        precision="fp32",
        out_channels=1,
    ).compute()
    np.testing.assert_allclose(tiled, _whole(net, img), rtol=0, atol=1e-5)


def test_unet_tiles_have_no_seams():
    """Blended tiles inside blocks. Stated tolerance (cosine blend, overlap 32 px for a
    depth-2 U-Net): max abs error < 5 % and RMSE < 0.5 % of the output's std (measured 2.8 %
    and 0.33 %); without overlap the max error is ~9 std."""
    torch.manual_seed(0)
    net = UNet(in_channels=1, depth=2, base_channels=4).eval()
    img = np.random.default_rng(2).random((1, 128, 96)).astype(np.float32)
    whole = _whole(net, img)
    std = whole.std()

    def err(overlap):
        tiled = predict_array(
            net,
            da.from_array(img, chunks=(1, 64, 48)),
            tile=64,
            overlap=overlap,
            device="cpu",
            precision="fp32",
            out_channels=1,
        ).compute()
        return np.abs(tiled - whole).max() / std, np.sqrt(((tiled - whole) ** 2).mean()) / std

    (max_err, rmse), (max_without, _) = err(32), err(0)
    assert max_err < 0.05 and rmse < 0.005
    assert max_without > 20 * max_err  # the overlap is what removes the seams


def test_float64_reference():
    net = SmallNet(cin=1, cout=2).eval()
    img = np.random.default_rng(3).random((1, 70, 40))
    tiled = predict_array(
        net,
        da.from_array(img, chunks=(1, 35, 20)),
        tile=(48, 32),
        overlap=(8, 6),
        device="cpu",
        precision="fp32",
    ).compute()
    ref = _whole(SmallNet(cin=1, cout=2).eval(), img, dtype=torch.float64)
    assert tiled.shape == (2, 70, 40) and tiled.dtype == np.float32
    np.testing.assert_allclose(tiled, ref, rtol=1e-4, atol=1e-5)


def test_bf16_close_to_fp32():
    torch.manual_seed(0)
    net = UNet(depth=2, base_channels=4).eval()
    x = da.from_array(np.random.default_rng(4).random((1, 64, 64)).astype(np.float32), chunks=32)
    fp32 = predict_array(net, x, tile=64, overlap=16, device="cpu", precision="fp32").compute()
    bf16 = predict_array(net, x, tile=64, overlap=16, device="cpu", precision="bf16").compute()
    assert np.abs(bf16 - fp32).max() < 0.05 * np.abs(fp32).max() + 1e-3
    assert np.corrcoef(bf16.ravel(), fp32.ravel())[0, 1] > 0.95


class Counting(nn.Module):
    out_channels = 1

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 1)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.conv(x)


def test_graph_is_lazy():
    model = Counting()
    y = predict_array(model, _rand((1, 64, 64), (1, 32, 32)), tile=32, overlap=8, device="cpu")
    assert model.calls == 0
    # tasks run on a copy: the caller's module is neither called nor changed
    y.compute()
    assert model.calls == 0 and model.training


def test_out_channels_probed_once_when_unknown():
    calls = []

    def two_channels(t):
        calls.append(t.shape)
        return torch.cat([t, -t], dim=1)

    y = predict_array(
        two_channels,
        _rand((1, 40, 40), (1, 20, 20)),
        tile=32,
        overlap=4,
        device="cpu",
        precision="fp32",
    )
    assert len(calls) == 1 and y.shape == (2, 40, 40)
    out = y.compute()
    np.testing.assert_array_equal(out[1], -out[0])


class Heavy(nn.Module):
    """A cheap forward with ~1 MB of (unused) weights, to see if the graph carries them."""

    out_channels = 1

    def __init__(self) -> None:
        super().__init__()
        self.ballast = nn.Parameter(torch.zeros(256 * 1024))

    def forward(self, x):
        return x + self.ballast[0]


def _graph_bytes(arr):
    return len(pickle.dumps(dict(arr.__dask_graph__())))


def test_module_enters_graph_once():
    model = Heavy()
    small = predict_array(model, _rand((1, 64, 64), (1, 32, 32)), tile=32, overlap=4, device="cpu")
    big = predict_array(model, _rand((1, 256, 256), (1, 32, 32)), tile=32, overlap=4, device="cpu")
    model_bytes = len(pickle.dumps(model))
    assert model_bytes > 1_000_000
    assert _graph_bytes(small) < 1.5 * model_bytes  # the model once, not 4 times
    assert _graph_bytes(big) - _graph_bytes(small) < 0.5 * model_bytes  # 64 vs 4 blocks
    np.testing.assert_array_equal(big.compute(), big.compute())


class CountingRef:
    """A ModelRef: loads a fresh network and counts the loads."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.loads = 0
        self._lock = threading.Lock()

    def load(self, device):
        with self._lock:
            self.loads += 1
        return SmallNet(cin=1, cout=1).to(device)


def test_model_ref_loaded_once_across_blocks():
    clear_model_cache()
    ref = CountingRef("test-counting-ref")
    assert isinstance(ref, ModelRef)
    x = _rand((3, 1, 96, 96), (1, 1, 32, 32))
    y = predict_array(ref, x, tile=32, overlap=8, device="cpu", precision="fp32", out_channels=1)
    with dask.config.set(scheduler="threads", num_workers=4):
        out = y.compute()
    assert ref.loads == 1 and out.shape == (3, 1, 96, 96)
    assert get_model(ref, "cpu") is get_model(ref, torch.device("cpu")) and ref.loads == 1
    clear_model_cache()


def test_in_memory_model_copies_and_folds_batchnorm():
    torch.manual_seed(0)
    net = UNet(depth=2, base_channels=4).eval()
    ref = InMemoryModel(net)
    loaded = get_model(ref, "cpu")
    assert loaded is not net and not any(isinstance(m, nn.BatchNorm2d) for m in loaded.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net(x), rtol=1e-4, atol=1e-5)
    seq = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2)).eval()
    seq[1].running_mean.fill_(0.3)
    seq[1].running_var.fill_(2.0)
    with torch.no_grad():
        before = seq(x)
        fold_batchnorm(seq)
        torch.testing.assert_close(seq(x), before, rtol=1e-5, atol=1e-6)
    assert isinstance(seq[1], nn.Identity)
    folded = fold_batchnorm(UNet(depth=1, base_channels=2).train())  # training: left alone
    assert any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    clear_model_cache()


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"tile": 32, "overlap": 32}, "overlap < tile"),
        ({"tile": 32, "overlap": 40}, "overlap < tile"),
        ({"blend": "hamming"}, "Unknown blend"),
        ({"precision": "fp8"}, "Unknown precision"),
        ({"batch_size": 0}, "batch_size"),
        ({"device": "tpu"}, "device"),
        ({"out_channels": 0}, "out_channels"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(InputError, match=match):
        predict_array(lambda t: t, _rand((1, 32, 32), (1, 32, 32)), **kwargs)


def test_bad_inputs_and_models():
    with pytest.raises(InputError, match="channel axis"):
        predict_array(lambda t: t, np.zeros((32, 32)), out_channels=1)
    with pytest.raises(InputError, match="model"):
        predict_array(42, np.zeros((1, 32, 32)), out_channels=1)
    shrink = predict_array(
        lambda t: t[..., :-1],
        np.zeros((1, 32, 32), np.float32),
        tile=32,
        overlap=4,
        device="cpu",
        out_channels=1,
    )
    with pytest.raises(InputError, match="N x C x H x W"):
        shrink.compute()


def test_resolve_device_and_precision():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in {"cpu", "cuda", "mps"}
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="not available"):
            resolve_device("cuda")
    with pytest.raises(InputError):
        resolve_device("gpu9000")
    assert resolve_precision("auto", torch.device("cpu")) in {"bf16", "fp32"}
    assert resolve_precision("fp16", torch.device("cpu")) == "fp16"


def _interior_error(tiled, whole):
    return float(np.abs(tiled - whole).max() / whole.std())


@pytest.mark.parametrize("blend", BLEND_MODES)
def test_blended_tiles_equal_whole_image_when_trim_covers_receptive_field(blend):
    """Issue 16 seam test: 3 conv layers (receptive field 3 px), tile 128, overlap 24 (default
    trim 6): max error <= 1e-3 of the output std (5.4 % before the trimmed margins)."""
    net = SmallNet(cin=1, cout=1).eval()
    img = np.random.default_rng(5).random((1, 300, 300)).astype(np.float32)
    whole = _whole(net, img)
    tiled = predict_array(
        net, img, tile=128, overlap=24, blend=blend, device="cpu", precision="fp32", out_channels=1
    ).compute()
    assert _interior_error(tiled, whole) <= 1e-3
    # without the margin the seams show (the margin is what makes it exact)
    if blend != "constant":
        untrimmed = predict_array(
            net,
            img,
            tile=128,
            overlap=24,
            blend=blend,
            device="cpu",
            precision="fp32",
            out_channels=1,
            trim=0,
        ).compute()
        assert _interior_error(untrimmed, whole) > 1e-3


def test_trim_is_validated():
    with pytest.raises(InputError, match="trim"):
        predict_array(
            lambda t: t, _rand((1, 32, 32), (1, 32, 32)), tile=32, overlap=8, trim=5, out_channels=1
        )
    with pytest.raises(InputError, match="trim"):
        predict_array(
            lambda t: t,
            _rand((1, 32, 32), (1, 32, 32)),
            tile=32,
            overlap=8,
            trim=-1,
            out_channels=1,
        )


class InstanceNormNet(nn.Module):
    """Downsamples by 8, then normalises per instance: fails on inputs of 8 x 8 pixels."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1),
            nn.AvgPool2d(8),
            nn.InstanceNorm2d(4),
            nn.Upsample(scale_factor=8),
            nn.Conv2d(4, 3, 1),
        )

    def forward(self, x):
        return self.net(x)


def test_out_channels_probed_at_tile_size_for_instance_norm_models():
    net = InstanceNormNet().eval()
    with pytest.raises(ValueError, match="spatial element"):
        net(torch.zeros(1, 1, 8, 8))
    y = predict_array(
        net, _rand((1, 96, 96), (1, 48, 48)), tile=64, overlap=16, device="cpu", precision="fp32"
    )
    assert y.shape == (3, 96, 96)
    assert np.isfinite(y.compute()).all()


def test_empty_blocks_are_skipped_filled_and_counted():
    from omeloc.engine.inference import skipped_blocks

    img = np.zeros((1, 128, 128), np.float32)
    img[:, 80:100, 80:100] = 1.0  # signal in block (1, 1) only, beyond the 8 px halos of the others
    model = Counting()
    skipped_blocks(reset=True)
    y = predict_array(
        lambda t: 2 * t + 5,
        da.from_array(img, chunks=(1, 64, 64)),
        tile=64,
        overlap=8,
        device="cpu",
        precision="fp32",
        out_channels=1,
        skip_below=0.5,
        fill=-1.0,
    ).compute()
    assert skipped_blocks() == 3
    assert skipped_blocks(reset=True) == 3 and skipped_blocks() == 0
    np.testing.assert_array_equal(y[:, :64, :], -1.0)
    np.testing.assert_array_equal(y[:, 64:, :64], -1.0)
    np.testing.assert_array_equal(y[:, 64:, 64:], 2 * img[:, 64:, 64:] + 5)
    # nothing below the threshold: the model runs everywhere, nothing is counted
    full = predict_array(
        model,
        da.from_array(img + 1, chunks=(1, 64, 64)),
        tile=64,
        overlap=8,
        device="cpu",
        skip_below=0.5,
    ).compute()
    assert skipped_blocks() == 0 and full.shape == (1, 128, 128)
    with pytest.raises(InputError, match="skip_below"):
        predict_array(model, img, skip_below=float("nan"))


def test_batch_size_auto():
    """``batch_size="auto"`` (the default): 4 tiles off CUDA; on CUDA from the free memory and one
    tile's measured footprint (the arithmetic is checked here; the measurement needs a GPU)."""
    from omeloc.config import TilingConfig
    from omeloc.engine.inference import CPU_BATCH, batch_from_memory, resolve_batch_size

    assert TilingConfig().batch_size == "auto"
    cpu = torch.device("cpu")
    assert resolve_batch_size("auto", lambda x: x, cpu, (64, 64), 1, "fp32") == CPU_BATCH
    assert resolve_batch_size(3, lambda x: x, cpu, (64, 64), 1, "fp32") == 3
    assert batch_from_memory(8_000_000_000, 100_000_000) == 40  # half of 8 GB at 100 MB per tile
    assert batch_from_memory(8_000_000_000, 1) == 64 and batch_from_memory(10, 10**9) == 1
    x = np.random.default_rng(0).random((1, 100, 90)).astype(np.float32)
    model = nn.Conv2d(1, 1, 3, padding=1)
    auto = predict_array(model, x, tile=32, overlap=8, precision="fp32").compute()
    one = predict_array(model, x, tile=32, overlap=8, precision="fp32", batch_size=1).compute()
    np.testing.assert_allclose(auto, one, rtol=0, atol=1e-6)
    with pytest.raises(InputError, match="'auto'"):
        predict_array(model, x, batch_size="many")
    with pytest.raises(InputError, match="'auto'"):
        TilingConfig(batch_size=0).validate()


def test_cpu_instance_norms_run_as_group_norms_with_the_same_output():
    """On CPU the prepared model computes InstanceNorm2d with the channels_last group-norm kernel
    (the instance-norm kernel copies channels_last inputs back and forth); the output is the same
    to float rounding, and norms that use running statistics are left alone."""
    from omeloc.engine.cache import InstanceNormAsGroupNorm

    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1),
        nn.InstanceNorm2d(6, affine=True),
        nn.LeakyReLU(),
        nn.Conv2d(6, 4, 3, padding=1),
        nn.InstanceNorm2d(4),
        nn.Conv2d(4, 2, 1),
        nn.InstanceNorm2d(2, track_running_stats=True),
    ).eval()
    with torch.no_grad():
        net[1].weight.uniform_(0.5, 2.0)
        net[1].bias.uniform_(-1.0, 1.0)
    loaded = get_model(InMemoryModel(net), "cpu")
    kinds = [type(m) for m in loaded.modules()]
    assert kinds.count(InstanceNormAsGroupNorm) == 2 and kinds.count(nn.InstanceNorm2d) == 1
    # the caller's net is unchanged
    assert sum(isinstance(m, nn.InstanceNorm2d) for m in net.modules()) == 3
    x = torch.rand(3, 1, 40, 56)
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(x.contiguous(memory_format=torch.channels_last)), net(x), rtol=1e-4, atol=1e-4
        )
    y = predict_array(
        net,
        x[:, 0:1].numpy()[0],
        tile=32,
        overlap=8,
        device="cpu",
        precision="fp32",
        blend="constant",
        trim=0,
    ).compute()
    assert y.shape == (2, 40, 56) and np.isfinite(y).all()
    clear_model_cache()


class Normalized:
    """A picklable normalize hook: (x - 100) / 10."""

    def __call__(self, raw):
        return ((raw.astype(np.float32) - 100) / 10).astype(np.float32)


class Shifted:
    """A picklable finish hook: y + 1."""

    def __call__(self, y):
        return y + 1


def test_region_inferer_is_the_entry_predict_array_calls_with_hooks_around_it():
    """One engine entry: predict_array's blocks equal RegionInferer's output on the same region,
    and the normalize / finish hooks run before the tiles and after the blend."""
    from omeloc import RegionInferer, TileSettings

    raw = (np.random.default_rng(3).random((1, 70, 90)) * 1000).astype(np.uint16)
    ref = InMemoryModel(Doubler())
    tiles = TileSettings.of(32, 8, "cosine")
    plain = RegionInferer(ref, tiles, "cpu", "fp32", out_channels=1)
    np.testing.assert_array_equal(
        plain(raw),
        predict_array(
            ref,
            raw,
            tile=32,
            overlap=8,
            blend="cosine",
            device="cpu",
            precision="fp32",
            out_channels=1,
        ).compute(),
    )
    hooked = pickle.loads(
        pickle.dumps(
            RegionInferer(ref, tiles, "cpu", "fp32", 1, normalize=Normalized(), finish=Shifted())
        )
    )
    core = (slice(8, 60), slice(0, 90))
    expected = 2 * Normalized()(raw) + 1
    np.testing.assert_allclose(hooked(raw, core), expected[:, 8:60], rtol=1e-6, atol=1e-5)


class MinTile(nn.Module):
    """2 * x; refuses tiles below 48 px (declared as ``min_tile``) or off its step of 8."""

    min_tile = 48
    tile_step = 8

    def forward(self, x):
        assert min(x.shape[-2:]) >= 48 and x.shape[-1] % 8 == 0 and x.shape[-2] % 8 == 0
        return 2 * x


def test_tiles_are_padded_to_the_models_declared_minimum_and_step():
    from omeloc.engine.forward import TileRules, tile_rules

    assert tile_rules(MinTile()) == TileRules(step=8, min_size=48)
    assert tile_rules(Doubler()).step == 16 and tile_rules(lambda x: x) == TileRules()
    x = np.random.default_rng(0).random((1, 21, 30)).astype(np.float32)
    y = predict_array(
        MinTile(), x, tile=64, overlap=8, device="cpu", precision="fp32", out_channels=1
    ).compute()
    np.testing.assert_allclose(y, 2 * x, rtol=1e-6)
