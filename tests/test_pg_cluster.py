"""The throwaway PostgreSQL cluster (tests/pg_cluster.py) survives restarts and crashes."""

from __future__ import annotations

import psycopg
import pytest

from tests.pg_cluster import PostgresCluster

pytestmark = pytest.mark.slow


def _count(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*) FROM runs").fetchone()
    assert row is not None
    count: int = row[0]
    return count


def test_data_survives_a_fast_restart(postgres_cluster: PostgresCluster, postgres_dsn: str) -> None:
    with psycopg.connect(postgres_dsn) as conn:
        conn.execute("CREATE TABLE runs (id serial PRIMARY KEY, site text NOT NULL)")
        conn.execute("INSERT INTO runs (site) VALUES ('a'), ('b')")
    old_pid = postgres_cluster.postmaster_pid()

    postgres_cluster.restart("fast")

    assert postgres_cluster.is_running()
    assert postgres_cluster.postmaster_pid() != old_pid
    assert _count(postgres_dsn) == 2


def test_kill_breaks_connections_and_start_recovers(
    postgres_cluster: PostgresCluster, postgres_dsn: str
) -> None:
    with psycopg.connect(postgres_dsn) as conn:
        conn.execute("CREATE TABLE runs (id serial PRIMARY KEY, site text NOT NULL)")
        conn.execute("INSERT INTO runs (site) VALUES ('a')")
    survivor = psycopg.connect(postgres_dsn, autocommit=True)
    try:
        postgres_cluster.kill()
        assert not postgres_cluster.is_running()
        with pytest.raises(psycopg.OperationalError):
            survivor.execute("SELECT 1")
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(postgres_dsn, connect_timeout=2)
    finally:
        survivor.close()

    postgres_cluster.start()

    assert _count(postgres_dsn) == 1  # committed before the crash
    assert "database system was interrupted" in postgres_cluster.log_file.read_text()


def test_each_test_gets_a_fresh_database(
    postgres_cluster: PostgresCluster, postgres_dsn: str
) -> None:
    assert postgres_dsn != postgres_cluster.dsn
    assert postgres_dsn.startswith(f"postgresql://postgres@127.0.0.1:{postgres_cluster.port}/")
    with psycopg.connect(postgres_dsn) as conn:
        row = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchone()
        assert row == (0,)
    with psycopg.connect(postgres_cluster.dsn) as conn:  # the cluster's own database exists
        assert conn.execute("SELECT current_database()").fetchone() == ("akeeba",)
