"""The predict widget: :func:`omeloc.jobs.predict.predict` on the plate open in the viewer.

A thin adapter: the form's values go to the same job function ``omeloc predict`` calls, on a
napari thread worker; the job's errors (one line naming the problem and the fix) are shown
as they are; Cancel stops the pixel graph at its next task and the write-back rolls the plate
back.  When the run ends, the new channel(s) are read back with napari-ome-zarr and added
beside the real ones.
"""

from __future__ import annotations

import weakref
from pathlib import Path
from typing import Any

from magicgui.widgets import CheckBox, Container, FileEdit, Label, LineEdit, ProgressBar, PushButton

from omeloc.config import csv_list
from omeloc.napari._plate import channel_layers, plate_of_layers
from omeloc.napari._progress import Snapshot, TaskProgress, Tracker
from omeloc.napari._worker import Job, describe_error

__all__ = ["PredictWidget", "predict_widgets"]

_LIVE: weakref.WeakSet = weakref.WeakSet()


def predict_widgets(viewer: Any) -> list[PredictWidget]:
    """The predict widgets docked in ``viewer`` (the train widget hands them its checkpoint)."""
    return [w for w in list(_LIVE) if w.viewer is viewer]


def run_predict(
    plate: str,
    model: str,
    *,
    name: str | None,
    wells: list[str] | None,
    tta: bool,
    uncertainty: bool,
    overwrite: bool,
    dry_run: bool,
    tracker: Tracker,
) -> tuple[Any, list]:
    """On the worker: the job (its Dask tasks counted by ``tracker``), then the new layers' data."""
    from omeloc.jobs.predict import predict
    from omeloc.ngff.plate import open_plate

    with TaskProgress(tracker):
        res = predict(
            plate,
            model,
            name=name,
            wells=wells,
            overwrite=overwrite,
            dry_run=dry_run,
            progress=False,
            tta=tta,
            uncertainty=uncertainty,
        )
    if res.dry_run:
        return res, []
    names = [res.name] + ([res.uncertainty] if res.uncertainty else [])
    return res, channel_layers(res.plate, names, open_plate(res.plate).channel_names)


class PredictWidget(Container):
    """Predict a virtual channel into the plate open in the viewer (or one given by path/URL)."""

    def __init__(self, napari_viewer: Any) -> None:
        self.viewer = napari_viewer
        self.plate = LineEdit(
            label="plate", tooltip="path or URL; empty: the plate open in the viewer"
        )
        self.model = FileEdit(
            label="model",
            mode="d",
            tooltip="checkpoint folder written by omeloc train (or a model package)",
        )
        self.channel_name = LineEdit(
            label="name", tooltip="label of the new channel; empty: '<target> (virtual)'"
        )
        self.wells = LineEdit(label="wells", tooltip="e.g. B2,B3; empty: all wells")
        self.tta = CheckBox(text="test-time augmentation (8x compute)")
        self.uncertainty = CheckBox(text="uncertainty channel (implies TTA)")
        self.overwrite = CheckBox(text="replace a virtual channel of that name")
        self.dry_run_button = PushButton(text="Dry run")
        self.run_button = PushButton(text="Run")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(value=0, max=100, label="progress")
        self.status = Label(value="")
        self.message = Label(value="")
        self.message.native.setWordWrap(True)
        self.status.native.setWordWrap(True)
        super().__init__(
            widgets=[
                self.plate,
                self.model,
                self.channel_name,
                self.wells,
                self.tta,
                self.uncertainty,
                self.overwrite,
                Container(
                    widgets=[self.dry_run_button, self.run_button, self.cancel_button],
                    layout="horizontal",
                    labels=False,
                ),
                self.progress,
                self.status,
                self.message,
            ]
        )
        self.job: Job | None = None
        self.result: Any = None
        self.last_progress: Snapshot | None = None
        self.rate: float | None = None
        """Megapixels per second of the last run in this widget (for the dry run's time
        estimate)."""
        self.dry_run_button.changed.connect(lambda: self.start(dry_run=True))
        self.run_button.changed.connect(lambda: self.start(dry_run=False))
        self.cancel_button.changed.connect(self.cancel)
        _LIVE.add(self)

    # -- the form ------------------------------------------------------------------------
    def plate_path(self) -> str | None:
        """The plate typed in, else the one the viewer shows."""
        typed = self.plate.value.strip()
        if typed:
            return typed
        return plate_of_layers(self.viewer.layers, self.viewer.layers.selection.active)

    def set_model(self, checkpoint: str | Path) -> None:
        """Use ``checkpoint`` as the model (the train widget calls this when it ends)."""
        self.model.value = Path(checkpoint)

    def _model_path(self) -> str | None:
        text = str(self.model.value or "").strip()
        return None if text in ("", ".") else text

    # -- the run ------------------------------------------------------------------------
    def start(self, dry_run: bool) -> None:
        """Check the form and start the job on a worker (a dry run writes nothing)."""
        if self.job is not None and self.job.running:
            return
        plate, model = self.plate_path(), self._model_path()
        if plate is None:
            self.message.value = (
                "error: no plate: open an OME-Zarr plate in the viewer "
                "(napari-ome-zarr) or type its path or URL in 'plate'."
            )
            return
        if model is None:
            self.message.value = (
                "error: no model: choose the checkpoint folder written by omeloc train."
            )
            return
        wells = csv_list(self.wells.value) if self.wells.value.strip() else None
        kwargs = {
            "name": self.channel_name.value.strip() or None,
            "wells": wells,
            "tta": self.tta.value,
            "uncertainty": self.uncertainty.value,
            "overwrite": self.overwrite.value,
            "dry_run": dry_run,
        }
        self.message.value = f"{'planning' if dry_run else 'predicting'} {plate} …"
        self.progress.value, self.last_progress, self.result = 0, None, None
        self._busy(True)
        self.job = Job(
            lambda tracker, note: run_predict(plate, model, tracker=tracker, **kwargs),
            on_progress=self._progressed,
            on_done=self._done,
            on_error=self._failed,
            on_finish=lambda: self._busy(False),
        )

    def cancel(self) -> None:
        """Stop the run; the write-back rolls the plate back as it was."""
        if self.job is not None and self.job.running:
            self.job.cancel()
            self.status.value = "cancelling …"

    def _busy(self, busy: bool) -> None:
        self.run_button.enabled = self.dry_run_button.enabled = not busy
        self.cancel_button.enabled = busy

    def _progressed(self, snap: Snapshot) -> None:
        self.last_progress = snap
        self.progress.value = snap.percent
        self.status.value = snap.text()

    def _done(self, outcome: tuple[Any, list]) -> None:
        res, layers = outcome
        self.result = res
        self.message.value = res.summary()
        if res.dry_run:
            self.message.value += "\n" + self._estimate(res.megapixels)
            return
        self.rate = res.megapixels_per_second
        self.progress.value = 100
        for data, kwargs, _ in layers:
            if kwargs["name"] in self.viewer.layers:
                self.viewer.layers.remove(kwargs["name"])
            self.viewer.add_image(data, **kwargs)

    def _estimate(self, megapixels: float) -> str:
        if not self.rate or self.rate != self.rate:
            return (
                "time: not known before a first run here (a run reports its megapixels per second)"
            )
        return (
            f"time: about {megapixels / self.rate:.0f} s at the last run's {self.rate:.2f} "
            "megapixels/s"
        )

    def _failed(self, err: BaseException) -> None:
        self.result = None
        self.message.value = describe_error(err)
