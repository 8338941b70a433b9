"""A corpus of bad inputs, as an adversary would feed them, through the CLI.

Every case: exit code 2, exactly one line on stderr that names the problem (and the fix), no
traceback, and the user's store byte-identical afterwards.
"""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

import omeloc
from conftest import tree_digest
from omeloc.cli import main
from omeloc.data.tiff_import import NF1_PATTERN

MARKER = Path("/tmp/omeloc_pwned_by_bad_input_corpus")


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("corpus")
    plate = omeloc.make_plate(
        root / "plate.zarr",
        rows=2,
        cols=2,
        fields=1,
        size=64,
        chunks=(32, 32),
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
        val_wells=["B2"],
        progress=False,
    )
    return plate, res.checkpoint


def _edit_json(path: Path, fn) -> None:
    doc = json.loads(path.read_text())
    fn(doc)
    path.write_text(json.dumps(doc))


def _omero(doc: dict) -> dict:
    return doc["attributes"]["ome"]["omero"]


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, (f"touch {MARKER}",))


# Each builder gets (tmp, plate copy, checkpoint copy) and returns (argv, expected words, store to
# check).
def _info_missing(tmp, plate, ckpt):
    return ["info", str(tmp / "nope.zarr")], "does not exist", None


def _info_not_zarr(tmp, plate, ckpt):
    d = tmp / "folder"
    d.mkdir()
    (d / "notes.txt").write_text("hello")
    return ["info", str(d)], "Zarr", d


def _info_zarr_not_ome(tmp, plate, ckpt):
    d = tmp / "plain.zarr"
    zarr.open_group(str(d), mode="w").create_array("x", shape=(4, 4), dtype="u1")
    return ["info", str(d)], "OME", d


def _info_invalid_json(tmp, plate, ckpt):
    (plate / "zarr.json").write_text('{"zarr_format": 3, "node_type": "gr')
    return ["info", str(plate)], "metadata", plate


def _info_missing_well(tmp, plate, ckpt):
    shutil.rmtree(plate / "B" / "2")
    return ["info", str(plate)], "missing", plate


def _train_unknown_channel(tmp, plate, ckpt):
    return (
        ["train", str(plate), "--source", "actin", "--target", "tubulin", "--out", str(tmp / "m")],
        "Available channels",
        plate,
    )


def _train_same_channel(tmp, plate, ckpt):
    return (
        ["train", str(plate), "--source", "WAVE2", "--target", "WAVE2", "--out", str(tmp / "m")],
        "both source and target",
        plate,
    )


def _train_too_small(
    tmp, plate, ckpt
):  # an explicit crop: a default one (by device) shrinks to fit the images
    return (
        [
            "train",
            str(plate),
            "--source",
            "actin",
            "--target",
            "WAVE2",
            "--crop",
            "512",
            "--out",
            str(tmp / "m"),
        ],
        "smaller than the 512-pixel crop",
        plate,
    )


def _train_duplicate_names(tmp, plate, ckpt):
    for img in omeloc.open_plate(plate).images:
        _edit_json(
            plate / img.path / "zarr.json", lambda d: _omero(d)["channels"][1].update(label="actin")
        )
    return (
        ["train", str(plate), "--source", "actin", "--target", "WAVE2", "--out", str(tmp / "m")],
        "ambiguous",
        plate,
    )


def _train_all_wells_held_out(tmp, plate, ckpt):
    return (
        [
            "train",
            str(plate),
            "--source",
            "actin",
            "--target",
            "WAVE2",
            "--crop",
            "32",
            "--val-wells",
            "A1,A2,B1,B2",
            "--out",
            str(tmp / "m"),
        ],
        "held out",
        plate,
    )


def _predict_omero_disagrees(tmp, plate, ckpt):
    _edit_json(
        plate / "A" / "1" / "0" / "zarr.json",
        lambda d: _omero(d)["channels"].append(
            {
                "label": "ghost",
                "color": "FFFFFF",
                "window": {"min": 0, "max": 1, "start": 0, "end": 1},
            }
        ),
    )
    return ["predict", str(plate), "--model", str(ckpt)], "omero", plate


def _predict_wells_disagree(tmp, plate, ckpt):
    img = omeloc.open_plate(plate).image("A/1/0")
    for level in img.level_paths:
        _edit_json(
            plate / "A" / "1" / "0" / level / "zarr.json",
            lambda d: d.update(shape=[3, *d["shape"][1:]]),
        )
    _edit_json(
        plate / "A" / "1" / "0" / "zarr.json",
        lambda d: _omero(d)["channels"].append(
            {
                "label": "extra",
                "color": "FFFFFF",
                "window": {"min": 0, "max": 1, "start": 0, "end": 1},
            }
        ),
    )
    return ["predict", str(plate), "--model", str(ckpt)], "inconsistent", plate


def _predict_corrupt_chunk(tmp, plate, ckpt):
    chunk = next(p for p in sorted((plate / "B" / "1" / "0" / "0" / "c").rglob("*")) if p.is_file())
    chunk.write_bytes(b"\x00garbage\xff" * 5)
    return ["predict", str(plate), "--model", str(ckpt)], "corrupt", plate


def _predict_other_channels(tmp, plate, ckpt):
    _edit_json(
        ckpt / "checkpoint.json",
        lambda d: (
            d.update(source=["tubulin"]),
            d["normalization"].update(tubulin={"low": 0, "high": 1}),
        ),
    )
    return ["predict", str(plate), "--model", str(ckpt)], "tubulin", plate


def _predict_other_architecture(tmp, plate, ckpt):
    _edit_json(ckpt / "checkpoint.json", lambda d: d["architecture"].update(depth=3))
    return ["predict", str(plate), "--model", str(ckpt)], "do not fit", plate


def _predict_truncated_checkpoint(tmp, plate, ckpt):
    w = ckpt / "weights.pt"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    return ["predict", str(plate), "--model", str(ckpt)], "truncated", plate


def _predict_malicious_checkpoint(tmp, plate, ckpt):
    import pickle

    MARKER.unlink(missing_ok=True)
    with (ckpt / "weights.pt").open("wb") as fh:
        pickle.dump({"weight": _Evil()}, fh)
    return ["predict", str(plate), "--model", str(ckpt)], "Refused to load", plate


def _predict_not_a_checkpoint(tmp, plate, ckpt):
    return ["predict", str(plate), "--model", str(tmp)], "not an omeloc checkpoint", plate


def _predict_unreachable_scheduler(tmp, plate, ckpt):
    return (
        ["predict", str(plate), "--model", str(ckpt), "--scheduler", "tcp://127.0.0.1:9"],
        "scheduler",
        plate,
    )


def _predict_unknown_well(tmp, plate, ckpt):
    return ["predict", str(plate), "--model", str(ckpt), "--wells", "H12"], "H12", plate


def _predict_bad_tiling(tmp, plate, ckpt):
    return (
        ["predict", str(plate), "--model", str(ckpt), "--tile", "32", "--overlap", "32"],
        "overlap",
        plate,
    )


def _predict_existing_real_channel(tmp, plate, ckpt):
    return (
        ["predict", str(plate), "--model", str(ckpt), "--name", "actin", "--overwrite"],
        "not a virtual channel",
        plate,
    )


def _import_no_match(tmp, plate, ckpt):
    d = tmp / "tiffs"
    d.mkdir()
    tifffile.imwrite(d / "random_name.tif", np.zeros((8, 8), "uint16"))
    return ["import-tiff", str(d), str(tmp / "out.zarr")], "pattern", d


def _import_mixed_shapes(tmp, plate, ckpt):
    d = tmp / "tiffs"
    d.mkdir()
    tifffile.imwrite(d / "B7_01_1_1_DAPI_001.tif", np.zeros((8, 8), "uint16"))
    tifffile.imwrite(d / "B7_01_2_1_GFP_001.tif", np.zeros((8, 9), "uint16"))
    return ["import-tiff", str(d), str(tmp / "out.zarr"), "--pattern", NF1_PATTERN], "shape", d


def _import_out_exists(tmp, plate, ckpt):
    d = tmp / "tiffs"
    d.mkdir()
    tifffile.imwrite(d / "B7_01_1_1_DAPI_001.tif", np.zeros((8, 8), "uint16"))
    return ["import-tiff", str(d), str(plate), "--pattern", NF1_PATTERN], "exists", plate


def _evaluate_missing_channel(tmp, plate, ckpt):
    return (
        [
            "evaluate",
            str(plate),
            "--pred",
            "WAVE2 (virtual)",
            "--truth",
            "WAVE2",
            "--out",
            str(tmp / "e"),
        ],
        "WAVE2 (virtual)",
        plate,
    )


def _evaluate_out_inside_plate(tmp, plate, ckpt):
    return (
        [
            "evaluate",
            str(plate),
            "--pred",
            "actin",
            "--truth",
            "WAVE2",
            "--out",
            str(plate / "eval"),
        ],
        "inside",
        plate,
    )


def _info_unknown_ngff_version(tmp, plate, ckpt):
    _edit_json(plate / "zarr.json", lambda d: d["attributes"]["ome"].update(version="0.9"))
    return ["info", str(plate)], "version 0.9", plate


def _predict_lock_is_a_folder(tmp, plate, ckpt):
    (plate / ".omeloc_lock").mkdir()
    return ["predict", str(plate), "--model", str(ckpt)], "is a folder, not omeloc's lock", plate


def _predict_checkpoint_format_version_text(tmp, plate, ckpt):
    _edit_json(ckpt / "checkpoint.json", lambda d: d.update(format_version="x"))
    return ["predict", str(plate), "--model", str(ckpt)], "format_version 'x'", plate


def _predict_checkpoint_level_deeper_than_plate(tmp, plate, ckpt):
    _edit_json(ckpt / "checkpoint.json", lambda d: d.update(level=9))
    return ["predict", str(plate), "--model", str(ckpt)], "pyramid level 9", plate


def _predict_level_channels_disagree(tmp, plate, ckpt):
    level1 = plate / "B" / "2" / "0" / "1" / "zarr.json"
    _edit_json(level1, lambda d: d.update(shape=[d["shape"][0] - 1, *d["shape"][1:]]))
    return ["predict", str(plate), "--model", str(ckpt)], "has 1 channels, level '0' 2", plate


CASES = {
    f.__name__.lstrip("_"): f
    for f in [
        _info_unknown_ngff_version,
        _predict_lock_is_a_folder,
        _predict_checkpoint_format_version_text,
        _predict_checkpoint_level_deeper_than_plate,
        _predict_level_channels_disagree,
        _info_missing,
        _info_not_zarr,
        _info_zarr_not_ome,
        _info_invalid_json,
        _info_missing_well,
        _train_unknown_channel,
        _train_same_channel,
        _train_too_small,
        _train_duplicate_names,
        _train_all_wells_held_out,
        _predict_omero_disagrees,
        _predict_wells_disagree,
        _predict_corrupt_chunk,
        _predict_other_channels,
        _predict_other_architecture,
        _predict_truncated_checkpoint,
        _predict_malicious_checkpoint,
        _predict_not_a_checkpoint,
        _predict_unreachable_scheduler,
        _predict_unknown_well,
        _predict_bad_tiling,
        _predict_existing_real_channel,
        _import_no_match,
        _import_mixed_shapes,
        _import_out_exists,
        _evaluate_missing_channel,
        _evaluate_out_inside_plate,
    ]
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input(case, template, tmp_path, capsys, short_scheduler_timeout):
    plate = tmp_path / "plate.zarr"
    ckpt = tmp_path / "ckpt"
    shutil.copytree(template[0], plate)
    shutil.copytree(template[1], ckpt)
    argv, words, store = CASES[case](tmp_path, plate, ckpt)
    before = tree_digest(store) if store is not None else None
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert words.lower() in err.lower(), err
    if store is not None:
        assert tree_digest(store) == before, "the store changed"
    assert not MARKER.exists(), "a checkpoint ran code"


def test_full_disk_during_write_back_leaves_plate_intact(template, tmp_path, capsys, monkeypatch):
    """ENOSPC on the new channel's chunks: one clear line, exit 2, and the plate rolled back."""
    from zarr.storage import LocalStore

    plate = tmp_path / "plate.zarr"
    shutil.copytree(template[0], plate)
    before = tree_digest(plate)
    real_set = LocalStore.set

    async def full_disk(self, key, value):
        parts = key.split("/")
        if (
            "c" in parts and parts[parts.index("c") + 1] == "2"
        ):  # a chunk of the new (third) channel
            raise OSError(errno.ENOSPC, "No space left on device")
        return await real_set(self, key, value)

    monkeypatch.setattr(LocalStore, "set", full_disk)
    code = main(["predict", str(plate), "--model", str(template[1])])
    err = capsys.readouterr().err.strip()
    monkeypatch.undo()
    assert code != 0 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "space" in err.lower(), err
    assert tree_digest(plate) == before


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int32", "float32"])
def test_every_pixel_type_trains_and_predicts(dtype, tmp_path):
    """uint8/uint16/int32/float32 plates (the float one with NaN and inf): the virtual channel has
    the plate's dtype, finite values inside the dtype's range."""
    rng = np.random.default_rng(0)
    base = omeloc.make_plate(
        tmp_path / "src.zarr",
        rows=1,
        cols=2,
        fields=1,
        size=64,
        chunks=(32, 32),
        levels=1,
        channels=("actin", "WAVE2"),
    )
    src = omeloc.open_plate(base)
    images = {}
    for img in src.images:
        a = img.level(0).compute().astype(np.float64)
        a = a / a.max() * (200 if dtype == "uint8" else 3000)
        arr = a.astype(dtype)
        if dtype == "int32":
            arr -= 500  # negative values too
        if dtype == "float32":
            arr[0, rng.integers(0, 64, 20), rng.integers(0, 64, 20)] = np.nan
            arr[1, 3, 3] = np.inf
        images[tuple(img.path.split("/"))] = arr
    plate = omeloc.write_plate(
        tmp_path / f"{dtype}.zarr",
        images,
        channel_names=["actin", "WAVE2"],
        chunks=(32, 32),
        levels=2,
    )
    res = omeloc.train(
        plate,
        "actin",
        "WAVE2",
        out=tmp_path / "m",
        steps=3,
        crop=32,
        batch_size=2,
        depth=2,
        base_channels=4,
        val_wells=["A2"],
        progress=False,
    )
    omeloc.predict(plate, res.checkpoint, progress=False)
    img = omeloc.open_plate(plate).images[0]
    v = img.channel("WAVE2 (virtual)").compute()
    assert v.dtype == np.dtype(dtype)
    assert np.isfinite(v).all()
    if dtype != "float32":
        info = np.iinfo(dtype)
        assert v.min() >= info.min and v.max() <= info.max


def test_malicious_checkpoint_in_a_real_process_prints_one_line(template, tmp_path):
    """Outside pytest nothing captures warnings: stderr must still be exactly one line."""
    import subprocess
    import sys

    plate, ckpt = tmp_path / "plate.zarr", tmp_path / "ckpt"
    shutil.copytree(template[0], plate)
    shutil.copytree(template[1], ckpt)
    argv, words, _ = _predict_malicious_checkpoint(tmp_path, plate, ckpt)
    before = tree_digest(plate)
    proc = subprocess.run(
        [sys.executable, "-m", "omeloc.cli", *argv], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and words in proc.stderr, proc.stderr
    assert tree_digest(plate) == before and not MARKER.exists()


@pytest.mark.parametrize("free_kb", [24, 80])
def test_a_nearly_full_disk_is_named_as_such_and_the_plate_kept(
    template, tmp_path, capsys, free_kb
):
    """A real small file system (tmpfs) with a few KB left: the lock or journal write fails; the
    line says the disk is full (not that the store is read-only), and the plate is as before."""
    import os
    import subprocess

    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mnt)],
        capture_output=True,
        check=False,
    ).returncode:
        pytest.skip("cannot mount a tmpfs here (not root?)")
    try:
        plate = mnt / "plate.zarr"
        shutil.copytree(template[0], plate)
        st = os.statvfs(mnt)
        used_kb = (st.f_blocks - st.f_bfree) * st.f_frsize // 1024
        subprocess.run(["mount", "-o", f"remount,size={used_kb + free_kb}k", str(mnt)], check=True)
        before = tree_digest(plate)
        code = main(["predict", str(plate), "--model", str(template[1])])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
        assert "full" in err.lower() or "space" in err.lower(), err
        assert "read-only" not in err, err
        assert tree_digest(plate) == before
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
