"""Model cards in kept weights' folders (parsed by huggingface_hub) and `ftbench export` (adapter or merged)."""

import math

import numpy as np
import pytest

from conftest import read_result, run_cli
from harness import store
from harness.modelcard import CARD_FILE, build_card, library_of, ratio_interval
from harness.report.examples import scores_of
from harness.report.stats import bootstrap_ratio_ci


def _card(folder):
    from huggingface_hub import ModelCard

    return ModelCard.load(folder / CARD_FILE)


def test_kept_adapter_carries_a_hub_model_card(tiny_sweep):
    spec = tiny_sweep.by_method("lora")
    directory = tiny_sweep.dir_of(spec)
    result = read_result(directory)
    card = _card(directory / "adapter")
    data = card.data
    assert data.library_name == "peft" and data.pipeline_tag == "text-generation"
    assert data.base_model is None  # the random-init test model has no hub id; the body names it
    assert "tiny-smollm2" in card.text and "lora" in data.tags
    assert data.model_name == f"tiny/{spec.slug}"
    assert data.ftbench["run_id"] == spec.run_id
    by_name = {e.metric_name: e for e in data.eval_results}
    val = by_name["validation perplexity"]
    assert val.dataset_split == "validation" and val.dataset_type == "chatterbot"
    assert val.metric_value == pytest.approx(result["metrics"]["eval_ppl"], rel=1e-5)
    assert by_name["validation loss"].metric_value == pytest.approx(result["metrics"]["eval_loss"], rel=1e-5)
    # the interval is the report's: the same bootstrap over the same examples
    scores = scores_of(store.read_examples(directory), "eval_loss")
    expected = bootstrap_ratio_ci(scores.sums, scores.counts)
    assert f"[{float(f'{math.exp(expected.low):.6g}')}, {float(f'{math.exp(expected.high):.6g}')}]" in \
        val.metric_config
    # cost figures: memory and throughput
    assert by_name["peak training memory (MiB)"].metric_value == pytest.approx(result["metrics"]["peak_mem_train_mb"])
    assert by_name["training throughput (tokens/s)"].metric_value == pytest.approx(
        result["metrics"]["train_tokens_per_s"], rel=1e-5)
    # the body: method options, data and split sizes, budget
    for text in ("`r=4`", "train 16, validation 8", "3 optimizer steps", "## Results", "## Cost"):
        assert text in card.text, text


def test_card_interval_equals_the_reports():
    rng = np.random.default_rng(3)
    sums, counts = rng.gamma(2.0, 3.0, 57), rng.integers(1, 40, 57).astype(float)
    mean, low, high = ratio_interval(sums, counts)
    ref = bootstrap_ratio_ci(sums, counts)
    assert (mean, low, high) == (ref.mean, ref.low, ref.high)
    values = rng.integers(0, 2, 31).astype(float)
    assert ratio_interval(values)[1:] == (bootstrap_ratio_ci(values, None).low, bootstrap_ratio_ci(values, None).high)
    assert ratio_interval([1.0], [2.0]) is None


def test_card_for_a_full_model_and_without_examples(tiny_sweep, tmp_path):
    """A full model's folder is `transformers`; a run without per-example data gets no interval."""
    result = read_result(tiny_sweep.dir_of(tiny_sweep.by_method("full")))
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"")
    assert library_of(tmp_path) == "transformers"
    card = build_card(result, None, library="transformers")
    assert "## Results" in card.text and "| – |" in card.text
    assert all(e.metric_config is None for e in card.data.eval_results)


def test_export_adapter_and_merged(tiny_sweep, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from harness import models

    spec = tiny_sweep.by_method("lora")
    adapter_out, merged_out = tmp_path / "adapter", tmp_path / "merged"
    res = run_cli("export", f"tiny/{spec.run_id}", "--to", str(adapter_out), "--results", str(tiny_sweep.results))
    assert res.code == 0, res.err
    assert {"adapter_model.safetensors", "adapter_config.json", CARD_FILE} <= {p.name for p in adapter_out.iterdir()}
    assert "hf upload" in res.out
    res = run_cli("export", spec.run_id, "--to", str(merged_out), "--merged", "--results", str(tiny_sweep.results))
    assert res.code == 0, res.err
    assert (merged_out / "model.safetensors").is_file() and (merged_out / "config.json").is_file()
    card = _card(merged_out)
    assert card.data.library_name == "transformers" and "merged" in card.data.tags
    assert card.data.eval_results  # the run's figures travel with the merged weights

    # both load; the merged model computes what the base + adapter computes
    base = AutoModelForCausalLM.from_pretrained(models.resolve("tiny-smollm2"), dtype=torch.float32)
    with_adapter = PeftModel.from_pretrained(base, str(adapter_out)).eval()
    merged = AutoModelForCausalLM.from_pretrained(merged_out, dtype=torch.float32).eval()
    ids = torch.tensor([[1, 5, 9, 42, 7, 3]])
    with torch.no_grad():
        assert torch.allclose(with_adapter(ids).logits, merged(ids).logits, atol=1e-4)


def test_export_refuses_what_it_cannot_export(tiny_sweep, tmp_path):
    res = run_cli("export", "no-such-run", "--to", str(tmp_path / "x"), "--results", str(tiny_sweep.results))
    assert res.code == 2 and "no run `no-such-run`" in res.err and "Traceback" not in res.err
    lora = tiny_sweep.by_method("lora")
    assert f"Runs with kept weights: tiny/{lora.run_id}." in res.err
    full = tiny_sweep.by_method("full")
    res = run_cli("export", full.run_id, "--to", str(tmp_path / "x"), "--results", str(tiny_sweep.results))
    assert res.code == 2 and "kept no weights" in res.err
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "f").write_text("x")
    res = run_cli("export", lora.run_id, "--to", str(tmp_path / "busy"), "--results", str(tiny_sweep.results))
    assert res.code == 2 and "not an empty folder" in res.err
    assert not (tmp_path / "x").exists()
