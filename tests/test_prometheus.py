"""A real Prometheus (Debian's package) scrapes a running daemon; its query API sees the runs.

Prometheus is the consumer the exposition is for: this checks that what promtool accepts is also
what a real server ingests, with the labels the dashboard and alerts query.
"""

from __future__ import annotations

import shutil
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.daemon_harness import (
    ChildProcess,
    DaemonProcess,
    SimulatorProcess,
    SiteEntry,
    config_document,
    free_port,
    http,
    try_http,
    wait_until,
)

pytestmark = pytest.mark.slow

PROMETHEUS = "/usr/bin/prometheus"
JOB = "akeeba-backupd"
WARNINGS = [[1, "Your database has 1 table with a crashed index"], [3, "w-two"], [4, "w-two"]]
DISTINCT_WARNINGS = 2


class PrometheusProcess:
    """``prometheus`` on a loopback port, scraping one target every second."""

    def __init__(self, child: ChildProcess, port: int) -> None:
        self.child = child
        self.base = f"http://127.0.0.1:{port}"

    @classmethod
    def start(cls, work: Path, target: str) -> PrometheusProcess:
        """Start Prometheus with its TSDB in ``work``; return once it is ready."""
        binary = shutil.which("prometheus") or PROMETHEUS
        if not Path(binary).exists():
            pytest.fail(
                f"{PROMETHEUS} is missing: run ./scripts/test, which installs Debian's "
                "prometheus package (CI does the same)"
            )
        work.mkdir(parents=True, exist_ok=True)
        config = work / "prometheus.yml"
        config.write_text(
            yaml.safe_dump(
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "scrape_configs": [
                        {
                            "job_name": JOB,
                            "scrape_interval": "1s",
                            "scrape_timeout": "1s",
                            "static_configs": [{"targets": [target]}],
                        }
                    ],
                }
            ),
            encoding="utf-8",
        )
        port = free_port()
        (work / "tsdb").mkdir()
        child = ChildProcess(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={work / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            {"PATH": "/usr/bin:/bin", "HOME": str(work)},
            work / "logs",
            "prometheus",
        )
        prometheus = cls(child, port)
        try:

            def ready() -> bool:
                if not child.alive():
                    raise AssertionError(f"prometheus exited\n{child.logs()}")
                reply = try_http("GET", f"{prometheus.base}/-/ready")
                return reply is not None and reply.status == 200

            wait_until(ready, "prometheus to be ready", context=child.logs)
        except BaseException:
            child.stop()
            raise
        return prometheus

    def query(self, expression: str) -> list[dict[str, Any]]:
        """Return the instant vector of ``expression`` (each item has "metric" and "value")."""
        url = f"{self.base}/api/v1/query?" + urllib.parse.urlencode({"query": expression})
        reply = http("GET", url)
        assert reply.status == 200, reply.text
        body = reply.json()
        assert body["status"] == "success", body
        assert body["data"]["resultType"] == "vector", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def value(self, expression: str) -> float | None:
        """Return the value of the single series ``expression`` selects, or None when none."""
        result = self.query(expression)
        if not result:
            return None
        assert len(result) == 1, result
        return float(result[0]["value"][1])

    def wait_for(self, expression: str) -> float:
        """Wait until ``expression`` selects a series; return its value."""

        def found() -> tuple[float] | None:
            value = self.value(expression)
            return None if value is None else (value,)  # a 1-tuple is truthy even for 0

        return wait_until(found, f"Prometheus to have {expression}", context=self.child.logs)[0]

    def stop(self) -> None:
        """Stop Prometheus."""
        self.child.stop()


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[tuple[SimulatorProcess, DaemonProcess]]:
    """A simulator with a good and a failing site, and a daemon backing both up."""
    simulator = SimulatorProcess.start(tmp_path / "simulator", sites=2, steps=5)
    try:
        simulator.set_settings("site-0001", warnings=WARNINGS)
        simulator.set_faults("site-0002", engine_error_at_step=2)
        port = free_port()
        path = tmp_path / "config.yaml"
        path.write_text(
            yaml.safe_dump(
                config_document(
                    port,
                    [
                        SiteEntry("ok-site", simulator.site_url("site-0001")),
                        SiteEntry("bad-site", simulator.site_url("site-0002")),
                    ],
                )
            ),
            encoding="utf-8",
        )
        daemon = DaemonProcess.start(path, port, tmp_path)
        try:
            yield simulator, daemon
        finally:
            daemon.stop()
    finally:
        simulator.stop()


def test_prometheus_scrapes_the_runs(
    tmp_path: Path, fleet: tuple[SimulatorProcess, DaemonProcess]
) -> None:
    """A successful and a failed run reach Prometheus with the values /metrics promised."""
    _, daemon = fleet
    prometheus = PrometheusProcess.start(tmp_path / "prometheus", f"127.0.0.1:{daemon.port}")
    try:
        daemon.trigger("ok-site", "nightly")
        daemon.trigger("bad-site", "nightly")
        for site in ("ok-site", "bad-site"):
            daemon.wait_for_sample("akeeba_backup_runs_total", 1, site=site, schedule="nightly")

        ok = 'site="ok-site",schedule="nightly"'
        bad = 'site="bad-site",schedule="nightly"'
        # Wait for the newest series of each site; the scrape that carries it carries the rest.
        prometheus.wait_for(f"akeeba_backup_runs_total{{{ok}}} == 1")
        prometheus.wait_for(f"akeeba_backup_runs_total{{{bad}}} == 1")
        assert prometheus.value(f'up{{job="{JOB}"}}') == 1
        assert prometheus.value(f"akeeba_backup_last_status{{{ok}}}") == 1
        assert prometheus.value(f"akeeba_backup_progress_ratio{{{ok}}}") == 1
        assert prometheus.value(f"akeeba_backup_runs_total{{{ok}}}") == 1
        assert prometheus.value(f"akeeba_backup_last_warnings{{{ok}}}") == DISTINCT_WARNINGS
        assert (prometheus.value(f"akeeba_backup_archive_size_bytes{{{ok}}}") or 0) > 0
        assert prometheus.value(f"akeeba_backup_last_status{{{bad}}}") == 0
        assert prometheus.value(f"akeeba_backup_consecutive_failures{{{bad}}}") == 1
        reasons = prometheus.query(f"akeeba_backup_last_failure_reason{{{bad}}}")
        assert [(item["metric"]["reason"], item["value"][1]) for item in reasons] == [
            ("remote_error", "1")
        ]
        assert prometheus.value(f'akeeba_backup_failures_total{{{bad},reason="remote_error"}}') == 1
        # Prometheus owns job and instance; the daemon's own labels must not clash with them.
        series = prometheus.query(f"akeeba_backup_last_status{{{ok}}}")
        assert series[0]["metric"]["job"] == JOB
        assert series[0]["metric"]["instance"] == f"127.0.0.1:{daemon.port}"
        assert not any(key.startswith("exported_") for key in series[0]["metric"])
        info = prometheus.query('akeeba_site_info{site="ok-site"}')
        assert [item["metric"]["api_level"] for item in info] == ["600"]
    finally:
        prometheus.stop()
