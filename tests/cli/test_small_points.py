"""Smaller points of a new user's journey: README's Python block, short reprs, help texts,
single-field import."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import tifffile

import omeloc
from omeloc.cli import build_parser, main

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_python_block_trains_for_minutes_not_the_default_steps():
    text = README.read_text()
    block = text[text.index("## Python") :].split("```python", 1)[1].split("```", 1)[0]
    call = block[block.index("omeloc.train(") :]
    call = call[: call.index(")\n") + 1]
    assert re.search(r"\bminutes=\d", call), call


def test_plate_and_image_reprs_are_short(tmp_path):
    plate = omeloc.open_plate(
        omeloc.make_plate(
            tmp_path / "p.zarr", rows=4, cols=6, fields=2, size=32, chunks=(32, 32), levels=1
        )
    )
    text = repr(plate)
    assert len(text) < 300 and "24 well(s)" in text and "48 image(s)" in text and "actin" in text, (
        text
    )
    image = repr(plate.images[0])
    assert len(image) < 200 and "A/1/0" in image and "cyx" in image, image
    assert len(str(plate)) < 300


def _help(*command):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[command[0]]
    return sub.format_help()


def test_no_noise_ceiling_help_says_what_the_flag_does():
    text = " ".join(_help("evaluate").split())
    flag = text[text.index("--no-noise-ceiling ") :][:600]
    assert "this flag turns it off" in flag and "not estimable" in flag


def test_import_tiff_files_of_one_field_make_an_image(shared_data, tmp_path, capsys):
    files = [shared_data / "bpae" / f"BPAE_{c}.tif" for c in ("actin", "mito", "nuclei")]
    if not all(f.is_file() for f in files):
        pytest.skip("shared/data/bpae is missing")
    out = tmp_path / "bpae.zarr"
    assert main(["-q", "import-tiff", *map(str, files), str(out), "--levels", "2"]) == 0
    assert "wrote image" in capsys.readouterr().out
    image = omeloc.open_plate(out)
    assert not image.is_plate and image.channel_names == ("actin", "mito", "nuclei")
    for f, c in zip(files, ("actin", "mito", "nuclei")):
        np.testing.assert_array_equal(image.images[0].channel(c).compute(), tifffile.imread(f))
    assert image.images[0].omero["channels"][2]["color"] == "0000FF"  # nuclei: blue, by stain name


def test_import_tiff_files_refuses_a_pattern_and_files_that_disagree(tmp_path, capsys):
    tifffile.imwrite(tmp_path / "a.tif", np.zeros((8, 8), "uint16"))
    tifffile.imwrite(tmp_path / "b.tif", np.zeros((8, 9), "uint16"))
    assert (
        main(
            [
                "import-tiff",
                str(tmp_path / "a.tif"),
                str(tmp_path / "b.tif"),
                str(tmp_path / "o.zarr"),
            ]
        )
        == 2
    )
    assert "must agree" in capsys.readouterr().err and not (tmp_path / "o.zarr").exists()
    assert (
        main(["import-tiff", str(tmp_path / "a.tif"), str(tmp_path / "o.zarr"), "--preset", "nf1"])
        == 2
    )


def test_readme_and_demo_help_state_the_same_measured_time():
    figure = re.compile(r"(\d+(?:[–-]\d+)?) minutes? on 2 free CPU cores")
    text = README.read_text()
    readme = figure.findall(text[text.index("## The two commands") : text.index("## A tour")])
    helps = figure.findall(" ".join(_help("demo").split()))
    assert readme and helps and set(readme) == set(helps), (readme, helps)
