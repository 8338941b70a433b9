"""A write-back run in its own process (so tests can SIGKILL it), and the data it writes.

``python tests/writeback/writeback_writer.py PLATE SEED OVERWRITE [K]`` adds channel ``"pred"`` with
:func:`make_data` (``OVERWRITE`` is ``1`` to replace it); with ``K`` > 1 it writes ``K`` channels
(``"pred"``, ``"pred 1"``, ...) as one job.
"""

import sys

import numpy as np

WRITER_PATH = __file__


def make_data(path, seed, k=1):
    """Random float data in every image of the plate at ``path`` (the same for the same seed);
    ``(k, ...)`` per image when ``k`` > 1."""
    import omeloc

    rng = np.random.default_rng(seed)
    shape = lambda img: img.shape[1:] if k == 1 else (k, *img.shape[1:])  # noqa: E731
    return {img.path: rng.uniform(-100, 9000, shape(img)) for img in omeloc.open_plate(path).images}


def names(k):
    """The channel names the writer uses for ``k`` channels."""
    return "pred" if k == 1 else ["pred", *(f"pred {j}" for j in range(1, k))]


if __name__ == "__main__":
    from omeloc.writeback.protocol import add_channel

    path, seed, overwrite = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
    k = int(sys.argv[4]) if len(sys.argv) > 4 else 1
    add_channel(
        path, names(k), make_data(path, seed, k), overwrite=overwrite, provenance={"model": "m1"}
    )
