"""Nothing outside the store (DESIGN invariant 7): crafted journals, well and dataset paths,
symbolic links, absurd sizes.  Each attack is run first as the adversarial review ran it, and
must end with every original byte intact and nothing outside the plate touched (issue 18,
holes 1, 2, 7 and the size and label items of 10)."""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import tree_digest

import omeloc
from omeloc.cli import main
from omeloc.errors import UnsafePathError
from omeloc.ngff.format import safe_key
from omeloc.writeback.journal import JOURNAL_KEY, StoreIO
from omeloc.writeback.validate import journal_doc

pytestmark = pytest.mark.slow


def _cli(*args: str, kill_at: str | None = None, **kwargs) -> subprocess.CompletedProcess:
    """``omeloc -q ARGS`` in a new process (killed at fault point ``kill_at`` when given)."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        **({"OMELOC_TEST_KILL_AT": kill_at} if kill_at else {}),
    }
    return subprocess.run(
        [sys.executable, "-m", "omeloc.cli", "-q", *args],
        env=env,
        check=False,
        capture_output=True,
        text=True,
        **kwargs,
    )


@pytest.fixture(scope="module")
def setup(tiny_trained):
    plate, ckpt, _ = tiny_trained(size=64, chunk=32, reference=False)
    return plate, str(ckpt)


@pytest.fixture
def data(setup, tmp_path):
    """A folder holding a copy of the plate and a file next to it that no run may touch."""
    plate0, ckpt = setup
    folder = tmp_path / "data"
    folder.mkdir()
    shutil.copytree(plate0, folder / "plate.zarr")
    (folder / "victim.txt").write_text("precious")
    return folder, folder / "plate.zarr", ckpt


def _followed_digest(root: Path) -> dict[str, str]:
    """sha256 of every file below ``root``, following symbolic links (conftest.tree_digest does
    not)."""
    out = {}
    for dirpath, _dirs, files in os.walk(root, followlinks=True):
        for name in files:
            p = Path(dirpath, name)
            if p.is_file():
                out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _without_lock(digest: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in digest.items() if not k.endswith(".omeloc_lock")}


def _one_line_error(capsys, code: int, *needles: str) -> str:
    err = capsys.readouterr().err.strip()
    lines = [ln for ln in err.splitlines() if not ln.startswith("WARNING")]
    assert code == 2 and len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def _root_doc(plate: Path) -> dict:
    return json.loads((plate / "zarr.json").read_text())


def _plant(plate: Path, journal: dict | None, *, seal: bool = True) -> None:
    """Write ``journal`` into the root attributes as a crafted plate would carry it."""
    doc = _root_doc(plate)
    if seal and isinstance(journal, dict):
        journal_doc(
            journal
        )  # an attacker can compute the digest too: the key checks must hold anyway
    doc["attributes"][JOURNAL_KEY] = journal
    (plate / "zarr.json").write_text(json.dumps(doc, indent=2))


def _honest_journal(plate: Path) -> dict:
    """A journal as a dead run of an append would leave it, before it changed anything."""
    io = StoreIO(str(plate))
    images, keys = [], list(io.root_docs())
    for well in ("A/1", "A/2"):
        img = f"{well}/0"
        arrays = [f"{img}/0", f"{img}/1"]
        images.append({"path": img, "c_axis": 0, "arrays": arrays})
        keys += io.metadata_docs(img) + [k for a in arrays for k in io.metadata_docs(a)]
    docs = {k: (None if io.get(k) is None else io.get(k).decode()) for k in dict.fromkeys(keys)}
    return {
        "version": 1,
        "run_id": "0123456789abcdef0123456789abcdef",
        "pid": 1,
        "host": "elsewhere",
        "pid_start": None,
        "started": "2024-01-01T00:00:00+00:00",
        "heartbeat": 0.0,
        "phase": "resized",
        "mode": "append",
        "name": "x",
        "channel_index": 2,
        "n_channels": 2,
        "zarr_format": 3,
        "images": images,
        "consolidated": False,
        "docs": docs,
        "resume_key": None,
    }


# -- hole 1: a crafted journal --------------------------------------------------------------
def _attack(kind: str, j: dict, folder: Path) -> None:
    if kind == "delete-outside":
        j["docs"]["../victim.txt"] = None
    elif kind == "create-outside":
        j["docs"]["../PWNED.txt"] = "{}"
    elif kind == "absolute-doc":
        j["docs"][str(folder / "victim.txt")] = None
    elif kind == "array-outside":
        j["images"][0]["arrays"] = ["A/1/0/../../../.."]
    elif kind == "image-outside":
        j["images"][0]["path"] = "../.."
    elif kind == "run-id-path":
        j["run_id"] = "../../.."
    elif kind == "resume-key-path":
        j["resume_key"] = "../../.."
    elif kind == "foreign-doc-in-plate":
        j["docs"]["A/1/0/0/c/0/0/0"] = None  # a chunk, not a metadata document
    elif kind == "overwrite-original-channel":
        j.update(mode="overwrite", channel_index=0)
    elif kind == "claims-fewer-channels":
        j.update(n_channels=1, channel_index=1)


ATTACKS = [
    "delete-outside",
    "create-outside",
    "absolute-doc",
    "array-outside",
    "image-outside",
    "run-id-path",
    "resume-key-path",
    "foreign-doc-in-plate",
    "overwrite-original-channel",
    "claims-fewer-channels",
]


@pytest.mark.parametrize("kind", ATTACKS)
def test_crafted_journal_is_refused_by_recover(data, capsys, kind):
    folder, plate, _ = data
    journal = _honest_journal(plate)
    _attack(kind, journal, folder)
    _plant(plate, journal)
    before = tree_digest(folder)
    code = main(["recover", str(plate)])
    _one_line_error(capsys, code, "remove the key omeloc_journal")
    assert tree_digest(folder) == before  # not one byte changed, inside the plate or next to it
    assert not (folder / "PWNED.txt").exists() and (folder / "victim.txt").read_text() == "precious"


@pytest.mark.parametrize("kind", ["delete-outside", "create-outside"])
def test_crafted_journal_is_refused_by_a_plain_predict(data, capsys, kind):
    folder, plate, ckpt = data
    journal = _honest_journal(plate)
    _attack(kind, journal, folder)
    _plant(plate, journal)
    before = tree_digest(folder)
    code = main(["-q", "predict", str(plate), "--model", str(ckpt)])
    _one_line_error(capsys, code, "remove the key omeloc_journal")
    assert tree_digest(folder) == before
    assert not (folder / "PWNED.txt").exists() and (folder / "victim.txt").read_text() == "precious"


def test_an_honest_journal_passes_and_rolls_back_to_the_same_bytes(data, capsys):
    folder, plate, _ = data
    before = tree_digest(folder)
    _plant(plate, _honest_journal(plate))
    assert main(["recover", str(plate)]) == 0, capsys.readouterr().err
    assert tree_digest(folder) == before  # the control: the checks do not refuse a real journal


@pytest.mark.parametrize("seal", [False, True])
def test_unsealed_or_tampered_journal_is_refused(data, capsys, seal):
    folder, plate, _ = data
    journal = _honest_journal(plate)
    journal_doc(journal)
    if seal:
        journal["phase"] = "complete"  # changed after it was written: digest no longer matches
    else:
        del journal["digest"]
    _plant(plate, journal, seal=False)
    before = tree_digest(folder)
    code = main(["recover", str(plate)])
    _one_line_error(
        capsys, code, "was modified after it was written" if seal else "no integrity digest"
    )
    assert tree_digest(folder) == before


def test_killed_run_then_tampered_journal_is_refused_then_restored_recovers(data, capsys):
    folder, plate, ckpt = data
    before = tree_digest(plate)
    run = _cli("predict", str(plate), "--model", str(ckpt), kill_at="metadata")
    assert run.returncode == -9, run.stderr
    killed = (plate / "zarr.json").read_text()
    doc = json.loads(killed)
    doc["attributes"][JOURNAL_KEY]["docs"]["../victim.txt"] = (
        None  # tampered, digest left as it was
    )
    (plate / "zarr.json").write_text(json.dumps(doc))
    state = _without_lock(tree_digest(folder))
    _one_line_error(capsys, main(["recover", str(plate)]), "was modified after it was written")
    assert _without_lock(tree_digest(folder)) == state  # only the dead run's lock may go
    (plate / "zarr.json").write_text(killed)
    assert main(["recover", str(plate)]) == 0
    assert tree_digest(plate) == before and (folder / "victim.txt").read_text() == "precious"


# -- hole 2: paths in plate metadata ---------------------------------------------------------
def _edit(doc_path: Path, edit) -> None:
    doc = json.loads(doc_path.read_text())
    edit(doc["attributes"]["ome"])
    doc_path.write_text(json.dumps(doc, indent=2))


PATH_ATTACKS = {
    "well-image-path": (
        "A/1/zarr.json",
        lambda ome: ome["well"]["images"][0].update(path="../../../other.zarr/A/1/0"),
        "Well A/1 lists image path '../../../other.zarr/A/1/0'",
    ),
    "plate-well-path": (
        "zarr.json",
        lambda ome: ome["plate"]["wells"][0].update(path="../other.zarr"),
        "lists well path '../other.zarr'",
    ),
    "absolute-dataset": (
        "A/1/0/zarr.json",
        lambda ome: ome["multiscales"][0]["datasets"][0].update(path="/tmp/other.zarr/A/1/0/0"),
        "lists dataset path '/tmp/other.zarr/A/1/0/0', which is an absolute path",
    ),
    "dotdot-dataset": (
        "A/1/0/zarr.json",
        lambda ome: ome["multiscales"][0]["datasets"][0].update(
            path="../../../../other.zarr/A/1/0/0"
        ),
        "lists dataset path '../../../../other.zarr/A/1/0/0', which has a '..' segment",
    ),
}


@pytest.mark.parametrize("kind", sorted(PATH_ATTACKS))
@pytest.mark.parametrize("command", ["predict", "info"])
def test_plate_paths_that_leave_the_plate_are_refused(data, capsys, kind, command):
    folder, plate, ckpt = data
    shutil.copytree(plate, folder / "other.zarr")  # the store a crafted path points into
    doc, edit, needle = PATH_ATTACKS[kind]
    _edit(plate / doc, edit)
    before = tree_digest(folder)
    args = (
        ["-q", "predict", str(plate), "--model", str(ckpt)]
        if command == "predict"
        else ["info", str(plate)]
    )
    _one_line_error(capsys, main(args), needle)
    assert tree_digest(folder) == before  # neither this plate nor the other store changed


# -- hole 7: symbolic links ------------------------------------------------------------------
def _link_chunks(plate: Path, target: Path) -> None:
    """Move level 0 of image A/1/0's chunk folder to ``target`` and link it back."""
    chunks = plate / "A/1/0/0/c"
    shutil.move(chunks, target)
    chunks.symlink_to(os.path.relpath(target, chunks.parent), target_is_directory=True)


def test_listing_sees_chunks_below_a_linked_folder_inside_the_store(data):
    _, plate, _ = data
    plain = StoreIO(str(plate)).list("A/1/0/0")
    _link_chunks(plate, plate / "A/1/0/.chunks0")
    assert StoreIO(str(plate)).list("A/1/0/0") == plain  # zarr's own listing returns no chunk here


@pytest.mark.parametrize("overwrite", [False, True], ids=["append", "overwrite"])
def test_killed_run_with_a_linked_chunk_folder_rolls_back_completely(data, capsys, overwrite):
    folder, plate, ckpt = data
    _link_chunks(plate, plate / "A/1/0/.chunks0")
    args = ["predict", str(plate), "--model", str(ckpt)]
    if overwrite:  # a first run, so that the second replaces its channel
        assert _cli(*args).returncode == 0
        args.append("--overwrite")
    before = _followed_digest(folder)
    run = _cli(*args, kill_at="metadata")
    assert run.returncode == -9, run.stderr
    assert main(["recover", str(plate)]) == 0, capsys.readouterr().err
    assert (
        _followed_digest(folder) == before
    )  # no orphan chunk, no new value left in the linked folder


@pytest.mark.parametrize("overwrite", [False, True], ids=["append", "overwrite"])
def test_a_linked_chunk_folder_leaving_the_store_is_refused(data, capsys, overwrite):
    folder, plate, ckpt = data
    args = ["-q", "predict", str(plate), "--model", str(ckpt)]
    if overwrite:
        assert main(args) == 0
        args.append("--overwrite")
    _link_chunks(plate, folder / "outside_chunks")
    before = _followed_digest(folder)
    _one_line_error(capsys, main(args), "outside the store")
    assert _followed_digest(folder) == before
    with pytest.raises(UnsafePathError, match="outside the store"):
        StoreIO(str(plate)).get("A/1/0/0/c/0/0/0")


@pytest.mark.parametrize("what", ["stash", "new-chunk"])
def test_planted_links_out_of_the_store_are_refused(data, capsys, what):
    """A plate that ships ``.omeloc_resume`` (the stash every run clears) or the first chunk of the
    channel a run will add as a link to a folder outside: nothing there is deleted or written."""
    folder, plate, ckpt = data
    outside = folder / "home"
    (outside / "c").mkdir(parents=True)
    (outside / "c" / "thesis.tex").write_text("years of work")
    if what == "stash":
        (plate / ".omeloc_resume").symlink_to(outside, target_is_directory=True)
    else:
        (plate / "A/1/0/0/c/2").symlink_to(
            outside / "new", target_is_directory=True
        )  # dangling until written
    before = _followed_digest(folder)
    _one_line_error(
        capsys, main(["-q", "predict", str(plate), "--model", str(ckpt)]), "outside the store"
    )
    assert _followed_digest(folder) == before and not (outside / "new").exists()


def test_a_symlink_loop_is_refused(data):
    _, plate, _ = data
    (plate / "A/1/0/0/c/loop").symlink_to("..", target_is_directory=True)
    with pytest.raises(UnsafePathError, match="reached a second time"):
        StoreIO(str(plate)).list("A/1/0/0")


@pytest.mark.parametrize(
    "key", ["../x", "/etc/passwd", "a/../../x", "C:/x", "a\\b", "a\x00b", "a//b", "./a", ".."]
)
def test_store_io_refuses_unsafe_keys(data, key):
    _, plate, _ = data
    io = StoreIO(str(plate))
    for call in (io.get, io.delete, io.list, lambda k: io.set(k, b"x")):
        with pytest.raises(UnsafePathError):
            call(key)
    assert safe_key("A/1/0/") == "A/1/0"


# -- hole 10: sizes and labels ---------------------------------------------------------------
def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (4 * 2**30, 4 * 2**30))


def test_huge_declared_shape_is_refused_before_allocating(data):
    folder, plate, ckpt = data
    doc = json.loads((plate / "A/1/0/0/zarr.json").read_text())
    doc["shape"] = [2, 10**9, 10**9]
    (plate / "A/1/0/0/zarr.json").write_text(json.dumps(doc))
    before = tree_digest(folder)
    for extra in (["--dry-run"], []):
        run = _cli(
            "predict",
            str(plate),
            "--model",
            str(ckpt),
            *extra,
            preexec_fn=_limit_memory,
            timeout=300,
        )
        assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1, run.stderr
        assert "declares shape (2, 1000000000, 1000000000)" in run.stderr
    assert tree_digest(folder) == before


@pytest.mark.parametrize(
    "arch",
    [
        {"depth": 10**6},
        {"base_channels": 10**9},
        {"depth": 9, "base_channels": 512},
        {"depth": "4"},
    ],
)
def test_absurd_checkpoint_architecture_is_refused(data, tmp_path, capsys, arch):
    folder, plate, ckpt = data
    bad = tmp_path / "bad_model"
    shutil.copytree(ckpt, bad)
    meta = json.loads((bad / "checkpoint.json").read_text())
    meta["architecture"].update(arch)
    (bad / "checkpoint.json").write_text(json.dumps(meta))
    before = tree_digest(folder)
    _one_line_error(
        capsys, main(["-q", "predict", str(plate), "--model", str(bad)]), "architecture"
    )
    assert tree_digest(folder) == before


def test_one_pixel_image_is_refused_in_one_line(tmp_path, setup, capsys):
    _, ckpt = setup
    path = omeloc.write_image(
        tmp_path / "px.zarr",
        np.ones((2, 1, 1), "uint16"),
        channel_names=["actin", "WAVE2"],
        chunks=(1, 1),
        levels=1,
    )
    before = tree_digest(path)
    _one_line_error(
        capsys,
        main(["-q", "predict", str(path), "--model", str(ckpt)]),
        "1 x 1 pixels",
        "--overlap",
    )
    assert tree_digest(path) == before


def test_labels_with_newlines_give_one_line_errors(data, capsys):
    folder, plate, ckpt = data
    for img in ("A/1/0", "A/2/0"):
        _edit(
            plate / img / "zarr.json",
            lambda ome: ome["omero"]["channels"][0].update(label="act\nin\x1b[31m"),
        )
    before = tree_digest(folder)
    _one_line_error(
        capsys, main(["-q", "predict", str(plate), "--model", str(ckpt)]), r"'act\nin\x1b[31m'"
    )
    assert tree_digest(folder) == before


def test_info_on_a_killed_plate_says_a_write_is_pending(data, capsys):
    _, plate, ckpt = data
    run = _cli("predict", str(plate), "--model", str(ckpt), kill_at="resized")
    assert run.returncode == -9, run.stderr
    assert main(["info", str(plate)]) == 0
    out = capsys.readouterr().out
    assert "write pending" in out and f"omeloc recover {plate}" in out, out
    assert "[pending]" in out  # the channel the killed run added is marked, not shown as a real one
