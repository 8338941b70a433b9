"""Plates written before imports used fields 0..n-1: `omeloc info` warns, `omeloc predict` still
works."""

from __future__ import annotations

import numpy as np
import pytest

import omeloc
from omeloc.cli import main
from omeloc.ngff.writer import write_plate


@pytest.fixture(scope="module")
def checkpoint(tiny_trained):
    _, ckpt, _ = tiny_trained(size=64, chunk=32, reference=False)
    return ckpt


def _site_named_plate(path):
    rng = np.random.default_rng(0)
    images = {
        (r, c, f): rng.integers(0, 4000, (2, 64, 64)).astype("uint16")
        for r, c, f in (("B", "7", "3"), ("D", "6", "2"), ("D", "7", "1"), ("D", "7", "4"))
    }
    return write_plate(path, images, channel_names=["actin", "WAVE2"], chunks=(32, 32), levels=2)


def test_info_warns_about_wells_with_other_field_paths(tmp_path, capsys):
    plate = _site_named_plate(tmp_path / "p.zarr")
    assert main(["info", str(plate)]) == 0
    out = capsys.readouterr().out
    warning = next(line for line in out.splitlines() if "field paths" in line)
    assert "WARNING" in warning and "D6" in warning and "napari" in warning
    assert main(["info", str(plate), "--json"]) == 0
    assert '"field_paths_differ": [\n    "D6",\n    "D7"\n  ]' in capsys.readouterr().out


def test_info_has_no_field_path_warning_for_fields_0_to_n(tmp_path, capsys):
    rng = np.random.default_rng(0)
    images = {
        (r, "1", f): rng.integers(0, 9, (2, 32, 32)).astype("uint16") for r in "AB" for f in "01"
    }
    assert (
        main(
            [
                "info",
                str(write_plate(tmp_path / "p.zarr", images, channel_names=["a", "b"], levels=1)),
            ]
        )
        == 0
    )
    assert "field paths" not in capsys.readouterr().out


def test_predict_writes_every_well_of_a_plate_with_other_field_paths(tmp_path, checkpoint):
    plate = _site_named_plate(tmp_path / "p.zarr")
    assert main(["-q", "predict", str(plate), "--model", str(checkpoint)]) == 0
    opened = omeloc.open_plate(plate)
    assert sorted(i.path for i in opened.images) == ["B/7/3", "D/6/2", "D/7/1", "D/7/4"]
    for img in opened.images:
        assert img.channel_names[-1] == "WAVE2 (virtual)"
        assert float(img.channel("WAVE2 (virtual)").std().compute()) > 0
