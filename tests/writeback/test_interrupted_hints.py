"""A command that finds an interrupted write-back says so in one line and names ``omeloc recover``
(issue 30, item 4): the state a SIGKILL (or an out-of-memory death under ``ulimit -v``) leaves."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import random_plate_images, tree_digest
from writeback_writer import WRITER_PATH

from omeloc.cli import main
from omeloc.ngff.writer import write_plate


def test_info_and_evaluate_on_a_killed_write_back_name_recover(tmp_path, capsys, caplog):
    plate = tmp_path / "p.zarr"
    write_plate(
        plate,
        random_plate_images(cols=("1",), fields=("0",), shape=(2, 64, 48)),
        channel_names=["a", "b"],
        chunks=(32, 32),
        levels=2,
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMELOC_TEST_")}
    killed = subprocess.run(
        [sys.executable, WRITER_PATH, str(plate), "1", "0"],
        capture_output=True,
        text=True,
        env=dict(env, OMP_NUM_THREADS="1", OMELOC_TEST_KILL_AT="level0_written"),
        timeout=300,
        check=False,
    )
    assert killed.returncode == -9, killed.stderr
    capsys.readouterr()
    assert (
        main(["evaluate", str(plate), "--pred", "a", "--truth", "b", "--out", str(tmp_path / "ev")])
        == 0
    )
    warned = [r.getMessage() for r in caplog.records if "journal" in r.getMessage()]
    assert len(warned) == 1 and f"omeloc recover {plate}" in warned[0], warned
    assert main(["info", str(plate)]) == 0
    assert f"omeloc recover {plate}" in capsys.readouterr().out
    before_recover = tree_digest(plate)
    assert main(["recover", str(plate)]) == 0
    assert tree_digest(plate) != before_recover
    capsys.readouterr()
    assert main(["info", str(plate)]) == 0
    out = capsys.readouterr()
    assert "omeloc recover" not in out.out + out.err
