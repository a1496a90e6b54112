"""`ftbench eval EXP`: score finished runs on tasks they lack, loading each base model once.

peft adapters of one kind are attached to one peft wrapper in turn (`load_adapter`,
`set_adapter`, `delete_adapter`); our own adapters attach and detach themselves (`Method.unload`);
full fine-tunes load their own weights; a method that cannot detach costs a base reload."""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from harness import models, store
from harness.config import RUN_KEYS, build_run_config
from harness.context import RunContext
from harness.runrefs import RunRefs
from harness.tasks.base import task_key


@dataclass
class Summary:
    scored: list[tuple[str, str]] = field(default_factory=list)  # (run_id, task)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (run_id, reason)
    base_loads: int = 0
    load_s: list[float] = field(default_factory=list)
    score_s: float = 0.0

    def saved_s(self, runs_scored: int) -> float:
        """Estimated load time saved against loading the base once per run."""
        mean = sum(self.load_s) / len(self.load_s) if self.load_s else 0.0
        return max(runs_scored - self.base_loads, 0) * mean


def missing_tasks(result: dict, tasks: list[str], limit, num_fewshot) -> list[str]:
    meta = result.get("task_meta") or {}
    return [t for t in tasks if meta.get(t) != task_key(t, limit, num_fewshot)]


def score_runs(experiment: str, *, root: Path | None, tasks: list[str] | None, limit, num_fewshot,
               batch_size: int | None, force: bool = False, log=print) -> Summary:
    """Score every finished `ok` run of `experiment` on the tasks it lacks; update its result.json.

    Args:
        tasks: task names; None: each run's own `eval.tasks`.
        force: rescore even what is cached.
    """
    summary = Summary()
    todo: dict[str, list] = {}  # model config → [(result, config, tasks)]
    for result in store.iter_results(experiment, root):
        if result["status"] != "ok":
            continue
        config = build_run_config({k: v for k, v in result["spec"].items() if k in RUN_KEYS}, file=result["run_id"])
        wanted = tasks if tasks is not None else list(config.eval.tasks)
        lim = limit if tasks is not None else config.eval.limit
        shots = num_fewshot if tasks is not None else config.eval.num_fewshot
        need = list(wanted) if force else missing_tasks(result, wanted, lim, shots)
        if need:
            # the runs this run read (its pinned `reads`), not others under their slugs
            refs = RunRefs(root or store.results_root(), experiment, result["spec"].get("reads"))
            try:
                base_cfg, why = refs.base_model_cfg(config)
            except ValueError as exc:  # a start run that is gone from the store
                base_cfg, why = None, str(exc)
            if base_cfg is None:
                summary.skipped.append((result["run_id"], why))
                continue
            config = config.model_copy(update={"model": base_cfg})
            todo.setdefault(config.model.model_dump_json(), []).append((result, config, need, lim, shots))
    for group in todo.values():
        # the reference rows first (forgetting reads them), then one peft kind after another
        group.sort(key=lambda item: (item[1].method.name != "none", _peft_kind(item[1]) or "", item[0]["run_id"]))
        _score_group(group, root, batch_size, summary, log)
    return summary


def _peft_kind(config) -> str | None:
    from harness.methods.peft_base import PeftMethod

    method = config.method.build()
    return type(method).__name__ if isinstance(method, PeftMethod) else None


def _load_base(config, summary: Summary):
    device = models.pick_device()
    t0 = time.perf_counter()
    model, tokenizer = models.load(config.model, device)
    summary.base_loads += 1
    summary.load_s.append(time.perf_counter() - t0)
    return model, tokenizer, device


def _leave(wrapper, active: str):
    """The clean base model under a peft wrapper, or None when peft cannot give it back (IA3's
    `unload` refuses on a 4-bit base): then the caller reloads it."""
    config = wrapper.peft_config[active]
    try:
        if config.is_prompt_learning:
            return wrapper.get_base_model()
        if str(config.peft_type) in ("ADAPTION_PROMPT", "PeftType.ADAPTION_PROMPT"):
            wrapper.base_model.disable_adapter_layers()  # puts the original attention modules back
            return wrapper.base_model.model
        return wrapper.unload()
    except (AttributeError, ValueError, NotImplementedError):
        return None


def adapter_name(run_id: str) -> str:
    """A peft adapter name for a run: module names cannot hold "." (run ids do: `lr0.0005`)."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", run_id)


def _score_group(group, root, batch_size, summary: Summary, log) -> None:
    from peft import PeftModel

    from harness.lmeval import score

    base, tokenizer, device = _load_base(group[0][1], summary)
    wrapper, wrapper_kind, active = None, None, None
    for result, config, need, lim, shots in group:
        run_dir = store.run_dir(result["experiment"], result["run_id"], root)
        artifact = run_dir / "adapter"
        method = config.method.build()
        kind = _peft_kind(config)
        ctx = RunContext(spec=config, run_dir=run_dir, device=device, total_steps=config.train.max_steps or 1)
        try:
            if wrapper is not None and kind != wrapper_kind:  # leave the peft wrapper: the base is clean again
                base = _leave(wrapper, active) or _load_base(config, summary)[0]
                wrapper, wrapper_kind, active = None, None, None
            if method.saves_full_model:
                if not (artifact / "config.json").is_file():
                    summary.skipped.append((result["run_id"], "no weights kept (set train.save_weights: all)"))
                    continue
                model = method.load(base, artifact, ctx)
            elif kind is not None:
                name = adapter_name(result["run_id"])
                if wrapper is None:
                    wrapper = PeftModel.from_pretrained(base, str(artifact), adapter_name=name)
                else:
                    wrapper.load_adapter(str(artifact), adapter_name=name)
                    wrapper.set_adapter(name)
                    wrapper.delete_adapter(active)
                wrapper_kind, active, model = kind, name, wrapper
            else:
                model = method.load(base, artifact, ctx)
            t0 = time.perf_counter()
            scores, _ = score(model, tokenizer, need, limit=lim, num_fewshot=shots,
                              batch_size=batch_size or config.eval.batch_size, seed=config.seed)
            summary.score_s += time.perf_counter() - t0
            _record(run_dir, result, scores, need, lim, shots)
            summary.scored.extend((result["run_id"], t) for t in need)
            log(f"scored {result['slug']}: " + ", ".join(f"{k.removeprefix('task.')}={v:.4g}" for k, v in scores.items()
                                                           if not k.endswith(("_stderr", ".n"))))
            if method.saves_full_model:
                del model
            elif kind is None:
                restored = method.unload(model)
                if restored is None:  # cannot detach (e.g. a stack): reload a clean base
                    base, tokenizer, device = _load_base(config, summary)
                else:
                    base = restored
        except Exception as exc:  # one broken artifact must not stop the others: say why, start clean
            summary.skipped.append((result["run_id"], f"could not score: {type(exc).__name__}: {exc}"))
            log(f"[red]could not score[/] {result['slug']}: {type(exc).__name__}: {exc}")
            base, tokenizer, device = _load_base(config, summary)
            wrapper, wrapper_kind, active = None, None, None


def _record(run_dir: Path, result: dict, scores: dict, tasks: list[str], limit, num_fewshot) -> None:
    """Add the scores (and forgetting, when the reference row has general_ppl) to result.json, and rewrite
    the kept weights' model card so its `model-index` carries them too."""
    from harness.modelcard import write_card
    from harness.recipe import forgetting

    fresh = store.read_result(run_dir) or result  # re-read: never drop what another process wrote
    fresh["metrics"].update(scores)
    reference = fresh["spec"].get("reference")
    base = store.read_result(run_dir.parent / reference) if reference else None
    if base is not None:
        fresh["metrics"].update(forgetting(fresh["metrics"], base.get("metrics") or {}))
    fresh.setdefault("task_meta", {}).update({t: task_key(t, limit, num_fewshot) for t in tasks})
    store.write_json_atomic(run_dir / "result.json", fresh)
    write_card(run_dir, fresh)


def dump(summary: Summary) -> str:
    return json.dumps({"scored": len(summary.scored), "base_loads": summary.base_loads}, indent=None)
