"""import-tiff: the real NF1 folder, pixels equal to the TIFFs, and bad folders refused
unchanged."""

from __future__ import annotations

import re

import numpy as np
import pytest
import tifffile
import zarr

import omeloc
from conftest import assert_same_pixels
from omeloc.cli import main
from omeloc.errors import InputError
from omeloc.data.tiff_import import NF1_PATTERN, import_tiff


@pytest.mark.parametrize("version", ["0.5", "0.4"])
def test_import_nf1_folder_pixels_equal_tiffs(shared_data, tmp_path, version):
    folder = shared_data / "nf1_plate2"
    out = import_tiff(folder, tmp_path / "nf1.zarr", pattern=NF1_PATTERN, ngff_version=version)
    plate = omeloc.open_plate(out)
    assert plate.ngff_version == version
    assert [w.name for w in plate.wells.values()] == ["B7", "D6", "D7", "F7", "H12"]
    assert plate.rows == tuple("ABCDEFGH") and plate.columns == tuple(str(i) for i in range(1, 13))
    assert plate.channel_names == ("DAPI", "GFP", "RFP")
    regex = re.compile(NF1_PATTERN)
    for tif in sorted(folder.glob("*.tif")):
        m = regex.fullmatch(tif.name)
        img = plate.well(m["well"]).images[0]
        np.testing.assert_array_equal(img.channel(m["stain"]).compute(), tifffile.imread(tif))
    img = plate.images[0]
    assert img.shapes[0] == (3, 904, 1224) and len(img.level_paths) == 3
    assert img.chunks(0) == (1, 256, 256)  # one channel plane per chunk: append-friendly
    assert omeloc.describe(out)["append_friendly"]
    from ome_zarr_models.v04.hcs import HCS as HCS04
    from ome_zarr_models.v05.hcs import HCS as HCS05

    (HCS05 if version == "0.5" else HCS04).from_zarr(zarr.open_group(str(out), mode="r"))


def test_import_with_renamed_channels_and_cli(shared_data, tmp_path, capsys):
    out = tmp_path / "nf1.zarr"
    code = main(
        [
            "import-tiff",
            str(shared_data / "nf1_plate2"),
            str(out),
            "--pattern",
            NF1_PATTERN,
            "--channel-names",
            "RFP=actin,GFP=ER,DAPI=nuclei",
            "--levels",
            "2",
        ]
    )
    assert code == 0
    plate = omeloc.open_plate(out)
    assert plate.channel_names == ("nuclei", "ER", "actin")
    assert len(plate.images[0].level_paths) == 2
    code = main(["info", str(out)])
    text = capsys.readouterr().out
    assert code == 0 and "channels nuclei, ER, actin" in text and "append   yes" in text


def _tiffs(folder, names_shapes):
    folder.mkdir()
    for name, shape in names_shapes:
        tifffile.imwrite(folder / name, np.ones(shape, "uint16"))
    return folder


def test_unmatched_files_refused_nothing_written(tmp_path, capsys):
    folder = _tiffs(tmp_path / "t", [("A1_01_1_1_DAPI_001.tif", (8, 8)), ("notes.tif", (8, 8))])
    with pytest.raises(InputError, match="do not match --pattern"):
        import_tiff(folder, tmp_path / "o.zarr", pattern=NF1_PATTERN)
    assert not (tmp_path / "o.zarr").exists()
    assert (
        main(["import-tiff", str(folder), str(tmp_path / "o.zarr"), "--pattern", NF1_PATTERN]) == 2
    )
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "notes.tif" in err and "Traceback" not in err


def test_differing_shapes_refused(tmp_path):
    folder = _tiffs(
        tmp_path / "t", [("A1_01_1_1_DAPI_001.tif", (8, 8)), ("A1_01_2_1_GFP_001.tif", (8, 9))]
    )
    with pytest.raises(InputError, match="must share shape and dtype"):
        import_tiff(folder, tmp_path / "o.zarr", pattern=NF1_PATTERN)
    assert not (tmp_path / "o.zarr").exists() and not (tmp_path / "o.zarr.importing").exists()


def test_missing_channel_and_existing_output_refused(tmp_path):
    folder = _tiffs(
        tmp_path / "t",
        [
            ("A1_01_1_1_DAPI_001.tif", (8, 8)),
            ("A1_01_2_1_GFP_001.tif", (8, 8)),
            ("A2_01_1_1_DAPI_001.tif", (8, 8)),
        ],
    )
    with pytest.raises(InputError, match="Well A2 field 1 has no TIFF for channel"):
        import_tiff(folder, tmp_path / "o.zarr", pattern=NF1_PATTERN)
    (tmp_path / "exists.zarr").mkdir()
    with pytest.raises(InputError, match="already exists"):
        import_tiff(folder, tmp_path / "exists.zarr", pattern=NF1_PATTERN)
    with pytest.raises(InputError, match="not a valid regular expression"):
        import_tiff(folder, tmp_path / "o.zarr", pattern="(?P<well>")


def test_killed_import_leaves_no_plate_and_a_rerun_completes(shared_data, tmp_path):
    import os
    import signal
    import subprocess
    import sys

    folder = shared_data / "nf1_plate2"
    ref = import_tiff(folder, tmp_path / "ref.zarr", pattern=NF1_PATTERN)
    out = tmp_path / "nf1.zarr"
    env = dict(os.environ, OMELOC_TEST_KILL_AT="import_mid")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "omeloc.cli",
            "-q",
            "import-tiff",
            str(folder),
            str(out),
            "--pattern",
            NF1_PATTERN,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert (
        not out.exists() and (tmp_path / "nf1.zarr.importing").exists()
    )  # half a plate never at `out`
    assert main(["-q", "import-tiff", str(folder), str(out), "--pattern", NF1_PATTERN]) == 0
    assert not (tmp_path / "nf1.zarr.importing").exists()
    assert_same_pixels(ref, out)
