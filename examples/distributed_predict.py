"""Prediction on a Dask distributed cluster: a LocalCluster here, recipes for the clusters users have.

    python examples/distributed_predict.py OUT_DIR [--quick] [--cluster local|cuda|slurm] [--workers N]
                                                   [--gpu-threads 1]

The same ``omeloc.predict(..., client=client)`` call runs on every kind of cluster; what changes
is how the cluster starts.  Every worker must read the plate and the checkpoint folder at the
same path (a shared file system; omeloc checks the checkpoint on every worker before writing).
When every worker advertises a ``GPU`` resource, each inference task asks for one unit of it,
so a worker runs as many inference tasks at once as it has GPU units (``--gpu-threads``):

``local`` (default; runs in the tests, on CPU): ``--workers`` processes (default 2)
    ``distributed.LocalCluster(resources={"GPU": 1})``: the GPU scheduling logic without a GPU.
``cuda``: one multi-GPU node; needs ``pip install dask-cuda`` (and CUDA)
    ``dask_cuda.LocalCUDACluster(resources={"GPU": 1})``: one worker process per GPU (default
    all; ``--workers N``: the first N), each with its own GPU first in ``CUDA_VISIBLE_DEVICES``,
    so its ``cuda:0`` is its own GPU (plain ``dask worker --nworkers N`` does not do that: all
    its workers would use the node's first GPU).
``slurm``: a SLURM cluster; needs ``pip install dask-jobqueue``
    ``dask_jobqueue.SLURMCluster(job_extra_directives=["--gres=gpu:1"],
    worker_extra_args=["--resources", "GPU=1"])``: ``--workers`` batch jobs (default 2) of one
    GPU each; queue, account and the Python environment come from your ``jobqueue.yaml`` (or
    add ``queue=``, ``account=`` here).

A scheduler started by hand works the same from the command line (what tests/jobs/test_cluster.py
runs)::

    dask scheduler --port 8786 &
    dask worker tcp://HOST:8786 --nworkers 2 --nthreads 1 --resources GPU=1 &
    omeloc predict plate.zarr --model CKPT --scheduler tcp://HOST:8786
"""  # noqa: E501

from __future__ import annotations

import argparse
import importlib
from pathlib import Path
from typing import Any

import distributed
import numpy as np

import omeloc
from omeloc.engine.cache import model_loads

#: recipe → (the module it imports, the package that provides it)
NEEDS = {"cuda": ("dask_cuda", "dask-cuda"), "slurm": ("dask_jobqueue", "dask-jobqueue")}


def _need(recipe: str) -> Any:
    """The module ``recipe`` needs, or an ImportError that says in one line what to install."""
    module, package = NEEDS[recipe]
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(f"The {recipe} recipe needs {package}: pip install {package}") from err


def local_cluster(workers: int, gpu_threads: int = 1) -> distributed.LocalCluster:
    """Worker processes on this machine that advertise ``GPU`` (the scheduling logic, on CPU)."""
    return distributed.LocalCluster(
        n_workers=workers,
        threads_per_worker=gpu_threads,
        processes=True,
        resources={"GPU": gpu_threads},
        dashboard_address=None,
    )


def cuda_cluster(workers: int | None = None, gpu_threads: int = 1) -> Any:
    """dask-cuda: one worker per GPU of this node (``workers``: the first N GPUs), each pinned to
    its GPU.

    ``gpu_threads`` > 1 runs that many inference tasks at once on each GPU (threads of one worker
    process sharing its model): worth it when one task leaves the GPU underfilled.
    """
    dask_cuda = _need("cuda")
    return dask_cuda.LocalCUDACluster(
        n_workers=workers, threads_per_worker=gpu_threads, resources={"GPU": gpu_threads}
    )


def slurm_cluster(workers: int, gpu_threads: int = 1, cores: int = 4, memory: str = "32GB") -> Any:
    """dask-jobqueue: ``workers`` SLURM jobs of one GPU each (one worker process per job).

    The worker's ``cores`` threads serve ``gpu_threads`` inference tasks at once and read and
    write chunks with the rest.
    """
    jobqueue = _need("slurm")
    cluster = jobqueue.SLURMCluster(
        cores=cores,
        processes=1,
        memory=memory,
        walltime="02:00:00",
        job_extra_directives=["--gres=gpu:1"],
        worker_extra_args=["--resources", f"GPU={gpu_threads}"],
    )
    cluster.scale(jobs=workers)
    return cluster


RECIPES = {"local": local_cluster, "cuda": cuda_cluster, "slurm": slurm_cluster}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--workers", type=int, default=None, help="default: 2 (cuda: every GPU)")
    parser.add_argument("--cluster", choices=sorted(RECIPES), default="local")
    parser.add_argument(
        "--gpu-threads", type=int, default=1, help="inference tasks at once per worker (GPU)"
    )
    args = parser.parse_args(argv)
    if args.cluster in NEEDS:
        _need(args.cluster)  # say what to install before training anything
    size, steps = (96, 10) if args.quick else (512, 300)
    args.out.mkdir(parents=True, exist_ok=True)
    plate_path = omeloc.make_plate(
        args.out / "plate.zarr",
        rows=2,
        cols=2,
        fields=2,
        size=size,
        seed=2,
        chunks=(min(size, 256),) * 2,
        overwrite=True,
    )
    trained = omeloc.train(
        plate_path,
        "actin",
        "vinculin",
        out=args.out / "model",
        overwrite=True,
        steps=steps,
        val_wells=["B2"],
        depth=2,
        base_channels=4 if args.quick else 16,
        crop=64,
    )
    workers = args.workers or (None if args.cluster == "cuda" else 2)
    with (
        RECIPES[args.cluster](workers, args.gpu_threads) as cluster,
        distributed.Client(cluster) as client,
    ):
        client.wait_for_workers(1, timeout=600)
        res = omeloc.predict(plate_path, trained.checkpoint, client=client, overwrite=True)
        loads = client.run(model_loads)  # worker → how often it loaded a model: once at most
    print(res.summary())
    print(f"model loads per worker: {sorted(loads.values())}")
    plate = omeloc.open_plate(plate_path)
    virtual = np.stack([img.channel("vinculin (virtual)").compute() for img in plate.images])
    print(f"virtual vinculin in {len(plate.images)} images, mean {virtual.mean():.1f}")
    return {"plate": plate_path, "result": res, "model_loads": loads}


if __name__ == "__main__":
    try:
        main()
    except ImportError as err:
        raise SystemExit(str(err)) from None
