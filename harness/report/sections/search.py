"""Search: the Optuna study behind a search's runs (its trials and optuna's own figures)."""

from __future__ import annotations

from harness.report import search
from harness.report.context import ReportContext
from harness.report.document import Section, frame_table
from harness.report.sections.base import register


@register("search", order=140)
def search_section(ctx: ReportContext) -> list[Section]:
    """The study's objectives, sampler, trial states and figures; nothing for an experiment that is not a search."""
    study, info = search.load_study(ctx.experiment, ctx.root, ctx.storage)
    if info is None:
        return []
    names = ", ".join(f"{o['metric']} ({o['direction']})" for o in info["objectives"])
    section = Section("Search", paragraphs=[
        f"Study `{info['study_name']}` in {info['storage']}: {names}; sampler {info['sampler']}, pruner {info['pruner']}. "
        "Every trial is one of the runs above; pruned trials stopped early on their periodic eval loss."])
    if study is None:
        section.paragraphs.append(f"The study could not be opened ({info.get('error')}); pass its full URL with "
                                  "--storage or $FTBENCH_STORAGE.")
        return [section]
    trials = search.trials_frame(study, info)
    objectives = {o["metric"] for o in info["objectives"]}
    if "test_loss" in ctx.df and not objectives & {"test_loss", "test_ppl"} and len(trials):
        # the study chose on its objectives (validation); the test split is shown beside them, never chosen on
        test = dict(zip(ctx.df["run_id"], ctx.df["test_loss"]))
        trials.insert(len(info["objectives"]) + 2, "test_loss (not searched)", trials["run"].map(test))
    counts = trials["state"].value_counts().to_dict() if len(trials) else {}
    section.paragraphs.append(f"{len(trials)} trials: " + ", ".join(f"{n} {s.lower()}" for s, n in counts.items()) + ".")
    section.figures.extend(search.figures(study, info))
    fmt = {o["metric"]: "{:.4g}" for o in info["objectives"]} | {"test_loss (not searched)": "{:.4g}"}
    section.tables.append(frame_table(trials, "Every trial of the study: its objectives on the validation split, "
                                              "the test split's loss beside them", fmt))
    return [section]
