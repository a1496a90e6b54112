"""Hugging Face Hub model cards (`README.md` with `model-index` results) for the weights a run keeps."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from harness import store

__all__ = ["CARD_FILE", "HUB_IDS", "build_card", "library_of", "ratio_interval", "write_card"]

CARD_FILE = "README.md"
#: built-in model aliases → the hub id of the weights they are (a random-init test model has none)
HUB_IDS = {"smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct"}
#: the bootstrap of the report's intervals (harness.report.stats.bootstrap_ratio_ci): same replicates, seed, level
N_BOOT, LEVEL, SEED = 2000, 0.95, 0
_BLOCK_CELLS = 2_000_000
_SPLITS = {"validation": ("eval_loss", "eval_ppl"), "test": ("test_loss", "test_ppl")}
#: result keys shown as cost figures: (key, model-index metric type, label, unit)
_COSTS = (("peak_mem_train_mb", "peak_train_memory_mib", "peak training memory", "MiB"),
          ("peak_mem_eval_mb", "peak_eval_memory_mib", "peak evaluation memory", "MiB"),
          ("train_tokens_per_s", "train_tokens_per_second", "training throughput", "tokens/s"),
          ("infer_decode_ms_per_token", "decode_ms_per_token", "decode latency", "ms/token"),
          ("infer_prefill_ms", "prefill_ms", "prefill latency", "ms"),
          ("adapter_bytes", "artifact_bytes", "saved weights", "bytes"),
          ("trainable_params", "trainable_params", "trainable parameters", ""))


def library_of(folder: Path) -> str:
    """`peft` for a peft adapter folder, `transformers` for a full model, `ftbench` for ftbench's own adapters."""
    import json

    folder = Path(folder)
    if (folder / "config.json").is_file() and any(folder.glob("*.safetensors")):
        return "transformers"
    try:
        config = json.loads((folder / "adapter_config.json").read_text())
    except (OSError, ValueError):
        return "ftbench"
    return "peft" if isinstance(config, dict) and "peft_type" in config else "ftbench"


def ratio_interval(sums, counts=None) -> tuple[float, float, float] | None:
    """(Σsums ÷ Σcounts, low, high): the report's 95% percentile bootstrap over examples, or None with fewer
    than two finite examples. Numerically `harness.report.stats.bootstrap_ratio_ci` (a test holds them equal),
    without importing scipy into a run."""
    s = np.asarray(sums, dtype=float).ravel()
    c = np.ones_like(s) if counts is None else np.asarray(counts, dtype=float).ravel()
    if len(s) != len(c):
        return None
    x = np.column_stack([s, c]) if s.size else np.empty((0, 2))
    x = x[np.isfinite(x).all(axis=1)]
    if len(x) < 2 or x[:, 1].sum() <= 0:
        return None
    n, rng = len(x), np.random.default_rng(SEED)
    totals = np.empty((N_BOOT, 2))
    step = max(1, _BLOCK_CELLS // n)
    for start in range(0, N_BOOT, step):
        rows = min(step, N_BOOT - start)
        totals[start:start + rows] = rng.multinomial(n, np.full(n, 1 / n), size=rows) @ x
    with np.errstate(divide="ignore", invalid="ignore"):
        boot = totals[:, 0] / totals[:, 1]
    low, high = np.nanquantile(boot, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
    return float(x[:, 0].sum() / x[:, 1].sum()), float(low), float(high)


def _figures(result: dict, examples: dict | None) -> list[dict]:
    """Every measured quality figure: {key, split, metric, value, low, high, n} (bounds None without examples)."""
    metrics = result.get("metrics") or {}
    out = []
    for split, (loss_key, ppl_key) in _SPLITS.items():
        record = ((examples or {}).get("splits") or {}).get(split) or {}
        ci = ratio_interval(record["nll"], record.get("tokens")) if record.get("nll") else None
        n = len(record.get("nll") or [])
        for key, transform in ((loss_key, float), (ppl_key, math.exp)):
            if metrics.get(key) is None:
                continue
            low, high = (transform(ci[1]), transform(ci[2])) if ci else (None, None)
            out.append({"key": key, "split": split, "metric": "perplexity" if key.endswith("ppl") else "loss",
                        "value": metrics[key], "low": low, "high": high, "n": n or None})
    tasks = (examples or {}).get("tasks") or {}
    for key, value in sorted(metrics.items()):
        parts = key.split(".")
        if len(parts) != 3 or parts[0] != "task" or not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        per_doc = (tasks.get(parts[1]) or {}).get(parts[2])
        ci = ratio_interval(per_doc) if isinstance(per_doc, list) and per_doc else None
        out.append({"key": key, "split": parts[1], "metric": parts[2], "value": value,
                    "low": ci[1] if ci else None, "high": ci[2] if ci else None,
                    "n": len(per_doc) if isinstance(per_doc, list) else None, "task": parts[1]})
    return out


def _num(value: Any) -> Any:
    """A figure rounded for reading (6 significant digits); ints stay ints."""
    if isinstance(value, bool) or not isinstance(value, float) or not math.isfinite(value):
        return value
    return float(f"{value:.6g}")


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1e5 else f"{value:,.0f}"
    return f"{value:,}" if isinstance(value, int) else str(value).replace("|", "\\|")


def build_card(result: dict, examples: dict | None, *, library: str, merged: bool = False):
    """The model card of a finished run (`result.json`'s record and its `examples.json`).

    Args:
        library: `peft`, `transformers` or `ftbench` (`library_of` the weights' folder).
        merged: the weights are the adapter merged into the base (an export), not the adapter itself.

    Returns:
        a `huggingface_hub.ModelCard`.
    """
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    spec, metrics, env = result.get("spec") or {}, result.get("metrics") or {}, result.get("env") or {}
    model, data, method, train = (spec.get(k) or {} for k in ("model", "data", "method", "train"))
    base = model.get("name", "")
    hub_id = HUB_IDS.get(base) or (base if "/" in base and not Path(base).expanduser().exists()
                                   and not base.startswith((".", "/", "~")) else None)
    data_name = data.get("name", "data")
    data_id = data.get("path") if data_name == "hf" else data_name
    sizes = {split: len(((examples or {}).get("splits") or {}).get(split, {}).get("nll") or []) or None
             for split in _SPLITS}
    figures = _figures(result, examples)
    evals = []
    for f in figures:
        task = f.get("task")
        evals.append(EvalResult(
            task_type="text-generation", dataset_type=task or str(data_id), dataset_name=task or str(data_id),
            dataset_split=None if task else f["split"], metric_type=f["metric"], metric_value=_num(f["value"]),
            metric_name=f"{'' if task else f['split'] + ' '}{f['metric']}".strip(),
            metric_config=None if f["low"] is None else f"95% bootstrap interval [{_num(f['low'])}, {_num(f['high'])}] "
                                                         f"over {f['n']} examples"))
    for key, metric_type, label, unit in _COSTS:
        if metrics.get(key) is not None:
            evals.append(EvalResult(task_type="text-generation", dataset_type=str(data_id), dataset_name=str(data_id),
                                    dataset_split="train", metric_type=metric_type, metric_value=_num(metrics[key]),
                                    metric_name=f"{label} ({unit})" if unit else label))
    method_name = method.get("name", "?")
    tags = ["ftbench", method_name, "merged" if merged else ("peft" if library == "peft" else "fine-tuned")]
    card_data = ModelCardData(
        base_model=hub_id, library_name="transformers" if merged else library, pipeline_tag="text-generation",
        tags=list(dict.fromkeys(tags)), model_name=f"{result.get('experiment')}/{result.get('slug')}",
        eval_results=evals or None,
        ftbench={"run_id": result.get("run_id"), "experiment": result.get("experiment"), "status": result.get("status"),
                 "finished_at": result.get("finished_at"), "git_sha": env.get("git_sha")})
    body = _body(result, spec, base, hub_id, library, merged, figures, sizes)
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n{body}")


def _body(result, spec, base, hub_id, library, merged, figures, sizes) -> str:
    metrics, env = result.get("metrics") or {}, result.get("env") or {}
    data, method, train = (spec.get(k) or {} for k in ("data", "method", "train"))
    method_name = method.get("name", "?")
    options = ", ".join(f"`{k}={v}`" for k, v in method.items() if k != "name") or "defaults"
    what = "merged into the base weights" if merged else {"peft": "a peft adapter", "transformers": "a full model",
                                                          "ftbench": "an ftbench adapter"}[library]
    lines = [f"# {result.get('slug')}", "",
             f"`{method_name}` fine-tune of `{hub_id or base}` ({what}), run `{result.get('run_id')}` of the "
             f"ftbench experiment `{result.get('experiment')}`. Every figure below was measured by that run."
             + (" The run trained and was measured on a 4-bit base; these weights merge its adapter into the "
                "unquantized base, so their outputs differ from the measured model's by the quantization error."
                if merged and (spec.get("model") or {}).get("load_in_4bit") else ""), "",
             "## Training", "", "| | |", "|---|---|",
             f"| base model | `{hub_id or base}`" + (f" (alias `{base}`)" if hub_id and hub_id != base else "") + " |",
             f"| library | {'transformers (merged)' if merged else library} |",
             f"| method | `{method_name}`: {options} |"]
    objective = spec.get("objective")
    if objective:
        lines.append(f"| objective | `{objective.get('name', objective)}` |" if isinstance(objective, dict)
                     else f"| objective | `{objective}` |")
    source = data.get("path") or data.get("name")
    lines += [f"| data | `{source}` (template `{data.get('template', 'auto')}`, split seed {data.get('split_seed', 0)}) |",
              f"| examples | train {data.get('n_train') or 'all'}, validation {sizes.get('validation') or data.get('n_val')}, "
              f"test {sizes.get('test') or data.get('n_test', 0)} |",
              f"| budget | {_budget(train)}; {_cell(metrics.get('train_tokens'))} training tokens in "
              f"{_cell(metrics.get('train_s'))} s |",
              f"| optimizer | `{train.get('optimizer')}`, lr {train.get('lr')} ({train.get('scheduler')}, warmup "
              f"{train.get('warmup_ratio')}), batch {train.get('micro_batch')} × {train.get('grad_accum')}, "
              f"seq_len {train.get('seq_len')} |",
              f"| seed | {spec.get('seed', 0)} |", ""]
    if figures:
        lines += ["## Results", "", "| figure | split / task | value | 95% interval | examples |", "|---|---|---|---|---|"]
        for f in figures:
            interval = "–" if f["low"] is None else f"[{_cell(f['low'])}, {_cell(f['high'])}]"
            lines.append(f"| {f['metric']} | {f['split']} | {_cell(f['value'])} | {interval} | {_cell(f['n'])} |")
        lines += ["", "Intervals: percentile bootstrap over the scored examples (2,000 resamples), as in the "
                      "ftbench report; one seed, so seed-to-seed variation is not in them.", ""]
    costs = [(label, metrics.get(key), unit) for key, _, label, unit in _COSTS if metrics.get(key) is not None]
    if costs:
        lines += ["## Cost", "", "| figure | value |", "|---|---|"]
        lines += [f"| {label} | {_cell(value)}{' ' + unit if unit else ''} |" for label, value, unit in costs]
        device = env.get("device") or env.get("device_name")
        lines += ["", f"Measured on {device or 'this machine'}" + (f" (torch {env['torch']}, transformers "
                                                                  f"{env.get('transformers')}, peft {env.get('peft')})"
                                                                  if env.get("torch") else "") + ".", ""]
    lines += ["## Use", "", "```python", *_usage(library, merged, hub_id or base), "```", ""]
    return "\n".join(lines)


def _budget(train: dict) -> str:
    if train.get("max_steps"):
        return f"{train['max_steps']} optimizer steps"
    return f"{train.get('epochs') or 1} epoch(s)"


def _usage(library: str, merged: bool, base: str) -> list[str]:
    if merged or library == "transformers":
        return ["from transformers import AutoModelForCausalLM, AutoTokenizer",
                'model = AutoModelForCausalLM.from_pretrained("THIS_FOLDER_OR_REPO")',
                'tokenizer = AutoTokenizer.from_pretrained("THIS_FOLDER_OR_REPO")']
    if library == "peft":
        return ["from peft import PeftModel", "from transformers import AutoModelForCausalLM",
                f'base = AutoModelForCausalLM.from_pretrained("{base}")',
                'model = PeftModel.from_pretrained(base, "THIS_FOLDER_OR_REPO")']
    return ["# ftbench's own adapter format: its method's `load` rebuilds it on the base model;",
            "# `ftbench export RUN --to DIR --merged` writes plain transformers weights where the method merges"]


def write_card(run_dir: Path, result: dict) -> Path | None:
    """Write the card of a finished run (`result`: its record, before or after result.json is written) into its
    kept weights' folder (`adapter/README.md`); None when the run kept no weights or the card could not be
    written (logged: a card must not cost the run its result)."""
    folder = Path(run_dir) / "adapter"
    if not folder.is_dir():
        return None
    try:
        return save_card(build_card(result, store.read_examples(run_dir), library=library_of(folder)), folder)
    except Exception as exc:  # noqa: BLE001
        logging.getLogger("ftbench").warning("no model card for %s: %s: %s", run_dir, type(exc).__name__, exc)
        return None


def save_card(card, folder: Path) -> Path:
    """Write `card` as `folder/README.md` (temp file + rename)."""
    path = Path(folder) / CARD_FILE
    tmp = path.with_name(f".{CARD_FILE}.tmp")
    tmp.write_text(str(card), encoding="utf-8")
    os.replace(tmp, path)
    return path
