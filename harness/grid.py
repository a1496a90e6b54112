"""Pure grid expansion: an experiment's base + axes + overrides → an ordered list of RunSpecs."""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
import re
from dataclasses import dataclass, field, replace
from typing import Any

from harness.config import (RUN_KEYS, SECTIONS, Experiment, RunConfig, build_run_config, in_file_order, input_sections,
                             normalize)
from harness.errors import ConfigError, allowed, did_you_mean
from harness.inputs import MAX_RUNS, TooLarge, parse_yaml
from harness.methods import METHODS

SEED_KEYS = ("seed", "seeds")
#: grid key `repeats: N`: every grid point N times with the same seed (run field `repeat` 0..N-1), for the noise floor
REPEATS_KEY = "repeats"


@dataclass(frozen=True)
class Axis:
    """One grid axis: each value is a list of (dotted key, value) assignments."""

    label: str
    values: list[list[tuple[str, Any]]]
    when: dict[str, list] | None = None


@dataclass(frozen=True)
class RunSpec:
    """A resolved grid point: what to run, under which id, and what varies."""

    experiment: str
    run_id: str
    slug: str
    config: RunConfig
    varied: dict[str, Any] = field(default_factory=dict)
    #: run id of the untouched-base reference row this run's forgetting is measured against
    reference: str | None = None
    #: a search trial's {study, number, params}; recorded, never hashed (same params = same run)
    trial: dict | None = None
    #: {`run:<slug>`: run id} for each run of this grid that the run reads (a stage's predecessor, a
    #: teacher, an SFT start): the store may hold older runs under the same slug; part of the run id
    reads: dict[str, str] | None = None
    #: `micro_batch: auto`: the {micro_batch, grad_accum} chosen to fit this machine; recorded, never
    #: hashed (the same grid point on another card is the same run)
    batch: dict | None = None

    def as_dict(self) -> dict:
        extra = {"reference": self.reference} if self.reference else {}
        extra.update({"trial": self.trial} if self.trial else {})
        extra.update({"reads": self.reads} if self.reads else {})
        extra.update({"batch": self.batch} if self.batch else {})
        return {"experiment": self.experiment, "run_id": self.run_id, "slug": self.slug,
                "varied": self.varied, **extra, **self.config.as_dict()}


# --- dotted access ------------------------------------------------------------------------------

def _canonical(key: str) -> str:
    return "seed" if key in SEED_KEYS else key


def get_dotted(raw: dict, key: str) -> Any:
    """Read `key` ("method", "method.r", "seed") from a raw run dict; `method` reads its name."""
    parts = _canonical(key).split(".")
    node: Any = normalize(parts[0], raw.get(parts[0]))
    if len(parts) == 1 and parts[0] in ("method", "model", "data"):
        return node.get("name") if isinstance(node, dict) else node
    for part in parts[1:]:
        node = node.get(part) if isinstance(node, dict) else None
    return node


def set_dotted(raw: dict, key: str, value: Any) -> None:
    """Assign `value` at dotted `key` in a raw run dict (in place).

    Setting `method` to another method keeps the base options that method accepts, so
    `method: {name: lora, r: 16}` with a grid over [lora, qlora] gives both r=16.
    """
    parts = _canonical(key).split(".")
    top = parts[0]
    if len(parts) == 1:
        if top == "method":
            raw["method"] = _switch_method(normalize("method", raw.get("method") or {}), normalize("method", value))
        elif top in ("model", "data") and isinstance(value, str):
            raw[top] = {**normalize(top, raw.get(top) or {}), "name": value}
        else:
            raw[top] = copy.deepcopy(value)
        return
    node = raw.setdefault(top, {})
    node = raw[top] = normalize(top, node) if not isinstance(node, dict) else node
    for part in parts[1:-1]:
        if not isinstance(node, dict):
            break
        node = node.setdefault(part, {})
    if isinstance(node, dict):
        node[parts[-1]] = copy.deepcopy(value)
    # else: `top` holds no mapping (`method: false`); the run's validation reports that value


def _switch_method(old: dict, new: Any) -> Any:
    if not isinstance(new, dict) or not isinstance(old, dict) or "name" not in new:
        return new
    name = new["name"]
    keep = {}
    if name in METHODS:
        accepted = METHODS.get(name).Options.model_fields
        anyone = {f for m in METHODS.names() for f in METHODS.get(m).Options.model_fields}
        # an option no method has is a typo: kept, so the new method reports it instead of it vanishing
        keep = {k: v for k, v in old.items() if k != "name" and (k in accepted or k not in anyone)}
    return {"name": name, **keep, **{k: v for k, v in new.items() if k != "name"}}


# --- axes -----------------------------------------------------------------------------------------

def _is_path(key: str) -> bool:
    return _canonical(key).split(".")[0] in RUN_KEYS


def parse_axes(grid: dict, *, file: str) -> list[Axis]:
    """Read the `grid:` mapping into Axis objects.

    A key that is a dotted config path is a plain axis (`method.r: [4, 8]`), optionally
    `{values: [...], when: {method: [lora, qlora]}}`; any other key names a paired axis whose
    values are mappings of dotted keys that move together.

    Raises:
        ConfigError: empty axes, unknown keys, malformed conditions.
    """
    axes, problems = read_axes(grid, file=file)
    if problems:
        raise ConfigError(problems)
    return axes


def read_axes(grid: dict, *, file: str, max_runs: int | None = None) -> tuple[list[Axis], list[tuple[str, str, str]]]:
    """`parse_axes` without raising: (the axes that parse, the problems of the others); `repeats` past
    `max_runs` is one of those (never built)."""
    axes, problems = [], []
    for label, spec in grid.items():
        label = str(label)
        where = f"grid.{label}"
        if label == "repeat":
            problems.append((file, where, f"the runs of one grid point are numbered by `{REPEATS_KEY}: N` "
                             f"(e.g. `{REPEATS_KEY}: 2`), not set one by one"))
            continue
        if label == REPEATS_KEY:
            try:
                axes.append(repeats_axis(spec, file=file, field=where, limit=max_runs))
            except ConfigError as exc:
                problems.extend(exc.problems)
            continue
        when = None
        values = spec
        if isinstance(spec, dict) and "values" in spec:
            extra = set(spec) - {"values", "when"}
            if extra:
                problems.append((file, where, f"unknown key(s) {sorted(map(str, extra))}; an axis mapping takes `values` "
                                 "and `when`"))
                continue
            values, when = spec["values"], spec.get("when")
            if when is not None:
                if not isinstance(when, dict) or not when:
                    problems.append((file, f"{where}.when", "must map config keys to a value or a list of values"))
                    continue
                bad = [k for k in when if not _is_path(str(k))]
                if bad:
                    problems.append((file, f"{where}.when.{bad[0]}", f"not a config key. {allowed(RUN_KEYS)}"))
                    continue
                when = {str(k): v if isinstance(v, list) else [v] for k, v in when.items()}
        elif isinstance(spec, str) and _is_path(label):
            values = [spec]  # `method.alpha: 2*r` — one value, usually an expression
        if not isinstance(values, list):
            values = [values]
        if not values:
            problems.append((file, where, "empty axis: give at least one value"))
            continue
        if max_runs is not None and len(values) > max_runs:  # never built: the product would be larger still
            problems.append((file, where, f"{len(values):,} values: the grid expands to at least {len(values):,} "
                             f"runs, more than the {max_runs:,} allowed; pass `--max-runs {len(values)}` if you mean it"))
            continue
        if _is_path(label):
            axes.append(Axis(label=label, values=[[(label, v)] for v in values], when=when))
            continue
        if not all(isinstance(v, dict) and v for v in values):
            names = sorted({*RUN_KEYS, "seeds", REPEATS_KEY} - {"repeat"})
            problems.append((file, where, f"unknown grid axis `{label}`.{did_you_mean(label, names)} "
                             "A plain axis is a config key (" + ", ".join(names) + ", or a dotted key inside one); "
                             "any other name is a paired axis whose values are mappings of config keys."))
            continue
        paired = []
        for i, value in enumerate(values):
            bad = [k for k in value if not _is_path(str(k))]
            if bad:
                problems.append((file, f"{where}[{i}].{bad[0]}", f"not a config key. {allowed(RUN_KEYS)}"))
            paired.append([(str(k), v) for k, v in value.items()])
        axes.append(Axis(label=label, values=paired, when=when))
    return axes, problems


def repeats_axis(value: Any, *, file: str, field: str, limit: int | None = None) -> Axis:
    """The axis of `repeats: N`: run field `repeat` = 0..N-1, every other key the same (the seed too).

    Args:
        limit: the most repeats allowed (`--max-runs`), checked before the axis is built.

    Raises:
        ConfigError: `value` is not a positive integer, or is above `limit`.
    """
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError.one(file, field, "must be a positive integer (how many times to run each grid point with "
                              f"the same seed; 1: once), but got {value!r}")
    if limit is not None and value > limit:
        raise ConfigError.one(file, field, f"{value:,} repeats are more than the {limit:,} runs allowed; pass "
                              f"`--max-runs {value}` if you mean it")
    return Axis(label=REPEATS_KEY, values=[[("repeat", k)] for k in range(value)])


def parse_overrides(items: list[str]) -> list[tuple[str, Any]]:
    """Parse `key=value` overrides (values read as YAML scalars/lists).

    Raises:
        ConfigError: an item without `=`, or a key that no config has.
    """
    out, problems = read_overrides(items)
    if problems:
        raise ConfigError(problems)
    return out


def read_overrides(items: list[str]) -> tuple[list[tuple[str, Any]], list[tuple[str, str, str]]]:
    """`parse_overrides` without raising: (the overrides that parse, the problems of the others)."""
    out, problems = [], []
    for item in items:
        if "=" not in item:
            problems.append(("SET", item, "must look like key=value, e.g. train.max_steps=500"))
            continue
        key, text = item.split("=", 1)
        key = key.strip()
        try:
            value = parse_yaml(text, source="SET", field=key).data if text.strip() else ""
        except TooLarge as exc:  # aliases that expand past the cap, nesting too deep: refused
            problems.extend(exc.problems)
            continue
        except ConfigError:
            value = text  # not YAML: the text as given
        problem = _check_key(key)
        if problem:
            problems.append(("SET", key, problem))
            continue
        out.append((key, value))
    return out, problems


def _check_key(key: str) -> str | None:
    parts = _canonical(key).split(".")
    top, rest = parts[0], parts[1:]
    keys = sorted({*RUN_KEYS, "seeds", REPEATS_KEY} - {"repeat"})
    if key == REPEATS_KEY:
        return None
    if key == "repeat":
        return f"set `{REPEATS_KEY}=N` (runs of each grid point with the same seed), not one repeat"
    if top not in RUN_KEYS:
        return f"no such key `{top}`.{did_you_mean(top, keys)} {allowed(keys)}"
    if not rest:
        return None
    if top in SECTIONS:
        names = list(SECTIONS[top].model_fields)
    elif top == "method":
        names = sorted({"name", *(f for m in METHODS.names() for f in METHODS.get(m).Options.model_fields)})
    else:
        return f"`{top}` has no sub-keys"
    if rest[0] not in names or len(rest) > 1:
        return f"no such key `{key}`.{did_you_mean(rest[0], names)} {allowed(names)}"
    return None


# --- expansion ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Expansion:
    """What a grid expands to, problems and all (`expand` raises them; the plan checks inputs first).

    Attributes:
        specs: the valid runs, in a stable order, without duplicates.
        problems: every problem of the file's top level, its grid, the overrides and every grid point.
        inputs: the (model, data) sections of every point that validate on their own, valid point or not
            (None for one that does not): the preflight checks their folders and files in the same pass.
    """

    specs: list[RunSpec]
    problems: list[tuple[str, str, str]]
    inputs: list[tuple[Any, Any]]


def expand(experiment: Experiment, overrides: list[str] | None = None, *, max_runs: int = MAX_RUNS) -> list[RunSpec]:
    """Expand an experiment into validated RunSpecs, in a stable order, without duplicates.

    Args:
        max_runs: refuse a grid of more points than this (counted before the points are built).

    Raises:
        ConfigError: every problem of the file and of every grid point, all at once, in file order.
    """
    expansion = expand_all(experiment, overrides, max_runs=max_runs)
    if expansion.problems:
        raise ConfigError(in_file_order(expansion.problems, experiment.lines, experiment.file))
    return expansion.specs


def expand_all(experiment: Experiment, overrides: list[str] | None = None, *, max_runs: int = MAX_RUNS) -> Expansion:
    """`expand` without raising: each part is checked even when another failed (a bad axis is left out,
    the other axes and the base still expanded and validated).

    Raises:
        ConfigError: only the grid's size past `max_runs` (nothing else can be checked without building it),
            with the problems found before it.
    """
    file = experiment.file
    problems: list[tuple[str, str, str]] = list(experiment.problems)
    base = copy.deepcopy(experiment.base)
    for key in (REPEATS_KEY, "repeat"):
        if key in base:
            base.pop(key)
            problems.append((file, f"base.{key}", f"belongs in `grid:` as `{REPEATS_KEY}: N` (e.g. "
                             f"`grid: {{{REPEATS_KEY}: 2}}`): it multiplies the grid's points, one run per repeat"))
    axes, found = read_axes(experiment.grid, file=file, max_runs=max_runs)  # a bad axis is left out, the rest kept
    problems.extend(found)
    base = {k: normalize(k, v) for k, v in base.items()}
    parsed, found = read_overrides(overrides or [])
    problems.extend(found)
    for key, value in parsed:
        axis_labels = {a.label: i for i, a in enumerate(axes)}
        if key == REPEATS_KEY:
            try:
                axes = [a for a in axes if a.label != REPEATS_KEY] + [repeats_axis(value, file="SET", field=key,
                                                                                    limit=max_runs)]
            except ConfigError as exc:
                problems.extend(exc.problems)
        elif key in axis_labels:
            ax = axes[axis_labels[key]]
            vals = value if isinstance(value, list) else [value]
            if not vals:
                problems.append(("SET", key, f"empty axis: give at least one value (`{key}` is an axis of the grid)"))
                continue
            axes[axis_labels[key]] = Axis(label=key, values=[[(key, v)] for v in vals], when=ax.when)
        else:
            axes = [_drop_key(a, key) for a in axes]
            set_dotted(base, key, value)
    points_upper = math.prod(len(a.values) for a in axes)  # before any point is built: a bound, `when` aside
    if points_upper > max_runs:
        sizes = " × ".join(f"{len(a.values)} ({a.label})" for a in axes if len(a.values) > 1)
        bound = "up to " if any(a.when for a in axes) else ""  # conditional axes may skip some of the product
        problems.append((file, "grid", f"expands to {bound}{points_upper:,} runs ({sizes}), more than the {max_runs:,} "
                         f"allowed; pass `--max-runs {points_upper}` if you mean it, or use fewer values"))
        raise ConfigError(in_file_order(problems, experiment.lines, file))
    # repeats vary slowest: the whole grid once, then again (a repeat is timed apart from its twin)
    axes = sorted(axes, key=lambda a: a.label != REPEATS_KEY)
    points: list[tuple[dict, list[tuple[str, Any]]]] = []
    seen = set()
    for combo in itertools.product(*[a.values for a in axes]):
        raw = copy.deepcopy(base)
        applied: list[tuple[str, Any]] = []
        # conditional axes last, so a `when` sees the values the other axes give this point
        for axis, assignments in sorted(zip(axes, combo), key=lambda pair: pair[0].when is not None):
            if axis.when and not all(_in(get_dotted(raw, k), v) for k, v in axis.when.items()):
                continue
            for key, value in assignments:
                set_dotted(raw, key, value)
                applied.append((key, value))
        marker = _marker(applied)
        if marker not in seen:
            seen.add(marker)
            points.append((raw, applied))
    specs: list[RunSpec] = []
    inputs: list[tuple[Any, Any]] = []
    ids: set[str] = set()
    for raw, applied in points:
        where = "" if not applied else "[" + ", ".join(f"{k}={v}" for k, v in applied) + "] "
        try:
            config = build_run_config(raw, file=file, where=where)
        except ConfigError as exc:
            problems.extend(p for p in exc.problems if p not in problems)
            inputs.append(input_sections(raw))
            continue
        inputs.append((config.model, config.data))
        varied = dict(applied)
        if "repeat" in varied:  # the repeats axis runs first but reads last
            varied["repeat"] = varied.pop("repeat")
        for spec in continual_stages(make_spec(experiment.name, config, varied)):
            if spec.run_id not in ids:
                ids.add(spec.run_id)
                specs.append(spec)
    return Expansion(specs=specs, problems=problems, inputs=inputs)


def _marker(applied: list[tuple[str, Any]]) -> str:
    """A grid point's assignments as text, to drop duplicate points (keys of mixed types: their repr)."""
    try:
        return json.dumps(applied, sort_keys=True, default=str)
    except (TypeError, ValueError):  # {1: a, "b": c} cannot be sorted; a structure too deep
        return repr(applied)


def _in(value: Any, allowed_values: list) -> bool:
    """`value in allowed_values`, False for a value that cannot be compared (a list read from YAML)."""
    try:
        return value in allowed_values
    except TypeError:
        return False


def continual_stages(spec: RunSpec) -> list[RunSpec]:
    """A run whose objective has stages (continual learning) as one run per stage, each named by the
    objective (`<slug>-stage<k>`); any other run as is."""
    stages = spec.config.objective.build().stages(spec.config, spec.slug)
    if stages is None:
        return [spec]
    return [RunSpec(spec.experiment, f"{slug}-{spec_hash(config)}", slug, config, spec.varied) for slug, config in stages]


def _drop_key(axis: Axis, key: str) -> Axis:
    """An override of a key fixed inside a paired axis wins over the axis."""
    values = [[(k, v) for k, v in vals if _canonical(k) != _canonical(key)] for vals in axis.values]
    return Axis(label=axis.label, values=values, when=axis.when)


def spec_hash(config: RunConfig, reads: dict[str, str] | None = None) -> str:
    """Stable short hash of everything that affects a run's result (tracking excluded), with the run
    ids of the grid's runs it reads (`reads`): from another teacher or start, another run."""
    from harness.data import DATASETS

    payload = {k: v for k, v in config.as_dict().items() if k != "tracking"}
    if reads:
        payload["reads"] = dict(sorted(reads.items()))
    if config.data.name in DATASETS:
        payload["data_version"] = DATASETS.get(config.data.name).version
    # the other sources a run trains on or scores: only those past version 1 (the runs stored before
    # this was hashed keep their ids)
    sources = [*config.eval.sources, *config.objective.sources()]
    newer = {s: DATASETS.get(s).version for s in sorted(set(sources)) if s in DATASETS and DATASETS.get(s).version > 1}
    if newer:
        payload["source_versions"] = newer
    if config.eval.tasks:  # a new version of a built-in task is a new run
        from harness.tasks.base import versions

        payload["task_versions"] = versions(config.eval.tasks)
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:8]


_COVERED = {"method", "method.name", "method.r", "method.alpha", "data.n_train", "seed", "seeds", "objective",
            "repeat"}


def make_slug(config: RunConfig, varied: dict[str, Any]) -> str:
    """A readable name such as `lora-r8-a16-n256-s0`; a repeat past the first ends in `-rep<k>`
    (`lora-r8-a16-n256-s0-rep1`), so repeat 0 keeps the slug a run without repeats has."""
    parts = [config.method.build().slug()]
    objective = config.objective.build()
    prefix = objective.slug_prefix()
    if prefix:
        parts.insert(0, prefix)
    covered = _COVERED | {f"objective.{option}" for option in ("name", *objective.slug_options)}
    if config.data.n_train:
        parts.append(f"n{config.data.n_train}")
    for key, value in varied.items():
        if key in covered:
            continue
        last = key.split(".")[-1]
        if isinstance(value, bool):
            parts.append(last if value else f"no_{last}")
        else:
            text = str(value).rstrip("/").split("/")[-1]
            parts.append(f"{last}{text}")
    parts.append(f"s{config.seed}")
    if config.repeat:
        parts.append(f"rep{config.repeat}")
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", "-".join(parts))


def make_spec(experiment: str, config: RunConfig, varied: dict[str, Any]) -> RunSpec:
    slug = make_slug(config, varied)
    return RunSpec(experiment=experiment, run_id=f"{slug}-{spec_hash(config)}", slug=slug, config=config, varied=varied)


BUDGET_KEYS = ("train.micro_batch", "train.grad_accum", "train.max_steps", "train.epochs", "train.seq_len",
               "data.n_train", "data.split_seed", "train.kernels", "train.compile", "train.world_size")


def budget_confounds(specs: list[RunSpec]) -> list[str]:
    """Budget keys (batch, steps, tokens, data) whose values differ between methods of one objective.

    A crossed design (every method at every n_train) is fine; a budget that moves *with* the
    method makes the comparison unfair, so the sweep warns about it. Runs of different objectives
    (an SFT stage and the DPO runs that start from it) are not compared with each other.
    """
    groups: dict[str, dict[str, dict[str, set]]] = {}
    for spec in specs:
        per_method = groups.setdefault(spec.config.objective.build().name, {})
        values = per_method.setdefault(spec.config.method.name, {})
        for key in BUDGET_KEYS:
            section, field_name = key.split(".")
            # options that came later are left out of the spec at their defaults
            values.setdefault(key, set()).add(json.dumps(getattr(getattr(spec.config, section), field_name)))
    found = set()
    for per_method in groups.values():
        methods = list(per_method.values())
        found |= {key for key in BUDGET_KEYS if any(m[key] != methods[0][key] for m in methods[1:])}
    return [key for key in BUDGET_KEYS if key in found]


def reference_config(config: RunConfig) -> RunConfig:
    """The untouched-base twin of a run: same model, data (whole pool), eval and tracking;
    method `none`, default training (it does not train), seed 0, repeat 0 (one base row for every repeat)."""
    from harness.config import TrainCfg
    from harness.methods.base import MethodCfg
    from harness.objectives import default_options

    none = MethodCfg(name="none", options=METHODS.get("none").Options())
    data = {"n_train": None}
    if config.eval.sources:  # one base row for all the runs scored on the same sources, whatever they train on
        data["name"] = config.eval.sources[0]
    if config.method.name == "none":  # prompt design (a system prompt, no training) is compared with the bare base
        data["system_prompt"] = None
    return config.model_copy(update={"method": none, "seed": 0, "repeat": 0, "train": TrainCfg(),
                                     "objective": default_options(), "data": config.data.model_copy(update=data)})


def run_in_grid(spec: RunSpec, specs: list[RunSpec], ref: str, field: str, file: str = "") -> RunSpec | None:
    """The run of `specs` that `ref` (`run:<slug or run id>`) names, if any.

    Raises:
        ConfigError: the name matches several runs of the grid.
    """
    from harness.objectives import RUN_REF

    name = ref[len(RUN_REF):]
    found = [s for s in specs if name in (s.run_id, s.slug)]
    if len(found) > 1:
        raise ConfigError.one(file, f"[{spec.slug}] objective.{field}",
                              f"`{name}` names {len(found)} runs of the grid; use one's run id: "
                              + ", ".join(s.run_id for s in found))
    return found[0] if found else None


def with_reads(specs: list[RunSpec], file: str = "") -> list[RunSpec]:
    """Pin every `run:<slug>` that names a run of this grid to that run's id (`RunSpec.reads`), and
    fold those ids into the reading run's id: a stage reads the run this sweep made, not an older
    run of the store under the same slug, and a run that read another predecessor is another run
    (never skipped as done). Ids settle in dependency order (a stage's id holds its predecessor's).

    Raises:
        ConfigError: a name that matches several runs of the grid, or runs that read each other in a cycle.
    """
    settled: dict[str, RunSpec] = {}

    def settle(spec: RunSpec, chain: tuple[str, ...] = ()) -> RunSpec:
        if spec.run_id in chain:
            raise ConfigError.one(file, "objective", "the grid's runs read each other in a cycle: "
                                  + " → ".join((*chain, spec.run_id)))
        if spec.run_id not in settled:
            reads = {ref: settle(found, (*chain, spec.run_id)).run_id
                     for field, ref in spec.config.objective.run_refs()
                     if (found := run_in_grid(spec, specs, ref, field, file)) is not None}
            settled[spec.run_id] = spec if not reads else replace(
                spec, run_id=f"{spec.slug}-{spec_hash(spec.config, reads)}", reads=reads)
        return settled[spec.run_id]

    return [settle(spec) for spec in specs]


def needs_in_grid(spec: RunSpec, specs: list[RunSpec], file: str = "") -> list[RunSpec]:
    """The runs of `specs` that `spec` reads (teachers, the run it starts from): they run first."""
    found = (run_in_grid(spec, specs, ref, field, file) for field, ref in spec.config.objective.run_refs())
    return [s for s in found if s is not None]


def phases(specs: list[RunSpec], *, file: str = "") -> list[list[RunSpec]]:
    """The order a sweep runs in: the reference rows first (runs read their scores), then each run
    after the runs of the grid it reads (stages: teacher → student → smaller student; SFT → DPO).

    Raises:
        ConfigError: runs that read each other in a cycle.
    """
    depth: dict[str, int] = {}

    def level(spec: RunSpec, chain: tuple[str, ...] = ()) -> int:
        if spec.run_id in chain:
            raise ConfigError.one(file, "objective", "the grid's runs read each other in a cycle: "
                                  + " → ".join(s for s in (*chain, spec.run_id)))
        if spec.run_id not in depth:
            needs = needs_in_grid(spec, specs, file)
            depth[spec.run_id] = max((level(n, (*chain, spec.run_id)) + 1 for n in needs), default=0)
        return depth[spec.run_id]

    # an untouched-base row; not a `none` run that reads other runs (a router over their adapters)
    references = [s for s in specs if s.config.method.name == "none" and s.reference is None
                  and not s.config.objective.run_refs()]
    rest = [s for s in specs if s not in references]
    levels = [level(s) for s in rest]
    staged = [[s for s, d in zip(rest, levels) if d == n] for n in range(max(levels, default=-1) + 1)]
    return [phase for phase in [references, *staged] if phase]


def with_references(specs: list[RunSpec]) -> list[RunSpec]:
    """Put the reference rows first: one `method: none` run per distinct (model, data, eval) of
    the runs that score tasks, each run pointing at its own."""
    refs: dict[str, RunSpec] = {}
    out = []
    for spec in specs:
        if not spec.config.eval.tasks and not spec.config.eval.sources:
            out.append(spec)
            continue
        ref_config = reference_config(spec.config)
        ref_id = f"base-{spec_hash(ref_config)}"
        if ref_id not in refs:
            model = spec.config.model
            # a 4-bit base is its own reference: it separates quantization loss from forgetting
            name = f"base-{model.name.rstrip('/').split('/')[-1]}" + ("-4bit" if model.load_in_4bit else "")
            slug = re.sub(r"[^A-Za-z0-9._+-]+", "_", name)
            refs[ref_id] = RunSpec(experiment=spec.experiment, run_id=f"{slug}-{ref_id.split('-')[1]}", slug=slug,
                                   config=ref_config)
        ref = refs[ref_id]
        out.append(spec if spec.run_id == ref.run_id else
                   RunSpec(spec.experiment, spec.run_id, spec.slug, spec.config, spec.varied, reference=ref.run_id))
    ref_ids = {r.run_id for r in refs.values()}
    return list(refs.values()) + [s for s in out if s.run_id not in ref_ids]
