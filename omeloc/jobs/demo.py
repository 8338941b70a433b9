"""``omeloc demo``: the whole journey on a synthetic plate, with no data of the user's.

synthetic plate (actin, WAVE2, ... with known relationships) → train actin → WAVE2 on some
wells → predict ``WAVE2 (virtual)`` into every image of the plate → evaluate it against the
real WAVE2, on the held-out wells and on the plate → print where everything is.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omeloc.errors import InputError

__all__ = ["run_demo", "DemoResult", "prepare_folder", "heldout_scores"]

logger = logging.getLogger(__name__)

#: the relationship the demo learns: actin predicts WAVE2
SOURCE, TARGET = "actin", "WAVE2"


@dataclass
class DemoResult:
    """Where the demo put things and what it measured."""

    folder: Path
    plate: Path
    checkpoint: Path
    evaluation: Path
    channel: str
    val_wells: list[str]
    heldout_pearson_r: float
    """Mean Pearson r of the virtual vs real WAVE2 over the fields of the held-out wells."""
    baseline_pearson_r: float
    """Mean Pearson r of raw actin vs real WAVE2 on the same fields (no learning)."""
    timings: dict[str, float] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)

    def summary(self) -> str:
        """The lines ``omeloc demo`` prints."""
        t = self.timings
        lines = [
            (
                f"omeloc demo finished in {sum(t.values()):.0f} s "
                f"(synth {t.get('synth', 0):.0f} s, train {t.get('train', 0):.0f} s, "
                f"predict {t.get('predict', 0):.0f} s, evaluate {t.get('evaluate', 0):.0f} s)"
            ),
            f"  plate:       {self.plate}   (new channel {self.channel!r} in every image, every "
            "level)",
            f"  checkpoint:  {self.checkpoint}",
            f"  metrics:     {self.files.get('metrics_csv', self.evaluation / 'metrics.csv')}",
        ]
        for key in ("heatmap", "montage", "curves"):
            if key in self.files:
                lines.append(f"  {key + ':':12} {self.files[key]}")
        lines += [
            (
                f"held-out wells {', '.join(self.val_wells)}: Pearson r virtual vs real WAVE2 = "
                f"{self.heldout_pearson_r:.3f} (no-learning baseline, actin vs WAVE2: "
                f"{self.baseline_pearson_r:.3f})"
            ),
            f"look at it: napari --plugin napari-ome-zarr {self.plate}",
            f"            omeloc info {self.plate}",
        ]
        return "\n".join(lines)


def run_demo(
    out: str | Path = "omeloc-demo",
    *,
    rows: int = 2,
    cols: int = 3,
    fields: int = 2,
    size: int = 256,
    steps: int = 300,
    crop: int = 128,
    base_channels: int = 16,
    depth: int = 3,
    seed: int = 0,
    overwrite: bool = False,
    device: str = "auto",
    progress: bool = False,
) -> DemoResult:
    """Run the demo: synthetic plate → train → predict into the plate → evaluate.

    Parameters
    ----------
    out
        Folder for everything (plate, checkpoint, evaluation); created.
    rows, cols, fields, size
        Synthetic plate geometry (wells and fields of ``size`` × ``size`` pixels).
    steps, crop, base_channels, depth
        Training length, crop side and U-Net size; with the defaults the whole demo takes 4–5
        minutes on 2 free CPU cores.
    seed
        Seed for the plate and the training.
    overwrite
        Replace an earlier demo in ``out``.
    device
        ``"auto"`` (GPU when there is one), ``"cpu"``, ``"cuda"``, ``"mps"``.
    progress
        Progress bars.

    Returns
    -------
    DemoResult
    """
    from omeloc.analysis.evaluate import evaluate
    from omeloc.config import TilingConfig, TrainConfig
    from omeloc.data.synthetic import make_plate, row_name
    from omeloc.jobs.predict import default_channel_name, predict
    from omeloc.learn.training import train

    if rows * cols < 2:
        raise InputError(
            f"Expected at least 2 wells for a train/held-out split. Got {rows}x{cols} instead."
        )
    folder = prepare_folder(out, overwrite)
    timings: dict[str, float] = {}
    val_wells = [f"{row_name(rows - 1)}{cols}"]  # the last well is held out
    channel = default_channel_name(TARGET)
    with _timed(timings, "synth"):
        plate_path = make_plate(
            folder / "plate.zarr",
            rows=rows,
            cols=cols,
            fields=fields,
            size=size,
            seed=seed,
            chunks=(min(256, size), min(256, size)),
            levels=3,
        )
    config = TrainConfig(
        model="unet",
        steps=steps,
        crop=min(crop, size - size % 2**depth),
        val_wells=tuple(val_wells),
        seed=seed,
        device=device,
        depth=depth,
        base_channels=base_channels,
    )
    with _timed(timings, "train"):
        trained = train(plate_path, SOURCE, TARGET, config, out=folder / "model", progress=progress)
    with _timed(timings, "predict"):
        pred = predict(
            plate_path, trained.checkpoint, tiling=TilingConfig(device=device), progress=progress
        )
    with _timed(timings, "evaluate"):
        res = evaluate(plate_path, channel, TARGET, out=folder / "evaluation", source=SOURCE)
    heldout_r, baseline_r = heldout_scores(plate_path, val_wells, res.fields)
    files: dict[str, Path] = {k: Path(v) for k, v in res.files.items()}
    curves = Path(trained.checkpoint) / "curves.png"
    if curves.exists():
        files["curves"] = curves
    logger.info("demo: predicted %d image(s)", len(pred.predicted))
    return DemoResult(
        folder=folder,
        plate=Path(plate_path),
        checkpoint=Path(trained.checkpoint),
        evaluation=folder / "evaluation",
        channel=channel,
        val_wells=val_wells,
        heldout_pearson_r=heldout_r,
        baseline_pearson_r=baseline_r,
        timings=timings,
        files=files,
    )


def prepare_folder(out: str | Path, overwrite: bool) -> Path:
    """The demo folder, created; an earlier demo in it is removed with ``overwrite``, else refused.

    Raises
    ------
    InputError
        The folder is not empty and ``overwrite`` is False.
    """
    folder = Path(out).expanduser().resolve()
    if folder.exists() and any(folder.iterdir()):
        if not overwrite:
            raise InputError(
                f"The demo folder {folder} is not empty. Pass another folder or --overwrite."
            )
        for name in ("plate.zarr", "model", "evaluation"):
            shutil.rmtree(folder / name, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def heldout_scores(
    plate_path: str | Path, val_wells: Sequence[str], fields: Sequence[Mapping[str, Any]]
) -> tuple[float, float]:
    """Mean Pearson r over the fields of the held-out wells: the virtual channel, and raw source vs
    target.

    ``fields`` are the per-field rows of :func:`omeloc.evaluate` (with ``row``, ``column`` and
    ``pearson_r``); the baseline is computed here from the plate (no learning: the source
    channel itself as the prediction).
    """
    from omeloc.analysis.metrics import pearson_r
    from omeloc.ngff.plate import open_plate

    plate = open_plate(plate_path)
    val_paths = {plate.well(w).path for w in val_wells}
    held = [r for r in fields if f"{r['row']}/{r['column']}" in val_paths]
    heldout = float(sum(r["pearson_r"] for r in held) / max(len(held), 1))
    base = [
        pearson_r(img.channel(SOURCE).compute(), img.channel(TARGET).compute())
        for well in val_paths
        for img in plate.well(well).images
    ]
    return heldout, float(sum(base) / len(base))


@contextmanager
def _timed(timings: dict[str, float], step: str) -> Iterator[None]:
    """Record the seconds a step took in ``timings[step]``."""
    t = time.perf_counter()
    yield
    timings[step] = time.perf_counter() - t
