"""Measurements: peak memory per phase, parameter counts, bytes on disk, latency, environment."""

from __future__ import annotations

import ctypes
import os
import platform
import subprocess
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import psutil

#: version of the cost figures' definitions (memory, speed, latency); results without it were measured
#: before version 2: CPU memory as RSS growth over the phase start, speed over all of train(), latency
#: from one timing per prompt
COST_SEMANTICS = 2

# Fixed prompts so latency figures compare across runs, methods and experiments.
LATENCY_PROMPTS = [
    "What is the capital of France?",
    "Explain what a neural network is in one sentence.",
    "Write a short greeting for a new colleague.",
    "What is two plus two?",
    "Name three colours of the rainbow.",
    "Why is the sky blue?",
    "Give me a tip for learning Python.",
    "What does a compiler do?",
]


def _trim_heap() -> None:
    """Return freed heap to the OS, so a phase's RSS is what it holds, not what an earlier one freed."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMemory:
    """Absolute peak memory of a phase in MiB, weights included, the same definition on every device.

    CUDA: `torch.cuda.max_memory_allocated` (`peak_mb`) and `max_memory_reserved` (`reserved_mb`,
    what meets the OOM limit), reset at the phase start after emptying the cache. CPU: the process's
    resident set size, its value at the start included, sampled every `interval` seconds (freed heap
    is returned to the OS first); `reserved_mb` stays None. `paused()` leaves a stretch out of the
    phase (a periodic evaluation inside training).
    """

    def __init__(self, device: str, interval: float = 0.02):
        self.device = device
        self.interval = interval
        self.peak_mb: float | None = None
        self.reserved_mb: float | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._paused = False
        self._max = self._max_reserved = 0

    def __enter__(self) -> "PeakMemory":
        import gc

        gc.collect()
        if self.device == "cuda":
            self._reset_cuda()
        else:
            _trim_heap()
            self._proc = psutil.Process()
            self._max = self._proc.memory_info().rss
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _reset_cuda(self) -> None:
        import torch

        torch.cuda.synchronize()
        torch.cuda.empty_cache()  # what an earlier phase cached is not this phase's reservation
        torch.cuda.reset_peak_memory_stats()

    def _fold_cuda(self) -> None:
        import torch

        torch.cuda.synchronize()
        self._max = max(self._max, torch.cuda.max_memory_allocated())
        self._max_reserved = max(self._max_reserved, torch.cuda.max_memory_reserved())

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:  # a reading taken under the lock while not paused predates any paused stretch
                if not self._paused:
                    self._max = max(self._max, self._proc.memory_info().rss)

    @contextmanager
    def paused(self):
        """Leave what runs inside out of this phase's peak."""
        if self.device == "cuda":
            self._fold_cuda()
        else:
            with self._lock:
                self._paused = True
        try:
            yield
        finally:
            import gc

            gc.collect()
            if self.device == "cuda":
                self._reset_cuda()
            else:
                _trim_heap()
                with self._lock:
                    self._paused = False

    def __exit__(self, *exc) -> None:
        if self.device == "cuda":
            self._fold_cuda()
            self.reserved_mb = self._max_reserved / 2**20
        else:
            self._stop.set()
            self._thread.join()
            self._max = max(self._max, self._proc.memory_info().rss)
        self.peak_mb = self._max / 2**20


def _tensor_bytes(tensors) -> int:
    """Bytes of distinct tensor storages among `tensors` (tied or shared storage counted once)."""
    import torch

    seen, total = set(), 0
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.device.type != "meta":
            key = (t.device, t.untyped_storage().data_ptr())
            if key not in seen:
                seen.add(key)
                total += t.untyped_storage().nbytes()
    return total


def _quant_state_tensors(param) -> list:
    """The tensors a bitsandbytes 4-bit weight keeps beside its packed values (block scales, nested ones)."""
    state = getattr(param, "quant_state", None)
    out = []
    while state is not None:
        out += [getattr(state, name, None) for name in ("absmax", "code", "offset")]
        state = getattr(state, "state2", None)
    return out


def weight_bytes(model) -> tuple[int, int]:
    """(all weights, trainable weights) in bytes as stored: parameters and buffers in their dtype,
    4-bit weights packed, with their quantization scales."""
    params = list(model.parameters())
    extra = [t for p in params for t in _quant_state_tensors(p)]
    total = _tensor_bytes([*params, *model.buffers(), *extra])
    trainable = _tensor_bytes([p for p in params if p.requires_grad])
    return total, trainable


def grad_bytes(model) -> int:
    """Bytes of the gradients the parameters hold now."""
    return _tensor_bytes(p.grad for p in model.parameters() if p.grad is not None)


def optimizer_bytes(optimizer) -> int:
    """Bytes of the optimizer's state tensors (moments, 8-bit scales, ...), read after a step."""
    state = getattr(optimizer, "state", {}) or {}
    return _tensor_bytes(t for per_param in state.values() for t in per_param.values())


def count_params(model) -> tuple[int, int]:
    """(trainable, total) parameters; 4-bit weights count as their unpacked number of values."""
    trainable = total = 0
    for param in model.parameters():
        n = param.numel()
        if param.__class__.__name__ == "Params4bit":
            n *= 2 * getattr(getattr(param, "quant_storage", None), "itemsize", 1)
        total += n
        if param.requires_grad:
            trainable += n
    return trainable, total


def matmul_params(model) -> int:
    """Parameters a token passes through as matrix products: all of them (4-bit unpacked) less the
    input embedding table, which is a lookup, unless the output head shares it."""
    _, total = count_params(model)
    embed = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    config = getattr(model, "config", None)
    if embed is not None and not getattr(config, "tie_word_embeddings", False):
        total -= embed.weight.numel()
    return total


def train_flops_per_token(model, trainable: int) -> int:
    """Training FLOPs per token: 2·N forward + 2·N backward to the activations + 2·N_trainable for the
    weight gradients (6·N for full fine-tuning), N = `matmul_params`. Attention scores are left out,
    and a method whose gradients stop above the bottom layer is overcounted: an upper bound."""
    return 4 * matmul_params(model) + 2 * trainable


#: dense bf16/fp16 tensor-core peak TFLOP/s by device name (first match wins: L40S before L4)
PEAK_TFLOPS = [("H200", 989.0), ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("A100", 312.0),
               ("L40S", 362.0), ("L4", 121.0)]


def peak_tflops(device: str, dtype: str | None) -> float | None:
    """The device's peak TFLOP/s for the run's dtype: `$FTBENCH_PEAK_TFLOPS` if set, else from
    PEAK_TFLOPS for a bf16/fp16 run on a listed GPU; None otherwise (a CPU, fp32)."""
    given = os.environ.get("FTBENCH_PEAK_TFLOPS")
    if given:
        try:
            return float(given)
        except ValueError:
            return None
    if device != "cuda" or dtype not in ("bfloat16", "float16"):
        return None
    import torch

    name = torch.cuda.get_device_name(0)
    return next((peak for key, peak in PEAK_TFLOPS if key in name), None)


def device_name(device: str | None) -> str:
    """What `env.device_name` records: the GPU's name on CUDA, else the processor's."""
    if device == "cuda":
        import torch

        return torch.cuda.get_device_name(0)
    return platform.processor() or platform.machine()


def dir_bytes(path: Path) -> int:
    """Bytes of every file under `path`."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    import numpy as np

    return float(np.percentile(values, q))


def clock(device: str) -> float:
    """`time.perf_counter()`, after waiting for the GPU's queued work on CUDA (so a stamp is when it finished)."""
    if device == "cuda":
        import torch

        torch.cuda.synchronize()
    return time.perf_counter()


class TokenStamps:
    """A logits processor that stamps `time.perf_counter()` each time generation calls it: once per
    new token, after that step's forward (CUDA synchronized first). It returns the scores untouched."""

    def __init__(self, device: str):
        self.device = device
        self.stamps: list[float] = []

    def __call__(self, input_ids, scores):
        self.stamps.append(clock(self.device))
        return scores


def latency(model, tokenizer, prompts: list[str], new_tokens: int, device: str, repeats: int = 5,
            suffix: str = "") -> dict:
    """Greedy-generation latency, batch 1: after one warm-up generate, `repeats` timed generates of
    `new_tokens` per prompt, each timed inside the one call by per-token stamps (`TokenStamps`).

    Prefill is start → first stamp; decode ms/token is (last stamp − first stamp) / (new_tokens − 1).
    Returns the medians and IQRs (p75 − p25) over all prompt × repeat samples as result keys
    (`infer_prefill_ms<suffix>`, `..._iqr`, `infer_decode_ms_per_token<suffix>`, `..._iqr`) and
    `latency_samples`.
    """
    import torch
    from transformers import LogitsProcessorList

    def timed(ids) -> tuple[float, float]:
        stamps = TokenStamps(device)
        start = clock(device)
        model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                       min_new_tokens=new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                       logits_processor=LogitsProcessorList([stamps]))
        first, last = stamps.stamps[0], stamps.stamps[-1]
        return (first - start) * 1000, (last - first) * 1000 / (new_tokens - 1)

    was_training = model.training
    model.eval()
    with torch.inference_mode():
        encoded = [tokenizer(p, return_tensors="pt", add_special_tokens=False)["input_ids"].to(device) for p in prompts]
        timed(encoded[0])  # warm-up
        prefill, decode = zip(*(timed(ids) for ids in encoded for _ in range(repeats)))
    model.train(was_training)

    def iqr(values):
        return percentile(values, 75) - percentile(values, 25)

    return {f"infer_prefill_ms{suffix}": percentile(prefill, 50), f"infer_prefill_ms{suffix}_iqr": iqr(prefill),
            f"infer_decode_ms_per_token{suffix}": percentile(decode, 50),
            f"infer_decode_ms_per_token{suffix}_iqr": iqr(decode), "latency_samples": len(prefill)}


def _git(*args: str) -> str | None:
    try:
        root = Path(__file__).resolve().parent.parent
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def env_info(device: str | None = None) -> dict:
    """Library versions, device, CPU/GPU counts and the project's git sha + dirty flag (no hostname)."""
    from importlib.metadata import PackageNotFoundError, version

    info: dict = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "datasets"):
        try:
            info[pkg] = version(pkg)
        except PackageNotFoundError:
            info[pkg] = None
    info["cpu_count"] = os.cpu_count()
    info["torch_threads"] = None
    info["gpu_count"] = 0
    info["device"] = device
    info["cost_semantics"] = COST_SEMANTICS
    info["device_name"] = device_name(device)
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        info["gpu_count"] = torch.cuda.device_count()
    except ImportError:
        pass
    sha = _git("rev-parse", "HEAD")
    info["git_sha"] = sha
    status = _git("status", "--porcelain", "--untracked-files=no")
    info["git_dirty"] = None if status is None else bool(status)
    return info
