"""The `ftbench` command line: run (sweep), ls, show, methods, eval, search, report, compare, leaderboard."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from harness.errors import ConfigError

EXPERIMENTS_DIR = Path("experiments")


def _console(stderr: bool = False) -> Console:
    """A console that keeps tables readable when output goes to a file or CI log."""
    console = Console(stderr=stderr)
    return console if console.is_terminal else Console(stderr=stderr, width=200)


def _experiment_path(name: str) -> Path:
    """`peft_comparison` → experiments/peft_comparison.yaml; paths pass through."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return path
    return EXPERIMENTS_DIR / f"{name}.yaml"


def cmd_run(args) -> int:
    from harness import store
    from harness.config import in_file_order, load_experiment
    from harness.plan import plan_experiment
    from harness.plugins import import_plugins
    from harness.report.table import runs_table

    _check_counts(args)
    console = _console()
    path = _experiment_path(args.experiment)
    experiment = load_experiment(path, strict=False)  # its top-level problems come with the grid's, in one message
    try:  # on --dry-run too: a plugin registers the methods and datasets the grid names
        import_plugins(experiment.plugins, base=path.parent, file=str(path))
    except ConfigError as exc:
        raise ConfigError(in_file_order([*experiment.problems, *exc.problems], experiment.lines, str(path))) from None
    root = Path(args.results) if args.results else store.results_root()
    if not args.dry_run and not experiment.problems:  # a store that cannot take results stops the sweep here
        store.check_writable(store.experiment_dir(experiment.name, root), flag="--results" if args.results else "")
    plan = plan_experiment(experiment, args.set, file=str(path), root=root, max_runs=args.max_runs)
    for warning in plan.warnings:
        console.print(f"[yellow]warning:[/] {warning}")
    estimates, over_budget, plan = _memory_check(args, plan)
    specs = plan.specs
    if args.dry_run:
        statuses = [store.status_of(store.run_dir(s.experiment, s.run_id, root)) for s in specs]
        forecasts, device_name = _forecasts(specs, statuses, estimates, root)
        console.print(_grid_table(specs, statuses, estimates, forecasts))
        for s, status in zip(specs, statuses):
            if status == store.DAMAGED:
                damage = store.inspect(store.run_dir(s.experiment, s.run_id, root))[1]
                console.print(f"[yellow]damaged:[/] {s.slug} {s.run_id}: {escape(damage)} (archived and rerun by "
                              f"the sweep)", highlight=False)
        counts = {}
        for st in statuses:
            counts[st] = counts.get(st, 0) + 1
        console.print(f"{len(specs)} runs: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) + " (dry run: nothing started)")
        from harness.forecast import summary

        for line in summary(specs, estimates or {}, forecasts, device_name, workers=getattr(args, "workers", 1) or 1):
            console.print(line, highlight=False, soft_wrap=True)
    if over_budget:
        for line in over_budget:
            console.print(f"[red]over budget:[/] {escape(line)}", highlight=False, soft_wrap=True)
        if not args.allow_over_budget:
            console.print(f"{len(over_budget)} runs would not fit: nothing started "
                          "(--allow-over-budget runs them anyway)")
            return 2
    if args.dry_run:
        return 0
    executor = _executor(args, experiment, root)
    # reference rows first (the runs read their general_ppl for the forgetting figures), teachers before students
    results = [r for phase in plan.phases
               for r in executor.run(phase, plugins=experiment.plugins, experiment_dir=str(path.parent.resolve()))]
    console.print(runs_table(results, title=f"{experiment.name}: {len(results)} runs"))
    bad = [r for r in results if r is None or r["status"] != "ok"]
    if bad:
        console.print(f"[red]{len(bad)} of {len(results)} runs did not finish ok[/] (see `ftbench show RUN_ID`)")
    return 1 if bad else 0


def _memory_check(args, plan):
    """(the peak-memory estimate of every run, or None when not needed; one line per run whose train
    estimate exceeds the budget; the plan with every `micro_batch: auto` run settled). The budget is
    `--memory-budget`, else on CUDA the GPU's free memory; on CPU without the flag nothing is refused,
    and `micro_batch: auto` fits the machine's available memory.

    Raises:
        ConfigError: `--memory-budget` is not a size.
    """
    import dataclasses

    from harness import memory, models, preflight

    budget = getattr(args, "memory_budget", None)
    if budget is not None:
        try:
            budget = memory.parse_size(budget)
        except ValueError as exc:
            raise ConfigError.one("", "--memory-budget", str(exc)) from None
    device = models.pick_device()
    auto = any(s.config.train.auto_batch for s in plan.specs)
    if budget is None and device == "cuda" and (auto or not args.dry_run):
        import torch

        budget = torch.cuda.mem_get_info()[0] / 2**20
    if budget is None and not args.dry_run and not auto:
        return None, [], plan
    fitted = budget
    if fitted is None:  # CPU without --memory-budget: auto fits what the machine has free now
        import psutil

        fitted = psutil.virtual_memory().available / 2**20
    specs, chosen = preflight.fit_batches(plan.specs, device, fitted)
    if auto:
        by_id = {s.run_id: s for s in specs}
        plan = dataclasses.replace(plan, specs=specs, phases=[[by_id[s.run_id] for s in ph] for ph in plan.phases],
                                   settled={k: by_id.get(v.run_id, v) for k, v in plan.settled.items()})
    # the auto runs were estimated at their chosen size while being fitted
    estimates = {**preflight.estimates([s for s in specs if s.run_id not in chosen], device), **chosen}
    over = [memory.over_budget_line(s.slug, s.config, estimates[s.run_id], budget) for s in specs
            if budget is not None and estimates.get(s.run_id) is not None and estimates[s.run_id].train_mb > budget
            and s.config.method.cls.trains]
    return estimates, over, plan


def _check_counts(args) -> None:
    """`--workers` and `--max-runs` must be positive (checked before anything is read).

    Raises:
        ConfigError: zero or a negative count.
    """
    for flag, value in (("--workers", getattr(args, "workers", None)), ("--max-runs", getattr(args, "max_runs", None))):
        if value is not None and value < 1:
            raise ConfigError.one("", flag, f"must be a positive integer, but got {value}")


def _executor(args, experiment, root: Path, **ray_options):
    """The executor `--executor` names: local (a process pool here) or ray (one actor per run on a cluster)."""
    if args.executor == "ray":
        from harness.ray_executor import RayExecutor

        return RayExecutor(address=args.address, resources=experiment.resources.model_dump(exclude_none=True),
                           artifacts_uri=args.artifacts_uri or experiment.artifacts_uri, root=root,
                           force=getattr(args, "force", False), retry_failed=getattr(args, "retry_failed", False),
                           console=_console(stderr=True), file=experiment.file, exclusive=args.exclusive,
                           **ray_options)
    if args.address or args.artifacts_uri:
        flag = "--address" if args.address else "--artifacts-uri"
        raise ConfigError.one("", flag, "applies to `--executor ray` only")
    from harness.executor import LocalExecutor

    return LocalExecutor(workers=getattr(args, "workers", None), force=getattr(args, "force", False),
                         retry_failed=getattr(args, "retry_failed", False), root=root, console=_console(stderr=True),
                         exclusive=args.exclusive)


def _add_executor_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--executor", choices=["local", "ray"], default="local",
                        help="local: runs in processes on this machine; ray: one Ray actor per run on a cluster")
    parser.add_argument("--address", default=None,
                        help="ray: the cluster (auto, ray://host:10001; default $RAY_ADDRESS, else a local Ray instance)")
    parser.add_argument("--artifacts-uri", default=None,
                        help="ray: put adapters here (any fsspec URI) instead of sending them back (default: the "
                             "experiment's artifacts_uri)")
    parser.add_argument("--exclusive", action=argparse.BooleanOptionalAction, default=None,
                        help="refuse to start a run on a GPU another process uses (recorded failed; rerun with "
                             "--retry-failed); default: on with GPUs, off on CPU")


def _add_max_runs(parser: argparse.ArgumentParser, what: str) -> None:
    from harness.inputs import MAX_RUNS

    parser.add_argument("--max-runs", type=int, default=MAX_RUNS, metavar="N",
                        help=f"the most {what}; more is refused before anything is built (default {MAX_RUNS})")


def _forecasts(specs, statuses: list[str], estimates: dict | None, root: Path) -> tuple[dict, str]:
    """({run id: `harness.forecast.Forecast`} for the runs not finished, the device's name)."""
    from harness import forecast, measure, models

    device_name = measure.device_name(models.pick_device())
    history = forecast.History.read(root, device_name)
    out = {}
    for s, status in zip(specs, statuses):
        est = (estimates or {}).get(s.run_id)
        if status != "ok" and est is not None and s.config.method.cls.trains and s.config.objective.build().fine_tunes:
            out[s.run_id] = forecast.forecast(s.config, est.tokens, est, history)
    return out, device_name


def _grid_table(specs, statuses: list[str], estimates: dict | None = None, forecasts: dict | None = None) -> Table:
    axes = list(dict.fromkeys(k for s in specs for k in s.varied))
    table = Table(header_style="bold")
    mem = ("train MiB (est)", "eval MiB (est)") if estimates is not None else ()
    batch = ("micro × accum",) if any(s.batch for s in specs) else ()
    mem += ("min (est)",) if any(f and f.total_s for f in (forecasts or {}).values()) else ()
    for col in ("slug", "run id", *axes, *batch, *mem, "status"):
        table.add_column(col, justify="right" if col in mem else "left")
    for s, status in zip(specs, statuses):
        est = (estimates or {}).get(s.run_id)
        cells = () if not mem else ("–", "–") if est is None else (
            f"{est.train_mb:,.0f}" if s.config.method.cls.trains else "–", f"{est.eval_mb:,.0f}")
        if "min (est)" in mem:
            f = (forecasts or {}).get(s.run_id)
            cells += (f"{f.total_s / 60:.1f}" if f and f.total_s else "–",)
        chosen = () if not batch else (f"{s.batch['micro_batch']} × {s.batch['grad_accum']} (auto)" if s.batch
                                        else f"{s.config.train.micro_batch} × {s.config.train.grad_accum}",)
        table.add_row(s.slug, s.run_id.rsplit("-", 1)[1], *[str(s.varied.get(a, "")) for a in axes], *chosen, *cells,
                      {"ok": "done"}.get(status, status))
    return table


def cmd_ls(args) -> int:
    from harness import store
    from harness.report.table import runs_table

    root = Path(args.results) if args.results else store.results_root()
    results = store.iter_results(args.experiment, root)
    others = store.incomplete(args.experiment, root)
    if not results and not others:
        print(f"no finished runs for experiment `{args.experiment}` under {root}", file=sys.stderr)
        return 2
    console = _console()
    if results:
        console.print(runs_table(results, title=f"{args.experiment}: {len(results)} runs"))
    for run in others:  # damaged records and unfinished runs: listed, never a reason to stop
        console.print(f"{run.state:>10} {run.slug}  {run.run_id}: {run.reason}", highlight=False, markup=False)
    return 0 if results else 2


def cmd_show(args) -> int:
    from harness import store

    root = Path(args.results) if args.results else store.results_root()
    experiment, _, run = args.run_id.rpartition("/")
    found = store.match_runs(run, root, experiment=experiment or None)
    if not found:
        where = f"experiment `{experiment}` under {root}" if experiment else str(root)
        print(f"no run `{run}` in {where}", file=sys.stderr)
        return 2
    if len(found) > 1:
        print(f"`{args.run_id}` is ambiguous: it names {len(found)} runs; pass one as EXP/RUN_ID:\n"
              + "\n".join(f"  {d.parent.name}/{d.name}" for d in found), file=sys.stderr)
        return 2
    [directory] = found
    result, damage = store.inspect(directory)
    if damage:
        print(f"{directory}: damaged ({damage})", file=sys.stderr)
        return 1
    if result is None:
        print(f"{directory}: unfinished (no result.json)", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2))
    return 0


def cmd_methods(args) -> int:
    from rich.markup import escape

    from harness.methods import METHODS
    from harness.methods.generic import peft_config_classes

    table = Table(header_style="bold", title="built-in methods (method: {name: NAME, ...options})")
    for col in ("name", "what it trains", "options (defaults)", "notes"):
        table.add_column(col)
    for name in METHODS.names():
        cls = METHODS.get(name)
        options = ", ".join(f"{k}={f.default!r}" if not f.is_required() else f"{k} (required)"
                            for k, f in cls.Options.model_fields.items())
        stackable = cls.stack_role is not None  # a property on `peft`: depends on the config class
        notes = [n for n, on in (("4-bit base", cls.requires_4bit), ("merges", cls.merges),
                                 ("padded batches", not cls.supports_packing),
                                 ("not in stacks", not stackable and name != "stack")) if on]
        table.add_row(name, escape(cls.description), escape(options) or "–", ", ".join(notes))
    console = _console()
    console.print(table)
    console.print("peft config classes for `method: {name: peft, config: CLASS, ...fields}`: "
                  + ", ".join(sorted(peft_config_classes())))
    return 0


def cmd_eval(args) -> int:
    from harness import store
    from harness.preflight import check_tasks
    from harness.rescore import score_runs

    root = Path(args.results) if args.results else store.results_root()
    experiment = _experiment_name(args.experiment)
    if not store.iter_results(experiment, root):
        print(f"no finished runs for experiment `{experiment}` under {root}", file=sys.stderr)
        return 2
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None
    if args.limit is not None and args.limit >= 1:
        args.limit = int(args.limit)  # lm-eval: < 1 is a fraction, otherwise a count
    if tasks:
        problems = check_tasks(tasks, file="--tasks")
        if problems:
            raise ConfigError(problems)
    console = _console()
    t0 = time.perf_counter()
    summary = score_runs(experiment, root=root, tasks=tasks, limit=args.limit, num_fewshot=args.num_fewshot,
                         batch_size=args.batch_size, force=args.force, log=console.print)
    runs = len({run for run, _ in summary.scored})
    for run, reason in summary.skipped:
        console.print(f"[yellow]skipped[/] {run}: {reason}")
    if not summary.scored:
        console.print("nothing to score: every finished run has the requested task scores (use --force to redo)")
        return 0
    one = summary.load_s[0] if summary.load_s else 0.0
    console.print(f"scored {len(summary.scored)} (run, task) pairs of {runs} runs in {time.perf_counter() - t0:.1f} s "
                  f"on {summary.base_loads} base load(s) of {one:.1f} s; loading the base once per run would "
                  f"have cost about {summary.saved_s(runs):.1f} s more")
    return 0


def cmd_report(args) -> int:
    from harness import store
    from harness.inputs import inside
    from harness.report.build import build
    from harness.report.render import write

    root = Path(args.results) if args.results else store.results_root()
    experiment = _experiment_name(args.experiment)
    if args.price_per_hour < 0:
        raise ConfigError.one("", "--price-per-hour", f"must be ≥ 0, but got {args.price_per_hour}")
    if not store.iter_results(experiment, root):
        damaged = sum(r.state == store.DAMAGED for r in store.incomplete(experiment, root))
        print(f"no finished runs for experiment `{experiment}` under {root}"
              + (f" ({damaged} damaged: `ftbench ls {experiment}` lists them)" if damaged else "")
              + f": run `make sweep EXP={experiment}` first", file=sys.stderr)
        return 2
    report = build(experiment, root, price_per_hour=args.price_per_hour, target_loss=args.target_loss,
                   storage=args.storage, expected=_expected_runs(args.experiment, root))
    paths = write(report, inside(args.out, experiment, field="--out"))
    console = _console()
    for kind, path in paths.items():
        console.print(f"{kind:>8}: {path}")
    if report.absent:
        counts = {}
        for row in report.absent:
            counts[row["status"]] = counts.get(row["status"], 0) + 1
        console.print("[yellow]" + ", ".join(f"{n} {state}" for state, n in counts.items())
                      + " run(s) are not in this report: see its Failures section[/]")
    for section in report.sections:
        if section.title == "Findings":
            for line in section.bullets[:6]:
                console.print(f"  • {line}", highlight=False, markup=False)
    return 0


def _expected_runs(experiment: str, root: Path) -> list | None:
    """The runs an experiment file plans (reference rows included), to name those the store lacks; None
    when only a name was given, or when the file no longer expands without its plugins (never imported here)."""
    path = Path(experiment)
    if path.suffix not in (".yaml", ".yml") or not path.is_file():
        return None
    from harness.config import load_experiment
    from harness.grid import expand
    from harness.plan import build_plan

    try:
        return build_plan(expand(load_experiment(path)), file=str(path), root=root, check=False).specs
    except (ConfigError, KeyError, ValueError):  # e.g. a plugin's method: the report goes on without the grid
        return None


def cmd_transfer(args) -> int:
    """Print an experiment's transfer matrix: rows trained on, columns evaluated on, Δ loss vs the base."""
    from rich.table import Table

    from harness import store
    from harness.report.domains import transfer_matrix
    from harness.report.frame import load_runs

    root = Path(args.results) if args.results else store.results_root()
    experiment = _experiment_name(args.experiment)
    df = load_runs(experiment, root)
    if df.attrs.get("superseded"):
        from harness.report.build import superseded_note

        print(superseded_note(df.attrs["superseded"]), file=sys.stderr)
    matrix = transfer_matrix(df) if not df.empty else None
    if matrix is None:
        print(f"no single-task or multitask runs scored on `eval.sources` in experiment `{experiment}` under {root}",
              file=sys.stderr)
        return 2
    values = matrix.raw if args.raw or not matrix.relative else matrix.values
    what = "eval loss" if values is matrix.raw else "Δ eval loss vs the base (negative: better)"
    table = Table(title=f"{experiment}: transfer matrix, {what}; rows trained on, columns evaluated on")
    table.add_column("trained on")
    for source in values.columns:
        table.add_column(source, justify="right")
    for label, row in values.iterrows():
        own = matrix.in_domain.get(label)
        table.add_row(label, *(f"[bold]{v:+.3f}[/bold]" if own == s and values is not matrix.raw else
                               f"{v:+.3f}" if values is not matrix.raw else f"{v:.3f}" for s, v in row.items()))
    if matrix.base:
        table.add_row("base (untrained)", *(f"{matrix.base.get(s, float('nan')):.3f}" for s in values.columns))
    _console().print(table)
    return 0


def _write_cross_report(report, out: str, name: str) -> int:
    """Write a report over several experiments under `out/name` and print where it went."""
    from harness.inputs import inside
    from harness.report.render import write

    paths = write(report, inside(out, name, field="--out"))
    console = _console()
    for kind, path in paths.items():
        console.print(f"{kind:>8}: {path}")
    return 0


def cmd_compare(args) -> int:
    """One side-by-side report over several experiments of one store."""
    from harness import store
    from harness.report.compare import compare

    root = Path(args.results) if args.results else store.results_root()
    names = [_experiment_name(e) for e in args.experiments]
    report = compare(names, root)
    return _write_cross_report(report, args.out, "compare-" + "-vs-".join(names))


def cmd_leaderboard(args) -> int:
    """Every experiment's configurations on one model and data set, ranked; printed and written as a report."""
    from harness import store
    from harness.report.compare import leaderboard

    root = Path(args.results) if args.results else store.results_root()
    report = leaderboard(root, model=args.model, data=args.data, metric=args.metric, top=args.top)
    table = report.sections[0].tables[0]
    out = Table(title=table.caption)
    for column in table.columns:
        out.add_column(column, justify="left" if column in ("experiment", "configuration") else "right")
    for row in table.rows:
        out.add_row(*(escape(c.text) for c in row))
    _console().print(out)
    # a model may be a path or a hub id: its folder name keeps letters, digits, `.`, `_` and `-`
    folder = re.sub(r"[^\w.-]+", "_", report.experiment).strip("._") or "leaderboard"
    return _write_cross_report(report, args.out, folder)


def cmd_search(args) -> int:
    from harness import store
    from harness.search import Search, load_sweep, sweep_path
    from harness.search.study import default_storage, public_url

    _check_counts(args)
    if args.trials is not None and args.trials < 1:
        raise ConfigError.one("", "--trials", f"must be >= 1, but got {args.trials}")
    if args.timeout is not None and args.timeout <= 0:
        raise ConfigError.one("", "--timeout", f"must be > 0 seconds, but got {args.timeout}")
    sweep = load_sweep(sweep_path(args.sweep))
    trials = args.trials or sweep.n_trials
    if trials > args.max_runs:
        raise ConfigError.one(sweep.file if args.trials is None else "", "n_trials" if args.trials is None else "--trials",
                              f"{trials:,} trials are more than the {args.max_runs:,} runs allowed; pass "
                              f"`--max-runs {trials}` if you mean it")
    root = Path(args.results) if args.results else store.results_root()
    store.check_writable(store.experiment_dir(sweep.name, root), flag="--results" if args.results else "")
    storage = args.storage or os.environ.get("FTBENCH_STORAGE") or default_storage(root, sweep.name)
    search = Search(sweep, storage_url=storage, root=root, study_name=args.study_name)  # checks every sampled method first
    console = _console()
    executor, parallel = None, 1
    if args.executor == "ray" or args.address or args.artifacts_uri:
        # several trials at once, each run's view off (the trial lines say what finished)
        executor = _executor(args, search.experiment, root, poll_s=0.2, progress=False)
        parallel = executor.capacity()
    elif args.exclusive is not None:  # one trial at a time here, as the search's own executor runs them
        from harness.executor import LocalExecutor

        executor = LocalExecutor(workers=1, root=root, poll_s=0.2, exclusive=args.exclusive)
    console.print(f"search `{sweep.name}`: study `{search.study.study_name}` in {public_url(storage)}; "
                  f"{args.trials or sweep.n_trials} trials in all, {', '.join(o.metric + ' (' + o.direction + ')' for o in sweep.objectives)}"
                  + (f"; {parallel} at once on Ray" if args.executor == "ray" else ""))
    outcomes = search.run(n_trials=args.trials, timeout=args.timeout, executor=executor, parallel=parallel,
                          log=lambda line: console.print(line, highlight=False))
    best = search.best_trials()
    table = Table(header_style="bold", title=f"{sweep.name}: best trial(s) of {len(search.study.trials)}")
    for col in ("trial", *(o.metric for o in sweep.objectives), "params", "run"):
        table.add_column(col)
    for t in best:
        table.add_row(str(t.number), *(f"{v:.5g}" for v in t.values),
                      ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in t.params.items()),
                      str(t.user_attrs.get("run_id", "")))
    console.print(table)
    if best:
        console.print(f"ready-to-run experiment: {store.experiment_dir(sweep.name, root) / 'best.yaml'}")
    console.print(f"this worker ran {len(outcomes)} trial(s)")
    return 0


def cmd_dashboard(args) -> int:
    """optuna-dashboard on a search's study, on 127.0.0.1, until Ctrl-C."""
    from harness import store
    from harness.dashboard import open_dashboard

    root = Path(args.results) if args.results else store.results_root()
    dashboard = open_dashboard(args.sweep, root, storage=args.storage, port=args.port)
    # a server that says "Ctrl-C stops it" must stop on it even when started with SIGINT ignored (a background
    # job of a non-interactive shell, a parent that ignores it); SIGTERM stops it the same way
    import signal

    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    print(f"optuna-dashboard for search `{args.sweep}`: {dashboard.url}  (Ctrl-C stops it)", flush=True)
    try:
        dashboard.serve()
    except KeyboardInterrupt:
        pass
    print("dashboard stopped", file=sys.stderr)
    return 0


def cmd_export(args) -> int:
    """A finished run's weights and model card in a folder ready for `hf upload`."""
    from harness import store
    from harness.export import export

    root = Path(args.results) if args.results else store.results_root()
    out = export(args.run, Path(args.to), merged=args.merged, root=root)
    kind = "merged model (safetensors)" if args.merged else "adapter"
    print(f"{kind} with its model card: {out}\nupload: hf upload ORG/NAME {out} .  (or: huggingface-cli upload "
          f"ORG/NAME {out} .)")
    return 0


def cmd_docs(args) -> int:
    from harness import docs

    if args.write:
        changed, broken = docs.write(args.root)
        for path in changed:
            print(f"rewrote {path}")
        for drift in broken:
            print(f"error: {drift}", file=sys.stderr)
        return 1 if broken else 0
    drifts = docs.check(args.root)
    for drift in drifts:
        print(f"drifted: {drift}", file=sys.stderr)
    if drifts:
        print("run `make docs` (ftbench docs --write) to regenerate them", file=sys.stderr)
        return 1
    print(f"docs: every generated block matches its registry ({len(docs.pages(args.root))} pages)")
    return 0


def _experiment_name(experiment: str) -> str:
    """`EXP` may be a name, `experiments/NAME.yaml` or a path: the results folder is the file's name."""
    path = Path(experiment)
    if path.suffix in (".yaml", ".yml"):
        from harness.config import load_experiment

        return load_experiment(path).name if path.is_file() else path.stem
    return experiment


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ftbench", description="Benchmark LLM fine-tuning methods.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run (or --dry-run) an experiment grid")
    run.add_argument("experiment", help="experiments/NAME.yaml, or just NAME")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config key, e.g. train.max_steps=500 (repeatable)")
    run.add_argument("--dry-run", action="store_true", help="print the expanded grid (with each run's estimated peak "
                     "memory) and run nothing")
    run.add_argument("--memory-budget", default=None, metavar="SIZE",
                     help="refuse (exit 2) before anything starts if a run's estimated train peak exceeds SIZE "
                          "(1.5GiB, 800MiB); default: the free GPU memory on CUDA, no limit on CPU")
    run.add_argument("--allow-over-budget", action="store_true",
                     help="report runs over the memory budget but run them anyway")
    run.add_argument("--workers", type=int, default=None, help="runs at once (default: one per GPU, 1 on CPU)")
    run.add_argument("--force", action="store_true", help="rerun finished runs (old results are archived)")
    run.add_argument("--retry-failed", action="store_true", help="rerun failed/oom/diverged runs")
    run.add_argument("--results", default=None, help="results root (default: $FTBENCH_RESULTS or ./results)")
    _add_max_runs(run, "grid points (runs) an experiment may expand to")
    _add_executor_flags(run)
    run.set_defaults(func=cmd_run)
    ls = sub.add_parser("ls", help="one line per finished run of an experiment")
    ls.add_argument("experiment")
    ls.add_argument("--results", default=None)
    ls.set_defaults(func=cmd_ls)
    show = sub.add_parser("show", help="the whole record of one run (id, slug or hash; EXP/RUN picks the experiment)")
    show.add_argument("run_id", metavar="[EXP/]RUN")
    show.add_argument("--results", default=None)
    show.set_defaults(func=cmd_show)
    methods = sub.add_parser("methods", help="list built-in methods and the peft config classes available")
    methods.set_defaults(func=cmd_methods)
    ev = sub.add_parser("eval", help="score finished runs on tasks they lack, loading each base model once")
    ev.add_argument("experiment", help="experiment name (its results folder) or experiments/NAME.yaml")
    ev.add_argument("--tasks", help="comma-separated task names (default: each run's eval.tasks)")
    ev.add_argument("--limit", type=float, default=None, help="documents per task (a fraction if < 1)")
    ev.add_argument("--num-fewshot", type=int, default=None)
    ev.add_argument("--batch-size", type=int, default=None, help="default: each run's eval.batch_size")
    ev.add_argument("--force", action="store_true", help="rescore cached task scores too")
    ev.add_argument("--results", help="results root (default $FTBENCH_RESULTS or ./results)")
    ev.set_defaults(func=cmd_eval)

    se = sub.add_parser("search", help="an Optuna search from sweeps/NAME.yaml; workers with the same storage join one study")
    se.add_argument("sweep", help="sweeps/NAME.yaml, or just NAME")
    se.add_argument("--trials", type=int, default=None, help="trials in the whole study (default: the file's n_trials)")
    se.add_argument("--timeout", type=float, default=None, help="stop asking for trials after this many seconds")
    se.add_argument("--storage", default=None,
                    help="SQLAlchemy URL or journal file (default: $FTBENCH_STORAGE, else sqlite:///results/SWEEP/study.db)")
    se.add_argument("--study-name", default=None, help="default: the sweep's name")
    se.add_argument("--results", help="results root (default $FTBENCH_RESULTS or ./results)")
    _add_max_runs(se, "trials a search may ask for (--trials, else the sweep's n_trials)")
    _add_executor_flags(se)
    se.set_defaults(func=cmd_search)

    tr = sub.add_parser("transfer", help="print an experiment's transfer matrix (single-task and multitask runs "
                                         "scored on eval.sources)")
    tr.add_argument("experiment", help="experiment name (its results folder) or experiments/NAME.yaml")
    tr.add_argument("--raw", action="store_true", help="eval losses, not their change against the base row")
    tr.add_argument("--results", help="results root (default $FTBENCH_RESULTS or ./results)")
    tr.set_defaults(func=cmd_transfer)

    cp = sub.add_parser("compare", help="one side-by-side report over several experiments: matched configurations, "
                                        "paired differences, what differs between them")
    cp.add_argument("experiments", nargs="+", metavar="EXP", help="experiment names (results folders) or "
                    "experiments/NAME.yaml; the first is the baseline")
    cp.add_argument("--results", help="results root (default $FTBENCH_RESULTS or ./results)")
    cp.add_argument("--out", default="reports", help="reports root (default ./reports): writes "
                    "OUT/compare-A-vs-B/report.html, report.md, summary.csv")
    cp.set_defaults(func=cmd_compare)

    lb = sub.add_parser("leaderboard", help="every experiment's configurations on one model and data set, ranked")
    lb.add_argument("--model", help="the spec's model.name (needed when the store holds several)")
    lb.add_argument("--data", help="the spec's data.name (needed when the store holds several)")
    lb.add_argument("--metric", default="eval_ppl", help="rank by this figure, in its declared direction (eval_ppl)")
    lb.add_argument("--top", type=int, default=None, help="only the best N")
    lb.add_argument("--results", help="results root (default $FTBENCH_RESULTS or ./results)")
    lb.add_argument("--out", default="reports", help="reports root (default ./reports): writes "
                    "OUT/leaderboard-MODEL-DATA/")
    lb.set_defaults(func=cmd_leaderboard)

    rep = sub.add_parser("report", help="write reports/EXP/report.html, report.md and summary.csv from the store")
    rep.add_argument("experiment", help="experiment name (its results folder) or experiments/NAME.yaml")
    rep.add_argument("--results", help="results root (default $FTBENCH_RESULTS or ./results)")
    rep.add_argument("--out", default="reports", help="reports root (default ./reports)")
    rep.add_argument("--price-per-hour", type=float, default=2.0, help="$ per GPU-hour for the cost section (2.0)")
    rep.add_argument("--target-loss", type=float, default=None,
                     help="data-size curves: the eval loss each method must reach (default: the level all reach)")
    rep.add_argument("--storage", default=None,
                     help="a search's Optuna storage URL, when the one recorded has a password (or $FTBENCH_STORAGE)")
    rep.set_defaults(func=cmd_report)

    dc = sub.add_parser("docs", help="check (default) or rewrite the tables in README.md and docs/ generated "
                                     "from the registries")
    mode = dc.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="exit 1 naming every drifted page and block (default)")
    mode.add_argument("--write", action="store_true", help="rewrite the generated blocks")
    dc.add_argument("--root", default=".", help="the folder holding README.md and docs/ (default: .)")
    dc.set_defaults(func=cmd_docs)

    db = sub.add_parser("dashboard", help="serve optuna-dashboard on a search's study (127.0.0.1 only) and print "
                                          "its URL")
    db.add_argument("sweep", help="the search's name (its results folder) or sweeps/NAME.yaml")
    db.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default 0: a free one)")
    db.add_argument("--storage", default=None,
                    help="the study's storage URL, when the recorded one has a password (or $FTBENCH_STORAGE)")
    db.add_argument("--results", help="results root (default $FTBENCH_RESULTS or ./results)")
    db.set_defaults(func=cmd_dashboard)

    ex = sub.add_parser("export", help="write a finished run's weights and model card to a folder ready to upload")
    ex.add_argument("run", metavar="[EXP/]RUN", help="run id, slug or hash (EXP/RUN picks the experiment)")
    ex.add_argument("--to", required=True, metavar="DIR", help="a new (or empty) folder")
    ex.add_argument("--merged", action="store_true",
                    help="merge the adapter into the base model and write full weights (safetensors) and tokenizer")
    ex.add_argument("--results", help="results root (default $FTBENCH_RESULTS or ./results)")
    ex.set_defaults(func=cmd_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"error: {exc.render()}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: unfinished runs are rerun by the next sweep", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
