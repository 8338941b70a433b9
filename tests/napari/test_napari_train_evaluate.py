"""The train and evaluate widgets in a real napari viewer (under Xvfb)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from napari_gui import GUI, wait_for

from omeloc.napari._evaluate import EvaluateWidget
from omeloc.napari._predict import PredictWidget
from omeloc.napari._train import TrainWidget

pytestmark = GUI
pytest_plugins = ("napari_gui",)  # its fixtures: gui_trained, gui_plate


def test_train_widget_draws_the_curve_and_hands_the_checkpoint_to_the_predict_widget(
    make_napari_viewer, qtbot, gui_plate, tmp_path
):
    viewer = make_napari_viewer()
    viewer.open(str(gui_plate), plugin="napari-ome-zarr")
    predict, train = PredictWidget(viewer), TrainWidget(viewer)
    viewer.window.add_dock_widget(predict)
    viewer.window.add_dock_widget(train)
    train.val_wells.value = "A2"
    train.minutes.value = 0
    train.steps.value = 3
    train.crop.value = 32
    train.out.value = tmp_path / "model"
    train.train_button.clicked.emit()
    wait_for(qtbot, train)
    assert train.result is not None, train.message.value
    checkpoint = Path(train.result.checkpoint)
    meta = json.loads((checkpoint / "checkpoint.json").read_text())
    assert meta["source"] == ["actin"] and meta["target"] == ["WAVE2"]
    assert (checkpoint / "weights.pt").is_file()
    lines = train.curve_lines()
    assert (
        lines["train L1"] == lines["validation L1"] == 3
    )  # one row per step, validated every step
    assert [r["step"] for r in train.rows] == [1, 2, 3]
    assert Path(str(predict.model.value)) == checkpoint
    assert "checkpoint handed to the predict widget" in train.message.value
    assert train.progress.value == 100


def test_train_widget_says_a_missing_channel_and_writes_nothing(
    make_napari_viewer, qtbot, gui_plate, tmp_path
):
    viewer = make_napari_viewer()
    viewer.open(str(gui_plate), plugin="napari-ome-zarr")
    train = TrainWidget(viewer)
    viewer.window.add_dock_widget(train)
    train.target.value = "tubulin"
    train.out.value = tmp_path / "model"
    train.train_button.clicked.emit()
    wait_for(qtbot, train)
    assert train.message.value.startswith("error: ") and "tubulin" in train.message.value
    assert not (tmp_path / "model").exists()


def test_evaluate_widget_fills_a_sortable_table_and_a_click_on_a_well_moves_the_viewer_there(
    make_napari_viewer, qtbot, gui_trained, tmp_path
):
    from matplotlib.backend_bases import MouseEvent
    from qtpy.QtCore import Qt

    reference = gui_trained[2]
    viewer = make_napari_viewer()
    viewer.open(str(reference), plugin="napari-ome-zarr")
    widget = EvaluateWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.out.value = tmp_path / "eval"
    widget.run_button.clicked.emit()
    wait_for(qtbot, widget)
    assert widget.result is not None, widget.message.value
    assert (tmp_path / "eval" / "wells.csv").is_file()
    table = widget.table
    headers = [table.horizontalHeaderItem(j).text() for j in range(table.columnCount())]
    assert table.rowCount() == 2 and headers[0] == "well" and "pearson_r" in headers
    col = headers.index("pearson_r")
    table.sortItems(col, Qt.DescendingOrder)
    shown = [table.item(i, col).data(Qt.DisplayRole) for i in range(2)]
    expected = sorted((round(w["pearson_r"], 4) for w in widget.result.wells), reverse=True)
    assert shown == expected  # numbers, sorted as numbers
    # a click on a row of the table: the camera goes to that well's tile of the plate grid (A/2: the
    # right half)
    row = [table.item(i, 0).text() for i in range(2)].index("A2")
    qtbot.mouseClick(
        table.viewport(), Qt.LeftButton, pos=table.visualItemRect(table.item(row, 0)).center()
    )
    layer = viewer.layers["0: actin"]
    h, w = layer.data[0].shape
    np.testing.assert_allclose(
        viewer.camera.center[-2:], layer.data_to_world([h / 2, 3 * w / 4])[-2:]
    )
    assert widget.message.value.startswith("well A/2: pearson_r ")
    # a click on the heat map's cell of A/1
    ax = widget.figure.axes[0]
    widget.canvas.draw()
    x, y = ax.transData.transform((0, 0))
    MouseEvent("button_press_event", widget.canvas, x, y, button=1)._process()
    np.testing.assert_allclose(viewer.camera.center[-2:], layer.data_to_world([h / 2, w / 4])[-2:])
    assert widget.message.value.startswith("well A/1")
