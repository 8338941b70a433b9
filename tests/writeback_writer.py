"""A write-back run in its own process (so tests can SIGKILL it), and the data it writes.

``python tests/writeback_writer.py PLATE SEED OVERWRITE`` adds channel ``"pred"`` with
:func:`make_data` (``OVERWRITE`` is ``1`` to replace it).
"""

import sys

import numpy as np

WRITER_PATH = __file__


def make_data(path, seed):
    """Random float data in every image of the plate at ``path`` (the same for the same seed)."""
    import omeloc

    rng = np.random.default_rng(seed)
    return {img.path: rng.uniform(-100, 9000, img.shape[1:]) for img in omeloc.open_plate(path).images}


if __name__ == "__main__":
    from omeloc.writeback.protocol import add_channel

    path, seed, overwrite = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
    add_channel(path, "pred", make_data(path, seed), overwrite=overwrite, provenance={"model": "m1"})
