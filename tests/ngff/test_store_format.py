"""The store-format object owns every difference between NGFF 0.4 (Zarr v2) and 0.5 (Zarr v3)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

import omeloc
from omeloc.ngff.format import FORMAT_V04, FORMAT_V05, chunk_coords, store_format
from omeloc.ngff.writer import write_plate

PACKAGE = Path(omeloc.__file__).parent


def test_no_zarr_format_branch_outside_the_format_home():
    branch = re.compile(r"zarr_format\S*\s*(==|!=)\s*[23]\b|\b[23]\s*(==|!=)\s*\S*zarr_format")
    found = [
        f"{p.relative_to(PACKAGE)}:{n}"
        for p in PACKAGE.rglob("*.py")
        if p.name != "format.py"
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if branch.search(line)
    ]
    assert found == []


def test_each_format_says_where_its_metadata_lives():
    assert store_format(2) is FORMAT_V04 and store_format(3) is FORMAT_V05
    assert (FORMAT_V04.attrs_doc, FORMAT_V04.array_doc, FORMAT_V04.consolidated_doc) == (
        ".zattrs",
        ".zarray",
        ".zmetadata",
    )
    assert (FORMAT_V05.attrs_doc, FORMAT_V05.array_doc, FORMAT_V05.consolidated_doc) == (
        "zarr.json",
        "zarr.json",
        None,
    )
    attrs = {"ome": {"version": "0.5", "omero": {}}, "other": 1}
    assert FORMAT_V05.ngff_attrs(attrs) == {"version": "0.5", "omero": {}}
    assert FORMAT_V05.ngff_updates(attrs, {"omero": {"x": 1}}) == {
        "ome": {"version": "0.5", "omero": {"x": 1}}
    }
    assert FORMAT_V04.ngff_attrs({"omero": {}}) == {"omero": {}}
    assert (
        "multiscales" in FORMAT_V04.reserved_attr_keys
        and "multiscales" not in FORMAT_V05.reserved_attr_keys
    )


def test_chunk_keys_of_both_formats_as_written(tmp_path):
    y = (
        np.arange(64 * 64, dtype="uint16").reshape(1, 64, 64) + 1
    )  # no empty chunk (those are not stored)
    for version, fmt in (("0.4", FORMAT_V04), ("0.5", FORMAT_V05)):
        plate = write_plate(
            tmp_path / f"p{version}.zarr",
            {("A", "1", "0"): y},
            channel_names=["a"],
            ngff_version=version,
            chunks=(32, 32),
            levels=1,
        )
        doc = json.loads((plate / "A/1/0/0" / fmt.array_doc).read_text())
        keys = sorted(
            p.relative_to(plate / "A/1/0/0").as_posix()
            for p in (plate / "A/1/0/0").rglob("*")
            if p.is_file() and p.name not in (fmt.array_doc, ".zattrs")
        )
        assert sorted(chunk_coords(k, doc) for k in keys) == [
            (0, 0, 0),
            (0, 0, 1),
            (0, 1, 0),
            (0, 1, 1),
        ], keys
        assert fmt.storage_block(doc) == (1, 32, 32)
        opened = omeloc.open_plate(plate)
        assert (
            opened.layout.rows == ("A",)
            and opened.layout.wells == ("A/1",)
            and opened.ngff_version == version
        )
