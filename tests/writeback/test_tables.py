"""Result tables in the plate (Fractal/ngio convention): written through ngio, read back by ngio and
AnnData with the CSV's numbers, listed by ``omeloc info``, replaced on rerun, rolled back when
killed."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import tree_digest

ngio = pytest.importorskip("ngio", reason="table tests need ngio: pip install 'omeloc[fractal]'")
anndata = pytest.importorskip("anndata")

import omeloc
from omeloc.analysis.evaluate import evaluate
from omeloc.errors import JournalError
from omeloc.ngff.info import describe, format_description
from omeloc.writeback.protocol import add_channel
from omeloc.writeback.tables import (
    TABLES_JOURNAL_KEY,
    TableData,
    recover_tables,
    write_tables,
)

REPO = Path(__file__).resolve().parents[2]
VIRTUAL = "WAVE2 (virtual)"


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """A 1x3-well omeloc plate with a noisy copy of WAVE2 written as a virtual channel."""
    path = omeloc.make_plate(
        tmp_path_factory.mktemp("tables") / "plate.zarr",
        rows=1,
        cols=3,
        fields=2,
        size=48,
        chunks=(24, 24),
        levels=2,
        channels=("actin", "WAVE2"),
    )
    plate = omeloc.open_plate(path)
    rng = np.random.default_rng(0)
    data = {
        img.path: img.level(0)[1].compute().astype(float) + rng.normal(0, 50, img.shapes[0][1:])
        for img in plate.images
    }
    add_channel(
        path, VIRTUAL, data, provenance={"source_channels": ["actin"]}, scheduler="synchronous"
    )
    return path


@pytest.fixture
def plate(template, tmp_path) -> Path:
    dst = tmp_path / "plate.zarr"
    shutil.copytree(template, dst)
    return dst


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _same(a: object, b: float) -> bool:
    x = {"True": 1.0, "False": 0.0}.get(str(a), a)
    x = float(x)  # type: ignore[arg-type]
    return (math.isnan(x) and math.isnan(b)) or x == b


def test_evaluate_tables_read_by_ngio_and_anndata_hold_the_csv_numbers(plate, tmp_path):
    res = evaluate(plate, VIRTUAL, "WAVE2", out=tmp_path / "eval", tables=True)
    assert res.files["fields_table"].endswith("tables/WAVE2_virtual_fields")
    ng = ngio.open_ome_zarr_plate(str(plate))
    assert set(ng.list_tables()) == {"WAVE2_virtual_fields", "WAVE2_virtual_wells"}
    for name, csv_key in (
        ("WAVE2_virtual_fields", "metrics_csv"),
        ("WAVE2_virtual_wells", "wells_csv"),
    ):
        table = ng.get_table(name)
        assert table.table_type() == "feature_table"
        df = table.dataframe
        ad = anndata.read_zarr(str(plate / "tables" / name))
        rows = _csv(res.files[csv_key])
        assert list(df.index) == [r["path"] for r in rows] == list(ad.obs_names)
        numeric = [c for c in rows[0] if c in ad.var_names]
        assert {"pearson_r", "ssim", "nrmse"} <= set(numeric)
        for i, row in enumerate(rows):
            for col in numeric:
                assert _same(row[col], float(df[col].iloc[i])), (name, col)
                assert _same(row[col], float(ad[i, col].X.ravel()[0])), (name, col)
            assert df["well"].iloc[i] == row["well"]
        attrs = json.loads((plate / "tables" / name / "zarr.json").read_text())["attributes"]
        assert attrs["type"] == "feature_table" and attrs["index_key"] == "path"
    assert "z" in ng.get_table("WAVE2_virtual_wells").dataframe.columns  # the screening readout
    d = describe(plate)
    assert {t["name"] for t in d["tables"]} == {"WAVE2_virtual_fields", "WAVE2_virtual_wells"}
    assert "WAVE2_virtual_wells (feature_table, anndata)" in format_description(d)
    assert omeloc.open_plate(plate).channel_names == (
        "actin",
        "WAVE2",
        VIRTUAL,
    )  # omeloc still reads it


def test_rerun_replaces_the_tables(plate, tmp_path, capsys):
    from omeloc.cli import main

    assert (
        main(
            [
                "evaluate",
                str(plate),
                "--pred",
                VIRTUAL,
                "--truth",
                "WAVE2",
                "--out",
                str(tmp_path / "a"),
            ]
        )
        == 0
    )
    assert (
        "wells_table: " in capsys.readouterr().out
    )  # the CLI writes them by default (ngio installed)
    assert (
        len(ngio.open_ome_zarr_plate(str(plate)).get_table("WAVE2_virtual_fields").dataframe) == 6
    )
    evaluate(plate, VIRTUAL, "WAVE2", out=tmp_path / "b", tables=True, wells=["A1"])
    df = ngio.open_ome_zarr_plate(str(plate)).get_table("WAVE2_virtual_fields").dataframe
    assert list(df.index) == ["A/1/0", "A/1/1"]
    assert not (plate / ".omeloc_tables_backup").exists()
    root = json.loads((plate / "zarr.json").read_text())["attributes"]
    assert TABLES_JOURNAL_KEY not in root and ".omeloc_lock" not in os.listdir(plate)


def test_tables_in_an_ngff_04_plate_read_back_by_ngio_and_anndata(tmp_path):
    path = omeloc.make_plate(
        tmp_path / "v2.zarr",
        rows=1,
        cols=2,
        fields=1,
        size=32,
        chunks=(32, 32),
        levels=1,
        channels=("actin",),
        ngff="0.4",
    )
    rows = ({"path": "A/1/0", "r": 0.25, "flag": True}, {"path": "A/2/0", "r": -0.5, "flag": False})
    write_tables(path, [TableData("scores", rows)])
    df = ngio.open_ome_zarr_plate(str(path)).get_table("scores").dataframe
    assert df["r"].tolist() == [0.25, -0.5] and df["flag"].tolist() == [1, 0]
    ad = anndata.read_zarr(str(path / "tables" / "scores"))
    assert list(ad.obs_names) == ["A/1/0", "A/2/0"] and ad[:, "r"].X.ravel().tolist() == [
        0.25,
        -0.5,
    ]
    assert json.loads((path / "tables" / ".zattrs").read_text())["tables"] == ["scores"]


def test_evaluate_without_tables_leaves_the_plate_unchanged(plate, tmp_path):
    before = tree_digest(plate)
    evaluate(plate, VIRTUAL, "WAVE2", out=tmp_path / "eval", tables=False)
    assert tree_digest(plate) == before


def test_a_failed_table_write_rolls_back(plate, tmp_path):
    write_tables(plate, [TableData("old", ({"path": "A/1/0", "v": 1.0},))])
    before = tree_digest(plate)
    bad = TableData(
        "old", ({"path": "A/1/0", "v": {"not": "a number"}},)
    )  # no backend stores a dict
    with pytest.raises(omeloc.OmelocError, match="rolled back"):
        write_tables(plate, [TableData("new", ({"path": "x", "v": 2.0},)), bad])
    assert tree_digest(plate) == before


_KILLED_WRITE = """
import sys
from omeloc.writeback.tables import TableData, write_tables
write_tables(sys.argv[1], [TableData("first", ({"path": "A/1/0", "v": 3.0},)),
                           TableData("second", ({"path": "A/1/0", "v": 4.0},))])
"""


@pytest.mark.parametrize("point", ["tables_journal", "table_written"])
def test_a_killed_table_write_is_rolled_back_by_the_next_one(plate, point):
    write_tables(
        plate, [TableData("first", ({"path": "A/1/0", "v": 1.0}, {"path": "A/2/0", "v": 2.0}))]
    )
    before = tree_digest(plate)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMELOC_TEST_KILL_AT": point}
    proc = subprocess.run(
        [sys.executable, "-c", _KILLED_WRITE, str(plate)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert tree_digest(plate) != before  # the killed run left its journal (and maybe half a table)
    assert recover_tables(plate) is True
    assert tree_digest(plate) == before
    df = ngio.open_ome_zarr_plate(str(plate)).get_table("first").dataframe
    assert df["v"].tolist() == [1.0, 2.0]


def test_a_crafted_table_journal_is_refused_and_nothing_deleted(plate, tmp_path):
    outside = tmp_path / "victim.txt"
    outside.write_text("keep")
    root = plate / "zarr.json"
    doc = json.loads(root.read_text())
    doc["attributes"][TABLES_JOURNAL_KEY] = {
        "run_id": "0" * 32,
        "pid": 1,
        "host": "elsewhere",
        "heartbeat": 0,
        "names": ["t"],
        "backup": {"../victim.txt": "0" * 64},
    }
    root.write_text(json.dumps(doc))
    before = tree_digest(plate)
    with pytest.raises((JournalError, omeloc.OmelocError)):
        recover_tables(plate)
    assert tree_digest(plate) == before and outside.read_text() == "keep"


def test_omeloc_recover_rolls_back_a_killed_table_write(plate):
    write_tables(plate, [TableData("first", ({"path": "A/1/0", "v": 1.0},))])
    before = tree_digest(plate)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMELOC_TEST_KILL_AT": "table_written"}
    proc = subprocess.run(
        [sys.executable, "-c", _KILLED_WRITE, str(plate)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == -9, proc.stderr[-2000:]
    cli = subprocess.run(
        [sys.executable, "-m", "omeloc.cli", "-q", "recover", str(plate)],
        env=env | {"OMELOC_TEST_KILL_AT": ""},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert cli.returncode == 0, cli.stderr[-2000:]
    assert tree_digest(plate) == before
    assert ngio.open_ome_zarr_plate(str(plate)).get_table("first").dataframe["v"].tolist() == [1.0]
