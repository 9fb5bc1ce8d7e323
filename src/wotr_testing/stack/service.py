"""What every native service provides to the stack: install, configure, run, probe."""

from __future__ import annotations

import shutil
from abc import ABC, abstractmethod
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Mapping

from .paths import StackPaths
from .process import StackError, alive, describe_exit, find_process, port_open, read_pid, say, tail

__all__ = ["HOST", "Service"]

HOST = "127.0.0.1"


class Service(ABC):
    """One server of the stack; subclasses fill in the hooks."""

    name: str = ""
    default_port: int = 0
    marker: str = ""  # a string in the process's command line that identifies it
    stop_signal: int = signal.SIGTERM
    start_timeout: float = 60.0

    def __init__(self, paths: StackPaths) -> None:
        self.paths = paths
        self.process: subprocess.Popen[bytes] | None = None  # set when this process started it

    # -- description -------------------------------------------------------------
    @property
    def port(self) -> int:
        return self.default_port + self.paths.port_offset

    @property
    def endpoint(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def ports(self) -> tuple[int, ...]:
        """Every port the service binds on 127.0.0.1."""
        return (self.port,)

    def exports(self) -> dict[str, str]:
        """The environment variables wotr reads to reach this service."""
        return {}

    @property
    def data_dir(self) -> Path:
        return self.paths.data / self.name

    @property
    def log_file(self) -> Path:
        return self.paths.log(self.name)

    @property
    def pid_file(self) -> Path:
        return self.paths.pid(self.name)

    # -- installation and set-up ---------------------------------------------------
    def apt_packages(self) -> list[str]:
        """Debian packages this service still lacks (installed together, once)."""
        return []

    def install(self) -> None:
        """Fetch or build what is missing into the cache; a no-op when cached."""

    def prepare(self) -> None:
        """Write configs and initialise data (format, initdb) before each start."""

    def refresh(self) -> None:
        """Bring a service that is already running up to date without restarting it
        (e.g. reload a configuration this code now renders differently); a no-op by default."""

    def reload_config(self, config_file: Path, wanted: str, reload_url: str) -> None:
        """Write `wanted` to `config_file` when it differs and POST `reload_url` (the
        Prometheus-style /-/reload), so a running server takes it without a restart."""
        try:
            if config_file.read_text() == wanted:
                return
        except FileNotFoundError:
            pass
        config_file.write_text(wanted)
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never via a proxy
        try:
            with opener.open(urllib.request.Request(reload_url, method="POST"), timeout=10) as response:
                response.read()
            say(f"{self.name}: configuration updated and reloaded ({config_file})")
        except OSError as exc:  # it keeps running with its old configuration
            say(f"{self.name}: configuration updated, but the reload failed ({exc}); "
                f"`wotr stack restart {self.name}` applies it")

    @abstractmethod
    def command(self) -> list[str]:
        """The service's command line."""

    def spawn_env(self) -> Mapping[str, str] | None:
        return None

    def run_as(self) -> str | None:
        return None

    def spawn_cwd(self) -> Path | None:
        return None

    # -- health --------------------------------------------------------------------
    @abstractmethod
    def probe(self) -> None:
        """Raise when the service does not answer a real request."""

    def probe_starting(self) -> None:
        """The probe used while waiting for a fresh start (defaults to `probe`)."""
        self.probe()

    def after_ready(self) -> None:
        """One-time objects the stack provides (database, bucket); idempotent."""

    def healthy(self) -> tuple[bool, str]:
        if not port_open(HOST, self.port):
            return False, f"nothing listening on {self.endpoint}"
        try:
            self.probe()
        except Exception as exc:  # any failure means unhealthy; the text says why
            return False, f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
        return True, "ok"

    # -- process state -------------------------------------------------------------
    def pid(self) -> int | None:
        pid = read_pid(self.pid_file)
        return pid if alive(pid, self.marker) else None

    def adopt(self) -> int | None:
        """Find a running process with exactly this service's command line (e.g. after its
        pid file was lost) and record it as ours."""
        try:
            pid = find_process(self.command())
        except (OSError, StackError):
            return None
        if pid is not None:
            self.pid_file.write_text(f"{pid}\n")
        return pid

    def wait_ready(self, timeout: float) -> None:
        """Poll the probe until it answers; fail naming the service with its log's tail."""
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        while True:
            # poll() first: it collects the exit status before anything else reaps the child
            pid = read_pid(self.pid_file)
            own = self.process is not None and self.process.pid == pid
            code = self.process.poll() if own else None
            if code is not None or (not own and self.pid() is None):
                how = describe_exit(code) if code is not None else "no longer running"
                raise StackError(f"{self.name} (pid {pid}) exited during start-up ({how}); last lines of "
                                 f"{self.log_file}:\n{tail(self.log_file, 20)}")
            if not port_open(HOST, self.port):
                last = f"nothing listening on {self.endpoint} yet"
            else:
                try:
                    self.probe_starting()
                    break
                except Exception as exc:  # keep polling until the deadline
                    last = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
            if time.monotonic() > deadline:
                raise StackError(f"{self.name} did not become healthy on {self.endpoint} within {timeout:.0f}s "
                                 f"(last probe: {last}); last lines of {self.log_file}:\n{tail(self.log_file, 20)}")
            time.sleep(0.5)
        self.after_ready()
        self.probe()

    def wipe(self) -> None:
        """Remove this service's data (the cache is kept)."""
        if self.data_dir.is_symlink():
            target = self.data_dir.resolve()
            self.data_dir.unlink()
            shutil.rmtree(target, ignore_errors=True)
        else:
            shutil.rmtree(self.data_dir, ignore_errors=True)

