"""Run by the iohub side environment's Python (iohub 0.2 needs zarr 2, omeloc zarr 3): write or read
a plate.

    python interop_iohub.py write PLATE DATA.npy            # wells A/1, A/2 (field 0), TCZYX, channels actin, WAVE2
    python interop_iohub.py read PLATE IMAGE CHANNEL OUT.npy  # prints JSON; saves CHANNEL's level-0 pixels

Only the standard library, numpy and iohub are used here: this file is not imported by the tests.
"""  # noqa: E501

from __future__ import annotations

import json
import sys

import numpy as np
from iohub.ngff import open_ome_zarr


def write(plate: str, data_path: str) -> None:
    data = np.load(data_path)  # (wells, T, C, Z, Y, X)
    with open_ome_zarr(plate, layout="hcs", mode="w-", channel_names=["actin", "WAVE2"]) as ds:
        for column, field_data in zip(("1", "2"), data):
            ds.create_position("A", column, "0").create_image("0", field_data)


def read(plate: str, image: str, channel: str, out: str) -> None:
    with open_ome_zarr(plate, mode="r") as ds:
        positions = dict(ds.positions())
        pos = positions[image]
        names = list(pos.channel_names)
        c_axis = [a.lower() for a in pos.axis_names].index("c")
        level0 = pos[pos.metadata.multiscales[0].datasets[0].path]  # "0", "s0", "scale0/image", ...
        pixels = (
            np.take(np.asarray(level0), names.index(channel), axis=c_axis)
            if channel in names
            else np.zeros(0)
        )
        np.save(out, pixels)
        print(
            json.dumps(
                {
                    "positions": sorted(positions),
                    "channel_names": names,
                    "shape": list(level0.shape),
                }
            )
        )


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    {"write": write, "read": read}[command](*args)
