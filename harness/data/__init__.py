"""Datasets; every module in this package registers one or more datasets."""

from __future__ import annotations

import importlib
import pkgutil

from harness.data.base import DATASETS, Dataset, DataError, register

__all__ = ["DATASETS", "DataError", "Dataset", "register"]

for _info in pkgutil.iter_modules(__path__):
    if _info.name not in ("base", "tokenize") and not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")
