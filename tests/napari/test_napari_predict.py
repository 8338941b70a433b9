"""The predict widget, end to end in a real napari viewer (under Xvfb): layers, plate on disk,
cancel, bad input."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from conftest import assert_same_pixels, tree_digest
from napari_gui import GUI, TIMEOUT_MS, wait_for

import omeloc
from omeloc.napari._predict import PredictWidget

pytestmark = GUI
pytest_plugins = ("napari_gui",)  # its fixtures: gui_trained, gui_plate


def open_in_viewer(make_napari_viewer, plate: Path):
    viewer = make_napari_viewer()
    viewer.open(str(plate), plugin="napari-ome-zarr")
    widget = PredictWidget(viewer)
    viewer.window.add_dock_widget(widget, name="omeloc predict")
    return viewer, widget


def run_and_wait(qtbot, widget: PredictWidget, dry_run: bool = False) -> None:
    (widget.dry_run_button if dry_run else widget.run_button).clicked.emit()
    wait_for(qtbot, widget)


def omero_entry(plate: Path, label: str) -> dict:
    img = omeloc.open_plate(plate).images[0]
    return img.omero["channels"][img.channel_index(label)]


def omero_window(plate: Path, label: str) -> list[float]:
    window = omero_entry(plate, label)["window"]
    return [window["start"], window["end"]]


def omero_rgb(plate: Path, label: str) -> list[float]:
    color = omero_entry(plate, label)["color"]
    return [int(color[i : i + 2], 16) / 255 for i in (0, 2, 4)]


def test_predict_from_the_widget_writes_the_channel_and_shows_it_beside_the_real_ones(
    make_napari_viewer, qtbot, gui_plate, gui_trained
):
    _, checkpoint, reference = gui_trained
    viewer, widget = open_in_viewer(make_napari_viewer, gui_plate)
    real = [layer.name for layer in viewer.layers]
    assert real == ["0: actin", "0: WAVE2"]
    widget.model.value = checkpoint  # the plate comes from the layers the viewer shows
    run_and_wait(qtbot, widget)
    assert widget.result is not None, widget.message.value
    assert widget.message.value.startswith("wrote channel 'WAVE2 (virtual)'")
    # the plate on disk holds the channel, with the same pixels as the API's uninterrupted run
    assert omeloc.open_plate(gui_plate).channel_names == ("actin", "WAVE2", "WAVE2 (virtual)")
    assert_same_pixels(gui_plate, reference)
    # one new layer beside the real ones: named as they are, omero's contrast limits and colour,
    # same scale
    assert [layer.name for layer in viewer.layers] == [*real, "0: WAVE2 (virtual)"]
    virtual, wave2 = viewer.layers["0: WAVE2 (virtual)"], viewer.layers["0: WAVE2"]
    np.testing.assert_allclose(virtual.contrast_limits, omero_window(gui_plate, "WAVE2 (virtual)"))
    np.testing.assert_allclose(virtual.scale, wave2.scale)
    assert virtual.data[0].shape == wave2.data[0].shape and virtual.multiscale
    np.testing.assert_allclose(
        virtual.colormap.colors[-1][:3], omero_rgb(gui_plate, "WAVE2 (virtual)"), atol=1e-6
    )
    assert widget.progress.value == 100 and "ETA" in widget.status.value


def test_uncertainty_toggle_adds_the_uncertainty_layer_too(
    make_napari_viewer, qtbot, gui_plate, gui_trained
):
    viewer, widget = open_in_viewer(make_napari_viewer, gui_plate)
    widget.model.value = gui_trained[1]
    widget.uncertainty.value = True
    run_and_wait(qtbot, widget)
    assert widget.result is not None, widget.message.value
    names = [layer.name for layer in viewer.layers]
    assert names[2:] == ["0: WAVE2 (virtual)", "0: WAVE2 (uncertainty)"]
    for label in ("WAVE2 (virtual)", "WAVE2 (uncertainty)"):
        np.testing.assert_allclose(
            viewer.layers[f"0: {label}"].contrast_limits, omero_window(gui_plate, label)
        )
    assert omeloc.open_plate(gui_plate).channel_names[2:] == (
        "WAVE2 (virtual)",
        "WAVE2 (uncertainty)",
    )


def test_dry_run_says_what_would_be_written_and_writes_nothing(
    make_napari_viewer, qtbot, gui_plate, gui_trained
):
    before = tree_digest(gui_plate)
    viewer, widget = open_in_viewer(make_napari_viewer, gui_plate)
    widget.model.value = gui_trained[1]
    widget.wells.value = "A1"
    run_and_wait(qtbot, widget, dry_run=True)
    assert widget.message.value.startswith("dry run: would write channel 'WAVE2 (virtual)'"), (
        widget.message.value
    )
    assert "predicting 1 image(s)" in widget.message.value
    assert len(viewer.layers) == 2
    assert tree_digest(gui_plate) == before


def test_cancel_mid_run_leaves_the_plate_byte_for_byte_as_before(
    make_napari_viewer, qtbot, tmp_path, gui_trained, caplog
):
    big = omeloc.make_plate(
        tmp_path / "big.zarr",
        rows=2,
        cols=4,
        fields=2,
        size=128,
        chunks=(32, 32),
        levels=2,
        channels=("actin", "WAVE2"),
    )
    before = tree_digest(big)
    viewer, widget = open_in_viewer(make_napari_viewer, big)
    widget.model.value = gui_trained[1]
    caplog.set_level(logging.INFO, logger="omeloc")
    widget.run_button.clicked.emit()
    qtbot.waitUntil(
        lambda: widget.last_progress is not None and widget.last_progress.done >= 1,
        timeout=TIMEOUT_MS,
    )
    widget.cancel_button.clicked.emit()
    qtbot.waitUntil(lambda: not widget.job.running, timeout=TIMEOUT_MS)
    assert widget.message.value.startswith("cancelled: "), widget.message.value
    assert "rolled back" in widget.message.value
    assert "rolling back" in caplog.text  # the write had begun: the write-back rolled it back
    assert tree_digest(big) == before
    assert len(viewer.layers) == 2
    assert widget.run_button.enabled and not widget.cancel_button.enabled


def test_no_plate_is_refused_in_the_widget(make_napari_viewer, gui_trained):
    viewer = make_napari_viewer()
    widget = PredictWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.model.value = gui_trained[1]
    widget.run_button.clicked.emit()
    assert widget.job is None
    assert widget.message.value.startswith("error: no plate: open an OME-Zarr plate in the viewer")


@pytest.mark.parametrize(
    ("channels", "name", "expected"),
    [
        (
            ("tubulin", "WAVE2"),
            "",
            "does not have",
        ),  # the model's source channel (actin) is missing
        (
            ("actin", "WAVE2"),
            "WAVE2",
            "already exists",
        ),  # the target name is a channel of the plate
    ],
)
def test_bad_input_is_said_in_the_widget_and_nothing_is_written(
    make_napari_viewer, qtbot, tmp_path, gui_trained, channels, name, expected
):
    other = omeloc.make_plate(
        tmp_path / "other.zarr",
        rows=1,
        cols=2,
        fields=1,
        size=96,
        chunks=(48, 48),
        levels=2,
        channels=channels,
    )
    before = tree_digest(other)
    viewer, widget = open_in_viewer(make_napari_viewer, other)
    widget.model.value = gui_trained[1]
    widget.channel_name.value = name
    run_and_wait(qtbot, widget)
    message = widget.message.value
    assert message.startswith("error: ") and expected in message, message
    assert "Use a model trained on" in message or "Choose another name" in message  # the fix
    assert widget.result is None and len(viewer.layers) == 2
    assert tree_digest(other) == before
