"""The alert rules, checked by real promtool: prometheus/ and the Grafana-managed copy.

- ``prometheus/alerts.yaml`` passes ``promtool check rules``, and its unit tests
  (``prometheus/alerts.test.yaml``) pass ``promtool test rules``. Each alert has a firing and a
  quiet case there, and the cases are sharp: a rule with a wrong threshold, window, ``for:`` or
  join (a list of such mutations below) fails them.
- ``prometheus/scrape.example.yaml`` is a valid prometheus.yml (``promtool check config``) whose
  ``rule_files`` find the alerts where it says to put them.
- ``grafana/provisioning/alerting/akeeba-backupd.yaml`` is well-formed provisioning (unique
  uids, queries on the ``akeeba-prometheus`` data source, a threshold expression as condition),
  its PromQL is valid, and it holds the same alerts: each Grafana rule, rewritten as the
  Prometheus rule it stands for (query, threshold, ``noDataState``), passes the same unit tests.
- Every metric either file queries is one a real daemon exports (its live ``/metrics``), and
  every label they join on or print is one its series carry. The series the stale threshold is
  computed from (interval and run_timeout) have a sample for each schedule from the start.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from akeeba_backupd.config import DEFAULT_LISTEN, parse_listen
from tests.daemon_harness import (
    DaemonProcess,
    SimulatorProcess,
    SiteEntry,
    config_document,
    free_port,
    write_config,
)
from tests.exposition import Exposition
from tests.tools import promtool

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
ALERTS = ROOT / "prometheus" / "alerts.yaml"
ALERT_TESTS = ROOT / "prometheus" / "alerts.test.yaml"
SCRAPE_EXAMPLE = ROOT / "prometheus" / "scrape.example.yaml"
GRAFANA_ALERTS = ROOT / "grafana" / "provisioning" / "alerting" / "akeeba-backupd.yaml"

JOB = "akeeba-backupd"
DATASOURCE_UID = "akeeba-prometheus"
EXPRESSION_UID = "__expr__"
THRESHOLD_OPERATORS = {"gt": ">", "lt": "<"}
NO_DATA_STATES = {"Alerting", "NoData", "OK"}
EXEC_ERROR_STATES = {"Alerting", "Error", "OK"}
DURATION = re.compile(r"^(\d+[smhdw])+$")
GRAFANA_UID = re.compile(r"^[A-Za-z0-9_-]{1,40}$")

METRIC = re.compile(r"(?<![A-Za-z0-9_:])akeeba_[A-Za-z0-9_]+(?![A-Za-z0-9_:])")
QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"')
LABEL_LIST = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
TEMPLATE_LABEL = re.compile(r"\$labels\.([A-Za-z_][A-Za-z0-9_]*)")


# --- helpers -------------------------------------------------------------------------------------


def run_promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run ``promtool ARGS`` to completion and return what it did."""
    return subprocess.run(
        [promtool(), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )


def load_yaml(path: Path) -> Any:
    """Return the YAML document in ``path``."""
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def dump_yaml(path: Path, document: Any) -> Path:
    """Write ``document`` to ``path`` as YAML; return ``path``."""
    path.write_text(yaml.safe_dump(document, sort_keys=False, width=1000), encoding="utf-8")
    return path


def prometheus_rules() -> list[dict[str, Any]]:
    """Return every rule of prometheus/alerts.yaml."""
    return [rule for group in load_yaml(ALERTS)["groups"] for rule in group["rules"]]


def grafana_rules() -> list[dict[str, Any]]:
    """Return every rule of the Grafana provisioning file."""
    return [rule for group in load_yaml(GRAFANA_ALERTS)["groups"] for rule in group["rules"]]


def by_ref(rule: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Return a Grafana rule's data items by refId."""
    return {item["refId"]: item for item in rule["data"]}


def grafana_queries(rule: dict[str, Any]) -> list[str]:
    """Return the PromQL of every data source query of a Grafana rule."""
    return [
        item["model"]["expr"] for item in rule["data"] if item["datasourceUid"] != EXPRESSION_UID
    ]


@dataclass(frozen=True)
class Condition:
    """What a Grafana rule alerts on: ``query <operator> threshold`` per series."""

    query: str
    operator: str
    threshold: float


def grafana_condition(rule: dict[str, Any]) -> Condition:
    """Follow a Grafana rule from its condition (a threshold) through reduce steps to its query.

    Only the shape this project uses is understood; anything else fails the test that asks.
    """
    items = by_ref(rule)
    condition = items[rule["condition"]]["model"]
    assert condition["type"] == "threshold", rule["title"]
    [clause] = condition["conditions"]
    evaluator = clause["evaluator"]
    [threshold] = evaluator["params"]
    source = items[condition["expression"]]
    while source["datasourceUid"] == EXPRESSION_UID:
        model = source["model"]
        # `last` of an instant query's one sample is that sample
        assert (model["type"], model["reducer"]) == ("reduce", "last"), rule["title"]
        source = items[model["expression"]]
    return Condition(
        source["model"]["expr"].strip(), THRESHOLD_OPERATORS[evaluator["type"]], float(threshold)
    )


def as_prometheus_rule(rule: dict[str, Any]) -> dict[str, Any]:
    """Return the Prometheus alerting rule a Grafana rule behaves like.

    An alert instance per series of the query past the threshold; with ``noDataState:
    Alerting``, also one when the query returns nothing at all (``absent``).
    """
    condition = grafana_condition(rule)
    expr = f"({condition.query}) {condition.operator} {condition.threshold:g}"
    if rule["noDataState"] == "Alerting":
        expr += f" or absent({condition.query})"
    return {
        "alert": rule["title"],
        "expr": expr,
        "for": rule["for"],
        "labels": rule["labels"],
    }


def metric_names(expr: str) -> set[str]:
    """Return the ``akeeba_*`` metric names in a PromQL expression (not in its strings)."""
    return set(METRIC.findall(QUOTED.sub('""', expr)))


def grouping_labels(expr: str) -> set[str]:
    """Return the label names in the by/on/ignoring/group_left/group_right lists of ``expr``."""
    return {
        label.strip()
        for labels in LABEL_LIST.findall(expr)
        for label in labels.split(",")
        if label.strip()
    }


def alert_tests(document: dict[str, Any], alertname: str) -> dict[str, Any]:
    """Return the unit tests keeping only the cases of ``alertname`` (and groups that have one)."""
    kept = copy.deepcopy(document)
    kept["tests"] = []
    for group in document["tests"]:
        cases = [
            case for case in group.get("alert_rule_test", []) if case["alertname"] == alertname
        ]
        if cases:
            kept["tests"].append({**copy.deepcopy(group), "alert_rule_test": cases})
    return kept


def unit_test(
    directory: Path, rules: list[dict[str, Any]], tests: dict[str, Any]
) -> subprocess.CompletedProcess[str]:
    """Run ``promtool test rules`` on ``tests`` against ``rules`` (one group), in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    dump_yaml(directory / "alerts.yaml", {"groups": [{"name": JOB, "rules": rules}]})
    test_file = dump_yaml(directory / "alerts.test.yaml", {**tests, "rule_files": ["alerts.yaml"]})
    return run_promtool("test", "rules", test_file)


def outcome(result: subprocess.CompletedProcess[str]) -> str:
    """Return promtool's output, for assertion messages."""
    return f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"


# --- prometheus/alerts.yaml ----------------------------------------------------------------------


def test_alert_rules_pass_promtool_check() -> None:
    """``promtool check rules`` accepts alerts.yaml and counts every rule."""
    result = run_promtool("check", "rules", ALERTS)
    assert result.returncode == 0, outcome(result)
    assert f"SUCCESS: {len(prometheus_rules())} rules found" in result.stdout, outcome(result)


def test_the_alerts_are_the_designed_ones() -> None:
    """The seven alerts of the design, each with a severity, a `for:` and a runbook."""
    rules = prometheus_rules()
    assert [rule["alert"] for rule in rules] == [
        "AkeebaBackupStale",
        "AkeebaBackupNeverSucceeded",
        "AkeebaBackupFailing",
        "AkeebaBackupStalled",
        "AkeebaBackupArchiveShrank",
        "AkeebaBackupdDown",
        "AkeebaBackupdConfigReloadFailed",
    ]
    for rule in rules:
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        assert DURATION.match(rule["for"]), rule["alert"]
        assert {"summary", "description", "runbook_url"} <= set(rule["annotations"]), rule["alert"]
        anchor = rule["alert"].lower()
        assert rule["annotations"]["runbook_url"].endswith(f"#{anchor}"), rule["alert"]


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    """alerts.test.yaml has, for every alert, a case where it fires and one where it does not."""
    firing: set[str] = set()
    quiet: set[str] = set()
    for group in load_yaml(ALERT_TESTS)["tests"]:
        for case in group.get("alert_rule_test", []):
            (firing if case["exp_alerts"] else quiet).add(case["alertname"])
    alerts = {rule["alert"] for rule in prometheus_rules()}
    assert firing == alerts
    assert quiet == alerts


def test_alert_unit_tests_pass() -> None:
    """``promtool test rules prometheus/alerts.test.yaml`` passes."""
    result = run_promtool("test", "rules", ALERT_TESTS)
    assert result.returncode == 0, outcome(result)
    assert "SUCCESS" in result.stdout, outcome(result)


DAEMON_RUN_TIMEOUT = (
    "on(job, instance) group_left() max by(job, instance) (akeeba_backup_run_timeout_seconds)"
)
"""The longest run_timeout of each daemon, in place of each schedule's own (a mutation)."""

# (alert, field, text in the rule, replacement): each mutation must fail the alert's unit tests.
# PromQL is compared with its whitespace collapsed to single spaces.
MUTATIONS = [
    ("AkeebaBackupStale", "expr", "> 1.25 *", "> 1.5 *"),
    ("AkeebaBackupStale", "expr", "> 1.25 *", "> 1.0 *"),
    # no run allowance: an hourly schedule with run_timeout 30m would alert after 1 h 15 min
    ("AkeebaBackupStale", "expr", "+ akeeba_backup_run_timeout_seconds", ""),
    # one allowance for the whole daemon, its longest run_timeout (6 h in the tests): the hourly
    # schedule with run_timeout 30m would alert only 7 h 15 min after its last success
    ("AkeebaBackupStale", "expr", "akeeba_backup_run_timeout_seconds", DAEMON_RUN_TIMEOUT),
    # an allowance of one interval: both hourly schedules would alert after 2 h 15 min
    (
        "AkeebaBackupStale",
        "expr",
        "akeeba_backup_run_timeout_seconds",
        "akeeba_backup_expected_interval_seconds",
    ),
    ("AkeebaBackupStale", "expr", "unless akeeba_backup_paused == 1", ""),
    ("AkeebaBackupStale", "for", "10m", "15m"),
    (
        "AkeebaBackupNeverSucceeded",
        "expr",
        "akeeba_backup_runs_total > 0",
        "akeeba_backup_runs_total > 1",
    ),
    ("AkeebaBackupNeverSucceeded", "expr", "group_right() 1.25 *", "group_right() 2 *"),
    ("AkeebaBackupNeverSucceeded", "expr", "group_right() 1.25 *", "group_right() 1.0 *"),
    ("AkeebaBackupNeverSucceeded", "expr", "+ akeeba_backup_run_timeout_seconds", ""),
    ("AkeebaBackupNeverSucceeded", "expr", "akeeba_backup_run_timeout_seconds", DAEMON_RUN_TIMEOUT),
    (
        "AkeebaBackupNeverSucceeded",
        "expr",
        "unless akeeba_backup_last_success_timestamp_seconds",
        "",
    ),
    ("AkeebaBackupNeverSucceeded", "expr", "unless akeeba_backup_paused == 1", ""),
    ("AkeebaBackupFailing", "expr", ">= 2", ">= 3"),
    (
        "AkeebaBackupFailing",
        "expr",
        "* ignoring(reason) group_left(reason) akeeba_backup_last_failure_reason",
        "",
    ),
    ("AkeebaBackupFailing", "expr", "unless ignoring(reason) akeeba_backup_paused == 1", ""),
    ("AkeebaBackupStalled", "expr", "> 900", "> 1800"),
    ("AkeebaBackupStalled", "expr", "or akeeba_backup_run_started_timestamp_seconds", ""),
    ("AkeebaBackupStalled", "expr", "and akeeba_backup_running == 1", ""),
    ("AkeebaBackupArchiveShrank", "expr", "< 0.5 *", "< 0.7 *"),
    ("AkeebaBackupArchiveShrank", "expr", "[7d]", "[8d]"),
    ("AkeebaBackupdDown", "expr", 'or absent(up{job="akeeba-backupd"})', ""),
    ("AkeebaBackupdDown", "expr", 'up{job="akeeba-backupd"} == 0', 'up{job=~".+"} == 0'),
    ("AkeebaBackupdConfigReloadFailed", "expr", "== 0", "== 1"),
]


@pytest.mark.parametrize(
    ("alert", "field", "old", "new"),
    MUTATIONS,
    ids=[f"{alert}:{old}->{new or 'nothing'}" for alert, _, old, new in MUTATIONS],
)
def test_a_wrong_rule_fails_its_unit_tests(
    tmp_path: Path, alert: str, field: str, old: str, new: str
) -> None:
    """The unit tests of an alert pass with the rule as written and fail with it mutated."""
    [rule] = [rule for rule in prometheus_rules() if rule["alert"] == alert]
    tests = alert_tests(load_yaml(ALERT_TESTS), alert)
    baseline = unit_test(tmp_path / "as-written", [rule], tests)
    assert baseline.returncode == 0, outcome(baseline)

    text = " ".join(str(rule[field]).split())
    assert old in text, f"the mutation no longer applies to {alert}: {text}"
    mutated = {**rule, field: text.replace(old, new)}
    check = dump_yaml(tmp_path / "check.yaml", {"groups": [{"name": JOB, "rules": [mutated]}]})
    assert run_promtool("check", "rules", check).returncode == 0, "the mutation must stay valid"
    result = unit_test(tmp_path / "mutated", [mutated], tests)
    assert result.returncode != 0, f"the unit tests of {alert} pass with {mutated[field]!r}"
    assert "FAILED" in result.stdout + result.stderr, outcome(result)


# --- prometheus/scrape.example.yaml --------------------------------------------------------------


def test_scrape_example_is_a_valid_prometheus_config(tmp_path: Path) -> None:
    """Used as prometheus.yml with alerts.yaml copied where its comment says, promtool accepts
    it, rules included; it scrapes the daemon's default port as job akeeba-backupd."""
    document = load_yaml(SCRAPE_EXAMPLE)
    [rule_file] = document["rule_files"]
    config = tmp_path / "prometheus.yml"
    shutil.copyfile(SCRAPE_EXAMPLE, config)
    (tmp_path / rule_file).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ALERTS, tmp_path / rule_file)
    result = run_promtool("check", "config", config)
    assert result.returncode == 0, outcome(result)
    assert f"SUCCESS: {len(prometheus_rules())} rules found" in result.stdout, outcome(result)

    [job] = [job for job in document["scrape_configs"] if job["job_name"] == JOB]
    [static] = job["static_configs"]
    _, default_port = parse_listen(DEFAULT_LISTEN)
    assert [target.rsplit(":", 1)[1] for target in static["targets"]] == [str(default_port)]


def test_scrape_example_check_can_fail(tmp_path: Path) -> None:
    """Without the rule file in place, ``promtool check config`` fails."""
    config = tmp_path / "prometheus.yml"
    shutil.copyfile(SCRAPE_EXAMPLE, config)
    result = run_promtool("check", "config", config)
    assert result.returncode != 0, outcome(result)


# --- grafana/provisioning/alerting/akeeba-backupd.yaml ------------------------------------------


def test_grafana_rules_are_well_formed_provisioning() -> None:
    """apiVersion 1; unique uids and titles; every query on the akeeba-prometheus data source;
    the condition an existing __expr__ threshold; expressions refer to existing refIds."""
    document = load_yaml(GRAFANA_ALERTS)
    assert document["apiVersion"] == 1
    for group in document["groups"]:
        assert {"orgId", "name", "folder", "interval", "rules"} <= set(group)
        assert DURATION.match(group["interval"])
    rules = grafana_rules()
    uids = [rule["uid"] for rule in rules]
    assert len(set(uids)) == len(uids), uids
    titles = [rule["title"] for rule in rules]
    assert len(set(titles)) == len(titles), titles
    for rule in rules:
        title = rule["title"]
        assert GRAFANA_UID.match(rule["uid"]), title
        items = by_ref(rule)
        assert len(items) == len(rule["data"]), f"{title}: duplicate refIds"
        assert rule["condition"] in items, title
        condition = items[rule["condition"]]
        assert condition["datasourceUid"] == EXPRESSION_UID, title
        assert condition["model"]["type"] == "threshold", title
        queries = [item for item in rule["data"] if item["datasourceUid"] != EXPRESSION_UID]
        assert queries, f"{title} has no data source query"
        for item in rule["data"]:
            model = item["model"]
            assert model["refId"] == item["refId"], title
            if item["datasourceUid"] == EXPRESSION_UID:
                assert model["expression"] in items, title
                assert model["expression"] != item["refId"], title
            else:
                assert item["datasourceUid"] == DATASOURCE_UID, title
                assert model["datasource"] == {"type": "prometheus", "uid": DATASOURCE_UID}
                assert model["expr"].strip(), title
                assert model["instant"] is True, title
                assert {"from", "to"} <= set(item["relativeTimeRange"]), title
        assert rule["noDataState"] in NO_DATA_STATES, title
        assert rule["execErrState"] in EXEC_ERROR_STATES, title
        assert DURATION.match(rule["for"]), title
        assert {"summary", "description", "runbook_url"} <= set(rule["annotations"]), title


def test_grafana_alerts_when_the_daemon_is_absent() -> None:
    """An absent `up` means no daemon to scrape: AkeebaBackupdDown alerts on no data; the other
    rules treat no data as nothing to alert on (the daemon's absence is that one alert)."""
    states = {rule["title"]: rule["noDataState"] for rule in grafana_rules()}
    assert states.pop("AkeebaBackupdDown") == "Alerting"
    assert set(states.values()) == {"OK"}


def test_grafana_queries_are_valid_promql(tmp_path: Path) -> None:
    """``promtool check rules`` accepts every query of the Grafana rules (and each rule's
    Prometheus equivalent)."""
    rules = [
        {"alert": f"{rule['title']}Query{index}", "expr": expr}
        for rule in grafana_rules()
        for index, expr in enumerate(grafana_queries(rule))
    ]
    rules += [as_prometheus_rule(rule) for rule in grafana_rules()]
    path = dump_yaml(tmp_path / "grafana.yaml", {"groups": [{"name": "grafana", "rules": rules}]})
    result = run_promtool("check", "rules", path)
    assert result.returncode == 0, outcome(result)
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout, outcome(result)


def test_the_promql_check_can_fail(tmp_path: Path) -> None:
    """A query with a syntax error fails ``promtool check rules``."""
    bad = [{"alert": "Broken", "expr": "akeeba_backup_running == "}]
    path = dump_yaml(tmp_path / "bad.yaml", {"groups": [{"name": "bad", "rules": bad}]})
    assert run_promtool("check", "rules", path).returncode != 0


def test_grafana_has_the_same_alerts_as_prometheus() -> None:
    """The same titles, with the same `for:`, labels and runbook."""
    grafana = {rule["title"]: rule for rule in grafana_rules()}
    prometheus = {rule["alert"]: rule for rule in prometheus_rules()}
    assert sorted(grafana) == sorted(prometheus)
    for title, rule in grafana.items():
        assert rule["for"] == prometheus[title]["for"], title
        assert rule["labels"] == prometheus[title]["labels"], title
        runbook = prometheus[title]["annotations"]["runbook_url"]
        assert rule["annotations"]["runbook_url"] == runbook, title


def test_grafana_rules_pass_the_prometheus_unit_tests(tmp_path: Path) -> None:
    """Each Grafana rule, as the Prometheus rule it behaves like, passes alerts.test.yaml (the
    annotations aside: Grafana templates them from $values): both routes fire alike."""
    tests = load_yaml(ALERT_TESTS)
    for group in tests["tests"]:
        for case in group.get("alert_rule_test", []):
            for alert in case["exp_alerts"]:
                alert.pop("exp_annotations", None)
    rules = [as_prometheus_rule(rule) for rule in grafana_rules()]
    result = unit_test(tmp_path, rules, tests)
    assert result.returncode == 0, outcome(result)


def test_the_grafana_equivalence_can_fail(tmp_path: Path) -> None:
    """A Grafana threshold off by one (AkeebaBackupFailing at > 2) fails the unit tests."""
    [rule] = [rule for rule in grafana_rules() if rule["title"] == "AkeebaBackupFailing"]
    rule = copy.deepcopy(rule)
    by_ref(rule)[rule["condition"]]["model"]["conditions"][0]["evaluator"]["params"] = [2]
    result = unit_test(
        tmp_path, [as_prometheus_rule(rule)], alert_tests(load_yaml(ALERT_TESTS), rule["title"])
    )
    assert result.returncode != 0, outcome(result)


# --- the metrics a real daemon exports -----------------------------------------------------------


@pytest.fixture(scope="module")
def exposition(tmp_path_factory: pytest.TempPathFactory) -> Exposition:
    """The /metrics of a real daemon with one simulated site (no run needed: every family is
    declared from the start, and the ``reason`` label is on its zero failure counters)."""
    work = tmp_path_factory.mktemp("alert-metrics")
    simulator = SimulatorProcess.start(work / "simulator", sites=1)
    try:
        port = free_port()
        sites = [SiteEntry("shop", simulator.site_url("site-0001"))]
        config = write_config(work / "config.yaml", config_document(port, sites))
        daemon = DaemonProcess.start(config, port, work)
        try:
            text = daemon.metrics_text()
        finally:
            daemon.stop()
    finally:
        simulator.stop()
    return Exposition.parse(text)


def all_alert_exprs() -> list[str]:
    """Return the PromQL of every rule in both files."""
    exprs = [rule["expr"] for rule in prometheus_rules()]
    return exprs + [expr for rule in grafana_rules() for expr in grafana_queries(rule)]


def all_annotations() -> list[str]:
    """Return every annotation template of both files."""
    rules = prometheus_rules() + grafana_rules()
    return [text for rule in rules for text in rule["annotations"].values()]


def test_every_metric_the_alerts_use_is_exported(exposition: Exposition) -> None:
    """Every ``akeeba_*`` name in either file is a series the daemon declares."""
    used = set().union(*map(metric_names, all_alert_exprs()))
    assert "akeeba_backup_last_success_timestamp_seconds" in used  # the extraction works
    assert used - exposition.series_names() == set()


def test_the_stale_threshold_series_are_there_from_the_start(exposition: Exposition) -> None:
    """The stale and never-succeeded rules join each schedule's interval and run_timeout: a
    daemon that has run nothing yet already has a sample of both for its schedule (a missing
    one would silence those alerts for it)."""
    used = set().union(*map(metric_names, all_alert_exprs()))
    threshold = {"akeeba_backup_expected_interval_seconds", "akeeba_backup_run_timeout_seconds"}
    assert threshold <= used
    for name in threshold:
        assert (name, "shop", "nightly") in exposition.sampled, name


def test_every_label_the_alerts_use_is_exported(exposition: Exposition) -> None:
    """Every label the rules join on and every ``$labels.X`` they print is one a series has."""
    used = set().union(*map(grouping_labels, all_alert_exprs()))
    printed = {label for text in all_annotations() for label in TEMPLATE_LABEL.findall(text)}
    assert {"reason", "site", "schedule", "instance"} <= used | printed  # the extraction works
    assert (used | printed) - exposition.all_labels() == set()


def test_the_metric_checks_can_fail() -> None:
    """A misspelt name, a histogram's bare name or an unknown label is not exported."""
    exposition = Exposition.parse(
        "# HELP akeeba_backup_runs_total Finished runs\n"
        "# TYPE akeeba_backup_runs_total counter\n"
        'akeeba_backup_runs_total{site="a",schedule="b"} 1.0\n'
        "# HELP akeeba_backup_duration_seconds Durations\n"
        "# TYPE akeeba_backup_duration_seconds histogram\n"
    )
    expr = 'akeeba_backup_runz_total + akeeba_backup_duration_seconds{job="akeeba_x"}'
    assert metric_names(expr) - exposition.series_names() == {
        "akeeba_backup_runz_total",
        "akeeba_backup_duration_seconds",
    }
    assert "akeeba_backup_duration_seconds_bucket" in exposition.series_names()
    assert ("akeeba_backup_runs_total", "a", "b") in exposition.sampled
    assert ("akeeba_backup_duration_seconds_bucket", "a", "b") not in exposition.sampled
    assert grouping_labels(
        "a * on(site, reazon) group_left(reason) b"
    ) - exposition.all_labels() == {
        "reazon",
        "reason",
    }


def test_every_runbook_url_points_at_a_readme_heading() -> None:
    """Each alert's runbook_url ends in #<alert name in lower case>, the anchor GitHub makes of
    the README's "#### <alert name>" heading, which says what the alert means and what to do."""
    headings = {
        line.removeprefix("#### ").strip()
        for line in (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
        if line.startswith("#### ")
    }
    for rule in prometheus_rules():
        name = rule["alert"]
        assert rule["annotations"]["runbook_url"].endswith(f"#{name.lower()}"), name
        assert name in headings, f"README.md has no '#### {name}' heading for its runbook"
