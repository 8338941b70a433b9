"""The public API: every exported name resolves to what it says, whatever was imported before."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import types

import omeloc

#: third-party packages of the optional extras (fractal, bmz, napari): a submodule that needs one
#: that is not installed is skipped, nothing else
OPTIONAL = (
    "fractal_task_tools",
    "ngio",
    "anndata",
    "bioimageio",
    "onnx",
    "onnxruntime",
    "magicgui",
    "qtpy",
    "PyQt5",
    "PyQt6",
    "napari",
    "pandas",
)


def test_exports_are_not_shadowed_by_submodules():
    for info in pkgutil.walk_packages(omeloc.__path__, "omeloc."):  # import every submodule first
        try:
            importlib.import_module(info.name)
        except ModuleNotFoundError as err:
            if (err.name or "").split(".")[0] not in OPTIONAL:
                raise
    for name in omeloc.__all__:
        value = getattr(omeloc, name)
        assert not isinstance(value, types.ModuleType), (
            f"omeloc.{name} is a module, not the exported object"
        )


def test_public_functions_have_docstrings():
    for name in omeloc.__all__:
        value = getattr(omeloc, name)
        if inspect.isfunction(value) or inspect.isclass(value):
            assert (value.__doc__ or "").strip(), f"omeloc.{name} has no docstring"
