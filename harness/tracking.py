"""Experiment trackers: Weights & Biases (offline unless a key is set), MLflow (a local store unless a URI is
given), several at once, or none."""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from harness.metrics import METRICS
from harness.registry import Registry

__all__ = ["MLFLOW_DIR", "TRACKERS", "MlflowTracker", "Tracker", "Trackers", "WandbTracker", "backends",
           "has_credentials", "local_mlflow_uri", "redact_uri", "split_credentials", "start"]

_log = logging.getLogger("ftbench")
#: in an experiment's results folder: the offline MLflow store (`mlflow.db`) and its artifacts (a dot folder,
#: so the store never takes it for a run)
MLFLOW_DIR = ".mlflow"
#: query parameters whose value is a secret (matched case-insensitively, as substrings)
_SECRET_PARAMS = ("token", "password", "passwd", "secret", "key", "signature", "sig", "credential", "auth")
_HIDDEN = "***"


class Tracker:
    """Receives per-step metrics and a final summary. The base class records nothing."""

    def log(self, metrics: dict[str, Any], step: int) -> None:
        pass

    def summary(self, metrics: dict[str, Any]) -> None:
        pass

    def finish(self, status: str) -> None:
        pass


class WandbTracker(Tracker):
    """One W&B run per ftbench run: group = experiment, job_type = method, name = slug.

    Offline (runs land in ./wandb, `wandb sync` uploads them) unless WANDB_API_KEY is set or
    WANDB_MODE says otherwise. The key is read by wandb from the environment, never passed on.
    """

    def __init__(self, cfg, *, experiment: str, slug: str, method: str, spec: dict, **_):
        import wandb

        mode = os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
        self._run = wandb.init(
            project=cfg.project, entity=cfg.entity, group=experiment, job_type=method, name=slug,
            config=spec, tags=list(cfg.tags), mode=mode, dir=os.environ.get("WANDB_DIR", "."),
            reinit="finish_previous", settings=wandb.Settings(console="off", silent=True),
        )

    def log(self, metrics, step):
        self._run.log({k: v for k, v in metrics.items() if isinstance(v, (int, float))}, step=step)

    def summary(self, metrics):
        measured = {key: value for key, value in metrics.items() if value is not None}
        for key, value in measured.items():
            self._run.summary[key] = value
        # W&B has no direction of its own (define_metric lost `goal`): the declared one travels in the config
        self._run.config.update({"metric_goals": _goals(measured)}, allow_val_change=True)

    def finish(self, status):
        self._run.summary["status"] = status
        self._run.finish(exit_code=0 if status == "ok" else 1)


class MlflowTracker(Tracker):
    """One MLflow run per ftbench run, in the MLflow experiment named like the ftbench one; run name = slug.

    Where: `tracking.uri`, else $MLFLOW_TRACKING_URI, else a local store under the experiment's results
    folder (`<exp>/.mlflow/mlflow.db`, artifacts beside it). Logged: the resolved spec (as flat params and
    as `spec.yaml`), every step's metrics, the final figures at the last step, the declared metric
    directions, and the run's `adapter/` folder (with its model card) as artifacts. Credentials in
    $MLFLOW_TRACKING_URI are moved to MLflow's own variables for this process, never logged or written.
    """

    def __init__(self, cfg, *, experiment: str, slug: str, method: str, spec: dict, run_dir: Path | None = None,
                 **_):
        from mlflow import MlflowClient

        self._run_dir = Path(run_dir) if run_dir is not None else None
        uri = cfg.uri or os.environ.get("MLFLOW_TRACKING_URI")
        if uri:
            uri, credentials = split_credentials(uri)
            for key, value in credentials.items():  # MLflow reads them per request: nothing else sees them
                os.environ.setdefault(key, value)
        elif self._run_dir is not None:
            uri = local_mlflow_uri(self._run_dir.parent)
        else:
            raise ValueError("tracking backend `mlflow` needs `tracking.uri`, $MLFLOW_TRACKING_URI or a run folder")
        self.uri = uri
        with _store_lock(self._run_dir, uri):  # a fresh local store creates its tables once, whoever comes first
            self._client = MlflowClient(tracking_uri=uri)
            experiment_id = self._experiment_id(experiment, uri)
        run_id = self._run_dir.name if self._run_dir is not None else ""
        tags = {"ftbench.experiment": experiment, "ftbench.run_id": run_id, "ftbench.slug": slug,
                "ftbench.method": method, **({"ftbench.tags": ", ".join(cfg.tags)} if cfg.tags else {})}
        self._run = self._client.create_run(experiment_id, run_name=slug, tags=tags).info.run_id
        self._step, self._broken = 0, False
        params = [(k, str(v)[:6000]) for k, v in _flat(spec).items()]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 params a call
            self._batch(params=params[start:start + 100])
        self._client.log_dict(self._run, spec, "spec.yaml")
        _log.info("mlflow: run %s in experiment `%s` at %s", self._run, experiment, redact_uri(uri))

    def _experiment_id(self, name: str, uri: str) -> str:
        from mlflow.exceptions import MlflowException

        found = self._client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        location = None
        if uri.startswith("sqlite:///") and self._run_dir is not None and uri == local_mlflow_uri(self._run_dir.parent):
            location = (self._run_dir.parent / MLFLOW_DIR / "artifacts").resolve().as_uri()
        try:
            return self._client.create_experiment(name, artifact_location=location)
        except MlflowException:  # another worker created it a moment ago
            found = self._client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    def _batch(self, metrics: dict[str, Any] | None = None, step: int = 0, params=()) -> None:
        from mlflow.entities import Metric, Param

        now = int(time.time() * 1000)
        rows = [Metric(_metric_name(k), float(v), now, step) for k, v in (metrics or {}).items() if _loggable(v)]
        if rows or params:
            self._client.log_batch(self._run, metrics=rows, params=[Param(k, v) for k, v in params])

    def log(self, metrics, step):
        self._step = max(self._step, int(step))
        if self._broken:
            return
        try:
            self._batch(metrics, step)
        except Exception as exc:  # noqa: BLE001  (a lost server must not cost the run; MLflow already retried)
            self._broken = True
            _log.warning("mlflow: step metrics stop here (step %s): %s", step, str(exc).splitlines()[0][:300])

    def summary(self, metrics):
        measured = {key: value for key, value in metrics.items() if value is not None}
        self._batch(measured, self._step)  # at the last step: MLflow shows a metric's latest value
        self._client.log_dict(self._run, _goals(measured), "metric_goals.json")

    def finish(self, status):
        self._client.set_tag(self._run, "ftbench.status", status)
        adapter = self._run_dir / "adapter" if self._run_dir is not None else None
        try:
            if adapter is not None and adapter.is_dir():
                self._client.log_artifacts(self._run, str(adapter), "adapter")
        finally:
            self._client.set_terminated(self._run, "FINISHED" if status == "ok" else "FAILED")


class Trackers(Tracker):
    """Several trackers as one (`backend: [wandb, mlflow]`): each call goes to each, in order; one that
    fails at the end does not keep the others from finishing."""

    def __init__(self, trackers: Iterable[Tracker]):
        self.trackers = list(trackers)

    def log(self, metrics, step):
        for tracker in self.trackers:
            tracker.log(metrics, step)

    def summary(self, metrics):
        self._each("summary", metrics)

    def finish(self, status):
        self._each("finish", status)

    def _each(self, name: str, *args) -> None:
        errors = []
        for tracker in self.trackers:
            try:
                getattr(tracker, name)(*args)
            except Exception as exc:  # noqa: BLE001  (the next tracker still gets its call)
                errors.append(exc)
                _log.warning("tracker %s: %s failed: %s", type(tracker).__name__, name, exc)
        if errors:
            raise errors[0]


TRACKERS: Registry[type] = Registry("tracker")
TRACKERS.register("wandb", WandbTracker)
TRACKERS.register("mlflow", MlflowTracker)
TRACKERS.register("none", lambda cfg, **_: Tracker())


def backends(cfg) -> list[str]:
    """The backends `cfg.backend` names (one name or a list), `none` left out."""
    names = cfg.backend if isinstance(cfg.backend, (list, tuple)) else [cfg.backend]
    return [name for name in names if name != "none"]


def start(cfg, **kwargs) -> Tracker:
    """Start the tracker(s) named by `cfg.backend`: one name, a list of them (a `Trackers`), or `none`.

    Args:
        kwargs: experiment, slug, method, spec (the resolved run spec), run_dir (the run's folder).
    """
    started: list[Tracker] = []
    try:
        for name in backends(cfg):
            started.append(TRACKERS.get(name)(cfg, **kwargs))
    except BaseException:
        for tracker in started:  # the ones already running are closed; the first error is the one raised
            try:
                tracker.finish("failed")
            except Exception:  # noqa: BLE001
                pass
        raise
    if not started:
        return Tracker()
    return started[0] if len(started) == 1 else Trackers(started)


def local_mlflow_uri(experiment_dir: Path) -> str:
    """The offline MLflow store of an experiment: SQLite in `<experiment_dir>/.mlflow/mlflow.db`."""
    folder = (Path(experiment_dir) / MLFLOW_DIR).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'mlflow.db'}"


def has_credentials(uri: str) -> bool:
    """Whether `uri` carries a user name, password or a secret query parameter."""
    return redact_uri(uri) != uri


def redact_uri(uri: str) -> str:
    """`uri` safe to print or write: user info and secret query values replaced by `***`."""
    public, found = _split(uri)
    if not found:
        return uri
    parts = urlsplit(public)
    netloc = f"{_HIDDEN}@{parts.netloc}" if ("user" in found or "password" in found) else parts.netloc
    query = [(k, _HIDDEN if _secret(k) else v) for k, v in parse_qsl(urlsplit(uri).query, keep_blank_values=True)]
    return urlunsplit(parts._replace(netloc=netloc, query=urlencode(query, safe="*")))


def split_credentials(uri: str) -> tuple[str, dict[str, str]]:
    """(`uri` without its user info and `token=` parameter, MLflow's environment variables for them:
    MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD for `user:password@`, MLFLOW_TRACKING_TOKEN for a
    `token=` parameter).

    Raises:
        ValueError: another secret query parameter (a signature, a key): MLflow has no variable to take it, and
            it would show in MLflow's error messages.
    """
    public, found = _split(uri)
    if "query" in found:
        raise ValueError(f"the tracking URI {redact_uri(uri)} carries a secret query parameter; pass credentials as "
                         "user:password@, `token=` or in MLFLOW_TRACKING_USERNAME/_PASSWORD/_TOKEN")
    env = {}
    if "user" in found:
        env["MLFLOW_TRACKING_USERNAME"] = found["user"]
    if "password" in found:
        env["MLFLOW_TRACKING_PASSWORD"] = found["password"]
    if "token" in found:
        env["MLFLOW_TRACKING_TOKEN"] = found["token"]
    return public, env


def _split(uri: str) -> tuple[str, dict[str, str]]:
    """(`uri` without its user info and `token`, {"user"|"password"|"token"|"query": the secret found})."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return uri, {}
    found: dict[str, str] = {}
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, netloc = netloc.rpartition("@")
        user, colon, password = userinfo.partition(":")
        if user:
            found["user"] = user
        if colon:
            found["password"] = password
    query = parse_qsl(parts.query, keep_blank_values=True)
    kept = []
    for key, value in query:
        if key.lower() == "token":  # MLflow's bearer token: moved to MLFLOW_TRACKING_TOKEN
            found["token"] = value
            continue
        if _secret(key):  # another secret (a signature, a key): refused by split_credentials
            found["query"] = value
        kept.append((key, value))
    if not found:
        return uri, {}
    return urlunsplit(parts._replace(netloc=netloc, query=urlencode(kept))), found


def _secret(name: str) -> bool:
    return any(word in name.lower() for word in _SECRET_PARAMS)


class _store_lock:
    """An exclusive file lock beside a local SQLite store while it is opened (no lock for other URIs)."""

    def __init__(self, run_dir: Path | None, uri: str):
        local = run_dir is not None and uri == local_mlflow_uri(run_dir.parent)
        self.path = run_dir.parent / MLFLOW_DIR / "lock" if local else None
        self._file = None

    def __enter__(self):
        if self.path is not None:
            import fcntl

            self._file = open(self.path, "a")  # noqa: SIM115
            fcntl.flock(self._file, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        if self._file is not None:
            self._file.close()  # closing releases the lock


def _goals(measured: dict) -> dict[str, str]:
    """{metric: `minimize`|`maximize`} for the measured keys the metric registry gives a direction."""
    return {key: goal for key in measured if (goal := METRICS.direction(key)) is not None}


def _loggable(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _metric_name(key: str) -> str:
    """An MLflow metric name: letters, digits, `_ - . / space` (others become `_`)."""
    return "".join(c if c.isalnum() or c in "_-./ " else "_" for c in str(key))


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    """A nested spec as dotted keys (lists stay whole)."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flat(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}
