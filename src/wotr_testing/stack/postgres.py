"""PostgreSQL 15 from Debian's packages, as our own cluster on 127.0.0.1 (not Debian's).

PostgreSQL refuses to run as root, so under root the cluster is initialised and run
as the `postgres` OS user. When that user cannot traverse the stack home (e.g. it
lies under a private /root), the cluster lives in a directory of its own under the
`postgres` user's home and `<stack home>/data/postgres` links to it.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import shutil
import signal
import stat
from pathlib import Path

from wotr_adapters.connections import PostgresConnection

from .process import StackError, alive, run_logged
from .service import Service

__all__ = ["PG_BIN", "Postgres"]

PG_BIN = Path("/usr/lib/postgresql/15/bin")
_DEFAULTS = PostgresConnection()
OS_USER = "postgres"


def _traversable_by(user: pwd.struct_passwd, path: Path) -> bool:
    groups = set(os.getgrouplist(user.pw_name, user.pw_gid))
    for directory in [path, *path.parents]:
        try:
            info = directory.stat()
        except FileNotFoundError:
            continue
        mode = info.st_mode
        if info.st_uid == user.pw_uid:
            ok = bool(mode & stat.S_IXUSR)
        elif info.st_gid in groups:
            ok = bool(mode & stat.S_IXGRP)
        else:
            ok = bool(mode & stat.S_IXOTH)
        if not ok:
            return False
    return True


class Postgres(Service):
    name = "postgres"
    default_port = _DEFAULTS.port
    marker = "bin/postgres"
    stop_signal = signal.SIGINT  # "fast" shutdown: does not wait for clients to leave
    start_timeout = 60.0

    def exports(self) -> dict[str, str]:
        return {
            "POSTGRES_HOST": _DEFAULTS.host,
            "POSTGRES_PORT": str(self.port),
            "POSTGRES_USER": _DEFAULTS.user,
            "POSTGRES_PASSWORD": _DEFAULTS.password,
            "POSTGRES_DB": _DEFAULTS.dbname,
        }

    def apt_packages(self) -> list[str]:
        return [] if (PG_BIN / "postgres").exists() and (PG_BIN / "initdb").exists() else ["postgresql"]

    def run_as(self) -> str | None:
        return OS_USER if os.geteuid() == 0 else None

    def _os_user(self) -> pwd.struct_passwd | None:
        name = self.run_as()
        if name is None:
            return None
        try:
            return pwd.getpwnam(name)
        except KeyError:
            raise StackError(f"postgres: the '{name}' OS user is missing (apt-get install postgresql)") from None

    @property
    def root(self) -> Path:
        """The real directory holding the cluster (resolves the link described above)."""
        return self.data_dir.resolve() if self.data_dir.is_symlink() else self.data_dir

    @property
    def cluster(self) -> Path:
        return self.root / "cluster"

    def _make_root(self, user: pwd.struct_passwd | None) -> None:
        if self.data_dir.exists():
            return
        if user is not None and not _traversable_by(user, self.paths.data):
            digest = hashlib.sha256(str(self.paths.home).encode()).hexdigest()[:10]
            real = Path(user.pw_dir) / f"wotr-stack-{digest}"
            real.mkdir(parents=True, exist_ok=True)
            os.chown(real, user.pw_uid, user.pw_gid)
            real.chmod(0o700)
            self.data_dir.symlink_to(real, target_is_directory=True)
            return
        self.data_dir.mkdir(parents=True)
        if user is not None:
            os.chown(self.data_dir, user.pw_uid, user.pw_gid)
        self.data_dir.chmod(0o700)

    def prepare(self) -> None:
        user = self._os_user()
        self._make_root(user)
        if (self.cluster / "PG_VERSION").exists():
            self._drop_stale_lock()
            return
        partial = self.root / "cluster.partial"
        shutil.rmtree(partial, ignore_errors=True)
        pwfile = self.root / "initdb.pw"
        pwfile.write_text(_DEFAULTS.password + "\n")
        if user is not None:
            os.chown(pwfile, user.pw_uid, user.pw_gid)
        pwfile.chmod(0o600)
        try:
            run_logged([str(PG_BIN / "initdb"), "-D", str(partial), "-U", _DEFAULTS.user, f"--pwfile={pwfile}",
                        "--auth=scram-sha-256", "--encoding=UTF8", "--no-locale"],
                       log_file=self.log_file, what="postgres: initdb", cwd=self.root, user=self.run_as())
        finally:
            pwfile.unlink(missing_ok=True)
        partial.rename(self.cluster)

    def _drop_stale_lock(self) -> None:
        """Remove a postmaster.pid left by a killed server whose pid now names another process.

        PostgreSQL refuses to start while that pid is alive, even when it is not PostgreSQL
        (e.g. after a reboot); the stack only starts it when nothing listens on its port.
        """
        lock = self.cluster / "postmaster.pid"
        try:
            pid = int(lock.read_text().split()[0])
        except (FileNotFoundError, ValueError, IndexError):
            return
        if not alive(pid, "postgres"):
            lock.unlink(missing_ok=True)

    def command(self) -> list[str]:
        return [str(PG_BIN / "postgres"), "-D", str(self.cluster),
                "-c", f"listen_addresses={_DEFAULTS.host}", "-c", f"port={self.port}",
                "-c", "unix_socket_directories=", "-c", "max_connections=200",
                "-c", "logging_collector=off"]

    def spawn_cwd(self) -> Path:
        return self.root

    def _connect(self, dbname: str):
        import psycopg

        return psycopg.connect(host=_DEFAULTS.host, port=self.port, user=_DEFAULTS.user,
                               password=_DEFAULTS.password, dbname=dbname, connect_timeout=3, autocommit=True)

    def probe(self) -> None:
        with self._connect(_DEFAULTS.dbname) as conn:
            if conn.execute("SELECT 1").fetchone() != (1,):
                raise StackError("postgres answered SELECT 1 with something else")

    def probe_starting(self) -> None:
        with self._connect("postgres") as conn:
            conn.execute("SELECT 1")

    def after_ready(self) -> None:
        with self._connect("postgres") as conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (_DEFAULTS.dbname,)).fetchone() is None:
                from psycopg import sql

                conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(
                    sql.Identifier(_DEFAULTS.dbname), sql.Identifier(_DEFAULTS.user)))
