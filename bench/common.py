"""What every phase needs: the stack's endpoints, an isolated namespace, wotr processes on
free loopback ports, CPU accounting from /proc, and bounded waiting."""

from __future__ import annotations

import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
HOST = "127.0.0.1"  # every socket of the benchmark: loopback only
_T0 = time.monotonic()
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def say(message: str) -> None:
    print(f"[bench {time.monotonic() - _T0:6.1f}s] {message}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


# -- the service stack -------------------------------------------------------------------


def ensure_stack(timeout: float = 900) -> dict[str, str]:
    """`wotr stack up` (idempotent: a running, healthy stack is left alone); returns its exports."""
    out = subprocess.run([PY, "-m", "wotr_testing.stack", "up"], capture_output=True, text=True,
                         timeout=timeout, cwd=REPO)
    exports = dict(re.findall(r"^export (\w+)=(.*)$", out.stdout, re.M))
    if out.returncode != 0:
        # A service answering on its port but started by someone else (another checkout's
        # stack, a test) makes `up` refuse; the benchmark only needs the endpoints to answer.
        env = subprocess.run([PY, "-m", "wotr_testing.stack", "env"], capture_output=True, text=True,
                             timeout=60, cwd=REPO)
        exports = dict(re.findall(r"^export (\w+)=(.*)$", env.stdout, re.M))
        down = [name for name in ("KAFKA_BOOTSTRAP", "MINIO_ENDPOINT") if not _answers(exports.get(name, ""))]
        if not _answers(f"{exports.get('POSTGRES_HOST', HOST)}:{exports.get('POSTGRES_PORT', '')}"):
            down.append("POSTGRES")
        if down or not exports:
            raise RuntimeError(f"`wotr stack up` failed ({out.returncode}) and {down or 'the stack'} does not answer:\n"
                               f"{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
        say(f"`wotr stack up` refused ({(out.stderr or out.stdout).strip().splitlines()[-1][:200]}); "
            "every endpoint answers, going on")
    for name in ("KAFKA_BOOTSTRAP", "MINIO_ENDPOINT", "POSTGRES_PORT"):
        if name not in exports:
            raise RuntimeError(f"`wotr stack up` printed no {name}:\n{out.stdout[-2000:]}")
    for name, value in exports.items():
        if name.endswith(("_ENDPOINT", "_BOOTSTRAP", "_HOST")) and not value.split(":")[0] in (HOST, "localhost"):
            raise RuntimeError(f"{name}={value} is not on loopback; the benchmark only talks to 127.0.0.1")
    return exports


def _answers(endpoint: str, timeout: float = 2.0) -> bool:
    host, _, port = endpoint.rpartition(":")
    if host not in (HOST, "localhost") or not port.isdigit():
        return False
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return True
    except OSError:
        return False


def ensure_wrk() -> str:
    """The compiled HTTP load generator; installed from Debian when missing (idempotent)."""
    path = shutil.which("wrk")
    if path:
        return path
    say("installing wrk (apt-get install -y wrk)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for attempt in (1, 2):
        out = subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], capture_output=True, text=True, timeout=300, env=env)
        if out.returncode == 0 and shutil.which("wrk"):
            return shutil.which("wrk")  # type: ignore[return-value]
        if attempt == 1:
            subprocess.run(["apt-get", "update", "-q"], capture_output=True, timeout=300, env=env)
    raise RuntimeError(f"cannot install wrk: {out.stderr[-1000:]}")


def tool_version(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "n/a"
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[0] if text else "n/a"


# -- CPU accounting ----------------------------------------------------------------------


def _stat(pid: int) -> tuple[int, float] | None:
    """(ppid, cpu seconds) of a live process, from /proc/<pid>/stat."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2:].split()
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / _CLK_TCK


def tree_cpu(root: int) -> float:
    """CPU seconds (user+system) of a process and all its live descendants."""
    procs: dict[int, tuple[int, float]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _stat(int(entry))
            if st is not None:
                procs[int(entry)] = st
    wanted, total, frontier = {root}, 0.0, [root]
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in procs.items():
        children.setdefault(ppid, []).append(pid)
    while frontier:
        pid = frontier.pop()
        if pid in procs:
            total += procs[pid][1]
        for child in children.get(pid, []):
            if child not in wanted:
                wanted.add(child)
                frontier.append(child)
    return total


def system_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    return float(sum(values) - idle), float(sum(values))


def self_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


class CpuWindow:
    """CPU used during a block: by watched process trees, by this process, by reaped
    children (load generators run to completion), and by the whole machine."""

    def __init__(self, **watched: int) -> None:
        self.watched = watched
        self.result: dict[str, float] = {}

    def __enter__(self) -> CpuWindow:
        self._t = time.monotonic()
        self._trees = {k: tree_cpu(pid) for k, pid in self.watched.items()}
        self._self = self_cpu()
        self._children = children_cpu()
        self._sys = system_cpu()
        return self

    def __exit__(self, *exc: Any) -> None:
        wall = max(time.monotonic() - self._t, 1e-9)
        busy0, total0 = self._sys
        busy1, total1 = system_cpu()
        cores = os.cpu_count() or 1
        self.result = {
            "wall_s": wall,
            "machine_busy_cores": cores * (busy1 - busy0) / max(total1 - total0, 1.0),
            "bench_process_cores": (self_cpu() - self._self) / wall,
            "load_generator_cores": (children_cpu() - self._children) / wall,
        }
        for k, pid in self.watched.items():
            self.result[f"{k}_cores"] = (tree_cpu(pid) - self._trees[k]) / wall


# -- memory ----------------------------------------------------------------------------

PEAK_RSS: list[dict] = []  # one entry per stopped service: its processes' peak RSS


def _status_kb(pid: int) -> dict[str, int]:
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line.split(":")[0]] = int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return out


def tree_pids(root: int) -> list[int]:
    """`root` and its live descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _stat(int(entry))
            if st is not None:
                children.setdefault(st[0], []).append(int(entry))
    out, frontier = [], [root]
    while frontier:
        pid = frontier.pop()
        out.append(pid)
        frontier.extend(children.get(pid, []))
    return out


def _cmd(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"
    parts = raw.split()
    if not parts:
        return "?"
    exe = parts[0].rsplit("/", 1)[-1]
    if exe.startswith("python") and len(parts) > 2 and parts[1] == "-m":
        return " ".join([parts[2].replace("wotr_apps.cli", "wotr"), *parts[3:5]])[:80]
    if exe.startswith("python") and "resource_tracker" in raw:
        return "python (multiprocessing resource tracker)"
    if exe.startswith("python") and "multiprocessing" in raw:
        return "python (uvicorn worker, spawned)"
    return " ".join([exe, *parts[1:3]])[:80] if exe != "java" else "java (" + (parts[-1].rsplit("/", 1)[-1])[:60] + ")"


def rss_tree(root: int) -> list[dict]:
    """Peak (VmHWM) and current RSS of each process of a tree, in MiB."""
    out = []
    for pid in tree_pids(root):
        kb = _status_kb(pid)
        if kb:
            out.append({"pid": pid, "cmd": _cmd(pid), "peak_mib": kb.get("VmHWM", 0) / 1024,
                        "rss_mib": kb.get("VmRSS", 0) / 1024})
    return out


def tree_rss_mib(root: int) -> float:
    return sum(_status_kb(pid).get("VmRSS", 0) for pid in tree_pids(root)) / 1024


def raise_open_files() -> int:
    """Soft limit of open files up to the hard one (children inherit it): an overload run
    holds thousands of connections open at once, on both ends."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def load_average() -> tuple[float, float, float]:
    return os.getloadavg()


def busy_test_runs() -> list[str]:
    """Other people's test runs (pytest, Spark test jobs) on this machine right now."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "pytest" in cmd:
            out.append(f"{entry} {cmd[:120]}")
    return out


# -- the isolated namespace and the wotr processes -------------------------------------


@dataclass
class Namespace:
    """One topic, bucket and PostgreSQL schema of our own, so nobody else's data is touched."""

    stack: dict[str, str]
    workdir: Path
    name: str = field(default_factory=lambda: f"bench{uuid.uuid4().hex[:10]}")

    @property
    def topic(self) -> str:
        return self.name

    @property
    def drain_topic(self) -> str:
        return f"{self.name}-drain"

    @property
    def bucket(self) -> str:
        return self.name

    @property
    def schema(self) -> str:
        return self.name

    @property
    def group(self) -> str:
        return f"{self.name}-analytics"

    def s3(self):
        from wotr_apps.settings import Settings

        return Settings.from_env({**self.stack, "MINIO_BUCKET": self.bucket}, profile="local").s3

    def kafka(self, topic: str | None = None, group: str | None = None):
        from wotr_apps.settings import Settings

        return Settings.from_env({**self.stack, "KAFKA_TOPIC": topic or self.topic, "KAFKA_GROUP": group or self.group},
                                 profile="local").kafka

    def postgres(self):
        from wotr_apps.settings import Settings

        return Settings.from_env({**self.stack, "POSTGRES_SCHEMA": self.schema}, profile="local").postgres

    def env(self, role: str, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("WOTR_", "CLICKHOUSE_", "MINIO_", "KAFKA_", "POSTGRES_"))}
        env.update({k: v for k, v in self.stack.items() if k.startswith(("MINIO_", "KAFKA_", "POSTGRES_"))})
        env.update({
            "WOTR_PROFILE": "local",
            "MINIO_BUCKET": self.bucket,
            "KAFKA_TOPIC": self.topic,
            "KAFKA_GROUP": self.group,
            "POSTGRES_SCHEMA": self.schema,
            # One in-process ClickHouse engine directory per process (the engine locks it).
            "CLICKHOUSE_DSN": f"chdb://{self.workdir / f'ch-{role}'}",
            "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p),
        })
        env.update(extra)
        return env


class Service:
    """A wotr process (API or consumer) started on a free loopback port, stopped by SIGTERM."""

    def __init__(self, ns: Namespace, role: str, args: list[str], *, env: dict[str, str] | None = None,
                 port: int | None = None, ready: Callable[[], bool] | None = None) -> None:
        self.ns, self.role, self.args = ns, role, args
        self.port = port
        self.env = env or ns.env(role)
        self._ready = ready
        self.proc: subprocess.Popen | None = None
        self.log_path = ns.workdir / f"{role}.log"
        self.peak_rss: list[dict] = []
        self.sql_port: int | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 120) -> Service:
        return self.launch().wait_ready(timeout)

    def launch(self) -> Service:
        """Start the process without waiting (several services started at once)."""
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.args, env=self.env, cwd=self.ns.workdir, stdout=log, stderr=log,
                                     start_new_session=True)
        log.close()
        return self

    def wait_ready(self, timeout: float = 120) -> Service:
        """Wait until ready; a process that died or never got ready is stopped and the error raised."""
        try:
            wait_until(lambda: self._died() or (self._ready() if self._ready else True), timeout,
                       f"{self.role} to be ready")
            self._died()
        except Exception:
            self.stop(timeout=10)
            raise
        return self

    def _died(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"{self.role} exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
        return False

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 30) -> int | None:
        if self.proc is None:
            return None
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            self.peak_rss = rss_tree(proc.pid)  # VmHWM of each process of the tree, just before it stops
            PEAK_RSS.append({"role": self.role, "processes": self.peak_rss})
            proc.send_signal(signal.SIGTERM)
            try:
                return proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # its own session: the workers it forked
                return proc.wait(10)
        return proc.returncode


def http_ok(url: str) -> bool:
    import httpx

    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def api_service(ns: Namespace, *, workers: int = 1, role: str | None = None, **extra: str) -> Service:
    """The API on the local profile, with wotr's defaults (access log off, WOTR_INGEST_QUEUE_MAX
    ...) unless `extra` variables say otherwise: `wotr serve --api-only` itself for one
    worker, or `bench.server` (the same app and server settings, built per worker) for
    several. Its WOTR_SQL_PORT (where it would read a consumer's engine) is a free port of
    its own, so it never reads another checkout's consumer on the default 8123."""
    port = free_port()
    role = role or f"api{workers}"
    env = ns.env(role, WOTR_HOST=HOST, WOTR_PORT=str(port), WOTR_SQL_PORT=str(free_port()), **extra)
    if workers == 1:
        args = [PY, "-m", "wotr_apps.cli", "serve", "--api-only"]
    else:
        args = [PY, "-m", "bench.server", "--workers", str(workers), "--chdb-dir", str(ns.workdir / f"ch-{role}")]
    svc = Service(ns, role, args, env=env, port=port, ready=lambda: http_ok(f"http://{HOST}:{port}/health"))
    return svc


def bare_service(ns: Namespace, *, workers: int = 1) -> Service:
    """The bare framework (bench/bare.py): Litestar + msgspec, no I/O, the same server settings."""
    port = free_port()
    role = f"bare{workers}"
    env = ns.env(role, WOTR_HOST=HOST, WOTR_PORT=str(port))
    args = [PY, "-m", "bench.bare", "--workers", str(workers)]
    return Service(ns, role, args, env=env, port=port, ready=lambda: http_ok(f"http://{HOST}:{port}/health"))


def consumer_service(ns: Namespace, role: str = "consume", **extra: str) -> Service:
    """`wotr consume` with an engine directory (ch-<role>), a metrics port, a ready file and a
    WOTR_SQL_PORT of its own (the read-only SQL endpoint of its engine)."""
    metrics_port, sql_port = free_port(), free_port()
    ready_file = ns.workdir / f"{role}.ready"
    ready_file.unlink(missing_ok=True)
    args = [PY, "-m", "wotr_apps.cli", "consume", "--metrics-port", str(metrics_port), "--ready-file", str(ready_file)]
    svc = Service(ns, role, args, env=ns.env(role, WOTR_SQL_PORT=str(sql_port), **extra), port=metrics_port,
                  ready=ready_file.exists)
    svc.sql_port = sql_port
    return svc


def metric_sum(port: int, name: str) -> float:
    import httpx

    text = httpx.get(f"http://{HOST}:{port}/metrics", timeout=5).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith((name + "{", name + " ")))
