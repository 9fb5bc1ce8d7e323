"""The native stack as a whole: bring services up, stop them, report on them.

Every change runs under a file lock, so concurrent callers (e.g. pytest-xdist workers
each asking for the stack) serialise, and the second caller finds everything running.
"""

from __future__ import annotations

import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from .alertmanager import Alertmanager
from .apt import apt_install
from .kafka import Kafka
from .paths import StackPaths, default_home, port_offset
from .postgres import Postgres
from .process import StackError, file_lock, port_open, say, spawn, tail, terminate
from .prometheus import Prometheus
from .s3 import S3
from .service import HOST, Service

__all__ = ["SERVICE_NAMES", "ServiceStatus", "Stack"]

SERVICE_TYPES: tuple[type[Service], ...] = (Kafka, S3, Postgres, Prometheus, Alertmanager)
SERVICE_NAMES = tuple(cls.name for cls in SERVICE_TYPES)


@dataclass(frozen=True)
class ServiceStatus:
    """What `status` reports for one service."""

    name: str
    running: bool
    pid: int | None
    endpoint: str
    healthy: bool
    detail: str


class Stack:
    """Kafka, an S3 server, PostgreSQL, Prometheus and Alertmanager on 127.0.0.1, run natively.

    `Stack().stop("kafka")` / `Stack().start("kafka")` serve failure-injection tests.
    """

    def __init__(self, home: str | os.PathLike[str] | None = None) -> None:
        self.paths = StackPaths(Path(home).expanduser().resolve() if home else default_home(), port_offset())
        self.services: dict[str, Service] = {cls.name: cls(self.paths) for cls in SERVICE_TYPES}

    def _select(self, only: Iterable[str] | None) -> list[Service]:
        if not only:
            return list(self.services.values())
        wanted = list(dict.fromkeys(only))
        unknown = [name for name in wanted if name not in self.services]
        if unknown:
            raise StackError(f"unknown service {', '.join(unknown)}; known: {', '.join(SERVICE_NAMES)}")
        return [service for name, service in self.services.items() if name in wanted]

    def _lock(self):
        self.paths.ensure()
        return file_lock(self.paths.run / "stack.lock")

    # -- environment -----------------------------------------------------------------
    def env(self) -> dict[str, str]:
        """The variables wotr reads to reach every service of this stack."""
        merged: dict[str, str] = {}
        for service in self.services.values():
            merged.update(service.exports())
        return merged

    def _write_env(self) -> None:
        staging = self.paths.env_file.with_suffix(".partial")
        staging.write_text("".join(f"{key}={value}\n" for key, value in self.env().items()))
        staging.replace(self.paths.env_file)

    # -- up / start ------------------------------------------------------------------
    def up(self, only: Iterable[str] | None = None, *, timeout: float | None = None) -> dict[str, str]:
        """Install what is missing and start what is not running; wait until healthy."""
        selected = self._select(only)
        with self._lock():
            pending: list[Service] = []
            for service in selected:
                if service.pid() is not None or service.adopt() is not None:
                    ok, _ = service.healthy()
                    if not ok:  # ours and alive, maybe still starting: give it its time
                        service.wait_ready(timeout or service.start_timeout)
                    service.refresh()
                    say(f"{service.name}: running (pid {service.pid()}) on {service.endpoint}")
                    continue
                taken = [port for port in service.ports if port_open(HOST, port)]
                if taken:
                    raise StackError(f"{service.name}: 127.0.0.1:{taken[0]} is taken by a process this stack did not "
                                     f"start; stop it, or point wotr at it with the environment variables instead")
                pending.append(service)
            if pending:
                self._install(pending)
                for service in pending:
                    service.prepare()
                    service.process = spawn(service.command(), log_file=service.log_file,
                                            pid_file=service.pid_file, env=service.spawn_env(),
                                            cwd=service.spawn_cwd(), user=service.run_as())
                    say(f"{service.name}: starting on {service.endpoint} (log: {service.log_file})")
                for service in pending:
                    started = time.monotonic()
                    service.wait_ready(timeout or service.start_timeout)
                    say(f"{service.name}: healthy after {time.monotonic() - started:.1f}s (pid {service.pid()})")
            self._write_env()
        return self.env()

    def _install(self, services: list[Service]) -> None:
        packages = sorted({package for service in services for package in service.apt_packages()})
        jobs = [lambda: apt_install(packages, self.paths.log("install-apt"))] if packages else []
        jobs += [service.install for service in services]
        with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
            futures = [pool.submit(job) for job in jobs]
            errors = [future.exception() for future in futures if future.exception() is not None]
        if errors:
            raise StackError("\n".join(str(error) for error in errors))

    def start(self, *names: str, timeout: float | None = None) -> dict[str, str]:
        return self.up(names, timeout=timeout)

    # -- down / stop -----------------------------------------------------------------
    def down(self, only: Iterable[str] | None = None, *, wipe: bool = False) -> None:
        """Stop what this stack started (by pid file); `wipe` also deletes the data."""
        with self._lock():
            for service in reversed(self._select(only)):
                pid = service.pid() or service.adopt()
                if pid is not None:
                    say(f"{service.name}: stopping pid {pid}")
                    terminate(pid, service.marker, sig=service.stop_signal)
                service.pid_file.unlink(missing_ok=True)
                if wipe:
                    service.wipe()
                    say(f"{service.name}: data removed")
            if wipe and not only:
                shutil.rmtree(self.paths.data, ignore_errors=True)

    def stop(self, *names: str) -> None:
        self.down(names)

    def restart(self, *names: str, timeout: float | None = None) -> dict[str, str]:
        self.down(names)
        return self.up(names, timeout=timeout)

    # -- status / logs ---------------------------------------------------------------
    def status(self, only: Iterable[str] | None = None) -> list[ServiceStatus]:
        report = []
        for service in self._select(only):
            pid = service.pid()
            healthy, detail = service.healthy()
            if pid is None and healthy:
                detail = "answering, but not started by this stack"
            report.append(ServiceStatus(service.name, pid is not None, pid, service.endpoint, healthy, detail))
        return report

    def is_healthy(self, name: str) -> bool:
        return self.services[name].healthy()[0] if name in self.services else False

    def logs(self, name: str | None = None, lines: int = 40) -> str:
        chunks = []
        for service in self._select([name] if name else None):
            chunks.append(f"==> {service.log_file} <==\n{tail(service.log_file, lines)}")
        return "\n\n".join(chunks)
