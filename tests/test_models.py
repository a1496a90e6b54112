"""harness.models: aliases, local folders, hub ids (offline here: tested by their error)."""

import pytest

from harness import models
from harness.config import ModelCfg
from harness.errors import ConfigError
from harness.models import ModelLoadError


def test_aliases_registered():
    assert {"tiny-smollm2", "smollm2-135m"} <= set(models.MODELS.names())


def test_unknown_alias_message():
    with pytest.raises(ConfigError) as info:
        models.check("smollm-135m", file="e.yaml", field="model.name")
    [(file, field, message)] = info.value.problems
    assert (file, field) == ("e.yaml", "model.name")
    assert "unknown model alias `smollm-135m`" in message
    assert "Did you mean `smollm2-135m`?" in message
    assert "hub id" in message


def test_local_folder_checks(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        models.check("./no/such/model", file="e.yaml", field="model.name")
    with pytest.raises(ConfigError, match="has no config.json"):
        models.check(str(tmp_path), file="e.yaml", field="model.name")
    models.check(str(models.resolve("tiny-smollm2")), file="e.yaml", field="model.name")  # a real folder passes


def test_hub_id_passes_the_check():
    models.check("HuggingFaceTB/SmolLM2-360M", file="e.yaml", field="model.name")


def test_hub_id_offline_fails_at_load_with_a_clear_error():
    with pytest.raises(ModelLoadError) as info:
        models.load(ModelCfg(name="HuggingFaceTB/SmolLM2-360M"), "cpu")
    message = str(info.value)
    assert "HuggingFaceTB/SmolLM2-360M" in message
    assert "hub" in message.lower()


def test_resolve_alias_to_cached_folder():
    folder = models.resolve("tiny-smollm2")
    assert folder.startswith(str(models.cache_dir()))
    assert (models.cache_dir() / "tiny-smollm2" / "config.json").is_file()
    assert models.resolve("org/name") == "org/name"


def test_load_tiny_model():
    import torch

    model, tok = models.load(ModelCfg(name="tiny-smollm2"), "cpu")
    assert model.config.num_hidden_layers == 2
    assert model.dtype == torch.float32  # auto on CPU is fp32
    assert tok.pad_token is not None
    assert tok.chat_template
    assert sum(p.numel() for p in model.parameters()) < 5_000_000


def test_load_tiny_model_in_4bit():
    model, _ = models.load(ModelCfg(name="tiny-smollm2", load_in_4bit=True), "cpu")
    assert getattr(model, "is_loaded_in_4bit", False)
    assert any(p.__class__.__name__ == "Params4bit" for p in model.parameters())


def test_local_folder_loads(tmp_path):
    model, _ = models.load(ModelCfg(name=models.resolve("tiny-smollm2")), "cpu")
    assert model.config.model_type == "llama"


def test_pick_dtype():
    import torch

    assert models.pick_dtype("auto", "cpu") == torch.float32
    assert models.pick_dtype("bfloat16", "cpu") == torch.bfloat16
