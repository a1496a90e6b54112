"""`ftbench dashboard`: a real optuna-dashboard on a tiny real study, on a free loopback port, fetched over
HTTP and stopped with Ctrl-C; bad input is one message and exit 2."""

import json
import signal
import subprocess
import sys
import urllib.request

import pytest

from conftest import PROJECT_ROOT, run_cli
from harness import store


def _study(root, name="tiny_hpo", trials=4):
    """A finished two-parameter study in `root/<name>/study.db`, recorded as `ftbench search` records it."""
    import optuna

    folder = root / name
    folder.mkdir(parents=True)
    url = f"sqlite:///{folder / 'study.db'}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=name, storage=url, direction="minimize")
    study.optimize(lambda t: (t.suggest_float("lr", 1e-4, 1e-2, log=True) - 1e-3) ** 2 + t.suggest_int("r", 4, 16),
                   n_trials=trials)
    (folder / store.SEARCH_FILE).write_text(json.dumps({
        "study_name": name, "storage": url, "sweep_file": "sweeps/tiny_hpo.yaml",
        "objectives": [{"metric": "eval_loss", "direction": "minimize"}], "pruner": "none", "sampler": "tpe"}))
    return url


def _get(url: str) -> tuple[int, bytes]:
    assert url.startswith("http://127.0.0.1:"), url  # loopback only
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status, response.read()


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def test_dashboard_serves_the_study_on_loopback_and_stops_on_ctrl_c(tmp_path):
    root = tmp_path / "results"
    _study(root)
    # started with SIGINT ignored, as a background job of a non-interactive shell is: Ctrl-C must still stop it
    proc = subprocess.Popen([sys.executable, "-m", "harness", "dashboard", "tiny_hpo", "--results", str(root)],
                            cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_ignore_sigint)
    try:
        line = proc.stdout.readline()  # printed once the socket listens
        assert "http://127.0.0.1:" in line, (line, proc.stderr.read() if proc.poll() is not None else "")
        url = next(w for w in line.split() if w.startswith("http://"))
        base = url.split("/dashboard")[0]
        status, page = _get(url)  # the study's page: the dashboard's single-page app
        assert status == 200 and b"<html" in page.lower()
        status, body = _get(f"{base}/api/studies")
        studies = json.loads(body)["study_summaries"]
        assert [s["study_name"] for s in studies] == ["tiny_hpo"]
        study_id = studies[0]["study_id"]
        status, body = _get(f"{base}/api/studies/{study_id}?after=0")
        trials = json.loads(body)["trials"]
        assert len(trials) == 4 and {p["name"] for p in trials[0]["params"]} == {"lr", "r"}
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert code == 0, proc.stderr.read()
    with pytest.raises(OSError):  # the port is closed
        _get(url)


def test_dashboard_in_process_on_a_free_port(tmp_path):
    """The same server through the Python API: port 0 picks a free port; stop() ends serve()."""
    import threading

    from harness.dashboard import open_dashboard

    root = tmp_path / "results"
    _study(root, trials=2)
    dashboard = open_dashboard("tiny_hpo", root)
    thread = threading.Thread(target=dashboard.serve, daemon=True)
    thread.start()
    try:
        assert dashboard.url.startswith("http://127.0.0.1:") and ":0/" not in dashboard.url
        status, _ = _get(dashboard.url.split("/dashboard")[0] + "/api/studies")
        assert status == 200
    finally:
        dashboard.stop()
        thread.join(timeout=10)
    assert not thread.is_alive()


def test_dashboard_unknown_search_names_the_allowed_ones(tmp_path):
    root = tmp_path / "results"
    _study(root, trials=1)
    res = run_cli("dashboard", "tiny_hpx", "--results", str(root))
    assert res.code == 2
    assert "unknown search `tiny_hpx`" in res.err and "Did you mean `tiny_hpo`?" in res.err
    assert "Searches with a study: tiny_hpo." in res.err and "Traceback" not in res.err


def test_dashboard_search_that_has_not_run_or_lost_its_storage(tmp_path):
    root = tmp_path / "results"
    res = run_cli("dashboard", "lora_hpo", "--results", str(root))  # a shipped sweep, never run here
    assert res.code == 2
    assert "search `lora_hpo` has not run" in res.err and "make search SWEEP=lora_hpo" in res.err
    assert "No search has run under" in res.err
    _study(root, trials=1)
    (root / "tiny_hpo" / "study.db").unlink()
    res = run_cli("dashboard", "tiny_hpo", "--results", str(root))
    assert res.code == 2 and "is gone" in res.err and "study.db does not exist" in res.err
    res = run_cli("dashboard", "tiny_hpo", "--results", str(root), "--port", "70000")
    assert res.code == 2 and "`--port`" in res.err
