"""Load generators: wrk (compiled, closed-loop) for saturation, and the open-loop
fixed-rate generator (`bench.openloop`, its own process) for latency. Both run as child
processes to completion, so their CPU time is read from the reaped child's rusage."""

from __future__ import annotations

import json
import random
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from .common import PY, REPO, children_cpu

_PAGES = ["/", "/pricing", "/docs", "/blog", "/signup"]

_WRK_SCRIPT = """
local f = assert(io.open("%(body)s", "rb"))
wrk.method = "%(method)s"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
%(headers)s
if wrk.body == "" then wrk.method = "GET"; wrk.body = nil; wrk.headers["Content-Type"] = nil end

done = function(summary, latency, requests)
  io.write(string.format(
    'WRKJSON {"requests":%%d,"duration_us":%%d,"bytes":%%d,"connect_errors":%%d,"read_errors":%%d,' ..
    '"write_errors":%%d,"status_errors":%%d,"timeouts":%%d,"lat_mean_ms":%%.3f,"lat_p50_ms":%%.3f,' ..
    '"lat_p90_ms":%%.3f,"lat_p99_ms":%%.3f,"lat_max_ms":%%.3f}\\n',
    summary.requests, summary.duration, summary.bytes, summary.errors.connect, summary.errors.read,
    summary.errors.write, summary.errors.status, summary.errors.timeout, latency.mean / 1000,
    latency:percentile(50) / 1000, latency:percentile(90) / 1000, latency:percentile(99) / 1000,
    latency.max / 1000))
end
"""


def sample_event(seq: int, rng: random.Random) -> dict:
    now = datetime.now(UTC)
    return {
        "source": "bench",
        "type": rng.choice(["page_view", "click", "signup"]),
        "timestamp": (now - timedelta(milliseconds=rng.randrange(1000))).isoformat(),
        "payload": {"seq": seq, "page": rng.choice(_PAGES), "user": f"user-{rng.randrange(500)}"},
    }


def event_body() -> bytes:
    """One event without an id: the API gives every request a fresh one, so none is a duplicate."""
    return json.dumps(sample_event(0, random.Random(1)), separators=(",", ":")).encode()


def batch_body(size: int) -> bytes:
    rng = random.Random(size)
    return json.dumps([sample_event(i, rng) for i in range(size)], separators=(",", ":")).encode()


_PUT_PATHS = """
local paths = {}
for line in io.lines("%(paths)s") do paths[#paths + 1] = line end
local i = 0
request = function()
  i = i %% #paths + 1
  return wrk.format("PUT", paths[i], {["Content-Type"] = "application/octet-stream"}, wrk.body)
end
"""


def wrk(wrk_path: str, url: str, workdir: Path, *, body: bytes = b"", connections: int, duration: float,
        threads: int = 1, timeout: float = 30, put_paths: list[str] | None = None,
        headers: dict[str, str] | None = None) -> dict:
    """Run wrk for `duration` seconds; returns requests/s, errors, latency and wrk's own CPU.

    `put_paths`: PUT `body` to these paths (path and query of presigned URLs) in turn.
    `headers`: extra request headers (a write key, Content-Encoding).
    """
    name = f"wrk-{time.time_ns()}"
    body_path = workdir / f"{name}.body"
    body_path.write_bytes(body)
    script = workdir / f"{name}.lua"
    lua_headers = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in (headers or {}).items())
    text = _WRK_SCRIPT % {"body": str(body_path), "method": "POST", "headers": lua_headers}
    if put_paths:
        paths_file = workdir / f"{name}.paths"
        paths_file.write_text("\n".join(put_paths) + "\n")
        text += _PUT_PATHS % {"paths": str(paths_file)}
    script.write_text(text)
    cmd = [wrk_path, f"-t{threads}", f"-c{connections}", f"-d{max(1, round(duration))}s",
           "--timeout", f"{int(timeout)}s", "-s", str(script), url]
    cpu0, t0 = children_cpu(), time.monotonic()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + timeout + 30)
    wall, cpu = time.monotonic() - t0, children_cpu() - cpu0
    line = next((l for l in out.stdout.splitlines() if l.startswith("WRKJSON ")), None)
    if out.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stdout[-1500:]} {out.stderr[-1500:]}")
    r = json.loads(line[len("WRKJSON "):])
    seconds = r["duration_us"] / 1e6
    errors = r["connect_errors"] + r["read_errors"] + r["write_errors"] + r["status_errors"] + r["timeouts"]
    return {
        "connections": connections,
        "threads": threads,
        "duration_s": seconds,
        "requests": r["requests"],
        "requests_per_s": (r["requests"] - r["status_errors"]) / seconds,
        "errors": errors,
        "status_errors": r["status_errors"],
        "timeouts": r["timeouts"],
        "latency_ms": {"mean": r["lat_mean_ms"], "p50": r["lat_p50_ms"], "p90": r["lat_p90_ms"],
                       "p99": r["lat_p99_ms"], "max": r["lat_max_ms"]},
        "generator_cpu_cores": cpu / wall,
        "raw": out.stdout.strip()[-1200:],
    }


def openloop(url: str, workdir: Path, *, rate: float, duration: float, connections: int = 256,
             timeout: float = 10.0, method: str = "POST", headers: dict[str, str] | None = None) -> dict:
    """Run `bench.openloop` as a child process; returns its summary (ids included) and its CPU."""
    out_path = workdir / f"openloop-{time.time_ns()}.json"
    cmd = [PY, "-m", "bench.openloop", "--url", url, "--rate", str(rate), "--duration", str(duration),
           "--connections", str(connections), "--timeout", str(timeout), "--method", method, "--out", str(out_path)]
    for k, v in (headers or {}).items():
        cmd += ["--header", f"{k}: {v}"]
    cpu0, t0 = children_cpu(), time.monotonic()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + timeout + 60, cwd=REPO)
    wall, cpu = time.monotonic() - t0, children_cpu() - cpu0
    if out.returncode != 0:
        raise RuntimeError(f"open-loop generator failed ({out.returncode}): {out.stderr[-2000:]}")
    result = json.loads(out_path.read_text())
    result["generator_cpu_cores"] = cpu / wall  # includes its ~0.3 s interpreter start
    result["generator_cpu_s"] = cpu
    return result
