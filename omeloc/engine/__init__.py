"""Inference engine.

- :mod:`~omeloc.engine.tiling`: pure tile geometry, blending weights, the accumulator (numpy).
- :mod:`~omeloc.engine.device`: device and precision (``resolve_device``, ``resolve_precision``,
  autocast, channels_last).
- :mod:`~omeloc.engine.cache`: model references and the per-process model cache.
- :mod:`~omeloc.engine.forward`: the forward thread, batch sizes, a model's tile rules.
- :mod:`~omeloc.engine.inferer`: the one engine entry, ``RegionInferer`` (regions in,
  predictions out; hooks for normalization and the output), and its tile loop.
- :mod:`~omeloc.engine.inference`: ``predict_array`` over dask arrays, ``predict_numpy``.
"""
