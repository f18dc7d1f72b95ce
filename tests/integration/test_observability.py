"""Alerts, Alertmanager and dashboards as code: checked with promtool and amtool, and against a real Prometheus and
Alertmanager started on free local ports.

The tools come from Debian's prometheus and prometheus-alertmanager packages. Without them these tests skip, except
in CI (the CI environment variable set), where a missing tool is a failure.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from tests.support import monitoring
from tests.support.monitoring import tool
from tests.support.servers import free_port, wait_for

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "prometheus"
RULE_FILES = sorted((PROMETHEUS_DIR / "rules").glob("*.yml"))
RULE_TESTS = sorted((PROMETHEUS_DIR / "tests").glob("*.yml"))
ALERTMANAGER_CONFIG = ROOT / "alertmanager" / "alertmanager.yml"
DASHBOARDS = sorted((ROOT / "grafana" / "dashboards").glob("*.json"))
DATASOURCES = ROOT / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
RUNBOOK = ROOT / "docs" / "runbook.md"
RUNBOOK_URL = "https://github.com/vecsync/vecsync/blob/main/docs/runbook.md#"
PRODUCT_CODE = [ROOT / "libs", ROOT / "services"]

# Values a Grafana server would put in place of its variables before sending a query.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h", "$sync": ".*"}


def run_tool(*args: str) -> str:
    result = subprocess.run([tool(args[0]), *args[1:]], capture_output=True, text=True, cwd=ROOT, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{output}"
    return output


def alert_rules() -> list[dict[str, Any]]:
    rules = []
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            rules += [rule for rule in group["rules"] if "alert" in rule]
    return rules


def rule_expressions() -> list[str]:
    return [
        rule["expr"]
        for path in RULE_FILES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
    ]


def dashboard_targets() -> Iterator[tuple[str, str, str]]:
    """(dashboard file, panel title, expression) for every query of every panel."""
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", []):
                yield path.name, panel["title"], target["expr"]


def grafana_to_promql(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"unknown Grafana variable in {expr!r}"
    return expr


def github_anchors(markdown: str) -> set[str]:
    """The anchors GitHub derives from a document's headings."""
    anchors = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*$", markdown, flags=re.MULTILINE):
        anchor = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchors.add(anchor)
    return anchors


# --- promtool and amtool -------------------------------------------------------------------------------------


def test_prometheus_config_is_valid() -> None:
    run_tool("promtool", "check", "config", str(PROMETHEUS_DIR / "prometheus.yml"))


def test_rules_are_valid() -> None:
    output = run_tool("promtool", "check", "rules", *map(str, RULE_FILES))
    assert "SUCCESS" in output


def test_rule_unit_tests_pass() -> None:
    assert RULE_TESTS, "no promtool unit tests under prometheus/tests/"
    output = run_tool("promtool", "test", "rules", *map(str, RULE_TESTS))
    assert "FAILED" not in output


def test_alertmanager_config_is_valid() -> None:
    run_tool("amtool", "check-config", str(ALERTMANAGER_CONFIG))


# --- the rules themselves ------------------------------------------------------------------------------------


def test_every_alert_has_severity_annotations_and_a_runbook_anchor() -> None:
    anchors = github_anchors(RUNBOOK.read_text())
    rules = alert_rules()
    assert rules
    for rule in rules:
        name = rule["alert"]
        assert rule.get("for"), f"{name} has no for: window"
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        annotations = rule["annotations"]
        assert {"summary", "description", "runbook_url"} <= annotations.keys(), name
        url = annotations["runbook_url"]
        assert url.startswith(RUNBOOK_URL), f"{name}: runbook_url {url} does not point into docs/runbook.md"
        anchor = url.removeprefix(RUNBOOK_URL)
        assert anchor == name.lower(), f"{name}: runbook anchor should be #{name.lower()}, is #{anchor}"
        assert anchor in anchors, f"{name}: docs/runbook.md has no heading for #{anchor}"


def test_every_alert_has_a_unit_test_that_sees_it_silent_and_firing() -> None:
    silent: set[str] = set()
    firing: set[str] = set()
    for path in RULE_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (firing if check.get("exp_alerts") else silent).add(check["alertname"])
    names = {rule["alert"] for rule in alert_rules()}
    assert names - firing == set(), "alerts without a test that sees them fire"
    assert names - silent == set(), "alerts without a test that sees them silent"


def _product_metric_names() -> set[str]:
    """Every metric name the product code defines, with the series names its type adds."""
    names: set[str] = set()
    for folder in PRODUCT_CODE:
        for path in folder.rglob("*.py"):
            names.update(re.findall(r"[\"'](vecsync_[a-z0-9_]+)[\"']", path.read_text()))
    series = set(names)
    for name in names:
        series.update({f"{name}_bucket", f"{name}_sum", f"{name}_count", f"{name}_info"})
    return series


def test_rules_and_dashboards_only_use_metrics_the_services_export() -> None:
    exported = _product_metric_names()
    expressions = rule_expressions() + [expr for _, _, expr in dashboard_targets()]
    # vecsync_ names that are not part of a recording rule name (vecsync:...).
    used = {name for expr in expressions for name in re.findall(r"(?<![\w:])(vecsync_[a-z0-9_]+)", expr)}
    assert used, "no vecsync metric found in the rules and dashboards"
    assert used - exported == set(), "metrics used by rules or dashboards that no service exports"


# --- Grafana -------------------------------------------------------------------------------------------------


def test_dashboards_have_stable_uids_and_use_the_provisioned_datasource() -> None:
    assert {path.name for path in DASHBOARDS} >= {"pipeline-overview.json", "embedding-api.json"}
    datasource_uid = yaml.safe_load(DATASOURCES.read_text())["datasources"][0]["uid"]
    uids = []
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        assert dashboard.get("uid"), f"{path.name} has no uid"
        uids.append(dashboard["uid"])
        ids = [panel["id"] for panel in dashboard["panels"]]
        assert len(ids) == len(set(ids)), f"{path.name} repeats a panel id"
        for panel in dashboard["panels"]:
            for target in panel.get("targets", []):
                assert target["datasource"]["uid"] == datasource_uid, f"{path.name}: {panel['title']}"
    assert len(uids) == len(set(uids))
    assert {"vecsync-pipeline", "vecsync-embedding-api"} <= set(uids)


# --- a real Prometheus and Alertmanager ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Prometheus on a free local port with vecsync's rule files, evaluating every second."""
    port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(path) for path in RULE_FILES],
        "scrape_configs": [{"job_name": "prometheus", "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}],
    }
    with monitoring.prometheus(tmp_path_factory.mktemp("prometheus"), config, port) as url:
        yield url


def test_prometheus_loads_and_evaluates_every_rule(prometheus: str) -> None:
    def all_evaluated() -> list[dict[str, Any]] | None:
        groups = requests.get(f"{prometheus}/api/v1/rules", timeout=5).json()["data"]["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        never = [rule for rule in rules if rule["lastEvaluation"].startswith("0001")]
        return None if never else rules

    wait_for(all_evaluated, timeout=30, what="every rule evaluated once")
    rules = all_evaluated()
    assert rules is not None
    assert len(rules) == sum(
        len(group["rules"]) for path in RULE_FILES for group in yaml.safe_load(path.read_text())["groups"]
    )
    broken = {rule["name"]: rule.get("lastError") for rule in rules if rule["health"] != "ok"}
    assert broken == {}
    thresholds = requests.get(
        f"{prometheus}/api/v1/query", params={"query": "vecsync:config:backlog_threshold"}, timeout=5
    ).json()["data"]["result"]
    assert {(r["metric"]["stage"], r["value"][1]) for r in thresholds} == {("embedder", "1000"), ("upserter", "500")}


@pytest.mark.parametrize(("dashboard", "panel", "expr"), list(dashboard_targets()))
def test_dashboard_query_runs_on_prometheus(prometheus: str, dashboard: str, panel: str, expr: str) -> None:
    answer = requests.get(f"{prometheus}/api/v1/query", params={"query": grafana_to_promql(expr)}, timeout=10).json()
    assert answer["status"] == "success", f"{dashboard} / {panel}: {answer.get('error')}"


@pytest.fixture(scope="module")
def alertmanager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """vecsync's Alertmanager configuration, unchanged, on a free local port."""
    with monitoring.alertmanager(tmp_path_factory.mktemp("alertmanager"), ALERTMANAGER_CONFIG) as url:
        yield url


def _alert(name: str, **labels: str) -> dict[str, Any]:
    now = datetime.now(UTC)
    return {
        "labels": {"alertname": name, **labels},
        "annotations": {"summary": name},
        "startsAt": now.isoformat(),
        "endsAt": (now + timedelta(minutes=10)).isoformat(),
    }


def test_service_down_inhibits_the_alerts_of_its_own_stage(alertmanager: str) -> None:
    alerts = [
        _alert("VecsyncServiceDown", severity="critical", stage="embedder", job="embedding-api"),
        _alert("VecsyncBacklogHigh", severity="warning", stage="embedder", stream="raw_document_changes"),
        _alert("VecsyncNoProgress", severity="critical", stage="embedder", stream="raw_document_changes"),
        _alert("VecsyncBacklogHigh", severity="warning", stage="upserter", stream="embedded_documents"),
        _alert("VecsyncDeadLetters", severity="warning", stage="embedder", stream="raw_document_changes"),
    ]
    requests.post(f"{alertmanager}/api/v2/alerts", json=alerts, timeout=5).raise_for_status()

    def states() -> dict[tuple[str, str], str] | None:
        received = requests.get(f"{alertmanager}/api/v2/alerts", timeout=5).json()
        found = {(a["labels"]["alertname"], a["labels"]["stage"]): a["status"]["state"] for a in received}
        return found if len(found) == len(alerts) else None

    wait_for(states, timeout=10, what="Alertmanager to hold every alert")
    assert states() == {
        ("VecsyncServiceDown", "embedder"): "active",
        ("VecsyncBacklogHigh", "embedder"): "suppressed",
        ("VecsyncNoProgress", "embedder"): "suppressed",
        # Another stage's backlog has another cause, and dead letters are never a symptom of an outage.
        ("VecsyncBacklogHigh", "upserter"): "active",
        ("VecsyncDeadLetters", "embedder"): "active",
    }
