"""The report's search section: the Optuna study behind a sweep's runs (history, importances, parallel
coordinates, Pareto front), drawn with optuna's own matplotlib visualizations."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import pandas as pd

from harness import store
from harness.report.figures import _png

def load_study(experiment: str, root: Path | None = None, storage: str | None = None):
    """(study, search.json) of a sweep's results folder, or (None, info or None) when there is none to open.

    The storage in search.json has no password: pass the full URL (`--storage` or $FTBENCH_STORAGE) for
    a server that needs one.
    """
    path = store.experiment_dir(experiment, root) / store.SEARCH_FILE
    if not path.is_file():
        return None, None
    info = json.loads(path.read_text())
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = storage or os.environ.get("FTBENCH_STORAGE") or info["storage"]
    try:
        if "://" in url:
            study = optuna.load_study(study_name=info["study_name"], storage=url)
        else:
            from optuna.storages.journal import JournalFileBackend

            study = optuna.load_study(study_name=info["study_name"],
                                      storage=optuna.storages.JournalStorage(JournalFileBackend(url)))
    except Exception as exc:  # unreachable server, missing password: the rest of the report still stands
        info["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        return None, info
    return study, info


def trials_frame(study, info: dict) -> pd.DataFrame:
    """One row per trial: number, state, objective values, params, run status and id."""
    names = [o["metric"] for o in info["objectives"]]
    rows = []
    for t in study.get_trials(deepcopy=False):
        row = {"trial": t.number, "state": t.state.name}
        for i, name in enumerate(names):
            row[name] = t.values[i] if t.values else None
        row["params"] = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in t.params.items())
        row["run status"] = t.user_attrs.get("status")
        row["run"] = t.user_attrs.get("run_id")
        rows.append(row)
    return pd.DataFrame(rows)


def figures(study, info: dict) -> list[tuple[str, bytes, str]]:
    """optuna.visualization.matplotlib figures that this study has enough trials for."""
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    names = [o["metric"] for o in info["objectives"]]
    multi = len(names) > 1
    target = (lambda t: t.values[0]) if multi else None
    plots = [("search_history.png", lambda: ovm.plot_optimization_history(study, target=target, target_name=names[0]),
              f"{names[0]} per trial, best so far"),
             ("search_importances.png", lambda: ovm.plot_param_importances(study, target=target, target_name=names[0]),
              f"parameter importances for {names[0]} (fANOVA)"),
             ("search_parallel.png", lambda: ovm.plot_parallel_coordinate(study, target=target, target_name=names[0]),
              f"parallel coordinates, coloured by {names[0]}")]
    if multi:
        plots.append(("search_pareto.png", lambda: ovm.plot_pareto_front(study, target_names=names),
                      f"Pareto front of {' and '.join(names)}"))
    out = []
    for name, draw, caption in plots:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # optuna marks its matplotlib backend experimental
                ax = draw()
        except (ValueError, RuntimeError, ZeroDivisionError):  # too few complete trials for this plot
            plt.close("all")
            continue
        fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
        fig.set_size_inches(7.5, 4.2)
        out.append((name, _png(fig), caption))
    return out
