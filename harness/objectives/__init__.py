"""Training objectives; every module here that defines one ends with `register(...)`.

Importing the package imports every module in it, so each objective registers itself (as methods do).
"""

from __future__ import annotations

import importlib
import pkgutil

from harness.objectives.base import (DEFAULT, OBJECTIVES, RUN_REF, SPEC_COLUMN, Objective, ObjectiveOptions,
                                     default_options, objective_of, register, sections_of)

__all__ = ["DEFAULT", "OBJECTIVES", "RUN_REF", "SPEC_COLUMN", "Objective", "ObjectiveOptions", "default_options",
           "objective_of", "register", "sections_of"]

for _info in pkgutil.iter_modules(__path__):
    if _info.name != "base" and not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")
