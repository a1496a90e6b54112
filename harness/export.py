"""`ftbench export`: a finished run's kept weights as a folder ready to upload to the Hub, as its adapter or
merged into the base model (safetensors), with its model card."""

from __future__ import annotations

import shutil
from pathlib import Path

from harness import modelcard, store
from harness.errors import ConfigError

__all__ = ["export", "find_run"]

_RUN_FIELD = "RUN"


def find_run(run: str, root: Path) -> Path:
    """The folder of the finished run that `run` names (`[EXP/]RUN`: a run id, slug or hash), with kept weights.

    Raises:
        ConfigError: no such run, several, an unfinished or failed one, or one that kept no weights; the
            message lists the runs that can be exported.
    """
    experiment, _, name = run.rpartition("/")
    found = store.match_runs(name, root, experiment=experiment or None) if name else []
    if len(found) > 1:
        raise ConfigError.one("", _RUN_FIELD, f"`{run}` names {len(found)} runs; pass one as EXP/RUN_ID: "
                              + ", ".join(f"{d.parent.name}/{d.name}" for d in found[:10]))
    if not found:
        raise ConfigError.one("", _RUN_FIELD, f"no run `{run}` under {root}. {_exportable(root, experiment)}")
    [directory] = found
    result, damage = store.inspect(directory)
    if result is None or result.get("status") != "ok":
        state = f"damaged ({damage})" if damage else "unfinished" if result is None else f"`{result.get('status')}`"
        raise ConfigError.one("", _RUN_FIELD, f"run `{directory.parent.name}/{directory.name}` is {state}: only "
                              f"finished `ok` runs export. {_exportable(root, directory.parent.name)}")
    if not (directory / "adapter").is_dir():
        raise ConfigError.one("", _RUN_FIELD, f"run `{directory.parent.name}/{directory.name}` kept no weights "
                              "(`train.save_weights: adapter` keeps adapters only; full copies need `all`). "
                              f"{_exportable(root, directory.parent.name)}")
    return directory


def _exportable(root: Path, experiment: str | None) -> str:
    """'Runs with kept weights: …' (the first 12), or where none are."""
    bases = [store.experiment_dir(experiment, root)] if experiment else [d for d in _folders(root)]
    runs = [f"{d.parent.name}/{d.name}" for base in bases for d in _folders(base)
            if not d.name.startswith(".") and (d / "adapter").is_dir() and store.status_of(d) == "ok"]
    if not runs:
        return f"No finished run under {root} kept weights."
    more = f" (and {len(runs) - 12} more)" if len(runs) > 12 else ""
    return "Runs with kept weights: " + ", ".join(runs[:12]) + more + "."


def _folders(base: Path) -> list[Path]:
    try:
        return [d for d in sorted(Path(base).iterdir()) if d.is_dir() and not d.name.startswith(".")]
    except OSError:
        return []


def export(run: str, to: Path, *, merged: bool = False, root: Path | None = None) -> Path:
    """Write run `run`'s weights and model card into `to` (created; it must not exist or be empty).

    Args:
        merged: merge the adapter into the base model and write that model (safetensors) with its tokenizer;
            otherwise copy the adapter folder as the run kept it.

    Raises:
        ConfigError: an unknown or unexportable run, a `to` that holds files, or `merged` for a method that does
            not merge into the base weights.
    """
    root = Path(root) if root is not None else store.results_root()
    directory = find_run(run, root)
    to = Path(to)
    if to.exists() and (not to.is_dir() or any(to.iterdir())):
        raise ConfigError.one("", "--to", f"{to} exists and is not an empty folder: pick a new one")
    result = store.read_result(directory)
    examples = store.read_examples(directory)
    adapter = directory / "adapter"
    if not merged:
        shutil.copytree(adapter, to, dirs_exist_ok=True)
        library = modelcard.library_of(to)
        modelcard.save_card(modelcard.build_card(result, examples, library=library), to)
        return to
    model, tokenizer = _merged(result, adapter, directory)
    to.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(to, safe_serialization=True)
    tokenizer.save_pretrained(to)
    modelcard.save_card(modelcard.build_card(result, examples, library="transformers", merged=True), to)
    return to


def _merged(result: dict, adapter: Path, directory: Path):
    """(the run's model with its weights merged into the base, in full precision on CPU; its tokenizer)."""
    from harness import models
    from harness.config import RUN_KEYS, build_run_config
    from harness.context import RunContext

    spec = result["spec"]
    cfg = build_run_config({k: spec[k] for k in RUN_KEYS if k in spec}, file=str(directory / "spec.yaml"))
    method = cfg.method.build()
    if not (method.saves_full_model or method.merges):
        raise ConfigError.one("", "--merged", f"method `{cfg.method.name}` does not merge into the base weights; "
                              "export it as an adapter (without --merged)")
    # merged weights are full precision: a 4-bit base (QLoRA) is loaded unquantized and the adapter merged into it
    base_cfg = cfg.model.model_copy(update={"load_in_4bit": False, "dtype": "float32"})
    try:
        base, tokenizer = models.load(base_cfg, "cpu")
    except models.ModelLoadError as exc:
        raise ConfigError.one("", _RUN_FIELD, f"cannot merge: {exc}") from None
    ctx = RunContext(spec=cfg, run_dir=directory, device="cpu", total_steps=0)
    model = method.load(base, adapter, ctx)
    if not method.saves_full_model:
        if not hasattr(model, "merge_and_unload"):
            raise ConfigError.one("", "--merged", f"method `{cfg.method.name}`'s weights cannot be merged here; "
                                  "export it as an adapter (without --merged)")
        model = model.merge_and_unload()
    return model, tokenizer
