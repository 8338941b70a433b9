"""A run SIGKILLed half-way through a concurrent round of document writes (the resize-and-mark
round, the provenance round) is rolled back byte for byte by ``omeloc recover``, and a rerun
equals an uninterrupted run
(issue 24: the metadata of a write-back goes out in concurrent rounds behind the journal).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
from conftest import assert_same_pixels, tree_digest


pytestmark = pytest.mark.slow

#: 1 row x 2 columns x 6 fields of 32², two levels: the resize round writes 12 x (1 omero + 2
#: shapes)
#: documents, the provenance round 11 (the first image's goes alone, before it)
IMAGES = 12


@pytest.fixture(scope="module")
def setup(tiny_trained):
    plate, ckpt, ref = tiny_trained(fields=6, size=32, chunk=32)
    return plate, str(ckpt), ref


def _cli(*args: str, **env: str) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith("OMELOC_TEST_")}
    full.update(env, OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-m", "omeloc.cli", "-q", *args],
        env=full,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.mark.parametrize("call", [5, 3 * IMAGES + 4], ids=["resize-round", "provenance-round"])
def test_a_kill_inside_a_round_of_document_writes_is_rolled_back_and_rerun(setup, tmp_path, call):
    plate, ckpt, ref = setup
    target = tmp_path / "p.zarr"
    shutil.copytree(plate, target)
    before = tree_digest(target)
    killed = _cli(
        "predict",
        str(target),
        "--model",
        ckpt,
        OMELOC_TEST_KILL_AT="batch_mid",
        OMELOC_TEST_AT_CALL=str(call),
    )
    assert killed.returncode == -9, killed.stderr
    assert tree_digest(target) != before  # some of the round's documents were written
    recovered = _cli("recover", str(target))
    assert recovered.returncode == 0, recovered.stderr
    # the journal's phase is "resized" or "pixels", not "complete": rolled back, byte for byte (the
    # "*.partial" file of a document write the kill cut short included)
    assert tree_digest(target) == before
    rerun = _cli("predict", str(target), "--model", ckpt)
    assert rerun.returncode == 0, rerun.stderr
    assert_same_pixels(target, ref)
