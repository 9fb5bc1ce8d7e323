"""Installing missing Debian packages without letting them start their own daemons.

Debian's `postgresql`, `prometheus` and `prometheus-alertmanager` packages start a default
server on install; the stack runs its own instances instead, so the install runs behind a
`policy-rc.d` that denies service starts, any daemon the install started anyway is stopped,
and Debian's Prometheus and Alertmanager units are disabled so they do not come up on all
interfaces after a reboot.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

from .process import StackError, run_logged, say

__all__ = ["apt_install"]

_POLICY = Path("/usr/sbin/policy-rc.d")
_DAEMONS = ("/usr/bin/prometheus", "/usr/bin/prometheus-node-exporter", "/usr/lib/postgresql/")


def _daemon_pids() -> dict[int, int]:
    """pid -> parent pid of every running prometheus/postgres process."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            exe = os.readlink(entry / "exe")
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if exe.startswith(_DAEMONS):
            found[int(entry.name)] = ppid
    return found


def apt_install(packages: list[str], log_file: Path) -> None:
    """Install `packages` with apt-get (root only); retried once after `apt-get update`."""
    if not packages:
        return
    names = " ".join(packages)
    if os.geteuid() != 0:
        raise StackError(f"missing Debian packages: {names}; install them with "
                         f"`sudo apt-get install -y --no-install-recommends {names}` and re-run")
    if not shutil.which("apt-get"):
        raise StackError(f"missing packages {names} and no apt-get here: install them with your package manager")
    say(f"installing Debian packages: {names}")
    before = _daemon_pids()
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages]
    created = False
    if not _POLICY.exists():
        _POLICY.write_text("#!/bin/sh\n# written by wotr stack during apt-get install; denies service starts\nexit 101\n")
        _POLICY.chmod(0o755)
        created = True
    try:
        try:
            run_logged(install, env=env, log_file=log_file, what="apt-get install")
        except StackError:
            run_logged(["apt-get", "update", "-q"], env=env, log_file=log_file, what="apt-get update")
            run_logged(install, env=env, log_file=log_file, what="apt-get install")
    finally:
        if created:
            _POLICY.unlink(missing_ok=True)
    for unit in ("prometheus", "prometheus-alertmanager"):  # would listen on all interfaces at the next boot
        if unit not in packages:
            continue
        for disable in (["systemctl", "disable", f"{unit}.service"], ["update-rc.d", unit, "disable"]):
            if shutil.which(disable[0]):
                subprocess.run(disable, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, check=False)
    after = _daemon_pids()
    started = [pid for pid, ppid in after.items() if pid not in before and ppid not in after]
    for pid in started:  # top-level daemons the install started (their children follow them)
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
