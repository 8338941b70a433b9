"""An omeloc checkpoint as a BioImage Model Zoo package (model spec 0.5), tested before writing.

:func:`export_bmz` builds the package in a temporary folder: ``pytorch_state_dict`` weights with
the U-Net's source file (``unet.py``, torch only), TorchScript weights (and ONNX with
``onnx=True``), the checkpoint's percentile normalization as ``scale_linear`` preprocessing and
its inverse as postprocessing, a test input/output pair cut from a field of the training plate,
a cover (source | prediction | truth) and a README with the training record.  Then
bioimageio.core's ``test_model`` runs on it (offline: authors carry no ``github_user``); only a
package that passes is written (a zip, or a folder when ``out`` has no ``.zip`` suffix).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from omeloc.errors import CheckpointError, InputError
from omeloc.learn.checkpoint import Checkpoint, load_checkpoint
from omeloc.learn.normalization import denormalize_channels, normalize_channels
from omeloc.modelio.describe import describe_checkpoint
from omeloc.modelio.export_onnx import OPSET, export_onnx, export_torchscript

__all__ = ["CITATION", "ExportResult", "export_bmz", "test_crop"]

logger = logging.getLogger(__name__)

CITATION = (
    "Shigene K, Hiasa Y, Otake Y, et al. Translation of Cellular Protein Localization Using "
    "Convolutional Networks. Front. Cell Dev. Biol. 9:635231 (2021)"
)
CITATION_DOI = "10.3389/fcell.2021.635231"
#: side of the test tensors cut from the training plate
TEST_SIDE = 128


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_bmz` wrote and what ``test_model`` said."""

    path: Path
    weights: tuple[str, ...]
    test_status: str
    test_input_shape: tuple[int, ...]

    def summary(self) -> str:
        return (
            f"wrote BMZ package {self.path} (model spec 0.5; weights {', '.join(self.weights)}; "
            f"bioimageio.core test_model: {self.test_status}, test input {self.test_input_shape})"
        )


def test_crop(
    ckpt: Checkpoint,
    plate: str | Path | None = None,
    side: int = TEST_SIDE,
    storage_options: Any = None,
) -> tuple[np.ndarray, np.ndarray]:
    """A centred ``(1, C, side, side)`` crop of the sources and targets of the first validation
    field of the training plate (``plate`` overrides the plate named in the checkpoint), raw units.

    Raises
    ------
    InputError
        The plate is not there (name it with ``plate``) or lacks the model's channels.
    """
    from omeloc.ngff.plate import open_plate

    where = plate or (ckpt.provenance.get("plates") or [None])[0]
    if where is None:
        raise InputError(
            "The checkpoint names no training plate; pass --plate to cut the test tensors from."
        )
    try:
        opened = open_plate(where, storage_options)
    except Exception as err:  # noqa: BLE001 - any unreadable plate: one line naming --plate
        raise InputError(
            f"Cannot open the training plate {where} ({str(err)[:160]}); pass --plate with a plate "
            f"that has channels {', '.join(ckpt.source + ckpt.target)}."
        ) from None
    wells = list(ckpt.provenance.get("val_wells") or []) + list(
        ckpt.provenance.get("train_wells") or []
    )
    images = [img for w in wells for img in _well_images(opened, w)] or list(opened.images)
    img = images[0]
    m = 2 ** int(ckpt.architecture.get("depth", 4))
    h, w = img.shape[img.axes.index("y")], img.shape[img.axes.index("x")]
    s = max(m, min(side, h, w) // m * m)
    if s > min(h, w):
        raise InputError(
            f"The field {img.path} is {h} x {w} px, smaller than the model's {m} px size step."
        )
    y0, x0 = (h - s) // 2, (w - s) // 2

    def planes(names: Sequence[str]) -> np.ndarray:
        out = []
        for n in names:
            idx: list[Any] = [0] * len(img.axes)
            idx[img.axes.index("c")] = img.channel_index(n)
            idx[img.axes.index("y")] = slice(y0, y0 + s)
            idx[img.axes.index("x")] = slice(x0, x0 + s)
            out.append(np.asarray(img.level(0)[tuple(idx)], dtype=np.float32))
        return np.stack(out)[None]

    return planes(ckpt.source), planes(ckpt.target)


def _well_images(plate: Any, well: str) -> list[Any]:
    try:
        return list(plate.well(str(well)).images)
    except Exception:  # noqa: BLE001 - a well the plate no longer has: skipped
        return []


def _predict_raw(net: torch.nn.Module, ckpt: Checkpoint, x: np.ndarray) -> np.ndarray:
    """The checkpoint's prediction of raw ``x`` in the target's units (normalize → net → back)."""
    stats = [ckpt.normalization[c] for c in ckpt.source]
    xn = normalize_channels([x[:, k] for k in range(x.shape[1])], stats)
    with torch.no_grad():
        y = net(torch.from_numpy(np.ascontiguousarray(xn, dtype=np.float32))).numpy()
    return np.asarray(
        denormalize_channels(y, [ckpt.normalization[c] for c in ckpt.target]), dtype=np.float32
    )


def _cover(
    path: Path, x: np.ndarray, y: np.ndarray, truth: np.ndarray, names: tuple[str, str]
) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(9, 4.5))
    for ax, img, title in zip(
        axes,
        (x[0, 0], y[0, 0], truth[0, 0]),
        (f"source: {names[0]}", f"prediction: {names[1]}", f"truth: {names[1]}"),
    ):
        lo, hi = np.percentile(img, [1, 99.8])
        ax.imshow(img, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1)
        ax.set_title(title, fontsize=10)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def _readme(ckpt: Checkpoint, onnx: bool) -> str:
    d = describe_checkpoint(ckpt)
    record = json.dumps(ckpt.provenance, indent=2, sort_keys=True, default=str)
    metrics = json.dumps(ckpt.metrics, indent=2, sort_keys=True, default=str)
    return (
        f"# {d.name}: an omeloc virtual stain\n\n"
        f"Predicts {', '.join(ckpt.target)} from {', '.join(ckpt.source)} (a {ckpt.model} "
        "U-Net trained "
        f"with omeloc). Inputs are in the source channels' own intensity units: the preprocessing "
        f"`scale_linear` maps the training percentiles ({_stats(ckpt, ckpt.source)}) to 0 and "
        "1, and the "
        "postprocessing maps the output back to the target's units "
        f"({_stats(ckpt, ckpt.target)}).\n\n"
        f"Weights: pytorch_state_dict (architecture `unet.py`, torch only), torchscript"
        f"{f', onnx (opset {OPSET})' if onnx else ''}.\n\n"
        f"Tiling: the network is fully convolutional (sizes multiples of "
        f"{2 ** int(ckpt.architecture.get('depth', 4))} px); tile with an overlap of at least "
        f"{ckpt.overlap} px (omeloc's advice). Run it over a plate: `omeloc predict PLATE "
        "--model THIS.zip`.\n\n"
        f"## Training record\n\n```json\n{record}\n```\n\n## Validation "
        f"metrics\n\n```json\n{metrics}\n```\n\n"
        f"## Method\n\n{CITATION}. doi:{CITATION_DOI}\n"
    )


def _stats(ckpt: Checkpoint, names: Sequence[str]) -> str:
    return "; ".join(
        f"{n}: {ckpt.normalization[n]['low']:.4g} .. {ckpt.normalization[n]['high']:.4g}"
        for n in names
    )


def _descr(
    ckpt: Checkpoint,
    work: Path,
    x: np.ndarray,
    onnx: bool,
    authors: Sequence[str],
    license: str,
    name: str | None,
) -> Any:
    import bioimageio.spec.model.v0_5 as b

    arch = dict(ckpt.architecture)
    arch.pop("architecture", None)
    m = 2 ** int(arch.get("depth", 4))
    norm = ckpt.normalization

    def scale_linear(names: Sequence[str], inverse: bool) -> Any:
        low = [float(norm[c]["low"]) for c in names]
        span = [float(norm[c]["high"]) - float(norm[c]["low"]) for c in names]
        gain = span if inverse else [1.0 / s for s in span]
        offset = low if inverse else [-lo / s for lo, s in zip(low, span)]
        if len(names) == 1:
            return b.ScaleLinearDescr(kwargs=b.ScaleLinearKwargs(gain=gain[0], offset=offset[0]))
        return b.ScaleLinearDescr(
            kwargs=b.ScaleLinearAlongAxisKwargs(axis=b.AxisId("channel"), gain=gain, offset=offset)
        )

    # no halo declared: bioimageio.core would pad the input by it and crop it off the output,
    # which changes every pixel within the U-Net's receptive field of the border (the tiling
    # advice is in the README instead)
    space_in = [
        b.SpaceInputAxis(id=b.AxisId(a), size=b.ParameterizedSize(min=m, step=m)) for a in "yx"
    ]
    space_out = [
        b.SpaceOutputAxis(
            id=b.AxisId(a), size=b.SizeReference(tensor_id=b.TensorId("input"), axis_id=b.AxisId(a))
        )
        for a in "yx"
    ]
    inp = b.InputTensorDescr(
        id=b.TensorId("input"),
        description=f"{', '.join(ckpt.source)} in their own intensity units",
        axes=[
            b.BatchAxis(),
            b.ChannelAxis(channel_names=[b.Identifier(_ident(c)) for c in ckpt.source]),
            *space_in,
        ],
        test_tensor=b.FileDescr(source=work / "test_input.npy"),
        preprocessing=[scale_linear(ckpt.source, False)],
    )
    out = b.OutputTensorDescr(
        id=b.TensorId("output"),
        description=f"virtual {', '.join(ckpt.target)} in its intensity units",
        axes=[
            b.BatchAxis(),
            b.ChannelAxis(channel_names=[b.Identifier(_ident(c)) for c in ckpt.target]),
            *space_out,
        ],
        test_tensor=b.FileDescr(source=work / "test_output.npy"),
        postprocessing=[scale_linear(ckpt.target, True)],
    )
    tv = b.Version(torch.__version__.split("+")[0])
    weights = b.WeightsDescr(
        pytorch_state_dict=b.PytorchStateDictWeightsDescr(
            source=work / "weights.pt",
            pytorch_version=tv,
            architecture=b.ArchitectureFromFileDescr(
                source=work / "unet.py", callable=b.Identifier("UNet"), kwargs=arch
            ),
        ),
        torchscript=b.TorchscriptWeightsDescr(
            source=work / "weights_torchscript.pt", pytorch_version=tv, parent="pytorch_state_dict"
        ),
        onnx=b.OnnxWeightsDescr(
            source=work / "weights.onnx", opset_version=OPSET, parent="pytorch_state_dict"
        )
        if onnx
        else None,
    )
    title = name or f"omeloc {'+'.join(ckpt.source)} to {'+'.join(ckpt.target)}"
    return b.ModelDescr(
        name=title[:128],
        description=f"Virtual stain: {', '.join(ckpt.target)} predicted from "
        f"{', '.join(ckpt.source)} "
        f"(omeloc {ckpt.model} U-Net).",
        authors=[b.Author(name=a) for a in authors],
        cite=[b.CiteEntry(text=CITATION, doi=b.Doi(CITATION_DOI))],
        license=b.LicenseId(license),
        documentation=b.FileDescr(source=work / "README.md"),
        covers=[b.FileDescr(source=work / "cover.png")],
        tags=["virtual-staining", "image-to-image", "omeloc", "2d", "fluorescence"],
        inputs=[inp],
        outputs=[out],
        weights=weights,
        version="0.1.0",
        training_data=None,
    )


def _ident(name: str) -> str:
    """A channel label as a BMZ identifier (letters, digits, ``_``)."""
    text = "".join(ch if ch.isalnum() else "_" for ch in str(name)) or "channel"
    return text if not text[0].isdigit() else f"c_{text}"


def run_test_model(descr: Any) -> None:
    """bioimageio.core's ``test_model`` on ``descr``; raises :class:`CheckpointError` saying why."""
    from bioimageio.core import test_model

    summary = test_model(descr)
    if summary.status == "passed":
        return
    for d in summary.details:
        if d.status != "passed":
            why = (
                "; ".join(f"{'.'.join(map(str, e.loc))}: {e.msg}" for e in (d.errors or [])[:2])
                or d.name
            )
            raise CheckpointError(
                f"The exported package fails bioimageio.core's test_model ({d.name}: "
                f"{why[:240]}); nothing was written."
            )
    raise CheckpointError(
        "The exported package fails bioimageio.core's test_model; nothing was written."
    )


def export_bmz(
    model: str | Path,
    out: str | Path,
    *,
    plate: str | Path | None = None,
    onnx: bool = False,
    authors: Sequence[str] = ("omeloc user",),
    license: str = "CC-BY-4.0",
    name: str | None = None,
    overwrite: bool = False,
    storage_options: Any = None,
    test: bool = True,
) -> ExportResult:
    """Write checkpoint ``model`` as a BMZ package (spec 0.5) at ``out`` (a zip, else a folder).

    Parameters
    ----------
    model
        A checkpoint folder written by :func:`omeloc.train`.
    out
        The package to write; refused when it exists unless ``overwrite``.
    plate
        The plate the test tensors and the cover are cut from (default: the training plate the
        checkpoint names).
    onnx
        Also ONNX weights (opset 17; needs onnx).
    authors, license, name
        Package metadata (authors as names only: validation stays offline).
    test
        Run bioimageio.core's ``test_model`` before writing (default); a failing package is not
        written.

    Raises
    ------
    CheckpointError, InputError
        A bad checkpoint or plate, an existing ``out``, or ``test_model`` failed (said why).
    """
    ckpt = load_checkpoint(model)
    dest = Path(out).expanduser()
    if dest.exists() and not overwrite:
        raise InputError(f"{dest} exists. Pass --overwrite to replace it, or choose another --out.")
    net = ckpt.build_model("cpu").float()
    x, truth = test_crop(ckpt, plate, storage_options=storage_options)
    y = _predict_raw(net, ckpt, x)
    with tempfile.TemporaryDirectory(prefix="omeloc-bmz-") as tmp:
        work = Path(tmp)
        np.save(work / "test_input.npy", x)
        np.save(work / "test_output.npy", y)
        torch.save(
            {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()},
            work / "weights.pt",
        )
        shutil.copyfile(
            Path(__file__).resolve().parents[1] / "learn" / "models" / "unet.py", work / "unet.py"
        )
        export_torchscript(net, work / "weights_torchscript.pt", size=x.shape[-1])
        if onnx:
            export_onnx(net, work / "weights.onnx", size=x.shape[-1])
        _cover(work / "cover.png", x, y, truth, (ckpt.source[0], ckpt.target[0]))
        (work / "README.md").write_text(_readme(ckpt, onnx))
        descr = _descr(ckpt, work, x, onnx, authors, license, name)
        status = "skipped"
        if test:
            run_test_model(descr)
            status = "passed"
        _write(descr, dest, overwrite)
    weights = ("pytorch_state_dict", "torchscript") + (("onnx",) if onnx else ())
    logger.info("exported %s to %s", ckpt.path, dest)
    return ExportResult(
        path=dest, weights=weights, test_status=status, test_input_shape=tuple(x.shape)
    )


def _write(descr: Any, dest: Path, overwrite: bool) -> None:
    """Save the package next to ``dest`` and move it into place (never half written)."""
    from bioimageio.spec import save_bioimageio_package, save_bioimageio_package_as_folder

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
    if dest.suffix.lower() == ".zip":
        save_bioimageio_package(descr, output_path=tmp.with_suffix(".zip"))
        tmp = tmp.with_suffix(".zip")
    else:
        save_bioimageio_package_as_folder(descr, output_path=tmp)
    if overwrite and dest.exists():
        shutil.rmtree(dest) if dest.is_dir() else dest.unlink()
    os.replace(tmp, dest)
