"""The README's napari screenshot: real and virtual channels beside each other, the omeloc dock.

A synthetic plate (actin, WAVE2), a small actin → WAVE2 U-Net trained through the train widget,
"WAVE2 (virtual)" and its uncertainty predicted through the predict widget, then the viewer
(layers in a grid: actin | WAVE2 | WAVE2 (virtual) | WAVE2 (uncertainty)) saved as a PNG.
Needs ``pip install 'omeloc[napari]'`` and a display; on a server run it under Xvfb:

    xvfb-run -a -s "-screen 0 1920x1080x24" python examples/napari_screenshot.py OUT_DIR [--png docs/napari.png]
"""  # noqa: E501

from __future__ import annotations

import argparse
import time
from pathlib import Path


def wait(app, widget, timeout: float = 1800.0) -> None:
    """Run the Qt event loop until the widget's job has ended."""
    end = time.monotonic() + timeout
    while widget.job is None or widget.job.running:
        app.processEvents()
        time.sleep(0.02)
        if time.monotonic() > end:
            raise TimeoutError("the widget's job did not end in time")
    app.processEvents()


def _save_small(rgba, png: Path, width: int = 1400) -> None:
    """The screenshot as an 8-bit palette PNG at most ``width`` pixels wide (small enough to
    commit)."""
    from PIL import Image

    img = Image.fromarray(rgba[..., :3])
    if img.width > width:
        img = img.resize((width, round(img.height * width / img.width)), Image.LANCZOS)
    img.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(png, optimize=True)


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument(
        "--png",
        type=Path,
        default=None,
        help="where to save the screenshot (default OUT/napari.png)",
    )
    parser.add_argument("--steps", type=int, default=150, help="training steps")
    parser.add_argument("--crop", type=int, default=64, help="training crop side in pixels")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    png = args.png or args.out / "napari.png"

    import warnings

    warnings.filterwarnings(
        "ignore", message=".*PyQt5 backend is deprecated"
    )  # not a notification in the picture
    import napari
    from qtpy.QtWidgets import QApplication, QWidget

    import omeloc
    from omeloc.napari._predict import PredictWidget
    from omeloc.napari._train import TrainWidget

    plate = omeloc.make_plate(
        args.out / "plate.zarr",
        rows=2,
        cols=3,
        fields=1,
        size=256,
        seed=1,
        channels=("actin", "WAVE2"),
        overwrite=True,
    )
    viewer = napari.Viewer(title="omeloc in napari")
    viewer.window.resize(1800, 1000)
    viewer.open(str(plate), plugin="napari-ome-zarr")
    app = QApplication.instance()
    train, predict = TrainWidget(viewer), PredictWidget(viewer)
    viewer.window.add_dock_widget(train, name="omeloc: train", area="right")
    viewer.window.add_dock_widget(predict, name="omeloc: predict", area="right")
    train.val_wells.value, train.minutes.value, train.steps.value, train.crop.value = (
        "B3",
        0,
        args.steps,
        args.crop,
    )
    train.out.value, train.overwrite.value = args.out / "model", True
    train.train_button.clicked.emit()
    wait(app, train)
    if train.result is None:
        raise SystemExit(train.message.value)
    predict.uncertainty.value, predict.overwrite.value = (
        True,
        True,
    )  # the model came from the train widget
    predict.run_button.clicked.emit()
    wait(app, predict)
    if predict.result is None:
        raise SystemExit(predict.message.value)
    grid = viewer.canvas.grid if hasattr(viewer, "canvas") else viewer.grid
    grid.enabled = True
    grid.shape = (2, 2)  # actin | WAVE2 over WAVE2 (virtual) | WAVE2 (uncertainty)
    viewer.reset_view()
    for toast in viewer.window._qt_window.findChildren(
        QWidget
    ):  # notices of this run, not of omeloc
        if type(toast).__name__ == "NapariQtNotification":
            toast.close()
    app.processEvents()
    png.parent.mkdir(parents=True, exist_ok=True)
    shot = viewer.screenshot(canvas_only=False)
    _save_small(shot, png)
    print(predict.message.value)
    print(f"screenshot: {png}")
    viewer.close()
    return png


if __name__ == "__main__":
    main()
