"""Where the time goes: py-spy samples a running process (the API, or this one while it
drains the topic), and the folded stacks are summarised by function and by library."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

# Library buckets, first match wins (matched against the frame's file path).
_BUCKETS = [
    ("wotr (ours)", ("/wotr_domain/", "/wotr_adapters/", "/wotr_apps/")),
    ("minio SDK + urllib3 (S3 PUT)", ("/minio/", "/urllib3/", "/certifi/")),
    ("psycopg (PostgreSQL)", ("/psycopg/", "/psycopg_pool/", "/psycopg_binary/")),
    ("confluent_kafka (Kafka)", ("/confluent_kafka/",)),
    ("clickhouse_connect / chdb", ("/clickhouse_connect/", "/chdb/")),
    ("opentelemetry", ("/opentelemetry/",)),
    ("litestar", ("/litestar/",)),
    ("uvicorn / h11 / httptools", ("/uvicorn/", "/h11/", "/httptools/")),
    ("anyio / asyncio / threads", ("/anyio/", "/asyncio/", "threading.py", "/concurrent/", "/uvloop/")),
    ("msgspec", ("/msgspec/",)),
    ("logging", ("/logging/",)),
]
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>.*?)(?::(?P<line>\d+))?\)$")


def pyspy_path() -> str | None:
    candidate = Path(sys.executable).parent / "py-spy"
    return str(candidate) if candidate.exists() else shutil.which("py-spy")


def record(pid: int, seconds: float, out: Path, *, rate: int = 97, subprocesses: bool = True) -> subprocess.Popen | None:
    """Start sampling `pid` for `seconds` in the background; folded stacks go to `out`.

    `--gil`: only the thread holding the GIL is sampled, so the profile shows where the
    interpreter's CPU goes (the bound of a Python process), not threads waiting on I/O.
    """
    exe = pyspy_path()
    if exe is None:
        return None
    cmd = [exe, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", str(rate),
           "--format", "raw", "--output", str(out), "--nonblocking", "--gil"]
    if subprocesses:
        cmd.append("--subprocesses")
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _bucket(path: str) -> str:
    path = path if path.startswith("/") else "/" + path  # py-spy shortens site-packages paths
    for name, needles in _BUCKETS:
        if any(n in path for n in needles):
            return name
    return "other (stdlib, C code)"


def _parse(line: str) -> tuple[list[tuple[str, str]], int] | None:
    stack, _, count = line.rstrip().rpartition(" ")
    if not stack or not count.isdigit():
        return None
    frames = []
    for raw in stack.split(";"):
        m = _FRAME.match(raw)
        if m:
            frames.append((m["func"], m["file"]))
        else:
            frames.append((raw, ""))
    return frames, int(count)


def summarize(folded: Path, top: int = 12) -> dict:
    """Self time by function and by library, and inclusive time of wotr's own functions."""
    if not folded.exists():
        return {"error": f"no profile written to {folded}"}
    total = 0
    self_fn: Counter = Counter()
    self_lib: Counter = Counter()
    incl_ours: Counter = Counter()
    incl_lib: Counter = Counter()
    for line in folded.read_text(errors="replace").splitlines():
        parsed = _parse(line)
        if parsed is None:
            continue
        frames, count = parsed
        frames = [f for f in frames if not f[0].startswith(("process ", "thread "))]
        if not frames:
            continue
        total += count
        func, path = frames[-1]
        self_fn[f"{func} ({_short(path)})"] += count
        # Attribute a sample to the innermost library frame that is not plain stdlib.
        lib = next((b for b in (_bucket(p) for _, p in reversed(frames)) if not b.startswith("other")), "other (stdlib, C code)")
        self_lib[lib] += count
        seen_ours, seen_libs = set(), set()
        for f, p in frames:
            if p.startswith("wotr_") or "/wotr_" in p:
                seen_ours.add(f"{f} ({_short(p)})")
            seen_libs.add(_bucket(p))
        for key in seen_ours:
            incl_ours[key] += count
        for key in seen_libs:
            incl_lib[key] += count

    def share(c: Counter) -> list[tuple[str, float]]:
        return [(k, v / total) for k, v in c.most_common(top)] if total else []

    return {"samples": total, "self_by_library": share(self_lib), "self_by_function": share(self_fn),
            "inclusive_ours": share(incl_ours), "inclusive_by_library": share(incl_lib)}


def _short(path: str) -> str:
    for marker in ("site-packages/", "/src/", "/lib/python3"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path
