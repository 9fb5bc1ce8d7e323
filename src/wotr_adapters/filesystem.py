"""Filesystem object store for the embedded profile: keys map to files under a root.

Writes are atomic and durable: temporary file, fsync, rename, then fsync of every
directory the write created or changed, so after a crash or a power loss an object is
either whole at its key or absent, and a `put` that returned is never undone.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from wotr_domain.codec import sha256_hex
from wotr_domain.errors import InvalidEvent, NotFound, Unavailable
from wotr_domain.models import ObjectRef

__all__ = ["FilesystemObjectStore"]


class FilesystemObjectStore:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).resolve()

    def _path(self, key: str) -> Path:
        if not key or key.startswith("/") or any(part in ("", ".", "..") for part in key.split("/")):
            raise InvalidEvent(f"object key {key!r} is not a relative path of plain segments", field="key")
        return self.root / key

    def start(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise Unavailable("object store", f"cannot create {self.root}: {e}") from e

    def close(self) -> None:
        pass

    def check(self) -> None:
        if not os.access(self.root, os.W_OK):
            raise Unavailable("object store", f"{self.root} is not writable")

    def put(self, key: str, data: bytes, content_type: str = "application/json") -> ObjectRef:
        path = self._path(key)
        try:
            self._make_dirs(path.parent)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            _fsync_dir(path.parent)  # the rename is durable only once its directory is
        except OSError as e:
            raise Unavailable("object store", f"cannot write {key}: {e}") from e
        return ObjectRef(key=key, size=len(data), checksum=sha256_hex(data))

    def _make_dirs(self, directory: Path) -> None:
        """Create `directory` and its missing parents, each made durable in its parent."""
        if directory.is_dir():
            return
        missing = []
        while not directory.is_dir():
            missing.append(directory)
            directory = directory.parent
        for d in reversed(missing):
            try:
                d.mkdir()
            except FileExistsError:  # a concurrent put made it
                pass
            _fsync_dir(d.parent)

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise NotFound(f"object {key!r} does not exist") from None
        except IsADirectoryError:
            raise NotFound(f"object {key!r} does not exist") from None
        except OSError as e:
            raise Unavailable("object store", f"cannot read {key}: {e}") from e

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink(missing_ok=True)
        except OSError as e:
            if e.errno != errno.ENOENT:
                raise Unavailable("object store", f"cannot delete {key}: {e}") from e

    def location(self, key: str = "") -> str:
        """`file:///<root>/<key>`, the path as it is: Hadoop and pyarrow take it without
        percent-decoding, so a space stays a space (unlike `Path.as_uri()`)."""
        if not key:
            return f"file://{self.root}"
        path = self._path(key.removesuffix("/"))
        return f"file://{path}" + ("/" if key.endswith("/") else "")

    def list(self, prefix: str = "") -> Iterator[str]:
        keys = []
        for dirpath, _dirs, files in os.walk(self.root):
            for name in files:
                if name.startswith(".tmp-"):
                    continue
                key = Path(dirpath, name).relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    keys.append(key)
        return iter(sorted(keys))


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
