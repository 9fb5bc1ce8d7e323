"""Prometheus from Debian's packages with our own config and storage, loopback only."""

from __future__ import annotations

import urllib.request
from pathlib import Path

from .alertmanager import ALERTMANAGER_PORT
from .paths import render_template
from .process import StackError
from .service import HOST, Service

__all__ = ["Prometheus", "SCRAPE_TARGETS"]

PROMETHEUS_BIN = Path("/usr/bin/prometheus")
# The wotr processes Prometheus scrapes: API, consumer and outbox relay.
# The alert rules of a source checkout (the compose deployment mounts the same files).
RULES_DIR = Path(__file__).resolve().parents[3] / "deployment" / "prometheus" / "rules"
SCRAPE_TARGETS = {"wotr-api": f"{HOST}:8000", "wotr-consumer": f"{HOST}:9464", "wotr-relay": f"{HOST}:9465"}
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never via a proxy


class Prometheus(Service):
    name = "prometheus"
    default_port = 9090
    marker = "prometheus"
    start_timeout = 60.0

    @property
    def url(self) -> str:
        return f"http://{self.endpoint}"

    @property
    def config_file(self) -> Path:
        return self.paths.run / "prometheus.yml"

    def exports(self) -> dict[str, str]:
        return {"PROMETHEUS_URL": self.url}

    def apt_packages(self) -> list[str]:
        return [] if PROMETHEUS_BIN.exists() else ["prometheus"]

    @property
    def alertmanager_target(self) -> str:
        """The stack's Alertmanager, where firing alerts are sent."""
        return f"{HOST}:{ALERTMANAGER_PORT + self.paths.port_offset}"

    def render_config(self) -> str:
        return render_template(
            "prometheus.yml", scrape_interval="5s", api_target=SCRAPE_TARGETS["wotr-api"],
            consumer_target=SCRAPE_TARGETS["wotr-consumer"], relay_target=SCRAPE_TARGETS["wotr-relay"],
            self_target=self.endpoint, alertmanager_target=self.alertmanager_target,
            rule_files=f'["{RULES_DIR}/*.yml"]' if RULES_DIR.is_dir() else "[]")

    def prepare(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(self.render_config())

    def refresh(self) -> None:
        """A running Prometheus whose configuration is older than this code's (e.g. from before
        the stack had an Alertmanager) gets the new one through its reload endpoint."""
        self.reload_config(self.config_file, self.render_config(), f"{self.url}/-/reload")

    def command(self) -> list[str]:
        return [str(PROMETHEUS_BIN), f"--config.file={self.config_file}",
                f"--storage.tsdb.path={self.data_dir}", f"--web.listen-address={self.endpoint}",
                "--storage.tsdb.retention.time=7d", "--web.enable-lifecycle"]

    def probe(self) -> None:
        with _NO_PROXY.open(f"{self.url}/-/ready", timeout=3) as response:
            if response.status != 200:
                raise StackError(f"prometheus /-/ready answered {response.status}")
