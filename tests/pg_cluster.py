"""A throwaway PostgreSQL server for the tests of the PostgreSQL state backend.

:class:`PostgresCluster` runs Debian's (or any) ``initdb`` and ``pg_ctl`` in a temporary
folder: the server listens on 127.0.0.1 only, at a free port (never the Debian cluster's
5432), with its unix socket in that folder, ``trust`` authentication and no fsync. Tests can
stop, restart and crash it (``kill()`` is SIGKILL for the postmaster and its backends).

As root (CI) initdb and postgres refuse to run, so they run as the ``postgres`` system user
that Debian's package creates, via ``runuser``; the folder is chowned to that user.

Fixtures, made visible to every test by ``tests/conftest.py``:

* ``postgres_cluster`` (session): a started :class:`PostgresCluster`.
* ``postgres_dsn`` (function): the DSN of a fresh database in that cluster.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import pytest

from tests.tools import REQUIRE_TOOLS_VARIABLE

PG_LIB_DIR = Path("/usr/lib/postgresql")
"""Where Debian installs each major version's server binaries (``<version>/bin``)."""

SERVER_PROGRAMS = ("initdb", "pg_ctl", "postgres")
SYSTEM_USER = "postgres"
"""The user the server runs as when the tests run as root."""
SUPERUSER = "postgres"
"""The database superuser that initdb creates."""
INSTALL_HINT = "./scripts/test installs Debian's postgresql package"

StopMode = Literal["smart", "fast", "immediate"]


def find_postgres_bin() -> Path | None:
    """Return the folder holding initdb, pg_ctl and postgres, or None when there is none.

    Debian's ``/usr/lib/postgresql/<version>/bin`` of the highest version first, then the
    folder of an ``initdb`` on PATH (other distributions, Homebrew, ...).
    """

    def complete(folder: Path) -> bool:
        return all(os.access(folder / name, os.X_OK) for name in SERVER_PROGRAMS)

    def version(folder: Path) -> tuple[int, ...]:
        numbers = re.findall(r"\d+", folder.parent.name)
        return tuple(int(n) for n in numbers)

    debian = sorted(
        (folder for folder in PG_LIB_DIR.glob("*/bin") if complete(folder)),
        key=version,
        reverse=True,
    )
    if debian:
        return debian[0]
    initdb = shutil.which("initdb")
    if initdb is not None and complete(Path(initdb).parent):
        return Path(initdb).parent
    return None


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is no zombie (it need not be our child)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    # "pid (comm) state ...": comm may hold spaces and parentheses
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def _children(pid: int) -> list[int]:
    """The pids of the processes whose parent is ``pid`` (Linux /proc; else none)."""
    found = []
    for entry in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = entry.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if len(fields) > 1 and fields[1] == str(pid):
            found.append(int(entry.parent.name))
    return found


class PostgresError(RuntimeError):
    """A PostgreSQL program failed; the message ends with the server log's tail."""


class PostgresCluster:
    """One throwaway PostgreSQL cluster in a temporary folder.

    >>> cluster = PostgresCluster()   # initdb; nothing runs yet
    >>> cluster.start()               # pg_ctl start -w
    >>> dsn = cluster.create_database("t1")
    >>> cluster.kill(); cluster.start()  # crash, then crash recovery
    >>> cluster.cleanup()             # stop immediately, remove the folder

    Also a context manager: ``with PostgresCluster() as cluster:`` starts and cleans up.
    """

    def __init__(self, bin_dir: Path | None = None, *, database: str = "akeeba") -> None:
        found = bin_dir if bin_dir is not None else find_postgres_bin()
        if found is None:
            raise PostgresError(f"PostgreSQL's server programs are not installed: {INSTALL_HINT}")
        self.bin_dir = found
        self.database = database
        self._run_as: str | None = None
        if os.geteuid() == 0:
            try:
                pwd.getpwnam(SYSTEM_USER)
            except KeyError:
                raise PostgresError(
                    f"running as root needs the {SYSTEM_USER!r} system user, "
                    "which Debian's postgresql package creates"
                ) from None
            self._run_as = SYSTEM_USER
        self.base = Path(tempfile.mkdtemp(prefix="akeeba-pg-"))
        self.data_dir = self.base / "data"
        self.log_file = self.base / "postgres.log"
        self.port = free_port()
        self._databases = itertools.count(1)
        self._database_created = False
        try:
            if self._run_as is not None:
                shutil.chown(self.base, user=self._run_as, group=None)
            self._initdb()
        except BaseException:
            shutil.rmtree(self.base, ignore_errors=True)
            raise

    # --- addresses ---------------------------------------------------------

    def dsn_for(self, database: str) -> str:
        """The DSN of ``database`` in this cluster (TCP on 127.0.0.1, no password)."""
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    @property
    def dsn(self) -> str:
        """The DSN of the cluster's own database (``akeeba`` unless told otherwise)."""
        return self.dsn_for(self.database)

    @property
    def socket_dir(self) -> Path:
        """The folder of the unix socket (``host=`` for a unix-socket connection)."""
        return self.base

    # --- lifecycle ---------------------------------------------------------

    def start(self) -> None:
        """Start the server and wait until it accepts connections (after crash recovery).

        On the first start a taken port (another process won the race for it) is replaced
        by a fresh one; afterwards the port stays, so that DSNs stay valid.
        """
        if self.is_running():
            return
        self._remove_stale_lock_files()
        attempts = 1 if self._database_created else 3
        for attempt in range(attempts):
            try:
                self._pg_ctl("start", "-w", "-t", "60", "-l", str(self.log_file))
                break
            except PostgresError as error:
                if attempt + 1 == attempts or "could not bind" not in str(error):
                    raise
                self.port = free_port()
                self._write_settings()
        if not self._database_created:
            self._create(self.database)
            self._database_created = True

    def stop(self, mode: StopMode = "fast") -> None:
        """Stop the server (``pg_ctl stop -m mode``) and wait for it to be gone."""
        if not self.is_running():
            return
        self._pg_ctl("stop", "-w", "-t", "60", "-m", mode)

    def restart(self, mode: StopMode = "fast") -> None:
        """Stop (``mode``) and start again; DSNs stay valid."""
        self.stop(mode)
        self.start()

    def kill(self) -> None:
        """Crash the server: SIGKILL the postmaster and its backends, wait until all are gone.

        The next :meth:`start` runs crash recovery, as after a power cut (committed data
        survives: the OS kept it even without fsync).
        """
        pid = self.postmaster_pid()
        if pid is None or not _alive(pid):
            return
        shmid = self._shared_memory_id()
        victims = [pid, *_children(pid)]
        for victim in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while any(_alive(victim) for victim in victims):
            if time.monotonic() > deadline:
                raise PostgresError(f"processes {victims} outlived SIGKILL for 10 s")
            time.sleep(0.01)
        # start() removes postmaster.pid (see _remove_stale_lock_files), which names this
        # SysV segment (a few bytes), so that postgres could remove it: remove it here
        if shmid is not None:
            subprocess.run(["ipcrm", "-m", str(shmid)], capture_output=True, check=False)

    def is_running(self) -> bool:
        """Whether the postmaster of this cluster is alive (it may still be starting)."""
        pid = self.postmaster_pid()
        return pid is not None and _alive(pid)

    def postmaster_pid(self) -> int | None:
        """The pid in ``postmaster.pid``, or None when there is no such file."""
        try:
            first = (self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0]
        except (FileNotFoundError, PermissionError):
            return None
        return int(first) if first.strip().isdigit() else None

    def _shared_memory_id(self) -> int | None:
        """The SysV shared memory id in ``postmaster.pid`` (line 7: "key id"), if any."""
        try:
            lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
        except (FileNotFoundError, PermissionError):
            return None
        fields = lines[6].split() if len(lines) > 6 else []
        return int(fields[1]) if len(fields) == 2 and fields[1].isdigit() else None

    def cleanup(self) -> None:
        """Stop the server at once if it runs and remove the temporary folder."""
        try:
            if self.is_running():
                try:
                    self.stop("immediate")
                except PostgresError:
                    self.kill()
        finally:
            shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> PostgresCluster:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.cleanup()

    # --- databases ---------------------------------------------------------

    def create_database(self, name: str | None = None) -> str:
        """Create database ``name`` (default: a new ``akeeba_test_<n>``); return its DSN."""
        if name is None:
            name = f"akeeba_test_{next(self._databases)}"
        self._create(name)
        return self.dsn_for(name)

    def drop_database(self, name: str) -> None:
        """Drop database ``name``, ending its connections first."""
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.dsn_for("postgres"), autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    def log_tail(self, lines: int = 20) -> str:
        """The last ``lines`` lines of the server log (for failure messages)."""
        try:
            text = self.log_file.read_text(errors="replace")
        except (FileNotFoundError, PermissionError):
            return "(no server log)"
        return "\n".join(text.splitlines()[-lines:])

    # --- internals ---------------------------------------------------------

    def _create(self, name: str) -> None:
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.dsn_for("postgres"), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))

    def _initdb(self) -> None:
        self._run(
            "initdb",
            "-D", str(self.data_dir),
            "-U", SUPERUSER,
            "-A", "trust",  # pg_hba: local and 127.0.0.1/::1 only, no password
            "-E", "UTF8",
            "--locale=C",
            "--no-sync",
            "--no-instructions",
        )  # fmt: skip
        self._write_settings()

    def _write_settings(self) -> None:
        """(Re)write the settings in ``postgresql.auto.conf``, which wins over the rest."""
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.base}'",
            "fsync": "off",
            # synchronous_commit stays on: a commit reaches the OS before it returns, so that
            # it survives kill() (fsync=off only loses data when the OS itself crashes)
            "full_page_writes": "off",
            "shared_buffers": "'32MB'",
            "logging_collector": "off",
            "log_min_messages": "warning",
        }
        text = "".join(f"{key} = {value}\n" for key, value in settings.items())
        path = self.data_dir / "postgresql.auto.conf"
        path.write_text(text)
        if self._run_as is not None:
            shutil.chown(path, user=self._run_as, group=None)

    def _remove_stale_lock_files(self) -> None:
        """Remove the lock files of a postmaster that is dead (after :meth:`kill`).

        A killed postmaster is a zombie until init reaps it, which may take a while (or never
        happen, under a PID 1 that does not reap); postgres takes a zombie's pid in its lock
        files for a live server and refuses to start. Callers made sure that it is dead.
        """
        (self.data_dir / "postmaster.pid").unlink(missing_ok=True)
        (self.socket_dir / f".s.PGSQL.{self.port}.lock").unlink(missing_ok=True)

    def _pg_ctl(self, *args: str) -> None:
        self._run("pg_ctl", "-D", str(self.data_dir), *args)

    def _run(self, program: str, *args: str) -> None:
        command = [str(self.bin_dir / program), *args]
        if self._run_as is not None:
            command = ["runuser", "-u", self._run_as, "--", *command]
        # libpq's PG* variables (PGDATA, PGPORT, ...) of the developer's shell must not leak in
        env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
        result = subprocess.run(
            command,
            cwd=self.base,  # the postgres user may not enter the caller's folder
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if result.returncode != 0:
            raise PostgresError(
                f"{program} {' '.join(args)} exited {result.returncode}:\n"
                f"{result.stdout}{result.stderr}\n--- server log ---\n{self.log_tail()}"
            )


# --- fixtures --------------------------------------------------------------


def _missing_postgres(message: str) -> None:
    """Skip on a developer's machine, fail under scripts/test or CI (tests/tools.py)."""
    if os.environ.get(REQUIRE_TOOLS_VARIABLE) or os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """A started throwaway cluster shared by the session; DSN base: ``cluster.dsn``."""
    if find_postgres_bin() is None:
        _missing_postgres(f"PostgreSQL's initdb is not installed: {INSTALL_HINT}")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        _missing_postgres("psycopg is not installed: pip install -e '.[test]' installs it")
    cluster = PostgresCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.cleanup()


@pytest.fixture
def postgres_dsn(postgres_cluster: PostgresCluster) -> Iterator[str]:
    """The DSN of a fresh, empty database of its own in the session's cluster.

    A test may stop or kill the cluster: it is started again afterwards for the next test.
    """
    dsn = postgres_cluster.create_database()
    yield dsn
    if not postgres_cluster.is_running():
        postgres_cluster.start()
    postgres_cluster.drop_database(dsn.rsplit("/", 1)[1])
