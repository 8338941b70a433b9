"""The command line: commands that wrap write-back, rechunk, recover and evaluate."""

from __future__ import annotations

import csv

import numpy as np
import pytest

import omeloc
from omeloc.cli import main

from conftest import tree_digest


@pytest.fixture(scope="module")
def small_plate(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "p.zarr"
    assert (
        main(
            [
                "-q",
                "synth",
                str(path),
                "--rows",
                "2",
                "--cols",
                "2",
                "--fields",
                "1",
                "--size",
                "96",
                "--chunk",
                "48",
                "--levels",
                "2",
                "--perturbed-wells",
                "B2",
                "--perturbation",
                "vinculin_diffuse",
            ]
        )
        == 0
    )
    return path


def test_synth_perturbation_recorded(small_plate):
    truth = omeloc.open_plate(small_plate).attrs["omeloc_synthetic"]
    assert truth["perturbation"] == "vinculin_diffuse"
    assert [w.replace("/", "") for w in truth["perturbed_wells"]] == ["B2"]


def test_evaluate_cli_writes_tables_and_figures(small_plate, tmp_path, capsys):
    plate_path = tmp_path / "p.zarr"
    import shutil

    shutil.copytree(small_plate, plate_path)
    plate = omeloc.open_plate(plate_path)
    rng = np.random.default_rng(0)

    def noisy_wave2(img):
        real = np.asarray(img.level(0)[img.channel_index("WAVE2")], dtype=np.float32)
        return real + rng.normal(0, 5, real.shape)

    omeloc.add_channel(
        plate_path, "WAVE2 (virtual)", noisy_wave2, provenance={"source_channels": ["actin"]}
    )
    before = tree_digest(plate_path)
    out = tmp_path / "eval"
    code = main(
        [
            "-q",
            "evaluate",
            str(plate_path),
            "--pred",
            "WAVE2 (virtual)",
            "--truth",
            "WAVE2",
            "--out",
            str(out),
            "--control-wells",
            "A1,A2",
            "--no-tables",
        ]
    )
    assert code == 0
    assert tree_digest(plate_path) == before  # evaluation only reads (with --no-tables)
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert len(rows) == len(plate.images) == 4
    assert all(float(r["pearson_r"]) > 0.8 for r in rows)
    printed = capsys.readouterr().out
    assert "4 field(s) in 4 well(s)" in printed and "heatmap" in printed
    assert (out / "heatmap_pearson_r.png").stat().st_size > 1000


def test_evaluate_cli_bad_channel_is_one_line(small_plate, tmp_path, capsys):
    before = tree_digest(small_plate)
    code = main(
        [
            "evaluate",
            str(small_plate),
            "--pred",
            "nope",
            "--truth",
            "WAVE2",
            "--out",
            str(tmp_path / "e"),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "nope" in err
    assert tree_digest(small_plate) == before


def test_rechunk_and_recover_cli(tmp_path, capsys):
    import zarr
    from ome_zarr.format import FormatV05
    from ome_zarr.writer import write_image as oz_write_image

    src = tmp_path / "one_chunk.zarr"
    data = np.random.default_rng(1).integers(0, 999, (3, 64, 64)).astype("uint16")
    oz_write_image(
        data, zarr.open_group(str(src), mode="w", zarr_format=3), axes="cyx", fmt=FormatV05()
    )
    before = tree_digest(src)
    dst = tmp_path / "c1.zarr"
    assert main(["-q", "rechunk", str(src), str(dst)]) == 0
    assert "one channel per chunk" in capsys.readouterr().out
    copy = omeloc.open_image(dst)
    assert copy.chunks(0)[0] == 1
    np.testing.assert_array_equal(copy.level(0).compute(), data)
    assert tree_digest(src) == before
    assert main(["rechunk", str(src), str(dst)]) == 2  # exists, no --overwrite
    assert "overwrite" in capsys.readouterr().err
    assert main(["-q", "recover", str(dst)]) == 0
    assert "nothing to recover" in capsys.readouterr().out


def _failing_predict(*args, **kwargs):
    raise RuntimeError("boom")


@pytest.mark.parametrize(
    "argv",
    [["-v", "predict", "p.zarr", "--model", "m"], ["predict", "p.zarr", "--model", "m", "-v"]],
)
def test_verbose_before_or_after_the_command_shows_the_traceback(argv, monkeypatch):
    """Issue 19: ``omeloc -v predict`` is ``omeloc predict -v``: an unexpected failure raises
    (traceback)."""
    monkeypatch.setattr("omeloc.jobs.predict.predict", _failing_predict)
    with pytest.raises(RuntimeError, match="boom"):
        main(argv)


def test_unexpected_failure_without_verbose_is_one_line(monkeypatch, capsys):
    monkeypatch.setattr("omeloc.jobs.predict.predict", _failing_predict)
    assert main(["predict", "p.zarr", "--model", "m"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == "omeloc predict: failed: RuntimeError: boom (run with -v for the traceback)"


@pytest.mark.parametrize(
    "argv, verbose, quiet",
    [
        (["info", "x"], 0, False),
        (["-v", "info", "x"], 1, False),
        (["info", "x", "-vv"], 2, False),
        (["-q", "info", "x"], 0, True),
        (["info", "-q", "x"], 0, True),
    ],
)
def test_verbosity_flags_anywhere(argv, verbose, quiet):
    from omeloc.cli import build_parser

    args = build_parser().parse_args(argv)
    assert (args.verbose, args.quiet) == (verbose, quiet)
