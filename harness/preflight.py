"""Checks that need to look outside the config (model folders, data files) before any run starts."""

from __future__ import annotations

from harness import models
from harness.data import DATASETS, DataError
from harness.data.base import split
from harness.errors import ConfigError


def check(specs, *, file: str) -> None:
    """Verify every distinct model and data config of the grid.

    Raises:
        ConfigError: every problem found (unknown model, missing file, wrong fields, n_train too large).
    """
    problems: list[tuple[str, str, str]] = []
    seen_models, seen_data, records_cache = set(), set(), {}
    for spec in specs:
        cfg = spec.config
        if cfg.model.name not in seen_models:
            seen_models.add(cfg.model.name)
            try:
                models.check(cfg.model.name, file=file, field="model.name")
            except ConfigError as exc:
                problems.extend(exc.problems)
        key = cfg.data.model_dump_json()
        if key in seen_data:
            continue
        seen_data.add(key)
        source = (cfg.data.name, cfg.data.path, cfg.data.split, cfg.data.prompt_field, cfg.data.response_field)
        try:
            if source not in records_cache:
                records_cache[source] = DATASETS.get(cfg.data.name)().records(cfg.data)
            split(records_cache[source], cfg.data)
        except DataError as exc:
            problem = (file, exc.field, str(exc))
            if problem not in problems:
                problems.append(problem)
        except KeyError as exc:  # unknown dataset name
            problems.append((file, "data.name", str(exc)))
    if problems:
        raise ConfigError(problems)
