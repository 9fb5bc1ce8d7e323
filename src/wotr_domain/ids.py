"""Event ids: UUIDv7 when wotr generates one (sorts by time), validation when a client sends one."""

from __future__ import annotations

import os
import re
import time

from .errors import InvalidId

__all__ = ["new_event_id", "validate_event_id"]

_CLIENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


def new_event_id() -> str:
    """A UUIDv7 (RFC 9562): 48-bit Unix milliseconds, version, 74 random bits."""
    millis = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (millis & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76
    value |= (rand >> 68) << 64 & (0xFFF << 64)
    value |= 0b10 << 62
    value |= rand & ((1 << 62) - 1)
    h = f"{value:032x}"  # the canonical form, without building a UUID object (a batch makes thousands)
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def validate_event_id(value: str) -> str:
    """Accept a client id that is safe as an object-key segment and a Kafka key."""
    if not _CLIENT_ID.fullmatch(value):
        raise InvalidId(
            "id must be 1-128 characters of letters, digits, '.', '_', ':' or '-', starting with a letter or digit",
            field="id",
        )
    return value
