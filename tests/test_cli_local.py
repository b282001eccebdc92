"""The newcomer's commands as processes: ``probe`` and ``backup`` against a simulated site, and
``demo`` (the first Quick start command) serving a fleet that backs up and fails as promised."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from akeeba_backupd.cli import demo_config_text
from akeeba_backupd.config import load_config
from tests.daemon_harness import (
    ChildProcess,
    SimulatorProcess,
    SiteEntry,
    child_environment,
    config_document,
    console_command,
    free_port,
    http,
    metric_samples,
    run_cli,
    try_http,
    wait_until,
    write_config,
)

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def simulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimulatorProcess]:
    """One simulated fleet of five-step sites for the module; each test has a site of its own."""
    fleet = SimulatorProcess.start(tmp_path_factory.mktemp("simulator"), sites=4, steps=5)
    try:
        yield fleet
    finally:
        fleet.stop()


def _config(tmp_path: Path, simulator: SimulatorProcess, site: str) -> Path:
    return write_config(
        tmp_path / "config.yaml",
        config_document(free_port(), [SiteEntry("shop", simulator.site_url(site))]),
    )


def test_probe_reports_the_server(tmp_path: Path, simulator: SimulatorProcess) -> None:
    """``probe`` finds the endpoint and says what the server is and which profiles it has."""
    result = run_cli(["probe", "--config", str(_config(tmp_path, simulator, "site-0001")), "shop"])
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "shop: OK"
    assert any(line.startswith("  endpoint: http://127.0.0.1:") for line in lines)
    assert any("API level 600" in line or "API 600" in line for line in lines), lines
    assert any(line.startswith("  profiles: 1 ") for line in lines), lines
    assert simulator.summary("site-0001")["start_count"] == 0


def test_probe_with_a_wrong_secret_says_auth(tmp_path: Path, simulator: SimulatorProcess) -> None:
    """A refused secret is one line with the reason, exit 1, and the secret is not shown."""
    path = _config(tmp_path, simulator, "site-0002")
    result = run_cli(["probe", "--config", str(path), "shop"], env={"AKEEBA_E2E_SECRET": "nope"})
    assert result.returncode == 1
    assert result.stdout.startswith("shop: FAILED (auth): ")
    assert "Traceback" not in result.stderr
    assert "nope" not in result.stdout + result.stderr


def test_backup_prints_every_step_and_the_outcome(
    tmp_path: Path, simulator: SimulatorProcess
) -> None:
    """``backup SITE/SCHEDULE`` runs one backup in the foreground, one line per step."""
    path = _config(tmp_path, simulator, "site-0003")
    result = run_cli(["backup", "--config", str(path), "shop/nightly"])
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("shop/nightly: run ")
    assert lines[0].endswith(" started")
    steps = [line for line in lines if line.startswith("  step ")]
    # The start reply already says stepNumber 2; the final reply repeats the last number.
    assert [int(line.split()[1]) for line in steps] == [2, 3, 4, 5, 6, 6]
    assert steps[-1].split()[2] == "100%"
    assert any(line.startswith("shop/nightly: succeeded in ") for line in lines), lines
    assert any(line.startswith("  archive ") and "bytes)" in line for line in lines), lines
    summary = simulator.summary("site-0003")
    assert (summary["start_count"], summary["completed_backups"]) == (1, 1)


def test_backup_of_a_failing_site_exits_1_with_the_reason(
    tmp_path: Path, simulator: SimulatorProcess
) -> None:
    """An engine error at step 2 prints the failed outcome with its reason and exits 1."""
    simulator.set_faults("site-0004", engine_error_at_step=2)
    path = _config(tmp_path, simulator, "site-0004")
    result = run_cli(["backup", "--config", str(path), "shop"])
    assert result.returncode == 1
    assert any(
        line.startswith("shop/nightly: failed (remote_error) in ")
        for line in result.stdout.splitlines()
    ), result.stdout


def test_demo_config_is_the_packaged_one_and_loads(tmp_path: Path) -> None:
    """config/demo.yaml is what ``demo`` runs, and it is a valid configuration."""
    assert (REPO / "config" / "demo.yaml").read_text(encoding="utf-8") == demo_config_text()
    config = load_config(
        REPO / "config" / "demo.yaml",
        environ={"AKEEBA_DEMO_SECRET": "x", "STATE_DIRECTORY": str(tmp_path)},
    )
    assert [site.name for site in config.sites] == [
        "demo-joomla",
        "demo-wordpress",
        "demo-solo",
        "demo-broken",
    ]


def test_demo_backs_up_and_fails_as_promised(tmp_path: Path) -> None:
    """``demo`` serves its fleet and a daemon; a good site succeeds, demo-broken fails."""
    port, simulator_port = free_port(), free_port()
    child = ChildProcess(
        [*console_command(), "demo", "--port", str(port), "--simulator-port", str(simulator_port)],
        child_environment(),
        tmp_path,
        "demo",
    )
    base = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            if not child.alive():
                raise AssertionError(f"demo exited\n{child.logs()}")
            reply = try_http("GET", f"{base}/readyz")
            return reply is not None and reply.status == 200

        wait_until(ready, "the demo daemon to be ready", context=child.logs)
        banner = child.stdout_path.read_text(encoding="utf-8")
        assert f"{base}/metrics" in banner
        assert f"{base}/api/v1/schedules" in banner
        schedules = http("GET", f"{base}/api/v1/schedules").json()
        assert len(schedules) == 5
        # Run-now instead of waiting for the minute: the same queue and limits.
        for target in ("demo-solo/files", "demo-broken/nightly"):
            assert http("POST", f"{base}/api/v1/schedules/{target}/run").status == 202

        def finished() -> dict[tuple[str, frozenset[tuple[str, str]]], float] | None:
            samples = metric_samples(http("GET", f"{base}/metrics").text)
            done = [
                samples.get(
                    ("akeeba_backup_runs_total", frozenset({"site": s, "schedule": c}.items()))
                )
                for s, c in (("demo-solo", "files"), ("demo-broken", "nightly"))
            ]
            return samples if all(done) else None

        samples = wait_until(finished, "both demo runs to finish", context=child.logs)

        def value(name: str, **labels: str) -> float | None:
            return samples.get((name, frozenset(labels.items())))

        assert value("akeeba_backup_last_status", site="demo-solo", schedule="files") == 1
        assert value("akeeba_backup_last_status", site="demo-broken", schedule="nightly") == 0
        reason = value(
            "akeeba_backup_last_failure_reason",
            site="demo-broken",
            schedule="nightly",
            reason="remote_error",
        )
        assert reason == 1
    finally:
        child.stop()
    assert "Traceback" not in child.stderr()
