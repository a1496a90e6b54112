"""Sweep files (`sweeps/NAME.yaml`): validation, and sampling a trial's run overrides from a conditional space.

Pure apart from Optuna's trial object: no training, no storage, so tests call it directly."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from harness import tasks as _tasks  # noqa: F401  (built-in tasks declare their primary scores' directions)
from harness.config import load_experiment, load_yaml
from harness.errors import ConfigError, allowed, did_you_mean
from harness.inputs import NAME_RULE, name_problem
from harness.metrics import METRICS

SWEEP_KEYS = ["description", "experiment", "set", "space", "objectives", "constraints", "sampler", "pruner",
              "n_trials", "timeout", "heartbeat", "enqueue"]
SAMPLERS = ("tpe", "nsga2", "random", "grid")
PRUNERS = ("none", "median", "percentile", "successive_halving", "hyperband")
CONSTRAINT = re.compile(r"^\s*([A-Za-z_][\w.]*)\s*(<=|>=|<|>)\s*([-+0-9.eE]+)\s*$")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Dimension(Strict):
    """One search dimension: a float/int range (optionally log-scale) or a list of choices, maybe conditional."""

    type: Literal["float", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list[Any] | None = None
    #: sampled only when every named key has one of the listed values (`{method: [lora, dora]}`)
    when: dict[str, list[Any]] | None = None

    @field_validator("when", mode="before")
    @classmethod
    def _listify(cls, when):
        if isinstance(when, dict):
            return {str(k): v if isinstance(v, list) else [v] for k, v in when.items()}
        return when

    @model_validator(mode="after")
    def _check(self):
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("a categorical dimension needs a non-empty `choices` list")
            if self.low is not None or self.high is not None or self.log or self.step is not None:
                raise ValueError("a categorical dimension takes `choices`, not `low`/`high`/`log`/`step`")
            return self
        if self.choices is not None:
            raise ValueError(f"a {self.type} dimension takes `low` and `high`, not `choices`")
        if self.low is None or self.high is None:
            raise ValueError(f"a {self.type} dimension needs `low` and `high`")
        if self.low > self.high:
            raise ValueError(f"`low` must be <= `high`, but got low={self.low}, high={self.high}")
        if self.log and self.low <= 0:
            raise ValueError(f"a log-scale dimension needs `low` > 0, but got low={self.low}")
        if self.log and self.step is not None:
            raise ValueError("`step` and `log` cannot be combined (Optuna samples one or the other)")
        if self.type == "int" and (self.low != int(self.low) or self.high != int(self.high)):
            raise ValueError(f"an int dimension needs whole `low`/`high`, but got low={self.low}, high={self.high}")
        return self


class Objective(Strict):
    metric: str
    direction: Literal["minimize", "maximize"] | None = None


class SamplerCfg(Strict):
    model_config = ConfigDict(extra="allow", frozen=True)  # the rest are the Optuna sampler's own arguments
    name: Literal["tpe", "nsga2", "random", "grid"] = "tpe"
    seed: int | None = 0


class PrunerCfg(Strict):
    model_config = ConfigDict(extra="allow", frozen=True)  # the rest are the Optuna pruner's own arguments
    name: Literal["none", "median", "percentile", "successive_halving", "hyperband"] = "none"


class Heartbeat(Strict):
    """How a killed worker's trial is noticed (RDB storages): beat every `interval` s, stale after `grace` s."""

    interval: int = Field(30, ge=1)
    grace: int = Field(90, ge=2)
    max_retry: int = Field(1, ge=0)

    @model_validator(mode="after")
    def _grace_after_interval(self):
        if self.grace <= self.interval:
            raise ValueError(f"`grace` must be > `interval`, but got grace={self.grace}, interval={self.interval}")
        return self


class Sweep(Strict):
    """A validated sweep file."""

    name: str
    file: str
    description: str = ""
    experiment: str
    set: list[str] = []
    space: dict[str, Dimension]
    objectives: list[Objective]
    constraints: list[str] = []
    sampler: SamplerCfg = SamplerCfg()
    pruner: PrunerCfg = PrunerCfg()
    n_trials: int = Field(20, ge=1)
    timeout: float | None = Field(None, gt=0)
    heartbeat: Heartbeat = Heartbeat()
    enqueue: list[dict[str, Any]] = []

    @property
    def directions(self) -> list[str]:
        return [o.direction for o in self.objectives]

    def parsed_constraints(self) -> list[tuple[str, str, float]]:
        return [parse_constraint(c) for c in self.constraints]


def parse_constraint(text: str) -> tuple[str, str, float]:
    """`peak_mem_train_mb <= 2000` → ("peak_mem_train_mb", "<=", 2000.0)."""
    match = CONSTRAINT.match(str(text))
    if not match:
        raise ValueError(f"constraint must look like `metric <= number` (or >=, <, >), but got {text!r}")
    return match.group(1), match.group(2), float(match.group(3))


def violation(metrics: dict, constraint: tuple[str, str, float]) -> float:
    """Optuna's convention: <= 0 is feasible. A missing metric is infeasible (1e9)."""
    key, op, bound = constraint
    value = metrics.get(key)
    if value is None or not math.isfinite(value):
        return 1e9
    return value - bound if op in ("<=", "<") else bound - value


def sweep_path(name: str) -> Path:
    """`lora_hpo` → sweeps/lora_hpo.yaml; paths pass through."""
    path = Path(name)
    return path if path.suffix in (".yaml", ".yml") or path.exists() else Path("sweeps") / f"{name}.yaml"


def read_sweep(path: str | Path) -> Sweep:
    """Read and validate a sweep file, its experiment, its space keys and its metric names (the
    sampler's and pruner's own options are Optuna's to check: `harness.search.study.load_sweep`).

    Raises:
        ConfigError: every problem at once, each naming the file and the field.
    """
    from harness.grid import _check_key

    path = Path(path)
    file = str(path)
    doc = load_yaml(path)
    if not isinstance(doc, dict):
        raise ConfigError.one(file, "", f"must be a mapping with keys {', '.join(SWEEP_KEYS)}")
    if name_problem(path.stem):  # the sweep's runs, study and best.yaml live in results/<name>/
        raise ConfigError.one(file, "", f"the sweep is named after its file, `{path.stem}`, which must be "
                              f"{NAME_RULE}: rename the file")
    problems = [(file, k, f"unknown top-level key `{k}`.{did_you_mean(k, SWEEP_KEYS)} {allowed(SWEEP_KEYS)}")
                for k in doc if k not in SWEEP_KEYS]
    for key in ("experiment", "space", "objectives"):
        if not doc.get(key):
            problems.append((file, key, "required"))
    if isinstance(doc.get("objectives"), (str, dict)):
        doc["objectives"] = [doc["objectives"]]
    doc["objectives"] = [{"metric": o} if isinstance(o, str) else o for o in doc.get("objectives") or []]
    if isinstance(doc.get("sampler"), str):
        doc["sampler"] = {"name": doc["sampler"]}
    if isinstance(doc.get("pruner"), str):
        doc["pruner"] = {"name": doc["pruner"]}
    if problems:
        raise ConfigError(problems)
    experiment = _experiment_file(str(doc["experiment"]), path)
    if experiment is None:
        raise ConfigError.one(file, "experiment", f"no experiment `{doc['experiment']}`: give a path, or a name in "
                              "experiments/ (e.g. `rank_alpha` for experiments/rank_alpha.yaml)")
    doc["experiment"] = str(experiment)
    try:
        sweep = Sweep(name=path.stem, file=file, **doc)
    except ValidationError as exc:
        raise ConfigError([(file, ".".join(str(p) for p in e["loc"]), e["msg"].removeprefix("Value error, "))
                           for e in exc.errors()]) from None
    for key, dim in sweep.space.items():
        problem = _check_key(key)
        if problem:
            problems.append((file, f"space.{key}", problem))
        for cond in dim.when or {}:
            if cond not in sweep.space and _check_key(cond):
                problems.append((file, f"space.{key}.when.{cond}", f"not a space key or config key. {allowed(sweep.space)}"))
            elif cond == key:
                problems.append((file, f"space.{key}.when", "a dimension cannot depend on itself"))
    for i, objective in enumerate(sweep.objectives):
        problems += _check_objective(file, f"objectives[{i}]", objective)
    for i, text in enumerate(sweep.constraints):
        try:
            unknown = _unknown_metric(parse_constraint(text)[0])
        except ValueError as exc:
            unknown = str(exc)
        if unknown:
            problems.append((file, f"constraints[{i}]", unknown))
    if sweep.pruner.name != "none" and sweep.objectives[0].metric != "eval_loss":
        problems.append((file, "pruner", "pruning reads the periodic eval loss during training, so the first "
                         f"objective must be `eval_loss`, but got `{sweep.objectives[0].metric}`"))
    if sweep.sampler.name == "grid":
        problems += [(file, f"space.{k}", "the grid sampler needs categorical dimensions or int dimensions")
                     for k, d in sweep.space.items() if d.type == "float"]
    if problems:
        raise ConfigError(problems)
    return _with_directions(sweep)


def _experiment_file(name: str, sweep_file: Path) -> Path | None:
    """A path as given, beside the sweep file, or `experiments/NAME.yaml`."""
    candidates = [Path(name), sweep_file.parent / name, Path("experiments") / f"{name}.yaml"]
    return next((p for p in candidates if p.is_file()), None)


def _unknown_metric(metric: str) -> str | None:
    """Why `metric` is no declared result metric, or None when it is one."""
    if not METRICS.undeclared([metric]):
        return None
    stored = [m.key for m in METRICS if m.stored]
    return (f"unknown metric `{metric}`.{did_you_mean(metric, stored)} "
            f"Allowed: a result metric ({', '.join(stored)}).")


def _check_objective(file: str, field: str, objective: Objective) -> list[tuple[str, str, str]]:
    unknown = _unknown_metric(objective.metric)
    if unknown:
        return [(file, f"{field}.metric", unknown)]
    if objective.direction is None and METRICS.direction(objective.metric) is None:
        return [(file, f"{field}.direction", f"`{objective.metric}` has no known direction: set minimize or maximize")]
    return []


def _with_directions(sweep: Sweep) -> Sweep:
    """Each objective's direction as given, else as its metric is declared."""
    objectives = [o if o.direction else o.model_copy(update={"direction": METRICS.direction(o.metric)})
                  for o in sweep.objectives]
    return sweep.model_copy(update={"objectives": objectives})


def check_against_experiment(sweep: Sweep) -> None:
    """The base experiment must load, and pruning needs `eval.every_steps` in it (or in `set`)."""
    experiment = load_experiment(sweep.experiment)
    if sweep.pruner.name == "none":
        return
    every = (experiment.base.get("eval") or {}).get("every_steps")
    every = next((s.split("=", 1)[1] for s in sweep.set if s.split("=", 1)[0].strip() == "eval.every_steps"), every)
    if every in (None, "", "null"):
        raise ConfigError.one(sweep.file, "pruner", "pruning needs intermediate eval losses: set `eval.every_steps` "
                              f"in {sweep.experiment} or add `eval.every_steps=N` to `set`")


# --- sampling ---------------------------------------------------------------------------------------

def encode_choice(value: Any) -> Any:
    """Optuna stores None/bool/int/float/str choices; a list or mapping is stored as its JSON text."""
    return value if value is None or isinstance(value, (bool, int, float, str)) else json.dumps(value)


def decode_choice(value: Any, choices: list[Any]) -> Any:
    return next((c for c in choices if encode_choice(c) == value), value)


def sampling_order(space: dict[str, Dimension]) -> list[str]:
    """Dimensions in file order, except that a dimension comes after those its `when` reads."""
    order: list[str] = []

    def visit(key: str, path: tuple[str, ...] = ()) -> None:
        if key in order or key not in space:
            return
        if key in path:
            raise ConfigError.one("", f"space.{key}.when", "conditions form a cycle: " + " → ".join((*path, key)))
        for cond in space[key].when or {}:
            visit(cond, (*path, key))
        order.append(key)

    for key in space:
        visit(key)
    return order


def suggest(trial, space: dict[str, Dimension], base: dict[str, Any] | None = None) -> dict[str, Any]:
    """Sample the trial's values: dotted config key → value, only for dimensions whose `when` holds.

    `base` gives the experiment's values for condition keys that are not in the space.
    """
    from harness.grid import get_dotted

    params: dict[str, Any] = {}
    for key in sampling_order(space):
        dim = space[key]
        if dim.when and not all(_current(cond, params, base, get_dotted) in values for cond, values in dim.when.items()):
            continue
        if dim.type == "categorical":
            picked = trial.suggest_categorical(key, [encode_choice(c) for c in dim.choices])
            params[key] = decode_choice(picked, dim.choices)
        elif dim.type == "int":
            params[key] = trial.suggest_int(key, int(dim.low), int(dim.high), step=int(dim.step or 1), log=dim.log)
        else:
            params[key] = trial.suggest_float(key, dim.low, dim.high, step=dim.step, log=dim.log)
    return params


def _current(key: str, params: dict, base: dict | None, get_dotted) -> Any:
    if key in params:
        value = params[key]
        return value.get("name") if key == "method" and isinstance(value, dict) else value
    return get_dotted(base or {}, key)


def grid_space(space: dict[str, Dimension]) -> dict[str, list[Any]]:
    """The search space Optuna's GridSampler enumerates (categorical and int dimensions only)."""
    out = {}
    for key, dim in space.items():
        if dim.type == "categorical":
            out[key] = [encode_choice(c) for c in dim.choices]
        else:
            out[key] = list(range(int(dim.low), int(dim.high) + 1, int(dim.step or 1)))
    return out
