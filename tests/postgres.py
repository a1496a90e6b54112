"""A throwaway PostgreSQL server on 127.0.0.1 for tests (Debian's server binaries, installed by
scripts/install-postgres.sh): a fresh data dir, trust auth, a random port, stopped and deleted at exit.

Not a test module: `with postgres_server() as url: ...` yields `postgresql://postgres@127.0.0.1:PORT/ftbench`.
Missing server binaries skip the test locally and fail it under CI=true (CI must really run it).
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator


def bin_dir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def missing_reason() -> str | None:
    if bin_dir() is None:
        return "PostgreSQL server binaries (initdb) not found: run scripts/install-postgres.sh"
    try:
        import psycopg  # noqa: F401  (SQLAlchemy 2.1's default driver for postgresql://)
    except ImportError:
        return "psycopg is not installed (pip install 'psycopg[binary]')"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root without `runuser`: PostgreSQL refuses to run as root"
    return None


def require_postgres() -> None:
    import pytest

    reason = missing_reason()
    if reason is not None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"PostgreSQL test cannot run under CI=true: {reason}", pytrace=False)
        pytest.skip(f"PostgreSQL test skipped: {reason}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_server_user(args: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run its binaries as the `postgres` user then."""
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """Start a server on 127.0.0.1 only (no other address, socket in the data dir) and yield its URL."""
    binaries = bin_dir()
    # not under pytest's tmp_path: its parents are private to root, and the server runs as `postgres`
    top = Path(tempfile.mkdtemp(prefix="ftbench-pg-"))
    os.chmod(top, 0o755)
    data = top / "data"
    data.mkdir()
    if os.geteuid() == 0:
        shutil.chown(data, "postgres", "postgres")
    port = _free_port()
    log = top / "postgres.log"
    run = lambda *a: subprocess.run(_as_server_user(list(a)), check=True, capture_output=True, text=True)  # noqa: E731
    run(str(binaries / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
    if os.geteuid() == 0:
        log.touch()
        shutil.chown(log, "postgres", "postgres")
    run(str(binaries / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60", "start",
        "-o", f"-h 127.0.0.1 -p {port} -k {data}")
    try:
        run(str(binaries / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "ftbench")
        yield f"postgresql://postgres@127.0.0.1:{port}/ftbench"
    finally:
        subprocess.run(_as_server_user([str(binaries / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"]),
                       capture_output=True)
        shutil.rmtree(top, ignore_errors=True)
