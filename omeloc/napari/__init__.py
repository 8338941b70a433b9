"""omeloc in napari: an npe2 plugin (``napari.yaml``) with predict, train and evaluate widgets and
a synthetic sample plate.

The only package of omeloc that imports Qt and napari, and only when a widget is built; the
widgets are thin adapters over the job functions the CLI calls (``omeloc.jobs.predict``,
``omeloc.learn.training``, ``omeloc.analysis.evaluate``).  Install with ``pip install
'omeloc[napari]'``.
"""
