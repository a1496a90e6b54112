"""The sweep plan: the runs of a grid (or of one search trial) with their untouched-base reference
rows, checked before anything starts, their `run:` reads pinned, in the order they must run.

`ftbench run` (and `--dry-run`) and `ftbench search` both build their runs here, so a search
trial that scores tasks gets its base row (and its forgetting figures) exactly as a grid run does."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from harness.config import Experiment, in_file_order
from harness.errors import ConfigError
from harness.grid import RunSpec, budget_confounds, expand_all, phases, with_reads, with_references
from harness.inputs import MAX_RUNS

__all__ = ["Plan", "build_plan", "plan_experiment"]


@dataclass(frozen=True)
class Plan:
    """What a sweep runs.

    Attributes:
        specs: every run once, reference rows first, with its settled id (the order a dry run lists).
        phases: the order runs start in: the reference rows (the others read their scores), then
            each run after the runs of the plan it reads (teacher → student, SFT → DPO).
        warnings: budget keys that move with the method (the comparison is not like for like).
        settled: the id each input run ended up with (a run that reads another has a new id).
    """

    specs: list[RunSpec]
    phases: list[list[RunSpec]]
    warnings: list[str]
    settled: dict[str, RunSpec]

    @property
    def references(self) -> list[RunSpec]:
        """The untouched-base rows other runs of the plan are measured against."""
        wanted = {s.reference for s in self.specs if s.reference}
        return [s for s in self.specs if s.run_id in wanted]

    def run_for(self, spec: RunSpec) -> RunSpec:
        """The planned form of an input run: its reference row set and its reads pinned."""
        return self.settled[spec.run_id]


def build_plan(specs: list[RunSpec], *, file: str, root: Path | None = None, check: bool = True) -> Plan:
    """Plan resolved runs: reference rows → preflight → pinned `run:` reads → phases.

    Args:
        specs: resolved runs (a grid's expansion, or one search trial's run).
        file: the experiment or sweep file, for messages.
        root: the results root (preflight looks up `run:` references in the store there).
        check: run the preflight (method fit, memory, data, tasks); off only where the same runs
            were checked already.

    Raises:
        ConfigError: every problem the preflight found; runs that read each other in a cycle; a
            `run:` name that matches several runs.
    """
    from harness import preflight

    warnings = [f"`{key}` differs between methods in this grid: their results are not like for like"
                for key in budget_confounds(specs)]
    trials = {s.run_id: s.trial for s in specs if s.trial}
    with_refs = with_references(specs)  # the untouched base, scored once, when runs score tasks
    # with_references rebuilds the runs it points at their base row; a search trial keeps its record
    with_refs = [dataclasses.replace(s, trial=trials[s.run_id]) if s.trial is None and s.run_id in trials else s
                 for s in with_refs]
    if check:
        preflight.check(with_refs, file=file, root=root)
    # the order comes from the ids the grid wrote (a `run:<run id>` names those), the ids from the runs read
    settled = dict(zip((s.run_id for s in with_refs), with_reads(with_refs, file=file)))
    order = [[settled[s.run_id] for s in phase] for phase in phases(with_refs, file=file)]
    return Plan(specs=list(settled.values()), phases=order, warnings=warnings, settled=settled)


def plan_experiment(experiment: Experiment, overrides: list[str] | None = None, *, file: str,
                    root: Path | None = None, max_runs: int = MAX_RUNS) -> Plan:
    """Expand an experiment's grid (with `--set` overrides) and plan it (`build_plan`).

    Every problem comes in one message, in file order: the file's top level, its grid, every grid point,
    and the model folders and data files the points name (checked even when their other sections failed).

    Args:
        max_runs: refuse a grid of more points than this (`--max-runs`).

    Raises:
        ConfigError: a bad override or grid, or anything `build_plan` raises.
    """
    from harness import preflight

    expansion = expand_all(experiment, overrides, max_runs=max_runs)
    if expansion.problems:
        found = preflight.check_inputs(expansion.inputs, file=file)
        problems = expansion.problems + [p for p in found if p not in expansion.problems]
        raise ConfigError(in_file_order(problems, experiment.lines, file))
    try:
        return build_plan(expansion.specs, file=file, root=root)
    except ConfigError as exc:
        raise ConfigError(in_file_order(exc.problems, experiment.lines, file)) from None
