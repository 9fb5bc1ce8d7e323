"""wotr, embedded: the event-ingestion platform as a library.

    import wotr

    with wotr.open(profile="embedded", data_dir="./.wotr") as platform:
        receipt = platform.ingest({"example": "hello"}, type="greeting")
        platform.get(receipt.id).status          # EventStatus.STORED / PUBLISHED

    async with wotr.open_async(profile="memory") as platform:   # asyncio services
        receipt = await platform.ingest({"n": 1}, id="order-1")

Same guarantees and errors as the HTTP API (`wotr.errors`): `InvalidEvent` (422/400 over
HTTP), `PayloadTooLarge` (413), `Conflict` (409: same id, other content), `Refused`,
`Unavailable` (503: retry later). Settings given to `open` win over the environment,
which wins over the defaults; their names are those of `wotr_apps.settings.Settings`
(`data_dir`, `max_body_bytes`, `kafka_topic`, `s3_endpoint`, ...).
"""

from __future__ import annotations

from . import errors
from wotr_domain.models import AnalyticsRow, EventMetadata, EventStatus, Receipt

from ._platform import AsyncPlatform, Platform, open, open_async

__all__ = [
    "AnalyticsRow",
    "AsyncPlatform",
    "EventMetadata",
    "EventStatus",
    "Platform",
    "Receipt",
    "errors",
    "open",
    "open_async",
]
