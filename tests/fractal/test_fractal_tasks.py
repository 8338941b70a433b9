"""omeloc's Fractal tasks run as Fractal runs them: each task module as its command-line entry point
(``--args-json`` / ``--out-json``), on a plate written by ngio, predict per image in parallel
processes,
evaluate writing tables, ngio reading the new channels and the tables back; bad input fails in one
line and leaves the plate unchanged; the committed manifest is what fractal-task-tools generates."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import tree_digest

ngio = pytest.importorskip(
    "ngio", reason="Fractal tests need the fractal extra: pip install 'omeloc[fractal]'"
)
pytest.importorskip("fractal_task_tools")

REPO = Path(__file__).resolve().parents[2]
WELLS = ("03", "04")
FIELDS = ("0",)
IDS = {"actin": "A01_C01", "WAVE2": "A02_C02"}


def _ngio_plate(path: Path) -> Path:
    """A 1x2-well plate, one field per well, written by ngio (columns 03/04, wavelength ids)."""
    from ngio import Channel, ImageInWellPath

    images = [ImageInWellPath(row="B", column=c, path=f) for c in WELLS for f in FIELDS]
    ngio.create_empty_plate(str(path), "omeloc-fractal", images=images, ngff_version="0.5")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:64, 0:64]
    for c in WELLS:
        for f in FIELDS:
            blobs = sum(
                np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / 30.0)
                for y, x in rng.integers(4, 60, (12, 2))
            )
            actin = 300 + 2500 * blobs + rng.normal(0, 30, blobs.shape)
            wave2 = 200 + 1800 * blobs + rng.normal(0, 30, blobs.shape)
            arr = np.clip(np.stack([actin, wave2]), 0, 65535).astype("uint16")
            channels = [Channel.default_init(label=k, wavelength_id=v) for k, v in IDS.items()]
            ngio.create_ome_zarr_from_array(
                str(path / "B" / c / f),
                arr,
                pixelsize=0.65,
                axes_names="cyx",
                levels=2,
                channels_meta=channels,
                chunks=(1, 32, 32),
                ngff_version="0.5",
                overwrite=True,
                consolidation_mode="auto",
            )
    return path


def _urls(plate: Path) -> list[str]:
    return [str(plate / "B" / c / f) for c in WELLS for f in FIELDS]


def _start(task: str, args: dict, workdir: Path) -> tuple[subprocess.Popen, Path]:
    """Start ``python -m omeloc.fractal.<task> --args-json ... --out-json ...``, as Fractal does."""
    workdir.mkdir(parents=True, exist_ok=True)
    args_json, out_json = workdir / "args.json", workdir / "out.json"
    args_json.write_text(json.dumps(args))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            f"omeloc.fractal.{task}",
            "--args-json",
            str(args_json),
            "--out-json",
            str(out_json),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return proc, out_json


def _run(task: str, args: dict, workdir: Path) -> tuple[int, str, object]:
    proc, out_json = _start(task, args, workdir)
    _, err = proc.communicate(timeout=300)
    out = json.loads(out_json.read_text()) if out_json.exists() else None
    return proc.returncode, err, out


def _parallel(task: str, per_image: list[dict], workdir: Path) -> list[object]:
    """One process per image, all at once; every one must succeed."""
    started = [_start(task, args, workdir / f"img{i}") for i, args in enumerate(per_image)]
    outs = []
    for proc, out_json in started:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
        outs.append(json.loads(out_json.read_text()))
    return outs


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """train (init) on well B03 → predict every image in parallel (standalone task, and the
    compound's
    parallel part) → evaluate; all through the task entry points on an ngio-written plate."""
    root = tmp_path_factory.mktemp("fractal")
    plate = _ngio_plate(root / "plate.zarr")
    urls = _urls(plate)
    rc, err, init = _run(
        "omeloc_train_init",
        {
            "zarr_urls": urls,
            "zarr_dir": str(root),
            "source_channel": {"wavelength_id": IDS["actin"]},
            "target_channel": {"label": "WAVE2"},
            "wells": ["B03"],
            "steps": 2,
            "crop": 32,
            "batch_size": 2,
            "depth": 2,
            "base_channels": 4,
        },
        root / "train",
    )
    assert rc == 0, err[-3000:]
    predicted = _parallel(
        "omeloc_predict",
        [
            {
                "zarr_url": u,
                "model": item["init_args"]["model"],
                "source_channel": {"wavelength_id": IDS["actin"]},
            }
            for u, item in zip(urls, init["parallelization_list"])
        ],
        root / "predict",
    )
    compound = _parallel(
        "omeloc_predict_trained",
        [{**item, "target_name": "WAVE2 (compound)"} for item in init["parallelization_list"]],
        root / "compound",
    )
    rc, err, evaluated = _run(
        "omeloc_evaluate",
        {"zarr_urls": urls, "zarr_dir": str(root), "pred": "WAVE2 (virtual)", "truth": "WAVE2"},
        root / "evaluate",
    )
    assert rc == 0, err[-3000:]
    return {
        "root": root,
        "plate": plate,
        "urls": urls,
        "init": init,
        "predicted": predicted,
        "compound": compound,
        "evaluated": evaluated,
    }


def test_train_init_trains_once_and_hands_every_image_to_the_prediction(pipeline):
    items = pipeline["init"]["parallelization_list"]
    assert [i["zarr_url"] for i in items] == pipeline["urls"]
    model = Path(items[0]["init_args"]["model"])
    assert model.is_dir() and model.is_relative_to(pipeline["root"] / "omeloc_models")
    assert {i["init_args"]["model"] for i in items} == {str(model)}


def test_parallel_predict_returns_image_list_updates_and_ngio_reads_the_new_channels(pipeline):
    for url, out in zip(pipeline["urls"], pipeline["predicted"]):
        assert out == {"image_list_updates": [{"zarr_url": url}]}
    for url in pipeline["urls"]:
        container = ngio.open_ome_zarr_container(url)
        assert container.channel_labels == ["actin", "WAVE2", "WAVE2 (virtual)", "WAVE2 (compound)"]
        image = container.get_image()
        virtual = np.asarray(image.get_array(c=2))
        assert virtual.shape[-2:] == (64, 64) and virtual.dtype == np.uint16 and virtual.max() > 0
        low = np.asarray(container.get_image(path="1").get_array(c=2))  # the pyramid level below
        assert low.shape[-2:] == (32, 32)
        assert not (Path(url) / ".omeloc_lock").exists()
    import omeloc

    assert (
        omeloc.describe(pipeline["plate"])["inconsistent_images"] == []
    )  # every image got both channels


def test_evaluate_task_writes_tables_that_ngio_reads(pipeline):
    assert pipeline["evaluated"] == {}
    plate = ngio.open_ome_zarr_plate(str(pipeline["plate"]))
    assert set(plate.list_tables()) == {"WAVE2_virtual_fields", "WAVE2_virtual_wells"}
    fields = plate.get_table("WAVE2_virtual_fields").dataframe
    assert sorted(fields.index) == sorted(f"B/{c}/{f}" for c in WELLS for f in FIELDS)
    assert fields["pearson_r"].between(-1, 1).all()
    wells = plate.get_table("WAVE2_virtual_wells").dataframe
    assert sorted(wells.index) == ["B/03", "B/04"] and "z" in wells.columns
    csv_dir = pipeline["root"] / "omeloc_evaluation" / "WAVE2_virtual"
    rows = (csv_dir / "metrics.csv").read_text().splitlines()
    assert len(rows) == 1 + len(fields)


def test_manifest_is_what_fractal_task_tools_generates():
    from fractal_task_tools._create_manifest import create_manifest

    fresh = create_manifest(raw_package_name="omeloc", task_list_path="fractal.task_list")
    committed = json.loads((REPO / "omeloc" / "__FRACTAL_MANIFEST__.json").read_text())
    assert fresh == committed, (
        "omeloc/__FRACTAL_MANIFEST__.json is stale: run `fractal-manifest create "
        "--package omeloc --task-list-path fractal.task_list`"
    )
    by_name = {t["name"]: t for t in committed["task_list"]}
    assert by_name["omeloc predict virtual stain"]["type"] == "parallel"
    assert by_name["omeloc predict virtual stain"]["meta_parallel"]["needs_gpu"] is True
    assert by_name["omeloc train and predict virtual stain"]["type"] == "compound"
    assert by_name["omeloc evaluate virtual stain"]["type"] == "non_parallel"


@pytest.fixture(scope="module")
def clean_plate(tmp_path_factory):
    return _ngio_plate(tmp_path_factory.mktemp("bad") / "plate.zarr")


@pytest.mark.parametrize(
    "case",
    [
        "unknown_wavelength_id",
        "not_an_image",
        "both_label_and_wavelength",
        "unknown_argument",
        "evaluate_unknown_channel",
    ],
)
def test_bad_input_fails_in_one_line_and_leaves_the_plate_unchanged(
    case, clean_plate, tmp_path, pipeline
):
    plate = tmp_path / "plate.zarr"
    shutil.copytree(clean_plate, plate)
    url = str(plate / "B" / "03" / "0")
    model = pipeline["init"]["parallelization_list"][0]["init_args"]["model"]
    task, args, expect = {
        "unknown_wavelength_id": (
            "omeloc_predict",
            {"zarr_url": url, "model": model, "source_channel": {"wavelength_id": "A09_C09"}},
            "no channel with wavelength_id 'A09_C09'",
        ),
        "not_an_image": (
            "omeloc_predict",
            {"zarr_url": str(plate / "B" / "03"), "model": model},
            "is not an OME-Zarr image",
        ),
        "both_label_and_wavelength": (
            "omeloc_predict",
            {
                "zarr_url": url,
                "model": model,
                "source_channel": {"label": "actin", "wavelength_id": IDS["actin"]},
            },
            "exactly one of label and wavelength_id",
        ),
        "unknown_argument": (
            "omeloc_predict",
            {"zarr_url": url, "model": model, "tiles": 64},
            "tiles",
        ),
        "evaluate_unknown_channel": (
            "omeloc_evaluate",
            {
                "zarr_urls": _urls(plate),
                "zarr_dir": str(tmp_path),
                "pred": "nope",
                "truth": "WAVE2",
            },
            "nope",
        ),
    }[case]
    before = tree_digest(plate)
    rc, err, out = _run(task, args, tmp_path / "task")
    assert rc == 2, err[-2000:]
    errors = [line for line in err.splitlines() if f"{task}: error:" in line]
    assert len(errors) == 1 and expect in errors[0], err[-2000:]
    assert "Traceback" not in err
    assert out is None
    assert tree_digest(plate) == before


def test_a_per_image_task_refuses_while_a_plate_wide_run_holds_the_plate_lock(
    clean_plate, tmp_path
):
    """Per-image tasks lock their image; a live plate-wide writer's lock at the root stops them."""
    import socket
    import uuid

    from omeloc.writeback.journal import process_start_time

    plate = tmp_path / "plate.zarr"
    shutil.copytree(clean_plate, plate)
    holder = {
        "run_id": uuid.uuid4().hex,
        "purpose": "add_channel",
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "pid_start": process_start_time(os.getpid()),
        "started": "now",
        "heartbeat": 0.0,
        "interval": 2.0,
    }
    (plate / ".omeloc_lock").write_text(json.dumps(holder))  # this test process: alive
    before = tree_digest(plate)
    rc, err, _ = _run(
        "omeloc_predict",
        {"zarr_url": str(plate / "B" / "03" / "0"), "model": "unused"},
        tmp_path / "task",
    )
    assert rc == 2 and "locked by a plate-wide omeloc run" in err, err[-2000:]
    assert tree_digest(plate) == before
