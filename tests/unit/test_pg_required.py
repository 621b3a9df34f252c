"""The PostgreSQL search-worker tests fail (not skip, not fall back to SQLite) without a server."""

from __future__ import annotations

import pytest

from tests import pg_server


def test_a_missing_postgresql_fails_the_test(monkeypatch):
    monkeypatch.setattr(pg_server, "_bin", lambda name: None)
    assert "not installed" in pg_server.postgres_available()
    with pytest.raises(pytest.fail.Exception, match="PostgreSQL is not installed"):
        pg_server.require_postgres()


def test_the_ci_script_stops_when_postgresql_cannot_be_installed():
    script = (pg_server.Path(__file__).resolve().parents[2] / ".ci" / "run").read_text()
    block = script[script.index("apt-get install -y -qq postgresql") :]
    assert "exit 1" in block.split("fi", 1)[0] and "uses SQLite" not in script
