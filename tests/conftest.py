"""Shared test settings: deterministic, single-threaded torch; a few plate builders."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")

try:  # torch is a hard dependency, but keep collection working for pure-numpy tests
    import torch

    torch.set_num_threads(1)
except ImportError:  # pragma: no cover
    torch = None

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

#: The modules whose tests take longest (``--durations``, issue 25), slowest first.  They run
#: first, so that under pytest-xdist (``-n 2``) no worker is left with one of them alone at the
#: end while the other has nothing to do.  Every other module keeps its place after them.
SLOW_MODULES = (
    "analysis/test_science.py",
    "writeback/test_races_kills_and_full_disks.py",
    "jobs/test_cluster.py",
    "ngff/test_object_store_failures.py",
    "cli/test_examples.py",
    "ngff/test_object_store.py",
    "jobs/test_predict.py",
    "cli/test_bad_input.py",
    "writeback/test_concurrency.py",
    "ngff/test_scale.py",
    "writeback/test_rechunk_interrupted.py",
)


def pytest_collection_modifyitems(config, items):
    """The modules of :data:`SLOW_MODULES` first, in that order (a stable sort: the order of the
    tests within a module, and of the other modules, is kept)."""
    here = Path(__file__).resolve().parent
    rank = {here / name: i for i, name in enumerate(SLOW_MODULES)}
    items.sort(key=lambda item: rank.get(Path(item.path).resolve(), len(rank)))


def tree_digest(root: str | os.PathLike) -> dict[str, str]:
    """sha256 of every file below ``root`` (relative path → digest)."""
    root = Path(root)
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def assert_same_pixels(a: str | os.PathLike, b: str | os.PathLike) -> None:
    """Two plates (or images) hold the same channels, images and pixels at every level."""
    import omeloc

    pa, pb = omeloc.open_plate(a), omeloc.open_plate(b)
    assert pa.channel_names == pb.channel_names
    assert [i.path for i in pa.images] == [i.path for i in pb.images]
    for ia, ib in zip(pa.images, pb.images):
        for level in range(len(ia.level_paths)):
            np.testing.assert_array_equal(ia.level(level).compute(), ib.level(level).compute())


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real images in ../shared/data (tests skip when the folder is missing)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is missing (see shared/data/README.md)")
    return SHARED_DATA


def random_plate_images(
    rows="AB", cols=("1", "2"), fields=("0", "1"), shape=(2, 96, 80), seed=0, dtype="uint16"
):
    rng = np.random.default_rng(seed)
    return {
        (r, c, f): rng.integers(0, 4000, shape).astype(dtype)
        for r in rows
        for c in cols
        for f in fields
    }


def tiny_trained_plate(
    root: Path, *, fields: int = 1, size: int = 96, chunk: int = 48, reference: bool = True
):
    """A 1×2-well plate (actin, WAVE2), a tiny U-Net trained for 2 steps, and (``reference``) a copy
    of the plate with that model's prediction written by an uninterrupted run.

    Returns ``(plate, checkpoint, reference_plate or None)``.
    """
    import shutil

    import omeloc

    plate = omeloc.make_plate(
        root / "plate.zarr",
        rows=1,
        cols=2,
        fields=fields,
        size=size,
        chunks=(chunk, chunk),
        levels=2,
        channels=("actin", "WAVE2"),
    )
    res = omeloc.train(
        plate,
        "actin",
        "WAVE2",
        out=root / "model",
        steps=2,
        crop=32,
        batch_size=2,
        depth=2,
        base_channels=4,
        val_wells=["A2"],
        progress=False,
    )
    ref = None
    if reference:
        ref = root / "ref.zarr"
        shutil.copytree(plate, ref)
        omeloc.predict(ref, res.checkpoint, progress=False)
    return plate, Path(res.checkpoint), ref


@pytest.fixture(scope="session")
def tiny_trained(tmp_path_factory):
    """:func:`tiny_trained_plate`, built once per test session and set of options, shared by the
    modules that need a trained model only to have one: ``tiny_trained(size=64, ...)`` returns
    ``(plate, checkpoint, reference_plate or None)``.  Shared and read-only: a test copies the
    plate (or the reference) before it writes into it.
    """
    built: dict[tuple, tuple] = {}

    def get(**options):
        key = tuple(sorted(options.items()))
        if key not in built:
            built[key] = tiny_trained_plate(tmp_path_factory.mktemp("tiny-trained"), **options)
        return built[key]

    return get


@pytest.fixture
def short_scheduler_timeout(monkeypatch):
    """A scheduler that cannot be reached is given up on after 2 s instead of the default 10 s
    (the same connect call and error; tests of an unreachable scheduler wait less)."""
    import omeloc.compute

    connect = omeloc.compute.connect
    monkeypatch.setattr(
        omeloc.compute, "connect", lambda address, timeout=10.0: connect(address, min(timeout, 2.0))
    )
