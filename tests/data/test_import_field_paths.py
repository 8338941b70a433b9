"""Imported plates use field paths 0..n-1 in every well, so ome-zarr-py (napari-ome-zarr) shows
every well."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import tifffile
import zarr
from ome_zarr.io import parse_url
from ome_zarr.reader import Plate as OmeZarrPlate
from ome_zarr.reader import Reader

import omeloc
from omeloc.cli import main
from omeloc.data.tiff_import import SITE_KEY, import_tiff


def _ome_zarr_nodes(path):
    return list(Reader(parse_url(str(path)))())


def _check_every_well_and_field_loads(path, caplog):
    """What napari-ome-zarr draws: the plate's stitched grid (every well's tile), then each field
    image."""
    plate = omeloc.open_plate(path)
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="ome_zarr"):
        node = next(n for n in _ome_zarr_nodes(path) if n.first(OmeZarrPlate) is not None)
        grid = node.data[-1].compute()  # the lowest level: every well's first field, stitched
    assert not [r for r in caplog.records if "Failed to load" in r.getMessage()]
    rows, cols = list(plate.rows), list(plate.columns)
    for well in plate.wells.values():
        assert [img.field for img in well.images] == [str(i) for i in range(len(well.images))]
        lowest = well.images[0].level(len(well.images[0].level_paths) - 1).compute()
        h, w = lowest.shape[-2:]
        r, c = rows.index(well.row), cols.index(well.column)
        np.testing.assert_array_equal(grid[..., r * h : (r + 1) * h, c * w : (c + 1) * w], lowest)
        for img in well.images:
            field_node = _ome_zarr_nodes(f"{path}/{img.path}")[0]
            np.testing.assert_array_equal(np.asarray(field_node.data[0]), img.level(0).compute())
    return plate


def _sites(plate):
    return {
        img.path: zarr.open_group(f"{plate.path}/{img.path}", mode="r").attrs[SITE_KEY]
        for img in plate.images
    }


def test_nf1_import_shows_every_well_in_ome_zarr_reader(shared_data, tmp_path, caplog):
    folder = shared_data / "nf1_plate2"
    if not folder.is_dir():
        pytest.skip(f"{folder} is missing (see shared/data/README.md)")
    out = tmp_path / "nf1.zarr"
    assert main(["-q", "import-tiff", str(folder), str(out), "--preset", "nf1"]) == 0
    plate = _check_every_well_and_field_loads(out, caplog)
    assert [w.name for w in plate.wells.values()] == ["B7", "D6", "D7", "F7", "H12"]
    assert _sites(plate) == {"B/7/0": "3", "D/6/0": "2", "D/7/0": "1", "F/7/0": "2", "H/12/0": "1"}


def test_phenix_import_shows_every_well_in_ome_zarr_reader(shared_data, tmp_path, caplog):
    pytest.importorskip("imagecodecs", reason="the real Phenix export is LZW-compressed")
    folder = shared_data / "jump_phenix"
    if not folder.is_dir():
        pytest.skip(f"{folder} is missing (see shared/data/README.md)")
    out = import_tiff(folder, tmp_path / "jump.zarr", preset="phenix")
    plate = _check_every_well_and_field_loads(out, caplog)
    assert _sites(plate) == {"A/1/0": "1"}  # the export's field 1 (f01)


@pytest.mark.parametrize(
    "preset,names",
    [
        ("phenix", lambda r, s, c: f"r{r:02d}c03f{s:02d}p01-ch{c}sk1fk1fl1.tiff"),
        ("imagexpress", lambda r, s, c: f"P_{'ABCD'[r - 1]}03_s{s}_w{c}.tif"),
        ("cellvoyager", lambda r, s, c: f"W1_{'ABCD'[r - 1]}03_T0001F{s:03d}L01A01Z01C{c:02d}.tif"),
        ("nf1", lambda r, s, c: f"{'ABCD'[r - 1]}3_01_{c}_{s}_{('DAPI', 'GFP')[c - 1]}_001.tif"),
    ],
)
def test_every_preset_writes_fields_0_to_n_with_sites_differing_by_well(
    tmp_path, caplog, preset, names
):
    rng = np.random.default_rng(0)
    sites = {1: (3, 5), 2: (2,)}  # row 1 (A): sites 3 and 5; row 2 (B): site 2
    (tmp_path / "x").mkdir()
    for r, well_sites in sites.items():
        for s in well_sites:
            for c in (1, 2):
                tifffile.imwrite(
                    tmp_path / "x" / names(r, s, c),
                    rng.integers(1, 4000, (16, 16)).astype("uint16"),
                )
    plate = _check_every_well_and_field_loads(
        import_tiff(tmp_path / "x", tmp_path / "p.zarr", preset=preset, levels=1), caplog
    )
    assert _sites(plate) == {"A/3/0": "3", "A/3/1": "5", "B/3/0": "2"}
    np.testing.assert_array_equal(
        plate.image("A/3/1").level(0)[1].compute(), tifffile.imread(tmp_path / "x" / names(1, 5, 2))
    )


def test_regex_import_with_site_numbers_differing_by_well(tmp_path, caplog):
    (tmp_path / "x").mkdir()
    for well, site in (("B2", 7), ("C4", 1), ("D5", 12)):
        tifffile.imwrite(
            tmp_path / "x" / f"{well}-site{site}.tif",
            np.full((2, 16, 16), site, "uint16"),
            metadata={"axes": "CYX"},
        )
    out = import_tiff(
        tmp_path / "x",
        tmp_path / "p.zarr",
        pattern=r"(?P<well>\w\d)-site(?P<site>\d+)\.tif",
        file_axes="CYX",
        levels=1,
    )
    plate = _check_every_well_and_field_loads(out, caplog)
    assert _sites(plate) == {"B/2/0": "7", "C/4/0": "1", "D/5/0": "12"}
    assert int(plate.image("D/5/0").level(0)[0, 0, 0].compute()) == 12
