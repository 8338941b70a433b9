"""Interoperability matrix: plates written by the real tools → omeloc train → predict → re-read by the real readers.

Writers: omeloc, ome-zarr-py, ngff-zarr (NGFF 0.4 and 0.5, their default chunking, sharded,
5D TCZYX), iohub 0.2 (in a side environment, see ``.ci/run``).  Readers: omeloc,
ome-zarr-py's Reader, ngff-zarr, bioio-ome-zarr, napari-ome-zarr's reader function, iohub.
Every reader must see the new channel's name and exactly the pixels omeloc wrote, and every
chunk file that existed before the prediction must be byte-identical after it.

A cell that fails because of a known gap of the write-back is marked xfail with the gap's
reason, and only when the failure is that gap (the error is matched); when the gap is
closed the cell runs to the end and must pass.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

import omeloc
from conftest import tree_digest
from omeloc.errors import OmelocError
from omeloc.ngff.format import METADATA_DOC_NAMES, join_path

pytestmark = pytest.mark.slow

CHANNELS = ("actin", "WAVE2")
IOHUB_SCRIPT = Path(__file__).with_name("interop_iohub.py")

# -- known gaps of the write-back (each cell lists the ones it hits) ------------------------
def _says(pattern: str):
    return lambda err, plate: re.search(pattern, f"{type(err).__name__}: {err}") is not None


def _consolidated_shapes(doc: Path) -> dict[Path, Any]:
    """Array document → the shape a consolidated-metadata document ``doc`` records for it."""
    meta = json.loads(doc.read_text())
    if doc.name == ".zmetadata":
        return {doc.parent / k: v.get("shape") for k, v in (meta.get("metadata") or {}).items()
                if k.endswith(".zarray")}
    entries = (meta.get("consolidated_metadata") or {}).get("metadata") or {}
    return {doc.parent / k / "zarr.json": v.get("shape") for k, v in entries.items() if v.get("node_type") == "array"}


def _stale_consolidated(err: BaseException, plate: Path) -> bool:
    """Whether a consolidated-metadata document below the root records a shape its array no longer has."""
    for doc in [*plate.rglob(".zmetadata"), *plate.rglob("zarr.json")]:
        if doc.parent == plate:
            continue
        for arr_doc, shape in _consolidated_shapes(doc).items():
            if arr_doc.is_file() and json.loads(arr_doc.read_text()).get("shape") != shape:
                return True
    return False


LAYOUT_GAP = ("write-back preflight still requires one channel per chunk (ngff.layout.writeback_problems) instead "
              "of the one layout rule (ngff.layout.write_problems), so the writer's default of all channels in one "
              "chunk is refused although the new channel's chunk file holds no original channel",
              _says(r"would rewrite chunks that hold other channels"))
OMERO_GAP = ("images without omero metadata are refused instead of given the block (issue 14 hole 4)",
             _says(r"omero\.channels entries"))
CONSOLIDATED_GAP = ("consolidated metadata in well/image groups is not refreshed after the write (issue 14 hole 2): "
                    "readers that trust it see the old channel count", _stale_consolidated)


NAPARI_IDENTITY = ("third-party: napari-ome-zarr 0.10 cannot read the 'identity' coordinateTransformations iohub "
                   "writes (fails on the plate before omeloc touches it)", _says(r"no attribute 'affine_matrix'"))


def iohub_python() -> str | None:
    """The side environment's Python with iohub 0.2 (built by .ci/run), if any."""
    candidates = [os.environ.get("OMELOC_IOHUB_PYTHON"),
                  str(Path.home() / ".cache" / "omeloc" / "iohub-venv" / "bin" / "python")]
    for cand in candidates:
        if cand and Path(cand).is_file():
            probe = subprocess.run([cand, "-c", "import iohub"], capture_output=True, text=True, timeout=120)
            if probe.returncode == 0:
                return cand
    return None


def _fields(shape: tuple[int, ...], seed: int) -> dict[str, np.ndarray]:
    """Pixels of fields A/1/0 and A/2/0: WAVE2 follows actin, so training has something to learn."""
    rng = np.random.default_rng(seed)
    out = {}
    for col in ("1", "2"):
        actin = rng.integers(200, 4000, shape).astype("uint16")
        out[col] = np.stack([actin, (actin // 2 + 100).astype("uint16")], axis=-3)  # c before z, y, x
    return out


# -- writers: each returns (plate path, the names omeloc will see) -------------------------------
def write_omeloc(path: Path, version: str) -> tuple[str, ...]:
    from omeloc.ngff.writer import write_plate

    images = {("A", c, "0"): d for c, d in _fields((96, 80), 1).items()}
    write_plate(path, images, channel_names=list(CHANNELS), ngff_version=version, chunks=(48, 48), levels=2)
    return CHANNELS


def write_ome_zarr_py(path: Path, version: str, *, omero: bool) -> tuple[str, ...]:
    from ome_zarr.format import FormatV04, FormatV05
    from ome_zarr.writer import add_metadata, write_image, write_plate_metadata, write_well_metadata

    fmt = FormatV04() if version == "0.4" else FormatV05()
    root = zarr.open_group(str(path), mode="w", zarr_format=fmt.zarr_format)
    write_plate_metadata(root, ["A"], ["1", "2"], ["A/1", "A/2"], fmt=fmt)
    for col, data in _fields((96, 80), 2).items():
        well = root.require_group("A").require_group(col)
        write_well_metadata(well, [{"path": "0"}], fmt=fmt)
        image = well.require_group("0")
        write_image(data, image, axes="cyx", fmt=fmt)
        if omero:
            add_metadata(image, {"omero": {"channels": [{"label": n, "color": "FFFFFF"} for n in CHANNELS]}})
    return CHANNELS if omero else ("c0", "c1")


def write_ngff_zarr(path: Path, version: str, *, omero: bool, five_d: bool = False) -> tuple[str, ...]:
    import ngff_zarr as nz

    plate = nz.Plate(rows=[nz.PlateRow(name="A")], columns=[nz.PlateColumn(name="1"), nz.PlateColumn(name="2")],
                     wells=[nz.PlateWell(path=f"A/{c}", rowIndex=0, columnIndex=i) for i, c in enumerate("12")],
                     name="plate", field_count=1, version=version)
    dims = ["t", "c", "z", "y", "x"] if five_d else ["c", "y", "x"]
    fields = _fields((2, 2, 96, 80), 3) if five_d else _fields((96, 80), 3)  # (t, c, z, y, x) or (c, y, x)
    with nz.HCSPlateWriter(str(path), plate) as writer:
        for col, data in fields.items():
            data = np.moveaxis(data, 2, 1) if five_d else data  # (t, z, c, y, x) → (t, c, z, y, x)
            ms = nz.to_multiscales(nz.to_ngff_image(data, dims=dims), scale_factors=[2],
                                   **({"chunks": 32} if five_d else {}))
            if omero:
                window = nz.OmeroWindow(min=0, max=65535, start=0, end=4000)
                ms.metadata.omero = nz.Omero(channels=[nz.OmeroChannel(color="FFFFFF", window=window, label=n)
                                                       for n in CHANNELS])
            writer.write_well_image(multiscales=ms, row_name="A", column_name=col, field_index=0,
                                    **({"chunks_per_shard": 2} if five_d else {}))
    return CHANNELS if omero else ("c0", "c1")


def write_ngff_zarr_rechunked(path: Path) -> tuple[str, ...]:
    raw = path.with_name(path.name + ".raw")
    write_ngff_zarr(raw, "0.5", omero=True, five_d=True)
    omeloc.rechunk(raw, path)
    return CHANNELS


def write_iohub(path: Path) -> tuple[str, ...]:
    python = iohub_python()
    if python is None:
        pytest.skip("iohub side environment missing (.ci/run builds it; or set OMELOC_IOHUB_PYTHON)")
    fields = _fields((2, 2, 64, 64), 4)  # (t, z, c, y, x)
    data = np.stack([np.moveaxis(fields[c], 2, 1) for c in ("1", "2")])  # (wells, t, c, z, y, x)
    np.save(path.with_suffix(".npy"), data)
    subprocess.run([python, str(IOHUB_SCRIPT), "write", str(path), str(path.with_suffix(".npy"))],
                   check=True, capture_output=True, text=True, timeout=300)
    return CHANNELS


@dataclass(frozen=True)
class Cell:
    """One writer's plate: how it is made, and the write-back gaps it is known to hit."""

    write: Any
    zarr_format: int
    gaps: tuple[tuple[str, Any], ...] = ()
    read_gaps: tuple[tuple[str, Any], ...] = ()


WRITERS = {
    "omeloc-0.4": Cell(lambda p: write_omeloc(p, "0.4"), 2),
    "omeloc-0.5": Cell(lambda p: write_omeloc(p, "0.5"), 3),
    "ome-zarr-py-0.4-defaults": Cell(lambda p: write_ome_zarr_py(p, "0.4", omero=False), 2, (LAYOUT_GAP, OMERO_GAP)),
    "ome-zarr-py-0.5-omero": Cell(lambda p: write_ome_zarr_py(p, "0.5", omero=True), 3, (LAYOUT_GAP,)),
    "ngff-zarr-0.4-defaults": Cell(lambda p: write_ngff_zarr(p, "0.4", omero=False), 2, (LAYOUT_GAP, OMERO_GAP),
                                   (CONSOLIDATED_GAP,)),
    "ngff-zarr-0.5-omero": Cell(lambda p: write_ngff_zarr(p, "0.5", omero=True), 3, (LAYOUT_GAP,),
                                (CONSOLIDATED_GAP,)),
    "ngff-zarr-0.5-sharded-tczyx": Cell(lambda p: write_ngff_zarr(p, "0.5", omero=True, five_d=True), 3,
                                        (LAYOUT_GAP,), (CONSOLIDATED_GAP,)),
    "ngff-zarr-0.5-sharded-tczyx+rechunk": Cell(write_ngff_zarr_rechunked, 3),
    "iohub-0.4-TCZYX": Cell(write_iohub, 2, read_gaps=(NAPARI_IDENTITY,)),
}


@dataclass
class Outcome:
    """A writer's plate after train and predict: what every reader must see."""

    plate: Path
    image: str
    name: str
    index: int
    n_channels: int
    truth: np.ndarray
    cell: Cell
    errors: list[str] = field(default_factory=list)


def _known_gap(gaps: tuple[tuple[str, Any], ...], err: BaseException, plate: Path) -> str | None:
    """The reason of the first known gap that explains ``err`` (``None``: a real failure)."""
    for reason, explains in gaps:
        if explains(err, plate):
            return f"{reason} [{type(err).__name__}: {str(err)[:300]}]"
    return None


def _new_channel_pixels(plate: Path, image: str, index: int) -> np.ndarray:
    """The new channel at level 0, read with zarr alone (not through any NGFF reader)."""
    img = omeloc.open_plate(plate).image(image)
    arr = zarr.open_array(join_path(str(plate), image, img.level_paths[0]), mode="r")
    return np.take(arr[...], index, axis=img.axes.index("c"))


def _originals(plate: Path) -> dict[str, str]:
    return {k: v for k, v in tree_digest(plate).items() if Path(k).name not in METADATA_DOC_NAMES}


@pytest.fixture(scope="module", params=list(WRITERS))
def outcome(request, tmp_path_factory) -> Outcome:
    cell = WRITERS[request.param]
    root = tmp_path_factory.mktemp(request.param.replace(".", "_"))
    plate = root / "plate.zarr"
    source, target = cell.write(plate)
    before = _originals(plate)
    res = omeloc.train(plate, source, target, out=root / "model", steps=2, crop=32, batch_size=2, depth=2,
                       base_channels=4, val_wells=["A2"], progress=False)
    try:
        result = omeloc.predict(plate, res.checkpoint, progress=False)
    except OmelocError as err:
        reason = _known_gap(cell.gaps, err, plate)
        if reason is None:
            raise
        after = _originals(plate)
        assert all(after.get(k) == v for k, v in before.items()), "a refused write changed an original file"
        pytest.xfail(f"write-back gap: {reason}")
    after = _originals(plate)
    changed = [k for k, v in before.items() if after.get(k) != v]
    assert not changed, f"original chunk files rewritten: {changed[:5]}"
    image = "A/1/0"
    truth = _new_channel_pixels(plate, image, result.channel_index)
    assert truth.size and np.isfinite(truth.astype("float64")).all() and truth.any()
    return Outcome(plate=plate, image=image, name=result.name, index=result.channel_index,
                   n_channels=result.channel_index + 1, truth=truth, cell=cell)


# -- readers: each returns (channel names, the new channel's level-0 pixels) ---------------------
def read_omeloc(o: Outcome) -> tuple[list[str], np.ndarray]:
    img = omeloc.open_plate(o.plate).image(o.image)
    return list(img.channel_names), img.channel(o.name).compute()


def read_ome_zarr_py(o: Outcome) -> tuple[list[str], np.ndarray]:
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    node = list(Reader(parse_url(str(o.plate / o.image)))())[0]
    axes = [a["name"].lower() if isinstance(a, dict) else str(a).lower() for a in node.metadata["axes"]]
    data = np.asarray(node.data[0])
    assert data.shape[axes.index("c")] == o.n_channels
    return list(node.metadata.get("channel_names") or []), np.take(data, o.index, axis=axes.index("c"))


def read_ngff_zarr(o: Outcome) -> tuple[list[str], np.ndarray]:
    import ngff_zarr as nz

    ms = nz.from_ngff_zarr(str(o.plate / o.image))
    image = ms.images[0]
    c_axis = [d.lower() for d in image.dims].index("c")
    assert image.data.shape[c_axis] == o.n_channels
    omero = ms.metadata.omero
    names = [ch.label for ch in omero.channels] if omero is not None else []
    return names, np.take(np.asarray(image.data), o.index, axis=c_axis)


def read_bioio(o: Outcome) -> tuple[list[str], np.ndarray]:
    from bioio_ome_zarr import Reader

    reader = Reader(str(o.plate / o.image))
    data = np.asarray(reader.get_image_dask_data("TCZYX"))
    assert data.shape[1] == o.n_channels
    return list(reader.channel_names), data[:, o.index]


def read_napari(o: Outcome) -> tuple[list[str], np.ndarray]:
    from napari_ome_zarr import napari_get_reader

    path = str(o.plate / o.image)
    reader = napari_get_reader(path)
    assert reader is not None, "napari-ome-zarr does not recognise the image"
    data, kwargs, kind = reader(path)[0]
    level0 = np.asarray(data[0] if isinstance(data, list) else data)
    c_axis = kwargs.get("channel_axis")
    assert kind == "image" and c_axis is not None and level0.shape[c_axis] == o.n_channels
    names = kwargs.get("name")
    names = list(names) if isinstance(names, (list, tuple)) else [names]
    prefix = re.compile(r"^[^:]*: ")  # napari-ome-zarr prefixes each layer name with the image's ("0: actin")
    return [prefix.sub("", str(n), count=1) for n in names], np.take(level0, o.index, axis=c_axis)


def read_iohub(o: Outcome) -> tuple[list[str], np.ndarray]:
    if o.cell.zarr_format != 2:
        pytest.skip("iohub 0.2 reads Zarr v2 (NGFF 0.4) only")
    python = iohub_python()
    if python is None:
        pytest.skip("iohub side environment missing (.ci/run builds it; or set OMELOC_IOHUB_PYTHON)")
    out = o.plate.with_name(f"iohub-{o.index}.npy")
    proc = subprocess.run([python, str(IOHUB_SCRIPT), "read", str(o.plate), o.image, o.name, str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert o.image in seen["positions"], seen
    return seen["channel_names"], np.load(out)


READERS = {"omeloc": read_omeloc, "ome-zarr-py": read_ome_zarr_py, "ngff-zarr": read_ngff_zarr,
           "bioio-ome-zarr": read_bioio, "napari-ome-zarr": read_napari, "iohub": read_iohub}


@pytest.mark.parametrize("reader", list(READERS))
def test_reader_sees_the_new_channel(outcome, reader):
    try:
        names, pixels = READERS[reader](outcome)
        assert len(names) == outcome.n_channels and names[outcome.index] == outcome.name, names
        np.testing.assert_array_equal(np.squeeze(pixels), np.squeeze(outcome.truth))
    except (AssertionError, Exception) as err:  # noqa: BLE001 - a known gap is matched, anything else re-raised
        if isinstance(err, pytest.skip.Exception):
            raise
        reason = _known_gap(outcome.cell.read_gaps, err, outcome.plate)
        if reason is None:
            raise
        pytest.xfail(f"write-back gap: {reason}")
