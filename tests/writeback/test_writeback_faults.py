"""Crash safety of add_channel: a real writer process is SIGKILLed at each phase.

The next call must roll the run back (the tree byte for byte as before) or finish it, and
a rerun must give exactly what an uninterrupted run gives.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import random_plate_images, tree_digest

import omeloc
from omeloc.ngff.writer import write_plate
from omeloc.writeback.journal import JOURNAL_KEY
from omeloc.writeback.protocol import add_channel, recover

_META = {"zarr.json", ".zattrs", ".zarray", ".zgroup", ".zmetadata"}

from writeback_writer import WRITER_PATH, make_data  # noqa: E402


def _run_killed(
    path: Path, phase: str, tmp_path: Path, seed: int = 1, overwrite: bool = False
) -> None:
    script = WRITER_PATH
    env = dict(os.environ, OMELOC_TEST_KILL_AT=phase, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, str(script), str(path), str(seed), "1" if overwrite else "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]


def _chunks(digest: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in digest.items() if k.rsplit("/", 1)[-1] not in _META}


def _semantic(path: Path) -> dict:
    """Pixels of every level and the metadata, minus the per-run fields (run id, time)."""
    out = {}
    for img in omeloc.open_plate(path).images:
        prov = {
            k: v
            for k, v in img.attrs["omeloc"]["channels"]["pred"].items()
            if k not in ("run_id", "created")
        }
        out[img.path] = (
            img.omero,
            prov,
            [img.level(i).compute().tobytes() for i in range(len(img.level_paths))],
        )
    return out


@pytest.fixture(scope="module")
def templates(tmp_path_factory):
    root = tmp_path_factory.mktemp("fault_templates")
    out = {}
    for version in ("0.4", "0.5"):
        plate = write_plate(
            root / f"t{version}.zarr",
            random_plate_images("A", ("1", "2"), ("0", "1"), (2, 64, 48)),
            channel_names=["actin", "WAVE2"],
            ngff_version=version,
            chunks=(32, 32),
            levels=3,
        )
        ref = root / f"ref{version}.zarr"
        shutil.copytree(plate, ref)
        add_channel(ref, "pred", make_data(ref, 1), provenance={"model": "m1"})
        out[version] = (plate, ref)
    return out


PHASES = [
    ("0.5", p)
    for p in (
        "journal",
        "resized",
        "level0_mid",
        "level0_written",
        "level1_written",
        "metadata",
        "complete",
    )
]
PHASES += [("0.4", p) for p in ("level0_mid", "metadata", "complete")]


@pytest.mark.parametrize("version,phase", PHASES)
def test_killed_writer_is_rolled_back_or_finished(templates, tmp_path, version, phase):
    template, reference = templates[version]
    path = tmp_path / "p.zarr"
    shutil.copytree(template, path)
    original = tree_digest(path)
    _run_killed(path, phase, tmp_path)
    killed = tree_digest(path)
    assert all(killed[k] == v for k, v in _chunks(original).items()), "an original chunk changed"
    root_doc = path / ("zarr.json" if version == "0.5" else ".zattrs")
    assert JOURNAL_KEY in json.dumps(json.loads(root_doc.read_text()))
    if phase == "level0_mid":  # what a write killed inside zarr's LocalStore leaves behind
        level0 = path / "A" / "1" / "0" / "0"
        (level0 / "stray.0123abcd.partial").write_bytes(b"half a chunk")
    # (a) recovery alone: rolled back byte for byte, or finished
    copy = tmp_path / "copy.zarr"
    shutil.copytree(path, copy)
    outcome = recover(copy)
    if phase == "complete":
        assert outcome == "finish"
        assert _semantic(copy) == _semantic(reference)
        assert _chunks(tree_digest(copy)) == _chunks(tree_digest(reference))
    else:
        assert outcome == "rollback"
        assert tree_digest(copy) == original
    # (b) the next add_channel call recovers by itself, then gives what an uninterrupted run gives
    if phase != "complete":
        result = add_channel(path, "pred", make_data(path, 1), provenance={"model": "m1"})
        assert result.recovered == "rollback"
    else:
        with pytest.raises(omeloc.errors.InputError, match="already exists"):
            add_channel(path, "pred", make_data(path, 1))
    assert _semantic(path) == _semantic(reference)
    final = tree_digest(path)
    assert set(final) == set(tree_digest(reference))
    assert _chunks(final) == _chunks(tree_digest(reference))


def test_killed_overwrite_restores_the_previous_virtual_channel(templates, tmp_path):
    _, reference = templates["0.5"]
    path = tmp_path / "p.zarr"
    shutil.copytree(reference, path)
    before = tree_digest(path)
    _run_killed(path, "level0_mid", tmp_path, seed=2, overwrite=True)
    assert tree_digest(path) != before
    assert recover(path) == "rollback"
    assert tree_digest(path) == before


RESUMABLE = """
import sys
import numpy as np
from omeloc.writeback.protocol import add_channel

def make_data(path, seed):
    import omeloc
    rng = np.random.default_rng(seed)
    return {img.path: rng.uniform(-100, 9000, img.shape[1:]) for img in omeloc.open_plate(path).images}

if __name__ == "__main__":
    path = sys.argv[1]
    add_channel(path, "pred", make_data(path, 1), provenance={"model": "m1"}, resume_key=sys.argv[2],
                scheduler="synchronous")
"""  # noqa: E501


def _counting(path: Path, calls: list) -> dict:
    import dask.array as da

    def count(block):
        if block.size > 1:  # not dask's meta probes
            calls.append(block.shape)
        return block

    return {k: da.from_array(v, chunks=32).map_blocks(count) for k, v in make_data(path, 1).items()}


@pytest.mark.parametrize("rerun_key,expect_resumed", [("job-1", True), ("job-2", False)])
def test_killed_run_resumes_only_missing_blocks(templates, tmp_path, rerun_key, expect_resumed):
    template, reference = templates["0.5"]
    path = tmp_path / "p.zarr"
    shutil.copytree(template, path)
    original = tree_digest(path)
    script = tmp_path / "resumable.py"
    script.write_text(RESUMABLE)
    env = dict(os.environ, OMELOC_TEST_KILL_AT="level0_mid", OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, str(script), str(path), "job-1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert all(tree_digest(path)[k] == v for k, v in _chunks(original).items())
    calls: list = []
    result = add_channel(
        path, "pred", _counting(path, calls), provenance={"model": "m1"}, resume_key=rerun_key
    )
    total_blocks = 4 * 4  # 4 images of 64x48 px in 32-px chunks
    assert result.recovered == "rollback"
    if expect_resumed:
        assert 0 < len(calls) <= total_blocks - 2  # the killed run had finished at least 2 blocks
    else:
        assert len(calls) == total_blocks
    assert _semantic(path) == _semantic(reference)
    final = tree_digest(path)
    assert set(final) == set(tree_digest(reference)), "stash or journal left behind"
    assert _chunks(final) == _chunks(tree_digest(reference))


def test_a_lost_scheduler_keeps_the_finished_chunks_for_the_rerun(templates, tmp_path):
    """A scheduler lost mid-write is an interruption, not bad input: the plate is rolled back but
    the finished chunks are kept, and the rerun computes only the others."""
    import dask.array as da

    from omeloc.errors import SchedulerError

    template, reference = templates["0.5"]
    path = tmp_path / "p.zarr"
    shutil.copytree(template, path)
    original = tree_digest(path)
    seen: list = []

    def lose_scheduler_at_the_fifth(block):
        if block.size > 1:
            seen.append(block.shape)
            if len(seen) == 5:
                raise SchedulerError("Lost the Dask scheduler at tcp://10.0.0.1:8786.")
        return block

    data = {
        k: da.from_array(v, chunks=32).map_blocks(lose_scheduler_at_the_fifth)
        for k, v in make_data(path, 1).items()
    }
    with pytest.raises(SchedulerError):
        add_channel(
            path,
            "pred",
            data,
            provenance={"model": "m1"},
            resume_key="job-1",
            scheduler="synchronous",
        )
    after = tree_digest(path)
    assert {k: after[k] for k in original} == original and any(".omeloc_resume" in k for k in after)
    calls: list = []
    add_channel(
        path, "pred", _counting(path, calls), provenance={"model": "m1"}, resume_key="job-1"
    )
    assert 0 < len(calls) <= 16 - 4  # the 4 blocks written before the loss were kept
    assert _semantic(path) == _semantic(reference)
    assert set(tree_digest(path)) == set(tree_digest(reference)), "stash or journal left behind"


# -- issue 14: units of k > 1 channels holding a virtual channel, consolidated metadata in every
# group --------------------------------------------------------------------------------------------
def _shared_consolidated_plate(path: Path, version: str) -> Path:
    """3 channels stored 2 per chunk (channel 2 omeloc's virtual one), consolidated per image and
    at the root."""
    import zarr

    plate = write_plate(
        path,
        random_plate_images("A", ("1", "2"), ("0",), (3, 64, 48)),
        channel_names=["actin", "WAVE2", "v"],
        ngff_version=version,
        chunks=(32, 32),
        levels=2,
    )
    for img in omeloc.open_plate(plate).images:
        for level_path in img.level_paths:
            url = str(plate / img.path / level_path)
            old = zarr.open_array(url, mode="r")
            data, zf = old[...], old.metadata.zarr_format
            extra = {"dimension_names": old.metadata.dimension_names} if zf == 3 else {}
            zarr.create_array(
                url,
                shape=data.shape,
                chunks=(2, *old.chunks[1:]),
                dtype=data.dtype,
                zarr_format=zf,
                overwrite=True,
                **extra,
            )[...] = data
        group = zarr.open_group(str(plate / img.path), mode="r+")
        group.attrs["omeloc"] = {"channels": {"v": {"virtual": True, "index": 2}}}
        zarr.consolidate_metadata(str(plate / img.path))
    zarr.consolidate_metadata(str(plate))
    return plate


def _stale(plate: Path) -> list[str]:
    """Consolidated documents whose record of an array's shape differs from the array's own
    document."""
    stale = []
    for doc in [*plate.rglob(".zmetadata"), *plate.rglob("zarr.json")]:
        meta = json.loads(doc.read_text())
        if doc.name == ".zmetadata":
            entries = {
                k[: -len("/.zarray")]: v
                for k, v in meta["metadata"].items()
                if k.endswith("/.zarray")
            }
            own = ".zarray"
        else:
            entries = {
                k: v
                for k, v in (
                    (meta.get("consolidated_metadata") or {}).get("metadata") or {}
                ).items()
                if v.get("node_type") == "array"
            }
            own = "zarr.json"
        stale += [
            str(doc)
            for k, v in entries.items()
            if json.loads((doc.parent / k / own).read_text())["shape"] != v["shape"]
        ]
    return stale


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("version", ["0.4", "0.5"])
@pytest.mark.parametrize(
    "phase", ["backup_file", "resized", "level0_written", "metadata", "complete"]
)
def test_killed_write_into_a_shared_unit_restores_it_exactly(tmp_path, version, phase):
    plate = _shared_consolidated_plate(tmp_path / "p.zarr", version)
    ref = tmp_path / "ref.zarr"
    shutil.copytree(plate, ref)
    add_channel(ref, "pred", make_data(ref, 1), provenance={"model": "m1"})
    assert not _stale(ref)
    before = tree_digest(plate)
    _run_killed(plate, phase, tmp_path)
    outcome = recover(plate)
    if phase == "complete":
        assert outcome == "finish" and not _stale(plate)
        assert _semantic(plate) == _semantic(ref)
        return
    assert outcome == "rollback"
    assert (
        tree_digest(plate) == before
    )  # the rewritten unit of channel 2 and every consolidated document, byte-exact
    add_channel(plate, "pred", make_data(plate, 1), provenance={"model": "m1"})
    assert _semantic(plate) == _semantic(ref) and not _stale(plate)
    originals = {
        k: v for k, v in _chunks(before).items() if _c_unit(k) == "0"
    }  # the unit of actin and WAVE2
    after = tree_digest(plate)
    assert originals and all(after[k] == v for k, v in originals.items())


def _c_unit(rel: str) -> str:
    """The chunk coordinate along c of a chunk key ``A/1/0/<level>/...`` (v3 ``c/0/0/0``, v2
    ``0.0.0``)."""
    tail = rel.split("/", 4)[4]
    return tail[2:].split("/")[0] if tail.startswith("c/") else tail.replace("/", ".").split(".")[0]
