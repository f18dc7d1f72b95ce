"""Alerts end to end: a real Prometheus and Alertmanager watch the local pipeline while the embedding-api is down.

The rules, the thresholds and the Alertmanager routing are vecsync's own files, with three test-only changes
made to copies: the stage 1 backlog threshold is 50 instead of 1000, VecsyncBacklogHigh fires after 2 s instead of
5 minutes, and Alertmanager waits seconds instead of minutes and posts to a webhook receiver of this test. Every
Grafana panel's query must then return data from that Prometheus: that is how dashboards are checked here.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pymongo
import pytest
import requests
import yaml

from tests.integration.test_observability import dashboard_targets, grafana_to_promql
from tests.support import monitoring
from tests.support.monitoring import tool
from tests.support.servers import free_port, wait_for
from tests.support.stack import running_stack, stack_settings
from vecsync.redis_client import connect
from vecsync_local.stack import LocalStack, LocalStackSettings

ROOT = Path(__file__).resolve().parents[2]
BACKLOG_THRESHOLD = 50


class Webhook:
    """Alertmanager's receiver: keeps every notification it is sent."""

    def __init__(self) -> None:
        self.notifications: list[dict[str, Any]] = []
        received = self.notifications

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"

    def seen(self, alertname: str, status: str, **labels: str) -> bool:
        return any(
            alert["status"] == status
            and alert["labels"].get("alertname") == alertname
            and all(alert["labels"].get(k) == v for k, v in labels.items())
            for notification in self.notifications
            for alert in notification["alerts"]
        )


def rules_for_test(workdir: Path) -> Path:
    """Copies of the rule files with a low stage 1 threshold and a short VecsyncBacklogHigh window."""
    rules = workdir / "rules"
    shutil.copytree(ROOT / "prometheus" / "rules", rules)
    thresholds = rules / "thresholds.yml"
    text, count = re.subn(
        r"(expr: vector\()1000(\)\n\s+labels:\n\s+stage: embedder)",
        rf"\g<1>{BACKLOG_THRESHOLD}\g<2>",
        thresholds.read_text(),
    )
    assert count == 1, "the stage 1 backlog threshold moved; update this test"
    thresholds.write_text(text)
    alerts = rules / "vecsync.yml"
    text, count = re.subn(r"(- alert: VecsyncBacklogHigh\n(?:.*\n)*?\s+for: )5m", r"\g<1>2s", alerts.read_text())
    assert count == 1, "VecsyncBacklogHigh's for: window moved; update this test"
    alerts.write_text(text)
    return rules


def metrics_ports(settings: LocalStackSettings) -> dict[str, int]:
    """The /metrics port of each service of a local stack, by its Prometheus job name."""
    return {
        "producer": settings.producer_metrics_port,
        "embedder-worker": settings.embedder_metrics_port,
        "upserter": int(settings.upserter_url.rsplit(":", 1)[1]),
        "embedding-api": int(settings.embedding_url.rsplit(":", 1)[1]),
    }


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[LocalStack]:
    with running_stack(stack_settings(tmp_path / "data", embedding_backend="hash")) as running:
        yield running


@pytest.mark.slow
def test_backlog_alert_fires_and_resolves_and_every_panel_has_data(stack: LocalStack, tmp_path: Path) -> None:
    settings = stack.settings
    webhook = Webhook()

    alertmanager_config = yaml.safe_load((ROOT / "alertmanager" / "alertmanager.yml").read_text())
    alertmanager_config["route"].update(group_wait="1s", group_interval="1s", repeat_interval="1h")
    for receiver in alertmanager_config["receivers"]:
        for webhook_config in receiver.get("webhook_configs", []):
            webhook_config["url"] = webhook.url
    (tmp_path / "alertmanager.yml").write_text(yaml.safe_dump(alertmanager_config))
    targets = metrics_ports(settings)
    am_port, prom_port = free_port(), free_port()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules_for_test(tmp_path) / "*.yml")],
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{am_port}"]}]}]},
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]} for job, port in targets.items()
        ]
        + [{"job_name": "prometheus", "static_configs": [{"targets": [f"127.0.0.1:{prom_port}"]}]}],
    }
    with (
        monitoring.alertmanager(tmp_path / "am", tmp_path / "alertmanager.yml", am_port),
        monitoring.prometheus(tmp_path / "prometheus", config, prom_port) as url,
    ):
        _outage_fires_and_resolves_the_backlog_alert(stack, webhook, url)
        _every_panel_has_data(url)


def _outage_fires_and_resolves_the_backlog_alert(stack: LocalStack, webhook: Webhook, url: str) -> None:
    settings = stack.settings
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(settings.mongo_uri)
    collection = client[settings.mongo_database][settings.mongo_collection]
    try:
        wait_for(lambda: _query(url, "count(up == 1) == 5"), timeout=60, what="Prometheus scraping every service")
        collection.insert_many([{"_id": f"warm-{n}", "subject": f"warm-up {n}"} for n in range(20)])
        wait_for(lambda: _query(url, "vecsync_upserter_points_total > 0"), timeout=60, what="a first write")

        api = next(child for child in stack.servers if child.name == "embedding-api")
        api.paused = True
        api.stop()
        collection.insert_many([{"_id": f"doc-{n}", "subject": f"document {n}"} for n in range(3 * BACKLOG_THRESHOLD)])
        wait_for(
            lambda: webhook.seen("VecsyncBacklogHigh", "firing", stage="embedder", stream="raw_document_changes"),
            timeout=90,
            interval=0.5,
            what="the stage 1 backlog alert at the webhook",
        )
        api.paused = False  # the supervisor starts it again
        wait_for(
            lambda: webhook.seen("VecsyncBacklogHigh", "resolved", stage="embedder"),
            timeout=120,
            interval=0.5,
            what="the stage 1 backlog alert to resolve",
        )
        # The rarer series the dashboards draw: a dead letter and a payload-only write.
        redis_client = connect(settings.redis_url)
        redis_client.xadd("raw_document_changes", {"garbled": "entry"})
        redis_client.close()
        collection.update_one({"_id": "doc-1"}, {"$set": {"owner": "someone else"}})
        wait_for(lambda: _query(url, "vecsync_stream_dlq_length > 0"), timeout=60, what="the dead letter scraped")
        # And fresh embedding traffic, so that the restarted embedding-api's rates have samples to work on.
        for n in range(5):
            collection.insert_one({"_id": f"late-{n}", "subject": f"late document {n}"})
            wait_for(
                lambda: _query(url, "sum(rate(vecsync_embedding_requests_total[1m])) > 0"),
                timeout=60,
                what="embedding requests in the rates",
            )
    finally:
        client.close()


def _every_panel_has_data(url: str) -> None:
    empty = [
        f"{dashboard} / {panel}: {expr}"
        for dashboard, panel, expr in dashboard_targets()
        if not _query(url, grafana_to_promql(expr))
    ]
    assert empty == [], "dashboard queries without data:\n" + "\n".join(empty)


def _query(url: str, promql: str) -> bool:
    """Whether the instant query returns at least one sample."""
    answer = requests.get(f"{url}/api/v1/query", params={"query": promql}, timeout=10).json()
    assert answer["status"] == "success", f"{promql}: {answer.get('error')}"
    return bool(answer["data"]["result"])


def test_every_service_exposes_metrics_that_promtool_accepts(stack: LocalStack) -> None:
    settings = stack.settings
    ports = metrics_ports(settings)
    promtool = tool("promtool")
    for service, port in ports.items():
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, f"{service}: {result.stdout}{result.stderr}"
