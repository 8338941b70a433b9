"""Prediction on a Dask distributed cluster.

Here a process-based LocalCluster on this machine; on GPU nodes the same call takes a client
of your cluster (the checkpoint folder must be readable by every worker):

    # one multi-GPU node: one worker per GPU, each advertising a GPU resource
    from dask_cuda import LocalCUDACluster
    cluster = LocalCUDACluster(resources={"GPU": 1})
    client = distributed.Client(cluster)

    # SLURM: dask-jobqueue
    from dask_jobqueue import SLURMCluster
    cluster = SLURMCluster(cores=8, memory="64GB", job_extra_directives=["--gres=gpu:1"],
                           worker_extra_args=["--resources", "GPU=1"])
    cluster.scale(jobs=4)
    client = distributed.Client(cluster)

    # a scheduler started by hand: `dask scheduler` and `dask worker tcp://HOST:8786 --resources GPU=1`
    omeloc predict plate.zarr --model CKPT --scheduler tcp://HOST:8786

When every worker advertises ``GPU``, omeloc's inference tasks ask for one, so each GPU runs
one inference at a time; each worker process loads the model once.

    python examples/distributed_predict.py OUT_DIR [--quick] [--workers 2]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import distributed
import numpy as np

import omeloc


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    size, steps = (96, 10) if args.quick else (512, 300)
    args.out.mkdir(parents=True, exist_ok=True)
    plate_path = omeloc.make_plate(args.out / "plate.zarr", rows=2, cols=2, fields=2, size=size, seed=2,
                                   chunks=(min(size, 256),) * 2, overwrite=True)
    trained = omeloc.train(plate_path, "actin", "vinculin", out=args.out / "model",
                           overwrite=True, steps=steps, val_wells=["B2"],
                           depth=2, base_channels=4 if args.quick else 16, crop=64)
    with distributed.LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        res = omeloc.predict(plate_path, trained.checkpoint, client=client, overwrite=True)
    print(res.summary())
    plate = omeloc.open_plate(plate_path)
    virtual = np.stack([img.channel("vinculin (virtual)").compute() for img in plate.images])
    print(f"virtual vinculin in {len(plate.images)} images, mean {virtual.mean():.1f}")
    return {"plate": plate_path, "result": res}


if __name__ == "__main__":
    main()
