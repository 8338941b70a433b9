"""import-tiff on real export layouts: vendor naming presets, numeric rows, compression,
multi-plane TIFFs."""

from __future__ import annotations

import re

import numpy as np
import pytest
import tifffile

import omeloc
from omeloc.cli import main
from omeloc.data.tiff_import import PRESETS, import_tiff
from omeloc.errors import InputError

pytest.importorskip("imagecodecs", reason="imagecodecs (a dependency) decodes LZW and zstd TIFFs")


def _write(folder, files, compression=None, **kw):
    """Write ``{name: array}`` as TIFFs into ``folder``; the arrays, for comparison."""
    folder.mkdir(exist_ok=True)
    for name, data in files.items():
        tifffile.imwrite(folder / name, data, compression=compression, **kw)
    return files


def _phenix_folder(
    folder,
    *,
    rows=(2, 3),
    fields=(1, 2),
    planes=(1, 2),
    channels=(1, 2),
    times=(1,),
    compression="lzw",
    seed=0,
):
    rng = np.random.default_rng(seed)
    files = {
        f"r{r:02d}c{3:02d}f{f:02d}p{p:02d}-ch{c}sk{t}fk1fl1.tiff": rng.integers(
            0, 60000, (40, 48)
        ).astype("uint16")
        for r in rows
        for f in fields
        for p in planes
        for c in channels
        for t in times
    }
    return _write(folder, files, compression=compression)


def test_phenix_lzw_folder_imports_pixel_exact(tmp_path):
    files = _phenix_folder(tmp_path / "export")
    assert (
        tifffile.TiffFile(next(iter((tmp_path / "export").iterdir()))).pages[0].compression == 5
    )  # LZW
    out = import_tiff(
        tmp_path / "export",
        tmp_path / "p.zarr",
        preset="phenix",
        channel_names={"1": "actin"},
        levels=2,
    )
    plate = omeloc.open_plate(out)
    assert [w.name for w in plate.wells.values()] == ["B3", "C3"]  # numeric rows 02, 03 → B, C
    assert plate.channel_names == ("actin", "2")
    img = plate.image("B/3/0")  # fields 1, 2 of the names are field paths 0, 1
    assert img.axes == ("c", "z", "y", "x") and img.shape == (2, 2, 40, 48)
    regex = re.compile(PRESETS["phenix"].pattern)
    for name, data in files.items():
        m = regex.fullmatch(name)
        image = plate.image(f"{'ABC'[int(m['row']) - 1]}/3/{int(m['field']) - 1}")
        plane = image.level(0)[int(m["channel"]) - 1, int(m["plane"]) - 1].compute()
        np.testing.assert_array_equal(plane, data)


def test_phenix_time_points_become_a_t_axis(tmp_path):
    files = _phenix_folder(
        tmp_path / "export",
        rows=(1,),
        fields=(1,),
        planes=(1,),
        times=(1, 2, 3),
        compression="zlib",
    )
    plate = omeloc.open_plate(
        import_tiff(tmp_path / "export", tmp_path / "p.zarr", preset="phenix", levels=1)
    )
    img = plate.images[0]
    assert img.axes == ("t", "c", "y", "x") and img.shape == (3, 2, 40, 48)
    np.testing.assert_array_equal(
        img.level(0)[2, 1].compute(), files["r01c03f01p01-ch2sk3fk1fl1.tiff"]
    )


def test_real_opera_phenix_export_imports_pixel_exact(shared_data, tmp_path):
    folder = shared_data / "jump_phenix"
    if not folder.is_dir():
        pytest.skip(f"{folder} is missing (see shared/data/README.md)")
    out = tmp_path / "jump.zarr"
    assert (
        main(
            [
                "-q",
                "import-tiff",
                str(folder),
                str(out),
                "--preset",
                "phenix",
                "--channel-names",
                "2=ER,3=AGP,5=DNA",
            ]
        )
        == 0
    )
    plate = omeloc.open_plate(out)
    assert [w.name for w in plate.wells.values()] == ["A1"] and plate.channel_names == (
        "ER",
        "AGP",
        "DNA",
    )
    for tif in sorted(folder.glob("*.tiff")):
        assert tifffile.TiffFile(tif).pages[0].compression == 5  # the real export is LZW-compressed
        label = {"2": "ER", "3": "AGP", "5": "DNA"}[re.search(r"-ch(\d)", tif.name)[1]]
        np.testing.assert_array_equal(
            plate.images[0].channel(label).compute(), tifffile.imread(tif)
        )


def test_imagexpress_names_with_guid_and_thumbnails(tmp_path):
    rng = np.random.default_rng(1)
    guid = "6F89C55C-0875-4F9C-8C8B-D2A8B1F8F2C8"
    files = {
        f"My_Plate_{w}_s{s}_w{c}{guid if c == 2 else ''}.tif": rng.integers(
            0, 4000, (32, 32)
        ).astype("uint16")
        for w in ("B02", "C11")
        for s in (1, 2)
        for c in (1, 2)
    }
    _write(tmp_path / "ix", files, compression="zstd")
    _write(tmp_path / "ix", {"My_Plate_B02_s1_w1_thumb.tif": np.zeros((8, 8), "uint16")})
    plate = omeloc.open_plate(
        import_tiff(tmp_path / "ix", tmp_path / "p.zarr", preset="imagexpress", levels=1)
    )
    assert [w.name for w in plate.wells.values()] == ["B2", "C11"] and plate.channel_names == (
        "1",
        "2",
    )
    np.testing.assert_array_equal(
        plate.image("C/11/1").channel("2").compute(), files[f"My_Plate_C11_s2_w2{guid}.tif"]
    )


def test_cellvoyager_names(tmp_path):
    rng = np.random.default_rng(2)
    files = {
        f"W1_D04_T0001F{f:03d}L01A01Z{z:02d}C{c:02d}.tif": rng.integers(0, 4000, (24, 24)).astype(
            "uint16"
        )
        for f in (1, 2)
        for z in (1, 2, 3)
        for c in (1, 2)
    }
    _write(tmp_path / "cv", files)
    plate = omeloc.open_plate(
        import_tiff(tmp_path / "cv", tmp_path / "p.zarr", preset="cellvoyager", levels=1)
    )
    img = plate.image("D/4/1")
    assert img.axes == ("c", "z", "y", "x") and img.shape == (2, 3, 24, 24)
    np.testing.assert_array_equal(
        img.level(0)[1, 2].compute(), files["W1_D04_T0001F002L01A01Z03C02.tif"]
    )


@pytest.mark.parametrize("row,expected", [("03", "C"), ("c", "C"), ("C", "C")])
def test_custom_pattern_with_numeric_or_letter_rows(tmp_path, row, expected):
    files = {
        f"plate_{row}_{col}_{ch}.tif": np.full((16, 16), i, "uint16")
        for i, (col, ch) in enumerate([("07", "dapi"), ("07", "gfp")])
    }
    _write(tmp_path / "t", files)
    out = import_tiff(
        tmp_path / "t",
        tmp_path / "p.zarr",
        levels=1,
        pattern=r"plate_(?P<row>\w+?)_(?P<column>\d+)_(?P<channel>\w+)\.tif",
    )
    plate = omeloc.open_plate(out)
    assert [w.name for w in plate.wells.values()] == [f"{expected}7"] and plate.channel_names == (
        "dapi",
        "gfp",
    )
    assert int(plate.images[0].channel("gfp").compute()[0, 0]) == 1


def test_multichannel_ome_tiff_and_imagej_hyperstack(tmp_path):
    rng = np.random.default_rng(3)
    ome = {
        f"{w}.ome.tif": rng.integers(0, 4000, (3, 20, 20)).astype("uint16") for w in ("A1", "B2")
    }
    _write(
        tmp_path / "ome",
        ome,
        ome=True,
        compression="zlib",
        metadata={"axes": "CYX", "Channel": {"Name": ["DNA", "ER", "actin"]}},
    )
    plate = omeloc.open_plate(
        import_tiff(
            tmp_path / "ome", tmp_path / "ome.zarr", pattern=r"(?P<well>\w\d)\.ome\.tif", levels=1
        )
    )
    assert plate.channel_names == ("DNA", "ER", "actin")
    np.testing.assert_array_equal(plate.image("B/2/0").level(0).compute(), ome["B2.ome.tif"])

    stack = {"A1_s1.tif": rng.integers(0, 4000, (2, 3, 20, 20)).astype("uint16")}  # ZCYX
    _write(tmp_path / "ij", stack, imagej=True, metadata={"axes": "ZCYX"})
    img = omeloc.open_plate(
        import_tiff(
            tmp_path / "ij",
            tmp_path / "ij.zarr",
            levels=1,
            pattern=r"(?P<well>\w\d)_s(?P<site>\d)\.tif",
        )
    ).images[0]
    assert img.axes == ("c", "z", "y", "x")
    np.testing.assert_array_equal(img.level(0).compute(), stack["A1_s1.tif"].transpose(1, 0, 2, 3))


def test_planes_of_unknown_meaning_need_file_axes(tmp_path, capsys):
    data = np.arange(2 * 16 * 16, dtype="uint16").reshape(2, 16, 16)
    folder = tmp_path / "t"
    folder.mkdir()
    with tifffile.TiffWriter(
        folder / "A1.tif"
    ) as tw:  # two pages, no metadata saying what they are
        for plane in data:
            tw.write(plane, metadata=None)
    pattern = r"(?P<well>\w\d)\.tif"
    assert main(["import-tiff", str(folder), str(tmp_path / "o.zarr"), "--pattern", pattern]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--file-axes" in err and not (tmp_path / "o.zarr").exists()
    img = omeloc.open_plate(
        import_tiff(folder, tmp_path / "o.zarr", pattern=pattern, file_axes="CYX", levels=1)
    ).images[0]
    assert img.channel_names == ("c0", "c1")
    np.testing.assert_array_equal(img.level(0).compute(), data)


def test_folder_mixing_presets_is_refused_with_one_line(tmp_path, capsys):
    _phenix_folder(tmp_path / "mix", rows=(1,), fields=(1,), planes=(1,), channels=(1,))
    _write(tmp_path / "mix", {"P_B02_s1_w1.tif": np.zeros((40, 48), "uint16")})
    assert (
        main(["import-tiff", str(tmp_path / "mix"), str(tmp_path / "o.zarr"), "--preset", "phenix"])
        == 2
    )
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "P_B02_s1_w1.tif" in err and "--preset imagexpress" in err
    assert not (tmp_path / "o.zarr").exists() and not (tmp_path / "o.zarr.importing").exists()


def test_missing_plane_and_missing_codec_refused_before_writing(tmp_path, monkeypatch):
    files = _phenix_folder(tmp_path / "export", rows=(1,), fields=(1,))
    (tmp_path / "export" / next(n for n in files if "p02-ch2" in n)).unlink()
    with pytest.raises(InputError, match=r"no TIFF for channel '2' at time 0, plane 1"):
        import_tiff(tmp_path / "export", tmp_path / "o.zarr", preset="phenix")
    _phenix_folder(tmp_path / "full", rows=(1,), fields=(1,))

    def no_codec(*args, **kwargs):
        raise ValueError("<COMPRESSION.LZW: 5> requires the 'imagecodecs' package")

    monkeypatch.setattr(tifffile, "imread", no_codec)
    with pytest.raises(InputError, match=r"LZW-compressed .*pip install imagecodecs"):
        import_tiff(tmp_path / "full", tmp_path / "o.zarr", preset="phenix")
    assert not (tmp_path / "o.zarr").exists() and not (tmp_path / "o.zarr.importing").exists()
