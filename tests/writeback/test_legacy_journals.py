"""Plates killed mid-write by the omeloc before the journal record are recovered and appended to.

``data/legacy_plates.tar.gz`` was made once by ``make_legacy_plates.py`` with the omeloc of commit
aeb0a83 (the journal a ``Mapping[str, Any]``): for NGFF 0.4 and 0.5, a small plate (``before``) and
copies whose ``add_channel`` was SIGKILLed half-way through the pixels (``level0_mid``) and after
its last write, before the journal was cleared (``complete``).  The journals in them are exactly
what that code wrote.
"""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
from conftest import tree_digest
from make_legacy_plates import legacy_data

import omeloc
from omeloc.errors import JournalError
from omeloc.ngff.format import store_format
from omeloc.writeback.journal import JOURNAL_KEY, StoreIO
from omeloc.writeback.protocol import add_channel, recover
from omeloc.writeback.record import Journal, journal_digest
from omeloc.writeback.validate import validate_journal

ARCHIVE = Path(__file__).parent / "data" / "legacy_plates.tar.gz"
VERSIONS = ("0.4", "0.5")


@pytest.fixture(scope="module")
def legacy(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("legacy")
    with tarfile.open(ARCHIVE) as tar:
        tar.extractall(out, filter="data")
    return out


def _copy(legacy: Path, version: str, name: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(legacy / version / name, tmp_path / f"{name}.zarr"))


def _raw_journal(plate: Path) -> dict:
    for name in ("zarr.json", ".zattrs"):
        if (plate / name).exists():
            doc = json.loads((plate / name).read_text())
            return store_format(3 if name == "zarr.json" else 2).attributes_in(doc)[JOURNAL_KEY]
    raise AssertionError(f"no root attributes in {plate}")


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("point", ["level0_mid", "complete"])
def test_legacy_journal_reads_as_a_record_and_writes_back_the_same_json(legacy, version, point):
    raw = _raw_journal(legacy / version / point)
    io = StoreIO(str(legacy / version / point))
    record = validate_journal(io, raw)
    assert isinstance(record, Journal) and record.name == "pred" and record.mode == "append"
    assert record.phase == ("resized" if point == "level0_mid" else "complete")
    assert record.n_channels == 2 and record.channel_index == 2 and len(record.images) == 2
    # the wire format is unchanged: the record writes the very JSON the earlier code wrote
    assert record.to_json() == raw and raw["digest"] == journal_digest(raw)


@pytest.mark.parametrize("version", VERSIONS)
def test_plate_killed_mid_pixels_by_earlier_omeloc_rolls_back_byte_for_byte(
    legacy, version, tmp_path
):
    plate = _copy(legacy, version, "level0_mid", tmp_path)
    assert (
        recover(plate, stale_after=1) == "rollback"
    )  # the writer (maybe "on another host") is long dead
    assert tree_digest(plate) == tree_digest(legacy / version / "before")
    result = add_channel(plate, "pred", legacy_data(str(plate)))  # and it is appended to again
    assert result.channel_index == 2
    img = omeloc.open_plate(plate).image("B/2/0")
    np.testing.assert_array_equal(img.channel("pred").compute(), legacy_data(str(plate))["B/2/0"])


@pytest.mark.parametrize("version", VERSIONS)
def test_plate_killed_after_its_last_write_by_earlier_omeloc_is_finished(legacy, version, tmp_path):
    plate = _copy(legacy, version, "complete", tmp_path)
    assert recover(plate, stale_after=1) == "finish"
    opened = omeloc.open_plate(plate)
    assert JOURNAL_KEY not in opened.attrs
    for img in opened.images:
        assert img.channel_names == ("phase", "actin", "pred")
        np.testing.assert_array_equal(
            img.channel("pred").compute(), legacy_data(str(plate))[img.path]
        )
    add_channel(plate, "more", legacy_data(str(plate)))
    assert omeloc.open_plate(plate).images[0].channel_names[-1] == "more"
    assert recover(plate) is None


def test_legacy_journal_with_an_edited_field_is_refused(legacy, tmp_path):
    plate = _copy(legacy, "0.5", "level0_mid", tmp_path)
    before = tree_digest(plate)
    doc = json.loads((plate / "zarr.json").read_text())
    doc["attributes"][JOURNAL_KEY]["n_channels"] = 1  # digest left as it was
    (plate / "zarr.json").write_text(json.dumps(doc))
    with pytest.raises(JournalError, match="modified after it was written"):
        recover(plate, stale_after=1)
    after = tree_digest(
        plate
    )  # the dead writer's lock was taken over and released; nothing else changed
    assert after == {
        **{k: v for k, v in before.items() if k != ".omeloc_lock"},
        "zarr.json": after["zarr.json"],
    }
