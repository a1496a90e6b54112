"""MLflow as a tracker: the smoke experiment against a real `mlflow server` (SQLite, 127.0.0.1), read back through
MLflow's client; W&B beside it (`backend: [wandb, mlflow]`); credentials never written; spec defaults unchanged."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from conftest import PROJECT_ROOT, expand_file, read_result, run_cli, tiny_base, write_experiment
from harness import tracking
from harness.config import build_run_config

SECRET = "s3cr3t-pw-9f1c"
SMOKE = PROJECT_ROOT / "experiments" / "smoke.yaml"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    """A real MLflow tracking server on a free loopback port: its URL; its files under tmp_path/server."""
    folder = tmp_path / "server"
    folder.mkdir()
    port = _free_port()
    log = open(folder / "server.log", "wb")
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
         "--artifacts-destination", str(folder / "artifacts")],
        cwd=folder, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail("mlflow server did not start:\n" + (folder / "server.log").read_text()[-3000:])
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server and its uvicorn worker: our own process group
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def test_smoke_sweep_tracked_in_a_real_mlflow_server(tmp_path, monkeypatch, mlflow_server):
    """smoke.yaml with `backend: [wandb, mlflow]`; the server's URL (with a user and password, as a team's
    server would want) comes from $MLFLOW_TRACKING_URI. Every run is an MLflow run with the spec, every step's
    loss, the final figures and, where weights were kept, the adapter with its model card."""
    from mlflow import MlflowClient

    host = mlflow_server.removeprefix("http://")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://ftbench-user:{SECRET}@{host}")
    results = tmp_path / "results"
    res = run_cli("run", str(SMOKE), "--results", str(results), "--set", "tracking.backend=[wandb, mlflow]")
    assert res.code == 0, res.out + res.err
    specs = expand_file(SMOKE)
    client = MlflowClient(tracking_uri=mlflow_server)
    experiment = client.get_experiment_by_name("smoke")
    runs = {r.data.tags["ftbench.run_id"]: r for r in client.search_runs([experiment.experiment_id])}
    assert sorted(runs) == sorted(s.run_id for s in specs)
    for spec in specs:
        result = read_result(results / "smoke" / spec.run_id)
        run = runs[spec.run_id]
        assert run.info.status == "FINISHED" and run.info.run_name == spec.slug
        assert run.data.tags["ftbench.method"] == spec.config.method.name
        # the config: flat params and the spec itself
        assert run.data.params["method.name"] == spec.config.method.name
        assert run.data.params["train.max_steps"] == "5"
        # per-step metrics, one per logged step, and the final summary
        history = client.get_metric_history(run.info.run_id, "train/loss")
        assert [h.step for h in history] == [1, 2, 3, 4, 5]
        assert run.data.metrics["eval_loss"] == pytest.approx(result["metrics"]["eval_loss"])
        assert run.data.metrics["train_tokens_per_s"] == pytest.approx(result["metrics"]["train_tokens_per_s"])
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"spec.yaml", "metric_goals.json"} <= artifacts
        if (results / "smoke" / spec.run_id / "adapter").is_dir():  # lora, qlora (full FT keeps no copy)
            files = {a.path for a in client.list_artifacts(run.info.run_id, "adapter")}
            assert {"adapter/adapter_model.safetensors", "adapter/README.md"} <= files, files
        else:
            assert spec.config.method.name == "full" and "adapter" not in artifacts
    assert len(list(Path(os.environ["WANDB_DIR"]).glob("wandb/offline-run-*"))) == len(specs)  # W&B beside it

    # the password was used, never written: not in the store, W&B's files, run logs, nor the server's records
    leaks = [p for p in tmp_path.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert leaks == []
    assert "ftbench-user" not in (results / "smoke" / specs[0].run_id / "spec.yaml").read_text()


def test_local_store_by_default(tmp_path):
    """`backend: mlflow` without a URI: a SQLite store under the experiment's results folder, which the store
    never takes for a run."""
    from mlflow import MlflowClient

    results = tmp_path / "results"
    path = write_experiment(tmp_path / "exp", "tracked", base=tiny_base(tracking={"backend": "mlflow"}))
    res = run_cli("run", str(path), "--results", str(results))
    assert res.code == 0, res.out + res.err
    [spec] = expand_file(path)
    store_file = results / "tracked" / tracking.MLFLOW_DIR / "mlflow.db"
    assert store_file.is_file()
    client = MlflowClient(tracking_uri=f"sqlite:///{store_file}")
    [run] = client.search_runs([client.get_experiment_by_name("tracked").experiment_id])
    assert run.data.tags["ftbench.run_id"] == spec.run_id and run.data.tags["ftbench.status"] == "ok"
    assert [h.step for h in client.get_metric_history(run.info.run_id, "train/loss")] == [1, 2, 3]
    res = run_cli("ls", "tracked", "--results", str(results))
    assert res.code == 0 and "unfinished" not in res.out and ".mlflow" not in res.out


def test_defaults_leave_run_specs_unchanged():
    """Options at their defaults: the spec (so spec.yaml and the run id) is what it was before MLflow."""
    base = {"model": "tiny-smollm2", "data": {"name": "chatterbot"}, "method": "lora"}
    for given, expected in ((None, "wandb"), ("none", "none")):
        cfg = build_run_config({**base, **({"tracking": given} if given else {})}, file="x.yaml")
        assert cfg.as_dict()["tracking"] == {"backend": expected, "project": "ftbench", "entity": None, "tags": []}
    cfg = build_run_config({**base, "tracking": {"backend": ["wandb", "mlflow"], "uri": "http://127.0.0.1:5000"}},
                           file="x.yaml")
    assert cfg.as_dict()["tracking"]["uri"] == "http://127.0.0.1:5000"
    assert _hash(base, {"backend": "mlflow", "uri": "http://127.0.0.1:5000"}) == _hash(base, None)  # never in the id


def _hash(base: dict, tracking_section) -> str:
    from harness.grid import spec_hash

    raw = {**base, **({"tracking": tracking_section} if tracking_section else {})}
    return spec_hash(build_run_config(raw, file="x.yaml"))


@pytest.mark.parametrize("section, message", [
    ({"backend": "mlfow"}, "unknown tracker `mlfow`. Did you mean `mlflow`? Allowed: mlflow, none, wandb."),
    ({"backend": ["wandb", "wandb"]}, "a list of distinct trackers"),
    ({"backend": ["none", "mlflow"]}, "without `none`"),
    ({"backend": "mlflow", "uri": f"https://bob:{SECRET}@mlflow.example.org"}, "must not carry credentials"),
    ({"backend": "mlflow", "uri": f"https://mlflow.example.org/?token={SECRET}"}, "must not carry credentials"),
])
def test_bad_tracking_sections(tmp_path, section, message):
    path = write_experiment(tmp_path, "bad", base=tiny_base(tracking=section))
    res = run_cli("run", str(path), "--dry-run", "--results", str(tmp_path / "results"))
    assert res.code == 2 and message in res.err, res.err
    assert SECRET not in res.out + res.err  # shown redacted


def test_redaction():
    uri = f"https://bob:{SECRET}@mlflow.example.org:5000/path?token={SECRET}&x=1"
    assert SECRET not in tracking.redact_uri(uri) and "bob" not in tracking.redact_uri(uri)
    assert tracking.redact_uri(uri) == "https://***@mlflow.example.org:5000/path?token=***&x=1"
    public, env = tracking.split_credentials(uri)
    assert public == "https://mlflow.example.org:5000/path?x=1"
    assert env == {"MLFLOW_TRACKING_USERNAME": "bob", "MLFLOW_TRACKING_PASSWORD": SECRET,
                   "MLFLOW_TRACKING_TOKEN": SECRET}
    with pytest.raises(ValueError, match="secret query parameter") as info:
        tracking.split_credentials(f"https://h/?api_key={SECRET}")
    assert SECRET not in str(info.value)
    for plain in ("http://127.0.0.1:5000", "sqlite:////tmp/x.db", "databricks", "file:///tmp/mlruns"):
        assert tracking.redact_uri(plain) == plain and not tracking.has_credentials(plain)
        assert tracking.split_credentials(plain) == (plain, {})


def test_spec_yaml_is_unchanged_for_the_smoke_experiment(tmp_path):
    """The smoke experiment's specs as written to spec.yaml carry no `uri` key (tracking: none)."""
    for spec in expand_file(SMOKE):
        assert "uri" not in yaml.safe_load(yaml.safe_dump(spec.config.as_dict()))["tracking"]


def test_several_trackers_each_get_every_call_and_a_failure_does_not_stop_the_others():
    calls = []

    class Recorder(tracking.Tracker):
        def __init__(self, name, fail=False):
            self.name, self.fail = name, fail

        def log(self, metrics, step):
            calls.append((self.name, "log", step))

        def finish(self, status):
            calls.append((self.name, "finish", status))
            if self.fail:
                raise RuntimeError("server gone")

    both = tracking.Trackers([Recorder("a", fail=True), Recorder("b")])
    both.log({"loss": 1.0}, 3)
    with pytest.raises(RuntimeError, match="server gone"):
        both.finish("ok")
    assert calls == [("a", "log", 3), ("b", "log", 3), ("a", "finish", "ok"), ("b", "finish", "ok")]
    cfg = build_run_config({"model": "tiny-smollm2", "tracking": "none"}, file="x.yaml").tracking
    assert type(tracking.start(cfg, experiment="e", slug="s", method="lora", spec={})) is tracking.Tracker
