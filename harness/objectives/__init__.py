"""Training objectives: every module here is one objective and ends with `register(...)`.

Importing the package imports each of them, so each objective registers itself (as methods do). What
objectives share lives in `harness.objectives.parts`, imported only when a hook needs it: an
objective module itself stays light (no torch at import), so reading a config stays fast.
"""

from __future__ import annotations

import importlib
import pkgutil

from harness.objectives.base import (DEFAULT, OBJECTIVES, RUN_REF, SPEC_COLUMN, Objective, ObjectiveOptions,
                                     default_options, register, sections_of)

__all__ = ["DEFAULT", "OBJECTIVES", "RUN_REF", "SPEC_COLUMN", "Objective", "ObjectiveOptions", "default_options",
           "register", "sections_of"]

for _info in pkgutil.iter_modules(__path__):
    if _info.name != "base" and not _info.name.startswith("_") and not _info.ispkg:
        importlib.import_module(f"{__name__}.{_info.name}")
