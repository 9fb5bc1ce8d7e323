"""Where the native stack keeps its files: one root shared by every clone of the repo.

`WOTR_STACK_HOME` (default `~/.local/share/wotr-stack`) holds `cache/` (downloaded jars,
built binaries: reused by later runs), `data/` (service state), `logs/` and `run/`
(pid files, generated configs and the `env` file that other processes read).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from wotr_apps.settings import variable

__all__ = ["StackPaths", "default_home", "port_offset", "render_template"]


def port_offset() -> int:
    """`WOTR_STACK_PORT_OFFSET` shifts every port, e.g. to run a second stack beside the first."""
    raw = os.environ.get("WOTR_STACK_PORT_OFFSET", "").strip() or "0"
    try:
        offset = int(raw)
    except ValueError:
        raise ValueError(f"WOTR_STACK_PORT_OFFSET must be an integer, got {raw!r}") from None
    if not 0 <= offset < 50000:
        raise ValueError(f"WOTR_STACK_PORT_OFFSET must be between 0 and 49999, got {offset}")
    return offset


def default_home() -> Path:
    """`WOTR_STACK_HOME` (default `~/.local/share/wotr-stack`), as wotr's settings declare it."""
    return variable("WOTR_STACK_HOME").read(os.environ)


@dataclass(frozen=True)
class StackPaths:
    """The directory layout under one stack home."""

    home: Path
    port_offset: int = 0

    @property
    def cache(self) -> Path:
        return self.home / "cache"

    @property
    def data(self) -> Path:
        return self.home / "data"

    @property
    def logs(self) -> Path:
        return self.home / "logs"

    @property
    def run(self) -> Path:
        return self.home / "run"

    @property
    def env_file(self) -> Path:
        return self.run / "env"

    def ensure(self) -> None:
        for path in (self.cache, self.data, self.logs, self.run):
            path.mkdir(parents=True, exist_ok=True)

    def log(self, service: str) -> Path:
        return self.logs / f"{service}.log"

    def pid(self, service: str) -> Path:
        return self.run / f"{service}.pid"


def render_template(name: str, **values: object) -> str:
    """Read a template shipped in this package and fill its `{{key}}` placeholders."""
    text = resources.files(__package__).joinpath(name).read_text(encoding="utf-8")
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", str(value))
    if "{{" in text:
        raise ValueError(f"template {name} has unfilled placeholders")
    return text
