"""Alerts reach a receiver: a real alert fires end to end after a service stops.

Nothing shared is stopped. `test_an_alert_fires_end_to_end_when_a_service_stops` runs its
own chain on free loopback ports: a tiny metrics server (the service), a Prometheus
scraping it every second with a rule file of this test (`up == 0` for 2 s), and an
Alertmanager built by the native stack's own service class and config template (group
wait 1 s) whose webhook receiver is an HTTP server in this test. Stopping the metrics
server must bring a `firing` notification to the webhook, starting it again a
`resolved` one, all within two minutes.

The other tests check the default native stack as `wotr stack up` leaves it: its
Prometheus sends to its Alertmanager, and that Alertmanager's webhook receiver posts to
the stack's webhook address (`http://127.0.0.1:9096/alerts`).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

import httpx
import pytest
import yaml

from wotr_testing.stack import Stack, StackError
from wotr_testing.stack.alertmanager import Alertmanager
from wotr_testing.stack.paths import StackPaths
from wotr_testing.stack.process import spawn, terminate
from wotr_testing.stack.prometheus import PROMETHEUS_BIN

HOST = "127.0.0.1"
ALERT = "WotrAlertingLiveTargetDown"
JOB = "alerting-live"
NO_PROXY = httpx.Client(trust_env=False, timeout=5)

# The "service": a metrics endpoint in its own process, so stopping it is a real stop.
METRICS_SERVER = r"""
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

class Metrics(BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"# TYPE wotr_alerting_live_probe gauge\nwotr_alerting_live_probe 1\n"
        self.send_response(200 if self.path == "/metrics" else 404)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

HTTPServer(("127.0.0.1", int(sys.argv[1])), Metrics).serve_forever()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_for(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (httpx.HTTPError, OSError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"waited {timeout:.0f}s for {what}; last: {last!r}")


class WebhookSink:
    """An HTTP server that keeps every JSON body POSTed to it (Alertmanager's webhook)."""

    def __init__(self, port: int) -> None:
        self.notifications: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with sink._lock:
                    sink.notifications.append({"path": self.path, **json.loads(body)})
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((HOST, port), Handler)
        self.url = f"http://{HOST}:{port}/alerts"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def received(self, status: str, **labels: str) -> list[dict[str, Any]]:
        """Notifications with `status` carrying an alert with all of `labels`."""
        with self._lock:
            return [n for n in self.notifications if n.get("status") == status and any(
                all(alert["labels"].get(k) == v for k, v in labels.items()) for alert in n.get("alerts", []))]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def stack() -> Stack:
    """The default native stack with its Prometheus and Alertmanager up (installs both when
    missing; starting what is not running adds to the stack, it stops nothing)."""
    stack = Stack()
    try:
        stack.up(["prometheus", "alertmanager"])
    except StackError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"native stack could not start prometheus/alertmanager: {exc}", pytrace=False)
        pytest.skip(f"native stack could not start prometheus/alertmanager: {exc}")
    return stack


class _PrivateAlertmanager(Alertmanager):
    """The stack's Alertmanager service on a port and webhook of this test, quick to notify."""

    group_wait = "1s"
    group_interval = "1s"
    repeat_interval = "1h"

    def __init__(self, paths: StackPaths, port: int, webhook_url: str) -> None:
        super().__init__(paths)
        self._port, self._webhook_url = port, webhook_url

    @property
    def port(self) -> int:
        return self._port

    @property
    def webhook_url(self) -> str:
        return self._webhook_url


def _start_metrics_server(port: int, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-c", METRICS_SERVER, str(port)], stdout=out, stderr=out,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    wait_for(lambda: NO_PROXY.get(f"http://{HOST}:{port}/metrics").status_code == 200, 20, "the metrics server")
    return proc


def _prometheus_config(workdir: Path, target: str, alertmanager: str, run: str) -> Path:
    rules = workdir / "rules.yml"
    rules.write_text(yaml.safe_dump({"groups": [{"name": JOB, "interval": "1s", "rules": [{
        "alert": ALERT,
        "expr": f'up{{job="{JOB}"}} == 0',
        "for": "2s",
        "labels": {"severity": "page", "run": run},
        "annotations": {"summary": "{{ $labels.instance }} stopped answering scrapes"},
    }]}]}))
    config = workdir / "prometheus.yml"
    config.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "scrape_timeout": "800ms", "evaluation_interval": "1s"},
        "rule_files": [str(rules)],
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]},
        "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": [target]}]}],
    }))
    return config


@pytest.mark.timeout(180)
def test_an_alert_fires_end_to_end_when_a_service_stops(stack, tmp_path):
    began = time.monotonic()
    run = uuid.uuid4().hex
    sink = WebhookSink(free_port())
    processes: list[subprocess.Popen[bytes]] = []
    alertmanager = _PrivateAlertmanager(StackPaths(tmp_path / "stack"), free_port(), sink.url)
    alertmanager.paths.ensure()
    try:
        # The service, an Alertmanager (the stack's class and template) and a Prometheus of this test.
        target_port = free_port()
        target = f"{HOST}:{target_port}"
        service = _start_metrics_server(target_port, tmp_path / "metrics.log")
        processes.append(service)

        alertmanager.prepare()
        assert alertmanager.config_file.read_text() == alertmanager.render_config()
        alertmanager.process = spawn(alertmanager.command(), log_file=alertmanager.log_file,
                                     pid_file=alertmanager.pid_file)
        alertmanager.wait_ready(30)
        assert alertmanager.receivers() == ["webhook"]

        prometheus_port = free_port()
        prometheus_url = f"http://{HOST}:{prometheus_port}"
        config = _prometheus_config(tmp_path, target, alertmanager.endpoint, run)
        with open(tmp_path / "prometheus.log", "ab") as log:
            prometheus = subprocess.Popen(
                [str(PROMETHEUS_BIN), f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                 f"--web.listen-address={HOST}:{prometheus_port}", f"--web.external-url={prometheus_url}"],
                stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
        processes.append(prometheus)

        def query(expr: str) -> list[dict[str, Any]]:
            return NO_PROXY.get(f"{prometheus_url}/api/v1/query", params={"query": expr}).json()["data"]["result"]

        wait_for(lambda: [r for r in query(f'up{{job="{JOB}"}}') if r["value"][1] == "1"], 30,
                 "Prometheus to scrape the service")
        wait_for(lambda: NO_PROXY.get(f"{prometheus_url}/api/v1/alertmanagers").json()["data"]["activeAlertmanagers"],
                 30, "Prometheus to know its Alertmanager")
        rules = NO_PROXY.get(f"{prometheus_url}/api/v1/rules").json()["data"]["groups"]
        assert [(r["name"], r["health"]) for g in rules for r in g["rules"]] == [(ALERT, "ok")]
        time.sleep(3)  # longer than `for`: a healthy service raises nothing
        assert sink.notifications == []

        # The service stops: the alert fires and reaches the webhook.
        stopped = time.monotonic()
        service.send_signal(signal.SIGTERM)
        service.wait(10)
        (firing, *_) = wait_for(lambda: sink.received("firing", alertname=ALERT, run=run), 60,
                                "a firing notification at the webhook")
        fired_after = time.monotonic() - stopped
        assert firing["path"] == "/alerts" and firing["receiver"] == "webhook"
        (alert,) = [a for a in firing["alerts"] if a["labels"].get("run") == run]
        assert alert["status"] == "firing"
        assert alert["labels"]["instance"] == target and alert["labels"]["job"] == JOB
        assert alert["labels"]["severity"] == "page"
        assert alert["annotations"]["summary"] == f"{target} stopped answering scrapes"
        assert alert["generatorURL"].startswith(f"{prometheus_url}/graph?")  # the Prometheus of this test
        # Alertmanager itself holds the alert as active.
        active = NO_PROXY.get(f"{alertmanager.url}/api/v2/alerts", params={"filter": f'run="{run}"'}).json()
        assert [a["status"]["state"] for a in active] == ["active"]

        # The service is back: the alert resolves and the webhook hears that too.
        processes.append(_start_metrics_server(target_port, tmp_path / "metrics.log"))
        wait_for(lambda: sink.received("resolved", alertname=ALERT, run=run), 60,
                 "a resolved notification at the webhook")
        elapsed = time.monotonic() - began
        assert fired_after < 30, f"the alert took {fired_after:.1f}s from the stop to the webhook"
        assert elapsed < 120, f"the whole chain took {elapsed:.1f}s"
    finally:
        for proc in reversed(processes):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
        pid = alertmanager.pid()
        if pid is not None:
            terminate(pid, alertmanager.marker, grace=10)
        sink.close()


def test_the_stack_prometheus_sends_to_the_stack_alertmanager(stack):
    prometheus, alertmanager = stack.services["prometheus"], stack.services["alertmanager"]
    assert alertmanager.healthy() == (True, "ok")
    loaded = NO_PROXY.get(f"{prometheus.url}/api/v1/status/config").json()["data"]["yaml"]
    assert yaml.safe_load(loaded)["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == [
        alertmanager.endpoint]
    wanted = f"{alertmanager.url}/api/v2/alerts"
    wait_for(lambda: wanted in [a["url"] for a in NO_PROXY.get(f"{prometheus.url}/api/v1/alertmanagers").json()
                                ["data"]["activeAlertmanagers"]], 30, f"{wanted} among Prometheus's Alertmanagers")


@pytest.mark.timeout(90)
def test_the_stack_alertmanager_posts_to_its_webhook(stack):
    """An alert given to the stack's Alertmanager comes out at the stack's webhook address."""
    alertmanager = stack.services["alertmanager"]
    webhook = alertmanager.webhook_url
    port = int(webhook.split(":")[2].split("/")[0])
    try:
        sink = WebhookSink(port)
    except OSError as exc:
        pytest.fail(f"the stack's webhook address {webhook} is taken ({exc}); nothing else should listen there")
    run = uuid.uuid4().hex
    # A name of its own: the stack groups by alert name, and a new group waits only group_wait
    # (10 s) where an existing one would wait for its next group_interval (1 min).
    alert = {"labels": {"alertname": f"WotrAlertingLiveProbe-{run[:12]}", "run": run, "severity": "info"},
             "annotations": {"summary": "posted by tests/integration/test_alerting_live.py"}}
    try:
        now = datetime.now(UTC)
        started = time.monotonic()
        answer = NO_PROXY.post(f"{alertmanager.url}/api/v2/alerts",
                               json=[{**alert, "startsAt": now.isoformat(), "endsAt": (now + timedelta(minutes=5)).isoformat()}])
        assert answer.status_code == 200, answer.text
        (notification, *_) = wait_for(lambda: sink.received("firing", run=run), 60, f"a notification at {webhook}")
        assert notification["path"] == "/alerts" and notification["receiver"] == "webhook"
        assert time.monotonic() - started < 30  # the stack's group_wait is 10 s
    finally:
        # Resolve it at once, so the stack keeps no active alert of this test.
        now = datetime.now(UTC).isoformat()
        NO_PROXY.post(f"{alertmanager.url}/api/v2/alerts", json=[{**alert, "startsAt": now, "endsAt": now}])
        sink.close()
