"""High availability: two or three daemons sharing one PostgreSQL database (README, "High
availability"). Every part is real: the daemons are subprocesses, the simulator counts each
site's startBackup calls, PostgreSQL is a throwaway cluster on loopback that the tests stop and
restart, and instances are killed with SIGKILL and frozen with SIGSTOP.
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.daemon_harness import (
    DaemonProcess,
    SimulatorProcess,
    SiteEntry,
    config_document,
    free_port,
    http,
    metric_samples,
    wait_until,
    write_config,
)
from tests.pg_cluster import PostgresCluster
from tests.tcp_proxy import TcpProxy

LEASE = "3s"
LEASE_SECONDS = 3.0


@pytest.fixture
def simulator(tmp_path: Path) -> Iterator[SimulatorProcess]:
    sim = SimulatorProcess.start(tmp_path / "sim", sites=8, steps=8, step_seconds=0.4)
    try:
        yield sim
    finally:
        sim.stop()


class Fleet:
    """Daemons of one configuration (but for instance name and port) sharing a database."""

    def __init__(self, tmp_path: Path, dsn: str, sites: Sequence[SiteEntry], **extra: Any):
        self.tmp_path = tmp_path
        self.dsn_file = tmp_path / "dsn"
        self.dsn_file.write_text(dsn + "\n", encoding="utf-8")
        self.dsn_file.chmod(0o600)
        self.sites = sites
        self.extra = extra
        self.daemons: dict[str, DaemonProcess] = {}

    def start(
        self, name: str, *, sites: Sequence[SiteEntry] | None = None, lease: str = LEASE
    ) -> DaemonProcess:
        port = free_port()
        document = config_document(port, sites or self.sites)
        document["state"] = {
            "backend": "postgresql",
            "dsn_file": str(self.dsn_file),
            "instance": name,
            "lease_duration": lease,
        }
        document.update(self.extra)
        config = write_config(self.tmp_path / f"{name}.yaml", document)
        state_dir = self.tmp_path / name
        state_dir.mkdir(exist_ok=True)
        daemon = DaemonProcess.start(config, port, state_dir)
        self.daemons[name] = daemon
        return daemon

    def stop(self) -> None:
        for daemon in self.daemons.values():
            with contextlib.suppress(Exception):
                daemon.child.send_signal(signal.SIGCONT)
            daemon.child.stop()


@pytest.fixture
def fleet_factory(tmp_path: Path, postgres_dsn: str) -> Iterator[Any]:
    fleets: list[Fleet] = []

    def make(sites: Sequence[SiteEntry], **extra: Any) -> Fleet:
        fleet = Fleet(tmp_path, postgres_dsn, sites, **extra)
        fleets.append(fleet)
        return fleet

    yield make
    for fleet in fleets:
        fleet.stop()


def next_minute_cron() -> tuple[str, datetime]:
    """Return a cron firing once, at the next minute at least 8 s away, and that time (UTC)."""
    now = datetime.now(UTC)
    fire = (now + timedelta(seconds=8)).replace(second=0, microsecond=0) + timedelta(minutes=1)
    return f"{fire.minute} {fire.hour} * * *", fire


def runs_of(daemon: DaemonProcess, site: str) -> list[dict[str, Any]]:
    reply = daemon.get(f"/api/v1/runs?site={site}&limit=50")
    assert reply.status == 200, reply.text
    runs: list[dict[str, Any]] = reply.json()
    return runs


def metric(daemon: DaemonProcess, name: str) -> float:
    samples = metric_samples(daemon.get("/metrics").text)
    return sum(value for (metric_name, _labels), value in samples.items() if metric_name == name)


def trigger(daemon: DaemonProcess, site: str, schedule: str = "nightly") -> None:
    reply = http("POST", f"{daemon.base}/api/v1/schedules/{site}/{schedule}/run")
    assert reply.status == 202, reply.text


@pytest.mark.timeout(180)  # waits for a minute boundary
def test_every_fire_runs_once_and_the_limits_hold_fleet_wide(
    simulator: SimulatorProcess, fleet_factory: Any
) -> None:
    """Three instances, six sites due in the same minute, max_concurrent 2: each site is backed
    up exactly once, never more than two backups run at once across the fleet, and each
    instance shows every run in its fleet view."""
    cron, fire_at = next_minute_cron()
    names = [simulator.take() for _ in range(6)]
    sites = [SiteEntry(name, simulator.site_url(name), (("nightly", cron),)) for name in names]
    fleet = fleet_factory(sites, limits={"max_concurrent": 2})
    daemons = [fleet.start(name) for name in ("alpha", "beta", "gamma")]

    most_running = 0

    def all_done() -> bool:
        nonlocal most_running
        rows = http("GET", f"{simulator.base}/_sim/sites").json()
        running = sum(1 for row in rows if row["name"] in names and row["running"])
        most_running = max(most_running, running)
        return all(simulator.summary(name)["completed_backups"] >= 1 for name in names)

    wait_until(
        all_done,
        "every site backed up",
        timeout=(fire_at - datetime.now(UTC)).total_seconds() + 90,
    )
    time.sleep(2)  # a second startBackup, if any instance were to send one, would land now
    for name in names:
        summary = simulator.summary(name)
        assert summary["start_count"] == 1, (name, summary["start_count"])
        assert summary["completed_backups"] == 1
        assert summary["concurrent_step_violations"] == 0
    assert 1 <= most_running <= 2

    def every_instance_counts_every_run() -> bool:
        return all(metric(daemon, "akeeba_backup_runs_total") == 6 for daemon in daemons)

    wait_until(every_instance_counts_every_run, "each instance's fleet view to count 6 runs")

    def fleet_view_complete() -> bool:
        return all(
            any(run["outcome"] == "succeeded" for run in runs_of(daemon, name))
            for daemon in daemons
            for name in names
        )

    wait_until(fleet_view_complete, "every instance's history to show every run", timeout=20)


def test_a_killed_instance_s_run_is_taken_over_and_completes_once(
    simulator: SimulatorProcess, fleet_factory: Any
) -> None:
    """SIGKILL the instance running a backup: another takes the run over once the lease expires
    and finishes it with stepBackup on the same backup; startBackup is never sent again."""
    name = simulator.take()
    simulator.set_settings(name, steps=30, step_seconds=0.3)
    fleet = fleet_factory([SiteEntry(name, simulator.site_url(name))])
    alpha = fleet.start("alpha")
    beta = fleet.start("beta")
    trigger(alpha, name)
    wait_until(lambda: simulator.summary(name)["step_count"] >= 3, "alpha to be stepping")
    alpha.child.send_signal(signal.SIGKILL)
    alpha.child.wait()
    killed_at = time.monotonic()
    steps_at_kill = simulator.summary(name)["step_count"]

    wait_until(
        lambda: simulator.summary(name)["step_count"] > steps_at_kill + 1,
        "beta to step the backup",
        timeout=LEASE_SECONDS * 4,
    )
    resumed_after = time.monotonic() - killed_at
    wait_until(lambda: simulator.summary(name)["completed_backups"] == 1, "the backup to end")
    summary = simulator.summary(name)
    assert summary["start_count"] == 1
    assert summary["concurrent_step_violations"] == 0
    wait_until(
        lambda: any(run["outcome"] == "succeeded" for run in runs_of(beta, name)),
        "beta to record the run",
    )
    assert metric(beta, "akeeba_backupd_lease_takeovers_total") >= 1
    assert "taken over from alpha" in beta.child.logs()
    assert resumed_after < LEASE_SECONDS * 4


def test_a_frozen_instance_does_not_step_after_it_wakes(
    simulator: SimulatorProcess, fleet_factory: Any
) -> None:
    """SIGSTOP the stepping instance past its lease: another instance takes the run over; when
    the frozen one wakes it sends no request to the site, and the backup ends once."""
    name = simulator.take()
    simulator.set_settings(name, steps=40, step_seconds=0.25)
    with TcpProxy(simulator.port) as proxy:
        via_proxy = SiteEntry(name, f"http://127.0.0.1:{proxy.port}/{name}/")
        direct = SiteEntry(name, simulator.site_url(name))
        fleet = fleet_factory([direct])
        alpha = fleet.start("alpha", sites=[via_proxy])
        beta = fleet.start("beta")
        trigger(alpha, name)
        wait_until(lambda: simulator.summary(name)["step_count"] >= 3, "alpha to be stepping")
        alpha.child.send_signal(signal.SIGSTOP)
        steps_at_stop = simulator.summary(name)["step_count"]
        wait_until(
            lambda: simulator.summary(name)["step_count"] > steps_at_stop + 2,
            "beta to take over and step",
            timeout=LEASE_SECONDS * 5,
        )
        sent_before_wake = proxy.bytes_from_clients
        alpha.child.send_signal(signal.SIGCONT)
        wait_until(lambda: simulator.summary(name)["completed_backups"] == 1, "the backup to end")
        time.sleep(1.0)
        assert proxy.bytes_from_clients == sent_before_wake, "alpha called the site after waking"
    summary = simulator.summary(name)
    assert summary["start_count"] == 1
    assert summary["concurrent_step_violations"] == 0
    assert not any(record.get("corrupt") for record in summary["records"])
    wait_until(lambda: "lease" in alpha.child.logs(), "alpha to log its lost lease")
    assert metric(alpha, "akeeba_backupd_leases_lost_total") >= 1
    assert metric(beta, "akeeba_backupd_lease_takeovers_total") >= 1


def test_a_database_restart_mid_run_loses_and_doubles_nothing(
    simulator: SimulatorProcess, fleet_factory: Any, postgres_cluster: PostgresCluster
) -> None:
    """Stop PostgreSQL for a moment while a backup runs: it completes once and is recorded
    once, and both instances go on claiming fires afterwards."""
    name = simulator.take()
    simulator.set_settings(name, steps=25, step_seconds=0.3)
    fleet = fleet_factory([SiteEntry(name, simulator.site_url(name))])
    alpha = fleet.start("alpha")
    beta = fleet.start("beta")
    trigger(alpha, name)
    wait_until(lambda: simulator.summary(name)["step_count"] >= 3, "alpha to be stepping")
    postgres_cluster.stop("fast")
    time.sleep(1.0)
    postgres_cluster.start()
    wait_until(lambda: simulator.summary(name)["completed_backups"] == 1, "the backup to end")
    time.sleep(LEASE_SECONDS)
    summary = simulator.summary(name)
    assert summary["start_count"] == 1
    assert summary["concurrent_step_violations"] == 0
    for daemon in (alpha, beta):

        def one_success(daemon: DaemonProcess = daemon) -> bool:
            return [run["outcome"] for run in runs_of(daemon, name)] == ["succeeded"]

        def ready(daemon: DaemonProcess = daemon) -> bool:
            return daemon.get("/readyz").status == 200

        wait_until(one_success, f"{daemon.port}: exactly one succeeded run in the history")
        wait_until(ready, "readiness after the database came back")
    # The fleet still works: a run-now on the other instance starts a second backup.
    trigger(beta, name)
    wait_until(lambda: simulator.summary(name)["completed_backups"] == 2, "the second backup")
    assert simulator.summary(name)["start_count"] == 2


def test_pauses_and_reloads_reach_every_instance(
    simulator: SimulatorProcess, fleet_factory: Any
) -> None:
    """A pause asked of one instance holds on the others; a reload (SIGHUP) of one instance
    makes every instance read its file again."""
    name = simulator.take()
    fleet = fleet_factory([SiteEntry(name, simulator.site_url(name))])
    alpha = fleet.start("alpha")
    beta = fleet.start("beta")
    reply = http("POST", f"{alpha.base}/api/v1/schedules/{name}/nightly/pause")
    assert reply.status == 200, reply.text

    def paused_on_beta() -> bool:
        schedules = beta.get("/api/v1/schedules").json()
        return any(row["site"] == name and row["paused"] for row in schedules)

    wait_until(paused_on_beta, "beta to see the pause", timeout=15)

    # Both files gain a schedule; only alpha is told to reload.
    for daemon in (alpha, beta):
        document = yaml.safe_load(daemon.config_path.read_text())
        document["sites"][0]["schedules"].append({"name": "weekly", "cron": "0 4 * * 0"})
        write_config(daemon.config_path, document)
    alpha.child.send_signal(signal.SIGHUP)

    def beta_has_weekly() -> bool:
        schedules = beta.get("/api/v1/schedules").json()
        return any(row["schedule"] == "weekly" for row in schedules)

    wait_until(beta_has_weekly, "beta to reload its file", timeout=15)
    assert "another instance published configuration" in beta.child.logs()
    assert "differs" not in beta.child.logs()


def test_a_stopped_instance_hands_its_run_over_at_once(
    simulator: SimulatorProcess, fleet_factory: Any
) -> None:
    """SIGTERM: the run stops after its step and its lease is released as expired, so the other
    instance resumes it long before the (here 60 s) lease would have run out."""
    name = simulator.take()
    simulator.set_settings(name, steps=30, step_seconds=0.3)
    fleet = fleet_factory([SiteEntry(name, simulator.site_url(name))])
    alpha = fleet.start("alpha", lease="60s")
    beta = fleet.start("beta", lease="60s")
    trigger(alpha, name)
    wait_until(lambda: simulator.summary(name)["step_count"] >= 3, "alpha to be stepping")
    alpha.child.send_signal(signal.SIGTERM)
    assert alpha.child.wait() == 0
    steps_at_stop = simulator.summary(name)["step_count"]
    wait_until(
        lambda: simulator.summary(name)["step_count"] > steps_at_stop,
        "beta to resume the handed-over run",
        timeout=15,
    )
    wait_until(lambda: simulator.summary(name)["completed_backups"] == 1, "the backup to end")
    summary = simulator.summary(name)
    assert summary["start_count"] == 1
    assert summary["concurrent_step_violations"] == 0
    assert "run taken over from alpha" in beta.child.logs()
