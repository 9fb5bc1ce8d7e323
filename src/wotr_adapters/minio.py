"""S3 object store on the MinIO SDK: the raw archive on MinIO or any S3-compatible server.

The client's connection pool uses a short connect timeout and few retries, so an outage
surfaces as `Unavailable` within seconds instead of after the SDK's default five minutes.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from wotr_domain.codec import sha256_hex
from wotr_domain.errors import NotFound, Unavailable
from wotr_domain.models import ObjectRef

from .connections import S3Connection

if TYPE_CHECKING:
    from minio import Minio
    from minio.datatypes import Object

__all__ = ["MinioObjectStore", "minio_client"]

DEPENDENCY = "object store"
CHECKSUM_META = "sha256"  # stored as the user metadata header x-amz-meta-sha256
_MISSING = frozenset({"NoSuchKey", "NoSuchObject", "NotFound", "ResourceNotFound"})
T = TypeVar("T")


def minio_client(
    conn: S3Connection,
    *,
    connect_timeout: float = 2.0,
    read_timeout: float = 30.0,
    retries: int = 2,
    max_connections: int = 16,
) -> Minio:
    """A `Minio` client whose urllib3 pool gives up quickly when the server is down."""
    import certifi
    import urllib3
    from minio import Minio

    http = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=connect_timeout, read=read_timeout),
        maxsize=max_connections,
        cert_reqs="CERT_REQUIRED",
        ca_certs=certifi.where(),
        retries=urllib3.Retry(
            total=retries,
            connect=retries,
            read=1,
            backoff_factor=0.2,
            status_forcelist=[500, 502, 503, 504],
        ),
    )
    return Minio(
        conn.endpoint,
        access_key=conn.access_key,
        secret_key=conn.secret_key,
        secure=conn.secure,
        region=conn.region,  # a known region spares a bucket-location request per bucket
        http_client=http,
    )


def _driver_errors() -> tuple[type[BaseException], ...]:
    import urllib3
    from minio.error import MinioException

    return (MinioException, urllib3.exceptions.HTTPError, OSError)


class MinioObjectStore:
    """Objects in one bucket; `start()` creates the bucket when it is missing."""

    def __init__(self, client: Minio, bucket: str) -> None:
        self._client = client
        self.bucket = bucket
        self._errors = _driver_errors()

    def _call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run one SDK call; driver errors become `Unavailable`, missing keys `NotFound`."""
        from minio.error import S3Error

        try:
            return fn(*args, **kwargs)
        except S3Error as e:
            if e.code in _MISSING:
                raise NotFound(f"object {kwargs.get('object_name', '')!r} does not exist") from e
            raise Unavailable(DEPENDENCY, f"{what} failed: {e.code}: {e.message}") from e
        except self._errors as e:
            raise Unavailable(DEPENDENCY, f"{what} failed: {e}") from e

    def start(self) -> None:
        if not self._call("bucket lookup", self._client.bucket_exists, self.bucket):
            from minio.error import S3Error

            try:
                self._call("bucket creation", self._client.make_bucket, self.bucket)
            except Unavailable as e:
                # Another process may have created it in between: that is success.
                cause = e.__cause__
                if not (isinstance(cause, S3Error) and cause.code in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists")):
                    raise

    def close(self) -> None:
        self._client._http.clear()  # the SDK offers no public close; drop pooled sockets

    def check(self) -> None:
        if not self._call("health check", self._client.bucket_exists, self.bucket):
            raise Unavailable(DEPENDENCY, f"bucket {self.bucket!r} does not exist")

    def put(self, key: str, data: bytes, content_type: str = "application/json") -> ObjectRef:
        checksum = sha256_hex(data)
        self._call(
            f"put {key}",
            self._client.put_object,
            bucket_name=self.bucket,
            object_name=key,
            data=io.BytesIO(data),
            length=len(data),
            content_type=content_type,
            metadata={CHECKSUM_META: checksum},
        )
        return ObjectRef(key=key, size=len(data), checksum=checksum)

    def get(self, key: str) -> bytes:
        response = self._call(f"get {key}", self._client.get_object, bucket_name=self.bucket, object_name=key)
        try:
            return self._call(f"read {key}", response.read)
        finally:
            response.close()
            response.release_conn()

    def exists(self, key: str) -> bool:
        try:
            self._call(f"stat {key}", self._client.stat_object, bucket_name=self.bucket, object_name=key)
        except NotFound:
            return False
        return True

    def delete(self, key: str) -> None:
        # S3 answers a delete of a missing key with success, so no special case is needed.
        self._call(f"delete {key}", self._client.remove_object, bucket_name=self.bucket, object_name=key)

    def location(self, key: str = "") -> str:
        """`s3://<bucket>/<key>` (`s3://<bucket>` for the root); the endpoint and the
        credentials are the reader's to configure."""
        return f"s3://{self.bucket}/{key}" if key else f"s3://{self.bucket}"

    def list(self, prefix: str = "") -> Iterator[str]:
        """Keys under `prefix` in lexicographic order (S3 lists in UTF-8 byte order).

        The first page is fetched now, so an outage raises here; later pages are fetched
        as the iterator is consumed.
        """
        objects = self._client.list_objects(self.bucket, prefix=prefix or None, recursive=True)
        first = self._call(f"list {prefix}", next, objects, None)
        if first is None:
            return iter(())
        return self._rest(prefix, first.object_name, objects)

    def _rest(self, prefix: str, first: str, objects: Iterator[Object]) -> Iterator[str]:
        yield first
        while (item := self._call(f"list {prefix}", next, objects, None)) is not None:
            yield item.object_name
