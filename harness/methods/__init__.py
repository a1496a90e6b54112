"""Fine-tuning methods; every module in this package registers one or more methods."""

from __future__ import annotations

import importlib
import pkgutil

from harness.methods.base import METHODS, Method, MethodOptions, register

__all__ = ["METHODS", "Method", "MethodOptions", "register"]

for _info in pkgutil.iter_modules(__path__):
    if _info.name != "base" and not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")
