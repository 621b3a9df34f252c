"""A throwaway PostgreSQL server for tests: a new cluster (initdb) in a temporary folder,
listening only on a unix socket there, stopped and deleted afterwards.

Debian's ``postgresql`` package provides initdb and pg_ctl (under /usr/lib/postgresql/N/bin);
PostgreSQL refuses to run as root, so as root the server runs as the ``postgres`` user.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator

__all__ = ["postgres_available", "postgres_server", "require_postgres"]


def _bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


def postgres_available() -> str | None:
    """None when a server can be started here, else the reason it cannot."""
    if _bin("initdb") is None or _bin("pg_ctl") is None:
        return "PostgreSQL is not installed (Debian: apt-get install postgresql)"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return 'the psycopg driver is not installed (pip install -e ".[postgres]" -c constraints.txt)'
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no 'postgres' user to run the server as"
    return None


def require_postgres() -> None:
    """Fail the calling test (never skip it, never fall back to SQLite) when no server can start."""
    import pytest

    reason = postgres_available()
    if reason is not None:
        pytest.fail(
            f"The PostgreSQL tests cannot run: {reason}. Install PostgreSQL (.ci/run does), "
            "or deselect them with -k sqlite."
        )


def _as_server_user(command: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """Start a server; yields a SQLAlchemy URL for its ``postgres`` database."""
    folder = Path(tempfile.mkdtemp(prefix="refusal-atlas-pg-"))
    data = folder / "data"
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
    port = _free_port()  # only names the socket file: TCP is off
    run = dict(check=True, capture_output=True, timeout=120)
    try:
        subprocess.run(
            _as_server_user([_bin("initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "--no-sync"]), **run
        )
        options = f"-k {folder} -p {port} -c listen_addresses='' -c fsync=off -c max_connections=40"
        subprocess.run(
            _as_server_user([_bin("pg_ctl"), "-D", str(data), "-l", str(folder / "log"), "-o", options, "-w", "start"]),
            **run,
        )
        yield f"postgresql://postgres@/postgres?host={folder}&port={port}"
    finally:
        subprocess.run(
            _as_server_user([_bin("pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"]),
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(folder, ignore_errors=True)
