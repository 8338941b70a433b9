# ruff: noqa: F811  (the exported fixture is imported from bmz_fixtures, then requested by name)
"""omeloc models out to the BioImage Model Zoo and back in: export, show, predict with the package.

The package is exported from a tiny trained checkpoint (once per session) and checked with the
real bioimageio.core (``test_model``, ``predict``); ONNX exports run in the real onnxruntime.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("bioimageio.core", reason="needs the bmz extra (bioimageio.core)")
pytest.importorskip("onnxruntime", reason="needs the bmz extra (onnxruntime)")

from bmz_fixtures import exported  # noqa: F401  (the session's exported package)

import omeloc
from omeloc.cli import main


def _field(plate, channel: str) -> np.ndarray:
    img = omeloc.open_plate(plate).images[0]
    index = tuple(
        img.channel_index(channel) if a == "c" else slice(None) if a in "yx" else 0
        for a in img.axes
    )
    return np.asarray(img.level(0)[index]).astype(np.float32)


def test_exported_package_passes_bioimageio_core_test_model(exported):
    from bioimageio.core import load_model_description, test_model

    _, _, pkg = exported
    summary = test_model(pkg)
    assert summary.status == "passed", summary.display()
    descr = load_model_description(pkg, perform_io_checks=False)
    assert str(descr.format_version).startswith("0.5")
    assert {"pytorch_state_dict", "torchscript", "onnx"} <= {
        f
        for f in ("pytorch_state_dict", "torchscript", "onnx")
        if getattr(descr.weights, f) is not None
    }
    assert descr.inputs[0].preprocessing[-2].id == "scale_linear" or any(
        p.id == "scale_linear" for p in descr.inputs[0].preprocessing
    )
    assert any(p.id == "scale_linear" for p in descr.outputs[0].postprocessing)
    assert "Shigene" in descr.cite[0].text and descr.authors[0].github_user is None


def test_bioimageio_core_prediction_equals_omeloc_predict_with_the_package(exported, tmp_path):
    from bioimageio.core import predict as core_predict

    plate, _, pkg = exported
    copy = tmp_path / "plate.zarr"
    shutil.copytree(plate, copy)
    actin = _field(copy, "actin")
    sample = core_predict(model=str(pkg), inputs=actin[None, None])
    want = np.asarray(next(iter(sample.members.values())).data, dtype=np.float64)[0, 0]
    # 3 x 3 tiles of 160 px over a 256 px field, blended; the overlap's zero-weight margin (a
    # quarter of it, 28 px) covers the depth-2 U-Net's receptive field (26 px), so no seam remains
    assert (
        main(["-q", "predict", str(copy), "--model", str(pkg), "--tile", "160", "--overlap", "112"])
        == 0
    )
    got = _field(copy, "WAVE2 (virtual)").astype(np.float64)
    want = np.clip(np.rint(want), 0, 65535)  # the plate holds uint16: the same rounding
    std = float(_field(copy, "WAVE2").std())
    r = np.corrcoef(got.ravel(), want.ravel())[0, 1]
    mae = float(np.abs(got - want).mean())
    assert r >= 0.999 and mae <= 1e-3 * std, (r, mae, std)


def test_written_channel_records_package_id_version_and_sha256(exported, tmp_path):
    import hashlib

    plate, _, pkg = exported
    copy = tmp_path / "plate.zarr"
    shutil.copytree(plate, copy)
    assert main(["-q", "predict", str(copy), "--model", str(pkg), "--name", "wave2 bmz"]) == 0
    record = omeloc.open_plate(copy).images[0].attrs["omeloc"]["channels"]["wave2 bmz"]
    assert record["package_sha256"] == hashlib.sha256(Path(pkg).read_bytes()).hexdigest()
    assert record["package_version"] == "0.1.0" and record["weights_format"] == "torchscript"
    assert "package_id" in record and record["package_source_map"] == {"actin": "actin"}


def test_package_from_folder_and_rdf_yaml_predict_the_same_as_the_zip(exported, tmp_path):
    import zipfile

    from omeloc.modelio.adapter import PackageStain

    _, _, pkg = exported
    folder = tmp_path / "pkg"
    zipfile.ZipFile(pkg).extractall(folder)
    x = torch.rand(2, 1, 38, 50) * 2000
    outs = [PackageStain(p).checkpoint.build_model()(x) for p in (pkg, folder, folder / "rdf.yaml")]
    for o in outs[1:]:
        torch.testing.assert_close(o, outs[0])
    assert outs[0].shape == (2, 1, 38, 50)  # padded to multiples of 4 inside, cropped back


def test_onnx_and_torchscript_exports_equal_the_torch_model(exported, tmp_path):
    from omeloc.modelio.onnx_runtime import run_onnx

    _, ckpt, _ = exported
    net = omeloc.load_checkpoint(ckpt).build_model("cpu")
    assert (
        main(["-q", "export", str(ckpt), "--format", "onnx", "--out", str(tmp_path / "m.onnx")])
        == 0
    )
    assert (
        main(
            ["-q", "export", str(ckpt), "--format", "torchscript", "--out", str(tmp_path / "m.pt")]
        )
        == 0
    )
    x = torch.rand(3, 1, 80, 64)
    with torch.no_grad():
        want = net(x).numpy()
        script = torch.jit.load(str(tmp_path / "m.pt"))(x).numpy()
    onnx_out = run_onnx(tmp_path / "m.onnx", x.numpy())
    tol = 1e-4 * float(want.std())
    assert np.abs(onnx_out - want).max() <= tol and np.abs(script - want).max() <= tol


@pytest.mark.parametrize("weights", ["torchscript", "onnx", "pytorch_state_dict"])
def test_every_weight_format_of_the_package_reproduces_its_test_output(exported, weights):
    from omeloc.modelio.bmz_import import open_package
    from omeloc.modelio.runtime import PackageModel, check_test_output

    _, _, pkg = exported
    model = PackageModel(open_package(pkg, weights=weights, trust_code=True))
    assert check_test_output(model) < 1e-3


def test_show_prints_inputs_outputs_normalization_and_training(exported, capsys):
    _, ckpt, pkg = exported
    assert main(["show", str(pkg)]) == 0
    out = capsys.readouterr().out
    assert "input [bcyx] c=1 (actin)" in out and "scale_linear" in out and "y=4+k*4" in out
    assert "Shigene" in out and "figure:" in out
    assert main(["show", str(ckpt)]) == 0
    out = capsys.readouterr().out
    assert "train_wells" in out and "val_pearson_r" in out and "WAVE2" in out
    assert main(["show", str(pkg), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["inputs"][0]["axes"][1]["channel_names"] == ["actin"]
