"""Shared fixtures: offline environment, experiment files in tmp dirs, in-process CLI calls, and
one small finished sweep shared by the tests that only read results."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

# Set before anything imports huggingface_hub (it reads these once, at import) and inherited by
# every sweep and run process the tests start: nothing may touch the network.
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               "WANDB_MODE": "offline", "HF_HUB_DISABLE_TELEMETRY": "1"}
#: for sweeps whose output is parsed: one status line per run (rich wraps at 80 columns otherwise)
WIDE = {"COLUMNS": "200"}
os.environ.update(OFFLINE_ENV)
# a run (or a synthetic result) that writes a metric harness/metrics.py does not declare is recorded as failed
os.environ["FTBENCH_STRICT_METRICS"] = "1"
os.environ.pop("WANDB_API_KEY", None)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable  # the project's .venv python when run as `.venv/bin/python -m pytest`

#: A tiny-model run: a few seconds of training; each run is still a fresh process (~8-10 s).
TINY_BASE = {
    "model": "tiny-smollm2",
    "data": {"name": "chatterbot", "n_train": 16, "n_val": 8, "n_test": 0},
    "method": {"name": "lora", "r": 4, "alpha": "2*r"},
    "train": {"max_steps": 3, "micro_batch": 4, "lr": 1.0e-3, "seq_len": 64},
    "eval": {"latency_prompts": 1, "latency_new_tokens": 2},
    "tracking": "none",
}


def tiny_base(**sections) -> dict:
    """TINY_BASE with some sections replaced or updated (dicts are merged one level deep)."""
    base = copy.deepcopy(TINY_BASE)
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    return base


def write_experiment(directory: Path, stem: str, base: dict | None = None, grid: dict | None = None,
                     **top) -> Path:
    """Write `directory/<stem>.yaml` (keys in the given order) and return its path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    doc = {**top}
    if base is not None:
        doc["base"] = base
    if grid is not None:
        doc["grid"] = grid
    path = directory / f"{stem}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@dataclass
class CliResult:
    code: int
    out: str
    err: str


def run_cli(*argv: str) -> CliResult:
    """`harness.cli.main(argv)` in this process, with stdout/stderr captured (any fixture scope)."""
    from harness.cli import main

    out, err = io.StringIO(), io.StringIO()
    saved = {k: os.environ.get(k) for k in WIDE}
    os.environ.update(WIDE)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(argv))
            except SystemExit as exc:  # argparse errors
                code = exc.code
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return CliResult(code=code, out=out.getvalue(), err=err.getvalue())


def is_run_process(proc) -> bool:
    """A psutil process running a run: `python -m harness.run`, or a child of the launcher's fork
    server (the server's own command line names the modules it preloads, harness.run among them:
    it is not a run)."""
    import psutil

    try:
        command = " ".join(proc.cmdline())
        if "multiprocessing.forkserver" in command:
            return "multiprocessing.forkserver" in " ".join(proc.parent().cmdline())
        return "harness.run" in command
    except (psutil.Error, AttributeError):  # gone already
        return False


def run_dirs(results: Path, experiment: str) -> list[Path]:
    """Run directories of an experiment (not .locks/.archive)."""
    base = Path(results) / experiment
    if not base.is_dir():
        return []
    return sorted(d for d in base.iterdir() if d.is_dir() and not d.name.startswith("."))


def read_result(directory: Path) -> dict:
    return json.loads((Path(directory) / "result.json").read_text())


def metric_lines(directory: Path) -> list[dict]:
    """metrics.jsonl rows of a run that carry a training loss."""
    path = Path(directory) / "metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if "loss" in r]


def expand_file(path: Path, overrides: list[str] | None = None):
    """The runs of an experiment file with the ids a sweep gives them (reference rows aside)."""
    from harness.config import load_experiment
    from harness.grid import expand, with_reads

    return with_reads(expand(load_experiment(path), overrides), file=str(path))


def pytest_configure(config):
    # third-party deprecation noise that says nothing about this project
    for text in ("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning",
                 "ignore:`is_gradient_checkpointing` is deprecated:FutureWarning"):
        config.addinivalue_line("filterwarnings", text)


@pytest.fixture(autouse=True)
def _offline_env(monkeypatch, tmp_path):
    """No network, no W&B key, and no stray ./results or ./wandb in the project."""
    for key, value in OFFLINE_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("FTBENCH_RESULTS", str(tmp_path / "default-results"))
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))


@dataclass
class Sweep:
    experiment: str
    path: Path
    results: Path
    cli: CliResult
    specs: list

    def dir_of(self, spec) -> Path:
        return self.results / self.experiment / spec.run_id

    def by_method(self, name: str):
        return next(s for s in self.specs if s.config.method.name == name)


@pytest.fixture(scope="session")
def tiny_sweep(tmp_path_factory) -> Sweep:
    """A finished two-run sweep (LoRA and full FT on the tiny model), shared by read-only tests."""
    root = tmp_path_factory.mktemp("tiny_sweep")
    path = write_experiment(root / "exp", "tiny", base=tiny_base(), grid={"method": ["lora", "full"]})
    results = root / "results"
    cli = run_cli("run", str(path), "--results", str(results))
    assert cli.code == 0, cli.out + cli.err
    return Sweep(experiment="tiny", path=path, results=results, cli=cli, specs=expand_file(path))
