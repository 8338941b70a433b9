"""Make the plates of tests/writeback/data/legacy_plates.tar.gz with an omeloc checkout *before* the
journal became a record (run once, with that checkout first on PYTHONPATH):

``PYTHONPATH=/path/to/old/omeloc python tests/writeback/make_legacy_plates.py OUT_DIR``

For each NGFF version (0.4, 0.5) and each kill point it writes a small plate (``before``), copies
it, and lets that omeloc's ``add_channel`` of channel ``"pred"`` (:func:`legacy_data`) be SIGKILLed
at the point: ``level0_mid`` (half-way through the pixels: recovery rolls back) and ``complete``
(everything written, the journal not yet cleared: recovery finishes).  The archive then holds
``<version>/before/`` and ``<version>/<point>/`` for each.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

POINTS = ("level0_mid", "complete")
WELLS = (("A", "1", "0"), ("B", "2", "0"))


def legacy_data(path: str) -> dict[str, np.ndarray]:
    """The prediction written into every image (smooth, so the archive stays small)."""
    import omeloc

    out = {}
    for k, img in enumerate(omeloc.open_plate(path).images):
        y, x = np.mgrid[0 : img.shape[-2], 0 : img.shape[-1]]
        out[img.path] = (100.0 * (k + 1) + 3.0 * y + x).astype(np.float64)
    return out


def _plate(path: Path, version: str) -> None:
    from omeloc.ngff.writer import write_plate

    y, x = np.mgrid[0:64, 0:48]
    images = {
        w: np.stack([(y + x + 10 * i).astype("uint16"), (2 * y).astype("uint16")])
        for i, w in enumerate(WELLS)
    }
    write_plate(
        path,
        images,
        channel_names=["phase", "actin"],
        ngff_version=version,
        chunks=(32, 32),
        levels=2,
    )


if __name__ == "__main__":
    if sys.argv[1] == "--write":
        from omeloc.writeback.protocol import add_channel

        add_channel(sys.argv[2], "pred", legacy_data(sys.argv[2]), provenance={"model": "legacy"})
        sys.exit(0)
    out = Path(sys.argv[1])
    for version in ("0.4", "0.5"):
        before = out / version / "before"
        _plate(before, version)
        for point in POINTS:
            killed = out / version / point
            shutil.copytree(before, killed)
            env = {**os.environ, "OMELOC_TEST_KILL_AT": point}
            proc = subprocess.run(
                [sys.executable, __file__, "--write", str(killed)], env=env, check=False
            )
            assert proc.returncode == -9, proc.returncode
