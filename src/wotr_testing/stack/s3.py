"""An S3-compatible server (versitygw, posix backend) built once with `go install`."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from wotr_adapters.connections import S3Connection

from .process import StackError, run_logged, say
from .service import Service

__all__ = ["S3", "VERSITYGW_VERSION"]

VERSITYGW_VERSION = "v1.7.0"
VERSITYGW_MODULE = "github.com/versity/versitygw/cmd/versitygw"
_DEFAULTS = S3Connection()


def _xattr_supported(path: Path) -> bool:
    probe = "user.wotr-stack-probe"
    try:
        os.setxattr(path, probe, b"1")
        os.removexattr(path, probe)
    except OSError as exc:
        if exc.errno in {errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM, errno.EACCES}:
            return False
        raise
    return True


class S3(Service):
    name = "s3"
    default_port = int(_DEFAULTS.endpoint.rsplit(":", 1)[1])
    marker = "versitygw"
    start_timeout = 30.0

    @property
    def binary(self) -> Path:
        return self.paths.cache / "bin" / "versitygw"

    @property
    def _stamp(self) -> Path:
        return self.paths.cache / "bin" / ".versitygw-version"

    @property
    def objects_dir(self) -> Path:
        return self.data_dir / "objects"

    def exports(self) -> dict[str, str]:
        return {
            "MINIO_ENDPOINT": self.endpoint,
            "MINIO_ACCESS_KEY": _DEFAULTS.access_key,
            "MINIO_SECRET_KEY": _DEFAULTS.secret_key,
            "MINIO_BUCKET": _DEFAULTS.bucket,
        }

    def install(self) -> None:
        if self.binary.exists() and self._stamp.exists() and self._stamp.read_text().strip() == VERSITYGW_VERSION:
            return
        if not shutil.which("go"):
            raise StackError("s3: Go is needed once to build versitygw (install Go 1.24 or newer)")
        gopath = self.paths.cache / "go"
        env = dict(os.environ)
        env.update(GOBIN=str(self.binary.parent), GOPATH=str(gopath), GOMODCACHE=str(gopath / "pkg" / "mod"),
                   GOCACHE=str(gopath / "build"), GOFLAGS="-modcacherw", CGO_ENABLED="0")
        say(f"s3: building versitygw {VERSITYGW_VERSION} into {self.binary.parent} (takes a few minutes once)")
        run_logged(["go", "install", f"{VERSITYGW_MODULE}@{VERSITYGW_VERSION}"], env=env,
                   log_file=self.paths.log("install-s3"), what="s3: go install versitygw")
        self._stamp.write_text(VERSITYGW_VERSION + "\n")
        shutil.rmtree(gopath, ignore_errors=True)  # module and build caches: only the binary is kept

    def prepare(self) -> None:
        self.objects_dir.mkdir(parents=True, exist_ok=True)

    def command(self) -> list[str]:
        backend = ["posix"]
        if not _xattr_supported(self.objects_dir):
            sidecar = self.data_dir / "sidecar"
            sidecar.mkdir(parents=True, exist_ok=True)
            backend += ["--sidecar", str(sidecar)]
        return [str(self.binary), "--port", self.endpoint, "--quiet", "--keep-alive", *backend,
                str(self.objects_dir)]

    def spawn_env(self) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items()
               if not key.startswith(("VGW_", "ROOT_ACCESS", "ROOT_SECRET")) and key != "LOGFILE"}
        env.update(ROOT_ACCESS_KEY=_DEFAULTS.access_key, ROOT_SECRET_KEY=_DEFAULTS.secret_key,
                   VGW_REGION=_DEFAULTS.region)
        return env

    def _client(self):
        import urllib3
        from minio import Minio

        http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=2, read=5), retries=urllib3.Retry(total=0))
        return Minio(self.endpoint, access_key=_DEFAULTS.access_key, secret_key=_DEFAULTS.secret_key,
                     secure=False, region=_DEFAULTS.region, http_client=http)

    def probe(self) -> None:
        self._client().list_buckets()

    def after_ready(self) -> None:
        client = self._client()
        if not client.bucket_exists(_DEFAULTS.bucket):
            client.make_bucket(_DEFAULTS.bucket)
