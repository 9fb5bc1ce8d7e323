"""The per-event CPU budget of `POST /ingest`, by stage, beside the bare framework's.

A server is saturated with wrk while /proc counts its CPU time and py-spy samples, 100
times a second, the thread holding the interpreter lock (`--gil`: Python running, one
thread at a time; a thread waiting on a socket is not counted). Each sample goes to one
stage by the frames on its stack (the first rule that matches: the write path's stages
before the generic ones), and is worth 10 ms of CPU. What the process spent outside the
lock (system calls while the lock is released, the Kafka and PostgreSQL client
libraries' C code and the Kafka client's own threads, uvloop's C parts) is the last row:
measured CPU minus the samples' time.

    python -m bench.budget --url http://127.0.0.1:PORT/ingest --pid PID [--seconds 15]
    python -m bench.budget --url http://127.0.0.1:PORT/ingest/batch --pid PID --batch 1000 --connections 4
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

# The write path's stages: a sample goes to the first of these with a needle anywhere on
# its stack (the publish step's mark is PostgreSQL work, but it is the publish's).
WRITE_STAGES: list[tuple[str, tuple[str, ...]]] = [
    ("publish + mark published (Kafka, PostgreSQL)", ("_publish (wotr_domain/services/ingest.py", "/kafka/bus.py",
                                                      "confluent_kafka")),
    ("archive (S3 PUT)", ("wotr_adapters/minio.py", "minio/", "urllib3/")),
    ("metadata (PostgreSQL insert)", ("wotr_adapters/postgres", "psycopg")),
    ("group commit (queue, hand-off to the flush threads)", ("group_commit.py", "concurrent/futures")),
    ("decode and validate", ("wotr_domain/codec.py", "_prepare (wotr_domain/services/ingest.py", "msgspec",
                             "wotr_domain/ids.py", "wotr_domain/archive.py", "parse_batch", "inflate",
                             "decode_request")),
    # The service's own Python between those steps (metadata rows, receipts, answers in
    # order): on every sample of a batch's worker thread, so after all the steps above.
    ("ingest service (rows, receipts, answers)", ("wotr_domain/services/ingest.py",)),
]
# The HTTP stack's stages: a sample goes to the stage of the innermost frame that has one
# of these needles (the framework's own middlewares wrap every handler: they are routing).
HTTP_STAGES: list[tuple[str, tuple[str, ...]]] = [
    ("middleware and telemetry (ours)", ("http_metrics.py", "opentelemetry", "wotr_apps/api/edge.py",
                                         "wotr_apps/api/auth.py", "wotr_apps/api/limits.py")),
    ("routing, handler and response (Litestar)", ("litestar/", "bench/bare.py", "wotr_apps/api/")),
    ("HTTP parsing and writing (uvicorn, httptools)", ("uvicorn/", "httptools", "wotr_apps/api/server.py")),
    ("event loop and threads (asyncio, uvloop)", ("asyncio/", "uvloop", "threading.py", "selectors.py")),
]
OTHER = "other"
OUTSIDE = "outside the interpreter lock (system calls, C libraries and their threads)"
_THREAD = re.compile(r"^(process \d+:.*?;)?thread \(.*?\): ?")


def stage_of(stack: str) -> str:
    for name, needles in WRITE_STAGES:
        if any(n in stack for n in needles):
            return name
    for frame in reversed(stack.split(";")):
        for name, needles in HTTP_STAGES:
            if any(n in frame for n in needles):
                return name
    return OTHER


def cpu_seconds(pid: int) -> float:
    """User + system CPU of `pid` and its threads (clock ticks of /proc/PID/stat)."""
    import os

    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(url: str, pid: int, seconds: float, body: bytes, connections: int, pyspy: str, per_request: int = 1) -> dict:
    work = Path(tempfile.mkdtemp(prefix="wotr-budget-"))
    (work / "body.json").write_bytes(body)
    (work / "post.lua").write_text(
        'wrk.method = "POST"\nlocal f = io.open("%s", "rb"); wrk.body = f:read("*a"); f:close()\n'
        'wrk.headers["Content-Type"] = "application/json"\n' % (work / "body.json"))
    profile = work / "profile.txt"
    wrk = subprocess.Popen(["wrk", "-t1", f"-c{connections}", f"-d{round(seconds + 2)}s", "-s", str(work / "post.lua"),
                            url], stdout=subprocess.PIPE, text=True)
    time.sleep(1.0)  # past the ramp-up
    before = cpu_seconds(pid)
    spy = subprocess.run([pyspy, "record", "--pid", str(pid), "--duration", str(round(seconds)), "--rate", "100",
                          "--format", "raw", "--output", str(profile), "--nonblocking", "--gil"],
                         capture_output=True, text=True)
    used = cpu_seconds(pid) - before
    out, _ = wrk.communicate(timeout=seconds + 60)
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    if spy.returncode != 0 or not profile.exists():
        raise SystemExit(f"py-spy failed: {spy.stderr[-500:]}")
    events = rate * seconds * per_request
    per_event_us = used / events * 1e6
    stages: Counter[str] = Counter()
    total = 0
    for line in profile.read_text(errors="replace").splitlines():
        stack, _, count = line.rstrip().rpartition(" ")
        if not count.isdigit():
            continue
        stages[stage_of(_THREAD.sub("", stack))] += int(count)
        total += int(count)
    budget = {name: n / 100 / events * 1e6 for name, n in stages.most_common()}
    budget[OUTSIDE] = max(0.0, per_event_us - sum(budget.values()))
    return {"requests_per_s": rate, "cpu_us_per_event": per_event_us, "samples": total, "stages_us": budget}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.budget", description=__doc__.splitlines()[0])
    p.add_argument("--url", required=True, help="the POST endpoint (127.0.0.1 only)")
    p.add_argument("--pid", type=int, required=True, help="the server's process id")
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--pyspy", default=str(Path(sys.executable).with_name("py-spy")))
    p.add_argument("--batch", type=int, default=0, metavar="N",
                   help="POST a JSON array of N events per request (to /ingest/batch)")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    if "127.0.0.1" not in args.url:
        p.error("the budget is measured on 127.0.0.1 only")
    from bench.openloop import event_body

    if args.batch:
        body = b"[" + b",".join(event_body(i) for i in range(args.batch)) + b"]"
    else:
        body = event_body(1)
    result = measure(args.url, args.pid, args.seconds, body, args.connections, args.pyspy, max(1, args.batch))
    print(f"{result['requests_per_s']:,.0f} requests/s, {result['cpu_us_per_event']:.0f} µs of server CPU per event")
    for name, us in result["stages_us"].items():
        print(f"  {us:6.1f} µs  {name}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
