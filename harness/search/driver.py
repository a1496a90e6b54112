"""One search worker: ask Optuna for a trial, run it as an ordinary run, prune it on its periodic eval loss, tell.

Several workers (processes or machines) started with the same sweep and storage join one study.
The trial budget `n_trials` counts every trial of the study except those a heartbeat failure
re-queued; a lock file beside the run records makes "count, then ask" atomic for the workers of
one machine (workers on several machines may overshoot by at most one trial each)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import fcntl
import json
import math
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

import yaml

from harness import store
from harness.config import load_experiment
from harness.errors import ConfigError
from harness.grid import RunSpec, expand, make_spec
from harness.plan import Plan, build_plan
from harness.search.space import Sweep, check_against_experiment, suggest, violation
from harness.search.study import make_storage, open_study, public_url

SEARCH_FILE = store.SEARCH_FILE
BEST_FILE = "best.yaml"


@dataclasses.dataclass
class TrialOutcome:
    number: int
    state: str
    values: list[float] | None
    run_id: str | None
    reason: str | None = None


class Search:
    """The sweep's study, its base experiment and the machinery to turn a trial into a run."""

    def __init__(self, sweep: Sweep, *, storage_url: str, root: Path, study_name: str | None = None):
        check_against_experiment(sweep)
        self.sweep, self.root = sweep, root
        self.experiment = load_experiment(sweep.experiment)
        from harness.plugins import import_plugins

        import_plugins(self.experiment.plugins, base=Path(sweep.experiment).parent, file=sweep.experiment)
        self.base_spec = self.spec_for({})  # validates the experiment + `set` before anything starts
        self.preflight()
        self.storage_url = storage_url
        with self._lock():  # workers started together: one creates the tables and the study, the others join
            self.storage = make_storage(storage_url, sweep)
            self.study, self.companion = open_study(sweep, self.storage, study_name)
            for params in sweep.enqueue:
                self.study.enqueue_trial(params, skip_if_exists=True)
        self._write_search_file()

    def _lock(self):
        return _locked(store.experiment_dir(self.sweep.name, self.root) / ".locks" / "ask.lock")

    # -- trial → run ------------------------------------------------------------------------------

    def spec_for(self, params: dict[str, Any], trial: dict | None = None) -> RunSpec:
        """The run of one point of the space: the experiment's base, `set`, then the params (method first)."""
        experiment = self.experiment.model_copy(update={"grid": {}, "name": self.sweep.name})
        ordered = sorted(params.items(), key=lambda kv: kv[0] != "method")
        overrides = [*self.sweep.set, *(f"{k}={json.dumps(v)}" for k, v in ordered)]
        (spec,) = expand(experiment, overrides)
        # named after the sampled values (`lora-r16-a32-n200-lr0.00031-s0`), as if they were grid axes
        return dataclasses.replace(make_spec(self.sweep.name, spec.config, dict(ordered)), trial=trial)

    def plan_for(self, params: dict[str, Any], trial: dict | None = None) -> Plan:
        """The trial's run planned as a grid's is: its untouched-base reference row when it scores tasks
        (run by the first trial that needs it, skipped as finished by the next), preflight, pinned reads.

        Raises:
            ConfigError: the point is not a valid run (the trial fails, the search goes on).
        """
        return build_plan([self.spec_for(params, trial)], file=self.sweep.file, root=self.root)

    def preflight(self, samples: int = 8) -> None:
        """Sample the space on a throwaway in-memory study and check those runs like a grid's.

        Raises:
            ConfigError: an option on the wrong method, r wider than a layer, ... before any trial starts.
        """
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        scratch = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0), directions=self.sweep.directions)
        for params in self.sweep.enqueue:
            scratch.enqueue_trial(params)
        specs = [self.base_spec]
        for _ in range(max(samples, len(self.sweep.enqueue))):
            trial = scratch.ask()
            try:
                specs.append(self.spec_for(suggest(trial, self.sweep.space, self.base_spec.config.as_dict())))
            except ConfigError as exc:
                raise ConfigError([(self.sweep.file, f"space (sampled {trial.params})", m) for _, _, m in exc.problems])
            scratch.tell(trial, state=optuna.trial.TrialState.FAIL)
        build_plan(specs, file=self.sweep.file, root=self.root)  # their reference rows too, as a grid's

    # -- the worker loop --------------------------------------------------------------------------

    def run(self, *, n_trials: int | None = None, timeout: float | None = None, executor=None, parallel: int = 1,
            log: Callable[[str], None] = print) -> list[TrialOutcome]:
        """Run trials until the study holds `n_trials` (or `timeout` s passed); returns this worker's trials.

        `parallel` > 1 keeps that many trials in flight, each on its own thread sharing `executor`
        (the Ray executor: one trial per free slot of the cluster).
        """
        from harness.executor import LocalExecutor

        n_trials = n_trials or self.sweep.n_trials
        timeout = timeout or self.sweep.timeout
        # polled often: the pruner should see each periodic eval loss while the run still trains
        executor = executor or LocalExecutor(workers=1, root=self.root, poll_s=0.2)
        start, outcomes = time.monotonic(), []

        def trials_in_turn():
            while timeout is None or time.monotonic() - start < timeout:
                trial = self._next_trial(n_trials)
                if trial is None:
                    break
                outcome = self._run_trial(trial, executor)
                outcomes.append(outcome)
                values = "" if outcome.values is None else " " + ", ".join(
                    f"{o.metric}={v:.4g}" for o, v in zip(self.sweep.objectives, outcome.values))
                log(f"trial {outcome.number}: {outcome.state}{values}"
                    + (f" ({outcome.reason})" if outcome.reason else "") + (f"  {outcome.run_id}" if outcome.run_id else ""))

        if parallel <= 1:
            trials_in_turn()
        else:
            _in_threads(trials_in_turn, parallel, on_interrupt=getattr(executor, "cancel", None))
        self.write_best()
        return outcomes

    def _next_trial(self, n_trials: int):
        """Under the sweep's lock: fail stale trials, then ask for one unless the budget is used up."""
        import optuna

        with self._lock():
            if isinstance(self.storage, optuna.storages.RDBStorage):
                optuna.storages.fail_stale_trials(self.study)  # a killed worker's trial → FAIL + one retry copy
            trials = self.study.get_trials(deepcopy=False)
            retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
            waiting = any(t.state == optuna.trial.TrialState.WAITING for t in trials)
            counted = sum(1 for t in trials if t.number not in retried)
            if counted >= n_trials and not waiting:
                return None
            return self.study.ask()

    def _run_trial(self, trial, executor) -> TrialOutcome:
        import optuna

        TrialState = optuna.trial.TrialState
        try:
            params = suggest(trial, self.sweep.space, self.base_spec.config.as_dict())
            plan = self.plan_for(params, trial={"study": self.study.study_name, "number": trial.number,
                                                "params": params})
        except ConfigError as exc:  # a point of the space that is not a valid run: a failed trial, the search goes on
            reason = exc.render().splitlines()[0]
            trial.set_user_attr("status", "invalid")
            trial.set_user_attr("error", reason)
            self.study.tell(trial, state=TrialState.FAIL)
            return TrialOutcome(trial.number, "FAIL", None, None, reason)
        shadow = self.companion.ask() if self.companion is not None else None
        if shadow is not None:
            shadow.set_user_attr("trial", trial.number)
        # Optuna takes intermediate values only in single-objective studies: the trial's own, or its twin's
        monitor = _PruneMonitor(shadow or trial) if shadow is not None or len(self.sweep.objectives) == 1 else None
        (spec,) = [s for s in plan.specs if s.trial is not None]
        with _heartbeat(self.storage, trial):
            result = self._run_plan(plan, spec, executor, monitor)
        metrics = (result or {}).get("metrics") or {}
        status = (result or {}).get("status", "failed")
        trial.set_user_attr("run_id", spec.run_id)
        trial.set_user_attr("status", status)
        keys = {o.metric for o in self.sweep.objectives} | {c[0] for c in self.sweep.parsed_constraints()}
        trial.set_user_attr("metrics", {k: metrics.get(k) for k in keys})
        values = [metrics.get(o.metric) for o in self.sweep.objectives]
        reason = ((result or {}).get("error") or {}).get("message")
        if status == "ok" and all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
            self.study.tell(trial, values)
            if shadow is not None:
                self.companion.tell(shadow, values[0])
            return TrialOutcome(trial.number, "COMPLETE", values, spec.run_id)
        state = TrialState.PRUNED if status == "pruned" else TrialState.FAIL
        if reason:
            trial.set_user_attr("error", reason[:500])
        reason = reason or (f"objective missing: {[o.metric for o in self.sweep.objectives]}" if status == "ok" else status)
        self.study.tell(trial, state=state)
        if shadow is not None:
            self.companion.tell(shadow, state=state)
        return TrialOutcome(trial.number, state.name, None, spec.run_id, reason)

    def _run_plan(self, plan: Plan, spec: RunSpec, executor, monitor) -> dict | None:
        """Run the plan phase by phase (its reference row first); only the trial's own run is pruned."""
        result = None
        for phase in plan.phases:
            results = executor.run(phase, plugins=self.experiment.plugins,
                                   experiment_dir=str(Path(self.sweep.experiment).parent.resolve()),
                                   monitor=monitor if any(s.run_id == spec.run_id for s in phase) else None)
            result = next((r for s, r in zip(phase, results) if s.run_id == spec.run_id), result)
        return result

    # -- results ----------------------------------------------------------------------------------

    def best_trials(self) -> list:
        """Feasible complete trials: the best one (one objective) or the Pareto set (several)."""
        import optuna

        constraints = self.sweep.parsed_constraints()
        done = [t for t in self.study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
                if all(violation(t.user_attrs.get("metrics", {}), c) <= 0 for c in constraints)]
        signs = [1 if d == "minimize" else -1 for d in self.sweep.directions]
        keyed = [(t, [s * v for s, v in zip(signs, t.values)]) for t in done]
        if len(signs) == 1:
            return [min(keyed, key=lambda kv: kv[1][0])[0]] if keyed else []
        return [t for t, v in keyed
                if not any(all(a <= b for a, b in zip(w, v)) and w != v for _, w in keyed)]

    def write_best(self) -> Path | None:
        """results/<sweep>/best.yaml: an experiment that reruns the best trial(s), on three seeds."""
        best = self.best_trials()
        if not best:
            return None
        names = [o.metric for o in self.sweep.objectives]
        base = {k: v for k, v in self.base_spec.config.as_dict().items() if k != "seed"}
        doc = {
            "name": f"{self.sweep.name}_best",
            "description": f"best trial(s) of search `{self.sweep.name}` ({', '.join(names)}), rerun on three seeds",
            **({"plugins": self.experiment.plugins} if self.experiment.plugins else {}),
            "base": base,
            "grid": {"best": [_params_of(t, self.sweep) for t in best], "seeds": [0, 1, 2]},
        }
        header = (f"# Written by `ftbench search {self.sweep.name}` on {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC.\n"
                  f"# Run it: ftbench run {store.experiment_dir(self.sweep.name, self.root) / BEST_FILE}\n"
                  "# The search saw one seed per trial; three seeds tell whether the winner's lead is real.\n"
                  + "".join(f"#   trial {t.number}: " + ", ".join(f"{n}={v:.5g}" for n, v in zip(names, t.values)) + "\n"
                            for t in best))
        path = store.experiment_dir(self.sweep.name, self.root) / BEST_FILE
        path.write_text(header + yaml.safe_dump(doc, sort_keys=False))
        return path

    def _write_search_file(self) -> None:
        """What the report needs to find the study again (the storage URL without any password)."""
        directory = store.experiment_dir(self.sweep.name, self.root)
        directory.mkdir(parents=True, exist_ok=True)
        store.write_json_atomic(directory / SEARCH_FILE, {
            "study_name": self.study.study_name, "storage": public_url(self.storage_url),
            "sweep_file": self.sweep.file, "objectives": [o.model_dump() for o in self.sweep.objectives],
            "pruner": self.sweep.pruner.name, "sampler": self.sweep.sampler.name})


def _params_of(trial, sweep: Sweep) -> dict[str, Any]:
    from harness.search.space import decode_choice

    return {k: decode_choice(v, sweep.space[k].choices or []) if k in sweep.space else v
            for k, v in sorted(trial.params.items(), key=lambda kv: kv[0] != "method")}


class _PruneMonitor:
    """Reads the run's periodic eval losses from metrics.jsonl, reports them, and asks the pruner."""

    def __init__(self, trial):
        self.trial, self.seen = trial, 0

    def __call__(self, spec: RunSpec, directory: Path) -> str | None:
        path = directory / "metrics.jsonl"
        try:
            lines = path.read_text().splitlines()
        except OSError:
            return None
        rows = []
        for line in lines:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a line being written
                break
        evals = [r for r in rows if "eval_loss" in r and "step" in r]
        for row in evals[self.seen:]:
            self.seen += 1
            loss = row["eval_loss"]
            if not isinstance(loss, (int, float)) or not math.isfinite(loss):
                return f"pruned at step {row['step']}: eval loss is {loss}"
            self.trial.report(loss, row["step"])
            if self.trial.should_prune():
                return f"pruned at step {row['step']} (eval loss {loss:.4f})"
        return None


@contextmanager
def _heartbeat(storage, trial):
    """Beat for the trial while its run lasts, so other workers can tell a live trial from a dead one."""
    import optuna

    if not isinstance(storage, optuna.storages.RDBStorage) or storage.get_heartbeat_interval() is None:
        yield
        return
    stop = threading.Event()

    def beat():
        while True:
            try:
                storage.record_heartbeat(trial._trial_id)
            except Exception:  # a lost connection must not kill the run; the next beat retries
                pass
            if stop.wait(storage.get_heartbeat_interval()):
                return

    thread = threading.Thread(target=beat, name=f"heartbeat-{trial.number}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _in_threads(work: Callable[[], None], n: int, on_interrupt: Callable[[], None] | None) -> None:
    """Run `work` on `n` threads until all return; Ctrl-C calls `on_interrupt` (which makes the
    threads' runs stop) and is raised once they have."""
    from concurrent.futures import ThreadPoolExecutor, wait

    with ThreadPoolExecutor(n, thread_name_prefix="trial") as pool:
        futures = [pool.submit(work) for _ in range(n)]
        try:
            while wait(futures, timeout=0.5).not_done:
                pass
        except KeyboardInterrupt:
            if on_interrupt is not None:
                on_interrupt()
            wait(futures)
            raise
        for future in futures:
            future.result()  # a thread's exception is the search's


@contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
