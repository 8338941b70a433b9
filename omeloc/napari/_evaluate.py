"""The evaluate widget: :func:`omeloc.analysis.evaluate.evaluate`, per-well metrics as a sortable
table and a plate heat map; clicking a well (in either) moves the viewer to it.

A thin adapter over the job ``omeloc evaluate`` calls (its CSV, heat map and montage are
written into the output folder as there); the heat map in the dock is drawn from the job's
per-well rows with :func:`omeloc.analysis.figures.plate_grid`, the layout the PNG uses.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from magicgui.widgets import ComboBox, Container, FileEdit, Label, LineEdit, ProgressBar, PushButton
from matplotlib.figure import Figure

from omeloc.analysis.metrics import METRIC_NAMES
from omeloc.napari._plate import plate_of_layer, plate_of_layers, well_box
from omeloc.napari._progress import Snapshot, Tracker
from omeloc.napari._worker import Job, describe_error

__all__ = ["EvaluateWidget", "run_evaluate"]

#: per-well columns shown after the well (those the rows have, in this order)
COLUMNS = ("n_fields", *METRIC_NAMES, "z", "flag")


def run_evaluate(
    plate: str, pred: str, truth: str, out: str, metric: str, *, tracker: Tracker
) -> Any:
    """On the worker: the job, and the plate's row and column names (for the heat map)."""
    from omeloc.analysis.evaluate import evaluate
    from omeloc.ngff.plate import open_plate

    opened = open_plate(plate)
    res = evaluate(opened, pred, truth, out=out, metric=metric, progress=tracker)
    return res, opened.rows, opened.columns


class EvaluateWidget(Container):
    """Score a virtual channel against the real one; judge the result well by well."""

    def __init__(self, napari_viewer: Any) -> None:
        # Qt only when a widget is built
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from qtpy.QtWidgets import QAbstractItemView, QTableWidget

        self.viewer = napari_viewer
        self.plate = LineEdit(
            label="plate", tooltip="path or URL; empty: the plate open in the viewer"
        )
        self.pred = LineEdit(
            label="virtual", value="WAVE2 (virtual)", tooltip="the virtual channel"
        )
        self.truth = LineEdit(label="real", value="WAVE2", tooltip="the real channel")
        self.metric = ComboBox(
            label="metric",
            choices=list(METRIC_NAMES),
            value="pearson_r",
            tooltip="the metric of the heat map",
        )
        self.out = FileEdit(
            label="output",
            mode="d",
            tooltip="folder for tables and figures; empty: <plate>-evaluation beside the plate",
        )
        self.run_button = PushButton(text="Evaluate")
        self.progress = ProgressBar(value=0, max=100, label="progress")
        self.message = Label(value="")
        self.message.native.setWordWrap(True)
        self.table = QTableWidget(0, 0)
        self.table.setSortingEnabled(True)
        self.table.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.table.setMinimumHeight(160)
        self.figure = Figure(figsize=(4, 2.4), dpi=80, tight_layout=True)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(160)
        super().__init__(
            widgets=[
                self.plate,
                self.pred,
                self.truth,
                self.metric,
                self.out,
                self.run_button,
                self.progress,
                self.message,
            ]
        )
        self.native.layout().addWidget(self.table)
        self.native.layout().addWidget(self.canvas)
        self.job: Job | None = None
        self.result: Any = None
        self.rows: tuple[str, ...] = ()
        self.columns: tuple[str, ...] = ()
        self.run_button.changed.connect(self.start)
        self.table.cellClicked.connect(self._table_clicked)
        self.canvas.mpl_connect("button_press_event", self._heatmap_clicked)

    def plate_path(self) -> str | None:
        """The plate typed in, else the one the viewer shows."""
        typed = self.plate.value.strip()
        return typed or plate_of_layers(self.viewer.layers, self.viewer.layers.selection.active)

    def start(self) -> None:
        """Start the evaluation on a worker (the plate is only read)."""
        if self.job is not None and self.job.running:
            return
        plate = self.plate_path()
        if plate is None:
            self.message.value = (
                "error: no plate: open an OME-Zarr plate in the viewer "
                "(napari-ome-zarr) or type its path or URL in 'plate'."
            )
            return
        text = str(self.out.value or "").strip()
        out = (
            text
            if text not in ("", ".")
            else str(
                Path(plate.rstrip("/")).with_name(Path(plate.rstrip("/")).stem + "-evaluation")
            )
        )
        pred, truth, metric = self.pred.value.strip(), self.truth.value.strip(), self.metric.value
        self.message.value = f"evaluating {pred!r} against {truth!r} …"
        self.run_button.enabled = False
        self.job = Job(
            lambda tracker, note: run_evaluate(plate, pred, truth, out, metric, tracker=tracker),
            on_progress=self._progressed,
            on_done=self._done,
            on_error=self._failed,
            on_finish=lambda: setattr(self.run_button, "enabled", True),
            unit="field",
        )

    def _progressed(self, snap: Snapshot) -> None:
        self.progress.value = snap.percent

    def _failed(self, err: BaseException) -> None:
        self.message.value = describe_error(err)

    def _done(self, outcome: tuple[Any, tuple[str, ...], tuple[str, ...]]) -> None:
        res, self.rows, self.columns = outcome
        self.result = res
        self.progress.value = 100
        mean = res.summary.get("fields_mean", {}).get(self.metric.value, float("nan"))
        flagged = f"; flagged: {', '.join(res.flagged)}" if res.flagged else ""
        self.message.value = (
            f"{len(res.fields)} field(s) in {len(res.wells)} well(s): mean {self.metric.value} "
            f"{mean:.3f}{flagged}; tables and figures in {Path(res.files['summary_json']).parent}"
        )
        self.fill_table(res.wells)
        self.draw_heatmap(res.wells)

    # -- table and heat map -------------------------------------------------------------
    def fill_table(self, wells: list[dict[str, Any]]) -> None:
        """One sortable row per well (numbers sort as numbers)."""
        from qtpy.QtCore import Qt
        from qtpy.QtWidgets import QTableWidgetItem

        columns = ["well"] + [c for c in COLUMNS if wells and c in wells[0]]
        self.table.setSortingEnabled(False)
        self.table.clear()
        self.table.setColumnCount(len(columns))
        self.table.setRowCount(len(wells))
        self.table.setHorizontalHeaderLabels(columns)
        for i, row in enumerate(wells):
            for j, key in enumerate(columns):
                value = row.get(key)
                item = QTableWidgetItem()
                if isinstance(value, (int, float, np.floating)) and not isinstance(value, bool):
                    number = float(value)
                    item.setData(
                        Qt.DisplayRole, round(number, 4) if math.isfinite(number) else number
                    )
                else:
                    item.setText("" if value is None else str(value))
                if j == 0:
                    item.setData(Qt.UserRole + 1, row.get("path", str(value)))
                self.table.setItem(i, j, item)
        self.table.setSortingEnabled(True)
        self.table.resizeColumnsToContents()

    def draw_heatmap(self, wells: list[dict[str, Any]]) -> None:
        """The heat map's metric per well, laid out as the plate (click a well to go to it)."""
        from omeloc.analysis.figures import plate_grid

        metric = self.metric.value
        grid = plate_grid(
            {w["path"]: w.get(metric, float("nan")) for w in wells}, self.rows, self.columns
        )
        self.figure.clear()
        ax = self.figure.add_subplot(1, 1, 1)
        image = ax.imshow(np.ma.masked_invalid(grid), cmap="viridis", interpolation="nearest")
        ax.set_xticks(range(len(self.columns)), self.columns)
        ax.set_yticks(range(len(self.rows)), self.rows)
        ax.xaxis.tick_top()
        self.figure.colorbar(image, ax=ax, label=metric)
        self.canvas.draw_idle()

    def _table_clicked(self, row: int, _column: int) -> None:
        from qtpy.QtCore import Qt

        item = self.table.item(row, 0)
        if item is not None:
            self.go_to_well(str(item.data(Qt.UserRole + 1)))

    def _heatmap_clicked(self, event: Any) -> None:
        if event.inaxes is None or event.xdata is None or not self.rows:
            return
        r, c = round(event.ydata), round(event.xdata)
        if 0 <= r < len(self.rows) and 0 <= c < len(self.columns):
            self.go_to_well(f"{self.rows[r]}/{self.columns[c]}")

    def go_to_well(self, well: str) -> tuple[float, float] | None:
        """Centre the viewer on ``well`` (``"B/3"``) of the plate grid and zoom to it; the world
        centre."""
        plate = self.plate_path()
        layer = next(
            (lyr for lyr in self.viewer.layers if plate and plate_of_layer(lyr) == plate), None
        )
        if layer is None or not self.rows:
            return None
        shape = (layer.data[0] if layer.multiscale else layer.data).shape
        y0, x0, y1, x1 = well_box(self.rows, self.columns, well, shape)
        lead = [0.0] * (len(shape) - 2)
        a, b = layer.data_to_world(lead + [y0, x0]), layer.data_to_world(lead + [y1, x1])
        center = ((a[-2] + b[-2]) / 2, (a[-1] + b[-1]) / 2)
        self.viewer.reset_view()
        self.viewer.camera.center = center
        self.viewer.camera.zoom = (
            self.viewer.camera.zoom * 0.9 * min(len(self.rows), len(self.columns))
        )
        self.message.value = f"well {well}" + self._well_text(well)
        return center

    def _well_text(self, well: str) -> str:
        row = next(
            (w for w in (self.result.wells if self.result else []) if w["path"] == well), None
        )
        metric = self.metric.value
        return f": {metric} {row[metric]:.3f}" if row and isinstance(row.get(metric), float) else ""
