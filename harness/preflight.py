"""Checks that need to look outside the config (model folders, data files) before any run starts."""

from __future__ import annotations

import json

from harness import models
from harness.data import DATASETS, DataError
from harness.data.base import split
from harness.errors import ConfigError, allowed


def check(specs, *, file: str, root=None) -> None:
    """Verify every distinct model and data config of the grid.

    Raises:
        ConfigError: every problem found (unknown model, missing file, wrong fields, n_train too large).
    """
    problems = check_inputs([(s.config.model, s.config.data) for s in specs], file=file)
    plan = PlanChecks(specs, file=file, root=root)
    for spec in specs:
        problems.extend(p for p in spec.config.objective.build().check(spec, plan) if p not in problems)
    problems.extend(p for p in check_sources(specs, file=file, root=root) if p not in problems)
    problems.extend(p for p in check_methods(specs, file=file) if p not in problems)
    problems.extend(p for p in check_gpu_options(specs, file=file) if p not in problems)
    problems.extend(p for p in check_distributed(specs, file=file) if p not in problems)
    problems.extend(check_tasks(sorted({t for s in specs for t in s.config.eval.tasks}), file=file))
    if problems:
        raise ConfigError(problems)


def check_inputs(inputs, *, file: str) -> list[tuple[str, str, str]]:
    """The problems of the model folders and data files that (model, data) section pairs name, each
    distinct one checked once; a section that is None (it did not validate) is skipped.

    Args:
        inputs: (ModelCfg | None, DataCfg | None) pairs: every grid point's, valid or not.
    """
    problems: list[tuple[str, str, str]] = []
    seen_models, seen_data, records_cache = set(), set(), {}
    for model, data in inputs:
        if model is not None and model.name not in seen_models:
            seen_models.add(model.name)
            try:
                models.check(model.name, file=file, field="model.name")
            except ConfigError as exc:
                problems.extend(exc.problems)
        if data is None:
            continue
        key = data.model_dump_json()
        if key in seen_data:
            continue
        seen_data.add(key)
        source = (data.name, data.path, data.split, data.prompt_field, data.response_field)
        try:
            if source not in records_cache:
                records_cache[source] = DATASETS.get(data.name)().records(data)
            split(records_cache[source], data)
        except DataError as exc:
            problem = (file, exc.field, str(exc))
            if problem not in problems:
                problems.append(problem)
        except KeyError as exc:  # unknown dataset name
            problems.append((file, "data.name", str(exc)))
    return problems


class PlanChecks:
    """What an objective's `check` may ask of the plan: the grid, the store, model configs.

    Args:
        specs: every run of the grid.
        file: the experiment file (problems name it).
        root: the results root (None: the default store).
    """

    def __init__(self, specs, *, file: str, root=None):
        self.specs, self.file, self.root = specs, file, root

    def problem(self, spec, field: str, message: str) -> tuple[str, str, str]:
        """A problem of one grid point's field, for the one message printed before any run."""
        return (self.file, f"[{spec.slug}] {field}", message)

    def in_grid(self, spec, ref: str, field: str):
        """The run of the grid that `ref` names, or None.

        Raises:
            ConfigError: the name matches several runs of the grid.
        """
        from harness.grid import run_in_grid

        return run_in_grid(spec, self.specs, ref, field, self.file)

    def resolve(self, spec, ref: str, field: str):
        """(the run of the grid that `ref` names, or None; that run's RunConfig, from the grid or the
        store; the problems). A ref that names nothing, a store run not `ok`, or an ambiguous slug is a
        problem and gives (None, None, problems)."""
        from harness import store
        from harness.runrefs import RunRefs

        try:
            in_grid = self.in_grid(spec, ref, field)
        except ConfigError as exc:
            return None, None, exc.problems
        if in_grid is not None:  # an earlier stage of this sweep: it runs first
            return in_grid, in_grid.config, []
        result, _, config, why = RunRefs(self.root or store.results_root(), spec.experiment).finished(ref)
        if result is None:
            return None, None, [self.problem(spec, f"objective.{field}", why + self._not_in_grid(ref))]
        return None, config, []

    def _not_in_grid(self, ref: str) -> str:
        """" (nor a run of this grid)", with the grid's closest slug when one is close."""
        from harness.errors import did_you_mean
        from harness.objectives import RUN_REF

        hint = did_you_mean(ref[len(RUN_REF):], [s.slug for s in self.specs])
        return " (nor a run of this grid)." + hint.replace("Did you mean `", f"Did you mean `{RUN_REF}")

    @staticmethod
    def model_config(name: str, model_cfg):
        """A model's transformers config, or None when it cannot be read here (a hub id offline)."""
        return _model_config(name, model_cfg)


def _model_config(name: str, model_cfg):
    """A model's transformers config, or None when it cannot be read here (a hub id offline)."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(models.resolve(name), trust_remote_code=model_cfg.trust_remote_code)
    except (OSError, ValueError):
        return None


def check_methods(specs, *, file: str) -> list[tuple[str, str, str]]:
    """Apply each distinct (model, method) pair to a weightless copy of the model (meta device).

    This finds what only the real module tree shows, before any run starts: target modules that
    match nothing, method × architecture pairs peft refuses, a rank larger than a layer's width,
    and 4-bit methods without bitsandbytes.
    """
    import importlib.util
    import warnings

    problems: list[tuple[str, str, str]] = []
    seen: set[str] = set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # library deprecation chatter is not the user's problem here
        for spec in specs:
            _check_method(spec, file, seen, problems, importlib.util.find_spec("bitsandbytes") is not None)
    return problems


def _check_method(spec, file: str, seen: set[str], problems: list, have_bnb: bool) -> None:
    """Append the problems of one grid point's (model, method) pair, once per distinct pair."""
    cfg = spec.config
    key = cfg.model.model_dump_json() + json.dumps(cfg.method.as_dict(), sort_keys=True, default=str)
    if key in seen:
        return
    seen.add(key)
    where = f"[{spec.slug}] method"
    if cfg.model.load_in_4bit and not have_bnb:
        problems.append((file, f"[{spec.slug}] model.load_in_4bit", "4-bit loading needs bitsandbytes: "
                         "pip install bitsandbytes"))
        return
    if not cfg.method.cls.__module__.startswith("harness.methods."):
        return  # plugin code runs only in its run's process, where even a crash is recorded as that run's failure
    skeleton = models.meta_model(cfg.model)
    if skeleton is None:  # a hub id offline: the run itself reports that
        return
    try:
        from harness.context import RunContext

        adapted = cfg.method.build().apply(skeleton, RunContext(spec=cfg, run_dir=None, device="meta", total_steps=100))
        problem = _rank_too_large(adapted)
    except NotImplementedError:
        return  # a data-dependent op the meta device cannot run (e.g. SHiRA's masks): the run itself will tell
    except Exception as exc:  # whatever peft or a method raises here is a property of the config
        problem = f"cannot be applied to `{cfg.model.name}`: {type(exc).__name__}: {exc}".splitlines()[0]
    if problem:
        problems.append((file, where, problem))


def _rank_too_large(model) -> str | None:
    """A low-rank layer whose rank exceeds min(in, out) is no longer low-rank: refuse it."""
    for name, module in model.named_modules():
        ranks = getattr(module, "r", None)
        width = min(getattr(module, "in_features", 0) or 0, getattr(module, "out_features", 0) or 0)
        if isinstance(ranks, dict) and width and type(module).__module__.startswith("peft.tuners.lora"):
            for rank in ranks.values():
                if rank > width:
                    return f"r={rank} is larger than layer `{name}` ({width} wide): use r <= {width}"
    return None


def check_gpu_options(specs, *, file: str, cuda: bool | None = None) -> list[tuple[str, str, str]]:
    """`train.kernels` and `train.attn_implementation` that cannot run here: Liger and FlashAttention-2
    need a CUDA device and their packages (FlashAttention-2 also bf16/fp16), and Liger a model type it
    has kernels for. Checked where the sweep starts, which is where its local runs train.

    Args:
        cuda: whether a CUDA device is usable (None: ask torch).
    """
    wanted = [s for s in specs
              if s.config.train.kernels != "none" or s.config.train.attn_implementation == "flash_attention_2"]
    if not wanted:
        return []
    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()
    problems: list[tuple[str, str, str]] = []
    no_cuda = "needs a CUDA GPU and this machine has none (torch.cuda.is_available() is False)"
    for spec in wanted:
        train, where = spec.config.train, f"[{spec.slug}] train"
        if train.kernels == "liger":
            why = (no_cuda if not cuda else None if models.installed("liger_kernel") else
                   "needs the liger-kernel package, which is not installed: pip install liger-kernel")
            why = why or _liger_unsupported(spec.config.model)
            if why:
                problems.append((file, f"{where}.kernels", f"`liger` {why}. Allowed here: none, cpu."))
        if train.attn_implementation == "flash_attention_2":
            allowed_here = "Allowed here: auto, sdpa_varlen, sdpa, eager."
            if not cuda:
                why = no_cuda
            elif not models.installed("flash_attn"):
                why = "needs the flash-attn package, which is not installed: pip install flash-attn"
            elif str(models.pick_dtype(spec.config.model.dtype, "cuda")) not in ("torch.bfloat16", "torch.float16"):
                why = (f"runs in bf16 or fp16 only, and `model.dtype: {spec.config.model.dtype}` is float32 "
                       "on this GPU (use bfloat16 or float16)")
            else:
                continue
            problems.append((file, f"{where}.attn_implementation", f"`flash_attention_2` {why}. {allowed_here}"))
    return problems


def check_distributed(specs, *, file: str, gpus: int | None = None) -> list[tuple[str, str, str]]:
    """Distributed runs that cannot run here: FSDP needs CUDA GPUs; with GPUs, a run's `world_size` must fit
    on this machine (it gets its GPUs all at once). On CPU, DDP runs its ranks as processes (gloo).

    Args:
        gpus: CUDA GPUs here (None: ask torch).
    """
    wanted = [s for s in specs if s.config.train.distributed != "none"]
    if not wanted:
        return []
    if gpus is None:
        import torch

        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    problems: list[tuple[str, str, str]] = []
    for spec in wanted:
        train, where = spec.config.train, f"[{spec.slug}] train"
        if train.distributed == "fsdp" and not gpus:
            problems.append((file, f"{where}.distributed", "`fsdp` runs on CUDA GPUs only and this machine has none "
                             "(docs/scale-out.md#runs-bigger-than-one-gpu); on CPU use `ddp`"))
        elif gpus and train.world_size > gpus:
            problems.append((file, f"{where}.world_size", f"needs {train.world_size} GPUs at once and this machine "
                             f"has {gpus}"))
    return problems


def _liger_unsupported(model_cfg) -> str | None:
    """Why Liger cannot patch this model (a model type it has no kernels for), or None."""
    config = _model_config(model_cfg.name, model_cfg)
    if config is None:  # a hub id offline: the run itself reports it
        return None
    try:
        from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN
    except ImportError as exc:  # installed, but its import fails (no Triton, an old torch)
        return f"cannot import liger-kernel here ({type(exc).__name__}: {exc})"
    if config.model_type not in MODEL_TYPE_TO_APPLY_LIGER_FN:
        return f"has no kernels for model type `{config.model_type}` of `{model_cfg.name}`"
    return None


def check_tasks(names: list[str], *, file: str) -> list[tuple[str, str, str]]:
    """Build our local tasks; check that every other name is an lm-eval task whose data can be
    fetched now (offline, a hub task fails here, before any training, not after)."""
    if not names:
        return []
    from harness.errors import did_you_mean
    from harness.tasks import LOCAL_TASKS, task_dir

    built_in = f"built-in tasks (no network needed): {', '.join(LOCAL_TASKS.names())}"
    problems = []
    for name in [n for n in names if n in LOCAL_TASKS]:
        try:
            task_dir(name)
        except (OSError, ValueError, KeyError) as exc:
            problems.append((file, "eval.tasks", f"cannot build task `{name}`: {exc}"))
    others = [n for n in names if n not in LOCAL_TASKS]
    if not others:
        return problems
    import logging

    from lm_eval.tasks import TaskManager

    logging.getLogger("lm-eval").setLevel(logging.ERROR)
    manager = TaskManager()
    for name in others:
        if name not in manager.all_tasks:
            problems.append((file, "eval.tasks", f"unknown task `{name}`.{did_you_mean(name, list(LOCAL_TASKS.names()))} "
                                                 f"{built_in}; or any of lm-eval's {len(manager.all_tasks)} tasks"))
            continue
        try:
            manager.load([name])  # fetches the task's data set (cached by `datasets` for the runs)
        except Exception as exc:  # offline, gated, renamed: whatever `datasets` raises, the task is unusable
            reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
            problems.append((file, "eval.tasks", f"the data of lm-eval task `{name}` cannot be fetched "
                                                 f"(offline or no access to the HF hub: {reason}); {built_in}"))
    return problems


def _source_fields(spec) -> list[tuple[str, str]]:
    """(field, source name) for every data source a run trains on or scores, beyond `data.name`."""
    slug = f"[{spec.slug}] "
    fields = [(f"{slug}eval.sources[{i}]", name) for i, name in enumerate(spec.config.eval.sources)]
    return fields + [(f"{slug}objective.{field}", name) for field, name in spec.config.objective.build().source_fields()]


def check_sources(specs, *, file: str, root=None) -> list[tuple[str, str, str]]:
    """Multi-task, continual, routed runs and `eval.sources`: every source is registered and splits
    under the run's data settings; no training set shares prompts with a scored validation split."""
    from harness.errors import did_you_mean
    from harness.objectives.parts.domains import collisions, source_splits

    problems: list[tuple[str, str, str]] = []
    named = sorted(n for n in DATASETS.names() if DATASETS.get(n).domain)
    for spec in specs:
        fields, cfg = _source_fields(spec), spec.config
        ok = []
        for field, name in fields:
            if name not in DATASETS or name in ("file", "hf"):
                problems.append((file, field, f"unknown data source `{name}`.{did_you_mean(name, named)} "
                                 f"{allowed(named)}"))
                continue
            try:
                source_splits(cfg.data, name)
                ok.append(name)
            except DataError as exc:
                problems.append((file, field, f"source `{name}`: {exc}"))
        trained = cfg.objective.sources() or ([cfg.data.name] if cfg.method.cls.trains else [])
        for held_out in dict.fromkeys(ok):
            for source in trained:
                if source == held_out or source not in ok and source != cfg.data.name:
                    continue
                try:
                    pool = (source_splits(cfg.data, source) if source in ok else
                            split(DATASETS.get(source)().records(cfg.data), cfg.data)).train_pool
                except (DataError, KeyError):
                    continue  # reported by the data check
                shared = collisions(pool, source_splits(cfg.data, held_out).val)
                if shared:
                    problems.append((file, f"[{spec.slug}] data.name" if source == cfg.data.name else fields[0][0],
                                     f"the training data of `{source}` shares {len(shared)} prompts with the validation "
                                     f"split of source `{held_out}` (e.g. {sorted(shared)[0][:60]!r}): its score would "
                                     "count memorised answers; remove them from one of the two"))
    return problems


def estimates(specs, device_kind: str) -> dict:
    """{run id: `harness.memory.MemoryEstimate` or None} for every run: the method applied to the
    weightless copy of its model (as `check_methods` does), the batch sizes read from its tokenized
    data where that can be built here (else upper bounds from `seq_len`). None where the model's
    config cannot be read here (a hub id offline) or the method cannot be applied on the meta device.

    Args:
        device_kind: "cpu" or "cuda": whose peak-memory semantics the estimate predicts.
    """
    import warnings

    from harness import memory
    from harness.context import RunContext

    out, skeletons, token_cache = {}, {}, {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for spec in specs:
            cfg = spec.config
            key = cfg.model.model_dump_json() + json.dumps(cfg.method.as_dict(), sort_keys=True, default=str)
            if key not in skeletons:
                skeletons[key] = None
                skeleton = models.meta_model(cfg.model) if cfg.method.cls.__module__.startswith("harness.methods.") else None
                if skeleton is not None:
                    try:
                        ctx = RunContext(spec=cfg, run_dir=None, device="meta", total_steps=100)
                        skeletons[key] = cfg.method.build().apply(skeleton, ctx)
                    except Exception:  # noqa: BLE001  (check_methods reports what is wrong with the pair)
                        pass
            if skeletons[key] is None:
                out[spec.run_id] = None
                continue
            data_key = (cfg.model.name, cfg.data.model_dump_json(), cfg.train.seq_len, cfg.train.packing,
                        cfg.train.micro_batch, cfg.eval.batch_size, cfg.seed)
            if data_key not in token_cache:
                token_cache[data_key] = _batch_tokens(spec)
            held = _held_names(cfg, specs)
            out[spec.run_id] = memory.estimate(cfg, skeletons[key], device_kind, tokens=token_cache[data_key],
                                               held_mb=memory.held_weights_mb(held, cfg, device_kind) if held else 0.0)
    return out


def _held_names(config, specs) -> list[str]:
    """The model names of what a run's objective holds frozen while training: a `run:` reference to a run
    of the grid is that run's model (one outside the grid is left out of the estimate)."""
    from harness.objectives import RUN_REF

    def grid_model(ref: str) -> str | None:
        target = ref[len(RUN_REF):]
        return next((s.config.model.name for s in specs if target in (s.slug, s.run_id)), None)

    return config.objective.build().held_model_names(config, grid_model)


def fit_batches(specs, device_kind: str, budget_mb: float) -> tuple[list, dict]:
    """Settle every `micro_batch: auto` run: the largest divisor of its effective batch whose estimated
    train peak fits `budget_mb`, `grad_accum` making up the rest. Returns (the runs, each auto one with
    its config set and `batch` recorded — run ids unchanged; {run id: estimate at the chosen size, or
    at micro-batch 1 when nothing fits (the caller reports it over budget)}). A run whose estimate
    cannot be made here keeps the whole effective batch in one micro-batch.
    """
    import dataclasses

    from harness import memory

    auto = [s for s in specs if s.config.train.auto_batch]
    if not auto:
        return list(specs), {}
    candidates = {}
    for spec in auto:
        train = spec.config.train
        effective = train.micro_batch * train.grad_accum
        for micro in (d for d in range(1, effective + 1) if effective % d == 0):
            config = spec.config.model_copy(update={"train": train.with_batch(micro)})
            candidates[(spec.run_id, micro)] = dataclasses.replace(spec, run_id=f"{spec.run_id}#{micro}",
                                                                  config=config)
    found = estimates(list(candidates.values()), device_kind)
    settled, chosen = {}, {}
    for spec in auto:
        effective = spec.config.train.micro_batch * spec.config.train.grad_accum
        est = {m: found.get(f"{spec.run_id}#{m}") for (rid, m) in candidates if rid == spec.run_id}
        if any(e is None for e in est.values()):
            continue
        micro = memory.choose_micro_batch(effective, lambda m: est[m].train_mb <= budget_mb)
        pick = candidates[(spec.run_id, micro or 1)]
        settled[spec.run_id] = dataclasses.replace(
            pick, run_id=spec.run_id, batch={"micro_batch": pick.config.train.micro_batch,
                                             "grad_accum": pick.config.train.grad_accum})
        chosen[spec.run_id] = est[micro or 1]
    return [settled.get(s.run_id, s) for s in specs], chosen


def _batch_tokens(spec):
    """Positions per batch from the run's tokenized data (its objective's records and encoding), or
    None (upper bounds) when the tokenizer or data cannot be read here."""
    from transformers import AutoTokenizer

    from harness import memory
    from harness.context import RunContext

    cfg = spec.config
    try:
        tokenizer = AutoTokenizer.from_pretrained(models.resolve(cfg.model.name),
                                                  trust_remote_code=cfg.model.trust_remote_code)
        ctx = RunContext(spec=cfg, run_dir=None, device="meta", total_steps=100)
        objective = cfg.objective.build()
        train_records, val_records = objective.records(ctx, {})
        train_set, val_set = objective.encode(ctx, tokenizer, train_records, val_records)
    except Exception:  # noqa: BLE001  (a hub id offline, an objective that needs finished runs: bounds instead)
        return None
    return memory.batch_tokens(train_set, val_set, cfg)
