"""omeloc: virtual stains for OME-Zarr HCS plates.

Public API (imported lazily, so ``import omeloc`` and the CLI start fast):

- :func:`open_plate`, :func:`open_image` — lazy plate/image views (``omeloc.plate``)
- :func:`write_plate`, :func:`write_image` — new OME-Zarr plates/images (``omeloc.hcs_writer``)
- :func:`make_plate` — synthetic plates with known protein relationships (``omeloc.synthetic``)
- :func:`import_tiff` — TIFF folder to OME-Zarr HCS plate (``omeloc.tiff_import``)
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    "open_plate": "omeloc.plate",
    "open_image": "omeloc.plate",
    "Plate": "omeloc.plate",
    "Well": "omeloc.plate",
    "Image": "omeloc.plate",
    "write_plate": "omeloc.hcs_writer",
    "write_image": "omeloc.hcs_writer",
    "make_plate": "omeloc.synthetic",
    "import_tiff": "omeloc.tiff_import",
    "describe": "omeloc.info",
    "OmelocError": "omeloc.errors",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'omeloc' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
