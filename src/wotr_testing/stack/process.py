"""Detached processes tracked by pid files, and the small helpers around them.

A service is ours only while its pid file names a live process whose command line
still carries the service's marker, so a recycled pid is never mistaken for it.
"""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Mapping, Sequence

__all__ = [
    "StackError",
    "alive",
    "describe_exit",
    "find_process",
    "file_lock",
    "port_open",
    "read_pid",
    "run_logged",
    "say",
    "spawn",
    "tail",
    "terminate",
]


_ROTATE_BYTES = 20 * 1024 * 1024


class StackError(RuntimeError):
    """A stack operation failed; the message says which service and why."""


def say(message: str) -> None:
    """Progress for people, on stderr: stdout carries only the `export` lines."""
    sys.stderr.write(message + "\n")  # one write, so lines from parallel installs do not interleave
    sys.stderr.flush()


def read_pid(pid_file: Path) -> int | None:
    try:
        return int(pid_file.read_text().split()[0])
    except (FileNotFoundError, ValueError, IndexError):
        return None


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def alive(pid: int | None, marker: str | None = None) -> bool:
    """True when `pid` runs (not a zombie) and its command line contains `marker`."""
    if not pid:
        return False
    _reap(pid)
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    state = stat.rsplit(")", 1)[-1].split()[0]
    if state in {"Z", "X"}:
        return False
    return marker is None or marker in cmdline


def spawn(
    command: Sequence[str],
    *,
    log_file: Path,
    pid_file: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    user: str | None = None,
) -> subprocess.Popen[bytes]:
    """Start `command` in its own session with output appended to `log_file`."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    if log_file.exists() and log_file.stat().st_size > _ROTATE_BYTES:
        log_file.replace(log_file.with_name(log_file.name + ".1"))  # keep one previous log
    with open(log_file, "ab") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {' '.join(command)}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            list(command),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            user=user,
            group=user,
            start_new_session=True,
            close_fds=True,
        )
    pid_file.write_text(f"{proc.pid}\n")
    return proc


def find_process(command: Sequence[str]) -> int | None:
    """The pid of a live process whose argv is exactly `command`, if any."""
    wanted = "\0".join(command).encode() + b"\0"
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "cmdline").read_bytes() == wanted and alive(int(entry.name)):
                    return int(entry.name)
            except OSError:
                continue
    return None


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


def terminate(pid: int, marker: str, *, sig: int = signal.SIGTERM, grace: float = 30.0) -> None:
    """Send `sig`, wait up to `grace` seconds, then SIGKILL the process group."""
    if not alive(pid, marker):
        return
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not alive(pid, marker):
            return
        time.sleep(0.1)
    for target in (lambda: os.killpg(pid, signal.SIGKILL), lambda: os.kill(pid, signal.SIGKILL)):
        try:
            target()
        except (ProcessLookupError, PermissionError):
            pass
    deadline = time.monotonic() + 5
    while alive(pid, marker) and time.monotonic() < deadline:
        time.sleep(0.1)


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def tail(path: Path, lines: int = 40) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 256 * 1024))
            last = deque(handle.read().decode(errors="replace").splitlines(), maxlen=lines)
    except FileNotFoundError:
        return f"(no log at {path})"
    return "\n".join(last)


def run_logged(command: Sequence[str], *, log_file: Path, what: str, env: Mapping[str, str] | None = None,
               cwd: Path | None = None, user: str | None = None) -> None:
    """Run an install/setup step to completion; on failure raise with the log's tail."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {what}: {' '.join(command)}\n".encode())
        log.flush()
        try:
            code = subprocess.run(list(command), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                  env=dict(env) if env is not None else None, cwd=cwd, user=user, group=user,
                                  check=False).returncode
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                raise StackError(f"{what}: {command[0]} not found on PATH") from None
            raise
    if code != 0:
        raise StackError(f"{what} failed (exit {code}); last lines of {log_file}:\n{tail(log_file, 30)}")


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Serialise stack changes across processes (e.g. pytest-xdist workers)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
