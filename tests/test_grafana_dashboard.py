"""The Grafana dashboard and its provisioning files (``grafana/``), checked without a Grafana.

Grafana cannot run here, so the dashboard is checked by what it is made of:

- its JSON model: a stable uid, no ``__inputs``/``${DS_...}`` (they break file provisioning),
  unique panel ids, panels inside the 24-column grid, every data source the ``datasource``
  variable, every variable it uses defined, tables that merge their queries;
- every query is valid PromQL: the variables are replaced by what Grafana would send and
  ``promtool check rules`` reads them as recording rules;
- the fleet-health stats and the fleet table's age ratio count what they say they count
  (``promtool test rules`` on a small fleet of series);
- every metric and label a query uses is one a real daemon exports: a daemon backs up simulated
  sites (one succeeds, one fails, one is still running) and its ``/metrics`` is the reference.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
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
    metric_samples,
    series,
    wait_until,
    write_config,
)
from tests.exposition import TARGET_LABELS, Exposition
from tests.tools import promtool

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD_PATH = ROOT / "grafana" / "dashboards" / "akeeba-backupd.json"
DATASOURCE_PROVISIONING = (
    ROOT / "grafana" / "provisioning" / "datasources" / "akeeba-prometheus.yaml"
)
DASHBOARD_PROVISIONING = ROOT / "grafana" / "provisioning" / "dashboards" / "akeeba-backupd.yaml"

UID = "akeeba-backupd"
DATASOURCE_UID = "akeeba-prometheus"  # the alerting provisioning refers to it as well
DATASOURCE_VARIABLE = "${datasource}"
GRID_COLUMNS = 24
QUERY_VARIABLES = ("instance", "site", "schedule")

# What Grafana puts in place of its global variables, for promtool.
BUILTIN_VALUES = {
    "__rate_interval": "5m",
    "__interval": "1m",
    "__range": "1h",
    "__interval_ms": "60000",
    "__range_s": "3600",
    "__range_ms": "3600000",
}
BUILTIN_VARIABLES = frozenset(BUILTIN_VALUES) | {"__all"}  # "$__all": the All option's value

VARIABLE = re.compile(r"\$(?:\{(\w+)(?::[^}]*)?\}|(\w+))|\[\[(\w+)(?::[^\]]*)?\]\]")
REGEX_MATCHER = re.compile(r'(\w+)\s*(=~|!~)\s*"([^"]*)"')
METRIC = re.compile(r"(?<![\w:])(akeeba_\w+)")
SELECTOR = re.compile(r"(?<![\w:])(akeeba_\w+)\s*\{([^}]*)\}")
MATCHER_LABEL = re.compile(r"(\w+)\s*(?:=~|!~|!=|=)")
GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
LEGEND_LABEL = re.compile(r"\{\{\s*(\w+)\s*\}\}")
LABEL_VALUES = re.compile(r"^label_values\(\s*(.+?)\s*,\s*(\w+)\s*\)$")


# --- reading the dashboard ---------------------------------------------------------------------


@dataclass(frozen=True)
class Query:
    """One PromQL expression of the dashboard, with where it comes from."""

    record: str
    """A recording-rule name for it, unique in the dashboard (dashboard:panel_<id>_<refId>)."""
    where: str
    expr: str
    legend: str = ""


def load_dashboard() -> dict[str, Any]:
    """Return the dashboard's JSON model."""
    with DASHBOARD_PATH.open(encoding="utf-8") as file:
        model: dict[str, Any] = json.load(file)
    return model


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    """The dashboard's JSON model."""
    return load_dashboard()


def all_panels(model: dict[str, Any]) -> list[dict[str, Any]]:
    """Return every panel, rows and the panels of collapsed rows included."""
    found = []
    for panel in model.get("panels", []):
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def variables(model: dict[str, Any]) -> list[dict[str, Any]]:
    """Return the templating variables in their order."""
    listed: list[dict[str, Any]] = model.get("templating", {}).get("list", [])
    return listed


def variable_query(variable: dict[str, Any]) -> str:
    """Return the query string of a query variable (a string or a query object)."""
    query = variable.get("query")
    if isinstance(query, dict):
        query = query.get("query")
    assert isinstance(query, str), f"variable {variable.get('name')}: no query string"
    return query


def panel_queries(model: dict[str, Any]) -> list[Query]:
    """Return the PromQL of every panel target."""
    queries = []
    for panel in all_panels(model):
        for target in panel.get("targets", []):
            queries.append(
                Query(
                    record=f"dashboard:panel_{panel['id']}_{target.get('refId')}",
                    where=f"panel {panel['id']} {panel.get('title')!r} query {target.get('refId')}",
                    expr=target.get("expr", ""),
                    legend=target.get("legendFormat", ""),
                )
            )
    return queries


def variable_selectors(model: dict[str, Any]) -> list[tuple[Query, str]]:
    """Return the series selector and the label of every ``label_values(...)`` variable."""
    selectors = []
    for variable in variables(model):
        if variable.get("type") != "query":
            continue
        query = variable_query(variable)
        match = LABEL_VALUES.match(query.strip())
        assert match is not None, f"variable {variable['name']}: not label_values(...): {query}"
        where = f"variable {variable['name']!r}"
        record = f"dashboard:variable_{variable['name']}"
        selectors.append((Query(record, where, match.group(1)), match.group(2)))
    return selectors


def all_queries(model: dict[str, Any]) -> list[Query]:
    """Return the panel queries and the variables' series selectors."""
    return panel_queries(model) + [query for query, _ in variable_selectors(model)]


def used_variables(text: str) -> set[str]:
    """Return the names of the variables ``text`` refers to ($x, ${x}, ${x:fmt}, [[x]])."""
    return {next(group for group in match.groups() if group) for match in VARIABLE.finditer(text)}


def strings(value: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """Yield (JSON path, string) for every string in a JSON value, keys excluded."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from strings(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from strings(item, f"{path}[{index}]")


def datasource_refs(value: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """Yield (JSON path, value) of every ``datasource`` key in a JSON value."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "datasource":
                yield f"{path}.{key}", item
            yield from datasource_refs(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from datasource_refs(item, f"{path}[{index}]")


def concrete(expr: str) -> str:
    """Return ``expr`` as Grafana would send it with every variable on "All".

    A variable inside a regex matcher (``site=~"$site"``) becomes ``.*`` (the variables'
    ``allValue``); Grafana's interval and range variables become durations. Any other use of a
    variable is left in place, so that promtool rejects it: a multi-value variable only works
    inside a regex matcher.
    """

    def regex_value(match: re.Match[str]) -> str:
        label, operator, value = match.groups()
        if used_variables(value) - BUILTIN_VARIABLES:
            return f'{label}{operator}".*"'
        return match.group(0)

    text = REGEX_MATCHER.sub(regex_value, expr)
    for name, value in sorted(BUILTIN_VALUES.items(), key=lambda item: -len(item[0])):
        text = text.replace(f"${{{name}}}", value).replace(f"${name}", value)
    return text


# --- the exported metrics ----------------------------------------------------------------------


def unknown_metrics(expr: str, exposition: Exposition) -> set[str]:
    """Return the ``akeeba_*`` names in ``expr`` that the exposition declares no series of."""
    return set(METRIC.findall(expr)) - exposition.series_names()


def unknown_labels(query: Query, exposition: Exposition) -> set[str]:
    """Return the label names ``query`` matches on, groups by or prints that no series has."""
    unknown = set()
    for metric, matchers in SELECTOR.findall(query.expr):
        have = exposition.labels.get(metric, frozenset()) | TARGET_LABELS
        unknown |= {f"{metric}{{{label}}}" for label in MATCHER_LABEL.findall(matchers)} - {
            f"{metric}{{{label}}}" for label in have
        }
    known = exposition.all_labels() | {"le"}
    for group in GROUPING.findall(query.expr):
        unknown |= {label.strip() for label in group.split(",") if label.strip()} - known
    unknown |= set(LEGEND_LABEL.findall(query.legend)) - known
    return unknown


# --- promtool ----------------------------------------------------------------------------------


def write_rules(path: Path, queries: list[Query]) -> Path:
    """Write ``queries`` as one group of recording rules (with concrete values) to ``path``."""
    rules = [{"record": query.record, "expr": concrete(query.expr)} for query in queries]
    document = {"groups": [{"name": "akeeba-backupd-dashboard", "rules": rules}]}
    path.write_text(yaml.safe_dump(document, sort_keys=False, width=1000), encoding="utf-8")
    return path


def check_rules(path: Path) -> subprocess.CompletedProcess[str]:
    """Run ``promtool check rules`` on ``path``."""
    return subprocess.run(
        [promtool(), "check", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


# --- the JSON model ----------------------------------------------------------------------------


def test_dashboard_is_provisionable_json_with_a_stable_uid(dashboard: dict[str, Any]) -> None:
    """A classic JSON model that file provisioning loads as is, always under the same uid."""
    text = DASHBOARD_PATH.read_text(encoding="utf-8")
    assert dashboard["uid"] == UID
    assert dashboard.get("id") is None
    assert "__inputs" not in dashboard
    assert "__requires" not in dashboard
    assert "${DS_" not in text
    assert isinstance(dashboard["schemaVersion"], int)
    assert dashboard["schemaVersion"] >= 36
    assert dashboard["title"]
    assert dashboard["panels"]


def test_panel_ids_are_unique(dashboard: dict[str, Any]) -> None:
    """Every panel (rows included) has its own integer id."""
    ids = [panel.get("id") for panel in all_panels(dashboard)]
    assert all(isinstance(each, int) and each > 0 for each in ids), ids
    duplicates = {each for each in ids if ids.count(each) > 1}
    assert duplicates == set()


def test_panels_fit_the_grid_without_overlapping(dashboard: dict[str, Any]) -> None:
    """Each panel lies within the 24 columns, and no two panels cover the same cell."""
    cells: dict[tuple[int, int], int] = {}
    for panel in all_panels(dashboard):
        grid = panel["gridPos"]
        x, y, w, h = grid["x"], grid["y"], grid["w"], grid["h"]
        assert all(isinstance(value, int) for value in (x, y, w, h)), panel["id"]
        assert x >= 0, panel["id"]
        assert y >= 0, panel["id"]
        assert w >= 1, panel["id"]
        assert h >= 1, panel["id"]
        assert x + w <= GRID_COLUMNS, f"panel {panel['id']}: x {x} + w {w} > {GRID_COLUMNS}"
        for column in range(x, x + w):
            for line in range(y, y + h):
                other = cells.setdefault((column, line), panel["id"])
                assert other == panel["id"], f"panels {other} and {panel['id']} overlap"


def test_every_datasource_is_the_datasource_variable(dashboard: dict[str, Any]) -> None:
    """Panels, targets and query variables all use ``${datasource}``: nothing hard-coded."""
    refs = list(datasource_refs(dashboard))
    assert refs
    for path, ref in refs:
        if isinstance(ref, dict):
            assert ref.get("uid") == DATASOURCE_VARIABLE, f"{path}: {ref}"
            assert ref.get("type", "prometheus") == "prometheus", f"{path}: {ref}"
        else:
            assert ref == DATASOURCE_VARIABLE, f"{path}: {ref!r}"
    for panel in all_panels(dashboard):
        if panel.get("targets"):
            assert "datasource" in panel, f"panel {panel['id']} has no datasource"
        for target in panel.get("targets", []):
            assert "datasource" in target, f"panel {panel['id']} {target.get('refId')}"


def test_variables_are_datasource_instance_site_and_schedule(dashboard: dict[str, Any]) -> None:
    """A Prometheus ``datasource`` variable, then multi-value query variables on it."""
    listed = variables(dashboard)
    assert [variable["name"] for variable in listed] == ["datasource", *QUERY_VARIABLES]
    datasource = listed[0]
    assert datasource["type"] == "datasource"
    assert datasource["query"] == "prometheus"
    defined: set[str] = {"datasource"}
    for variable in listed[1:]:
        name = variable["name"]
        assert variable["type"] == "query", name
        assert variable["datasource"] in (
            DATASOURCE_VARIABLE,
            {"type": "prometheus", "uid": DATASOURCE_VARIABLE},
        ), name
        assert variable["multi"] is True, name
        assert variable["includeAll"] is True, name
        assert variable["allValue"] == ".*", name  # "All" is a regex for the =~ matchers
        query = variable_query(variable)
        assert LABEL_VALUES.match(query), query
        if "definition" in variable:
            assert variable["definition"] == query, name
        # A variable may only depend on variables defined before it.
        assert used_variables(query) <= defined, name
        defined.add(name)


def test_every_used_variable_is_defined(dashboard: dict[str, Any]) -> None:
    """No title, query or legend refers to a variable the dashboard does not define."""
    defined = {variable["name"] for variable in variables(dashboard)} | BUILTIN_VARIABLES
    undefined = {
        (path, name)
        for path, text in strings(dashboard)
        for name in used_variables(text)
        if name not in defined
    }
    assert undefined == set()
    used = set().union(*(used_variables(query.expr) for query in all_queries(dashboard)))
    assert set(QUERY_VARIABLES) <= used  # each variable filters something


def test_variables_only_appear_in_regex_matchers(dashboard: dict[str, Any]) -> None:
    """A multi-value variable is a regex alternation: ``=~"$site"``, never ``="$site"``."""
    misplaced = {query.where: concrete(query.expr) for query in all_queries(dashboard)}
    assert {where: expr for where, expr in misplaced.items() if "$" in expr} == {}


def test_tables_merge_their_instant_queries(dashboard: dict[str, Any]) -> None:
    """Tables run instant table queries, merge them, and rename every value they keep."""
    tables = [panel for panel in all_panels(dashboard) if panel["type"] == "table"]
    assert tables
    for panel in tables:
        targets = panel["targets"]
        refs = [target["refId"] for target in targets]
        assert len(refs) == len(set(refs)), panel["id"]
        for target in targets:
            assert target.get("instant") is True, (panel["id"], target["refId"])
            assert target.get("format") == "table", (panel["id"], target["refId"])
        ids = [step["id"] for step in panel.get("transformations", [])]
        if len(targets) > 1:
            assert {"merge", "joinByField"} & set(ids), f"table {panel['id']} does not merge"
        organize = next(
            step["options"] for step in panel["transformations"] if step["id"] == "organize"
        )
        values = {f"Value #{ref}" for ref in refs} if len(refs) > 1 else {"Value"}
        renamed = organize.get("renameByName", {})
        excluded = {name for name, hide in organize.get("excludeByName", {}).items() if hide}
        stray = {name for name in renamed if name.startswith("Value")} - values
        assert stray == set(), f"table {panel['id']} renames columns no query makes"
        assert values - renamed.keys() - excluded == set(), f"table {panel['id']}: unnamed"


def test_overrides_name_fields_that_exist(dashboard: dict[str, Any]) -> None:
    """A field override by name matches a renamed column or a series' legend."""
    for panel in all_panels(dashboard):
        names = {target.get("legendFormat") for target in panel.get("targets", [])}
        for step in panel.get("transformations", []):
            names |= set(step["options"].get("renameByName", {}).values())
        for item in panel.get("fieldConfig", {}).get("overrides", []):
            if item["matcher"]["id"] == "byName":
                assert item["matcher"]["options"] in names, (panel["id"], item["matcher"])


def test_rows_hold_the_four_views(dashboard: dict[str, Any]) -> None:
    """Fleet health stats, the fleet table, running backups and history, in that order."""
    rows = [panel["title"] for panel in dashboard["panels"] if panel["type"] == "row"]
    assert rows == ["Fleet health", "Fleet", "Running backups", "History"]
    by_title = {panel["title"]: panel for panel in all_panels(dashboard)}
    for title in ("OK", "Stale", "Failing", "Running"):
        assert by_title[title]["type"] == "stat"
    exprs = " ".join(query.expr for query in panel_queries(dashboard))
    assert "histogram_quantile(" in exprs
    assert "increase(akeeba_backup_failures_total" in exprs
    assert "akeeba_backup_domain" in exprs
    progress = [
        panel
        for panel in all_panels(dashboard)
        if panel["type"] == "bargauge" and "akeeba_backup_progress_ratio" in json.dumps(panel)
    ]
    assert progress


def test_fleet_table_colours_age_against_the_interval(dashboard: dict[str, Any]) -> None:
    """Age / interval: green below 1, amber from 1, red from 1.25 (the stale threshold)."""
    panel = next(p for p in all_panels(dashboard) if p["title"].startswith("Fleet:"))
    override = next(
        item
        for item in panel["fieldConfig"]["overrides"]
        if item["matcher"]["options"] == "Age / interval"
    )
    properties = {prop["id"]: prop["value"] for prop in override["properties"]}
    steps = [(step["color"], step["value"]) for step in properties["thresholds"]["steps"]]
    assert [value for _, value in steps] == [None, 1, 1.25]
    assert steps[0][0] == "green"
    assert steps[2][0] == "red"
    assert properties["custom.cellOptions"]["type"] == "color-background"


# --- PromQL ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_every_query_is_valid_promql(dashboard: dict[str, Any], tmp_path: Path) -> None:
    """``promtool check rules`` accepts every panel query and variable selector."""
    queries = all_queries(dashboard)
    assert len(queries) > 20
    assert len({query.record for query in queries}) == len(queries)
    checked = check_rules(write_rules(tmp_path / "dashboard.rules.yaml", queries))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(queries)} rules found" in checked.stdout


@pytest.mark.slow
def test_the_promql_checks_can_fail(tmp_path: Path) -> None:
    """A syntax error fails promtool; a variable outside a regex matcher survives ``concrete``
    (valid PromQL, but a literal "$site": the check on misplaced variables catches it)."""
    for broken in ("sum(rate(akeeba_backup_runs_total[5m])", "akeeba_backup_running{site=~$site}"):
        rules = write_rules(tmp_path / "broken.rules.yaml", [Query("x:y", "test", broken)])
        assert check_rules(rules).returncode != 0, broken
    assert concrete('akeeba_backup_running{site=~"$site", schedule=~"${schedule}"}') == (
        'akeeba_backup_running{site=~".*", schedule=~".*"}'
    )
    assert "$site" in concrete('akeeba_backup_running{site="$site"}')
    assert concrete("rate(x[$__rate_interval]) + increase(x[${__interval}])") == (
        "rate(x[5m]) + increase(x[1m])"
    )


# Six schedules at 01:00 after the epoch (promtool's clock): each stat should count exactly the
# ones named in its comment.
FLEET_SERIES = {
    # site: (last success, expected interval, run timeout, last status, consecutive failures,
    # running)
    "ok": (2700, 3600, 300, 1, 0, 0),  # age 900 s of a 3600 s interval: OK, ratio 0.25
    # age 3600 s > 1.25 x 2000 s + 300 s: stale, ratio 1.8
    "stale": (0, 2000, 300, 1, 0, 0),
    # age 3300 s, but within 1.25 x 2000 s + 1000 s: not stale yet, ratio 1.65
    "overdue": (300, 2000, 1000, 1, 0, 0),
    "failing": (2700, 3600, 300, 0, 1, 0),  # fresh, but its last run failed: ratio 0.25
    "failing2": (None, 3600, 300, 0, 3, 0),  # failed 3 times, never succeeded: no success
    "new": (None, 3600, 300, None, 0, 1),  # running its first backup: no success yet
}
FLEET_STATS = {"OK": 2, "Stale": 1, "Failing": 2, "No success yet": 2, "Running": 1}
FLEET_RATIOS = {"ok": 0.25, "stale": 1.8, "overdue": 1.65, "failing": 0.25}


def fleet_input_series() -> list[dict[str, str]]:
    """Return promtool input series for FLEET_SERIES, constant over 70 minutes."""
    metrics = (
        "akeeba_backup_last_success_timestamp_seconds",
        "akeeba_backup_expected_interval_seconds",
        "akeeba_backup_run_timeout_seconds",
        "akeeba_backup_last_status",
        "akeeba_backup_consecutive_failures",
        "akeeba_backup_running",
    )
    found = []
    for site, values in FLEET_SERIES.items():
        labels = f'instance="backup:9489",job="akeeba-backupd",site="{site}",schedule="nightly"'
        for metric, value in zip(metrics, values, strict=True):
            if value is not None:
                found.append({"series": f"{metric}{{{labels}}}", "values": f"{value}+0x70"})
        for metric in ("akeeba_backup_queued", "akeeba_backup_paused"):
            found.append({"series": f"{metric}{{{labels}}}", "values": "0+0x70"})
    return found


def promtool_case(record: str, samples: dict[str, float]) -> dict[str, Any]:
    """Return a promtool ``promql_expr_test`` at 01:00 expecting ``samples`` (labels → value)."""
    return {
        "expr": record,
        "eval_time": "1h",
        "exp_samples": [
            {"labels": record + labels, "value": value} for labels, value in samples.items()
        ],
    }


@pytest.mark.slow
def test_fleet_health_counts_the_right_schedules(dashboard: dict[str, Any], tmp_path: Path) -> None:
    """OK/stale/failing/running stats and the table's age ratio on a known fleet."""
    by_title = {panel["title"]: panel for panel in all_panels(dashboard)}
    table = next(panel for panel in all_panels(dashboard) if panel["title"].startswith("Fleet:"))
    renames = table["transformations"][-1]["options"]["renameByName"]
    ratio = next(ref for ref, name in renames.items() if name == "Age / interval")
    records = {f"dashboard:panel_{by_title[title]['id']}_A": title for title in FLEET_STATS}
    ratio_record = f"dashboard:panel_{table['id']}_{ratio.removeprefix('Value #')}"
    wanted = [
        q for q in panel_queries(dashboard) if q.record in records or q.record == ratio_record
    ]
    assert len(wanted) == len(FLEET_STATS) + 1
    cases = [promtool_case(record, {"": FLEET_STATS[title]}) for record, title in records.items()]
    cases.append(
        promtool_case(
            ratio_record,
            {
                f'{{instance="backup:9489",schedule="nightly",site="{site}"}}': value
                for site, value in FLEET_RATIOS.items()
            },
        )
    )
    rules = write_rules(tmp_path / "stats.rules.yaml", wanted)
    tests = tmp_path / "stats.test.yaml"
    document = {
        "rule_files": [rules.name],
        "evaluation_interval": "1m",
        "tests": [
            {"interval": "1m", "input_series": fleet_input_series(), "promql_expr_test": cases}
        ],
    }
    tests.write_text(yaml.safe_dump(document, sort_keys=False, width=1000), encoding="utf-8")
    tested = subprocess.run(
        [promtool(), "test", "rules", tests.name],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr


# --- the metrics a real daemon exports ---------------------------------------------------------


@pytest.fixture(scope="module")
def exposition(tmp_path_factory: pytest.TempPathFactory) -> Exposition:
    """The /metrics of a daemon with a succeeded, a failed and a running backup.

    Between them every series exists (a failure reason, an archive size, a current domain), so
    the labels of every metric the dashboard uses can be checked, not just the names.
    """
    work = tmp_path_factory.mktemp("dashboard-metrics")
    simulator = SimulatorProcess.start(work / "simulator", sites=3, steps=5)
    try:
        simulator.set_settings("site-0001", warnings=[[2, "a warning"]])
        simulator.set_faults("site-0002", engine_error_at_step=2)
        simulator.set_settings("site-0003", steps=100000, step_seconds=0.05)
        port = free_port()
        sites = [
            SiteEntry("ok-site", simulator.site_url("site-0001")),
            SiteEntry("bad-site", simulator.site_url("site-0002")),
            SiteEntry("slow-site", simulator.site_url("site-0003")),
        ]
        config = write_config(work / "config.yaml", config_document(port, sites))
        daemon = DaemonProcess.start(config, port, work)
        try:
            for site in ("ok-site", "bad-site", "slow-site"):
                daemon.trigger(site, "nightly")
            for site in ("ok-site", "bad-site"):
                daemon.wait_for_sample("akeeba_backup_runs_total", 1, site=site, schedule="nightly")

            def running_with_a_domain() -> str | None:
                text = daemon.metrics_text()
                current = series(metric_samples(text), "akeeba_backup_domain", site="slow-site")
                return text if 1.0 in current.values() else None

            text = wait_until(running_with_a_domain, "slow-site to be running", context=daemon.logs)
        finally:
            daemon.stop()
    finally:
        simulator.stop()
    return Exposition.parse(text)


def test_metric_and_label_checks_can_fail() -> None:
    """A misspelt metric, a bare histogram name or an unknown label is reported."""
    exposition = Exposition.parse(
        "# HELP akeeba_backup_runs_total Finished runs\n"
        "# TYPE akeeba_backup_runs_total counter\n"
        'akeeba_backup_runs_total{site="a",schedule="b"} 1.0\n'
        "# HELP akeeba_backup_duration_seconds Durations\n"
        "# TYPE akeeba_backup_duration_seconds histogram\n"
        'akeeba_backup_duration_seconds_bucket{site="a",schedule="b",le="+Inf"} 1.0\n'
        'akeeba_backup_duration_seconds_count{site="a",schedule="b"} 1.0\n'
        'akeeba_backup_duration_seconds_sum{site="a",schedule="b"} 3.0\n'
    )
    good = 'sum by (site, le) (rate(akeeba_backup_duration_seconds_bucket{site=~"$site"}[5m]))'
    assert unknown_metrics(good + " / akeeba_backup_runs_total", exposition) == set()
    assert unknown_labels(Query("r", "w", good, "{{site}}"), exposition) == set()
    assert unknown_metrics("akeeba_backup_runz_total", exposition) == {"akeeba_backup_runz_total"}
    assert unknown_metrics("akeeba_backup_runs", exposition) == {"akeeba_backup_runs"}
    assert unknown_metrics("akeeba_backup_duration_seconds", exposition) == {
        "akeeba_backup_duration_seconds"
    }
    assert unknown_labels(Query("r", "w", 'akeeba_backup_runs_total{sites=~"x"}'), exposition)
    assert unknown_labels(Query("r", "w", "sum by (reason) (akeeba_backup_runs_total)"), exposition)
    assert unknown_labels(Query("r", "w", "akeeba_backup_runs_total", "{{method}}"), exposition)


@pytest.mark.slow
def test_every_metric_the_dashboard_uses_is_exported(
    dashboard: dict[str, Any], exposition: Exposition
) -> None:
    """Each ``akeeba_*`` name in a query is a series of a live daemon's /metrics, each label a
    query matches on, groups by or prints is one its series carry."""
    queries = all_queries(dashboard)
    used = set().union(*(METRIC.findall(query.expr) for query in queries))
    assert len(used) > 20
    unknown = {query.where: unknown_metrics(query.expr, exposition) for query in queries}
    assert {where: names for where, names in unknown.items() if names} == {}
    # The fixture's runs made series of every metric used, so their labels are known.
    assert used - exposition.labels.keys() == set()
    bad_labels = {query.where: unknown_labels(query, exposition) for query in queries}
    assert {where: labels for where, labels in bad_labels.items() if labels} == {}
    for query, label in variable_selectors(dashboard):
        (metric,) = METRIC.findall(query.expr)
        assert label in exposition.labels[metric] | TARGET_LABELS, query.where


# --- provisioning ------------------------------------------------------------------------------


def test_datasource_provisioning_has_the_uid_alerts_refer_to() -> None:
    """One Prometheus data source with the stable uid ``akeeba-prometheus``."""
    document = yaml.safe_load(DATASOURCE_PROVISIONING.read_text(encoding="utf-8"))
    assert document["apiVersion"] == 1
    (source,) = document["datasources"]
    assert source["uid"] == DATASOURCE_UID
    assert source["type"] == "prometheus"
    assert source["access"] == "proxy"
    assert source["url"].startswith("http")


def test_dashboard_provider_reads_a_folder() -> None:
    """A file provider whose folder is where the README says to copy the JSON."""
    text = DASHBOARD_PROVISIONING.read_text(encoding="utf-8")
    document = yaml.safe_load(text)
    assert document["apiVersion"] == 1
    (provider,) = document["providers"]
    assert provider["type"] == "file"
    path = provider["options"]["path"]
    assert path.startswith("/")
    assert path in text.split("providers:")[0], "the header comment names the folder"
    assert DASHBOARD_PATH.name in text
