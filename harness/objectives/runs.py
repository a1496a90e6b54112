"""Finished runs of the store as models: a teacher (`teacher: run:<id>`) or a starting point
(`start: run:<id>`) is the run's base with its trained weights, merged when they can be."""

from __future__ import annotations

from pathlib import Path

from harness.objectives.config import TEACHER_RUN

#: {`run:<slug>`: run id} of the runs of its grid that this run reads (its spec's `reads`); set once
#: by the run's process, so every reader of a `run:` reference sees the sweep's own run
_PINNED: dict[str, str] = {}


def pin(reads: dict[str, str] | None) -> None:
    """Resolve these `run:<slug>` references to these run ids from now on in this process."""
    _PINNED.clear()
    _PINNED.update(reads or {})


def finished_run(ref: str, root, experiment: str | None = None):
    """For `run:<run id or slug>`: (that run's result, its directory, its RunConfig, None), or
    (None, None, None, why it cannot be used). Looked up in `experiment` first, then across the store."""
    from harness import store
    from harness.config import RUN_KEYS, build_run_config

    run = _PINNED.get(ref) or ref[len(TEACHER_RUN):]
    found = store.find_runs(run, root, prefer=experiment)
    if len(found) > 1:
        return None, None, None, (f"`{run}` names {len(found)} runs of experiment `{found[0].parent.name}` "
                                  f"({', '.join(d.name for d in found)}); name one by its run id")
    directory = found[0] if found else None
    result = store.read_result(directory) if directory is not None else None
    if result is None:
        return None, None, None, f"no finished run `{run}` under {root}"
    for key, run_id in (result["spec"].get("reads") or {}).items():
        _PINNED.setdefault(key, run_id)  # what that run read (an earlier stage's own predecessor) stays pinned
    if result["status"] != "ok":
        return None, None, None, f"run `{run}` finished `{result['status']}`, not `ok`: its weights cannot be used"
    config = build_run_config({k: v for k, v in result["spec"].items() if k in RUN_KEYS}, file=result["run_id"])
    artifact = directory / "adapter"
    # as `ftbench eval` checks: a full-model method keeps a loadable model only with save_weights: all
    if not artifact.is_dir() or (config.method.build().saves_full_model and not (artifact / "config.json").is_file()):
        return None, None, None, f"run `{run}` kept no weights (rerun it with train.save_weights: all)"
    return result, directory, config, None


def base_model_cfg(config, root, experiment: str | None):
    """(the ModelCfg a run's saved weights apply to, None) or (None, why it cannot be rebuilt): the
    run's `model`, the merged start model of a preference run with `start`; a depth-pruned student's
    base is a copy of its teacher's layers that only a full-model save keeps."""
    objective = config.objective
    start = start_ref(config)
    if start:
        folder = run_model_folder(start, root, experiment)
        return config.model.model_copy(update={"name": str(folder)}), None
    if objective.name == "route":
        return None, "a route run picks other runs' adapters per input; score those runs"
    if objective.name == "multitask" and objective.architecture != "shared":
        return None, "its task adapters are chosen per task; one model cannot stand for the run"
    if objective.name == "distill" and objective.student is not None and not config.method.cls.saves_full_model:
        return None, "its base is a depth-pruned copy of the teacher, which the run does not keep"
    return config.model, None


def start_ref(config) -> str | None:
    """The `run:` whose merged weights are this run's base model: a preference run's `start`; a
    continual stage's previous stage when that one's update is frozen in (`adapter_per_stage`) or
    the method trains the whole model."""
    objective = config.objective
    if objective.is_preference:
        return objective.start
    if objective.name == "continual" and objective.previous and (
            objective.strategy == "adapter_per_stage" or config.method.cls.saves_full_model):
        return objective.previous
    return None


def load_run_model(ref: str, root, experiment: str | None, device: str):
    """(model, tokenizer) of a finished run, its update merged into the base when the method can merge.

    Raises:
        ValueError: the run is missing, did not finish `ok`, or kept no weights.
    """
    from harness import models
    from harness.run import RunContext

    result, directory, config, why = finished_run(ref, root, experiment)
    if result is None:
        raise ValueError(why)
    base_cfg, why = base_model_cfg(config, root, result["experiment"])
    if base_cfg is None:
        raise ValueError(f"run `{ref[len(TEACHER_RUN):]}` cannot be rebuilt: {why}")
    base, tokenizer = models.load(base_cfg, device)
    ctx = RunContext(spec=config, run_dir=directory, device=device, total_steps=config.train.max_steps or 1)
    model = config.method.build().load(base, directory / "adapter", ctx)
    if hasattr(model, "merge_and_unload"):
        try:
            model = model.merge_and_unload()  # a plain model: faster forwards, honest parameter count
        except (ValueError, NotImplementedError, RuntimeError):
            pass
    return model, tokenizer


def run_model_folder(ref: str, root, experiment: str | None) -> Path:
    """A safetensors model folder holding a finished run's merged weights (made once per run and
    finish time in the model cache): something `models.load` can load in any dtype or in 4-bit.

    Raises:
        ValueError: as `load_run_model`, or the run's weights cannot be merged into a plain model.
    """
    from harness import models

    result, _, config, why = finished_run(ref, root, experiment)
    if result is None:
        raise ValueError(why)
    if config.model.load_in_4bit:
        raise ValueError(f"run `{ref[len(TEACHER_RUN):]}` trained on a 4-bit base, which cannot be saved as a "
                         "plain model to start from; start from a run on a full-precision base")
    stamp = "".join(ch for ch in (result.get("finished_at") or "") if ch.isdigit())

    def build(out: Path) -> None:
        model, tokenizer = load_run_model(ref, root, experiment, "cpu")
        if hasattr(model, "peft_config"):
            raise ValueError(f"run `{ref[len(TEACHER_RUN):]}` used `{config.method.name}`, whose update cannot be "
                             "merged into the base weights")
        model.save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)

    return models.build_cached(f"run-{result['run_id']}-{stamp}", build)
