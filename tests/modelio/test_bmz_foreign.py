# ruff: noqa: F811  (the exported fixture is imported from bmz_fixtures, then requested by name)
"""A package omeloc did not write: axes b,c,z,y,x, per-sample statistics, min/step size rules.

Built here with bioimageio.spec (TorchScript weights of a small 3D-in, 3D-out network that
works plane by plane), checked by bioimageio.core's ``test_model``, then predicted into a plate
by omeloc and compared with bioimageio.core's own prediction of the same field.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

pytest.importorskip("bioimageio.core", reason="needs the bmz extra (bioimageio.core)")

from bmz_fixtures import exported  # noqa: F401  (the session's exported package)

import omeloc
from omeloc.cli import main


class _PlaneNet(torch.nn.Module):
    """``b, c, z, y, x`` → the same, a fixed 3 x 3 convolution on every plane."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 1, 3, padding=1)
        with torch.no_grad():
            kernel = torch.tensor([[0.0, 1, 0], [1, 2, 1], [0, 1, 0]]).reshape(1, 1, 3, 3)
            self.conv.weight.copy_(kernel / 6)
            self.conv.bias.fill_(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, z, h, w = x.shape
        y = self.conv(x.permute(0, 2, 1, 3, 4).reshape(b * z, c, h, w))
        return y.reshape(b, z, 1, h, w).permute(0, 2, 1, 3, 4)


def _foreign_package(root, x: np.ndarray):
    import bioimageio.spec.model.v0_5 as b
    from bioimageio.core import test_model
    from bioimageio.spec import save_bioimageio_package

    net = _PlaneNet().eval()
    torch.jit.script(net).save(str(root / "net.pt"))
    xn = (x - x.mean()) / (x.std() + 1e-6)
    with torch.no_grad():
        y = net(torch.from_numpy(xn.astype(np.float32))).numpy() * 100.0 + 1000.0
    np.save(root / "in.npy", x.astype(np.float32))
    np.save(root / "out.npy", y.astype(np.float32))
    (root / "README.md").write_text("# plane net\n")
    size = b.ParameterizedSize(min=16, step=8)
    ref = {a: b.SizeReference(tensor_id=b.TensorId("raw"), axis_id=b.AxisId(a)) for a in "zyx"}
    inp = b.InputTensorDescr(
        id=b.TensorId("raw"),
        axes=[
            b.BatchAxis(),
            b.ChannelAxis(channel_names=[b.Identifier("phase")]),
            b.SpaceInputAxis(id=b.AxisId("z"), size=1),
            *[b.SpaceInputAxis(id=b.AxisId(a), size=size) for a in "yx"],
        ],
        test_tensor=b.FileDescr(source=root / "in.npy"),
        preprocessing=[b.ZeroMeanUnitVarianceDescr()],
    )
    out = b.OutputTensorDescr(
        id=b.TensorId("stain"),
        axes=[
            b.BatchAxis(),
            b.ChannelAxis(channel_names=[b.Identifier("nuclei")]),
            *[b.SpaceOutputAxis(id=b.AxisId(a), size=ref[a]) for a in "zyx"],
        ],
        test_tensor=b.FileDescr(source=root / "out.npy"),
        postprocessing=[b.ScaleLinearDescr(kwargs=b.ScaleLinearKwargs(gain=100.0, offset=1000.0))],
    )
    descr = b.ModelDescr(
        name="plane net",
        description="a foreign test package",
        authors=[b.Author(name="Someone Else")],
        cite=[b.CiteEntry(text="none", doi=b.Doi("10.1000/182"))],
        license=b.LicenseId("MIT"),
        documentation=b.FileDescr(source=root / "README.md"),
        inputs=[inp],
        outputs=[out],
        weights=b.WeightsDescr(
            torchscript=b.TorchscriptWeightsDescr(
                source=root / "net.pt", pytorch_version=b.Version(torch.__version__.split("+")[0])
            )
        ),
        version="1.2.0",
    )
    assert test_model(descr).status == "passed"
    return save_bioimageio_package(descr, output_path=root / "plane.zip")


def _plane(plate, channel):
    img = omeloc.open_plate(plate).images[0]
    index = tuple(
        img.channel_index(channel) if a == "c" else slice(None) if a in "yx" else 0
        for a in img.axes
    )
    return np.asarray(img.level(0)[index]).astype(np.float64)


def test_foreign_bczyx_package_with_sample_statistics_equals_bioimageio_core(exported, tmp_path):
    from bioimageio.core import predict as core_predict

    plate, _, _ = exported
    copy = tmp_path / "plate.zarr"
    shutil.copytree(plate, copy)
    actin = _plane(copy, "actin").astype(np.float32)
    pkg = _foreign_package(tmp_path, actin[None, None, None, :64, :64])
    sample = core_predict(model=str(pkg), inputs=actin[None, None, None])
    want = np.asarray(next(iter(sample.members.values())).data, dtype=np.float64)[0, 0, 0]
    argv = ["-q", "predict", str(copy), "--model", str(pkg), "--source", "actin"]
    assert main(argv) == 0
    got = _plane(copy, "nuclei (virtual)")
    want = np.clip(np.rint(want), 0, 65535)  # the plate is uint16
    r = np.corrcoef(got.ravel(), want.ravel())[0, 1]
    assert r >= 0.999 and np.abs(got - want).mean() <= 1e-3 * want.std(), r
    record = omeloc.open_plate(copy).images[0].attrs["omeloc"]["channels"]["nuclei (virtual)"]
    assert record["package_version"] == "1.2.0"
    assert record["package_source_map"] == {"phase": "actin"}
