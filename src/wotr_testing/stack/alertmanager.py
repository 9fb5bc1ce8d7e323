"""Alertmanager from Debian's package: Prometheus's alerts routed to a webhook, loopback only.

Port 9095, because Kafka's controller holds Alertmanager's usual 9093. The webhook
receiver posts to 127.0.0.1:9096 (both shifted by `WOTR_STACK_PORT_OFFSET`); clustering
is off (`--cluster.listen-address=`), so nothing listens beyond the web port.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

from .paths import render_template
from .process import StackError
from .service import HOST, Service

__all__ = ["ALERTMANAGER_BIN", "ALERTMANAGER_PORT", "AMTOOL_BIN", "Alertmanager", "WEBHOOK_PORT"]

ALERTMANAGER_BIN = Path("/usr/bin/prometheus-alertmanager")
AMTOOL_BIN = Path("/usr/bin/amtool")
ALERTMANAGER_PORT = 9095
WEBHOOK_PORT = 9096
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never via a proxy


class Alertmanager(Service):
    name = "alertmanager"
    default_port = ALERTMANAGER_PORT
    marker = "alertmanager"
    start_timeout = 30.0
    # How long a new alert group waits for company, how often a changed group is
    # re-notified, and how often a group that still fires is repeated.
    group_wait = "10s"
    group_interval = "1m"
    repeat_interval = "4h"

    @property
    def url(self) -> str:
        return f"http://{self.endpoint}"

    @property
    def webhook_url(self) -> str:
        """Where the webhook receiver posts every notification."""
        return f"http://{HOST}:{WEBHOOK_PORT + self.paths.port_offset}/alerts"

    @property
    def config_file(self) -> Path:
        return self.paths.run / "alertmanager.yml"

    def exports(self) -> dict[str, str]:
        return {"ALERTMANAGER_URL": self.url}

    def apt_packages(self) -> list[str]:
        return [] if ALERTMANAGER_BIN.exists() else ["prometheus-alertmanager"]

    def render_config(self) -> str:
        return render_template("alertmanager.yml", webhook_url=self.webhook_url, group_wait=self.group_wait,
                               group_interval=self.group_interval, repeat_interval=self.repeat_interval)

    def prepare(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(self.render_config())

    def refresh(self) -> None:
        """A running Alertmanager takes a changed route or receiver without a restart."""
        self.reload_config(self.config_file, self.render_config(), f"{self.url}/-/reload")

    def command(self) -> list[str]:
        return [str(ALERTMANAGER_BIN), f"--config.file={self.config_file}", f"--storage.path={self.data_dir}",
                f"--web.listen-address={self.endpoint}", f"--web.external-url={self.url}",
                "--cluster.listen-address=", "--data.retention=120h"]

    def probe(self) -> None:
        with _NO_PROXY.open(f"{self.url}/-/ready", timeout=3) as response:
            if response.status != 200:
                raise StackError(f"alertmanager /-/ready answered {response.status}")

    def receivers(self) -> list[str]:
        """The receivers of the configuration the running Alertmanager has loaded."""
        with _NO_PROXY.open(f"{self.url}/api/v2/receivers", timeout=3) as response:
            return [receiver["name"] for receiver in json.load(response)]
