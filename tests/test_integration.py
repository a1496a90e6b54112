"""End to end through the CLI: the result contract, W&B offline without leaking a key, and one
short LoRA run on the real SmolLM2-135M."""

import math
import socket

import pytest
import yaml

from conftest import PROJECT_ROOT, expand_file, metric_lines, read_result, run_cli, run_dirs, tiny_base, write_experiment
from harness import store
from harness.contention import EVIDENCE_KEYS

RESULT_KEYS = ["run_id", "experiment", "slug", "status", "error", "spec", "metrics", "env", "started_at",
               "finished_at", "task_meta"]


@pytest.mark.parametrize("method", ["lora", "full"])
def test_result_contract(tiny_sweep, method):
    spec = tiny_sweep.by_method(method)
    directory = tiny_sweep.dir_of(spec)
    result = read_result(directory)

    assert list(result) == RESULT_KEYS
    assert result["status"] == "ok" and result["error"] is None
    assert (result["run_id"], result["slug"], result["experiment"]) == (spec.run_id, spec.slug, "tiny")
    assert result["started_at"] <= result["finished_at"]

    metrics = result["metrics"]
    for key in store.METRIC_KEYS:
        assert metrics.get(key) is not None, key
    assert math.isfinite(metrics["eval_loss"]) and metrics["eval_ppl"] == pytest.approx(math.exp(metrics["eval_loss"]))
    assert metrics["train_tokens"] > 0 and metrics["train_tokens_per_s"] > 0
    assert metrics["adapter_bytes"] > 0
    assert metrics["total_params"] > metrics["trainable_params"] > 0 if method == "lora" else \
        metrics["total_params"] == metrics["trainable_params"]
    assert metrics["trainable_pct"] == pytest.approx(100 * metrics["trainable_params"] / metrics["total_params"])
    # latency: medians and IQRs over latency_prompts × latency_repeats timed generates (values not asserted)
    assert metrics["latency_samples"] == spec.config.eval.latency_prompts * spec.config.eval.latency_repeats == 5
    for key in ("infer_prefill_ms", "infer_decode_ms_per_token"):
        assert metrics[key] > 0 and math.isfinite(metrics[f"{key}_iqr"]) and metrics[f"{key}_iqr"] >= 0, key
    if method == "lora":  # peft's own count agrees with ours; LoRA merges, and its merged latency is measured
        assert metrics["trainable_params_peft"] == metrics["trainable_params"]
        assert metrics["merge_s"] >= 0 and metrics["infer_decode_ms_per_token_merged"] > 0
        assert math.isfinite(metrics["infer_decode_ms_per_token_merged_iqr"]) and metrics["infer_prefill_ms_merged"] > 0
        assert metrics["infer_decode_ms_per_token_merged_iqr"] >= 0 and metrics["infer_prefill_ms_merged_iqr"] >= 0
    else:
        assert metrics["trainable_params_peft"] is None and metrics["merge_s"] is None
        assert {k: metrics[k] for k in metrics if "_merged" in k} == dict.fromkeys(
            ["infer_prefill_ms_merged", "infer_decode_ms_per_token_merged", "infer_prefill_ms_merged_iqr",
             "infer_decode_ms_per_token_merged_iqr"])  # present, null: nothing merged

    env = result["env"]
    for key in ("git_sha", "git_dirty", "torch", "transformers", "peft", "python"):
        assert key in env, key
    assert env["git_sha"] and isinstance(env["git_dirty"], bool)
    assert "hostname" not in env and "host" not in env
    assert socket.gethostname() not in [str(v) for v in env.values()]
    # the contention evidence (harness.contention): a CPU run lists no GPU processes
    assert all(key in env for key in EVIDENCE_KEYS)
    assert isinstance(env["contended"], bool) and (env["contention"] is None) == (not env["contended"])
    assert env["cpu_time_s"] > 0 and env["watched_s"] == pytest.approx(metrics["wall_s"], abs=1.0)
    assert env["sweep_cpu_cores"] > 0 and env["others_cpu_cores"] >= 0 and env["gpu_other_processes"] is None

    # the resolved spec is in spec.yaml and in the result
    on_disk = yaml.safe_load((directory / "spec.yaml").read_text())
    assert result["spec"] == on_disk
    assert on_disk["method"]["name"] == method and on_disk["train"]["max_steps"] == 3
    assert (directory / "run.log").stat().st_size > 0

    # one metrics line per step
    rows = metric_lines(directory)
    assert [r["step"] for r in rows] == [1, 2, 3]
    for row in rows:
        for key in ("loss", "lr", "tokens_per_s"):
            assert isinstance(row[key], (int, float)) and math.isfinite(row[key]), (key, row)

    # weights: a LoRA adapter is kept, a full copy is not (save_weights: adapter); no temp folders left
    names = sorted(p.name for p in directory.iterdir())
    if method == "lora":
        assert (directory / "adapter" / "adapter_model.safetensors").is_file()
        assert (directory / "adapter" / "adapter_config.json").is_file()
    else:
        assert "adapter" not in names
    assert set(names) <= {"adapter", "examples.json", "metrics.jsonl", "result.json", "run.log", "spec.yaml"}, names


def test_run_ids_match_directories(tiny_sweep):
    assert run_dirs(tiny_sweep.results, "tiny") == sorted(tiny_sweep.dir_of(s) for s in tiny_sweep.specs)


def test_wandb_offline_without_leaking_the_key(tmp_path, monkeypatch):
    secret = "fake-secret-123"
    monkeypatch.setenv("WANDB_MODE", "offline")  # explicit: with a key set, wandb would otherwise go online
    monkeypatch.setenv("WANDB_API_KEY", secret)
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    results = tmp_path / "results"
    path = write_experiment(tmp_path / "exp", "tracked", base=tiny_base(
        tracking={"backend": "wandb", "project": "ftbench-tests", "tags": ["test"]}))
    res = run_cli("run", str(path), "--results", str(results))
    assert res.code == 0, res.out + res.err
    [directory] = run_dirs(results, "tracked")
    assert read_result(directory)["status"] == "ok"

    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, list(tmp_path.rglob("*"))
    assert list(runs[0].glob("*.wandb")), "the offline run holds no data"
    assert not (directory / "wandb").exists()

    leaks = [p for p in tmp_path.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
    assert leaks == []


@pytest.mark.slow
def test_real_model_lora_learns(tmp_path):
    """A few LoRA steps on SmolLM2-135M-Instruct lower the validation loss of the untouched model."""
    from harness import models
    from harness.data import DATASETS
    from harness.data.base import split
    from harness.data.tokenize import encode_all, make_collator
    from harness.evaluate import token_loss

    base = {
        "model": "smollm2-135m",
        "data": {"name": "chatterbot", "n_train": 32, "n_val": 16, "n_test": 0},
        "method": {"name": "lora", "r": 8, "alpha": "2*r"},
        "train": {"max_steps": 6, "micro_batch": 4, "lr": 5.0e-4, "seq_len": 128},
        "eval": {"latency_prompts": 1, "latency_new_tokens": 4},
        "tracking": "none",
    }
    results = tmp_path / "results"
    path = write_experiment(tmp_path, "real", base=base)
    res = run_cli("run", str(path), "--results", str(results))
    assert res.code == 0, res.out + res.err
    [spec] = expand_file(path)
    result = read_result(results / "real" / spec.run_id)
    assert result["status"] == "ok"
    metrics = result["metrics"]
    assert metrics["total_params"] > 130_000_000
    assert 0 < metrics["trainable_pct"] < 5
    assert metrics["eval_ppl"] is not None and math.isfinite(metrics["eval_ppl"])
    losses = [r["loss"] for r in metric_lines(results / "real" / spec.run_id)]
    assert len(losses) == 6 and all(math.isfinite(x) for x in losses)

    # the same validation set, scored by the untouched base model
    cfg = spec.config
    model, tok = models.load(cfg.model, "cpu")
    val = encode_all(tok, split(DATASETS.get("chatterbot")().records(cfg.data), cfg.data).val, cfg.data,
                     cfg.train.seq_len)
    base_loss, count = token_loss(model, val, make_collator(tok, cfg.train.packing), cfg.eval.batch_size, "cpu")
    assert count == metrics["eval_tokens"]
    # measured: 3.26 after training vs 3.86 before (deterministic on CPU)
    assert metrics["eval_loss"] < base_loss - 0.1, (metrics["eval_loss"], base_loss, losses)


#: one grid entry of method_zoo_smoke.yaml per distinct path through the recipe: nothing trained, a full
#: copy, a 4-bit base, virtual tokens, a prefix cache, our own modules with AdapterDrop, a peft config
#: by name whose init needs real data, and a stack (every method also trains, saves, reloads, generates
#: and merges in-process in test_methods.py)
ZOO_PATHS = ("none", "full", "qlora", "{'name': 'prompt_tuning', 'num_virtual_tokens': 8, 'init': 'random'}",
             "{'name': 'prefix_tuning', 'num_virtual_tokens': 8, 'projection': True}",
             "{'name': 'adapter', 'placement': 'parallel', 'adapterdrop': 1}",
             "{'name': 'peft', 'config': 'ShiraConfig', 'r': 4, 'target_modules': 'all-linear'}", "['qlora', 'adapter']")


def test_method_zoo_smoke_runs_every_recipe_path(tmp_path):
    """experiments/method_zoo_smoke.yaml names every built-in method; one entry per recipe path runs
    end to end through the CLI and ends `ok`."""
    from harness.methods import METHODS

    source = PROJECT_ROOT / "experiments" / "method_zoo_smoke.yaml"
    built_in = {n for n in METHODS.names() if METHODS.get(n).__module__.startswith("harness.methods.")}
    assert {s.config.method.name for s in expand_file(source)} == built_in
    raw = yaml.safe_load(source.read_text())
    chosen = [m for m in raw["grid"]["method"] if str(m) in ZOO_PATHS]
    assert len(chosen) == len(ZOO_PATHS), [str(m) for m in raw["grid"]["method"]]
    path = write_experiment(tmp_path, "method_zoo_smoke", base=raw["base"], grid={"method": chosen})
    specs = expand_file(path)
    results = tmp_path / "results"
    res = run_cli("run", str(path), "--results", str(results), "--workers", "2")
    assert res.code == 0, res.out + res.err
    for spec in specs:
        result = read_result(results / "method_zoo_smoke" / spec.run_id)
        assert result["status"] == "ok", (spec.slug, result["error"])
        if spec.config.method.name == "none":  # the untouched base: nothing trained, nothing saved
            assert result["metrics"]["trainable_params"] == 0 and result["metrics"]["adapter_bytes"] == 0
        else:
            assert result["metrics"]["adapter_bytes"] > 0 and result["metrics"]["trainable_params"] > 0
