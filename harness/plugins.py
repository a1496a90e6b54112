"""User plugins: modules or .py files named by an experiment's `plugins:` list, imported so that
the methods or datasets they register become available (in the sweep and in each run)."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path

from harness.errors import ConfigError


def import_plugins(items: list[str], *, base: str | Path | None = None, file: str = "plugins") -> None:
    """Import each plugin once: a dotted module name, or a .py path relative to `base`.

    Raises:
        ConfigError: a plugin that is missing or fails to import.
    """
    for i, item in enumerate(items):
        field = f"plugins[{i}]"
        try:
            if item.endswith(".py"):
                path = Path(item)
                if not path.is_absolute() and base is not None:
                    path = Path(base) / path
                if not path.is_file():
                    raise ConfigError.one(file, field, f"plugin file `{item}` does not exist")
                name = "ftbench_plugin_" + hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:10]
                if name in sys.modules:
                    continue
                spec = importlib.util.spec_from_file_location(name, path)
                module = importlib.util.module_from_spec(spec)
                sys.modules[name] = module
                spec.loader.exec_module(module)
            else:
                importlib.import_module(item)
        except ConfigError:
            raise
        except Exception as exc:  # whatever a plugin raises on import is bad input
            raise ConfigError.one(file, field, f"plugin `{item}` failed to import: {type(exc).__name__}: {exc}") from None
