"""Optuna plumbing for a sweep: storage from a URL, sampler and pruner from the sweep file, the study itself."""

from __future__ import annotations

import inspect
import warnings
from pathlib import Path

from harness.errors import ConfigError, allowed, did_you_mean
from harness.search.space import Sweep, grid_space, read_sweep, violation

JOURNAL_SUFFIXES = (".log", ".journal", ".jsonl")
#: study attribute counting the workers that joined (each samples with its own seed)
WORKERS_ATTR = "ftbench_workers"
#: the companion study that prunes a multi-objective study on its first objective
FIRST_OBJECTIVE_SUFFIX = ":first-objective"


def default_storage(results: Path, sweep: str) -> str:
    """SQLite beside the sweep's run records: results/<sweep>/study.db."""
    from harness import store

    path = store.experiment_dir(sweep, results).resolve()  # a sweep name is one folder name inside the root
    path.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path / 'study.db'}"


def public_url(url: str) -> str:
    """The storage URL without its password, safe to print or write to a file."""
    if "://" not in url:
        return url
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not an SQLAlchemy URL: drop anything that looks like credentials
        scheme, _, rest = url.partition("://")
        return f"{scheme}://{rest.rpartition('@')[2]}"


def load_sweep(path: str | Path) -> Sweep:
    """Read and validate a sweep file; Optuna checks its sampler's and pruner's options now, before
    any storage is touched.

    Raises:
        ConfigError: every problem at once, each naming the file and the field.
    """
    sweep = read_sweep(path)
    make_sampler(sweep), make_pruner(sweep)
    return sweep


def make_storage(url: str, sweep: Sweep):
    """An Optuna storage: an SQLAlchemy URL (sqlite, postgresql, mysql) with heartbeats, or a journal file.

    RDB storages record a heartbeat per running trial; a trial whose worker stopped beating for
    `heartbeat.grace` seconds is marked FAIL and re-queued once (`heartbeat.max_retry`).
    """
    import optuna

    if "://" not in url:
        if not url.endswith(JOURNAL_SUFFIXES):
            raise ConfigError.one("--storage", "", f"a storage is an SQLAlchemy URL (sqlite:///file.db, "
                                  f"postgresql://user@host/db) or a journal file ending in {', '.join(JOURNAL_SUFFIXES)}, "
                                  f"but got {public_url(url)!r}")
        from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

        Path(url).parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(url, lock_obj=JournalFileOpenLock(url)))
    engine_kwargs = {"connect_args": {"timeout": 30}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats are "experimental"
            retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=sweep.heartbeat.max_retry)
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs,
                                              heartbeat_interval=sweep.heartbeat.interval,
                                              grace_period=sweep.heartbeat.grace, heartbeat_stale_trial_callback=retry)
    except ImportError as exc:  # e.g. no psycopg for postgresql://
        raise ConfigError.one("--storage", "", f"{public_url(url)}: the database driver is missing ({exc}); "
                              "for PostgreSQL: pip install 'psycopg[binary]' (or: pip install .[postgres])") from None
    except Exception as exc:  # unreachable server, bad credentials: say so before any trial starts
        raise ConfigError.one("--storage", "", f"cannot open {public_url(url)}: {type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''}") from None


def _build(kind: str, cls, options: dict, file: str):
    """Instantiate an Optuna sampler/pruner class with the sweep file's extra options, checked by name."""
    import optuna

    params = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    bad = [k for k in options if k not in params]
    if bad:
        raise ConfigError.one(file, f"{kind}.{bad[0]}", f"not an argument of optuna's {cls.__name__}."
                              f"{did_you_mean(bad[0], params)} {allowed(params)}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # e.g. TPE's `group`
            return cls(**options)
    except (TypeError, ValueError) as exc:
        raise ConfigError.one(file, kind, f"optuna's {cls.__name__} refused these options: {exc}") from None


def make_sampler(sweep: Sweep, worker: int = 0):
    """TPE by default (NSGA-II for several objectives when asked), random or grid; constraints wired in.

    Worker k of a study samples with `seed + k`: workers with one seed would propose the same points.
    """
    import optuna

    options = dict(sweep.sampler.model_extra or {})
    options["seed"] = None if sweep.sampler.seed is None else sweep.sampler.seed + worker
    constraints = sweep.parsed_constraints()
    if constraints and sweep.sampler.name in ("tpe", "nsga2"):
        options["constraints_func"] = lambda trial: [violation(trial.user_attrs.get("metrics", {}), c)
                                                     for c in constraints]
    name = sweep.sampler.name
    if name == "tpe":
        options.setdefault("multivariate", True)  # conditional spaces: sample each group of params jointly
        options.setdefault("group", True)
        return _build("sampler", optuna.samplers.TPESampler, options, sweep.file)
    if name == "nsga2":
        return _build("sampler", optuna.samplers.NSGAIISampler, options, sweep.file)
    if name == "random":
        return _build("sampler", optuna.samplers.RandomSampler, options, sweep.file)
    return _build("sampler", optuna.samplers.GridSampler, {"search_space": grid_space(sweep.space), **options},
                  sweep.file)


PRUNER_CLASSES = {"median": "MedianPruner", "percentile": "PercentilePruner",
                  "successive_halving": "SuccessiveHalvingPruner", "hyperband": "HyperbandPruner", "none": "NopPruner"}


def make_pruner(sweep: Sweep):
    import optuna

    cls = getattr(optuna.pruners, PRUNER_CLASSES[sweep.pruner.name])
    return _build("pruner", cls, dict(sweep.pruner.model_extra or {}), sweep.file)


def open_study(sweep: Sweep, storage, study_name: str | None = None):
    """Create the sweep's study or join it; returns (study, first-objective companion or None).

    Optuna refuses `trial.report` in multi-objective studies, so a multi-objective sweep with a
    pruner keeps a single-objective companion study (same storage, `<name>:first-objective`)
    whose trials mirror the main ones on the first objective: the pruner rules on those.
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    name = study_name or sweep.name
    study = optuna.create_study(storage=storage, sampler=make_sampler(sweep), pruner=make_pruner(sweep),
                                study_name=name, load_if_exists=True, directions=sweep.directions)
    worker = int(study.user_attrs.get(WORKERS_ATTR, 0))  # callers hold the sweep's lock: no two get one number
    study.set_user_attr(WORKERS_ATTR, worker + 1)
    study.sampler = make_sampler(sweep, worker)
    if [d.name.lower() for d in study.directions] != sweep.directions:
        raise ConfigError.one(sweep.file, "objectives", f"study `{name}` already exists with directions "
                              f"{[d.name.lower() for d in study.directions]}: use another study name")
    companion = None
    if len(sweep.objectives) > 1 and sweep.pruner.name != "none":
        companion = optuna.create_study(storage=storage, pruner=make_pruner(sweep),
                                        sampler=optuna.samplers.RandomSampler(seed=0),
                                        study_name=name + FIRST_OBJECTIVE_SUFFIX, load_if_exists=True,
                                        direction=sweep.directions[0])
    return study, companion
