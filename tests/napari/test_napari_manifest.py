"""The npe2 manifest: valid for npe2, found through the ``napari.manifest`` entry point, and its
sample data opens the synthetic plate in a real viewer."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

npe2 = pytest.importorskip("npe2")

from napari_gui import GUI

MANIFEST = Path(__file__).resolve().parents[2] / "omeloc" / "napari" / "napari.yaml"


def test_npe2_validates_the_manifest():
    run = subprocess.run(
        [sys.executable, "-m", "npe2", "validate", str(MANIFEST)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "valid" in run.stdout


def test_the_installed_package_declares_the_manifest_napari_finds():
    from importlib.metadata import entry_points

    found = [ep for ep in entry_points(group="napari.manifest") if ep.name == "omeloc"]
    if not found:
        pytest.skip("omeloc is not installed in this environment (pip install -e '.[napari]')")
    pm = npe2.PluginManager.instance()
    pm.discover()
    manifest = pm.get_manifest("omeloc")
    assert {w.display_name for w in manifest.contributions.widgets} == {
        "Predict",
        "Train",
        "Evaluate",
    }
    assert [s.key for s in manifest.contributions.sample_data] == ["synthetic_plate"]
    from npe2.manifest.utils import import_python_name

    for (
        command
    ) in manifest.contributions.commands:  # every command names a callable of omeloc.napari
        assert callable(import_python_name(command.python_name)), command.python_name


@GUI
def test_open_sample_shows_the_synthetic_plate_and_the_widgets_find_it(make_napari_viewer):
    import omeloc
    from omeloc.napari._predict import PredictWidget

    viewer = make_napari_viewer()
    viewer.open_sample("omeloc", "synthetic_plate")
    names = [layer.name for layer in viewer.layers]
    assert names == [
        f"0: {c}" for c in ("actin", "WAVE2", "IRSp53", "vinculin", "tubulin", "nuclei")
    ]
    widget = PredictWidget(viewer)
    plate = widget.plate_path()
    assert plate is not None and omeloc.open_plate(plate).channel_names[0] == "actin"
    assert viewer.layers[0].data[0].shape == (2 * 256, 3 * 256)  # the plate grid of 2 x 3 wells
