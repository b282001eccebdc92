"""The shipped systemd unit, ``systemd/akeeba-backupd.service``, checked by systemd's own tools.

- ``systemd-analyze verify`` prints nothing for it (in a copy whose daemon path points at the
  installed console script, since /opt/akeeba-backupd is not installed here);
- ``systemd-analyze security --offline=true`` rates its exposure at 2.0 or less;
- the directives the daemon relies on are there and agree with it (watchdog interval, stop
  timeout against the shutdown grace, credentials against how the config expands %d/);
- its ExecStartPre, ExecStart and ExecReload, run as written (only the install path and the
  config path swapped), drive the real daemon the way systemd would: check passes, READY=1 and
  WATCHDOG=1 arrive, the reload is acknowledged, SIGTERM stops it with exit 0, and it writes
  nothing outside its state directory.

systemd-analyze comes with Debian's ``systemd`` package (``scripts/test`` installs it). The unit
is never started: nothing here talks to a running systemd.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import stat
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from akeeba_backupd.cli import _parser
from akeeba_backupd.config import load_config
from akeeba_backupd.systemd import watchdog_interval_seconds
from tests.daemon_harness import (
    ChildProcess,
    NotifySocket,
    child_environment,
    console_command,
    fields,
    free_port,
)
from tests.tools import require_tool

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
UNIT_PATH = ROOT / "systemd" / "akeeba-backupd.service"
UNIT_NAME = UNIT_PATH.name
INSTALLED_COMMAND = "/opt/akeeba-backupd/bin/akeeba-backupd"
"""Where the unit expects the console script (the README's venv in /opt/akeeba-backupd)."""
MAX_EXPOSURE = 2.0
STOP_MARGIN_SECONDS = 15.0
"""What TimeoutStopSec must leave beyond --shutdown-grace: cancelling the runs, closing the
state store and the listener."""
MIN_WATCHDOG_SLACK_SECONDS = 10.0
"""How late a WATCHDOG=1 may be (a busy event loop) before systemd would kill the daemon."""


# --- reading the unit ------------------------------------------------------------------------


@dataclass(frozen=True)
class Unit:
    """A unit file's settings: (section, key) → every value, in order, resets applied."""

    text: str
    settings: dict[tuple[str, str], list[str]]
    comments: list[str]

    def all(self, section: str, key: str) -> list[str]:
        """Return every value of ``key`` in ``section`` (after the last empty reset)."""
        return self.settings.get((section, key), [])

    def one(self, section: str, key: str) -> str:
        """Return the single value of ``key`` in ``section``; fail unless there is exactly one."""
        values = self.all(section, key)
        assert len(values) == 1, f"[{section}] {key}= should be set once, got {values!r}"
        return values[0]


def parse_unit(text: str) -> Unit:
    """Parse unit-file syntax: sections, ``Key=value`` lines, backslash continuations."""
    settings: dict[tuple[str, str], list[str]] = {}
    comments: list[str] = []
    section = ""
    pending = ""
    for raw in text.splitlines():
        line = pending + raw.strip() if pending else raw.strip()
        pending = ""
        if not line:
            continue
        if line[0] in "#;":
            comments.append(line[1:].strip())
            continue
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, separator, value = line.partition("=")
        assert separator, f"not a Key=value line: {line!r}"
        values = settings.setdefault((section, key.strip()), [])
        if value.strip():
            values.append(value.strip())
        else:
            values.clear()  # an empty assignment resets the list
    return Unit(text, settings, comments)


@pytest.fixture(scope="module")
def unit() -> Unit:
    """Return the shipped unit, parsed."""
    return parse_unit(UNIT_PATH.read_text(encoding="utf-8"))


def command_argv(value: str) -> list[str]:
    """Return the argv of an Exec*= value, without systemd's prefixes (-, @, :, +, !)."""
    argv = shlex.split(value)
    argv[0] = argv[0].lstrip("-@:+!")
    return argv


def timespan_seconds(text: str) -> float:
    """Return a systemd time span (``60s``, ``1min 30s``, ``90``) in seconds."""
    units = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "sec": 1.0, "min": 60.0, "m": 60.0, "h": 3600.0}
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]+)", text)
    assert parts, f"not a time span: {text!r}"
    assert re.fullmatch(r"(\s*\d+(\.\d+)?\s*[a-z]+)+\s*", text), f"odd time span: {text!r}"
    return sum(float(number) * units[unit] for number, unit in parts)


def installed_console_script() -> str:
    """Return the path of the installed ``akeeba-backupd`` console script."""
    command = console_command()
    if len(command) != 1:
        pytest.fail("the akeeba-backupd console script is not installed next to this Python")
    return command[0]


def with_console_script(argv: list[str]) -> list[str]:
    """Return ``argv`` with the unit's install path swapped for the installed console script."""
    assert argv[0] == INSTALLED_COMMAND, f"unexpected command {argv[0]!r}"
    return [installed_console_script(), *argv[1:]]


def with_config(argv: list[str], config: Path) -> list[str]:
    """Return ``argv`` with the value of ``--config`` replaced by ``config``."""
    index = argv.index("--config")
    return [*argv[: index + 1], str(config), *argv[index + 2 :]]


# --- systemd-analyze ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def systemd_analyze() -> str:
    """Return the path of systemd-analyze; skip without it, but fail in CI."""
    return require_tool("systemd-analyze", "./scripts/test installs Debian's systemd package")


@pytest.fixture
def runnable_unit(tmp_path: Path, unit: Unit) -> Path:
    """Return a copy of the unit whose commands exist here: the daemon path points at the
    installed console script; everything else (/bin/kill included) is left exactly as shipped."""
    directory = tmp_path / "units"
    directory.mkdir()
    copy = directory / UNIT_NAME
    copy.write_text(unit.text.replace(INSTALLED_COMMAND, installed_console_script()))
    return copy


def analyze(systemd_analyze: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run ``systemd-analyze ARGS`` in ``cwd`` and return what it did."""
    environ = {key: value for key, value in os.environ.items() if not key.startswith("SYSTEMD_")}
    environ["SYSTEMD_COLORS"] = "0"
    environ["SYSTEMD_PAGER"] = ""
    return subprocess.run(
        [systemd_analyze, *args],
        cwd=cwd,
        env=environ,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_verify_prints_nothing(systemd_analyze: str, runnable_unit: Path) -> None:
    result = analyze(systemd_analyze, "verify", runnable_unit.name, cwd=runnable_unit.parent)
    assert result.stderr == ""
    assert result.stdout == ""
    assert result.returncode == 0


def test_verify_notices_a_missing_command(systemd_analyze: str, tmp_path: Path) -> None:
    """The check above means something: verify does complain about a command that is absent."""
    copy = tmp_path / UNIT_NAME
    copy.write_text(UNIT_PATH.read_text().replace(INSTALLED_COMMAND, str(tmp_path / "absent")))
    result = analyze(systemd_analyze, "verify", copy.name, cwd=tmp_path)
    assert "is not executable" in result.stderr


def overall_exposure(output: str) -> float:
    """Return the overall exposure level printed by ``systemd-analyze security``."""
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", output)
    assert match is not None, output
    return float(match.group(1))


@pytest.mark.parametrize("variant", ["shipped", "runnable"])
def test_security_exposure_is_at_most_2(
    systemd_analyze: str, runnable_unit: Path, variant: str
) -> None:
    path = UNIT_PATH if variant == "shipped" else runnable_unit
    result = analyze(systemd_analyze, "security", "--offline=true", path.name, cwd=path.parent)
    assert result.returncode == 0, result.stderr
    exposure = overall_exposure(result.stdout)
    assert exposure <= MAX_EXPOSURE, result.stdout


def test_timespans_read_as_systemd_reads_them(systemd_analyze: str, unit: Unit) -> None:
    """The small time-span parser these tests use agrees with systemd's for the unit's values."""
    for key in ("WatchdogSec", "TimeoutStopSec", "TimeoutStartSec", "RestartSec"):
        value = unit.one("Service", key)
        result = analyze(systemd_analyze, "timespan", value, cwd=ROOT)
        assert result.returncode == 0, result.stderr
        match = re.search(r"μs: (\d+)", result.stdout)
        assert match is not None, result.stdout
        assert timespan_seconds(value) == int(match.group(1)) / 1e6


# --- what the unit must say ------------------------------------------------------------------


def test_required_directives(unit: Unit) -> None:
    service = "Service"
    assert unit.one(service, "Type") == "notify"
    assert unit.one(service, "NotifyAccess") == "main"
    assert unit.one(service, "ExecReload") == "/bin/kill -HUP $MAINPID"
    assert unit.one(service, "Restart") == "on-failure"
    assert unit.one(service, "DynamicUser") == "yes"
    assert unit.one(service, "StateDirectory") == "akeeba-backupd"
    assert unit.one(service, "ConfigurationDirectory") == "akeeba-backupd"
    assert unit.one(service, "KillSignal") == "SIGTERM"
    assert timespan_seconds(unit.one(service, "WatchdogSec")) > 0
    assert unit.all(service, "LoadCredential"), "site secrets come through LoadCredential="
    pre = command_argv(unit.one(service, "ExecStartPre"))
    start = command_argv(unit.one(service, "ExecStart"))
    assert pre[0] == start[0] == INSTALLED_COMMAND
    assert pre[1] == "check"
    assert start[1] == "run"
    assert unit.all("Install", "WantedBy") == ["multi-user.target"]


def test_hardening_directives(unit: Unit) -> None:
    expected = {
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "NoNewPrivileges": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectKernelLogs": "yes",
        "ProtectControlGroups": "yes",
        "ProtectClock": "yes",
        "ProtectHostname": "yes",
        "ProtectProc": "invisible",
        "ProcSubset": "pid",
        "RestrictNamespaces": "yes",
        "RestrictRealtime": "yes",
        "LockPersonality": "yes",
        "MemoryDenyWriteExecute": "yes",
        "SystemCallArchitectures": "native",
        "UMask": "0077",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
    }
    for key, value in expected.items():
        assert unit.one("Service", key) == value, key
    assert unit.all("Service", "CapabilityBoundingSet") == [], "no capabilities at all"
    assert "@system-service" in unit.all("Service", "SystemCallFilter")
    # The daemon needs the internet: no IP allow list, no private network.
    assert not unit.all("Service", "IPAddressDeny")
    assert not unit.all("Service", "PrivateNetwork")


def test_commands_use_one_config_in_the_configuration_directory(unit: Unit) -> None:
    pre = _parser().parse_args(command_argv(unit.one("Service", "ExecStartPre"))[1:])
    start = _parser().parse_args(command_argv(unit.one("Service", "ExecStart"))[1:])
    assert pre.config == start.config
    configuration_directory = Path("/etc") / unit.one("Service", "ConfigurationDirectory")
    assert start.config.parent == configuration_directory
    assert start.config == Path("/etc/akeeba-backupd/config.yaml")  # the CLI's default too


def test_watchdog_interval_matches_the_daemon(unit: Unit) -> None:
    """systemd passes WatchdogSec as WATCHDOG_USEC (and the main pid as WATCHDOG_PID); the
    daemon pings at half of it, which must leave room for a late ping."""
    timeout = timespan_seconds(unit.one("Service", "WatchdogSec"))
    environ = {"WATCHDOG_USEC": str(round(timeout * 1_000_000)), "WATCHDOG_PID": str(os.getpid())}
    interval = watchdog_interval_seconds(environ, os.getpid())
    assert interval is not None, (
        "the daemon must take WATCHDOG_USEC/WATCHDOG_PID as systemd sets them"
    )
    assert interval == pytest.approx(timeout / 2)
    assert timeout - interval >= MIN_WATCHDOG_SLACK_SECONDS
    # A ping less often than once a minute would let a hung daemon sit for minutes.
    assert interval <= 60


def test_stop_timeout_covers_the_shutdown_grace(unit: Unit) -> None:
    start = _parser().parse_args(command_argv(unit.one("Service", "ExecStart"))[1:])
    stop_timeout = timespan_seconds(unit.one("Service", "TimeoutStopSec"))
    assert stop_timeout >= start.shutdown_grace + STOP_MARGIN_SECONDS


def test_a_config_error_is_not_restarted(unit: Unit) -> None:
    """Exit 2 (a configuration error, DESIGN.md §8) is not worth a restart loop."""
    assert "2" in unit.one("Service", "RestartPreventExitStatus").split()


# --- the unit's commands, run the way systemd runs them ------------------------------------------


@dataclass
class Environment:
    """What systemd would prepare before ExecStartPre: directories and credentials."""

    etc: Path
    credentials: Path
    state: Path

    def environ(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """Return the variables systemd sets for the unit's commands."""
        return child_environment(
            {
                "CREDENTIALS_DIRECTORY": str(self.credentials),
                "STATE_DIRECTORY": str(self.state),
                "CONFIGURATION_DIRECTORY": str(self.etc),
                **(extra or {}),
            }
        )


def credential_sources(unit: Unit) -> list[tuple[str, str]]:
    """Return the unit's LoadCredential= entries as (id, absolute path)."""
    entries = []
    for value in unit.all("Service", "LoadCredential"):
        credential, _, path = value.partition(":")
        assert path.startswith("/"), f"LoadCredential={value}: give an absolute path"
        entries.append((credential, path))
    return entries


def load_credentials(unit: Unit, etc: Path, credentials: Path) -> None:
    """Do what LoadCredential= does, with /etc/akeeba-backupd mapped to ``etc``: copy a file
    as its id, a directory's files as id_filename, each mode 0400 owned by the service user."""
    credentials.mkdir(mode=0o700)
    for credential, path in credential_sources(unit):
        source = Path(path.replace("/etc/akeeba-backupd", str(etc), 1))
        assert path.startswith("/etc/akeeba-backupd/"), path
        files = (
            [(f"{credential}_{item.name}", item) for item in sorted(source.iterdir())]
            if source.is_dir()
            else [(credential, source)]
        )
        for name, item in files:
            target = credentials / name
            target.write_bytes(item.read_bytes())
            target.chmod(0o400)
    credentials.chmod(0o500)


def secret_file_examples(unit: Unit) -> list[str]:
    """Return the ``secret_file:`` values the unit's comments give for its active
    LoadCredential= (the commented-out alternatives show theirs after an arrow)."""
    values = [
        match.group(1)
        for comment in unit.comments
        for match in [re.fullmatch(r'secret_file: "([^"]+)"', comment)]
        if match is not None
    ]
    assert values, "the unit should show the matching secret_file: for its LoadCredential="
    return values


@pytest.fixture
def prepared(tmp_path: Path, unit: Unit) -> Iterator[Environment]:
    """Lay out /etc/akeeba-backupd (with the secrets directory the unit loads), the loaded
    credentials and the state directory, in ``tmp_path``."""
    etc = tmp_path / "etc" / "akeeba-backupd"
    secrets = etc / "secrets"
    secrets.mkdir(parents=True, mode=0o700)
    secret = secrets / "example-org"
    secret.write_text("a-long-random-secret-word\n")
    secret.chmod(0o600)
    state = tmp_path / "var" / "lib" / "akeeba-backupd"
    state.mkdir(parents=True, mode=0o700)
    environment = Environment(etc, tmp_path / "run" / "credentials" / UNIT_NAME, state)
    environment.credentials.parent.mkdir(parents=True)
    load_credentials(unit, etc, environment.credentials)
    try:
        yield environment
    finally:
        environment.credentials.chmod(0o700)


def write_config(etc: Path, secret_file: str, port: int) -> Path:
    """Write config.yaml with one site whose secret comes from ``secret_file``; return it."""
    document = {
        "listen": f"127.0.0.1:{port}",
        "sites": [
            {
                "name": "example-org",
                # Nothing listens here: startup's seeding call to the site fails harmlessly.
                "url": f"http://127.0.0.1:{free_port()}/",
                "platform": "joomla",
                "secret_file": secret_file,
                "schedules": [{"name": "nightly", "profile": 1, "cron": "H 2 * * *"}],
            }
        ],
    }
    path = etc / "config.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    path.chmod(0o644)
    return path


def test_documented_secret_file_resolves_to_the_loaded_credential(
    unit: Unit, prepared: Environment
) -> None:
    """Each secret_file spelling the unit documents finds the credential LoadCredential= made."""
    environ = prepared.environ()
    for example in secret_file_examples(unit):
        config = load_config(write_config(prepared.etc, example, 0), environ)
        assert config.sites[0].secret.reveal() == "a-long-random-secret-word"


def run_exec_start_pre(
    unit: Unit, prepared: Environment, secret_file: str
) -> subprocess.CompletedProcess[str]:
    """Run ExecStartPre= as written (install and config paths swapped) on a config whose one
    site reads ``secret_file``, in the environment systemd would give it."""
    config = write_config(prepared.etc, secret_file, 0)
    argv = with_config(
        with_console_script(command_argv(unit.one("Service", "ExecStartPre"))), config
    )
    return subprocess.run(
        argv,
        env=prepared.environ(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_exec_start_pre_accepts_the_config(unit: Unit, prepared: Environment) -> None:
    """ExecStartPre= as written (install and config paths swapped) is a command the CLI takes."""
    result = run_exec_start_pre(unit, prepared, secret_file_examples(unit)[0])
    assert result.returncode == 0, result.stderr
    assert "OK: 1 site(s), 1 schedule(s)" in result.stdout


def test_exec_start_pre_fails_on_a_broken_config(unit: Unit, prepared: Environment) -> None:
    """A config whose credential is missing makes ExecStartPre fail with exit 2, which the
    unit's RestartPreventExitStatus= names."""
    result = run_exec_start_pre(unit, prepared, "%d/secrets_no-such-site")
    assert result.returncode == 2
    assert "secrets_no-such-site does not exist" in result.stderr


def _tree(path: Path) -> dict[str, tuple[int, int]]:
    """Return every file below ``path`` with its size and mtime (to notice writes)."""
    return {
        str(item.relative_to(path)): (item.stat().st_size, item.stat().st_mtime_ns)
        for item in sorted(path.rglob("*"))
    }


def test_the_unit_drives_the_daemon_like_systemd(
    tmp_path: Path, unit: Unit, prepared: Environment
) -> None:
    """ExecStart= with systemd's environment: READY=1, WATCHDOG=1 (WATCHDOG_PID set to the main
    pid, as systemd does), ExecReload= acknowledged with RELOADING=1 then READY=1, KillSignal=
    answered by STOPPING=1 and exit 0; files written only in the state directory, and under
    the unit's UMask= readable by the daemon alone."""
    port = free_port()
    config = write_config(prepared.etc, secret_file_examples(unit)[0], port)
    watchdog_usec = round(timespan_seconds(unit.one("Service", "WatchdogSec")) * 1_000_000)
    argv = with_config(with_console_script(command_argv(unit.one("Service", "ExecStart"))), config)
    untouched = {path: _tree(path) for path in (prepared.etc, prepared.credentials)}
    notify = NotifySocket(tmp_path)
    umask = int(unit.one("Service", "UMask"), 8)
    wrapper = ["/bin/sh", "-c", f'umask {umask:04o} && WATCHDOG_PID=$$ exec "$@"', "sh"]
    environ = prepared.environ(
        {"NOTIFY_SOCKET": notify.address, "WATCHDOG_USEC": str(watchdog_usec)}
    )
    child = ChildProcess([*wrapper, *argv], environ, tmp_path / "logs", "daemon")
    try:
        ready = notify.wait_for(lambda text: "READY=1" in text, "READY=1")
        assert "schedules" in fields(notify.messages[ready])["STATUS"]
        notify.wait_for(lambda text: text == "WATCHDOG=1", "WATCHDOG=1")
        assert (prepared.state / "state.db").exists()

        reload = [
            str(child.pid) if part == "$MAINPID" else part
            for part in command_argv(unit.one("Service", "ExecReload"))
        ]
        subprocess.run(reload, check=True, timeout=10)
        reloading = notify.wait_for(lambda text: "RELOADING=1" in text, "RELOADING=1", start=ready)
        assert "MONOTONIC_USEC" in fields(notify.messages[reloading])
        notify.wait_for(lambda text: "READY=1" in text, "READY=1 after reload", start=reloading)

        kill_signal = signal.Signals[unit.one("Service", "KillSignal")]
        child.send_signal(kill_signal)
        notify.wait_for(lambda text: "STOPPING=1" in text, "STOPPING=1")
        grace = timespan_seconds(unit.one("Service", "TimeoutStopSec"))
        assert child.wait(grace) == 0, child.logs()
        assert "reload failed" not in child.stderr()
    finally:
        child.stop()
        notify.close()
    assert {path: _tree(path) for path in untouched} == untouched
    assert not notify.non_ascii
    for item in prepared.state.rglob("*"):
        mode = stat.S_IMODE(item.stat().st_mode)
        assert mode & 0o077 == 0, f"{item} has mode {mode:04o}"
