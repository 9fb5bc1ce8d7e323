"""The errors wotr raises, for embedding services: the same classes the HTTP API maps to
its status codes (see README, Guarantees)."""

from wotr_domain.errors import (
    ConfigError,
    Conflict,
    InvalidEvent,
    InvalidId,
    MalformedJson,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    Refused,
    Unavailable,
    WotrError,
)

__all__ = [
    "ConfigError",
    "Conflict",
    "InvalidEvent",
    "InvalidId",
    "MalformedJson",
    "NotFound",
    "Overloaded",
    "PayloadTooLarge",
    "Refused",
    "Unavailable",
    "WotrError",
]
