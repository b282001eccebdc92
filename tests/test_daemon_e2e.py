"""The installed daemon end to end: real processes, signals, sockets, promtool (DESIGN.md §10).

A simulator process (``akeeba-backupd simulate``) serves the fleet for the whole module; each
test takes fresh simulated sites from it, writes its own config into tmp_path and starts its own
``akeeba-backupd run`` subprocess, which it reaches only over HTTP, signals and the notify socket.
"""

from __future__ import annotations

import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from akeeba_backupd.akeeba.errors import FailureReason
from akeeba_backupd.status import SkipReason
from tests.daemon_harness import (
    DaemonProcess,
    NotifySocket,
    SimulatorProcess,
    SiteEntry,
    config_document,
    fields,
    free_port,
    run_cli,
    series,
    wait_until,
    write_config,
)

pytestmark = pytest.mark.slow

WARNINGS = [[0, "Your database has 1 table with a crashed index"], [2, "w-two"], [4, "w-two"]]
DISTINCT_WARNINGS = 2

Launch = Callable[..., DaemonProcess]


@pytest.fixture(scope="module")
def simulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimulatorProcess]:
    """One simulated fleet for the module; every test takes sites of its own."""
    fleet = SimulatorProcess.start(tmp_path_factory.mktemp("simulator"), sites=30, steps=5)
    try:
        yield fleet
    finally:
        fleet.stop()


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Launch]:
    """Start daemons with STATE_DIRECTORY=tmp_path; every one is stopped at teardown."""
    daemons: list[DaemonProcess] = []

    def start(config_path: Path, port: int, **kwargs: Any) -> DaemonProcess:
        daemon = DaemonProcess.start(config_path, port, tmp_path, **kwargs)
        daemons.append(daemon)
        return daemon

    yield start
    for daemon in daemons:
        daemon.stop()


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    """A datagram socket standing in for systemd's notify socket."""
    sock = NotifySocket(tmp_path)
    try:
        yield sock
    finally:
        sock.close()


# --- a success and a failure, shared by the read-only tests below ----------------------------


@dataclass
class FinishedRuns:
    """A daemon that has run one good and one failing backup."""

    daemon: DaemonProcess
    simulator: SimulatorProcess
    good_sim: str
    bad_sim: str
    began: float
    ended: float


@pytest.fixture(scope="module")
def finished(
    simulator: SimulatorProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FinishedRuns]:
    """Run-now a backup on "good" (with warnings) and on "bad" (engine error at step 3)."""
    tmp_path = tmp_path_factory.mktemp("finished")
    good_sim, bad_sim = simulator.take(), simulator.take()
    simulator.set_settings(good_sim, warnings=WARNINGS)
    simulator.set_faults(bad_sim, engine_error_at_step=3)
    port = free_port()
    path = write_config(
        tmp_path / "config.yaml",
        config_document(
            port,
            [
                SiteEntry("good", simulator.site_url(good_sim)),
                SiteEntry("bad", simulator.site_url(bad_sim)),
            ],
        ),
    )
    daemon = DaemonProcess.start(path, port, tmp_path)
    try:
        began = time.time()
        daemon.trigger("good", "nightly")
        daemon.trigger("bad", "nightly")
        daemon.wait_for_sample("akeeba_backup_runs_total", 1, site="good", schedule="nightly")
        daemon.wait_for_sample("akeeba_backup_runs_total", 1, site="bad", schedule="nightly")
        ended = time.time()
        yield FinishedRuns(daemon, simulator, good_sim, bad_sim, began, ended)
    finally:
        daemon.stop()


def test_full_backup_metrics(finished: FinishedRuns) -> None:
    """A run-now backup through the console script ends with every success metric set."""
    samples = finished.daemon.samples()
    labels = {"site": "good", "schedule": "nightly"}

    def value(name: str) -> float | None:
        return samples.get((name, frozenset(labels.items())))

    assert value("akeeba_backup_last_status") == 1
    assert value("akeeba_backup_progress_ratio") == 1
    assert value("akeeba_backup_runs_total") == 1
    assert value("akeeba_backup_running") == 0
    assert value("akeeba_backup_consecutive_failures") == 0
    assert value("akeeba_backup_last_warnings") == DISTINCT_WARNINGS
    assert (value("akeeba_backup_archive_size_bytes") or 0) > 0
    success = value("akeeba_backup_last_success_timestamp_seconds")
    assert success is not None
    assert finished.began <= success <= finished.ended
    assert not any(series(samples, "akeeba_backup_failures_total", **labels).values())
    assert not series(samples, "akeeba_backup_last_failure_reason", **labels)
    site = finished.simulator.summary(finished.good_sim)
    assert site["start_count"] == 1
    assert site["completed_backups"] == 1


def test_reason_counters_exist_at_zero(finished: FinishedRuns) -> None:
    """Every failure and skip reason has its counter at 0 before it first happens, so that
    increase() and rate() see the first failure (a series born at 1 reads as no increase)."""
    samples = finished.daemon.samples()
    labels = {"site": "good", "schedule": "nightly"}
    failures = series(samples, "akeeba_backup_failures_total", **labels)
    assert {dict(key)["reason"] for key in failures} == {reason.value for reason in FailureReason}
    assert not any(failures.values())
    skipped = series(samples, "akeeba_backup_skipped_total", **labels)
    assert {dict(key)["reason"] for key in skipped} == {reason.value for reason in SkipReason}


def test_failed_backup_metrics(finished: FinishedRuns) -> None:
    """An engine error fails the run as remote_error in the reason, counter and status series."""
    samples = finished.daemon.samples()
    labels = {"site": "bad", "schedule": "nightly"}

    def value(name: str, **more: str) -> float | None:
        return samples.get((name, frozenset({**labels, **more}.items())))

    assert series(samples, "akeeba_backup_last_failure_reason", **labels) == {
        frozenset({**labels, "reason": "remote_error"}.items()): 1.0
    }
    assert value("akeeba_backup_failures_total", reason="remote_error") == 1
    failures = series(samples, "akeeba_backup_failures_total", **labels)
    assert sum(failures.values()) == 1
    assert value("akeeba_backup_last_status") == 0
    assert value("akeeba_backup_consecutive_failures") == 1
    assert value("akeeba_backup_runs_total") == 1
    assert value("akeeba_backup_last_success_timestamp_seconds") is None
    failed_at = value("akeeba_backup_last_failure_timestamp_seconds")
    assert failed_at is not None
    assert finished.began <= failed_at <= finished.ended
    assert finished.simulator.summary(finished.bad_sim)["start_count"] == 1


def test_api_reflects_the_runs(finished: FinishedRuns) -> None:
    """/api/v1/schedules and /api/v1/runs tell the same story as /metrics."""
    schedules = {item["site"]: item for item in finished.daemon.get_json("/api/v1/schedules")}
    assert set(schedules) == {"good", "bad"}
    good, bad = schedules["good"], schedules["bad"]
    assert good["schedule"] == "nightly"
    assert good["cron"] == "0 3 * * *"
    assert good["state"] == "idle"
    assert good["paused"] is False
    assert good["consecutive_failures"] == 0
    assert good["last"]["outcome"] == "succeeded"
    assert len(set(good["last"]["warnings"])) == DISTINCT_WARNINGS
    assert good["last"]["archive_size_bytes"] > 0
    assert good["last_success"] is not None
    assert bad["last"]["outcome"] == "failed"
    assert bad["last"]["reason"] == "remote_error"
    assert bad["consecutive_failures"] == 1
    assert bad["last_success"] is None

    runs = finished.daemon.get_json("/api/v1/runs")
    assert sorted((run["site"], run["outcome"], run["reason"]) for run in runs) == [
        ("bad", "failed", "remote_error"),
        ("good", "succeeded", None),
    ]
    only_good = finished.daemon.get_json("/api/v1/runs?site=good&schedule=nightly&limit=5")
    assert [run["run_id"] for run in only_good] == [good["last"]["run_id"]]
    assert finished.daemon.get("/api/v1/runs?limit=0").status == 400


def test_promtool_accepts_the_exposition(finished: FinishedRuns) -> None:
    """``promtool check metrics`` finds nothing to say about /metrics after runs."""
    promtool = shutil.which("promtool") or "/usr/bin/promtool"
    if not Path(promtool).exists():
        pytest.fail("promtool is missing: run ./scripts/test, which installs Debian's prometheus")
    body = finished.daemon.metrics_text()
    assert "akeeba_backup_last_failure_reason" in body
    checked = subprocess.run(
        [promtool, "check", "metrics"],
        input=body,
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert (checked.returncode, checked.stdout, checked.stderr) == (0, "", "")


# --- the command line --------------------------------------------------------------------------

BAD_CONFIG = """\
listen: "127.0.0.1:9489"
defaults:
  request_timeout: 5 parsecs
sites:
  - name: shop
    url: "http://127.0.0.1:1/site-0001/"
    secret_env: AKEEBA_E2E_SECRET
    colour: blue
    schedules:
      - name: nightly
        cron: "0 25 * * *"
"""
BAD_CONFIG_PROBLEMS = [
    ("defaults.request_timeout", 3),
    ("sites[0].colour", 8),
    ("sites[0].schedules[0].cron", 11),
]


def test_check_accepts_a_good_config(tmp_path: Path) -> None:
    """``check`` exits 0 on a valid file and says what it holds."""
    path = write_config(
        tmp_path / "good.yaml",
        config_document(9489, [SiteEntry("shop", "http://127.0.0.1:1/site-0001/")]),
    )
    result = run_cli(["check", "--config", str(path)])
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout
    assert result.stderr == ""


@pytest.mark.parametrize("command", ["check", "run"])
def test_bad_config_lists_every_problem(tmp_path: Path, command: str) -> None:
    """``check`` and ``run`` exit 2 on a bad file, naming every problem's path and line."""
    path = tmp_path / "bad.yaml"
    path.write_text(BAD_CONFIG, encoding="utf-8")
    result = run_cli([command, "--config", str(path)], env={"STATE_DIRECTORY": str(tmp_path)})
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    for location, line in BAD_CONFIG_PROBLEMS:
        matching = [text for text in lines if text.startswith(f"{location}: ")]
        assert len(matching) == 1, result.stderr
        assert matching[0].endswith(f"(line {line})"), matching[0]
    assert lines[-1] == f"akeeba-backupd: {path}: 3 problem(s) in the configuration"
    assert len(lines) == 4


def test_run_on_a_port_in_use_fails_in_one_line(tmp_path: Path) -> None:
    """``run`` exits 1 with one error line when its listen address is taken."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        path = write_config(
            tmp_path / "config.yaml",
            config_document(port, [SiteEntry("shop", "http://127.0.0.1:1/site-0001/")]),
        )
        result = run_cli(["run", "--config", str(path)], env={"STATE_DIRECTORY": str(tmp_path)})
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert f"127.0.0.1:{port}" in lines[0]
    assert "Traceback" not in result.stderr


# --- SIGHUP ------------------------------------------------------------------------------------


def _schedule_names(daemon: DaemonProcess) -> set[tuple[str, str]]:
    return {(item["site"], item["schedule"]) for item in daemon.get_json("/api/v1/schedules")}


def _metric_schedules(daemon: DaemonProcess) -> set[tuple[str, str]]:
    return {
        (dict(labels)["site"], dict(labels)["schedule"])
        for labels in series(daemon.samples(), "akeeba_backup_next_run_timestamp_seconds")
    }


def test_sighup_applies_a_valid_file_and_keeps_the_old_on_a_bad_one(
    simulator: SimulatorProcess, tmp_path: Path, launch: Launch
) -> None:
    """SIGHUP applies an added and a removed schedule; an invalid or half-written file changes
    nothing but the reload metric, and the daemon keeps serving."""
    url = simulator.site_url(simulator.take())
    port = free_port()
    path = tmp_path / "config.yaml"
    before = config_document(
        port, [SiteEntry("shop", url, [("nightly", "0 3 * * *"), ("weekly", "0 4 * * 0")])]
    )
    after = config_document(
        port, [SiteEntry("shop", url, [("nightly", "0 3 * * *"), ("hourly", "30 * * * *")])]
    )
    write_config(path, before)
    daemon = launch(path, port)
    assert _schedule_names(daemon) == {("shop", "nightly"), ("shop", "weekly")}
    assert _metric_schedules(daemon) == {("shop", "nightly"), ("shop", "weekly")}
    nightly_next = daemon.sample(
        "akeeba_backup_next_run_timestamp_seconds", site="shop", schedule="nightly"
    )

    write_config(path, after)
    daemon.send_signal(signal.SIGHUP)
    wanted = {("shop", "nightly"), ("shop", "hourly")}
    wait_until(lambda: _metric_schedules(daemon) == wanted, "the reloaded schedules in /metrics")
    assert _schedule_names(daemon) == wanted
    assert daemon.sample("akeeba_backupd_config_last_reload_successful") == 1
    assert (
        daemon.sample("akeeba_backup_next_run_timestamp_seconds", site="shop", schedule="nightly")
        == nightly_next
    )
    assert daemon.sample("akeeba_backup_runs_total", site="shop", schedule="hourly") == 0

    good_text = path.read_text(encoding="utf-8")
    invalid = good_text.replace("30 * * * *", "61 * * * *")
    assert invalid != good_text
    # A file caught half-written: it ends in the middle of a key, a YAML syntax error.
    truncated = good_text[: good_text.index("schedules:") + len("sched")]
    for broken in (invalid, truncated):
        write_config(path, before)  # a good reload in between makes the next failure visible
        daemon.send_signal(signal.SIGHUP)
        wait_until(
            lambda: _metric_schedules(daemon) == {("shop", "nightly"), ("shop", "weekly")},
            "the good config to be reloaded",
        )
        assert daemon.sample("akeeba_backupd_config_last_reload_successful") == 1

        path.write_text(broken, encoding="utf-8")
        daemon.send_signal(signal.SIGHUP)
        daemon.wait_for_sample("akeeba_backupd_config_last_reload_successful", 0)
        assert _schedule_names(daemon) == {("shop", "nightly"), ("shop", "weekly")}
        assert _metric_schedules(daemon) == {("shop", "nightly"), ("shop", "weekly")}
        assert daemon.get("/readyz").status == 200
        assert daemon.get("/healthz").status == 200

    daemon.trigger("shop", "weekly")
    daemon.wait_for_sample("akeeba_backup_last_status", 1, site="shop", schedule="weekly")
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait() == 0


# --- SIGTERM and SIGINT ------------------------------------------------------------------------


def _slow_run_under_way(
    simulator: SimulatorProcess,
    tmp_path: Path,
    launch: Launch,
    *,
    steps: int,
    step_seconds: float,
    until: Callable[[dict[str, Any]], bool] = lambda site: site["step_count"] >= 2,
    what: str = "the run to be a few steps in",
) -> tuple[str, DaemonProcess]:
    """Start a daemon backing up a fresh slow site ``slow/nightly`` (config in ``tmp_path``),
    run it now, and return (simulated site name, daemon) once ``until`` holds for the
    simulator's summary of the site (by default: two steps have run)."""
    name = simulator.take()
    simulator.set_settings(name, steps=steps, step_seconds=step_seconds)
    port = free_port()
    path = write_config(
        tmp_path / "config.yaml",
        config_document(port, [SiteEntry("slow", simulator.site_url(name))]),
    )
    daemon = launch(path, port)
    daemon.trigger("slow", "nightly")
    wait_until(lambda: until(simulator.summary(name)), what, context=daemon.logs)
    return name, daemon


def test_sigterm_mid_run_exits_zero_after_the_step(
    simulator: SimulatorProcess, tmp_path: Path, launch: Launch
) -> None:
    """SIGTERM during a run stops it after its current step and exits 0 without finishing it."""
    name, daemon = _slow_run_under_way(simulator, tmp_path, launch, steps=19, step_seconds=0.3)
    assert daemon.sample("akeeba_backup_running", site="slow", schedule="nightly") == 1
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait() == 0
    site = simulator.summary(name)
    assert site["start_count"] == 1
    assert site["completed_backups"] == 0
    assert site["step_count"] < 19
    assert site["concurrent_step_violations"] == 0


def test_second_sigint_forces_the_exit(
    simulator: SimulatorProcess, tmp_path: Path, launch: Launch, notify: NotifySocket
) -> None:
    """A run stuck in a step holds the graceful stop; a second SIGINT cuts it short."""
    name = simulator.take()
    simulator.set_faults(name, hang_at_step=2)
    port = free_port()
    path = write_config(
        tmp_path / "config.yaml",
        config_document(
            port, [SiteEntry("stuck", simulator.site_url(name))], defaults={"request_timeout": "5m"}
        ),
    )
    daemon = launch(
        path, port, extra_args=["--shutdown-grace", "300"], env={"NOTIFY_SOCKET": notify.address}
    )
    try:
        daemon.trigger("stuck", "nightly")
        wait_until(lambda: simulator.summary(name)["step_count"] >= 2, "the step that hangs")
        daemon.send_signal(signal.SIGINT)
        notify.wait_for(lambda text: "STOPPING=1" in text, "STOPPING=1")
        assert daemon.child.alive()
        daemon.send_signal(signal.SIGINT)
        assert daemon.wait() == 0
    finally:
        simulator.set_faults(name, hang_at_step=None)


# --- systemd notify ----------------------------------------------------------------------------

STATUS_PATTERN = re.compile(
    r"\d+ schedules, 0 running, 0 queued, next [a-z0-9_-]+/[a-z0-9_-]+ \d\d:\d\d"
)


def test_notify_ready_reloading_stopping(
    simulator: SimulatorProcess, tmp_path: Path, launch: Launch, notify: NotifySocket
) -> None:
    """READY=1 (with a STATUS line) once /readyz is up; SIGHUP sends RELOADING=1 with
    MONOTONIC_USEC then READY=1, a failed reload too; SIGTERM sends STOPPING=1; all ASCII."""
    port = free_port()
    document = config_document(
        port,
        [SiteEntry("shop", simulator.site_url(simulator.take()), [("nightly", "0 3 * * *")])],
    )
    path = write_config(tmp_path / "config.yaml", document)
    daemon = launch(path, port, env={"NOTIFY_SOCKET": notify.address}, wait_ready=False)

    ready = notify.wait_for(lambda text: "READY=1" in text.splitlines(), "READY=1")
    assert daemon.get("/readyz").status == 200  # READY=1 only once the daemon is ready
    first = fields(notify.messages[ready])
    assert STATUS_PATTERN.fullmatch(first["STATUS"]), first
    assert first["STATUS"] == "1 schedules, 0 running, 0 queued, next shop/nightly 03:00"
    assert not any("RELOADING=1" in text for text in notify.messages)

    document["sites"][0]["schedules"].append({"name": "hourly", "cron": "15 * * * *"})
    write_config(path, document)
    sent_at = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    daemon.send_signal(signal.SIGHUP)
    reloading = notify.wait_for(lambda text: "RELOADING=1" in text, "RELOADING=1", start=ready + 1)
    reload_fields = fields(notify.messages[reloading])
    assert reload_fields["RELOADING"] == "1"
    assert re.fullmatch(r"\d+", reload_fields["MONOTONIC_USEC"]), reload_fields
    assert sent_at <= int(reload_fields["MONOTONIC_USEC"])
    assert (
        int(reload_fields["MONOTONIC_USEC"]) <= time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    )
    again = notify.wait_for(
        lambda text: "READY=1" in text, "READY=1 after the reload", start=reloading
    )
    assert fields(notify.messages[again])["STATUS"].startswith("2 schedules, 0 running, 0 queued")

    path.write_text("sites: [\n", encoding="utf-8")
    daemon.send_signal(signal.SIGHUP)
    failed_reload = notify.wait_for(
        lambda text: "RELOADING=1" in text, "RELOADING=1 for the bad file", start=again + 1
    )
    ready_again = notify.wait_for(
        lambda text: "READY=1" in text, "READY=1 after the failed reload", start=failed_reload
    )
    assert "fail" in fields(notify.messages[ready_again])["STATUS"].lower()
    assert daemon.sample("akeeba_backupd_config_last_reload_successful") == 0

    daemon.send_signal(signal.SIGTERM)
    notify.wait_for(lambda text: "STOPPING=1" in text, "STOPPING=1", start=ready_again + 1)
    assert daemon.wait() == 0
    assert notify.non_ascii == []
    assert not any("WATCHDOG=1" in text for text in notify.messages)


def test_watchdog_keeps_pinging_a_live_daemon(
    simulator: SimulatorProcess, tmp_path: Path, launch: Launch, notify: NotifySocket
) -> None:
    """With WATCHDOG_USEC=400000 and no WATCHDOG_PID, WATCHDOG=1 keeps arriving (the interval,
    half the timeout, is checked by test_systemd's table)."""
    port = free_port()
    path = write_config(
        tmp_path / "config.yaml",
        config_document(port, [SiteEntry("shop", simulator.site_url(simulator.take()))]),
    )
    launch(path, port, env={"NOTIFY_SOCKET": notify.address, "WATCHDOG_USEC": "400000"})
    wait_until(
        lambda: sum(text == "WATCHDOG=1" for text in notify.messages) >= 3,
        "three WATCHDOG=1 datagrams",
        context=lambda: repr(notify.messages),
    )


def test_watchdog_meant_for_our_pid_pings(
    simulator: SimulatorProcess, tmp_path: Path, launch: Launch, notify: NotifySocket
) -> None:
    """WATCHDOG_PID naming the daemon's own pid (as systemd sets it) enables the watchdog."""
    port = free_port()
    path = write_config(
        tmp_path / "config.yaml",
        config_document(port, [SiteEntry("shop", simulator.site_url(simulator.take()))]),
    )
    # The shell exports its own pid and then becomes the daemon, so the pids match.
    wrapper = ["/bin/sh", "-c", 'WATCHDOG_PID=$$ exec "$@"', "sh"]
    launch(
        path,
        port,
        env={"NOTIFY_SOCKET": notify.address, "WATCHDOG_USEC": "400000"},
        wrapper=wrapper,
    )
    wait_until(
        lambda: sum(text == "WATCHDOG=1" for text in notify.messages) >= 2,
        "WATCHDOG=1 datagrams",
        context=lambda: repr(notify.messages),
    )


def test_watchdog_meant_for_another_pid_stays_silent(
    simulator: SimulatorProcess, tmp_path: Path, launch: Launch, notify: NotifySocket
) -> None:
    """WATCHDOG_PID naming another process disables the watchdog: no WATCHDOG=1 ever."""
    name = simulator.take()
    simulator.set_settings(name, step_seconds=0.15)
    port = free_port()
    path = write_config(
        tmp_path / "config.yaml",
        config_document(port, [SiteEntry("shop", simulator.site_url(name))]),
    )
    daemon = launch(
        path,
        port,
        env={"NOTIFY_SOCKET": notify.address, "WATCHDOG_USEC": "400000", "WATCHDOG_PID": "1"},
    )
    notify.wait_for(lambda text: "READY=1" in text, "READY=1")
    # Silence needs time to show: a run of 6 calls of 0.15 s spans several 0.2 s intervals.
    daemon.trigger("shop", "nightly")
    daemon.wait_for_sample("akeeba_backup_runs_total", 1, site="shop", schedule="nightly")
    duration = daemon.sample("akeeba_backup_last_duration_seconds", site="shop", schedule="nightly")
    assert duration is not None
    assert duration >= 0.8
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait() == 0
    assert not any("WATCHDOG=1" in text for text in notify.messages), notify.messages
    assert any("STOPPING=1" in text for text in notify.messages)


# --- restart -----------------------------------------------------------------------------------


def test_restart_keeps_pauses_and_the_last_success(
    simulator: SimulatorProcess, tmp_path: Path, launch: Launch
) -> None:
    """A pause and the last outcome survive a stop and start on the same state directory."""
    url = simulator.site_url(simulator.take())
    port = free_port()
    path = write_config(
        tmp_path / "config.yaml",
        config_document(
            port, [SiteEntry("shop", url, [("nightly", "0 3 * * *"), ("weekly", "0 4 * * 0")])]
        ),
    )
    first = launch(path, port)
    first.trigger("shop", "nightly")
    first.wait_for_sample("akeeba_backup_runs_total", 1, site="shop", schedule="nightly")
    success = first.sample(
        "akeeba_backup_last_success_timestamp_seconds", site="shop", schedule="nightly"
    )
    assert success is not None
    assert first.post("/api/v1/schedules/shop/weekly/pause").status == 200
    first.send_signal(signal.SIGTERM)
    assert first.wait() == 0

    second = launch(path, port)
    labels = {"site": "shop", "schedule": "nightly"}
    assert second.sample("akeeba_backup_paused", site="shop", schedule="weekly") == 1
    assert second.sample("akeeba_backup_paused", **labels) == 0
    assert second.sample("akeeba_backup_last_success_timestamp_seconds", **labels) == success
    assert second.sample("akeeba_backup_last_status", **labels) == 1
    schedules = {item["schedule"]: item for item in second.get_json("/api/v1/schedules")}
    assert schedules["weekly"]["paused"] is True
    assert schedules["nightly"]["last"]["outcome"] == "succeeded"
    runs = second.get_json("/api/v1/runs?site=shop&schedule=nightly")
    assert [run["outcome"] for run in runs] == ["succeeded"]


RESUME_STEPS = 4
STOP_POINTS = {
    # The start reply is still on its way: the run is on disk with no backupid yet, and the
    # next process must find the backup by its tag.
    "during-start": lambda site: site["start_count"] == 1 and site["step_count"] == 0,
    "mid-run": lambda site: site["step_count"] == 2,
    # The last step is running on the server: it completes the backup while nobody listens.
    "during-last-step": lambda site: site["step_count"] == RESUME_STEPS,
}


@pytest.mark.parametrize("point", list(STOP_POINTS))
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_run_stopped_mid_way_resumes_after_restart(
    simulator: SimulatorProcess,
    tmp_path: Path,
    launch: Launch,
    signum: signal.Signals,
    point: str,
) -> None:
    """A backup suspended by SIGTERM, or cut by SIGKILL (its call maybe still executing on the
    server), at the start, mid-run or in its last step, is finished by the next process: one
    startBackup on the server, one completed backup, one succeeded run, never two steps at once.
    """
    # Every call (the start too) takes a second on the server, so each point lasts long enough
    # to be caught.
    name, first = _slow_run_under_way(
        simulator,
        tmp_path,
        launch,
        steps=RESUME_STEPS,
        step_seconds=1.0,
        until=STOP_POINTS[point],
        what=f"the run {point}",
    )
    first.send_signal(signum)
    assert first.wait() == (0 if signum == signal.SIGTERM else -signal.SIGKILL)
    if point != "during-last-step":
        assert simulator.summary(name)["completed_backups"] == 0

    second = launch(first.config_path, first.port)
    second.wait_for_sample("akeeba_backup_runs_total", 1, site="slow", schedule="nightly")
    assert second.sample("akeeba_backup_last_status", site="slow", schedule="nightly") == 1, (
        second.logs()
    )
    assert second.sample("akeeba_backup_running", site="slow", schedule="nightly") == 0
    site = simulator.summary(name)
    assert site["start_count"] == 1
    assert site["completed_backups"] == 1
    assert site["concurrent_step_violations"] == 0


@pytest.mark.parametrize(
    ("policy", "grace", "expected_starts"),
    [("run_once", "6h", 1), ("skip", "6h", 0), ("run_once", "2m", 0)],
)
def test_a_fire_missed_while_down_follows_the_misfire_policy(
    simulator: SimulatorProcess,
    tmp_path: Path,
    launch: Launch,
    policy: str,
    grace: str,
    expected_starts: int,
) -> None:
    """A daily fire that fell while the daemon was down runs once at restart under run_once
    within misfire_grace, and is counted as a misfire otherwise. The downtime is made by
    moving the saved "fires seen up to" mark two days back in the state file between runs."""
    name = simulator.take()
    fire = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=5)
    port = free_port()
    path = write_config(
        tmp_path / "config.yaml",
        config_document(
            port,
            [SiteEntry("shop", simulator.site_url(name), [("daily", f"{fire:%M %H} * * *")])],
            defaults={"misfire": policy, "misfire_grace": grace, "timezone": "UTC"},
        ),
    )
    first = launch(path, port)
    first.send_signal(signal.SIGTERM)
    assert first.wait() == 0
    # Nothing was missed by the first daemon: the fire 5 minutes before it started is history.
    assert simulator.summary(name)["start_count"] == 0
    with sqlite3.connect(tmp_path / "state.db") as db:
        (seen,) = db.execute(
            "SELECT last_fire_at FROM schedule_state WHERE site = 'shop' AND schedule = 'daily'"
        ).fetchone()
        assert seen == pytest.approx(fire.timestamp())
        db.execute("UPDATE schedule_state SET last_fire_at = ?", (seen - 2 * 86400,))

    second = launch(path, port)
    labels = {"site": "shop", "schedule": "daily"}
    if expected_starts:
        second.wait_for_sample("akeeba_backup_runs_total", 1, **labels)
        assert second.sample("akeeba_backup_last_status", **labels) == 1
    else:
        second.wait_for_sample("akeeba_backup_skipped_total", 1, reason="misfire", **labels)
        assert second.sample("akeeba_backup_runs_total", **labels) == 0
    assert second.sample("akeeba_backup_skipped_total", reason="misfire", **labels) == (
        1 - expected_starts
    )
    assert simulator.summary(name)["start_count"] == expected_starts


def test_a_backup_lost_on_the_server_while_down_is_settled_as_interrupted(
    simulator: SimulatorProcess, tmp_path: Path, launch: Launch
) -> None:
    """SIGKILL mid-run; while the daemon is down someone starts another backup on the site,
    which kills ours. The restarted daemon's resume step gets an error, the server's record is
    not complete, so the run fails with reason interrupted, and no second backup is started."""
    name, first = _slow_run_under_way(
        simulator, tmp_path, launch, steps=RESUME_STEPS, step_seconds=1.0
    )
    first.send_signal(signal.SIGKILL)
    assert first.wait() == -signal.SIGKILL
    assert simulator.summary(name)["step_count"] == 2  # the next one is step 3
    simulator.set_faults(name, foreign_start_at_step=3)

    second = launch(first.config_path, first.port)
    labels = {"site": "slow", "schedule": "nightly"}
    second.wait_for_sample("akeeba_backup_runs_total", 1, **labels)
    assert second.sample("akeeba_backup_last_status", **labels) == 0
    assert second.sample("akeeba_backup_last_failure_reason", reason="interrupted", **labels) == 1
    site = simulator.summary(name)
    assert site["start_count"] == 1
    assert site["foreign_starts"] == 1
    assert site["completed_backups"] == 0
    assert site["concurrent_step_violations"] == 0
