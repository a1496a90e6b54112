"""The dry run's time forecast (harness/forecast.py): speeds learnt from earlier runs of the store."""

from __future__ import annotations

import json

import pytest

from harness import forecast, memory
from harness.config import build_run_config
from tests.conftest import run_cli, tiny_base, write_experiment


def _earlier(root, name, method, tps, params, trainable, wall, train, device="cpu-x", contended=False):
    d = root / "old" / name
    d.mkdir(parents=True)
    result = {"run_id": name, "experiment": "old", "slug": name, "status": "ok", "error": None,
              "spec": {"model": {"name": "m"}, "method": {"name": method}},
              "metrics": {"train_tokens_per_s": tps, "total_params": params, "trainable_params": trainable,
                          "wall_s": wall, "train_s": train},
              "env": {"device_name": device, "contended": contended}, "started_at": None, "finished_at": None}
    (d / "result.json").write_text(json.dumps(result))


def _config(method="lora", **train):
    return build_run_config({"model": "m", "method": method, "data": {"n_train": 40},
                             "train": {"max_steps": 10, "micro_batch": 4, **train}}, file="x.yaml")


TOKENS = memory.BatchTokens(train=400, labels=100, eval=400, eval_labels=100, measured=True, example=50.0)


def test_the_same_method_on_the_same_device_gives_its_speed(tmp_path):
    _earlier(tmp_path, "a", "lora", 100.0, 1000, 10, wall=30.0, train=10.0)
    _earlier(tmp_path, "b", "lora", 300.0, 1000, 10, wall=50.0, train=10.0)
    _earlier(tmp_path, "c", "lora", 5.0, 1000, 10, wall=500.0, train=400.0, contended=True)  # idle ones known
    _earlier(tmp_path, "d", "lora", 5.0, 1000, 10, wall=500.0, train=400.0, device="another")  # left out
    history = forecast.History.read(tmp_path, "cpu-x")
    f = forecast.forecast(_config(), TOKENS, None, history)
    assert f.train_tokens == 10 * 4 * 50.0
    assert f.train_s == pytest.approx(2000 / 200.0) and f.rest_s == pytest.approx(30.0)  # medians
    assert f.total_s == pytest.approx(40.0) and "2 earlier lora runs" in f.basis


def test_another_method_of_the_same_model_scales_by_flops_per_token(tmp_path):
    _earlier(tmp_path, "a", "lora", 100.0, 1000, 0, wall=30.0, train=10.0)  # 4,000 FLOPs/token → 400,000 FLOP/s
    est = memory.MemoryEstimate(0, 0, 0, 0, 0, 0, 0, 0, TOKENS, params=1000, trainable_params=1000)  # full: 6,000
    f = forecast.forecast(_config("full", micro_batch=2, grad_accum=2), TOKENS, est, forecast.History.read(tmp_path, "cpu-x"))
    assert f.train_s == pytest.approx(2000 / (400_000 / 6_000))
    assert forecast.forecast(_config(), TOKENS, est, forecast.History([], "cpu-x")).total_s is None


def test_contended_runs_serve_only_when_nothing_idle_is_known(tmp_path):
    _earlier(tmp_path, "c", "lora", 50.0, 1000, 10, wall=40.0, train=20.0, contended=True)
    f = forecast.forecast(_config(), TOKENS, None, forecast.History.read(tmp_path, "cpu-x"))
    assert f.train_s == pytest.approx(2000 / 50.0) and "contended" in f.basis


def test_the_dry_run_prints_a_forecast_once_the_store_knows_the_model(tmp_path, tiny_sweep):
    path = write_experiment(tmp_path, "more", base=tiny_base(), grid={"method": ["lora", "full"]})
    result = run_cli("run", str(path), "--dry-run", "--results", str(tiny_sweep.results))
    assert result.code == 0, result.err
    assert "min (est)" in result.out and "forecast for 2 runs on" in result.out and "device-minutes" in result.out
    empty = run_cli("run", str(path), "--dry-run", "--results", str(tmp_path / "empty"))
    assert "no forecast for 2 runs" in empty.out
