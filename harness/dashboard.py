"""`ftbench dashboard`: optuna-dashboard on a search's Optuna storage, served on 127.0.0.1 only."""

from __future__ import annotations

import json
import os
import socketserver
from pathlib import Path
from urllib.parse import unquote
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from harness import store
from harness.errors import ConfigError, allowed, did_you_mean
from harness.search.study import JOURNAL_SUFFIXES, public_url

__all__ = ["HOST", "Dashboard", "open_dashboard", "searches_with_studies", "storage_of"]

#: the dashboard can rename studies and write notes: it never listens beyond this machine (tunnel it with ssh -L)
HOST = "127.0.0.1"
_FIELD = "SWEEP"


def searches_with_studies(root: Path) -> list[str]:
    """The searches under `root` whose study a dashboard can open (a `search.json` beside their runs)."""
    try:
        return sorted(d.name for d in Path(root).iterdir() if (d / store.SEARCH_FILE).is_file())
    except OSError:
        return []


def storage_of(sweep: str, root: Path, storage: str | None = None) -> tuple[str, str]:
    """(storage URL or journal file, study name) of search `sweep`'s study, checked to exist.

    Args:
        storage: the full URL, for a storage whose recorded one has no password (else $FTBENCH_STORAGE, else the
            one `ftbench search` recorded in results/SWEEP/search.json).

    Raises:
        ConfigError: an unknown search, one that has not run here, or a storage that is gone; the message
            names the searches that can be opened.
    """
    name = Path(sweep).stem if Path(sweep).suffix in (".yaml", ".yml") else sweep
    known = searches_with_studies(root)
    info_path = store.experiment_dir(name, root) / store.SEARCH_FILE
    if not info_path.is_file():
        shipped = Path("sweeps") / f"{name}.yaml"
        what = (f"search `{name}` has not run under {root} (no {store.SEARCH_FILE}): run `make search SWEEP={name}` "
                "first" if shipped.is_file() else f"unknown search `{name}`.{did_you_mean(name, known)}")
        what += "" if what.endswith((".", "?")) else "."
        raise ConfigError.one("", _FIELD, f"{what} {_openable(known, root)}")
    try:
        info = json.loads(info_path.read_text())
        study_name, recorded = str(info["study_name"]), str(info["storage"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError.one(str(info_path), "", f"unreadable search record ({type(exc).__name__}): rerun "
                              f"`make search SWEEP={name}` to rewrite it") from None
    url = storage or os.environ.get("FTBENCH_STORAGE") or recorded
    if "***" in url:
        raise ConfigError.one("", "--storage", f"the storage of `{name}` needs a password ({public_url(url)}): pass "
                              "the full URL with --storage or $FTBENCH_STORAGE")
    local = _local_file(url)
    if local is not None and not local.is_file():
        raise ConfigError.one("", _FIELD, f"the storage of search `{name}` is gone: {local} does not exist. "
                              f"{_openable(known, root)}")
    return url, study_name


def _openable(known: list[str], root: Path) -> str:
    return f"Searches with a study: {', '.join(known)}." if known else f"No search has run under {root}."


def _local_file(url: str) -> Path | None:
    """The file behind a SQLite URL or a journal, None for a database server."""
    if url.startswith("sqlite:///"):
        return Path(unquote(url[len("sqlite:///"):]))
    if "://" not in url and url.endswith(JOURNAL_SUFFIXES):
        return Path(url)
    return None


def _storage(url: str):
    import optuna

    if "://" in url:
        return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 30}}
                                          if url.startswith("sqlite") else {"pool_pre_ping": True})
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

    return optuna.storages.JournalStorage(JournalFileBackend(url, lock_obj=JournalFileOpenLock(url)))


class _Server(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a browser's open connection does not keep a stopped dashboard alive


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args) -> None:  # one line per request on stderr is noise here
        pass


class Dashboard:
    """An optuna-dashboard app on a storage, listening on 127.0.0.1 (port 0: a free one the OS picks)."""

    def __init__(self, url: str, study_name: str, port: int = 0):
        import optuna
        from optuna_dashboard import wsgi

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        storage = _storage(url)
        try:
            self.study_id = storage.get_study_id_from_name(study_name)
        except KeyError:
            names = [s.study_name for s in storage.get_all_studies()]
            raise ConfigError.one("", _FIELD, f"study `{study_name}` is not in {public_url(url)}. "
                                  f"{allowed(names) if names else 'It holds no study.'}") from None
        self._httpd = make_server(HOST, port, wsgi(storage), server_class=_Server, handler_class=_Quiet)

    @property
    def url(self) -> str:
        """The study's page."""
        return f"http://{HOST}:{self._httpd.server_port}/dashboard/studies/{self.study_id}"

    def serve(self) -> None:
        """Serve until interrupted (Ctrl-C, SIGTERM), then close the socket."""
        try:
            self._httpd.serve_forever(poll_interval=0.2)
        finally:
            self._httpd.server_close()

    def stop(self) -> None:
        self._httpd.shutdown()


def open_dashboard(sweep: str, root: Path, *, storage: str | None = None, port: int = 0) -> Dashboard:
    """A `Dashboard` on search `sweep`'s study (see `storage_of`; port 0: a free one).

    Raises:
        ConfigError: see `storage_of`; a port outside 0–65535 or already taken.
    """
    if not 0 <= port <= 65535:
        raise ConfigError.one("", "--port", f"must be in 0–65535 (0: a free one), but got {port}")
    url, study_name = storage_of(sweep, root, storage)
    try:
        return Dashboard(url, study_name, port)
    except OSError as exc:
        raise ConfigError.one("", "--port", f"cannot listen on {HOST}:{port}: {exc.strerror or exc}") from None
