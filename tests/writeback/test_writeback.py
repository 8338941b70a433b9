"""Write-back: adding a virtual channel in place (NGFF 0.4/0.5), checked with independent
readers."""

from __future__ import annotations

import functools
import http.server
import json
import shutil
import threading
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import zarr
from conftest import random_plate_images, tree_digest
from ome_zarr.io import parse_url
from ome_zarr.reader import Plate as OzPlate
from ome_zarr.reader import Reader

import omeloc
from omeloc.errors import ConcurrentWriteError, InputError, LayoutError, ReadOnlyStoreError
from omeloc.ngff.pyramid import cast_to_dtype, downsample_mean
from omeloc.ngff.writer import write_image, write_plate
from omeloc.writeback.journal import JOURNAL_KEY
from omeloc.writeback.protocol import AddChannelResult, WritePlan, add_channel, recover

ROWS, COLS, FIELDS, SHAPE = "AB", ("1", "2"), ("0", "1"), (2, 96, 80)
_META = {"zarr.json", ".zattrs", ".zarray", ".zgroup", ".zmetadata"}


def _prediction(seed: int = 1) -> dict[str, np.ndarray]:
    """Float data with values below 0 and above the uint16 range (clipping must happen)."""
    rng = np.random.default_rng(seed)
    return {
        f"{r}/{c}/{f}": rng.uniform(-500, 70000, SHAPE[1:])
        for r in ROWS
        for c in COLS
        for f in FIELDS
    }


@functools.cache
def _template(version: str, root: str) -> Path:
    return write_plate(
        Path(root) / f"template{version}.zarr",
        random_plate_images(ROWS, COLS, FIELDS, SHAPE),
        channel_names=["actin", "WAVE2"],
        ngff_version=version,
        chunks=(32, 32),
        levels=3,
    )


@pytest.fixture(scope="session")
def _templates(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("templates"))
    return {v: _template(v, root) for v in ("0.4", "0.5")}


@pytest.fixture(params=["0.4", "0.5"])
def plate(request, tmp_path, _templates):
    dst = tmp_path / "p.zarr"
    shutil.copytree(_templates[request.param], dst)
    return dst


def _expected_levels(level0: np.ndarray, shapes, dtype="uint16") -> list[np.ndarray]:
    out = [cast_to_dtype(level0, dtype)]
    for shape in shapes[1:]:
        out.append(downsample_mean(out[-1], ("y", "x"), shape[1:]))
    return out


def _is_chunk(rel: str) -> bool:
    return rel.rsplit("/", 1)[-1] not in _META


def test_add_channel_plate_every_level_originals_untouched(plate):
    before = tree_digest(plate)
    data = _prediction()
    result = add_channel(
        plate, "WAVE2 (predicted)", data, provenance={"source_channel": "actin", "model": "unet"}
    )
    assert isinstance(result, AddChannelResult)
    assert (result.images, result.levels, result.channel_index) == (8, 3, 2)
    assert result.bytes_written == 8 * (96 * 80 + 48 * 40 + 24 * 20) * 2
    after = tree_digest(plate)
    # invariant 1: every pre-existing chunk file is byte-identical, and so is every other file
    # except the metadata documents of the images and their arrays
    for rel, digest in before.items():
        if _is_chunk(rel) or not rel.startswith(
            tuple(f"{r}/{c}/{f}" for r in ROWS for c in COLS for f in FIELDS)
        ):
            assert after[rel] == digest, rel
    assert (
        json.loads(
            (plate / ("zarr.json" if (plate / "zarr.json").exists() else ".zattrs")).read_text()
        )
        .get("attributes", {})
        .get(JOURNAL_KEY)
        is None
    )
    p = omeloc.open_plate(plate)
    for img in p.images:
        assert img.channel_names == ("actin", "WAVE2", "WAVE2 (predicted)")
        assert len(img.omero["channels"]) == 3 == img.shape[0]
        expected = _expected_levels(data[img.path], img.shapes)
        for level, want in enumerate(expected):
            np.testing.assert_array_equal(img.channel("WAVE2 (predicted)", level).compute(), want)
        prov = img.attrs["omeloc"]["channels"]["WAVE2 (predicted)"]
        assert (
            prov["virtual"] is True
            and prov["source_channel"] == "actin"
            and prov["model"] == "unet"
        )
        window = img.omero["channels"][2]["window"]
        assert (
            window["min"] == 0
            and window["max"] == 65535
            and 0 <= window["start"] < window["end"] <= 65535
        )
    assert JOURNAL_KEY not in p.attrs


def test_whole_plane_blocks_write_every_level_in_one_task_with_the_same_bytes(
    plate, tmp_path, monkeypatch
):
    """Data in whole-plane blocks (prediction regions): each level-0 task also writes the lower
    levels from memory (no level-0 re-read, no lower-level graph); the bytes equal the
    level-by-level write."""
    import dask.array as da

    from omeloc.writeback import pixels

    other = tmp_path / "blocks.zarr"
    shutil.copytree(plate, other)
    data = _prediction()
    add_channel(other, "pred", data)  # numpy: write-block tasks, lower levels level by level
    lower_graphs = []
    real = pixels.lower_level_graph
    monkeypatch.setattr(
        pixels,
        "lower_level_graph",
        lambda *a, **k: lower_graphs.append(real(*a, **k)) or lower_graphs[-1],
    )
    add_channel(plate, "pred", {k: da.from_array(v, chunks=v.shape) for k, v in data.items()})
    assert lower_graphs == [None, None]  # levels 1 and 2 were written by the level-0 tasks
    fused, plain = tree_digest(plate), tree_digest(other)
    assert {k: v for k, v in fused.items() if _is_chunk(k)} == {
        k: v for k, v in plain.items() if _is_chunk(k)
    }
    for img in omeloc.open_plate(plate).images:
        for level, want in enumerate(_expected_levels(data[img.path], img.shapes)):
            np.testing.assert_array_equal(img.channel("pred", level).compute(), want)


def test_pixel_graphs_in_batches_of_images_write_the_same_bytes(plate, tmp_path, monkeypatch):
    """Each level runs as graphs of a few images at a time (flat memory on plates of thousands of
    images)."""
    from omeloc.writeback import pixels

    other = tmp_path / "one-graph.zarr"
    shutil.copytree(plate, other)
    data = _prediction()
    add_channel(other, "pred", data)
    descs: list[str] = []
    real = pixels.level0_graph
    monkeypatch.setattr(pixels, "BATCH_IMAGES", 3)
    monkeypatch.setattr(
        pixels,
        "level0_graph",
        lambda plan, *a, **k: descs.append(len(plan.images)) or real(plan, *a, **k),
    )
    add_channel(plate, "pred", data)
    assert descs == [3, 3, 2]
    batched, single = tree_digest(plate), tree_digest(other)
    assert {k: v for k, v in batched.items() if _is_chunk(k)} == {
        k: v for k, v in single.items() if _is_chunk(k)
    }


def test_independent_readers_see_the_new_channel(plate):
    data = _prediction()
    add_channel(plate, "pred", data)
    # ome-zarr-py's reader: the plate node stitches the first field of every well
    nodes = list(Reader(parse_url(str(plate)))())
    plate_node = nodes[0]
    spec = next(s for s in plate_node.specs if isinstance(s, OzPlate))
    assert sorted(spec.well_paths) == [f"{r}/{c}" for r in ROWS for c in COLS]
    stitched = np.asarray(plate_node.data[0])
    assert stitched.shape == (3, 2 * 96, 2 * 80)
    for i, r in enumerate(ROWS):
        for j, c in enumerate(COLS):
            tile = stitched[2, i * 96 : (i + 1) * 96, j * 80 : (j + 1) * 80]
            np.testing.assert_array_equal(tile, cast_to_dtype(data[f"{r}/{c}/0"], "uint16"))
    for r in ROWS:
        for c in COLS:
            for f in FIELDS:
                node = next(iter(Reader(parse_url(str(plate / r / c / f)))()))
                assert node.metadata["channel_names"] == ["actin", "WAVE2", "pred"]
                assert [tuple(d.shape) for d in node.data] == [
                    (3, 96, 80),
                    (3, 48, 40),
                    (3, 24, 20),
                ]
    # ome-zarr-models validates the whole plate
    group = zarr.open_group(str(plate), mode="r")
    if group.metadata.zarr_format == 3:
        from ome_zarr_models.v05.hcs import HCS
    else:
        from ome_zarr_models.v04.hcs import HCS
    hcs = HCS.from_zarr(group)
    assert len(list(hcs.well_groups)) == 4


def test_overwrite_replaces_only_the_virtual_channel(plate):
    add_channel(plate, "pred", _prediction(1))
    before = tree_digest(plate)
    with pytest.raises(InputError, match="already exists"):
        add_channel(plate, "pred", _prediction(2))
    with pytest.raises(InputError, match="not a virtual channel"):
        add_channel(plate, "actin", _prediction(2), overwrite=True)
    assert tree_digest(plate) == before
    new = _prediction(2)
    result = add_channel(plate, "pred", new, overwrite=True)
    assert result.channel_index == 2
    after = tree_digest(plate)
    p = omeloc.open_plate(plate)
    for img in p.images:
        assert img.channel_names == ("actin", "WAVE2", "pred")
        for level, want in enumerate(_expected_levels(new[img.path], img.shapes)):
            np.testing.assert_array_equal(img.channel("pred", level).compute(), want)
    # only chunks of channel 2 and metadata documents changed
    for rel, digest in before.items():
        if after.get(rel) != digest and _is_chunk(rel):
            parts = rel.split("/")
            chunk = parts[4:] if parts[4] != "c" else parts[5:]
            assert chunk[0] == "2", rel
    assert not any(".omeloc_backup" in rel for rel in after)


def test_overwrite_keeps_the_channels_colour_and_is_idempotent(plate):
    """Rerunning an overwrite changes nothing (a killed --overwrite is rerun to the same plate,
    issue 18); a colour the user chose for the virtual channel survives it."""
    add_channel(plate, "pred", _prediction(1))
    add_channel(plate, "pred", _prediction(2), overwrite=True)
    first = [img.omero for img in omeloc.open_plate(plate).images]
    add_channel(plate, "pred", _prediction(2), overwrite=True)
    assert [img.omero for img in omeloc.open_plate(plate).images] == first
    img = omeloc.open_plate(plate).images[0]
    attrs = zarr.open_group(str(plate / img.path), mode="r+")
    key = "ome" if "ome" in attrs.attrs else None
    doc = dict(attrs.attrs[key]) if key else dict(attrs.attrs)
    doc["omero"]["channels"][2]["color"] = "123ABC"
    attrs.attrs[key or "omero"] = doc if key else doc["omero"]
    add_channel(plate, "pred", _prediction(3), overwrite=True)
    assert omeloc.open_plate(plate).images[0].omero["channels"][2]["color"] == "123ABC"
    assert (
        add_channel(plate, "pred", _prediction(3), overwrite=True, color="#00ff00").channel_index
        == 2
    )
    assert omeloc.open_plate(plate).images[0].omero["channels"][2]["color"] == "00FF00"


def _refused_unchanged(path, exc, match, *args, **kwargs):
    before = tree_digest(path)
    with pytest.raises(exc, match=match):
        add_channel(path, *args, **kwargs)
    assert tree_digest(path) == before


def test_bad_inputs_are_refused_with_files_unchanged(plate):
    data = _prediction()
    bad_shape = dict(data, **{"A/1/0": np.zeros((96, 81))})
    _refused_unchanged(plate, InputError, r"Expected data of shape \(96, 80\)", "x", bad_shape)
    with_nan = dict(data)
    with_nan["B/2/1"] = data["B/2/1"].copy()
    with_nan["B/2/1"][5, 5] = np.nan
    _refused_unchanged(plate, InputError, "NaN or infinite", "x", with_nan)
    missing = {k: v for k, v in data.items() if k != "A/2/0"}
    _refused_unchanged(plate, InputError, "Missing: \\['A/2/0'\\]", "x", missing)
    _refused_unchanged(plate, InputError, "already exists", "actin", data)
    _refused_unchanged(plate, InputError, "Expected a mapping", "x", data["A/1/0"])
    _refused_unchanged(plate, InputError, "non-empty channel name", "", data)
    _refused_unchanged(plate, InputError, "colour", "x", data, color="purple")
    # lazy data with an inf deep inside is found during the write: rolled back byte for byte
    lazy = {k: da.from_array(v, chunks=(32, 32)) for k, v in data.items()}
    lazy["B/1/1"] = da.where(da.arange(96)[:, None] == 90, np.inf, lazy["B/1/1"])
    _refused_unchanged(plate, InputError, "NaN or infinite", "x", lazy)


def test_inconsistent_plate_and_stray_chunks_refused(plate):
    # one field gets a channel on its own: the plate's wells now differ in channel count
    add_channel(plate / "A" / "2" / "1", "solo", np.ones((96, 80)))
    _refused_unchanged(plate, InputError, "inconsistent", "x", _prediction())


def test_stray_chunk_beyond_channel_count_refused(plate):
    level0 = plate / "B" / "1" / "0" / "0"
    if (level0 / "c").exists():  # NGFF 0.5 default chunk keys: c/<c>/<y>/<x>
        shutil.copytree(level0 / "c" / "1", level0 / "c" / "2")
    else:
        shutil.copytree(level0 / "1", level0 / "2")
    _refused_unchanged(plate, LayoutError, "beyond its 2 channels", "x", _prediction())


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_ome_zarr_py_default_layout_takes_a_channel_and_an_omero_block(tmp_path, version):
    """ome-zarr-py's default: every channel in one chunk, no omero. The new channel's chunk holds
    no original."""
    from ome_zarr.format import FormatV04, FormatV05
    from ome_zarr.writer import write_image as oz_write_image

    fmt = FormatV04() if version == "0.4" else FormatV05()
    path = tmp_path / "img.zarr"
    group = zarr.open_group(str(path), mode="w", zarr_format=fmt.zarr_format)
    original = np.random.default_rng(0).integers(0, 999, (3, 64, 64)).astype("uint16")
    oz_write_image(original, group, axes="cyx", fmt=fmt)
    before = {k: v for k, v in tree_digest(path).items() if _is_chunk(k)}
    plan = add_channel(path, "x", np.full((64, 64), 7.0), dry_run=True)
    assert plan.adds_omero == ("",) and "no omero metadata" in plan.describe() and not plan.shared
    add_channel(path, "x", np.full((64, 64), 7.0))
    after = tree_digest(path)
    assert all(
        after[k] == v for k, v in before.items()
    )  # invariant 1: the shared chunk of c0..c2 untouched
    img = omeloc.open_image(path)
    assert img.channel_names == ("c0", "c1", "c2", "x") and img.omero["rdefs"]["defaultZ"] == 0
    np.testing.assert_array_equal(img.level(0).compute()[:3], original)
    assert img.channel("x", 1).compute().tolist() == np.full((32, 32), 7).tolist()
    node = next(iter(Reader(parse_url(str(path)))()))  # an independent reader sees the names too
    assert node.metadata["channel_names"] == ["c0", "c1", "c2", "x"]


def _odd_image(path: Path, n_c: int, chunk_c: int, virtual: tuple[str, ...] = ()) -> Path:
    """An image of ``n_c`` channels stored ``chunk_c`` per chunk, written by omeloc then
    re-chunked by zarr."""
    write_image(
        path,
        np.arange(n_c * 32 * 32, dtype="uint16").reshape(n_c, 32, 32) % 999,
        channel_names=[f"ch{i}" for i in range(n_c)],
        ngff_version="0.5",
        levels=1,
    )
    arr = zarr.open_array(str(path / "0"), mode="r")
    data = arr[...]
    new = zarr.create_array(
        str(path / "0"),
        shape=data.shape,
        chunks=(chunk_c, 16, 16),
        dtype=data.dtype,
        dimension_names=arr.metadata.dimension_names,
        overwrite=True,
    )
    new[...] = data
    if virtual:
        group = zarr.open_group(str(path), mode="r+")
        group.attrs["omeloc"] = {
            "channels": {n: {"virtual": True, "index": int(n[2:])} for n in virtual}
        }
    return path


def test_layout_rule_refuses_only_files_holding_original_channels(tmp_path):
    odd = _odd_image(tmp_path / "odd.zarr", 3, 2)
    _refused_unchanged(
        odd, LayoutError, r"holds original channel\(s\) 2.*rechunk", "x", np.zeros((32, 32))
    )
    copy = omeloc.rechunk(odd, tmp_path / "copy.zarr")  # the fix the error names
    add_channel(copy, "x", np.full((32, 32), 5.0))
    assert omeloc.open_image(copy).channel("x").compute().tolist() == np.full((32, 32), 5).tolist()


def test_shared_unit_of_virtual_channels_is_backed_up_and_rolled_back_exactly(
    tmp_path, monkeypatch
):
    """Channel 2 is omeloc's: appending channel 3 rewrites the chunk of channels 2-3, after a
    verified backup."""
    from omeloc.writeback import pixels

    img = _odd_image(tmp_path / "v.zarr", 3, 2, virtual=("ch2",))
    before = tree_digest(img)
    plan = add_channel(img, "x", np.full((32, 32), 9.0), dry_run=True)
    assert plan.shared and plan.channel_index == 3

    def boom(*args, **kwargs):
        raise RuntimeError("killed mid-write")

    monkeypatch.setattr(pixels, "sample_windows", boom)  # fails after every pixel is written
    with pytest.raises(RuntimeError, match="killed mid-write"):
        add_channel(img, "x", np.full((32, 32), 9.0))
    assert tree_digest(img) == before  # the rewritten chunk of channel 2 is back, byte for byte
    monkeypatch.undo()
    add_channel(img, "x", np.full((32, 32), 9.0))
    data = omeloc.open_image(img).level(0).compute()
    assert data[3].tolist() == np.full((32, 32), 9).tolist()
    np.testing.assert_array_equal(data[:3], np.arange(3 * 32 * 32).reshape(3, 32, 32) % 999)
    chunks = {k: v for k, v in before.items() if _is_chunk(k) and "/c/0/" in k}
    after = tree_digest(img)
    assert chunks and all(after[k] == v for k, v in chunks.items())  # channels 0-1 never rewritten
    add_channel(
        img, "x", np.full((32, 32), 4.0), overwrite=True
    )  # replace: its unit holds channel 2 too
    data = omeloc.open_image(img).level(0).compute()
    assert data[3].tolist() == np.full((32, 32), 4).tolist()
    np.testing.assert_array_equal(data[2], (np.arange(3 * 32 * 32).reshape(3, 32, 32) % 999)[2])


def test_consolidated_documents_are_refreshed_in_every_group_and_rolled_back(tmp_path, monkeypatch):
    from omeloc.writeback import pixels

    plate = write_plate(
        tmp_path / "p.zarr",
        random_plate_images("A", ("1",), ("0",), (2, 32, 32)),
        channel_names=["a", "b"],
        ngff_version="0.5",
        chunks=(32, 32),
        levels=2,
    )
    zarr.consolidate_metadata(str(plate / "A" / "1" / "0"))  # as ngff-zarr does: in the image group
    zarr.consolidate_metadata(str(plate))
    before = tree_digest(plate)
    monkeypatch.setattr(
        pixels, "sample_windows", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("stop"))
    )
    with pytest.raises(RuntimeError):
        add_channel(plate, "x", {"A/1/0": np.ones((32, 32))})
    assert tree_digest(plate) == before
    monkeypatch.undo()
    add_channel(plate, "x", {"A/1/0": np.ones((32, 32))})
    image = zarr.open_group(str(plate / "A" / "1" / "0"), mode="r", use_consolidated=True)
    assert image["0"].shape[0] == 3 and image["1"].shape[0] == 3
    assert "x" in json.dumps(
        json.loads((plate / "A" / "1" / "0" / "zarr.json").read_text())["attributes"]
    )
    root = zarr.open_group(str(plate), mode="r", use_consolidated=True)
    assert root["A/1/0/0"].shape[0] == 3 and JOURNAL_KEY not in root.attrs
    assert "omeloc_journal" not in (plate / "zarr.json").read_text()


def test_read_only_store_refused(tmp_path, _templates):
    plate = tmp_path / "p.zarr"
    shutil.copytree(_templates["0.5"], plate)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(plate.parent))
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/{plate.name}"
        plan = add_channel(url, "x", _prediction(), dry_run=True)  # reading works
        assert isinstance(plan, WritePlan)
        before = tree_digest(plate)
        with pytest.raises(ReadOnlyStoreError, match="read-only or unreachable"):
            add_channel(url, "x", _prediction())
        assert tree_digest(plate) == before
    finally:
        server.shutdown()


def test_live_writer_holding_the_journal_is_refused(plate):
    import subprocess
    import sys

    from omeloc.writeback.journal import StoreIO, writer_identity

    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        io = StoreIO(str(plate))
        ident = dict(writer_identity(), pid=sleeper.pid, pid_start=None)
        io.update_attrs(
            "", {JOURNAL_KEY: {"run_id": "other", **ident, "name": "y", "phase": "resized"}}
        )
        _refused_unchanged(
            plate, ConcurrentWriteError, "being written by omeloc run other", "x", _prediction()
        )
    finally:
        sleeper.kill()
        sleeper.wait()


def test_dry_run_lazy_data_callable_and_scheduler(plate):
    before = tree_digest(plate)
    data = _prediction()
    plan = add_channel(
        plate, "pred", lambda img: da.from_array(data[img.path], chunks=(48, 40)), dry_run=True
    )
    assert isinstance(plan, WritePlan) and plan.mode == "append" and plan.channel_index == 2
    assert plan.tasks == 8 * (9 + 4 + 1) and plan.nbytes == 8 * (96 * 80 + 48 * 40 + 24 * 20) * 2
    assert all(
        img.data.chunks == ((1,), (32, 32, 32), (32, 32, 16)) for img in plan.images
    )  # zarr chunks, one channel
    assert "append channel 'pred'" in plan.describe()
    assert tree_digest(plate) == before
    computed = []

    def make(img):
        def block(x):
            if x.size > 1:  # dask also calls it on tiny arrays to infer meta
                computed.append(x.shape)
            return x

        return da.from_array(data[img.path], chunks=(32, 32)).map_blocks(block)

    add_channel(plate, "pred", make, scheduler="synchronous")
    assert len(computed) == 8 * 9  # the lazy data were computed once per chunk, inside the writes
    img = omeloc.open_plate(plate).image("B/2/1")
    np.testing.assert_array_equal(
        img.channel("pred").compute(), cast_to_dtype(data["B/2/1"], "uint16")
    )


@pytest.mark.filterwarnings("ignore:Consolidated metadata:UserWarning")
def test_single_image_and_consolidated_metadata(tmp_path):
    rng = np.random.default_rng(3)
    for version in ("0.4", "0.5"):
        path = write_image(
            tmp_path / f"img{version}.zarr",
            rng.integers(0, 255, (1, 70, 50)).astype("uint8"),
            channel_names=["phase"],
            ngff_version=version,
            chunks=(32, 32),
            levels=3,
        )
        zarr.consolidate_metadata(str(path))
        data = rng.normal(100, 80, (70, 50))
        add_channel(path, "nuclei", data, color="#ff0000")
        consolidated = zarr.open_group(str(path), mode="r", use_consolidated=True)
        assert consolidated["0"].shape == (2, 70, 50)
        attrs = dict(consolidated.attrs)
        ome = attrs.get("ome", attrs)
        assert [c["label"] for c in ome["omero"]["channels"]] == ["phase", "nuclei"]
        assert ome["omero"]["channels"][1]["color"] == "FF0000"
        assert JOURNAL_KEY not in attrs
        img = omeloc.open_image(path)
        for level, want in enumerate(_expected_levels(data, img.shapes, "uint8")):
            np.testing.assert_array_equal(img.channel("nuclei", level).compute(), want)
    assert recover(tmp_path / "img0.5.zarr") is None


def test_journal_may_name_consolidated_documents_of_the_plates_own_groups_only(plate):
    from omeloc.errors import JournalError
    from omeloc.writeback import protocol
    from omeloc.writeback.journal import StoreIO
    from omeloc.writeback.validate import journal_doc, validate_journal

    io = StoreIO(str(plate))
    plan = add_channel(plate, "x", _prediction(), dry_run=True)
    journal = protocol._new_journal(io, plan, None).to_json()  # the JSON a run writes
    name = ".zmetadata" if io.zarr_format == 2 else "zarr.json"
    for group in (
        "A/1/0",
        "A/1",
        "A",
    ):  # image, well, row: consolidated metadata there is refreshed and restored
        key = f"{group}/{name}"
        raw = io.get(key)
        validate_journal(
            io, journal_doc({**journal, "docs": {**journal["docs"], key: raw and raw.decode()}})
        )
    for key in (
        "A/1/0/0/.zmetadata",
        f"Z/{name}",
        f".omeloc_backup/{name}",
    ):  # an array, a stranger, omeloc's own
        crafted = journal_doc({**journal, "docs": {**journal["docs"], key: None}})
        with pytest.raises(JournalError, match="is not a metadata document"):
            validate_journal(io, crafted)
