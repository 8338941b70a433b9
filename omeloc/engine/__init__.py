"""Inference engine: pure tiling geometry and blending, ``predict_array`` over dask arrays, device and precision."""
