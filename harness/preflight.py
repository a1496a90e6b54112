"""Checks that need to look outside the config (model folders, data files) before any run starts."""

from __future__ import annotations

import json

from harness import models
from harness.data import DATASETS, DataError
from harness.data.base import split
from harness.errors import ConfigError, allowed
from harness.methods import METHODS


def check(specs, *, file: str, root=None) -> None:
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
    problems.extend(p for p in check_objectives(specs, file=file, root=root) if p not in problems)
    problems.extend(p for p in check_preference(specs, file=file, root=root) if p not in problems)
    problems.extend(p for p in check_sources(specs, file=file, root=root) if p not in problems)
    problems.extend(p for p in check_methods(specs, file=file) if p not in problems)
    problems.extend(check_tasks(sorted({t for s in specs for t in s.config.eval.tasks}), file=file))
    if problems:
        raise ConfigError(problems)


def check_objectives(specs, *, file: str, root=None) -> list[tuple[str, str, str]]:
    """Distillation: the teacher exists (a model, or a run of the store that finished `ok` with its
    weights), `keep_layers` and `feature_layers` fit the teacher's and the student's depths, and
    student and teacher share a vocabulary."""
    from harness.objectives.config import TEACHER_RUN
    from harness.objectives.distill import layer_pairs
    from harness.objectives.student import keep_layers

    problems: list[tuple[str, str, str]] = []
    for spec in specs:
        objective = spec.config.objective
        if objective.name != "distill":
            continue
        where = f"[{spec.slug}] objective"
        if objective.teachers is not None:
            problems.extend(_check_ensemble(spec, specs, file, root))
            continue
        teacher_model, n_teacher = objective.teacher, None
        if teacher_model.startswith(TEACHER_RUN):
            in_grid, config, found = _run_ref(spec, specs, teacher_model, "teacher", file, root)
            if config is None:
                problems.extend(found)
                continue
            teacher_model, n_teacher = config.model.name, _depth(in_grid, specs) if in_grid is not None else None
        try:
            models.check(teacher_model, file=file, field=f"{where}.teacher")
        except ConfigError as exc:
            problems.extend(exc.problems)
            continue
        teacher = _model_config(teacher_model, spec.config.model)
        if teacher is None:  # a hub id offline: the run itself reports that
            continue
        student = teacher if objective.student is not None else _model_config(spec.config.model.name, spec.config.model)
        n_teacher = n_teacher or teacher.num_hidden_layers
        n_student = student.num_hidden_layers if student is not None else None
        if objective.student is not None:
            try:
                n_student = len(keep_layers(objective.student.keep_layers, n_teacher))
            except ValueError as exc:
                problems.append((file, f"{where}.student.keep_layers", str(exc)))
                continue
        elif student is not None and student.vocab_size != teacher.vocab_size:
            problems.append((file, f"{where}.teacher", f"student `{spec.config.model.name}` (vocabulary "
                             f"{student.vocab_size}) and teacher `{objective.teacher}` (vocabulary {teacher.vocab_size}) "
                             "must share a tokenizer"))
        if n_student is not None and (objective.losses.feature > 0):
            for s_layer, t_layer in layer_pairs(objective.feature_layers, n_student, n_teacher):
                if not (0 <= s_layer <= n_student and 0 <= t_layer <= n_teacher):
                    problems.append((file, f"{where}.feature_layers", f"pair ({s_layer}, {t_layer}) is out of range: "
                                     f"student hidden states 0..{n_student}, teacher 0..{n_teacher} (0: embeddings)"))
                    break
    return problems


def _run_ref(spec, specs, ref: str, field: str, file: str, root):
    """(the run of the grid that `ref` names, or None; that run's RunConfig, from the grid or the
    store; the problems). A ref that names nothing, a store run not `ok`, or an ambiguous slug is a
    problem and gives (None, None, problems)."""
    from harness import store
    from harness.grid import run_in_grid
    from harness.objectives.runs import finished_run

    try:
        in_grid = run_in_grid(spec, specs, ref, field, file)
    except ConfigError as exc:
        return None, None, exc.problems
    if in_grid is not None:  # an earlier stage of this sweep: it runs first
        return in_grid, in_grid.config, []
    result, _, config, why = finished_run(ref, root or store.results_root(), spec.experiment)
    if result is None:
        return None, None, [(file, f"[{spec.slug}] objective.{field}", why + _not_in_grid(ref, specs))]
    return None, config, []


def _not_in_grid(ref: str, specs) -> str:
    """" (nor a run of this grid)", with the grid's closest slug when one is close."""
    from harness.errors import did_you_mean
    from harness.objectives.config import TEACHER_RUN

    hint = did_you_mean(ref[len(TEACHER_RUN):], [s.slug for s in specs])
    return " (nor a run of this grid)." + hint.replace("Did you mean `", f"Did you mean `{TEACHER_RUN}")


def _check_ensemble(spec, specs, file: str, root) -> list[tuple[str, str, str]]:
    """Each teacher of `teachers:` exists (a model, a run of the grid, or a finished run) and shares
    the student's vocabulary."""
    from harness.objectives.config import TEACHER_RUN
    from harness.objectives.student import keep_layers

    problems, objective = [], spec.config.objective
    pruned = objective.student is not None  # a copy of the first teacher: it shares that one's vocabulary
    student = None if pruned else _model_config(spec.config.model.name, spec.config.model)
    for i, teacher in enumerate(objective.teachers):
        field, name = f"[{spec.slug}] objective.teachers[{i}].model", teacher.model
        if name.startswith(TEACHER_RUN):
            _, config, found = _run_ref(spec, specs, name, f"teachers[{i}].model", file, root)
            if config is None:
                problems.extend(found)
                continue
            name = config.model.name
        try:
            models.check(name, file=file, field=field)
        except ConfigError as exc:
            problems.extend(exc.problems)
            continue
        config = _model_config(name, spec.config.model)
        if i == 0 and pruned and config is not None:
            student = config
            try:
                keep_layers(objective.student.keep_layers, config.num_hidden_layers)
            except ValueError as exc:
                problems.append((file, f"[{spec.slug}] objective.student.keep_layers", str(exc)))
        elif config is not None and student is not None and config.vocab_size != student.vocab_size:
            problems.append((file, field, f"teacher `{teacher.model}` (vocabulary {config.vocab_size}) and the "
                             f"student (vocabulary {student.vocab_size}) must share a tokenizer"))
    return problems


def check_preference(specs, *, file: str, root=None) -> list[tuple[str, str, str]]:
    """dpo/kto: a method TRL can wrap, preference pairs to learn from, and a `start` run that exists
    (in the grid, or finished `ok` with weights on a full-precision base)."""
    problems: list[tuple[str, str, str]] = []
    for spec in specs:
        objective, cfg = spec.config.objective, spec.config
        if not objective.is_preference:
            continue
        if cfg.method.cls.preference_reference is None:
            wrappable = [name for name in METHODS.names() if METHODS.get(name).preference_reference is not None]
            problems.append((file, f"[{spec.slug}] method", f"objective `{objective.name}` trains through TRL, which "
                             f"cannot wrap method `{cfg.method.name}` with a frozen reference; {allowed(wrappable)}"))
        dataset = DATASETS.get(cfg.data.name) if cfg.data.name in DATASETS else None
        if dataset is not None and not dataset.pairs:
            pairs = [name for name in DATASETS.names() if DATASETS.get(name).pairs]
            problems.append((file, f"[{spec.slug}] data.name", f"objective `{objective.name}` learns from preference "
                             f"pairs (prompt, chosen, rejected); `{cfg.data.name}` has none. {allowed(pairs)}"))
        if objective.name == "kto" and cfg.train.micro_batch < 2:
            problems.append((file, f"[{spec.slug}] train.micro_batch", "objective `kto` estimates its KL term from "
                             "mismatched pairs of a batch: use micro_batch >= 2"))
        if not objective.start:
            continue
        _, start, found = _run_ref(spec, specs, objective.start, "start", file, root)
        if start is None:
            problems.extend(found)
            continue
        kind = start.method.cls  # a plain model comes back from a merge, a full copy or trained weights in place
        if start.model.load_in_4bit or not (kind.merges or kind.saves_full_model or kind.stack_role == "weights"):
            problems.append((file, f"[{spec.slug}] objective.start", f"`{objective.start}` trained "
                             f"`{start.method.name}`{' on a 4-bit base' if start.model.load_in_4bit else ''}, whose "
                             "weights cannot become a plain model to start from; start from a full, freeze or "
                             "mergeable-adapter run (lora, dora, …) on a full-precision base"))
        elif kind.saves_full_model and start.train.save_weights != "all":
            problems.append((file, f"[{spec.slug}] objective.start", f"`{objective.start}` keeps no full model: "
                             "give it train.save_weights: all"))
    return problems


def _depth(spec, specs, hops: int = 0) -> int | None:
    """Layers of the model a run of the grid trains: its `model`'s, or its `keep_layers` of its teacher's."""
    from harness.grid import teacher_in_grid
    from harness.objectives.config import TEACHER_RUN
    from harness.objectives.student import keep_layers

    objective = spec.config.objective
    if objective.name != "distill" or objective.student is None or hops > len(specs):
        config = _model_config(spec.config.model.name, spec.config.model)
        return config.num_hidden_layers if config is not None else None
    try:
        teacher = teacher_in_grid(spec, specs)
    except ConfigError:  # said where that run's own objective is checked
        return None
    if teacher is not None:
        n_teacher = _depth(teacher, specs, hops + 1)
    else:
        config = _model_config(objective.teacher, spec.config.model) if not objective.teacher.startswith(TEACHER_RUN) else None
        n_teacher = config.num_hidden_layers if config is not None else None
    try:
        return len(keep_layers(objective.student.keep_layers, n_teacher)) if n_teacher else None
    except ValueError:
        return None


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
    skeleton = _meta_model(cfg.model)
    if skeleton is None:  # a hub id offline: the run itself reports that
        return
    try:
        from harness.run import RunContext

        adapted = cfg.method.build().apply(skeleton, RunContext(spec=cfg, run_dir=None, device="meta", total_steps=100))
        problem = _rank_too_large(adapted)
    except NotImplementedError:
        return  # a data-dependent op the meta device cannot run (e.g. SHiRA's masks): the run itself will tell
    except Exception as exc:  # whatever peft or a method raises here is a property of the config
        problem = f"cannot be applied to `{cfg.model.name}`: {type(exc).__name__}: {exc}".splitlines()[0]
    if problem:
        problems.append((file, where, problem))


def _meta_model(model_cfg):
    """The model's module tree without weights, or None when its config cannot be read here."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(models.resolve(model_cfg.name), trust_remote_code=model_cfg.trust_remote_code,
                                            revision=model_cfg.revision)
    except (OSError, ValueError):
        return None
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, trust_remote_code=model_cfg.trust_remote_code)


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
    objective, slug = spec.config.objective, f"[{spec.slug}] "
    fields = [(f"{slug}eval.sources[{i}]", name) for i, name in enumerate(spec.config.eval.sources)]
    if objective.name == "multitask":
        fields += [(f"{slug}objective.tasks[{i}].name", t.name) for i, t in enumerate(objective.tasks)]
    if objective.name == "continual":
        fields += [(f"{slug}objective.sequence[{i}]", name) for i, name in enumerate(objective.sequence)]
    if objective.name == "route":
        fields += [(f"{slug}objective.adapters.{name}", name) for name in objective.adapters]
    return fields


def check_sources(specs, *, file: str, root=None) -> list[tuple[str, str, str]]:
    """Multi-task, continual, routed runs and `eval.sources`: every source is registered and splits
    under the run's data settings; no training set shares prompts with a scored validation split; the
    method can do what the objective asks of it; a route's adapters are finished peft runs."""
    from harness.errors import did_you_mean
    from harness.methods.peft_base import PeftMethod
    from harness.objectives.domains import collisions, source_splits

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
        problems.extend(_method_fits(spec, file, PeftMethod))
        if cfg.objective.name == "route":
            problems.extend(_check_route(spec, specs, file, root, PeftMethod))
        if cfg.objective.extend:
            problems.extend(_check_extend(spec, specs, file, root))
        trained = (cfg.objective.sources() if cfg.objective.name in ("multitask", "continual") else
                   [] if cfg.objective.name == "route" or not cfg.method.cls.trains else [cfg.data.name])
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


def _method_fits(spec, file: str, peft_method) -> list[tuple[str, str, str]]:
    """What multitask architectures and continual strategies need of the method."""
    cfg, objective = spec.config, spec.config.objective
    kind, where = cfg.method.cls, f"[{spec.slug}] method"
    if objective.name == "multitask" and objective.architecture != "shared":
        if not issubclass(kind, peft_method) or (objective.architecture == "shared_plus_task"
                                                  and not hasattr(cfg.method.options, "alpha")):
            need = "a peft adapter method" if objective.architecture == "per_task" else "a LoRA-family method (r, alpha)"
            return [(file, where, f"architecture `{objective.architecture}` switches adapters per task: it needs "
                     f"{need}, not `{cfg.method.name}`")]
    if objective.name == "continual":
        if objective.strategy == "adapter_per_stage" and not (issubclass(kind, peft_method) and kind.merges):
            return [(file, where, f"strategy `adapter_per_stage` freezes each stage's adapter into the base: it needs "
                     f"a peft method that merges (lora, dora, …), not `{cfg.method.name}`")]
        if not issubclass(kind, peft_method) and not kind.saves_full_model:
            return [(file, where, f"a continual stage continues the previous stage's weights: use a peft adapter "
                     f"method or one that trains the whole model, not `{cfg.method.name}`")]
        if kind.saves_full_model and cfg.train.save_weights != "all":
            return [(file, f"[{spec.slug}] train.save_weights", f"method `{cfg.method.name}` hands each stage's whole "
                     "model to the next only when it is kept: set `train.save_weights: all`")]
    if objective.name == "route" and cfg.method.name != "none":
        return [(file, where, "objective `route` trains only its router over finished runs' adapters: use method `none`")]
    return []


def _check_route(spec, specs, file: str, root, peft_method) -> list[tuple[str, str, str]]:
    """Each adapter of a route (and its `shared` run) is a peft run on the route's base model."""
    problems = []
    objective = spec.config.objective
    refs = [(f"adapters.{k}", v) for k, v in objective.adapters.items()]
    refs += [("shared", objective.shared)] if objective.shared else []
    for field, ref in refs:
        _, config, found = _run_ref(spec, specs, ref, field, file, root)
        if config is None:
            problems.extend(found)
        elif not issubclass(config.method.cls, peft_method) or config.model != spec.config.model:
            problems.append((file, f"[{spec.slug}] objective.{field}", f"`{ref}` must be a peft adapter run on model "
                             f"`{spec.config.model.name}` (it trained `{config.method.name}` on `{config.model.name}`)"))
        elif config.objective.name == "multitask" and config.objective.architecture != "shared":
            problems.append((file, f"[{spec.slug}] objective.{field}", f"`{ref}` keeps one adapter per task; "
                             "route between single adapters (a single-task run or a `shared` multitask run)"))
    return problems


def _check_extend(spec, specs, file: str, root) -> list[tuple[str, str, str]]:
    """`extend`: a multitask run of the same architecture, method and model, without the new tasks."""
    objective, where = spec.config.objective, f"[{spec.slug}] objective.extend"
    _, old, found = _run_ref(spec, specs, objective.extend, "extend", file, root)
    if old is None:
        return found
    if old.objective.name != "multitask" or old.objective.architecture != objective.architecture:
        kind = old.objective.architecture if old.objective.name == "multitask" else f"objective `{old.objective.name}`"
        return [(file, where, f"`{objective.extend}` must be a multitask run with architecture "
                 f"`{objective.architecture}`, not {kind}")]
    if old.method != spec.config.method or old.model != spec.config.model:
        return [(file, where, f"`{objective.extend}` trained `{old.method.name}` on `{old.model.name}`: an extension "
                 "needs the same method options and model")]
    again = sorted(set(old.objective.sources()) & set(objective.sources()))
    if again:
        return [(file, f"[{spec.slug}] objective.tasks", f"`{again[0]}` is already a task of `{objective.extend}`: "
                 "list only the new tasks")]
    return []
