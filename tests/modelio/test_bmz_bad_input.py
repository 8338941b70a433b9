# ruff: noqa: F811  (the exported fixture is imported from bmz_fixtures, then requested by name)
"""Bad model packages through ``omeloc predict --model PKG``: exit 2, one line, the plate untouched.

Each case starts from a package omeloc exported (a real, passing one) and breaks one thing, as
a damaged download or a hostile author would.
"""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("bioimageio.spec", reason="needs the bmz extra (bioimageio.spec)")
yaml = pytest.importorskip("yaml")

from bmz_fixtures import exported  # noqa: F401  (the session's exported package)
from conftest import tree_digest

from omeloc.cli import main


def _folder(tmp: Path, pkg: Path) -> Path:
    out = tmp / "pkg"
    zipfile.ZipFile(pkg).extractall(out)
    return out


def _edit_rdf(folder: Path, fn) -> Path:
    rdf = folder / "rdf.yaml"
    doc = yaml.safe_load(rdf.read_text())
    fn(doc)
    rdf.write_text(yaml.safe_dump(doc))
    return folder


def _corrupted_zip(tmp, pkg):
    bad = tmp / "bad.zip"
    data = Path(pkg).read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    return bad, "zip"


def _zip_slip(tmp, pkg):
    bad = tmp / "slip.zip"
    with zipfile.ZipFile(pkg) as src, zipfile.ZipFile(bad, "w") as dst:
        for m in src.infolist():
            dst.writestr(m, src.read(m))
        dst.writestr("../../escaped.txt", "x")
    return bad, "leave the package"


def _missing_weights(tmp, pkg):
    folder = _folder(tmp, pkg)
    (folder / "weights_torchscript.pt").unlink()
    return folder, "missing"


def _sha_mismatch(tmp, pkg):
    folder = _folder(tmp, pkg)
    with open(folder / "weights_torchscript.pt", "ab") as f:
        f.write(b"tampered")
    return folder, "sha256"


def _unsupported_weights(tmp, pkg):
    def only_keras(doc):
        doc["weights"] = {"keras_hdf5": {"source": "weights.pt", "tensorflow_version": "2.15.0"}}

    return _edit_rdf(_folder(tmp, pkg), only_keras), "torchscript, onnx, pytorch_state_dict"


def _unsupported_axes(tmp, pkg):
    def add_index(doc):
        doc["inputs"][0]["axes"].insert(2, {"type": "index", "id": "i", "size": 3})

    return _edit_rdf(_folder(tmp, pkg), add_index), "b, c, y, x"


def _impossible_sizes(tmp, pkg):
    def fixed(doc):
        axes = doc["inputs"][0]["axes"]
        axes[2]["size"], axes[3]["size"] = 64, 32

    return _edit_rdf(_folder(tmp, pkg), fixed), "No tile satisfies"


def _not_reproducing(tmp, pkg):
    folder = _folder(tmp, pkg)
    out = np.load(folder / "test_output.npy")
    np.save(folder / "test_output.npy", out + 100.0)
    return folder, "do not reproduce"


def _state_dict_untrusted(tmp, pkg):
    def only_state_dict(doc):
        doc["weights"] = {"pytorch_state_dict": doc["weights"]["pytorch_state_dict"]}

    return _edit_rdf(_folder(tmp, pkg), only_state_dict), "unet.py"


CASES = [
    _corrupted_zip,
    _zip_slip,
    _missing_weights,
    _sha_mismatch,
    _unsupported_weights,
    _unsupported_axes,
    _impossible_sizes,
    _not_reproducing,
    _state_dict_untrusted,
]


@pytest.mark.parametrize("case", CASES, ids=[c.__name__.strip("_") for c in CASES])
def test_bad_package_exits_2_with_one_line_and_leaves_the_plate_untouched(
    case, exported, tmp_path, capsys
):
    plate, _, pkg = exported
    copy = tmp_path / "plate.zarr"
    shutil.copytree(plate, copy)
    before = tree_digest(copy)
    model, words = case(tmp_path, pkg)
    code = main(["predict", str(copy), "--model", str(model)])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and words in err, err
    assert tree_digest(copy) == before
    assert not (tmp_path.parent / "escaped.txt").exists()


def test_state_dict_package_runs_with_trust_code(exported, tmp_path):
    plate, _, pkg = exported
    copy = tmp_path / "plate.zarr"
    shutil.copytree(plate, copy)
    model, _ = _state_dict_untrusted(tmp_path, pkg)
    assert main(["-q", "predict", str(copy), "--model", str(model), "--trust-code"]) == 0
    import omeloc

    record = omeloc.open_plate(copy).images[0].attrs["omeloc"]["channels"]["WAVE2 (virtual)"]
    assert record["weights_format"] == "pytorch_state_dict"


def test_source_maps_plate_channels_to_the_package_inputs(exported, tmp_path, capsys):
    import omeloc

    plate, _, pkg = exported
    copy = tmp_path / "plate.zarr"
    shutil.copytree(plate, copy)
    folder = _edit_rdf(
        _folder(tmp_path, pkg), lambda d: d["inputs"][0]["axes"][1].update(channel_names=["phase"])
    )
    before = tree_digest(copy)
    assert main(["predict", str(copy), "--model", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "'phase'" in err and "--source" in err and tree_digest(copy) == before
    assert main(["-q", "predict", str(copy), "--model", str(folder), "--source", "actin"]) == 0
    record = omeloc.open_plate(copy).images[0].attrs["omeloc"]["channels"]["WAVE2 (virtual)"]
    assert record["package_source_map"] == {"phase": "actin"}
