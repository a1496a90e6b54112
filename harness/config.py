"""Experiment files: YAML loading (bounded: harness.inputs) and the validated sections of a run spec."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, field_validator, model_validator

from harness.errors import ConfigError, allowed, did_you_mean, shown
from harness.inputs import NAME_RULE, name_problem, read_yaml
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
    keywords: ClassVar[dict[str, tuple[str, ...]]] = {"micro_batch": ("auto",)}

    max_steps: int | None = Field(40, gt=0)
    epochs: float | None = Field(None, gt=0)
    lr: float = Field(2e-4, gt=0)
    scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup", "cosine_with_restarts", "polynomial"] = "linear"
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    micro_batch: int = Field(
        4, gt=0, description="examples per forward pass; auto: the largest divisor of `effective_batch` whose "
        "estimated peak fits the memory budget, `grad_accum` making up the rest (chosen before any run starts)")
    grad_accum: int = Field(1, gt=0)
    effective_batch: int | None = Field(
        None, gt=0, description="with `micro_batch: auto`: examples per optimizer step (micro_batch × grad_accum)")
    #: set by `micro_batch: auto`: micro_batch/grad_accum then hold the choice, the run spec keeps `auto`
    auto_batch: bool = Field(False, exclude=True)
    seq_len: int = Field(256, ge=16)
    packing: bool = True  # padding-free: a micro-batch is one row, attention kept per example
    gradient_checkpointing: bool = False
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    optimizer: str = "adamw_torch"
    log_every: int = Field(1, gt=0)
    save_weights: Literal["adapter", "all", "none"] = "adapter"  # adapter: keep PEFT adapters, not full copies
    # GPU speed options (docs/performance.md#on-a-gpu): each changes the numerics slightly (`kernels` the
    # most), so a report lists them beside the budget keys
    kernels: Literal["none", "liger", "cpu"] = Field(
        "none", description="liger: Liger's Triton kernels (fused linear cross-entropy, RMSNorm, SwiGLU, RoPE) "
        "patched into the model before the method; CUDA only (pip install liger-kernel). Where ftbench "
        "computes the SFT loss, the logits are never materialised (less memory); the loss is accumulated in "
        "fp32 chunks, so losses are close to, not bitwise equal to, those of `none`. cpu: ftbench's CPU "
        "kernels after the method (harness/cpu_kernels.py): dropout masks from a counter-based generator in one "
        "pass (the same Bernoulli(p), another random stream), LoRA's up-projection, scaling and add as one "
        "addmm, and RMSNorm in one pass per row; not bit-identical to `none`")
    attn_implementation: Literal["auto", "sdpa_varlen", "sdpa", "eager", "flash_attention_2"] = Field(
        "auto", description="auto: flash_attention_2 on CUDA in bf16/fp16 when the `flash_attn` package is "
        "installed, else sdpa_varlen; both run each example of a packed row on its own (padding-free varlen "
        "attention). sdpa_varlen: torch's sdpa once per example of a packed row (harness/attention.py); "
        "sdpa: transformers' sdpa, a block-diagonal mask over the whole row (cost and memory grow with the "
        "row's square); the one used is recorded as `env.attn_implementation`")
    compile: bool = Field(
        False, description="torch.compile the model (TrainingArguments.torch_compile): pays on long runs "
        "of a GPU once the first steps have compiled (tens of seconds; each new packed length may recompile "
        "at first); fused kernels change the last bits of the loss")
    # runs bigger than one process (harness.distributed, docs/scale-out.md#runs-bigger-than-one-gpu)
    distributed: Literal["none", "ddp", "fsdp"] = Field(
        "none", description="ddp: data-parallel over `world_size` processes (one GPU each; gloo on CPU); fsdp: "
        "fully sharded (full shard, peft's FSDP + LoRA options; CUDA only). Launched through torchrun; the "
        "effective batch is micro_batch × grad_accum × world_size")
    world_size: int = Field(1, ge=1, description="processes (ranks) per run with `distributed`: N GPUs handed "
                            "to the run at once, never split with another run; on CPU N processes")
    # divergence beyond NaN/inf (harness.train.DivergenceRule): the run stops and is recorded `diverged`
    diverge_factor: float | None = Field(
        10.0, gt=1, description="diverged when the training loss rises above this many times its first logged "
        "value and above ln(vocab), the loss of guessing uniformly; null: off")
    collapse_steps: int | None = Field(
        3, gt=0, description="diverged when this many logged steps in a row sit at the uniform loss ln(vocab) "
        "(within 0.05) with a gradient norm below 1e-6: the model collapsed to uniform output; null: off")

    @model_validator(mode="before")
    @classmethod
    def _auto_micro_batch(cls, data):
        """`micro_batch: auto` starts from the whole effective batch in one micro-batch (the plan lowers it
        to what fits); `effective_batch` means nothing without it."""
        if not isinstance(data, dict):
            return data
        if "auto_batch" in data:
            raise ValueError("`auto_batch` is not an option: write `micro_batch: auto` with `effective_batch`")
        if data.get("micro_batch") == "auto":
            effective = data.get("effective_batch")
            if effective is None:
                raise ValueError("`micro_batch: auto` needs `effective_batch` (examples per optimizer step), "
                                 "e.g. effective_batch: 16")
            if data.get("grad_accum", 1) != 1:
                raise ValueError("with `micro_batch: auto`, `grad_accum` is chosen with it: set `effective_batch` "
                                 "only")
            return {**data, "micro_batch": effective, "grad_accum": 1, "auto_batch": True}
        if data.get("effective_batch") is not None:
            raise ValueError("`effective_batch` is read only with `micro_batch: auto`; otherwise the effective "
                             "batch is micro_batch × grad_accum")
        return data

    def with_batch(self, micro_batch: int) -> "TrainCfg":
        """This section with `micro_batch` examples per pass and `grad_accum` making up the same effective
        batch (what `micro_batch: auto` chose)."""
        effective = self.micro_batch * self.grad_accum
        return self.model_copy(update={"micro_batch": micro_batch, "grad_accum": effective // micro_batch})

    def spec_dict(self, later: dict) -> dict:
        """The run-spec form: later options at their default left out; `micro_batch: auto` as written."""
        out = _dump_later(self, later)
        if self.auto_batch:
            out.pop("grad_accum", None)
            out.update(micro_batch="auto", effective_batch=self.micro_batch * self.grad_accum)
        return out

    @model_validator(mode="after")
    def _ranks_need_distributed(self):
        if self.world_size > 1 and self.distributed == "none":
            raise ValueError(f"`world_size: {self.world_size}` needs `distributed: ddp` or `distributed: fsdp`")
        return self

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


#: options added after runs were stored, with the default that leaves a run id as it was: at that
#: default they are left out of the run spec (and so of the id's hash)
_LATER_TRAIN = {"kernels": "none", "attn_implementation": "auto", "compile": False, "diverge_factor": 10.0,
                "collapse_steps": 3, "effective_batch": None, "distributed": "none", "world_size": 1}
_LATER_EVAL = {"sources": [], "in_domain_tasks": False, "speed_warmup_steps": 1, "latency_repeats": 5}


def _dump_later(section: Section, later: dict) -> dict:
    """`section.model_dump()` without the later options that are at their default."""
    return section.model_dump(exclude={k for k, default in later.items() if getattr(section, k) == default})


class TrackingCfg(Section):
    backend: str | list[str] = Field("wandb", description="a tracker (`wandb`, `mlflow`, `none`) or a list of them")
    project: str = "ftbench"
    entity: str | None = None
    tags: list[str] = []
    uri: str | None = Field(None, description="mlflow: the tracking server or store (default $MLFLOW_TRACKING_URI, "
                                              "else results/<exp>/.mlflow/mlflow.db); never with credentials")

    @field_validator("backend")
    @classmethod
    def _known_backends(cls, value):
        from harness.tracking import TRACKERS

        names = value if isinstance(value, list) else [value]
        for name in names:
            if name not in TRACKERS:
                raise ValueError(f"unknown tracker `{name}`.{did_you_mean(name, TRACKERS.names())} "
                                 f"{allowed(TRACKERS.names())}")
        if not names or len(set(names)) != len(names) or (len(names) > 1 and "none" in names):
            raise ValueError(f"`backend` must be one tracker or a list of distinct trackers without `none`, "
                             f"but got {names}")
        import importlib.util

        if "mlflow" in names and importlib.util.find_spec("mlflow") is None:
            raise ValueError("tracker `mlflow` needs MLflow installed: pip install '.[mlflow]' (mlflow==3.17.2)")
        return value

    @field_validator("uri")
    @classmethod
    def _no_credentials(cls, value):
        from harness.tracking import has_credentials, redact_uri

        if value is not None and has_credentials(value):  # spec.yaml would keep them: refused, shown redacted
            raise ValueError(f"`uri` must not carry credentials (spec.yaml and result.json keep it), but got "
                             f"{redact_uri(value)}; put them in MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD "
                             "(or MLFLOW_TRACKING_TOKEN), or the whole URI in $MLFLOW_TRACKING_URI (never written)")
        return value


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
            # options that came later are left out at their defaults, so earlier runs keep their ids
            "train": self.train.spec_dict(_LATER_TRAIN),
            "eval": _dump_later(self.eval, _LATER_EVAL),
            "tracking": _dump_later(self.tracking, {"uri": None}),
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
            problems.append((file, f"{where}{name}", f"must be a mapping, but got {shown(data)}"))
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
        problems.append((file, f"{where}seed", f"must be a non-negative integer, but got {shown(seed)}"))
    repeat = raw.get("repeat", 0)
    if not isinstance(repeat, int) or isinstance(repeat, bool) or repeat < 0:
        problems.append((file, f"{where}repeat", f"must be a non-negative integer, but got {shown(repeat)}"))
    if problems:  # in the order the run's sections were given (the base's keys, then the grid's)
        order = {str(k): i for i, k in enumerate(raw)}
        raise ConfigError(sorted(problems, key=lambda p: order.get(p[1][len(where):].split(".")[0], len(order))))
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


def input_sections(raw: dict) -> tuple[ModelCfg | None, DataCfg | None]:
    """The model and data sections of a raw run that validate on their own (None for one that does not):
    the preflight checks their folders and files even when another section of the run failed."""
    out: list[Any] = []
    for name in ("model", "data"):
        data = normalize(name, raw.get(name) or {})
        try:
            out.append(SECTIONS[name].model_validate(data) if isinstance(data, dict) else None)
        except ValueError:  # pydantic's ValidationError is one
            out.append(None)
    return out[0], out[1]


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
        raise ConfigError.one(file, field, f"must be an objective name or a mapping with `name`, but got {shown(data)}")
    name = data.get("name", DEFAULT)
    try:
        cls = OBJECTIVES.get(name)
    except UnknownName as exc:
        raise ConfigError.one(file, f"{field}.name", str(exc)) from None
    names = [n for n in cls.Options.model_fields if n != "name"]
    problems = []
    for key in data:
        if key not in cls.Options.model_fields:
            users = [n for n in OBJECTIVES.names() if key in OBJECTIVES.get(n).Options.model_fields]
            if users:
                problems.append((file, f"{field}.{key}", f"option `{key}` applies to objective "
                                 f"{' or '.join(f'`{u}`' for u in users)}, not `{name}`"))
            else:
                problems.append((file, f"{field}.{key}", f"option `{key}` does not belong to objective `{name}`."
                                 f"{did_you_mean(key, names)} "
                                 + (allowed(names) if names else f"Objective `{name}` takes no options.")))
    return _validate_known(cls.Options, data, problems, file=file, field=field)


def _validate_known(cls, data: dict, problems: list, *, file: str, field: str):
    """Validate the keys of `data` that `cls` has (the others are in `problems` already); raise every
    problem at once, in the order the keys were given."""
    try:
        options = validate_section(cls, {k: v for k, v in data.items() if k in cls.model_fields}, file=file,
                                   prefix=field)
    except ConfigError as exc:
        problems = problems + exc.problems
    if problems:
        order = {f"{field}.{k}": i for i, k in enumerate(data)}
        raise ConfigError(sorted(problems, key=lambda p: order.get(p[1], len(order))))
    return options


def _build_method(data: Any, *, file: str, field: str) -> MethodCfg:
    if not isinstance(data, dict):
        raise ConfigError.one(file, field, f"must be a method name or a mapping with `name`, but got {shown(data)}")
    data = dict(data)
    name = data.pop("name", "lora")
    try:
        cls = METHODS.get(name)
    except UnknownName as exc:
        raise ConfigError.one(file, f"{field}.name", str(exc)) from None
    open_options = cls.Options.model_config.get("extra") == "allow"  # e.g. `peft`: checked by the class itself
    names = list(cls.Options.model_fields)
    problems = [(file, f"{field}.{key}", f"option `{key}` does not belong to method `{name}`.{did_you_mean(key, names)} "
                 + (allowed(names) if names else f"Method `{name}` takes no options."))
                for key in data if key not in cls.Options.model_fields and not open_options]
    if name == "stack":
        if problems:
            raise ConfigError(problems)
        return _build_stack(data, file=file, field=field)
    if open_options:
        return MethodCfg(name=name, options=validate_section(cls.Options, data, file=file, prefix=field))
    return MethodCfg(name=name, options=_validate_known(cls.Options, data, problems, file=file, field=field))


def _build_stack(data: dict, *, file: str, field: str) -> MethodCfg:
    """Validate each method of a stack, then whether they can share one model."""
    from harness.methods.stack import StackOptions, stack_problems

    items = data.get("methods")
    if not isinstance(items, list):
        raise ConfigError.one(file, f"{field}.methods", f"must be a list of methods, but got {shown(items)}")
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
    #: the line of each field of the file (`base.train.lr` → 7), to list its problems in file order
    lines: dict[str, int] = {}
    #: what `load_experiment(strict=False)` found wrong at the top level; the grid expansion reports it
    #: together with the problems of every grid point (`harness.grid.expand`)
    problems: tuple[tuple[str, str, str], ...] = ()


def load_yaml(path: Path) -> Any:
    """Read an experiment or sweep file as YAML, within the caps of `harness.inputs` (size, aliases, depth).

    Raises:
        ConfigError: a missing, too large or binary file, malformed YAML, or one past the caps.
    """
    return read_yaml(path).data


def load_experiment(path: str | Path, *, strict: bool = True) -> Experiment:
    """Load an experiment file and check its top-level shape (sections are checked per grid point).

    Args:
        strict: raise on every top-level problem; when False, a wrongly typed key is left out and its
            problem kept in `Experiment.problems` for the grid expansion to report with the rest.

    Raises:
        ConfigError: missing, empty, too large or binary file, malformed YAML; with `strict`, a name that
            is not one safe folder name, unknown or wrongly typed top-level keys too.
    """
    path = Path(path)
    loaded = read_yaml(path)
    doc, file = loaded.data, str(path)
    if doc is None or doc == {}:
        raise ConfigError.one(file, "", "the experiment file is empty: give at least `base:` (the run) or `grid:` "
                              "(docs/experiments.md)")
    if not isinstance(doc, dict):
        raise ConfigError.one(file, "", f"must be a mapping with keys {', '.join(EXPERIMENT_KEYS)}")
    name = doc.get("name")
    problems: list[tuple[str, str, str]] = []
    if name is None:
        name = path.stem
        if name_problem(name):
            problems.append((file, "name", f"the experiment is named after its file, `{name}`, which is not a folder "
                             f"name ({NAME_RULE}); rename the file or set `name:`"))
    else:
        name = str(name) if isinstance(name, int) and not isinstance(name, bool) else name
        if name_problem(name):
            problems.append((file, "name", name_problem(name)))
            name = str(name)
    problems += [
        (file, str(key), f"unknown top-level key `{key}`.{did_you_mean(key, EXPERIMENT_KEYS)} {allowed(EXPERIMENT_KEYS)}")
        for key in doc if key not in EXPERIMENT_KEYS
    ]
    doc = {k: v for k, v in doc.items() if k in EXPERIMENT_KEYS}
    for key, kind in (("base", dict), ("grid", dict), ("plugins", list), ("resources", dict)):
        if doc.get(key) is not None and not isinstance(doc[key], kind):
            problems.append((file, key, f"must be a {'mapping' if kind is dict else 'list'}, but got {shown(doc.pop(key))}"))
    if doc.get("artifacts_uri") is not None and not isinstance(doc["artifacts_uri"], str):
        problems.append((file, "artifacts_uri", f"must be a path or URI string, but got {shown(doc.pop('artifacts_uri'))}"))
    plugins = doc.get("plugins") or []
    if any(not isinstance(p, str) for p in plugins):
        problems.append((file, "plugins", f"must be a list of module names or .py files, but got {shown(plugins)}"))
        plugins = []
    resources = Resources()
    try:
        resources = validate_section(Resources, doc.get("resources") or {}, file=file, prefix="resources")
    except ConfigError as exc:
        problems.extend(exc.problems)
    problems = in_file_order(problems, loaded.lines, file)
    if problems and strict:
        raise ConfigError(problems)
    return Experiment(
        name=name,
        file=file,
        description=str(doc.get("description") or ""),
        plugins=plugins,
        resources=resources,
        artifacts_uri=doc.get("artifacts_uri"),
        base=copy.deepcopy(doc.get("base") or {}),
        grid=copy.deepcopy(doc.get("grid") or {}),
        lines=loaded.lines,
        problems=tuple(problems),
    )


def in_file_order(problems: list[tuple[str, str, str]], lines: dict[str, int], file: str) -> list[tuple[str, str, str]]:
    """`problems` sorted by the line of `file` that each names (stable; those of no line, or of another
    source such as `--set`, last, as they came).

    A grid point's problem (`[method=lora] train.lr`) is placed at that field in `base:` or `grid:`,
    preferring the most specific field found; a preflight problem of a run (`[slug] data.path`) likewise.
    """
    def line(problem: tuple[str, str, str]) -> float:
        if problem[0] != file:
            return float("inf")
        fieldname, applied = problem[1], []
        if fieldname.startswith("[") and "] " in fieldname:
            point, fieldname = fieldname.rsplit("] ", 1)
            applied = re.findall(r"(?:^\[|, )([\w.]+)=", point)  # the grid axes that gave this point its values
        for key in applied:  # a value a grid axis gave: the axis's line (`method: [a, b]` gives only the name)
            named = key in ("model", "data", "method", "objective")
            if (fieldname in (key, f"{key}.name") if named else fieldname == key or fieldname.startswith(f"{key}.")) \
                    and f"grid.{key}" in lines:
                return lines[f"grid.{key}"]
        parts = fieldname.split(".")
        for n in range(len(parts), 0, -1):
            head = ".".join(parts[:n])
            for candidate in (head, f"base.{head}", f"grid.{head}"):
                if candidate in lines:
                    return lines[candidate]
        return float("inf")

    return sorted(problems, key=line)
