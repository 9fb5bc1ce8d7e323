"""The CLI helps: every mistake is one line naming the setting or the dependency, with a
non-zero exit; `wotr ingest` validates its arguments and reports what happened."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import httpx
import pytest
from litestar.testing import TestClient

from wotr_apps.container import build_container
from wotr_apps.settings import Settings


def wotr(*args: str, env: dict[str, str] | None = None, code: str | None = None, timeout: float = 60):
    base = {k: v for k, v in os.environ.items() if not k.startswith(("WOTR_", "MINIO_", "KAFKA_", "POSTGRES_", "CLICKHOUSE_"))}
    command = [sys.executable, "-c", code, *args] if code else [sys.executable, "-m", "wotr_apps.cli", *args]
    return subprocess.run(command, env=base | (env or {}), capture_output=True, text=True, timeout=timeout)


def one_line_error(out: subprocess.CompletedProcess) -> str:
    lines = [line for line in out.stderr.splitlines() if line.startswith("wotr")]
    assert lines, out.stderr[-2000:]
    assert "Traceback" not in out.stderr, out.stderr[-2000:]
    return lines[-1]


def test_stack_help_prints_the_stack_commands():
    out = wotr("stack", "--help")
    assert out.returncode == 0 and "up" in out.stdout and "status" in out.stdout


@pytest.mark.parametrize("args", [("-n", "-5"), ("-n", "0"), ("--batch", "-1"), ("-c", "x")])
def test_ingest_refuses_bad_arguments(args):
    out = wotr("ingest", *args)
    assert out.returncode == 2 and "is not a positive whole number" in out.stderr


def test_a_port_out_of_range_stops_the_server_with_one_line(tmp_path):
    out = wotr("serve", env={"WOTR_PORT": "99999", "WOTR_DATA_DIR": str(tmp_path)})
    assert out.returncode == 2
    assert "WOTR_PORT" in one_line_error(out)


def test_a_missing_driver_is_one_line_naming_the_extra():
    code = "import sys; sys.modules['minio'] = None; from wotr_apps.cli import main; sys.exit(main(sys.argv[1:]))"
    out = wotr("relay", "--metrics-port", "0", env={"WOTR_PROFILE": "local"}, code=code)
    assert out.returncode == 2
    assert "pip install 'wotr[minio]'" in one_line_error(out)


@pytest.mark.parametrize("command", [["serve", "--api-only"], ["relay", "--metrics-port", "0"]])
def test_an_unreachable_object_store_at_start_is_one_line(command, tmp_path):
    env = {"WOTR_PROFILE": "local", "MINIO_ENDPOINT": "127.0.0.1:1", "WOTR_PORT": str(_free_port()),
           "CLICKHOUSE_DSN": f"chdb://{tmp_path}/ch"}
    out = wotr(*command, env=env, timeout=120)
    assert out.returncode != 0
    assert "object store is unavailable" in one_line_error(out)


def test_query_validation_names_the_parameter_not_internals():
    container = build_container(Settings.from_env({}, profile="memory"), with_workers=False)
    with TestClient(container.app()) as client:
        r = client.get("/analytics/latest", params={"limit": 0})
    assert r.status_code == 400
    assert r.json()["field"] == "limit" and r.json()["detail"] == "limit: Expected `int` >= 1"


def test_ready_names_the_dependency_that_is_down_without_its_error_text():
    container = build_container(Settings.from_env({}, profile="memory"), with_workers=False)
    with TestClient(container.app()) as client:
        container.event_bus().outage = True
        r = client.get("/ready")
    assert r.status_code == 503
    assert r.json()["checks"]["event_bus"] == "down" and "simulated" not in r.text


def test_ingest_sends_concurrently_and_summarises(tmp_path):
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "wotr_apps.cli", "serve", "--api-only"],
                              env=os.environ | {"WOTR_PROFILE": "memory", "WOTR_PORT": str(port)},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        url = f"http://127.0.0.1:{port}"
        single = wotr("ingest", "--url", url, "-n", "50", "-c", "4")
        batch = wotr("ingest", "--url", url, "-n", "250", "--batch", "100")
    finally:
        server.terminate()
        server.wait(30)
    assert single.returncode == 0 and single.stdout.startswith("50 sent, 50 accepted, 0 duplicate, 0 rejected")
    assert batch.returncode == 0 and batch.stdout.startswith("250 sent, 250 accepted")
    down = wotr("ingest", "--url", "http://127.0.0.1:1", "-n", "2")
    assert down.returncode == 1 and "cannot reach" in down.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
