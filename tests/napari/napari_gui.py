"""What the napari GUI tests share: when they run, and the trained plate they predict into.

GUI tests need napari's pytest plugin (``make_napari_viewer``) and a real X server.  Run them as
``.ci/run`` does: ``xvfb-run -a python -m pytest -p napari tests/napari`` (``-p napari`` lifts
the ``-p no:napari`` of pyproject's ``addopts``).  Under the plain test command they skip,
saying so.

(A plain helper module, imported by the GUI tests and named in their ``pytest_plugins`` for its
fixtures; PYTEST_DONT_REWRITE: it holds no assertions.)
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

#: skip marker of the GUI tests (``pytestmark = GUI`` in their modules)
GUI = pytest.mark.skipif(
    "napari.utils._testsupport" not in sys.modules or not os.environ.get("DISPLAY"),
    reason=(
        "napari GUI test: run under an X server with -p napari (xvfb-run -a python -m pytest -p "
        "napari tests/napari; see .ci/run)"
    ),
)

#: how long a test waits for a widget's worker
TIMEOUT_MS = 180_000


@pytest.fixture(scope="session")
def gui_trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """``(plate, checkpoint, reference)``: a pristine 1 x 2-well plate (actin, WAVE2), a tiny
    actin → WAVE2 model, and a copy of the plate with the model's prediction written by the API."""
    from conftest import tiny_trained_plate

    return tiny_trained_plate(tmp_path_factory.mktemp("napari-trained"))


@pytest.fixture
def gui_plate(gui_trained: tuple[Path, Path, Path], tmp_path: Path) -> Path:
    """A fresh copy of the pristine plate, for a test to write into."""
    return Path(shutil.copytree(gui_trained[0], tmp_path / "plate.zarr"))


def wait_for(qtbot, widget) -> None:
    """Wait until the widget's job has ended and its outcome is shown."""
    qtbot.waitUntil(lambda: widget.job is not None and not widget.job.running, timeout=TIMEOUT_MS)
