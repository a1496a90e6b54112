"""Measurements: peak memory per phase, parameter counts, bytes on disk, latency, environment."""

from __future__ import annotations

import ctypes
import os
import platform
import subprocess
import threading
import time
from pathlib import Path

import psutil

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
    """Return freed heap to the OS so the next phase's RSS growth is its own."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMemory:
    """Peak memory of a phase in MiB: CUDA `max_memory_allocated` (reset at entry), or on CPU the
    growth of the process's RSS over its value at entry, sampled every `interval` seconds."""

    def __init__(self, device: str, interval: float = 0.02):
        self.device = device
        self.interval = interval
        self.peak_mb: float | None = None
        self._stop = threading.Event()

    def __enter__(self) -> "PeakMemory":
        import gc

        gc.collect()
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated()
        else:
            _trim_heap()
            self._proc = psutil.Process()
            self._base = self._max = self._proc.memory_info().rss
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self._max = max(self._max, self._proc.memory_info().rss)

    def __exit__(self, *exc) -> None:
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()
            self.peak_mb = torch.cuda.max_memory_allocated() / 2**20
        else:
            self._stop.set()
            self._thread.join()
            self._max = max(self._max, self._proc.memory_info().rss)
            self.peak_mb = (self._max - self._base) / 2**20


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


def dir_bytes(path: Path) -> int:
    """Bytes of every file under `path`."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    import numpy as np

    return float(np.percentile(values, q))


class TokenStamps:
    """A logits processor that stamps `time.perf_counter()` each time generation calls it: once per
    new token, after that step's forward (CUDA synchronized first). It returns the scores untouched."""

    def __init__(self, device: str):
        self.device = device
        self.stamps: list[float] = []

    def __call__(self, input_ids, scores):
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()
        self.stamps.append(time.perf_counter())
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
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
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
    info["device_name"] = platform.processor() or platform.machine()
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        info["gpu_count"] = torch.cuda.device_count()
        if device == "cuda":
            info["device_name"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    sha = _git("rev-parse", "HEAD")
    info["git_sha"] = sha
    status = _git("status", "--porcelain", "--untracked-files=no")
    info["git_dirty"] = None if status is None else bool(status)
    return info
