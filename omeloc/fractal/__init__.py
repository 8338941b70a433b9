"""omeloc as Fractal tasks (``pip install 'omeloc[fractal]'``).

Tasks (manifest: ``omeloc/__FRACTAL_MANIFEST__.json``, made from :mod:`omeloc.fractal.task_list`
by fractal-task-tools; each module runs as ``python -m omeloc.fractal.<task> --args-json A
--out-json B``, Fractal's command-line contract, through fractal-task-tools' runner):

- ``omeloc_predict`` (parallel, ``needs_gpu``): one image per call; model, source channel by
  label or ``wavelength_id``, target name, TTA / uncertainty.  Calls :func:`omeloc.predict`.
- ``omeloc_train_init`` + ``omeloc_predict_trained`` (compound): train once on chosen wells
  (:func:`omeloc.train`), then predict every image of the list in parallel.
- ``omeloc_evaluate`` (non-parallel): :func:`omeloc.evaluate` over the plate of the image
  list, the per-field and per-well results written as feature tables into the plate
  (:mod:`omeloc.writeback.tables`).

Parallel writes into one plate.  ``omeloc predict PLATE`` writes every image in one job under
one plate lock and one journal at the plate root ("every image or none", DESIGN invariant 3).
A Fractal parallel task gets one image's ``zarr_url``: it predicts with the *image* as the
write target, so :func:`~omeloc.writeback.protocol.add_channel` takes the lock
(``.omeloc_lock``) and keeps its journal in that image group only.  Parallel tasks on
different images of one plate therefore never share a key, a lock or a document (the well
and plate documents are not touched: the channel list lives in each image); each image is
individually crash-safe (a killed task is rolled back by its rerun, or by ``omeloc recover
<zarr_url>``).  "Every image or none" becomes a property of the Fractal job: it runs the task
over every image of the list, and reruns the failed ones.  A per-image task refuses to start
while a plate-wide omeloc run holds the plate root's lock.  The reverse is only partly
guarded: a plate-wide run started while per-image tasks run is refused by its preflight once
one image has grown a channel (images that differ in channels), but not before that, since
plate-wide writers do not look for image locks.  Do not run both on one plate at once.

Consolidated metadata.  A per-image write refreshes the image's own consolidated metadata, not
the plate root's (that would need the plate lock, which parallel tasks would queue on).  On a
plate whose root holds consolidated metadata (ngio does not write it by default), readers that
trust it see the old channel count until the next plate-level write: ``omeloc_evaluate``'s
table write re-consolidates the root.  omeloc and ngio read the image documents themselves.
"""

__all__ = ["TASKS"]

#: the task modules (each ``omeloc.fractal.<name>`` defines the function ``<name>``)
TASKS = ("omeloc_predict", "omeloc_train_init", "omeloc_predict_trained", "omeloc_evaluate")
