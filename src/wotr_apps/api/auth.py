"""Write keys at the API edge: the guard of the ingest endpoints.

Off by default (`WOTR_REQUIRE_WRITE_KEY`): then the guard lets every request through and
stamps nothing. On, a request to an ingest endpoint needs a valid, unrevoked key, sent
the ways analytics SDKs send one:

- `Authorization: Basic base64(<key>:)`: the key as user name, empty password (Segment,
  RudderStack); a key given as the password with an empty user name is read too;
- `Authorization: Bearer <key>`;
- `X-Write-Key: <key>`.

Anything else is 401 `unauthorized` with `WWW-Authenticate`, before the body is read, so
nothing is written. Keys are stored hashed (`wotr_domain.models.WriteKey`); the key id in
the key finds the record, whose SHA-256 is compared in constant time.

Every API process caches what it looked up for `WOTR_WRITE_KEY_CACHE_SECONDS` (2 s): a
key revoked with `wotr keys revoke` stops working on every process within that time of
the command returning, with no restart. Unknown ids are cached too (so a flood of made-up
keys costs the store one lookup per id and period).

A key's `source`, when it has one, wins over the `source` the client sent: every event
sent with the key is stamped with it (metadata row, bus message, analytics row, Parquet).

Apply `INGEST_GUARDS` to any route that writes events (`guards=INGEST_GUARDS`): the key
check, then the rate limit (`limits.rate_limit`, keyed by the key it found).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import time
from collections.abc import Callable, Sequence
from typing import Any

import anyio.to_thread
import msgspec
from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from wotr_domain.errors import InvalidEvent, NotFound
from wotr_domain.models import IngestRequest, WriteKey
from wotr_domain.ports import KeyStore

from .errors import Unauthorized
from .limits import WRITE_KEY_SCOPE, rate_limit

__all__ = [
    "INGEST_GUARDS",
    "WriteKeys",
    "key_source",
    "presented_key",
    "require_write_key",
    "stamp_source",
    "stamp_sources",
    "write_key_of",
]

_SCOPE_KEY = WRITE_KEY_SCOPE
_HOW = "send it as Authorization: Basic (the key as user name), Authorization: Bearer, or X-Write-Key"


class WriteKeys:
    """Checks presented keys against a `KeyStore`, with a per-process cache of `ttl` seconds.

    `store` is the store or a function giving it (a container provider: resolving it
    starts the adapter); lookups run on a worker thread, and concurrent lookups of one
    id share one call to the store.
    """

    def __init__(self, store: KeyStore | Callable[[], KeyStore], *, ttl: float = 2.0,
                 clock: Callable[[], float] = time.monotonic, max_entries: int = 10_000) -> None:
        self._store_of: Callable[[], KeyStore] = (lambda: store) if hasattr(store, "get") else store  # type: ignore[assignment]
        self._store: KeyStore | None = None
        self.ttl = ttl
        self._clock = clock
        self._max = max_entries
        self._cache: dict[str, tuple[float, WriteKey | None]] = {}
        self._pending: dict[str, asyncio.Future[WriteKey | None]] = {}

    async def start(self) -> KeyStore:
        """Resolve (and so start) the store, off the event loop; returns it."""
        self._store = await anyio.to_thread.run_sync(self._store_of)
        return self._store

    def store(self) -> KeyStore:
        if self._store is None:
            self._store = self._store_of()
        return self._store

    async def authenticate(self, presented: str) -> WriteKey:
        """The key record `presented` proves; `Unauthorized` when it proves none."""
        key_id = WriteKey.id_of(presented)
        if key_id is None:
            raise Unauthorized("the write key is not a wotr write key (wk_<id>_<secret>)")
        record = await self._record(key_id)
        if record is None or not record.verifies(presented):
            raise Unauthorized("unknown write key")
        if record.revoked:
            raise Unauthorized(f"write key {record.id} was revoked")
        return record

    async def _record(self, key_id: str) -> WriteKey | None:
        hit = self._cache.get(key_id)
        if hit is not None and hit[0] > self._clock():
            return hit[1]
        pending = self._pending.get(key_id)
        if pending is None:
            pending = asyncio.ensure_future(self._fetch(key_id))
            self._pending[key_id] = pending
            pending.add_done_callback(lambda _: self._pending.pop(key_id, None))
        return await asyncio.shield(pending)

    async def _fetch(self, key_id: str) -> WriteKey | None:
        asked = self._clock()
        record = await anyio.to_thread.run_sync(self._lookup, key_id)
        if self.ttl > 0:
            if len(self._cache) >= self._max:
                now = self._clock()
                self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
                if len(self._cache) >= self._max:
                    self._cache.clear()
            self._cache[key_id] = (asked + self.ttl, record)  # counted from the question: never longer
        return record

    def _lookup(self, key_id: str) -> WriteKey | None:
        try:
            return self.store().get(key_id)
        except NotFound:
            return None


def presented_key(headers: Any) -> str | None:
    """The write key a request carries (None: none); `Unauthorized` when the credentials
    are malformed or name two different keys."""
    found: list[str] = []
    header = headers.get("x-write-key")
    if header is not None and header.strip():
        found.append(header.strip())
    authorization = headers.get("authorization")
    if authorization is not None and authorization.strip():
        scheme, _, value = authorization.strip().partition(" ")
        scheme, value = scheme.lower(), value.strip()
        if scheme == "bearer" and value:
            found.append(value)
        elif scheme == "basic" and value:
            try:
                decoded = base64.b64decode(value, validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                raise Unauthorized("the Basic credentials are not base64 of <key>:") from None
            user, _, password = decoded.partition(":")
            if not (user or password):
                raise Unauthorized(f"the Basic credentials carry no write key: {_HOW}")
            found.append(user or password)
        else:
            raise Unauthorized(f"authorization scheme {scheme!r} is not accepted: {_HOW}")
    if len(set(found)) > 1:
        raise Unauthorized("the request carries two different write keys")
    return found[0] if found else None


async def require_write_key(connection: ASGIConnection, _: BaseRouteHandler) -> None:
    """Guard: when write keys are on, the request must carry a valid one (401 otherwise);
    the key found is kept on the request for the rate limit and the source stamp."""
    keys: WriteKeys | None = connection.app.state.get("write_keys")
    if keys is None:
        return
    presented = presented_key(connection.headers)
    if presented is None:
        raise Unauthorized(f"a write key is required: {_HOW}")
    connection.scope[_SCOPE_KEY] = await keys.authenticate(presented)  # type: ignore[literal-required]


def write_key_of(connection: ASGIConnection) -> WriteKey | None:
    """The key `require_write_key` accepted for this request (None when keys are off)."""
    return connection.scope.get(_SCOPE_KEY)  # type: ignore[return-value]


def key_source(connection: ASGIConnection) -> str | None:
    """The source every event of this request is stamped with: the key's, if it has one."""
    key = write_key_of(connection)
    return None if key is None else key.source


def stamp_source(item: IngestRequest, source: str | None) -> IngestRequest:
    """`item` with its `source` replaced by `source` (the key's wins); unchanged when None."""
    if source is None or item.source == source:
        return item
    return msgspec.structs.replace(item, source=source)


def stamp_sources(items: Sequence[IngestRequest | InvalidEvent], source: str | None) -> list[IngestRequest | InvalidEvent]:
    """`stamp_source` over a parsed batch (items that failed to parse stay as they are)."""
    if source is None:
        return list(items)
    return [stamp_source(i, source) if isinstance(i, IngestRequest) else i for i in items]


async def ingest_guard(connection: ASGIConnection, handler: BaseRouteHandler) -> None:
    """The guards of the routes that write: the write key (401), then the rate limit of the
    key or the client address (429). One guard, because the framework copies the route
    handler for every guard of every request."""
    await require_write_key(connection, handler)
    await rate_limit(connection, handler)


INGEST_GUARDS: list[Any] = [ingest_guard]
