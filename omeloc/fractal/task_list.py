"""The Fractal task list of omeloc: what ``fractal-manifest create --package omeloc
--task-list-path fractal.task_list`` turns into ``omeloc/__FRACTAL_MANIFEST__.json``."""

from fractal_task_tools.task_models import CompoundTask, NonParallelTask, ParallelTask

AUTHORS = "omeloc developers"
DOCS_LINK = None

TASK_LIST = [
    ParallelTask(
        name="omeloc predict virtual stain",
        executable="fractal/omeloc_predict.py",
        meta={"needs_gpu": True, "cpus_per_task": 4, "mem": 16000},
        category="Image Processing",
        tags=["virtual staining", "deep learning", "U-Net", "pix2pix"],
    ),
    CompoundTask(
        name="omeloc train and predict virtual stain",
        executable_init="fractal/omeloc_train_init.py",
        executable="fractal/omeloc_predict_trained.py",
        meta_init={"needs_gpu": True, "cpus_per_task": 4, "mem": 16000},
        meta={"needs_gpu": True, "cpus_per_task": 4, "mem": 16000},
        category="Image Processing",
        tags=["virtual staining", "deep learning", "training"],
    ),
    NonParallelTask(
        name="omeloc evaluate virtual stain",
        executable="fractal/omeloc_evaluate.py",
        meta={"cpus_per_task": 2, "mem": 8000},
        category="Measurement",
        tags=["virtual staining", "screening", "feature table"],
    ),
]
