"""The two databases state can live in: one SQLite file, or PostgreSQL shared by several daemons.

Both hold the same schema, built by the same list of migrations: the statements are written for
SQLite and translated for PostgreSQL (``REAL`` timestamps become ``DOUBLE PRECISION``, integer
columns ``BIGINT``, the autoincrement key an identity column), so one text is the truth for
both. Every statement the store sends is written once, with ``?`` placeholders, and each
database spells them its own way (:meth:`Database.sql`).

Connections are synchronous DB-API connections in autocommit mode, used from one worker thread
at a time: the caller sends ``BEGIN``/``COMMIT`` itself. Nothing here prints a connection string:
it may hold a password.
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
from abc import ABC, abstractmethod
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Protocol

STATE_FILE_NAME: Final = "state.db"

# Each entry moves the schema one version up; never edit a released one, append a new one.
MIGRATIONS: Final = (
    """
    CREATE TABLE schedule_state (
        site TEXT NOT NULL,
        schedule TEXT NOT NULL,
        data TEXT NOT NULL,
        last_fire_at REAL,
        PRIMARY KEY (site, schedule)
    );
    CREATE TABLE runs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        site TEXT NOT NULL,
        schedule TEXT NOT NULL,
        run_id TEXT NOT NULL,
        outcome TEXT NOT NULL,
        reason TEXT,
        message TEXT NOT NULL,
        started_at REAL NOT NULL,
        finished_at REAL NOT NULL,
        duration_seconds REAL NOT NULL,
        warnings TEXT NOT NULL,
        archive TEXT,
        archive_size_bytes INTEGER,
        backup_record_id INTEGER
    );
    CREATE INDEX runs_by_schedule ON runs (site, schedule, id);
    CREATE TABLE inflight (
        site TEXT NOT NULL,
        schedule TEXT NOT NULL,
        run_id TEXT NOT NULL,
        checkpoint TEXT NOT NULL,
        saved_at REAL NOT NULL,
        PRIMARY KEY (site, schedule)
    );
    CREATE TABLE pauses (
        site TEXT NOT NULL,
        schedule TEXT NOT NULL,
        PRIMARY KEY (site, schedule)
    );
    """,
    # 2: what the last fire time was measured against (cron and time zone), so that a schedule
    # whose timing changed while the daemon was down does not catch up on a fire it never had.
    """
    ALTER TABLE schedule_state ADD COLUMN fire_timing TEXT;
    """,
    # 3: several daemons sharing one database. A lease is a schedule's claim on its queued or
    # running fire, held by one instance and renewed until it ends; at most one running lease
    # per site (a second startBackup kills the first on the server). ``owner`` of an in-flight
    # run lets only the lease holder write its checkpoint. ``updated_at`` lets an instance
    # read what the others changed; ``fleet`` holds fleet-wide facts (the config generation).
    """
    CREATE TABLE leases (
        site TEXT NOT NULL,
        schedule TEXT NOT NULL,
        state TEXT NOT NULL,
        owner TEXT NOT NULL,
        expires_at REAL NOT NULL,
        fire_at REAL NOT NULL,
        group_name TEXT,
        run_id TEXT,
        PRIMARY KEY (site, schedule)
    );
    CREATE UNIQUE INDEX leases_one_run_per_site ON leases (site) WHERE state = 'running';
    ALTER TABLE inflight ADD COLUMN owner TEXT;
    ALTER TABLE schedule_state ADD COLUMN updated_at REAL;
    CREATE TABLE fleet (
        name TEXT PRIMARY KEY,
        generation INTEGER NOT NULL,
        value TEXT NOT NULL,
        updated_at REAL NOT NULL
    );
    """,
)
SCHEMA_VERSION: Final = len(MIGRATIONS)


class StateError(Exception):
    """The state database cannot be used; the message says which one and why."""


class Cursor(Protocol):
    """The part of a DB-API cursor the store uses."""

    @property
    def rowcount(self) -> int:
        """Rows changed by the statement."""
        ...

    def fetchone(self) -> Any:
        """Return the next row or None."""
        ...

    def fetchall(self) -> list[Any]:
        """Return the remaining rows."""
        ...

    def __iter__(self) -> Any:
        """Iterate over the rows."""
        ...


class Connection(Protocol):
    """The part of a DB-API connection the store uses (autocommit mode)."""

    def execute(self, sql: Any, parameters: Any = ..., /) -> Any:
        """Run one statement."""
        ...

    def close(self) -> None:
        """Close the connection."""
        ...


class Database(ABC):
    """Where state lives: opens migrated connections and speaks the database's SQL."""

    describe: str
    """Names the database in messages (a file path, or user@host:port/dbname); never a
    password."""
    errors: tuple[type[Exception], ...]
    """What a failing statement or connection raises."""
    begin: str = "BEGIN"
    """Starts a write transaction."""
    now: str
    """An SQL expression for the database's current time, in seconds since the epoch."""

    @abstractmethod
    def connect(self) -> Connection:
        """Return a connection to a database migrated to :data:`SCHEMA_VERSION`.

        Raise StateError when it cannot be opened (the message says why).
        """

    def sql(self, text: str) -> str:
        """Return ``text`` (written with ``?`` placeholders) in this database's spelling."""
        return text

    def execute(self, connection: Connection, text: str, parameters: Any = ()) -> Cursor:
        """Run one statement of ``?`` placeholders on ``connection``."""
        cursor: Cursor = connection.execute(self.sql(text), parameters)
        return cursor


class SqliteDatabase(Database):
    """One SQLite file (WAL mode), for a single daemon."""

    errors = (sqlite3.Error,)
    begin = "BEGIN IMMEDIATE"
    now = "((julianday('now') - 2440587.5) * 86400.0)"

    def __init__(self, path: Path, *, busy_timeout_seconds: float) -> None:
        """Keep state in the file ``path``; ``busy_timeout_seconds`` bounds the wait for a
        lock another process holds."""
        self.path = path
        self.describe = str(path)
        self._busy_timeout_seconds = busy_timeout_seconds

    def connect(self) -> Connection:
        """Open (creating or migrating) the file; a corrupt one is moved aside and replaced."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            return self._try_connect()
        except sqlite3.DatabaseError as error:
            if isinstance(error, sqlite3.OperationalError):
                raise StateError(f"cannot open {self.path}: {error}") from None
            aside = self._move_aside()
            self.moved_aside = (aside, str(error))
            try:
                return self._try_connect()
            except sqlite3.Error as again:
                raise StateError(f"cannot create {self.path}: {again}") from None
        except OSError as error:
            raise StateError(f"cannot open {self.path}: {error.strerror or error}") from None

    moved_aside: tuple[Path, str] | None = None
    """Set when :meth:`connect` found the file corrupt: where it went, and the error."""

    def _try_connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(
            self.path,
            timeout=self._busy_timeout_seconds,
            isolation_level=None,
            check_same_thread=False,
        )
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
            version = int(connection.execute("PRAGMA user_version").fetchone()[0])
            _refuse_newer(version, str(self.path))
            for number in range(version, SCHEMA_VERSION):
                # One transaction per step (executescript would commit a BEGIN sent apart).
                connection.executescript(
                    f"BEGIN IMMEDIATE;\n{MIGRATIONS[number]}\n"
                    f"PRAGMA user_version = {number + 1};\nCOMMIT;"
                )
            connection.execute("SELECT count(*) FROM schedule_state").fetchone()
        except BaseException:
            connection.close()
            raise
        return connection

    def _move_aside(self) -> Path:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        for suffix in ("", "-wal", "-shm"):
            source = Path(str(self.path) + suffix)
            if source.exists():
                source.rename(Path(str(aside) + suffix))
        return aside


_MIGRATION_LOCK_KEY: Final = 0x616B6565  # "akee": one daemon migrates at a time
_PG_TYPES: Final = (
    (
        re.compile(r"\bINTEGER PRIMARY KEY AUTOINCREMENT\b"),
        "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
    ),
    (re.compile(r"\bREAL\b"), "DOUBLE PRECISION"),
    (re.compile(r"\bINTEGER\b"), "BIGINT"),
)


def postgres_migration(text: str) -> str:
    """Return a migration written for SQLite in PostgreSQL's types."""
    for pattern, replacement in _PG_TYPES:
        text = pattern.sub(replacement, text)
    return text


def describe_dsn(dsn: str) -> str:
    """Return ``user@host:port/dbname`` of a libpq connection string, without its password."""
    try:
        from psycopg.conninfo import conninfo_to_dict

        parts = conninfo_to_dict(dsn)
    except Exception:
        return "PostgreSQL (connection string not readable)"
    user = parts.get("user") or "?"
    host = parts.get("host") or parts.get("hostaddr") or "local socket"
    port = parts.get("port") or "5432"
    name = parts.get("dbname") or user
    return f"PostgreSQL {user}@{host}:{port}/{name}"


class PostgresDatabase(Database):
    """A PostgreSQL database shared by every instance (needs the ``postgresql`` extra)."""

    now = "extract(epoch from clock_timestamp())::double precision"

    def __init__(self, dsn: str, *, connect_timeout_seconds: float = 5.0) -> None:
        """Connect with the libpq connection string or URI ``dsn``."""
        try:
            import psycopg
        except ImportError as error:
            raise StateError(
                "backend postgresql needs the psycopg driver: "
                "pip install 'akeeba-backupd[postgresql]'"
            ) from error
        self._psycopg = psycopg
        self._dsn = dsn
        self._connect_timeout_seconds = connect_timeout_seconds
        self.describe = describe_dsn(dsn)
        self.errors = (psycopg.Error,)

    def sql(self, text: str) -> str:
        """Return ``text`` with ``%s`` placeholders (and literal percent signs doubled)."""
        return text.replace("%", "%%").replace("?", "%s")

    def connect(self) -> Connection:
        """Connect and migrate under an advisory lock (instances may start together)."""
        psycopg = self._psycopg
        try:
            connection = psycopg.connect(
                self._dsn,
                autocommit=True,
                connect_timeout=max(1, round(self._connect_timeout_seconds)),
                application_name="akeeba-backupd",
            )
        except psycopg.Error as error:
            raise StateError(f"cannot connect to {self.describe}: {_first_line(error)}") from None
        try:
            self._migrate(connection)
        except psycopg.Error as error:
            connection.close()
            raise StateError(f"cannot open {self.describe}: {_first_line(error)}") from None
        except BaseException:
            connection.close()
            raise
        result: Connection = connection
        return result

    def _migrate(self, connection: Any) -> None:
        connection.execute("BEGIN")
        try:
            connection.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK_KEY,))
            connection.execute(
                "CREATE TABLE IF NOT EXISTS akeeba_schema (version INTEGER NOT NULL)"
            )
            row = connection.execute("SELECT max(version) FROM akeeba_schema").fetchone()
            version = int(row[0] or 0)
            _refuse_newer(version, self.describe)
            for number in range(version, SCHEMA_VERSION):
                connection.execute(postgres_migration(MIGRATIONS[number]))
                connection.execute("INSERT INTO akeeba_schema (version) VALUES (%s)", (number + 1,))
            connection.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(Exception):
                connection.execute("ROLLBACK")
            raise


def _refuse_newer(version: int, where: str) -> None:
    if version > SCHEMA_VERSION:
        raise StateError(
            f"{where} has schema version {version}, newer than this akeeba-backupd "
            f"knows ({SCHEMA_VERSION}): it was written by a newer release; not touching it"
        )


def _first_line(error: BaseException) -> str:
    """Return the first line of a driver error (libpq adds hints and context below it)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
