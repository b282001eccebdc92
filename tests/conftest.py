"""Fixtures shared by several test modules."""

from tests.pg_cluster import postgres_cluster, postgres_dsn

__all__ = ["postgres_cluster", "postgres_dsn"]
