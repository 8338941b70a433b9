"""The train widget: :func:`omeloc.learn.training.train` with a live learning curve in the dock.

A thin adapter over the job ``omeloc train`` calls.  Progress is the job's ``progress(done,
total)`` callback; the curve is the job's own log (``DIR/train_log.csv``, rewritten at every
validation, when the training state is saved), read back when it changes.  At the end the
checkpoint folder is handed to the predict widgets of the viewer.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    LineEdit,
    ProgressBar,
    PushButton,
    SpinBox,
)
from matplotlib.figure import Figure

from omeloc.config import MODELS, csv_list
from omeloc.napari._plate import plate_of_layers
from omeloc.napari._progress import Snapshot, Tracker
from omeloc.napari._worker import Job, describe_error

__all__ = ["TrainWidget", "run_train"]


def _log_rows(path: Path) -> list[dict[str, Any]]:
    from omeloc.learn.log import TrainLog

    return TrainLog.resume(path, upto=2**62).rows


def run_train(
    plate: str,
    source: list[str],
    target: list[str],
    out: str,
    *,
    tracker: Tracker,
    note: Callable[[Any], None],
    overwrite: bool,
    **config: Any,
) -> Any:
    """On the worker: the job, its ``progress`` also sending the log's rows whenever they change."""
    from omeloc.learn.log import LOG_FILE
    from omeloc.learn.training import train

    log, seen = Path(out) / LOG_FILE, [None]

    def progress(done: int, total: int) -> None:
        tracker(done, total)
        stamp = log.stat().st_mtime_ns if log.exists() else None
        if stamp != seen[0]:
            seen[0] = stamp
            note(_log_rows(log))

    res = train(
        plate,
        source,
        target,
        out=out,
        overwrite=overwrite,
        progress=progress,
        report=lambda line: note(line),
        **config,
    )
    note(res.history or _log_rows(Path(res.log)))
    return res


class TrainWidget(Container):
    """Train a model on the plate open in the viewer; watch its learning curve."""

    def __init__(self, napari_viewer: Any) -> None:
        # Qt only when a widget is built
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg

        self.viewer = napari_viewer
        self.plate = LineEdit(
            label="plate", tooltip="path or URL; empty: the plate open in the viewer"
        )
        self.source = LineEdit(
            label="source", value="actin", tooltip="input channel(s), e.g. actin"
        )
        self.target = LineEdit(
            label="target", value="WAVE2", tooltip="channel to predict, e.g. WAVE2"
        )
        self.val_wells = LineEdit(
            label="validation wells", tooltip="e.g. B3; empty: every fourth well"
        )
        self.minutes = FloatSpinBox(
            label="minutes",
            value=2.0,
            min=0.0,
            max=24 * 60.0,
            step=0.5,
            tooltip="time budget; 0: no budget (the steps below)",
        )
        self.steps = SpinBox(
            label="steps",
            value=0,
            min=0,
            max=10**7,
            tooltip="optimizer steps (with a budget: at most this many); 0: the default",
        )
        self.model = ComboBox(label="model", choices=list(MODELS), value=MODELS[0])
        self.crop = SpinBox(
            label="crop",
            value=0,
            min=0,
            max=4096,
            step=16,
            tooltip="crop side in pixels; 0: the device default",
        )
        self.out = FileEdit(
            label="checkpoint",
            mode="d",
            tooltip="checkpoint folder; empty: omeloc-models/<source>-<target> beside the plate",
        )
        self.overwrite = CheckBox(text="replace a checkpoint in that folder")
        self.train_button = PushButton(text="Train")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(value=0, max=100, label="progress")
        self.status = Label(value="")
        self.message = Label(value="")
        self.message.native.setWordWrap(True)
        self.figure = Figure(figsize=(4, 2.6), dpi=80, tight_layout=True)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(180)
        super().__init__(
            widgets=[
                self.plate,
                self.source,
                self.target,
                self.val_wells,
                self.minutes,
                self.steps,
                self.model,
                self.crop,
                self.out,
                self.overwrite,
                Container(
                    widgets=[self.train_button, self.cancel_button],
                    layout="horizontal",
                    labels=False,
                ),
                self.progress,
                self.status,
                self.message,
            ]
        )
        self.native.layout().addWidget(self.canvas)
        self.job: Job | None = None
        self.result: Any = None
        self.rows: list[dict[str, Any]] = []
        self.train_button.changed.connect(self.start)
        self.cancel_button.changed.connect(self.cancel)
        self.draw_curve([])

    def plate_path(self) -> str | None:
        """The plate typed in, else the one the viewer shows."""
        typed = self.plate.value.strip()
        return typed or plate_of_layers(self.viewer.layers, self.viewer.layers.selection.active)

    def _out_path(self, plate: str, source: list[str], target: list[str]) -> str:
        text = str(self.out.value or "").strip()
        if text not in ("", "."):
            return text
        base = Path(plate).parent if "://" not in plate else Path.cwd()
        return str(base / "omeloc-models" / f"{'+'.join(source)}-{'+'.join(target)}")

    def start(self) -> None:
        """Check the form and start training on a worker."""
        if self.job is not None and self.job.running:
            return
        plate = self.plate_path()
        if plate is None:
            self.message.value = (
                "error: no plate: open an OME-Zarr plate in the viewer "
                "(napari-ome-zarr) or type its path or URL in 'plate'."
            )
            return
        source, target = csv_list(self.source.value), csv_list(self.target.value)
        if not source or not target:
            self.message.value = (
                "error: no source or target channel: type their names (e.g. actin, WAVE2)."
            )
            return
        out = self._out_path(plate, source, target)
        config: dict[str, Any] = {"model": self.model.value}
        if self.val_wells.value.strip():
            config["val_wells"] = tuple(csv_list(self.val_wells.value))
        if self.minutes.value > 0:
            config["minutes"] = float(self.minutes.value)
        for key, widget in (("steps", self.steps), ("crop", self.crop)):
            if widget.value > 0:
                config[key] = int(widget.value)
        self.rows, self.result = [], None
        self.draw_curve([])
        self.message.value = f"training {'+'.join(source)} → {'+'.join(target)} into {out} …"
        self._busy(True)
        self.job = Job(
            lambda tracker, note: run_train(
                plate,
                source,
                target,
                out,
                tracker=tracker,
                note=note,
                overwrite=self.overwrite.value,
                **config,
            ),
            on_progress=self._progressed,
            on_done=self._done,
            on_error=self._failed,
            on_note=self._noted,
            on_finish=lambda: self._busy(False),
            unit="step",
            outcome="the last saved state stays in the checkpoint folder (train again with resume)",
        )

    def cancel(self) -> None:
        """Stop training at the next step."""
        if self.job is not None and self.job.running:
            self.job.cancel()
            self.status.value = "cancelling …"

    def _busy(self, busy: bool) -> None:
        self.train_button.enabled = not busy
        self.cancel_button.enabled = busy

    def _progressed(self, snap: Snapshot) -> None:
        self.progress.value = snap.percent
        self.status.value = snap.text().removeprefix(f"stage {snap.stage}: ")

    def _noted(self, obj: Any) -> None:
        if isinstance(obj, str):
            self.status.value = obj
        else:
            self.rows = list(obj)
            self.draw_curve(self.rows)

    def draw_curve(self, rows: list[dict[str, Any]]) -> None:
        """Train and validation L1 against the step."""
        self.figure.clear()
        ax = self.figure.add_subplot(1, 1, 1)
        train = [(r["step"], r["l1"]) for r in rows if r.get("l1") not in (None, "")]
        val = [(r["step"], r["val_l1"]) for r in rows if r.get("val_l1") not in (None, "")]
        if train:
            ax.plot(*zip(*train), lw=1, label="train L1")
        if val:
            ax.plot(*zip(*val), "o-", ms=3, label="validation L1")
        ax.set_xlabel("step")
        ax.set_ylabel("L1 loss")
        if train or val:
            ax.legend(fontsize=8)
        self.canvas.draw_idle()

    def curve_lines(self) -> dict[str, int]:
        """Points drawn per curve (what the widget shows; for tests and scripts)."""
        return {
            line.get_label(): len(line.get_xdata())
            for ax in self.figure.axes
            for line in ax.get_lines()
        }

    def _done(self, res: Any) -> None:
        from omeloc.napari._predict import predict_widgets

        self.result = res
        self.progress.value = 100
        handed = predict_widgets(self.viewer)
        for widget in handed:
            widget.set_model(res.checkpoint)
        self.message.value = res.summary() + (
            "\ncheckpoint handed to the predict widget" if handed else ""
        )

    def _failed(self, err: BaseException) -> None:
        self.message.value = describe_error(err)
