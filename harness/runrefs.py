"""Finished runs of the store as models: a teacher (`teacher: run:<id>`), a starting point
(`start: run:<id>`), an earlier stage. A run's base with its trained weights, merged when they can be."""

from __future__ import annotations

from pathlib import Path

from harness.objectives import RUN_REF


class RunRefs:
    """Turns `run:<run id or slug>` into finished runs of the store.

    Args:
        root: the results root.
        experiment: looked up first (then the whole store).
        pinned: {`run:<slug>`: run id} of the runs of the sweep this run belongs to (its spec's
            `reads`): a reference names the sweep's own run, not an older one under the same slug.
    """

    def __init__(self, root, experiment: str | None = None, pinned: dict[str, str] | None = None):
        self.root = Path(root)
        self.experiment = experiment
        self.pinned = dict(pinned or {})

    def finished(self, ref: str):
        """(that run's result, its directory, its RunConfig, None), or (None, None, None, why it
        cannot be used)."""
        from harness import store
        from harness.config import RUN_KEYS, build_run_config

        run = self.pinned.get(ref) or ref[len(RUN_REF):]
        found = store.find_runs(run, self.root, prefer=self.experiment)
        if len(found) > 1:
            return None, None, None, (f"`{run}` names {len(found)} runs of experiment `{found[0].parent.name}` "
                                      f"({', '.join(d.name for d in found)}); name one by its run id")
        directory = found[0] if found else None
        result = store.read_result(directory) if directory is not None else None
        if result is None:
            return None, None, None, f"no finished run `{run}` under {self.root}"
        for key, run_id in (result["spec"].get("reads") or {}).items():
            self.pinned.setdefault(key, run_id)  # what that run read (an earlier stage's own predecessor) stays pinned
        if result["status"] != "ok":
            return None, None, None, f"run `{run}` finished `{result['status']}`, not `ok`: its weights cannot be used"
        config = build_run_config({k: v for k, v in result["spec"].items() if k in RUN_KEYS}, file=result["run_id"])
        artifact = directory / "adapter"
        # as `ftbench eval` checks: a full-model method keeps a loadable model only with save_weights: all
        if not artifact.is_dir() or (config.method.build().saves_full_model and not (artifact / "config.json").is_file()):
            return None, None, None, f"run `{run}` kept no weights (rerun it with train.save_weights: all)"
        return result, directory, config, None

    def base_model_cfg(self, config):
        """(the ModelCfg a run's saved weights apply to, None) or (None, why it cannot be rebuilt): the
        run's `model`, or the merged model of the run it started from."""
        objective = config.objective.build()
        start = objective.start_ref(config)
        if start:
            return config.model.model_copy(update={"name": str(self.model_folder(start))}), None
        why = objective.single_model(config)
        return (None, why) if why else (config.model, None)

    def load_model(self, ref: str, device: str):
        """(model, tokenizer) of a finished run, its update merged into the base when the method can merge.

        Raises:
            ValueError: the run is missing, did not finish `ok`, or kept no weights.
        """
        from harness import models
        from harness.context import RunContext

        result, directory, config, why = self.finished(ref)
        if result is None:
            raise ValueError(why)
        base_cfg, why = RunRefs(self.root, result["experiment"], self.pinned).base_model_cfg(config)
        if base_cfg is None:
            raise ValueError(f"run `{ref[len(RUN_REF):]}` cannot be rebuilt: {why}")
        base, tokenizer = models.load(base_cfg, device)
        ctx = RunContext(spec=config, run_dir=directory, device=device, total_steps=config.train.max_steps or 1, refs=self)
        model = config.method.build().load(base, directory / "adapter", ctx)
        if hasattr(model, "merge_and_unload"):
            try:
                model = model.merge_and_unload()  # a plain model: faster forwards, honest parameter count
            except (ValueError, NotImplementedError, RuntimeError):
                pass
        return model, tokenizer

    def model_folder(self, ref: str) -> Path:
        """A safetensors model folder holding a finished run's merged weights (made once per run and
        finish time in the model cache): something `models.load` can load in any dtype or in 4-bit.

        Raises:
            ValueError: as `load_model`, or the run's weights cannot be merged into a plain model.
        """
        from harness import models

        result, _, config, why = self.finished(ref)
        if result is None:
            raise ValueError(why)
        if config.model.load_in_4bit:
            raise ValueError(f"run `{ref[len(RUN_REF):]}` trained on a 4-bit base, which cannot be saved as a "
                             "plain model to start from; start from a run on a full-precision base")
        stamp = "".join(ch for ch in (result.get("finished_at") or "") if ch.isdigit())

        def build(out: Path) -> None:
            model, tokenizer = self.load_model(ref, "cpu")
            if hasattr(model, "peft_config"):
                raise ValueError(f"run `{ref[len(RUN_REF):]}` used `{config.method.name}`, whose update cannot be "
                                 "merged into the base weights")
            model.save_pretrained(out, safe_serialization=True)
            tokenizer.save_pretrained(out)

        return models.build_cached(f"run-{result['run_id']}-{stamp}", build)


def base_model_cfg(config, root, experiment: str | None, pinned: dict[str, str] | None = None):
    """`RunRefs(root, experiment, pinned).base_model_cfg(config)`."""
    return RunRefs(root, experiment, pinned).base_model_cfg(config)
