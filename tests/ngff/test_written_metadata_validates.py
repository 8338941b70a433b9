"""What omeloc writes passes ome-zarr-models and the strict NGFF JSON schemas (0.4 and 0.5).

New plates (``make_plate``, ``import_tiff``) and the plate after ``predict`` (its new channel's
omero entry, provenance) are checked with ome-zarr-models' HCS and Image models, and every
group's attributes with the strict NGFF schemas that ngff-zarr ships (offline: its
``spec/<version>/schemas`` folder, the schemas of ngff.openmicroscopy.org).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

import omeloc

ome_v04 = pytest.importorskip("ome_zarr_models.v04")
ome_v05 = pytest.importorskip("ome_zarr_models.v05")
jsonschema = pytest.importorskip("jsonschema")
referencing = pytest.importorskip("referencing")
pytest.importorskip("referencing.jsonschema")
ngff_zarr = pytest.importorskip("ngff_zarr")

VERSIONS = ("0.4", "0.5")
SPEC = Path(ngff_zarr.__file__).parent / "spec"


def _validator(version: str, kind: str) -> jsonschema.protocols.Validator:
    """The strict schema ``kind`` (plate, well, image) of NGFF ``version``, every schema of it
    resolvable."""
    folder = SPEC / version / "schemas"
    resources = []
    for path in folder.glob("*.schema"):
        doc = json.loads(path.read_text())
        resources.append(
            (
                doc["$id"],
                referencing.Resource.from_contents(
                    doc, default_specification=referencing.jsonschema.DRAFT7
                ),
            )
        )
    registry = referencing.Registry().with_resources(resources)
    schema = json.loads((folder / f"strict_{kind}.schema").read_text())
    cls = jsonschema.validators.validator_for(schema)
    return cls(schema, registry=registry, format_checker=cls.FORMAT_CHECKER)


def _check_strict(path: Path, version: str) -> int:
    """Validate the root, every well and every image group against the strict schemas; how many
    groups."""
    root = zarr.open_group(path, mode="r")
    attrs = root.attrs.asdict()
    ome = attrs.get("ome", attrs)
    checked = 0
    _validator(version, "plate").validate(attrs)
    for well in ome["plate"]["wells"]:
        wgroup = root[well["path"]]
        _validator(version, "well").validate(wgroup.attrs.asdict())
        wome = wgroup.attrs.asdict().get("ome", wgroup.attrs.asdict())
        for image in wome["well"]["images"]:
            _validator(version, "image").validate(wgroup[image["path"]].attrs.asdict())
            checked += 1
    return checked


def _check_models(path: Path, version: str) -> None:
    """ome-zarr-models reads the whole plate (HCS: plate, wells, images) without a validation
    error."""
    models = ome_v04 if version == "0.4" else ome_v05
    from importlib import import_module

    hcs = import_module(f"{models.__name__}.hcs").HCS.from_zarr(zarr.open_group(path, mode="r"))
    assert hcs.ome_attributes.plate.wells if version == "0.5" else hcs.attributes.plate.wells


def _assert_valid(path: Path, version: str) -> None:
    _check_models(path, version)
    assert _check_strict(path, version) > 0


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    root = tmp_path_factory.mktemp("valid")
    plate = omeloc.make_plate(
        root / "train.zarr",
        rows=1,
        cols=2,
        fields=1,
        size=64,
        chunks=(32, 32),
        levels=2,
        channels=("actin", "WAVE2"),
    )
    return omeloc.train(
        plate,
        "actin",
        "WAVE2",
        out=root / "model",
        steps=1,
        crop=32,
        batch_size=2,
        depth=2,
        base_channels=4,
        val_wells=["A2"],
        progress=False,
    ).checkpoint


@pytest.mark.parametrize("version", VERSIONS)
def test_synth_and_predicted_plates_pass_models_and_strict_schemas(version, model, tmp_path):
    plate = omeloc.make_plate(
        tmp_path / "p.zarr",
        rows=1,
        cols=2,
        fields=2,
        size=64,
        chunks=(32, 32),
        levels=2,
        ngff=version,
        channels=("actin", "WAVE2"),
    )
    _assert_valid(plate, version)
    omeloc.predict(plate, model, progress=False)
    assert omeloc.open_plate(plate).channel_names[-1] == "WAVE2 (virtual)"
    _assert_valid(plate, version)


@pytest.mark.parametrize("version", VERSIONS)
def test_imported_tiff_plates_pass_models_and_strict_schemas(version, tmp_path):
    import tifffile

    folder = tmp_path / "export"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for row in (1, 2):
        for ch in (1, 2):
            name = f"r{row:02d}c01f01p01-ch{ch}sk1fk1fl1.tiff"
            tifffile.imwrite(
                folder / name, rng.integers(0, 4000, (40, 48)).astype("uint16"), compression="lzw"
            )
    out = omeloc.import_tiff(
        folder,
        tmp_path / "p.zarr",
        preset="phenix",
        ngff_version=version,
        levels=2,
        chunks=(32, 32),
    )
    _assert_valid(out, version)


def test_the_strict_schemas_catch_what_they_are_for(tmp_path):
    """The check is not vacuous: a plate without its required ``name`` fails the strict 0.5
    schema."""
    plate = omeloc.make_plate(
        tmp_path / "p.zarr",
        rows=1,
        cols=1,
        fields=1,
        size=32,
        chunks=(32, 32),
        levels=1,
        channels=("actin",),
    )
    broken = tmp_path / "broken.zarr"
    shutil.copytree(plate, broken)
    group = zarr.open_group(broken, mode="r+")
    ome = dict(group.attrs["ome"])
    ome["plate"] = {k: v for k, v in ome["plate"].items() if k != "name"}
    group.attrs["ome"] = ome
    with pytest.raises(jsonschema.ValidationError, match="name"):
        _check_strict(broken, "0.5")
