"""The Ray executor: the local executor's guarantees on a Ray cluster.

The driver (this process) claims and records every run in the same loop as `LocalExecutor`
(`harness.executor_loop.Executor`); this module supplies only where a run starts and how it is
watched: each claimed run becomes one Ray actor (`RunWorker`) that asks the cluster for the experiment's
`resources` and runs `python -m harness.run` in a scratch folder on whichever node Ray chose.
Workers need not share a disk with the driver: the driver mirrors metrics.jsonl while the run
trains (progress, pruning) and writes the returned record into the store at the end; artifacts
come back too, or go to `artifacts_uri` (anything fsspec can write). A worker lost mid-run is
retried once on a fresh actor, then recorded `failed` with the reason.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from harness import distributed, store
from harness.contention import sweep_token
from harness.errors import ConfigError
from harness.executor import child_env
from harness.launch import start_process
from harness.executor_loop import (UNRECORDED, Executor, Job, Monitor, last_progress, oom_evidence, oom_kill_counts,
                                   record, record_without_result, store_error_message)
from harness.grid import RunSpec

#: files of a run that are its record (always back to the driver); everything else is an artifact
RECORD_FILES = ("result.json", "metrics.jsonl", "run.log")
RECORD_DIRS = ("wandb",)  # W&B offline runs (`wandb sync` them from the driver)
INSTALL_HINT = "the Ray executor needs the `ray` package: pip install '.[distributed]' (ray[tune]==2.60.0)"


def require_ray():
    """`import ray`, or a ConfigError (exit 2) saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ConfigError.one("--executor", "ray", INSTALL_HINT) from None
    return ray


def connect(address: str | None):
    """Join the cluster at `address` (`auto`, `ray://host:10001`, `host:6379`), or start a local
    one when None and $RAY_ADDRESS is unset. Idempotent."""
    ray = require_ray()
    if not ray.is_initialized():
        try:
            ray.init(address=address or os.environ.get("RAY_ADDRESS") or None, include_dashboard=False,
                     log_to_driver=False, logging_level="WARNING", configure_logging=True)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise ConfigError.one("--address", address or "", f"cannot reach a Ray cluster: {exc}") from None
    return ray


def slots(nodes: list[dict], cpus: float, gpus: float) -> int:
    """How many runs asking for `cpus` CPUs and `gpus` GPUs fit on the alive nodes at once."""
    total = 0
    for node in nodes:
        if not node.get("Alive"):
            continue
        have = node.get("Resources", {})
        fits = math.floor(have.get("CPU", 0) / cpus + 1e-9) if cpus > 0 else 10**6
        if gpus > 0:
            fits = min(fits, math.floor(have.get("GPU", 0) / gpus + 1e-9))
        total += fits
    return total


# -- worker side --------------------------------------------------------------------------------------

class RunWorker:
    """One run on a Ray worker: a scratch run directory, a `python -m harness.run` child, its files.

    Made a Ray actor by `RayExecutor` (`ray.remote(RunWorker)`); the child dies with the actor.
    """

    def __init__(self, payload: dict):
        import ray

        self.scratch = Path(tempfile.mkdtemp(prefix="ftbench-"))
        experiment = self.scratch / payload["experiment"]
        self.directory = experiment / payload["run_id"]
        self.directory.mkdir(parents=True)
        spec = dict(payload["spec"])
        if payload["plugin_files"]:  # the experiment's .py plugins, at the same paths relative to it
            for rel, text in payload["plugin_files"].items():
                (self.scratch / "experiment" / rel).parent.mkdir(parents=True, exist_ok=True)
                (self.scratch / "experiment" / rel).write_text(text)
            spec["experiment_dir"] = str(self.scratch / "experiment")
        if payload.get("reference_result"):  # the untouched base this run's forgetting is measured against
            (experiment / spec["reference"]).mkdir()
            (experiment / spec["reference"] / "result.json").write_text(payload["reference_result"])
        (self.directory / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
        self.artifacts_uri = payload.get("artifacts_uri")
        env = child_env(threads=payload.get("threads"), sweep=payload.get("sweep"),
                        sweep_cores=payload.get("sweep_cores"), exclusive=payload.get("exclusive", False))
        env.setdefault("WANDB_DIR", str(self.directory))  # offline W&B runs travel back with the record
        self.oom_counts = oom_kill_counts()  # this node's: a SIGKILL is `oom` only if one rises
        self.proc = start_process(self.directory, env, processes=payload.get("processes"))
        self.node = ray.util.get_node_ip_address()

    def poll(self, offset: int) -> dict:
        """New metrics.jsonl bytes from `offset`, the child's exit code (None while it runs), the node."""
        chunk = b""
        try:
            with open(self.directory / "metrics.jsonl", "rb") as fh:
                fh.seek(offset)
                chunk = fh.read()
            chunk = chunk[: chunk.rfind(b"\n") + 1]  # whole lines only
        except OSError:
            pass
        code = self.proc.poll()
        oom = oom_evidence(self.oom_counts) if code == -9 else None
        return {"metrics": chunk, "code": code, "node": self.node, "pid": os.getpid(), "oom": oom}

    def stop(self) -> None:
        """SIGTERM the run (a search pruned it)."""
        if self.proc.poll() is None:
            self.proc.terminate()

    def collect(self) -> dict:
        """The finished run's files (relative path → bytes), artifacts uploaded instead when
        `artifacts_uri` is set; the scratch folder is removed."""
        try:
            files, artifacts = {}, []
            for path in sorted(p for p in self.directory.rglob("*") if p.is_file()):
                rel = path.relative_to(self.directory).as_posix()
                if rel == "spec.yaml":
                    continue  # the driver wrote its own
                if self.artifacts_uri and rel not in RECORD_FILES and rel.split("/")[0] not in RECORD_DIRS:
                    artifacts.append(rel)
                else:
                    files[rel] = path.read_bytes()
            uri = upload(self.directory, artifacts, self.artifacts_uri, self.directory.parent.name,
                         self.directory.name) if artifacts else None
            return {"files": files, "artifacts_uri": uri}
        finally:
            shutil.rmtree(self.scratch, ignore_errors=True)


def upload(directory: Path, relpaths: list[str], uri: str, experiment: str, run_id: str) -> str:
    """Copy `relpaths` of `directory` to URI/EXPERIMENT/RUN_ID/ with fsspec; returns that folder's URI."""
    import fsspec

    target = f"{uri.rstrip('/')}/{experiment}/{run_id}"
    fs, root = fsspec.core.url_to_fs(target)
    for rel in relpaths:
        dest = f"{root}/{rel}"
        fs.makedirs(dest.rsplit("/", 1)[0], exist_ok=True)
        fs.put_file(str(directory / rel), dest)
    return target


def check_artifacts_uri(uri: str | None, file: str) -> None:
    """Raises: ConfigError when fsspec has no filesystem for the URI's protocol."""
    if not uri:
        return
    import fsspec

    protocol = fsspec.core.split_protocol(uri)[0] or "file"
    try:
        fsspec.get_filesystem_class(protocol)
    except (ValueError, ImportError) as exc:
        raise ConfigError.one(file, "artifacts_uri", f"fsspec cannot write `{uri}`: {exc}") from None


# -- driver side --------------------------------------------------------------------------------------

@dataclass
class Flight(Job):
    """A claimed run on the cluster."""

    actor: object = None
    attempt: int = 1
    offset: int = 0
    node: str | None = None
    poll_ref: object = None
    lost: list[str] = field(default_factory=list)
    payload: dict = field(default_factory=dict)


class RayExecutor(Executor):
    """Runs RunSpecs as Ray actors, one per run, with `LocalExecutor`'s interface and guarantees.

    Args:
        address: the cluster (`auto`, `ray://host:10001`); None starts a local Ray instance.
        resources: `{"gpus": g, "cpus": c}` per run; gpus default 1 on a cluster with GPUs, else 0.
        artifacts_uri: where adapters and other artifacts go instead of back to the driver.
        attempts: tries per run when its worker is lost (the default 2: one retry).
        progress: show the live view (off when several threads share one executor, as searches do).
        exclusive: refuse to start a run on a GPU another process uses; default on when runs ask for GPUs.
    """

    def __init__(self, *, address: str | None = None, resources: dict | None = None, artifacts_uri: str | None = None,
                 force: bool = False, retry_failed: bool = False, root: Path | None = None,
                 console: Console | None = None, poll_s: float = 0.5, attempts: int = 2, progress: bool = True,
                 file: str = "--executor ray", exclusive: bool | None = None):
        self.ray = connect(address)
        resources = dict(resources or {})
        nodes = self.ray.nodes()
        cluster_gpus = sum(n.get("Resources", {}).get("GPU", 0) for n in nodes if n.get("Alive"))
        self.gpus = float(resources.get("gpus", 1 if cluster_gpus else 0) or 0)
        self.cpus = float(resources.get("cpus") or 1)
        if self.gpus > 0 and not cluster_gpus:
            raise ConfigError.one(file, "resources.gpus",
                                  f"each run asks for {self.gpus:g} GPU but the Ray cluster has none; set `resources: {{gpus: 0}}`")
        if slots(nodes, self.cpus, self.gpus) < 1:
            raise ConfigError.one(file, "resources", f"no node of the Ray cluster has {self.cpus:g} CPU and {self.gpus:g} GPU "
                                  f"free for one run (cluster: {self.ray.cluster_resources()})")
        check_artifacts_uri(artifacts_uri, file)
        super().__init__(force=force, retry_failed=retry_failed, root=root, console=console, poll_s=poll_s)
        self.artifacts_uri = artifacts_uri
        self.attempts, self.show_progress = attempts, progress
        self.exclusive = self.gpus > 0 if exclusive is None else exclusive
        # runs of this sweep on one node know each other by it (`harness.contention`)
        self.sweep = sweep_token()
        # on GPU nodes the sweep keeps the CPUs its runs ask for busy, at most a node's GPUs' worth of runs
        per_node = max((math.floor(n.get("Resources", {}).get("GPU", 0) / self.gpus + 1e-9) for n in nodes
                        if n.get("Alive")), default=1) if self.gpus > 0 else 0
        self.sweep_cores = per_node * self.cpus if self.gpus > 0 else None
        self._actor_class = self.ray.remote(RunWorker)
        self._slots_at, self._slots = 0.0, 0

    def capacity(self) -> int:
        """Runs that fit on the cluster now (nodes may join or leave; re-read every 5 s)."""
        if time.monotonic() - self._slots_at > 5:
            self._slots, self._slots_at = max(1, slots(self.ray.nodes(), self.cpus, self.gpus)), time.monotonic()
        return self._slots

    # -- one run ------------------------------------------------------------------------------------

    def _start(self, spec: RunSpec, directory: Path, claim: store.Claim, plugins: list[str],
               experiment_dir: str | None) -> Flight:
        # claims stay with the driver: a worker never decides whether a run is due
        flight = Flight(spec, directory, claim,
                        payload=self._payload(spec, plugins, experiment_dir, _plugin_sources(plugins, experiment_dir)))
        self._launch(flight)
        return flight

    def _watch(self, jobs: list[Flight], monitor: Monitor | None) -> Iterator[tuple[Flight, dict]]:
        """Ask every flight for news (one poll in flight each), and handle the answers that came."""
        for flight in jobs:
            if flight.poll_ref is None:
                flight.poll_ref = flight.actor.poll.remote(flight.offset)
        refs = {f.poll_ref: f for f in jobs}
        # a poll answers at once: the loop's pause between rounds paces them, or driver and workers spin
        ready, _ = self.ray.wait(list(refs), num_returns=len(refs), timeout=0) if refs else ([], [])
        for ref in ready:
            flight = refs[ref]
            flight.poll_ref = None
            result = self._handle(flight, ref, monitor)
            if result is not None:
                yield flight, result

    def _note(self, flight: Flight, eta_s: float | None) -> str:
        return f"{time.monotonic() - flight.started:.1f}s on {flight.node or '?'}" + (
            f", attempt {flight.attempt}" if flight.attempt > 1 else "")

    def _view(self, total: int) -> "_View":
        return _View(self.console, total, enabled=self.show_progress)

    def _closing(self, view: "_View", elapsed_s: float) -> str | None:
        if not self.show_progress:
            return None
        ran = ", ".join(f"{node}: {counts['done']}" for node, counts in view.per_node.items()) or "nothing run"
        return f"[dim]sweep finished in {elapsed_s:.1f}s on Ray ({ran})[/]"

    def _launch(self, flight: Flight) -> None:
        """(Re)create the run's mirror directory and its actor."""
        store.prepare_run_dir(flight.directory, flight.payload["spec"])
        flight.offset, flight.node, flight.poll_ref = 0, None, None
        ranks = flight.payload.get("processes") or 1  # a distributed run: all its ranks' share on one node
        flight.actor = self._actor_class.options(num_cpus=self.cpus * ranks, num_gpus=self.gpus * ranks, max_restarts=0,
                                                 max_task_retries=0).remote(flight.payload)

    def _payload(self, spec: RunSpec, plugins, experiment_dir, plugin_files) -> dict:
        reference = None
        if spec.reference:
            path = store.run_dir(spec.experiment, spec.reference, self.root) / "result.json"
            reference = path.read_text() if path.is_file() else None
        threads = max(1, int(self.cpus)) if self.gpus == 0 else None
        return {"experiment": spec.experiment, "run_id": spec.run_id, "plugin_files": plugin_files,
                "spec": {**spec.as_dict(), "plugins": list(plugins), "experiment_dir": experiment_dir},
                "reference_result": reference, "artifacts_uri": self.artifacts_uri, "threads": threads,
                "sweep": self.sweep, "sweep_cores": self.sweep_cores, "exclusive": self.exclusive,
                "processes": distributed.processes(spec.config.train) if spec.config.train.distributed != "none"
                else None}

    def _handle(self, flight: Flight, ref, monitor) -> dict | None:
        """One poll answer: mirror metrics, ask the monitor; at the end write the record. Returns the
        result once the run is recorded, else None."""
        ray = self.ray
        try:
            answer = ray.get(ref)
        except ray.exceptions.ActorUnavailableError:
            return None  # transient: the next poll tells
        except ray.exceptions.RayError as exc:
            return self._lost(flight, exc)
        flight.node = answer["node"]
        if answer["metrics"]:
            try:
                with open(flight.directory / "metrics.jsonl", "ab") as fh:
                    fh.write(answer["metrics"])
            except OSError:  # the live mirror is best effort (a full disk): the run's own file comes back at its end
                pass
            flight.offset += len(answer["metrics"])
        if answer["code"] is None:
            if monitor is not None and flight.stopped is None:
                flight.stopped = monitor(flight.spec, flight.directory)
                if flight.stopped:
                    flight.actor.stop.remote()
            return None
        try:
            returned = ray.get(flight.actor.collect.remote())
        except ray.exceptions.RayError as exc:
            return self._lost(flight, exc)
        return self._record(flight, answer["code"], returned, oom=answer.get("oom"))

    def _record(self, flight: Flight, code: int, returned: dict, oom: str | None = None) -> dict:
        try:
            files = dict(returned["files"])
            result_bytes = files.pop("result.json", None)
            try:
                for rel, data in files.items():
                    path = flight.directory / rel
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(data)
            except OSError as exc:  # a full disk on the driver: the run stays unfinished, the sweep goes on
                return {"run_id": flight.spec.run_id, "status": "failed",
                        UNRECORDED: store_error_message(exc, self.root)}
            executor = {"name": "ray", "attempts": flight.attempt, "lost": flight.lost,
                        "artifacts_uri": returned.get("artifacts_uri")}
            if result_bytes is not None:  # as locally: a run that finished before a stop landed keeps its result
                result = json.loads(result_bytes)
                result["env"] = {**(result.get("env") or {}), "executor": executor}
                result = record(flight.directory, result)  # the last act, as locally
            else:
                result = record_without_result(flight.spec, flight.directory, code, flight.stopped,
                                               extra_env={"executor": executor}, oom=oom)
            return result
        finally:
            self.ray.kill(flight.actor)
            flight.claim.release()

    def _lost(self, flight: Flight, exc: Exception) -> dict | None:
        """The worker died (process killed, node gone): retry on a fresh actor, or record `failed`."""
        reason = f"Ray worker lost on {flight.node or 'an unknown node'} (attempt {flight.attempt}): " \
                 f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        flight.lost.append(reason)
        self.ray.kill(flight.actor)
        if flight.attempt < self.attempts:
            self.console.print(f"[yellow]{flight.spec.slug}: {reason}; retrying[/]")
            flight.attempt += 1
            flight.started = time.monotonic()
            self._launch(flight)
            return None
        try:
            return record_without_result(flight.spec, flight.directory, None,
                                         reason=f"lost its Ray worker {flight.attempt} times; last: {reason}",
                                         extra_env={"executor": {"name": "ray", "attempts": flight.attempt,
                                                                 "lost": flight.lost, "artifacts_uri": None}})
        finally:
            flight.claim.release()

    def _abandon(self, flights: list[Flight]) -> None:
        """Ctrl-C (or any error) on the driver: kill the in-flight runs and leave no partial record (what
        was mirrored of an unfinished run is archived, never deleted)."""
        for flight in flights:
            try:
                self.ray.kill(flight.actor)
            except Exception:  # already dead
                pass
            if flight.directory.exists() and store.read_result(flight.directory) is None:
                try:
                    store.archive(flight.directory)
                except OSError:
                    pass
            flight.claim.release()


def _plugin_sources(plugins, experiment_dir) -> dict[str, str]:
    """The experiment's relative .py plugins (path → source), rebuilt beside the run on a worker."""
    files = {}
    for item in plugins or ():
        if item.endswith(".py") and not Path(item).is_absolute() and experiment_dir:
            path = Path(experiment_dir) / item
            if path.is_file():
                files[item] = path.read_text()
    return files


class _View:
    """The driver's live view: overall progress, one bar per run (with its node), runs per node."""

    def __init__(self, console: Console, total: int, enabled: bool):
        self.enabled = enabled
        self.per_node: dict[str, Counter] = {}
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), console=console, transient=True)
        self.overall = self.progress.add_task("runs", total=total)
        self.summary = self.progress.add_task("", total=None, visible=False)

    def __enter__(self):
        if self.enabled:
            self.progress.start()
        return self

    def __exit__(self, *exc):
        if self.enabled:
            self.progress.stop()

    def add_run(self, spec: RunSpec) -> int:
        return self.progress.add_task(f"  {spec.slug} (queued on the cluster)", total=None)

    def ended(self, flight: Flight) -> None:
        self.progress.remove_task(flight.task)
        self.per_node.setdefault(flight.node or "?", Counter())["done"] += 1

    def update(self, finished: int, queued: int, flights: list[Flight]) -> None:
        """`queued 3 · 10.0.0.5: 2 running, 4 done · …` and each run's bar, with its node and loss."""
        running = Counter(f.node for f in flights if f.node)
        on_cluster = sum(1 for f in flights if not f.node)
        names = sorted(set(running) | set(self.per_node))
        parts = [f"queued {queued + on_cluster}"] + [
            f"{n}: {running.get(n, 0)} running, {self.per_node.get(n, Counter())['done']} done" for n in names]
        self.progress.update(self.summary, description=" · ".join(parts), visible=True)
        self.progress.update(self.overall, completed=finished)
        for flight in flights:
            last = last_progress(flight.directory / "metrics.jsonl") if flight.node else None
            where = f"@{flight.node}" if flight.node else "(queued on the cluster)"
            if last and "max_steps" in last:
                self.progress.update(flight.task, total=last["max_steps"], completed=last["step"],
                                     description=f"  {flight.spec.slug} {where} loss {last.get('loss') or float('nan'):.3f}")
            else:
                self.progress.update(flight.task, description=f"  {flight.spec.slug} {where}")
