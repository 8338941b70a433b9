"""Plates of many images: metadata reads per image bounded by a constant, graph size linear,
regions.

Reduced form of ``benchmarks/bench_plate_scale.py`` (384 images of 32² instead of 3,456):
counts, not times.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import tree_digest

import omeloc
from omeloc.jobs.predict import lazy_prediction, plan_prediction
from omeloc.jobs.regions import region_chunks
from omeloc.testing.storecount import count_store_reads

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def plates(tmp_path_factory):
    root = tmp_path_factory.mktemp("scale")
    small = omeloc.make_plate(
        root / "small.zarr",
        rows=2,
        cols=3,
        fields=4,
        size=32,
        chunks=None,
        levels=1,
        channels=("actin", "WAVE2"),
    )
    big = omeloc.make_plate(
        root / "big.zarr",
        rows=16,
        cols=24,
        fields=1,
        size=32,
        chunks=None,
        levels=1,
        channels=("actin", "WAVE2"),
    )
    seed = omeloc.make_plate(
        root / "seed.zarr",
        rows=1,
        cols=2,
        fields=1,
        size=64,
        chunks=None,
        levels=1,
        channels=("actin", "WAVE2"),
    )
    ckpt = omeloc.train(
        seed,
        "actin",
        "WAVE2",
        out=root / "model",
        steps=1,
        crop=32,
        batch_size=2,
        depth=2,
        base_channels=4,
        val_wells=["A2"],
        progress=False,
    ).checkpoint
    return {24: small, 384: big}, ckpt


def _reads_per_image(n, fn, *args, **kwargs):
    """Metadata documents read by ``fn(*args, **kwargs)``, per image of an ``n``-image plate."""
    with count_store_reads() as reads:
        fn(*args, **kwargs)
    return reads.metadata / n


def test_open_and_dry_run_read_metadata_a_bounded_number_of_times_per_image(plates):
    paths, ckpt = plates
    for n, path in paths.items():
        before = tree_digest(path)
        # a well, an image, its level-0 array: 3 documents per image at most, plus the root (was
        # ~10)
        assert _reads_per_image(n, omeloc.open_plate, path) <= 3.1
        assert (
            _reads_per_image(n, omeloc.predict, path, ckpt, dry_run=True, progress=False) <= 5
        )  # was 24
        assert tree_digest(path) == before


def test_prediction_graph_is_linear_in_images_two_layers_each(plates):
    paths, ckpt = plates
    sizes = {}
    for n, path in paths.items():
        job = plan_prediction(path, ckpt)
        with count_store_reads() as reads:
            arrays = [lazy_prediction(job, img) for img in job.plate.images]
        assert reads.metadata == 0  # every array was opened once, by open_plate
        assert all(
            len(a.dask.layers) == 2 for a in arrays
        )  # read+normalize, inference: one region per field
        sizes[n] = sum(len(a.dask) for a in arrays) / n
    assert sizes[24] == sizes[384]


def test_predict_reads_per_image_do_not_grow_with_the_plate(plates, tmp_path):
    import shutil

    paths, ckpt = plates
    per_image = {}
    for n, path in paths.items():
        copy = tmp_path / f"{n}.zarr"
        shutil.copytree(path, copy)
        per_image[n] = _reads_per_image(n, omeloc.predict, copy, ckpt, wells=["A1"], progress=False)
        out = omeloc.open_plate(copy)
        assert out.channel_names[-1] == "WAVE2 (virtual)"
        assert np.asarray(out.images[0].channel("WAVE2 (virtual)")).std() > 0
    assert per_image[384] <= per_image[24] * 1.1 + 1
    assert per_image[384] <= 30


def _traced_bytes(fn):
    """``fn()`` and the bytes it left allocated (tracemalloc)."""
    import gc
    import tracemalloc

    gc.collect()
    tracemalloc.start()
    try:
        out = fn()
        gc.collect()
        return out, tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()


def test_what_a_plate_keeps_per_image_stays_small(plates):
    """Peak memory of a predict grows with what it keeps per image: the opened view, the lazy
    prediction."""
    import json

    paths, ckpt = plates
    path, n = paths[384], 384
    omeloc.open_plate(path)  # one-off costs (imports, zarr's caches) out of the count
    plate, view = _traced_bytes(lambda: omeloc.open_plate(path))
    assert (
        view / n < 7000
    )  # was ~10,100 bytes, ~5,600 of them the decoded attributes of every image
    job = plan_prediction(plate, ckpt)
    lazy_prediction(job, plate.images[0])  # the region settings, once per run
    arrays, graph = _traced_bytes(lambda: [lazy_prediction(job, img) for img in plate.images])
    assert graph / n < 5000  # was ~10,800 bytes with two map_blocks layers per image
    assert all(len(a.dask.layers) == 2 for a in arrays)
    img = plate.images[5]
    stored = json.loads((path / img.path / "zarr.json").read_text())["attributes"]
    assert (
        img.attrs == stored and img.attrs is not img.attrs
    )  # as stored; a caller's change stays its own
    assert img.omero["channels"][0]["label"] == "actin" and img.shape == (2, 32, 32)


def test_region_chunks_are_whole_planes_or_multiples_of_the_write_block():
    assert region_chunks(512, 256) == (512,)
    assert region_chunks(4096, 256) == (4096,)
    assert region_chunks(5000, 256, side=1024) == (1024, 1024, 1024, 1024, 904)
    assert region_chunks(300, 512, side=256) == (300,)
    assert all(c % 1000 == 0 for c in region_chunks(9999, 1000, side=4096)[:-1])


def test_split_regions_read_a_halo_and_match_whole_field_regions(tmp_path):
    """A field cut into regions (halo only where they split) predicts what one region does, up to
    tile seams."""
    plate = omeloc.make_plate(
        tmp_path / "p.zarr",
        rows=1,
        cols=1,
        fields=1,
        size=96,
        chunks=(32, 32),
        levels=1,
        channels=("actin", "WAVE2"),
    )
    seed = omeloc.make_plate(
        tmp_path / "seed.zarr",
        rows=1,
        cols=2,
        fields=1,
        size=64,
        chunks=None,
        levels=1,
        channels=("actin", "WAVE2"),
    )
    ckpt = omeloc.train(
        seed,
        "actin",
        "WAVE2",
        out=tmp_path / "model",
        steps=2,
        crop=32,
        batch_size=2,
        depth=2,
        base_channels=4,
        val_wells=["A2"],
        progress=False,
    ).checkpoint
    whole_job = plan_prediction(
        plate, ckpt, tiling=omeloc.TilingConfig(tile=32, overlap=8, precision="fp32")
    )
    img = whole_job.plate.images[0]
    whole = lazy_prediction(whole_job, img)
    assert whole.chunks == ((96,), (96,))
    split_job = plan_prediction(whole_job.plate, ckpt, tiling=whole_job.tiling)
    object.__setattr__(split_job, "region_side", 64)
    split = lazy_prediction(split_job, img)
    assert split.chunks == ((64, 32), (64, 32))  # multiples of the 32-px write chunk
    a, b = np.asarray(whole), np.asarray(split)
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.99
    # the engine's own blocks (halo of `overlap` where blocks meet, none at the border) give the
    # same pixels
    stain = split_job.stain
    src = img.level(0)[[img.channel_index("actin")]].rechunk((1, 64, 64))
    engine = np.asarray(stain.denormalize(stain.predict(stain.normalize(src), split_job.tiling)))[0]
    assert np.allclose(b, engine, rtol=1e-5, atol=1e-5 * a.std())
