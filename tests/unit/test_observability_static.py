"""Dashboards and alerts use only metrics the code really exports; alert rules pass promtool.

The exported names are read from a real `/metrics` exposition after driving every code
path that records a metric, so the check follows the code, not a hand-kept list.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from litestar.testing import TestClient

from wotr_apps.container import build_container
from wotr_apps.run_history import RunHistory, RunRecord
from wotr_apps.settings import Settings
from wotr_domain.models import BusMessage
from wotr_domain.services import OutboxRelay

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deployment" / "prometheus"
DASHBOARDS = ROOT / "deployment" / "grafana" / "dashboards"
BUILTIN_SERIES = {"up"}  # recorded by Prometheus itself for every scrape target

PROMQL_WORDS = {
    "sum", "min", "max", "avg", "count", "rate", "irate", "increase", "deriv", "delta", "histogram_quantile",
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset",
    "abs", "clamp_min", "clamp_max", "topk", "bottomk", "quantile", "le", "inf", "nan", "vector", "scalar",
    "time", "absent", "humanize", "humanizeDuration", "value", "labels",
}


def metric_names(expr: str) -> set[str]:
    """Series names in a PromQL expression: identifiers that are not functions,
    keywords, label matchers, grouping labels, numbers or durations."""
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges and subqueries
    expr = re.sub(r'"[^"]*"', "", expr)
    names = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", expr))
    return {n for n in names if n not in PROMQL_WORDS and not re.fullmatch(r"\d+[smhdwy]?", n)}


def test_metric_name_extraction_finds_series_and_ignores_promql():
    expr = 'histogram_quantile(0.95, sum by (le, job) (rate(foo_bucket{route=~"POST /x"}[5m]))) > 0.25 and bar_total'
    assert metric_names(expr) == {"foo_bucket", "bar_total"}


def dashboard_exprs() -> dict[str, str]:
    exprs = {}
    for path in sorted(DASHBOARDS.glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel["targets"]:
                exprs[f"{path.name} / {panel['title']} / {target['refId']}"] = target["expr"]
    return exprs


def alert_exprs() -> dict[str, str]:
    exprs = {}
    for path in sorted((PROMETHEUS / "rules").glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                exprs[f"{path.name} / {rule['alert']}"] = rule["expr"]
    return exprs


@pytest.fixture(scope="module")
def exported() -> set[str]:
    """Drive every metric-recording path on the memory profile and read /metrics."""
    container = build_container(Settings.from_env({"WOTR_PROFILE": "memory"}), with_workers=False)
    telemetry = container.telemetry()
    with TestClient(container.app()) as client:
        bus = container.event_bus()
        client.post("/ingest", json={"id": "e1", "payload": {"n": 1}})
        client.post("/ingest", json={"id": "e1", "payload": {"n": 1}})
        client.post("/ingest", json={"payload": 1})
        bus.outage = True
        client.post("/ingest", json={"id": "late", "payload": {}})
        client.post("/ingest", json={"id": "lost", "payload": {}})  # its object goes missing: a fault
        container.object_store().delete(container.metadata_repo().get("lost").object_key)
        bus.outage = False
        bus.publish([BusMessage(key="p", value=b"poison")])
        loader = container.analytics_loader()
        loader.run_once(timeout=0)
        telemetry.record_lag(loader.lag())
        relay = OutboxRelay(container.metadata_repo(), container.object_store(), bus,
                            grace=timedelta(0), observer=telemetry.relay)
        relay.run_once()
        history = RunHistory(container.object_store())
        history.record(RunRecord(run_id="01", started_at=datetime.now(UTC), status="succeeded", selection="all",
                                 rows_read=3, rows_written=2, rows_rejected=1, duration_seconds=4.5))
        telemetry.sample({"object_store": container.object_store(), "metadata_repo": container.metadata_repo(),
                          "event_bus": bus, "analytics_sink": container.analytics_sink()},
                         repo=container.metadata_repo(), etl_history=history)
        text = client.get("/metrics").text
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}


def test_dashboards_exist_and_have_queries():
    exprs = dashboard_exprs()
    assert {"wotr-api.json", "wotr-pipeline.json", "wotr-health.json"} <= {k.split(" / ")[0] for k in exprs}
    assert all(e.strip() for e in exprs.values())


@pytest.mark.parametrize("source", ["dashboards", "alerts"])
def test_every_metric_used_is_exported_by_the_code(source, exported):
    exprs = dashboard_exprs() if source == "dashboards" else alert_exprs()
    missing = {
        where: sorted(metric_names(expr) - exported - BUILTIN_SERIES)
        for where, expr in exprs.items()
        if metric_names(expr) - exported - BUILTIN_SERIES
    }
    assert missing == {}


def test_the_seed_dependency_gauges_are_exported(exported):
    assert {"postgres_status", "kafka_status", "minio_status", "clickhouse_status"} <= exported


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is missing: `wotr stack up` installs it (Debian package prometheus)")
    return path


def test_alert_rules_are_valid(promtool):
    result = subprocess.run([promtool, "check", "rules", *map(str, (PROMETHEUS / "rules").glob("*.yml"))],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rules_pass_their_unit_tests(promtool):
    tests = sorted((PROMETHEUS / "tests").glob("*.yml"))
    assert tests
    result = subprocess.run([promtool, "test", "rules", *map(str, tests)], capture_output=True, text=True, cwd=PROMETHEUS / "tests")
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_unit_test():
    tested = set(re.findall(r"alertname:\s*(\w+)", "".join(p.read_text() for p in (PROMETHEUS / "tests").glob("*.yml"))))
    assert {k.split(" / ")[1] for k in alert_exprs()} <= tested


def test_the_last_finished_etl_run_is_exported(exported):
    assert {"wotr_etl_last_run_rows", "wotr_etl_last_run_duration_seconds", "wotr_etl_last_run_success"} <= exported
