"""A real Prometheus scrapes the real API, consumer and relay while events flow, and every
dashboard panel's query returns data.

The native stack's Prometheus scrapes the fixed loopback ports 8000 (API), 9464
(consumer) and 9465 (relay), so this test runs the three processes on those ports.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from confluent_kafka import Producer
from pipeline_harness import Pipeline, wait_until

DASHBOARDS = Path(__file__).resolve().parents[2] / "deployment" / "grafana" / "dashboards"


def panel_queries() -> list[tuple[str, str]]:
    out = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel["targets"]:
                out.append((f"{path.stem} / {panel['title']} / {target['refId']}", target["expr"]))
    return out


@pytest.fixture(scope="module")
def flowing(tmp_path_factory, s3_connection, kafka_connection, postgres_connection, prometheus_url):
    p = Pipeline(tmp_path_factory.mktemp("observability"), s3_connection, kafka_connection, postgres_connection,
                 api_port=8000, consumer_metrics_port=9464, relay_metrics_port=9465)
    try:
        p.start("serve")
        p.start("consume")
        p.start("relay")
        with httpx.Client(base_url=p.url, timeout=30) as client:
            for i in range(40):
                assert client.post("/ingest", json={"payload": {"n": i}}).status_code == 202
            client.post("/ingest", json={"payload": "not an object"})
            client.post("/ingest/batch", json=[{"payload": {"b": i}} for i in range(200)])
        producer = Producer({"bootstrap.servers": p.kafka.bootstrap})
        producer.produce(p.name, key=b"poison", value=b"not an event")
        producer.flush(10)
        p.wait_loaded(240)
        # The ETL is a batch job: the API reports its last run from the run history.
        etl = subprocess.run([sys.executable, "-m", "wotr_apps.cli", "etl"], env=p.env("etl"), cwd=p.workdir,
                             capture_output=True, text=True, timeout=600)
        assert etl.returncode == 0, etl.stdout[-2000:] + etl.stderr[-2000:]
        yield p, prometheus_url.rstrip("/")
    finally:
        p.stop_all()


def _query(base: str, expr: str) -> list:
    r = httpx.get(f"{base}/api/v1/query", params={"query": expr}, timeout=10)
    r.raise_for_status()
    return r.json()["data"]["result"]


def test_prometheus_scrapes_every_wotr_process(flowing):
    _, prometheus = flowing
    targets = wait_until(
        lambda: {t["labels"]["job"]: t["health"] for t in httpx.get(f"{prometheus}/api/v1/targets").json()["data"]["activeTargets"]
                 if t["labels"]["job"].startswith("wotr")} if all(
            t["health"] == "up" for t in httpx.get(f"{prometheus}/api/v1/targets").json()["data"]["activeTargets"]
            if t["labels"]["job"].startswith("wotr")) else None,
        60, "every wotr scrape target to be up", interval=1)
    assert targets == {"wotr-api": "up", "wotr-consumer": "up", "wotr-relay": "up"}


def test_every_dashboard_panel_returns_data(flowing):
    _, prometheus = flowing
    empty = {}
    for where, expr in panel_queries():
        try:
            wait_until(lambda: _query(prometheus, expr), 90, where, interval=2)
        except AssertionError:
            empty[where] = expr
    assert empty == {}


def test_the_native_prometheus_evaluates_the_alert_rules(prometheus_url):
    groups = httpx.get(f"{prometheus_url.rstrip('/')}/api/v1/rules", timeout=10).json()["data"]["groups"]
    loaded = {rule["name"] for group in groups for rule in group["rules"]}
    assert {"WotrIngestLatencyHigh", "WotrBusDown", "WotrStagesDiverging"} <= loaded
    assert all(rule["health"] in ("ok", "unknown") for group in groups for rule in group["rules"])
