"""The public API: every exported name resolves to what it says, whatever was imported before."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import types

import omeloc


def test_exports_are_not_shadowed_by_submodules():
    for info in pkgutil.walk_packages(omeloc.__path__, "omeloc."):  # import every submodule first
        importlib.import_module(info.name)
    for name in omeloc.__all__:
        value = getattr(omeloc, name)
        assert not isinstance(value, types.ModuleType), f"omeloc.{name} is a module, not the exported object"


def test_public_functions_have_docstrings():
    for name in omeloc.__all__:
        value = getattr(omeloc, name)
        if inspect.isfunction(value) or inspect.isclass(value):
            assert (value.__doc__ or "").strip(), f"omeloc.{name} has no docstring"
