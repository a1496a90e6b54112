"""Experiment files: YAML loading (safe_load) and the validated sections of a run spec."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, field_validator, model_validator

from harness.errors import ConfigError, allowed, did_you_mean
from harness.methods import METHODS
from harness.methods.base import MethodCfg
from harness.objectives import DEFAULT, OBJECTIVES, ObjectiveOptions, default_options
from harness.registry import UnknownName
from harness.schema import RUN_KEYS, Section, validate_section


class ModelCfg(Section):
    name: str = Field("smollm2-135m", description="built-in alias, local folder or HF hub id")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # auto: bf16 on GPU, fp32 on CPU
    load_in_4bit: bool = False
    quant_type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = True
    trust_remote_code: bool = False
    revision: str | None = None


class DataCfg(Section):
    name: str = Field("chatterbot", description="registered dataset: chatterbot, file, hf")
    path: str | None = None  # file path (file) or dataset id (hf)
    split: str = "train"  # hf: which split to read
    prompt_field: str = "prompt"
    response_field: str = "response"
    n_train: int | None = Field(None, gt=0, description="training examples; None: the whole train pool")
    n_val: int = Field(64, gt=0)
    n_test: int = Field(64, ge=0)
    split_seed: int = 0  # fixed per experiment so validation tokens are identical across runs
    template: Literal["auto", "chat", "plain"] = "auto"
    system_prompt: str | None = None


class TrainCfg(Section):
    max_steps: int | None = Field(40, gt=0)
    epochs: float | None = Field(None, gt=0)
    lr: float = Field(2e-4, gt=0)
    scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup", "cosine_with_restarts", "polynomial"] = "linear"
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    micro_batch: int = Field(4, gt=0)
    grad_accum: int = Field(1, gt=0)
    seq_len: int = Field(256, ge=16)
    packing: bool = True  # padding-free: a micro-batch is one row, attention kept per example
    gradient_checkpointing: bool = False
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    optimizer: str = "adamw_torch"
    log_every: int = Field(1, gt=0)
    save_weights: Literal["adapter", "all", "none"] = "adapter"  # adapter: keep PEFT adapters, not full copies

    @model_validator(mode="after")
    def _steps_or_epochs(self):
        if self.epochs is not None and self.max_steps is not None and "max_steps" in self.model_fields_set:
            raise ValueError("set either `max_steps` or `epochs`, not both")
        if self.epochs is not None and "max_steps" not in self.model_fields_set:
            object.__setattr__(self, "max_steps", None)
        return self


class EvalCfg(Section):
    every_steps: int | None = Field(None, gt=0, description="periodic validation loss; None: only at the end")
    batch_size: int = Field(8, gt=0)
    tasks: list[str] = Field([], description="lm-eval task names or built-in tasks (chatterbot_mc, polarity, "
                                             "aclsum_sum, general_ppl), scored after training")
    limit: int | float | None = Field(None, gt=0, description="documents per task (a fraction if < 1); None: all")
    num_fewshot: int | None = Field(None, ge=0, description="None: each task's own default")
    sources: list[str] = Field([], description="data sources whose validation splits are also scored: "
                                               "task_eval.<source>.eval_loss (a transfer matrix's columns)")
    in_domain_tasks: bool = Field(False, description="add to `tasks` the built-in lm-eval task of each source the "
                                                     "run trains on (its `eval_task`: polarity for sentiment, …)")
    speed_warmup_steps: int = Field(1, ge=0, description="optimizer steps left out of train_tokens_per_s and the "
                                                          "step times (the first steps warm caches and allocators)")
    latency: bool = True
    latency_prompts: int = Field(4, gt=0)
    latency_new_tokens: int = Field(16, ge=2)
    latency_repeats: int = Field(5, gt=0, description="timed generates per latency prompt, after one warm-up")

    @field_validator("tasks", "sources")
    @classmethod
    def _distinct_names(cls, names, info):
        if any(not t.strip() for t in names) or len(set(names)) != len(names):
            raise ValueError(f"`{info.field_name}` must be distinct, non-empty names, but got {names}")
        return names


#: eval options added after runs were stored, with the default that leaves a run id as it was
_LATER_EVAL = {"sources": [], "in_domain_tasks": False, "speed_warmup_steps": 1, "latency_repeats": 5}


class TrackingCfg(Section):
    backend: Literal["wandb", "none"] = "wandb"
    project: str = "ftbench"
    entity: str | None = None
    tags: list[str] = []


SECTIONS: dict[str, type[Section]] = {
    "model": ModelCfg,
    "data": DataCfg,
    "train": TrainCfg,
    "eval": EvalCfg,
    "tracking": TrackingCfg,
}
if RUN_KEYS != [*SECTIONS, "objective", "method", "seed", "repeat"]:  # schema's list is what the store reads
    raise RuntimeError(f"harness.schema.RUN_KEYS {RUN_KEYS} does not match the config sections {list(SECTIONS)}")


class RunConfig(BaseModel):
    """One fully resolved run: what the child process executes."""

    model_config = ConfigDict(frozen=True)
    model: ModelCfg
    data: DataCfg
    method: MethodCfg
    train: TrainCfg
    eval: EvalCfg
    tracking: TrackingCfg
    objective: SerializeAsAny[ObjectiveOptions] = Field(default_factory=default_options)
    seed: int = 0
    #: which run of the same spec and seed this is (grid `repeats: N` gives 0..N-1): the noise floor
    repeat: int = 0

    def as_dict(self) -> dict:
        out = {
            "model": self.model.model_dump(),
            "data": self.data.model_dump(),
            "method": self.method.as_dict(),
            "train": self.train.model_dump(),
            # options that came later are left out at their defaults, so earlier runs keep their ids
            "eval": self.eval.model_dump(exclude={k for k, default in _LATER_EVAL.items()
                                                  if getattr(self.eval, k) == default}),
            "tracking": self.tracking.model_dump(),
            "seed": self.seed,
        }
        if not self.objective.is_default:  # sft runs keep the spec (and run id) they had before objectives
            out["objective"] = self.objective.as_dict()
        if self.repeat:  # repeat 0 is the run as it always was: same spec, same run id
            out["repeat"] = self.repeat
        return out


def normalize(section: str, value: Any) -> Any:
    """Expand shorthands: `model: NAME`, `method: NAME`, `method: [A, B]` (a stack), `data: NAME`,
    `tracking: none`."""
    if section == "method" and isinstance(value, list):
        return {"name": "stack", "methods": value}
    if isinstance(value, str):
        if section in ("model", "method", "data", "objective"):
            return {"name": value}
        if section == "tracking":
            return {"backend": value}
    return value


def build_run_config(raw: dict, *, file: str, where: str = "") -> RunConfig:
    """Validate a raw run dict (sections as plain dicts) into a RunConfig.

    Args:
        raw: mapping with keys among model, data, method, train, eval, tracking, objective, seed, repeat.
        file: the experiment file, for messages.
        where: a prefix naming the grid point, for messages.

    Raises:
        ConfigError: every problem found, each naming its dotted field.
    """
    problems: list[tuple[str, str, str]] = []
    for key in raw:
        if key not in RUN_KEYS:
            problems.append((file, f"{where}{key}", f"unknown key `{key}`.{did_you_mean(key, RUN_KEYS)} {allowed(RUN_KEYS)}"))
    sections: dict[str, Any] = {}
    for name, cls in SECTIONS.items():
        data = normalize(name, raw.get(name) or {})
        if not isinstance(data, dict):
            problems.append((file, f"{where}{name}", f"must be a mapping, but got {data!r}"))
            continue
        try:
            sections[name] = validate_section(cls, data, file=file, prefix=f"{where}{name}")
        except ConfigError as exc:
            problems.extend(exc.problems)
    try:
        sections["objective"] = _build_objective(normalize("objective", raw.get("objective") or {}), file=file,
                                                 field=f"{where}objective")
    except ConfigError as exc:
        problems.extend(exc.problems)
    method = None
    try:
        method = _build_method(normalize("method", raw.get("method") or {"name": "lora"}), file=file,
                               field=f"{where}method")
    except ConfigError as exc:
        problems.extend(exc.problems)
    seed = raw.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        problems.append((file, f"{where}seed", f"must be a non-negative integer, but got {seed!r}"))
    repeat = raw.get("repeat", 0)
    if not isinstance(repeat, int) or isinstance(repeat, bool) or repeat < 0:
        problems.append((file, f"{where}repeat", f"must be a non-negative integer, but got {repeat!r}"))
    if problems:
        raise ConfigError(problems)
    if sections["eval"].in_domain_tasks:
        sections["eval"] = _with_in_domain_tasks(sections["eval"], sections["data"], sections["objective"])
    model, train = sections["model"], sections["train"]
    built = method.build()  # a stack's flags come from its components
    if not built.supports_packing and train.packing:
        # virtual tokens are prepended per sequence: a packed row would share one prompt
        sections["train"] = train.model_copy(update={"packing": False})
    if built.requires_4bit and not model.load_in_4bit:
        model = model.model_copy(update={"load_in_4bit": True})
    if built.forbids_4bit and model.load_in_4bit:
        raise ConfigError.one(
            file, f"{where}model.load_in_4bit",
            f"method `{method.name}` trains the base weights, which cannot be 4-bit; use qlora or set it false",
        )
    return RunConfig(model=model, method=method, seed=seed, repeat=repeat, **{k: v for k, v in sections.items() if k != "model"})


def _with_in_domain_tasks(eval_cfg: EvalCfg, data: DataCfg, objective: ObjectiveOptions) -> EvalCfg:
    """`eval.tasks` plus the `eval_task` of every source the run trains on (written out in the spec)."""
    from harness.data import DATASETS

    trained = objective.sources() or [data.name]
    extra = [DATASETS.get(name).eval_task for name in trained if name in DATASETS]
    tasks = list(dict.fromkeys([*eval_cfg.tasks, *(t for t in extra if t)]))
    return eval_cfg.model_copy(update={"tasks": tasks})


def _build_objective(data: Any, *, file: str, field: str) -> ObjectiveOptions:
    """Validate the `objective:` section with the named objective's own options model."""
    if not isinstance(data, dict):
        raise ConfigError.one(file, field, f"must be an objective name or a mapping with `name`, but got {data!r}")
    name = data.get("name", DEFAULT)
    try:
        cls = OBJECTIVES.get(name)
    except UnknownName as exc:
        raise ConfigError.one(file, f"{field}.name", str(exc)) from None
    names = [n for n in cls.Options.model_fields if n != "name"]
    for key in data:
        if key not in cls.Options.model_fields:
            users = [n for n in OBJECTIVES.names() if key in OBJECTIVES.get(n).Options.model_fields]
            if users:
                raise ConfigError.one(file, f"{field}.{key}", f"option `{key}` applies to objective "
                                      f"{' or '.join(f'`{u}`' for u in users)}, not `{name}`")
            raise ConfigError.one(
                file, f"{field}.{key}",
                f"option `{key}` does not belong to objective `{name}`.{did_you_mean(key, names)} "
                + (allowed(names) if names else f"Objective `{name}` takes no options."))
    return validate_section(cls.Options, data, file=file, prefix=field)


def _build_method(data: Any, *, file: str, field: str) -> MethodCfg:
    if not isinstance(data, dict):
        raise ConfigError.one(file, field, f"must be a method name or a mapping with `name`, but got {data!r}")
    data = dict(data)
    name = data.pop("name", "lora")
    try:
        cls = METHODS.get(name)
    except UnknownName as exc:
        raise ConfigError.one(file, f"{field}.name", str(exc)) from None
    open_options = cls.Options.model_config.get("extra") == "allow"  # e.g. `peft`: checked by the class itself
    for key in data:
        if key not in cls.Options.model_fields and not open_options:
            names = list(cls.Options.model_fields)
            raise ConfigError.one(
                file, f"{field}.{key}",
                f"option `{key}` does not belong to method `{name}`.{did_you_mean(key, names)} "
                + (allowed(names) if names else f"Method `{name}` takes no options."),
            )
    if name == "stack":
        return _build_stack(data, file=file, field=field)
    options = validate_section(cls.Options, data, file=file, prefix=field)
    return MethodCfg(name=name, options=options)


def _build_stack(data: dict, *, file: str, field: str) -> MethodCfg:
    """Validate each method of a stack, then whether they can share one model."""
    from harness.methods.stack import StackOptions, stack_problems

    items = data.get("methods")
    if not isinstance(items, list):
        raise ConfigError.one(file, f"{field}.methods", f"must be a list of methods, but got {items!r}")
    problems, components = [], []
    for i, item in enumerate(items):
        item = normalize("method", item)
        if isinstance(item, dict) and item.get("name") == "stack":
            problems.append((file, f"{field}.methods[{i}]", "stacks do not nest; list every method in one stack"))
            continue
        try:
            components.append(_build_method(item, file=file, field=f"{field}.methods[{i}]"))
        except ConfigError as exc:
            problems.extend(exc.problems)
    if not problems:
        problems = [(file, f"{field}.methods{where}", reason) for where, reason in stack_problems(components)]
    if problems:
        raise ConfigError(problems)
    return MethodCfg(name="stack", options=StackOptions(methods=tuple(components)))


# --- experiment files -------------------------------------------------------------------------

EXPERIMENT_KEYS = ["name", "description", "plugins", "resources", "artifacts_uri", "base", "grid"]


class Resources(Section):
    """What each run asks a Ray cluster for (`--executor ray`); the local executor ignores it."""

    gpus: float | None = Field(None, ge=0, description="GPUs per run (0.5 packs two runs on a GPU); "
                               "default 1 on a cluster with GPUs, else 0")
    cpus: float = Field(1, gt=0, description="CPUs per run (also its torch threads on a CPU-only run)")


class Experiment(BaseModel):
    """An experiment file: a base run plus grid axes (expanded by `harness.grid`)."""

    model_config = ConfigDict(frozen=True)
    name: str
    file: str
    description: str = ""
    plugins: list[str] = []
    resources: Resources = Resources()
    #: where the Ray executor puts artifacts (adapters) instead of sending them back (fsspec URI)
    artifacts_uri: str | None = None
    base: dict
    grid: dict


def load_yaml(path: Path) -> Any:
    """Read YAML with safe_load; a missing file or a syntax error becomes a ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError.one(str(path), "", "file not found")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError.one(str(path), "", f"malformed YAML: {line}{problem}") from None


def load_experiment(path: str | Path) -> Experiment:
    """Load an experiment file and check its top-level shape (sections are checked per grid point).

    Raises:
        ConfigError: missing file, malformed YAML, unknown top-level keys.
    """
    path = Path(path)
    doc = load_yaml(path)
    file = str(path)
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise ConfigError.one(file, "", f"must be a mapping with keys {', '.join(EXPERIMENT_KEYS)}")
    problems = [
        (file, key, f"unknown top-level key `{key}`.{did_you_mean(key, EXPERIMENT_KEYS)} {allowed(EXPERIMENT_KEYS)}")
        for key in doc if key not in EXPERIMENT_KEYS
    ]
    for key, kind in (("base", dict), ("grid", dict), ("plugins", list), ("resources", dict)):
        if doc.get(key) is not None and not isinstance(doc[key], kind):
            problems.append((file, key, f"must be a {'mapping' if kind is dict else 'list'}, but got {doc[key]!r}"))
    if doc.get("artifacts_uri") is not None and not isinstance(doc["artifacts_uri"], str):
        problems.append((file, "artifacts_uri", f"must be a path or URI string, but got {doc['artifacts_uri']!r}"))
    if problems:
        raise ConfigError(problems)
    resources = validate_section(Resources, doc.get("resources") or {}, file=file, prefix="resources")
    return Experiment(
        name=str(doc.get("name") or path.stem),
        file=file,
        description=str(doc.get("description") or ""),
        plugins=[str(p) for p in doc.get("plugins") or []],
        resources=resources,
        artifacts_uri=doc.get("artifacts_uri"),
        base=copy.deepcopy(doc.get("base") or {}),
        grid=copy.deepcopy(doc.get("grid") or {}),
    )
