"""Every fault at once through the installed daemon (DESIGN.md §4, §10): one daemon process backs
up a fleet where each site misbehaves its own way (every simulator fault, a site down for a
while mid-run behind a TCP proxy, a failing DNS name, a TLS handshake against plain HTTP, a
redirect to a login page and one to another host). Each run must end in its own outcome and
reason within bounded time while ``/metrics`` keeps answering and the clean sites succeed; and
afterwards the secret, which every request carried in its URL, must appear nowhere: not in the
logs, ``/metrics``, ``/api/v1/*``, ``/readyz`` or the status page, in any spelling."""

from __future__ import annotations

import html
import json
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.daemon_harness import (
    SECRET_VARIABLE,
    DaemonProcess,
    SimulatorProcess,
    free_port,
    try_http,
    wait_until,
    write_config,
)
from tests.tcp_proxy import TcpProxy

pytestmark = pytest.mark.slow

# Characters that URL-encoding, HTML and JSON each spell differently, so every spelling is tried.
SECRET = "Zq8!k&v<b>\"s'+/=%3Bj~Xw9"
REQUEST_TIMEOUT_SECONDS = 3
STALL_TIMEOUT_SECONDS = 10
ALL_RUNS_END_WITHIN_SECONDS = 120.0
OUTAGE_SECONDS = 2.5


@dataclass(frozen=True)
class Case:
    """One site of the fleet: its fault and the outcome its run must end in."""

    name: str
    reason: str | None
    """The failure reason, or None for a run that must succeed."""
    faults: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    profile: int = 1


V2_CASES = [
    Case("clean", None),
    Case("auth", "auth", {"auth_failure": True}),
    Case("api-off", "auth", {"api_disabled": True}),
    Case("notice", None, {"junk": "php_notice"}),
    Case("html-wrapped", None, {"junk": "html"}),
    Case("bom", None, {"junk": "bom"}),
    Case("http500-once", None, {"http500_empty_at_step": 2}),
    Case("http500-always", "http_error", {"http500_empty_at_step": 2, "fail_count": 50}),
    Case("db-down-briefly", None, {"db_down_at_step": 2, "fail_count": 2}),
    Case("hang", "stalled", {"hang_at_step": 2}),
    # Two thirds of request_timeout: slow, but an answer is an answer.
    Case("slow", None, {"slow_step_at": 2, "slow_step_seconds": 2.0}),
    Case("engine-error", "remote_error", {"engine_error_at_step": 2}),
    Case("error-with-hasrun", "remote_error", {"error_with_hasrun_at_step": 2}),
    Case("new-backupid", "restarted", {"backupid_change_at_step": 3}),
    Case("step-back", "misbehaving_server", {"stepnumber_back_at_step": 3}),
    Case("step-repeat", "misbehaving_server", {"stepnumber_repeat_at_step": 3}),
    Case("lost-state", "remote_error", {"lose_state_at_step": 3}),
    Case("foreign-start", "remote_error", {"foreign_start_at_step": 3}),
    Case("garbage-10mb", "bad_response", {"garbage_bytes": 10_000_000}),
    Case("login-redirect", "http_error", {"redirect_to": "login"}),
    Case("offsite-redirect", "http_error"),  # its Location is set once the port is known
    Case("unknown-profile", "unknown_profile", profile=9),
    Case("outage", None, settings={"steps": 12, "step_seconds": 0.25}),
]
V1_CASES = [
    Case("v1-clean", None),
    Case("v1-silent-start", "restarted", {"start_silently_fails": True}),
    Case("v1-lost-state", "restarted", {"lose_state_at_step": 3}),
    Case("v1-db-down-briefly", None, {"db_down_at_step": 2, "fail_count": 1}),
]
UNREACHABLE = ["dns", "tls"]


@dataclass
class Fleet:
    """The finished fleet: the daemon (still running), both simulators and the site names."""

    daemon: DaemonProcess
    v2: SimulatorProcess
    v1: SimulatorProcess
    simulated: dict[str, tuple[SimulatorProcess, str]]
    metrics_polls_during_runs: int


def _site(name: str, url: str, api: str, profile: int = 1) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": name,
        "url": url,
        "platform": "joomla" if api == "v2" else "wordpress",
        "api": api,
        "secret_env": SECRET_VARIABLE,
        "schedules": [{"name": "nightly", "cron": "0 3 * * *", "profile": profile}],
    }
    if api == "v2":
        entry["auth"] = "query"  # the secret in every URL: the hardest case for masking
    return entry


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """Start the fleet, trigger every site at once, wait for every run to end."""
    base = tmp_path_factory.mktemp("faults")
    v2 = SimulatorProcess.start(base / "sim-v2", sites=len(V2_CASES), steps=6, secret=SECRET)
    v1 = SimulatorProcess.start(
        base / "sim-v1", sites=len(V1_CASES), steps=6, api="v1", secret=SECRET
    )
    daemon: DaemonProcess | None = None
    try:
        with TcpProxy(v2.port) as proxy:
            simulated: dict[str, tuple[SimulatorProcess, str]] = {}
            sites = []
            for case in V2_CASES:
                sim_name = v2.take()
                simulated[case.name] = (v2, sim_name)
                url = v2.site_url(sim_name)
                if case.name == "outage":
                    url = url.replace(f":{v2.port}/", f":{proxy.port}/")
                faults = dict(case.faults)
                if case.name == "offsite-redirect":
                    faults["redirect_to"] = url.replace("127.0.0.1", "localhost") + "login"
                if faults:
                    v2.set_faults(sim_name, **faults)
                if case.settings:
                    v2.set_settings(sim_name, **case.settings)
                sites.append(_site(case.name, url, "v2", case.profile))
            for case in V1_CASES:
                sim_name = v1.take()
                simulated[case.name] = (v1, sim_name)
                if case.faults:
                    v1.set_faults(sim_name, **case.faults)
                sites.append(_site(case.name, v1.site_url(sim_name), "v1"))
            sites.append(_site("dns", "http://no-such-site.invalid/", "v2"))
            sites.append(_site("tls", f"https://127.0.0.1:{v2.port}/site-0001/", "v2"))
            port = free_port()
            config = {
                "listen": f"127.0.0.1:{port}",
                "defaults": {
                    "request_timeout": f"{REQUEST_TIMEOUT_SECONDS}s",
                    "connect_timeout": "2s",
                    "stall_timeout": f"{STALL_TIMEOUT_SECONDS}s",
                    "run_timeout": "3m",
                    "step_retries": 3,
                    "retry_backoff": "1s",
                },
                "limits": {"max_concurrent": 50},
                "sites": sites,
            }
            path = write_config(base / "config.yaml", config)
            daemon = DaemonProcess.start(path, port, base, env={SECRET_VARIABLE: SECRET})
            names = [site["name"] for site in sites]
            for name in names:
                daemon.trigger(name, "nightly")

            # The outage site goes down mid-run (after its 3rd step), then comes back.
            outage_sim, outage_name = simulated["outage"]
            wait_until(
                lambda: outage_sim.summary(outage_name)["step_count"] >= 3, "the outage's 3rd step"
            )
            polls = 0

            def metrics_answer() -> None:
                nonlocal polls
                assert daemon is not None
                reply = try_http("GET", f"{daemon.base}/metrics")
                assert reply is not None, "/metrics stopped answering during the runs"
                assert reply.status == 200
                polls += 1

            proxy.outage()
            back_at = time.monotonic() + OUTAGE_SECONDS
            while time.monotonic() < back_at:
                metrics_answer()
                time.sleep(0.1)
            proxy.restore()

            def all_finished() -> bool:
                assert daemon is not None
                metrics_answer()
                return all(
                    daemon.sample("akeeba_backup_runs_total", site=name, schedule="nightly") == 1
                    for name in names
                )

            wait_until(
                all_finished,
                "every run to end",
                timeout=ALL_RUNS_END_WITHIN_SECONDS,
                context=daemon.logs,
            )
            yield Fleet(daemon, v2, v1, simulated, polls)
    finally:
        if daemon is not None:
            daemon.stop()
        v2.stop()
        v1.stop()


def _expected() -> list[tuple[str, str | None]]:
    cases = [(case.name, case.reason) for case in [*V2_CASES, *V1_CASES]]
    return cases + [(name, "unreachable") for name in UNREACHABLE]


@pytest.mark.parametrize(("site", "reason"), _expected(), ids=[name for name, _ in _expected()])
def test_each_fault_ends_in_its_outcome(fleet: Fleet, site: str, reason: str | None) -> None:
    """Each site's run ended with the expected status and reason, counted once."""
    labels = {"site": site, "schedule": "nightly"}
    daemon = fleet.daemon
    assert daemon.sample("akeeba_backup_runs_total", **labels) == 1
    assert daemon.sample("akeeba_backup_running", **labels) == 0
    status = daemon.sample("akeeba_backup_last_status", **labels)
    if reason is None:
        assert status == 1, _last_run(daemon, site)
        assert daemon.sample("akeeba_backup_consecutive_failures", **labels) == 0
    else:
        assert status == 0, _last_run(daemon, site)
        assert daemon.sample("akeeba_backup_last_failure_reason", reason=reason, **labels) == 1, (
            _last_run(daemon, site)
        )
        assert daemon.sample("akeeba_backup_failures_total", reason=reason, **labels) == 1
    if site in fleet.simulated:
        simulator, name = fleet.simulated[site]
        summary = simulator.summary(name)
        assert summary["concurrent_step_violations"] == 0
        assert summary["start_count"] <= 1  # never a second startBackup
        if reason is None:
            assert summary["completed_backups"] == 1


def test_the_outage_was_real_and_the_step_was_retried(fleet: Fleet) -> None:
    """The outage site's step failed while it was down and the retried step carried on."""
    labels = {"site": "outage", "schedule": "nightly"}
    retries = fleet.daemon.sample("akeeba_backup_step_retries_total", **labels)
    assert retries is not None
    assert retries >= 1
    simulator, name = fleet.simulated["outage"]
    assert simulator.summary(name)["start_count"] == 1


def test_a_redirect_to_another_host_never_carries_the_secret_there(fleet: Fleet) -> None:
    """The offsite login page was never asked for; the same-host one was, and is named."""
    simulator, name = fleet.simulated["offsite-redirect"]
    assert simulator.summary(name)["login_page_requests"] == 0
    simulator, name = fleet.simulated["login-redirect"]
    assert simulator.summary(name)["login_page_requests"] >= 1
    assert "Log in" in _last_run(fleet.daemon, "login-redirect")["message"]


def test_metrics_answered_throughout(fleet: Fleet) -> None:
    """/metrics was polled while runs were going (every poll answered 200, else the fixture
    failed) and still answers."""
    assert fleet.metrics_polls_during_runs >= 10
    assert fleet.daemon.get("/metrics").status == 200


def _spellings(secret: str) -> set[str]:
    return {
        secret,
        urllib.parse.quote(secret, safe=""),
        urllib.parse.quote(secret),
        urllib.parse.quote_plus(secret),
        html.escape(secret),
        html.escape(secret, quote=False),
        json.dumps(secret)[1:-1],
        repr(secret)[1:-1],
    }


def _fragments(secret: str, length: int = 8) -> set[str]:
    return {secret[i : i + length] for i in range(len(secret) - length + 1)}


def test_the_secret_appears_nowhere(fleet: Fleet) -> None:
    """No spelling of the secret, nor any 8-character piece of it, in anything the daemon says."""
    daemon = fleet.daemon
    outputs = {
        "logs": daemon.logs(),
        "/metrics": daemon.metrics_text(),
        "/api/v1/schedules": daemon.get("/api/v1/schedules").text,
        "/api/v1/runs": daemon.get("/api/v1/runs").text,
        "/readyz": daemon.get("/readyz").text,
        "/": daemon.get("/").text,
    }
    # The failure messages really are there to leak from (not an empty page passing vacuously).
    assert "redirect to" in outputs["/api/v1/runs"]
    assert "DNS lookup" in outputs["/api/v1/runs"]
    for where, text in outputs.items():
        for spelling in _spellings(SECRET) | _fragments(SECRET):
            assert spelling not in text, f"the secret ({spelling!r}) leaked into {where}"


def _last_run(daemon: DaemonProcess, site: str) -> dict[str, Any]:
    runs = daemon.get_json(f"/api/v1/runs?site={site}&schedule=nightly")
    assert runs, f"no run of {site}"
    last: dict[str, Any] = runs[0]
    return last
