"""wotr's processes on the local profile, in one namespace (topic, bucket, schema) of their own.

`wotr serve --api-only`, `wotr consume` (several, one group; each owns its in-process
ClickHouse engine directory `ch-<role>`) and `wotr relay` run as separate processes,
each in a session of its own so that a kill reaches exactly that process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from .util import free_port, wait_until

WOTR = [sys.executable, "-m", "wotr_apps.cli"]
PARTITIONS = 3


class ProcessDied(RuntimeError):
    pass


@dataclass
class Proc:
    role: str
    kind: str  # serve | consume | relay
    popen: subprocess.Popen
    metrics_port: int | None
    started: float = field(default_factory=time.monotonic)
    doomed: bool = False  # the harness is ending it: its death is no crash
    ready: bool = False  # it came up; only then can it crash

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None


@dataclass
class Pipeline:
    workdir: Path
    stack_env: dict[str, str]
    name: str
    api_port: int = field(default_factory=free_port)
    procs: dict[str, Proc] = field(default_factory=dict)
    exits: list[tuple[str, int | None, str]] = field(default_factory=list)  # (role, status, how it ended)
    extra_env: dict[str, str] = field(default_factory=dict)
    role_env: dict[str, dict[str, str]] = field(default_factory=dict)  # per-role overrides
    _locks: dict[str, threading.Lock] = field(default_factory=dict)  # one start of a role at a time
    _guard: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)

    # -- namespace ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def topic(self) -> str:
        return self.name

    @property
    def bucket(self) -> str:
        return self.name

    @property
    def schema(self) -> str:
        return self.name

    @property
    def group(self) -> str:
        return f"{self.name}-analytics"

    def engine_dir(self, role: str) -> Path:
        return self.workdir / f"ch-{role}"

    def engine_dirs(self) -> list[Path]:
        return sorted(p for p in self.workdir.glob("ch-consume-*") if p.is_dir())

    def env(self, role: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("WOTR_", "CLICKHOUSE_", "MINIO_", "KAFKA_", "POSTGRES_"))}
        env.update(self.stack_env)
        env.update({
            "WOTR_PROFILE": "local",
            "WOTR_PORT": str(self.api_port),
            "WOTR_RELAY_GRACE_SECONDS": "5",
            "WOTR_RELAY_INTERVAL_SECONDS": "0.5",
            "WOTR_CONSUMER_BATCH_SIZE": "500",
            "WOTR_CONSUMER_BATCH_SECONDS": "0.2",
            # no read-only SQL endpoint: its default port (8123) is shared with everyone else
            # on this machine, and two consumers would want it
            "WOTR_SQL_PORT": "0",
            "MINIO_BUCKET": self.bucket,
            "KAFKA_TOPIC": self.topic,
            "KAFKA_PARTITIONS": str(PARTITIONS),
            "KAFKA_GROUP": self.group,
            "POSTGRES_SCHEMA": self.schema,
            # The in-process engine locks its directory: each process has its own.
            "CLICKHOUSE_DSN": f"chdb://{self.engine_dir(role)}",
        })
        env.update(self.extra_env)
        env.update(self.role_env.get(role, {}))
        return env

    # -- processes ---------------------------------------------------------------------------

    def log_path(self, role: str) -> Path:
        return self.workdir / f"{role}.log"

    def log(self, role: str) -> str:
        path = self.log_path(role)
        return path.read_text(errors="replace") if path.exists() else ""

    def start(self, role: str, timeout: float = 90) -> Proc:
        """Start `serve`, `consume-<x>` or `relay-<x>`; wait until it is ready.

        One start of a role at a time (the supervisor and an injection may both restart
        it): a caller that finds it already running gets that process. A process that does
        not come up is reaped and forgotten before the error is raised.
        """
        with self._guard:
            lock = self._locks.setdefault(role, threading.Lock())
        with lock:
            existing = self.procs.get(role)
            if existing is not None and existing.ready and existing.alive() and not existing.doomed:
                return existing
            return self._start(role, timeout)

    def _start(self, role: str, timeout: float) -> Proc:
        kind = role.split("-", 1)[0]
        metrics = None
        if kind == "serve":
            args = ["serve", "--api-only"]
        else:
            metrics = free_port()
            ready = self.workdir / f"{role}.ready"
            ready.unlink(missing_ok=True)
            args = [kind, "--metrics-port", str(metrics), "--ready-file", str(ready)]
        with open(self.log_path(role), "ab") as log:
            log.write(f"\n=== {time.strftime('%H:%M:%S')} starting {role}\n".encode())
            log.flush()
            popen = subprocess.Popen([*WOTR, *args], env=self.env(role), cwd=self.workdir, stdout=log, stderr=log,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        proc = Proc(role, kind, popen, metrics, doomed=True)  # not a crash candidate until ready
        self.procs[role] = proc

        def ready_now() -> bool:
            if not proc.alive():
                raise ProcessDied(f"wotr {role} exited with {popen.returncode} while starting:\n{self.log(role)[-3000:]}")
            if kind == "serve":
                try:
                    return httpx.get(f"{self.url}/health", timeout=1).status_code == 200
                except httpx.HTTPError:
                    return False
            return (self.workdir / f"{role}.ready").exists()

        try:
            wait_until(ready_now, timeout, f"wotr {role} to be ready", interval=0.1)
        except BaseException:
            if proc.alive():
                os.killpg(proc.pid, signal.SIGKILL)
            popen.wait(30)
            if self.procs.get(role) is proc:
                self.procs.pop(role)
            raise
        proc.ready, proc.doomed = True, False
        return proc

    def kill(self, role: str, sig: int = signal.SIGKILL) -> None:
        """Send `sig` to the process (not waiting)."""
        proc = self.procs[role]
        proc.doomed = True
        try:
            os.kill(proc.pid, sig)
        except ProcessLookupError:
            pass

    def reap(self, role: str, timeout: float = 60) -> int | None:
        """Wait for the process to end; record and return its exit status."""
        proc = self.procs.pop(role)
        try:
            status = proc.popen.wait(timeout)
            how = "exited"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            status = proc.popen.wait(10)
            how = f"did not exit within {timeout:.0f}s: killed"
        self.exits.append((role, status, how))
        return status

    def stop(self, role: str, timeout: float = 60) -> int | None:
        """SIGTERM and wait: the graceful shutdown."""
        if role not in self.procs:
            return None
        self.kill(role, signal.SIGTERM)
        return self.reap(role, timeout)

    def kill9(self, role: str) -> int | None:
        self.kill(role, signal.SIGKILL)
        return self.reap(role, 30)

    def stop_all(self, timeout: float = 60) -> None:
        for role in sorted(self.procs, key=lambda r: (r.startswith("serve"), r)):
            try:
                self.stop(role, timeout)
            except Exception:  # noqa: BLE001 - best effort at teardown
                pass
        self.kill_strays()

    def kill_strays(self) -> list[int]:
        """SIGKILL any wotr process of this run still alive (its command line names this
        run's work directory, unique to it) that the harness lost track of."""
        mark = str(self.workdir).encode()
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if b"wotr_apps.cli" in cmdline and mark in cmdline:
                try:
                    os.kill(int(entry.name), signal.SIGKILL)
                    found.append(int(entry.name))
                except ProcessLookupError:
                    pass
        return found

    def crashed(self) -> list[tuple[str, int | None]]:
        """Processes that ended by themselves (a worker loop that died exits 70)."""
        out = []
        for role, proc in list(self.procs.items()):
            if proc.ready and not proc.doomed and not proc.alive():
                status = proc.popen.returncode
                if self.procs.pop(role, None) is None:
                    continue
                self.exits.append((role, status, "ended by itself"))
                out.append((role, status))
        return out

    def metric(self, role: str, name: str) -> float:
        """Sum of a metric's samples on a running consumer's or relay's /metrics (0 if unknown)."""
        proc = self.procs.get(role)
        if proc is None or proc.metrics_port is None:
            return 0.0
        try:
            text = httpx.get(f"http://127.0.0.1:{proc.metrics_port}/metrics", timeout=2).text
        except httpx.HTTPError:
            return 0.0
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith((name + "{", name + " ")))

    # -- ClickHouse engines (read with their consumer stopped) ------------------------------

    def engine_counts(self, engine: Path) -> tuple[dict[str, int], dict[str, int]]:
        """(rows per id without FINAL, rows per id with FINAL) of one engine directory."""
        code = (
            "import json, sys, clickhouse_connect\n"
            "c = clickhouse_connect.get_client(dsn=sys.argv[1])\n"
            "t = c.query(\"SELECT count() FROM system.tables WHERE database = 'wotr' AND name = 'ingested_data'\")\n"
            "if t.result_rows[0][0] == 0:\n"
            "    print(json.dumps([[], []])); sys.exit(0)\n"
            "raw = c.query('SELECT id, count() FROM wotr.ingested_data GROUP BY id').result_rows\n"
            "fin = c.query('SELECT id, count() FROM wotr.ingested_data FINAL GROUP BY id').result_rows\n"
            "print(json.dumps([raw, fin]))\n"
        )
        out = subprocess.run([sys.executable, "-c", code, f"chdb://{engine}"], capture_output=True, text=True,
                             cwd=self.workdir, timeout=300)
        if out.returncode != 0:
            raise RuntimeError(f"reading the engine {engine} failed:\n{out.stderr[-3000:]}")
        raw, fin = json.loads(out.stdout.strip().splitlines()[-1])
        return {i: int(n) for i, n in raw}, {i: int(n) for i, n in fin}
