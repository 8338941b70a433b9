"""Opening plates and images: NGFF 0.4/0.5, level paths, axes, laziness, xarray, bad input."""

from __future__ import annotations

import dask
import numpy as np
import pytest
import zarr
from conftest import random_plate_images
from dask.callbacks import Callback
from ome_zarr.format import FormatV04, FormatV05
from ome_zarr.writer import write_multiscales_metadata, write_plate_metadata, write_well_metadata

import omeloc
from omeloc.errors import ChannelNotFoundError, NotOmeZarrError, PathNotFoundError
from omeloc.ngff.writer import write_image, write_plate


class _CountTasks(Callback):
    def __init__(self):
        super().__init__()
        self.n = 0

    def _pretask(self, key, dsk, state):
        self.n += 1


@pytest.fixture(params=["0.4", "0.5"])
def plate(request, tmp_path):
    images = random_plate_images()
    path = write_plate(
        tmp_path / "p.zarr",
        images,
        channel_names=["actin", "WAVE2"],
        ngff_version=request.param,
        chunks=(32, 32),
        levels=3,
    )
    return path, images, request.param


def test_open_plate_structure_and_pixels(plate):
    path, images, version = plate
    p = omeloc.open_plate(path)
    assert (
        p.is_plate and p.ngff_version == version and p.zarr_format == (2 if version == "0.4" else 3)
    )
    assert list(p.wells) == ["A/1", "A/2", "B/1", "B/2"]
    assert [w.name for w in p.wells.values()] == ["A1", "A2", "B1", "B2"]
    assert len(p.images) == 8 and p.channel_names == ("actin", "WAVE2")
    img = p.image("B/2/1")
    assert img.well == "B/2" and img.field == "1" and img.axes == ("c", "y", "x")
    assert img.level_paths == ("0", "1", "2")
    assert img.shapes == ((2, 96, 80), (2, 48, 40), (2, 24, 20))
    assert img.chunks(0) == (1, 32, 32)
    np.testing.assert_array_equal(img.level(0).compute(), images[("B", "2", "1")])
    np.testing.assert_array_equal(img.channel("WAVE2").compute(), images[("B", "2", "1")][1])
    # lower levels are 2x2 means of level 0
    lvl1 = images[("B", "2", "1")].astype(float).reshape(2, 48, 2, 40, 2).mean(axis=(2, 4))
    np.testing.assert_array_equal(img.level(1).compute(), np.rint(lvl1).astype("uint16"))


def test_opening_and_selecting_computes_nothing(plate):
    path, _, _ = plate
    with _CountTasks() as counter:
        p = omeloc.open_plate(path)
        view = p.to_xarray()
        sel = view.sel(c="actin", image="A/2/0")
        _ = p.images[0].channel("WAVE2", level=1) + 1
    assert counter.n == 0
    assert isinstance(sel.data, dask.array.Array)


def test_xarray_view(plate):
    path, images, _ = plate
    p = omeloc.open_plate(path)
    x = p.to_xarray()
    assert x.dims == ("image", "c", "y", "x")
    assert list(x.c.values) == ["actin", "WAVE2"]
    assert list(x.well.values[:2]) == ["A1", "A1"]
    actin = p.sel(c="actin")
    assert actin.shape == (8, 96, 80)
    np.testing.assert_array_equal(actin.sel(image="B/1/0").values, images[("B", "1", "0")][0])
    per_well = x.sel(c="WAVE2").groupby("well").mean().compute()
    assert per_well.sizes["well"] == 4
    with pytest.raises(ChannelNotFoundError, match="Available channels: actin, WAVE2"):
        p.sel(c="tubulin")


def test_fsspec_url(plate):
    path, images, _ = plate
    p = omeloc.open_plate(f"file://{path}")
    np.testing.assert_array_equal(p.image("A/1/0").level().compute(), images[("A", "1", "0")])


@pytest.mark.parametrize(
    "axes,shape", [("cyx", (3, 40, 50)), ("czyx", (3, 4, 40, 50)), ("tczyx", (2, 3, 4, 40, 50))]
)
@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_single_image_any_axes(tmp_path, axes, shape, version):
    data = np.arange(np.prod(shape), dtype="uint16").reshape(shape)
    path = write_image(
        tmp_path / "img.zarr",
        data,
        channel_names=["a", "b", "c"],
        axes=axes,
        ngff_version=version,
        levels=2,
    )
    p = omeloc.open_plate(path)
    assert not p.is_plate and p.wells == {} and len(p.images) == 1
    img = p.images[0]
    assert img.axes == tuple(axes)
    np.testing.assert_array_equal(
        img.channel("b").compute(), np.take(data, 1, axis=axes.index("c"))
    )
    assert img.to_xarray().sel(c="c").shape == tuple(n for a, n in zip(axes, shape) if a != "c")
    assert omeloc.open_image(path).channel_names == ("a", "b", "c")


def _ome_zarr_plate_with_s0(root_path, version):
    """A sparse plate (B/2 missing) written with ome-zarr-py's writers, level paths s0/s1."""
    fmt = FormatV04() if version == "0.4" else FormatV05()
    root = zarr.open_group(str(root_path), mode="w", zarr_format=fmt.zarr_format)
    wells = ["A/1", "A/2", "B/1"]
    write_plate_metadata(root, ["A", "B"], ["1", "2"], wells, fmt=fmt)
    rng = np.random.default_rng(1)
    truth = {}
    for w in wells:
        wg = root.require_group(w)
        write_well_metadata(wg, [{"path": "0"}], fmt=fmt)
        ig = wg.require_group("0")
        data = rng.integers(0, 255, (1, 3, 1, 64, 64)).astype("uint8")
        truth[w] = data
        kw = {"dimension_names": list("tczyx")} if fmt.zarr_format == 3 else {}
        for i, name in enumerate(("s0", "s1")):
            level = data[..., :: 2**i, :: 2**i]
            arr = ig.create_array(
                name, shape=level.shape, chunks=(1, 2, 1, 32, 32), dtype="uint8", **kw
            )
            arr[...] = level
        datasets = [
            {
                "path": f"s{i}",
                "coordinateTransformations": [
                    {"type": "scale", "scale": [1, 1, 1, 2.0**i, 2.0**i]}
                ],
            }
            for i in range(2)
        ]
        write_multiscales_metadata(ig, datasets, fmt=fmt, axes=list("tczyx"))
    return truth


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_ome_zarr_py_plate_with_s0_levels_and_missing_well(tmp_path, version):
    truth = _ome_zarr_plate_with_s0(tmp_path / "ext.zarr", version)
    p = omeloc.open_plate(tmp_path / "ext.zarr")
    assert (
        list(p.wells) == ["A/1", "A/2", "B/1"] and p.rows == ("A", "B") and p.columns == ("1", "2")
    )
    img = p.image("A/2/0")
    assert img.level_paths == ("s0", "s1") and img.axes == tuple("tczyx")
    assert img.channel_names == ("c0", "c1", "c2")  # no omero metadata: placeholder names
    np.testing.assert_array_equal(img.level(1).compute(), truth["A/2"][..., ::2, ::2])
    # 3 channels in chunks of 2: a new channel would land in an existing chunk; info says so
    d = omeloc.describe(tmp_path / "ext.zarr")
    assert (
        d["append_friendly"] is False
        and "3 channels in chunks of 2 along c" in d["append_problems"][0]
    )


def test_validates_with_ome_zarr_models(plate):
    from ome_zarr_models.v04.hcs import HCS as HCS04
    from ome_zarr_models.v05.hcs import HCS as HCS05

    path, _, version = plate
    group = zarr.open_group(str(path), mode="r")
    model = (HCS04 if version == "0.4" else HCS05).from_zarr(group)
    assert (
        len(model.attributes.ome.plate.wells if version == "0.5" else model.attributes.plate.wells)
        == 4
    )


def test_ome_zarr_py_reader_sees_our_plate(plate):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    path, images, _ = plate
    nodes = list(Reader(parse_url(str(path)))())
    plate_node = nodes[0]
    assert len(plate_node.data[0].shape) >= 3  # ome-zarr stitches the plate into one array
    image_nodes = list(Reader(parse_url(str(path / "A" / "1" / "0")))())
    assert image_nodes[0].metadata["channel_names"] == ["actin", "WAVE2"]
    np.testing.assert_array_equal(np.asarray(image_nodes[0].data[0]), images[("A", "1", "0")])


# -- bad input --------------------------------------------------------------------------------
def test_missing_path(tmp_path):
    with pytest.raises(PathNotFoundError, match="does not exist"):
        omeloc.open_plate(tmp_path / "nope.zarr")


def test_plain_zarr_is_not_ome(tmp_path):
    g = zarr.open_group(str(tmp_path / "plain.zarr"), mode="w")
    g.create_array("x", shape=(4,), dtype="u1")
    with pytest.raises(NotOmeZarrError, match="without OME-Zarr 'plate' or 'multiscales'"):
        omeloc.open_plate(tmp_path / "plain.zarr")
    with pytest.raises(NotOmeZarrError, match="not a Zarr group"):
        omeloc.open_plate(tmp_path)


def test_listed_well_missing(plate):
    import shutil

    path, _, _ = plate
    shutil.rmtree(path / "B" / "2")
    with pytest.raises(PathNotFoundError, match=r"lists well 'B/2' but it is missing"):
        omeloc.open_plate(path)


def test_image_without_channel_axis(tmp_path):
    root = zarr.open_group(str(tmp_path / "yx.zarr"), mode="w", zarr_format=3)
    root.create_array("0", shape=(8, 8), dtype="u2", dimension_names=["y", "x"])
    write_multiscales_metadata(
        root,
        [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1, 1]}]}],
        fmt=FormatV05(),
        axes=["y", "x"],
    )
    with pytest.raises(NotOmeZarrError, match="without c; omeloc needs c, y and x"):
        omeloc.open_plate(tmp_path / "yx.zarr")


def test_unknown_channel_lists_available(plate):
    path, _, _ = plate
    img = omeloc.open_plate(path).images[0]
    with pytest.raises(ChannelNotFoundError, match="Available channels: actin, WAVE2"):
        img.channel("vinculin")


def test_corrupted_chunk_is_a_clear_error(plate):
    from omeloc.errors import CorruptDataError

    path, images, version = plate
    p = omeloc.open_plate(path)
    img = p.image("A/1/0")
    chunk = next(
        f
        for f in sorted((path / "A" / "1" / "0" / "0").rglob("*"))
        if f.is_file() and not f.name.startswith((".", "zarr"))
    )
    chunk.write_bytes(b"garbage")
    with pytest.raises(CorruptDataError, match=r"A/1/0/0 .*restore it from a backup"):
        img.level(0).compute()
    # other images still read
    np.testing.assert_array_equal(p.image("A/2/0").level(0).compute(), images[("A", "2", "0")])


def test_truncated_metadata_is_a_clear_error(plate):
    path, _, version = plate
    meta = path / ("zarr.json" if version == "0.5" else ".zattrs")
    meta.write_text(meta.read_text()[:60])
    with pytest.raises(NotOmeZarrError, match="unreadable Zarr metadata"):
        omeloc.open_plate(path)
