"""The chaos run's own native service stack: Kafka, the S3 server and PostgreSQL.

It is a second instance of `wotr_testing.stack` with its own home (`WOTR_STACK_HOME`,
default ~/.local/share/wotr-chaos) and its own ports (`WOTR_STACK_PORT_OFFSET`, default
20000), sharing the default stack's download cache (a symlink to its `cache/`), so the
default stack (port offset 0) that other people's tests use is never stopped, killed
or restarted: every kill here goes to a pid read from THIS home's pid files, and the
constructor refuses the default home or offset 0.

The S3 server's data directory is a small tmpfs mount of its own, so the disk scenario
can fill that filesystem (and free it) without touching anyone else's disk.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import time
from pathlib import Path

from .util import say, wait_until

__all__ = ["ChaosStack", "DEFAULT_HOME", "DEFAULT_OFFSET"]

DEFAULT_HOME = Path("~/.local/share/wotr-chaos").expanduser()
DEFAULT_OFFSET = 20000
SERVICES = ("kafka", "s3", "postgres")
S3_TMPFS_SIZE = "512m"


def claim_slot(home: Path | None, offset: int | None, slots: int = 4):
    """An exclusive chaos stack for this run: (home, offset, lock handle).

    Several runs at once (two people's `make test` on one machine) each get their own
    slot: ~/.local/share/wotr-chaos with offset 20000, then wotr-chaos-2 with 21000, and
    so on; a slot is held by an flock on `<home>.lock` until this process exits. An
    explicit home or offset is that slot only, waited for when busy.
    """
    import fcntl

    if home is not None or offset is not None:
        candidates = [(Path(home or DEFAULT_HOME).expanduser(), offset if offset is not None else DEFAULT_OFFSET)]
    else:
        candidates = [(DEFAULT_HOME if k == 0 else DEFAULT_HOME.with_name(f"{DEFAULT_HOME.name}-{k + 1}"),
                       DEFAULT_OFFSET + 1000 * k) for k in range(slots)]
    for blocking in (False, True):
        for slot_home, slot_offset in candidates:
            slot_home.parent.mkdir(parents=True, exist_ok=True)
            handle = open(slot_home.with_name(slot_home.name + ".lock"), "a")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            except BlockingIOError:
                handle.close()
                continue
            return slot_home, slot_offset, handle
        say(f"every chaos stack slot is in use; waiting for {candidates[0][0]}")
        candidates = candidates[:1]
    raise RuntimeError("unreachable")


def umount_under(path: Path) -> None:
    """Unmount whatever a killed run left mounted below `path` (read-only engine binds)."""
    root = str(path.resolve())
    with open("/proc/self/mounts") as mounts:
        targets = [line.split()[1] for line in mounts if len(line.split()) > 1]
    for target in sorted((t for t in targets if t.startswith(root + "/")), key=len, reverse=True):
        subprocess.run(["umount", target], capture_output=True)


def _mounted(path: Path) -> bool:
    target = str(path.resolve())
    with open("/proc/self/mounts") as mounts:
        return any(line.split()[1] == target for line in mounts if len(line.split()) > 1)


def _umount(path: Path) -> None:
    for _ in range(20):
        if not _mounted(path):
            return
        out = subprocess.run(["umount", str(path)], capture_output=True, text=True)
        if out.returncode == 0:
            continue
        time.sleep(0.5)
    if _mounted(path):
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


class ChaosStack:
    """The stack instance the chaos run may break; never the default one."""

    def __init__(self, home: Path = DEFAULT_HOME, port_offset: int = DEFAULT_OFFSET) -> None:
        home = Path(home).expanduser().resolve()
        default = Path(os.path.expanduser("~/.local/share/wotr-stack")).resolve()
        configured = Path(os.environ.get("WOTR_STACK_HOME") or default).expanduser().resolve()
        if home in {default, configured}:
            raise SystemExit(f"chaos: refusing to use the default stack's home {home}; pass another --stack-home")
        if port_offset == 0:
            raise SystemExit("chaos: refusing port offset 0 (the default stack's ports); pass another --port-offset")
        self.home = home
        self.port_offset = port_offset
        self._default_cache = configured / "cache"
        # Read by wotr_testing.stack when a Stack is built (and by nothing else here).
        os.environ["WOTR_STACK_PORT_OFFSET"] = str(port_offset)
        from wotr_testing.stack import Stack

        self.home.mkdir(parents=True, exist_ok=True)
        self._share_cache()
        self.stack = Stack(self.home)
        assert self.stack.paths.port_offset == port_offset

    # -- set-up ------------------------------------------------------------------------

    def _share_cache(self) -> None:
        """Use the default stack's download cache (jars, the S3 server binary) when it exists."""
        cache = self.home / "cache"
        if cache.exists() or cache.is_symlink():
            return
        if self._default_cache.is_dir():
            cache.symlink_to(self._default_cache, target_is_directory=True)

    @property
    def s3_data(self) -> Path:
        return self.stack.services["s3"].data_dir

    def fresh(self) -> dict[str, str]:
        """Stop what this home runs, wipe its data, mount the S3 tmpfs, start all three."""
        self.stack.down(SERVICES, wipe=True)
        _umount(self.s3_data)
        self.stack.services["s3"].wipe()
        self.s3_data.mkdir(parents=True, exist_ok=True)
        out = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={S3_TMPFS_SIZE},mode=0755", "wotr-chaos-s3",
                              str(self.s3_data)], capture_output=True, text=True)
        if out.returncode != 0:
            say(f"stack: cannot mount a tmpfs for the S3 data ({out.stderr.strip()}); the disk scenario is skipped")
        return self.up()

    def up(self, names: tuple[str, ...] = SERVICES) -> dict[str, str]:
        env = self.stack.up(list(names))
        return {k: v for k, v in env.items() if k.startswith(("KAFKA_", "MINIO_", "POSTGRES_"))}

    def env(self) -> dict[str, str]:
        return {k: v for k, v in self.stack.env().items() if k.startswith(("KAFKA_", "MINIO_", "POSTGRES_"))}

    def s3_tmpfs(self) -> bool:
        return _mounted(self.s3_data)

    def teardown(self) -> None:
        """Stop this stack's services and unmount the tmpfs (data stays for a post-mortem,
        except the S3 tmpfs, which goes with its mount)."""
        try:
            self.stack.down(SERVICES)
        finally:
            _umount(self.s3_data)

    # -- faults --------------------------------------------------------------------------

    def pid(self, name: str) -> int | None:
        return self.stack.services[name].pid()

    def healthy(self, name: str) -> bool:
        return self.stack.is_healthy(name)

    def kill9(self, name: str) -> int:
        """SIGKILL the service's whole process group (PostgreSQL: the postmaster and every
        backend at once, like a power cut); returns the pid killed."""
        service = self.stack.services[name]
        pid = service.pid()
        if pid is None:
            raise RuntimeError(f"chaos stack: {name} is not running")
        try:
            if os.getpgid(pid) == pid:
                os.killpg(pid, signal.SIGKILL)
            else:
                os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        wait_until(lambda: service.pid() is None, 20, f"{name} to die")
        if service.process is not None:
            service.process.poll()  # reap it if this process started it
        # a multi-threaded server (the JVM) shows as a zombie before its last thread has
        # closed its sockets: wait until nothing listens on its ports any more
        from wotr_testing.stack.process import port_open

        wait_until(lambda: not any(port_open("127.0.0.1", port, 0.2) for port in service.ports), 30,
                   f"{name}'s ports to close")
        return pid

    def ensure_up(self) -> None:
        """Start whatever of this stack is not running (after a failed injection, say)."""
        down = [name for name in SERVICES if self.stack.services[name].pid() is None]
        if down:
            say(f"stack: starting {', '.join(down)} again")
            self.stack.up(down)

    def stop(self, name: str) -> None:
        """The graceful stop the stack uses (SIGTERM; PostgreSQL: fast shutdown)."""
        self.stack.down([name])

    def start(self, name: str) -> float:
        """Start a stopped or killed service; returns the seconds it took to be healthy."""
        began = time.monotonic()
        self.stack.up([name])
        return time.monotonic() - began

    # -- the disk --------------------------------------------------------------------------

    def fill_s3_disk(self) -> Path:
        """Fill the S3 server's tmpfs to the last byte; returns the filler to delete."""
        filler = self.s3_data / "chaos-filler"
        with open(filler, "wb", buffering=0) as handle:
            st = os.statvfs(self.s3_data)
            free = st.f_bavail * st.f_frsize
            if free > 0:
                try:
                    os.posix_fallocate(handle.fileno(), 0, free)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
            chunk = b"\0" * 4096
            while True:  # whatever fallocate left
                try:
                    handle.write(chunk)
                except OSError as exc:
                    if exc.errno == errno.ENOSPC:
                        break
                    raise
        return filler

    def free_s3_disk(self, filler: Path) -> None:
        filler.unlink(missing_ok=True)
