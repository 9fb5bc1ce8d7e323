"""Domain errors to HTTP answers: one JSON shape for every error the API returns.

`{"status_code": 422, "error": "invalid_event", "detail": "...", "field": "payload"}`
"""

from __future__ import annotations

import math

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException

from wotr_domain.errors import (
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
    "EXCEPTION_HANDLERS",
    "RETRY_AFTER_SECONDS",
    "SUPPORTED_CODINGS",
    "BodyTooLarge",
    "CorruptBody",
    "ErrorBody",
    "RateLimited",
    "Unauthorized",
    "UnsupportedContentEncoding",
    "UnsupportedMediaType",
    "error_response",
]

RETRY_AFTER_SECONDS = 5
SUPPORTED_CODINGS = "gzip, deflate"  # besides identity (no coding)


class ErrorBody(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """The JSON shape of every error answer (`error_response`), as the OpenAPI contract publishes it."""

    status_code: int
    error: str  # a stable code: malformed_json, invalid_event, conflict, unavailable, ...
    detail: str  # what went wrong, for a person
    field: str | None = None  # the offending field (dotted path), when one can be named


class UnsupportedMediaType(WotrError):
    """The request's content type is not one the endpoint reads."""


class UnsupportedContentEncoding(UnsupportedMediaType):
    """The request's Content-Encoding is not one the endpoint decodes (RFC 9110 15.5.16:
    415, with Accept-Encoding naming those it does)."""

    headers = {"Accept-Encoding": SUPPORTED_CODINGS}


class CorruptBody(WotrError):
    """The body does not decode with its declared Content-Encoding (corrupt or truncated)."""


class BodyTooLarge(PayloadTooLarge):
    """The body passed the endpoint's limit, on the wire or once decoded; found while
    reading, so the rest was not read, and the connection is closed rather than drained."""

    headers = {"Connection": "close"}

    def __init__(self, limit: int, what: str = "the request body") -> None:
        super().__init__(limit + 1, limit)
        self.args = (f"{what} exceeds the limit of {limit} bytes",)


class Unauthorized(WotrError):
    """No valid write key on a request to an ingest endpoint (RFC 9110 15.5.2: 401 with
    the challenges the API accepts)."""

    headers = {"WWW-Authenticate": 'Basic realm="wotr", Bearer realm="wotr"'}


class RateLimited(WotrError):
    """The client's token bucket is empty: 429 with Retry-After and the RateLimit headers."""

    def __init__(self, detail: str, headers: dict[str, str]) -> None:
        super().__init__(detail)
        self.headers = headers


# (status, code) per error class; the most specific class wins (checked in order).
_STATUS: list[tuple[type[WotrError], int, str]] = [
    (MalformedJson, 400, "malformed_json"),
    (InvalidId, 400, "invalid_id"),
    (InvalidEvent, 422, "invalid_event"),
    (CorruptBody, 400, "corrupt_body"),
    (PayloadTooLarge, 413, "payload_too_large"),
    (UnsupportedContentEncoding, 415, "unsupported_content_encoding"),
    (UnsupportedMediaType, 415, "unsupported_media_type"),
    (NotFound, 404, "not_found"),
    (Conflict, 409, "conflict"),
    (Refused, 422, "refused"),
    (Unauthorized, 401, "unauthorized"),
    (RateLimited, 429, "rate_limited"),
    (Overloaded, 503, "overloaded"),
    (Unavailable, 503, "unavailable"),
]


def error_response(status: int, code: str, detail: str, field: str | None = None, headers: dict | None = None) -> Response:
    body: dict[str, object] = {"status_code": status, "error": code, "detail": detail}
    if field:
        body["field"] = field
    return Response(body, status_code=status, headers=headers, media_type="application/json")


def _domain_error(_: Request, exc: WotrError) -> Response:
    for cls, status, code in _STATUS:
        if isinstance(exc, cls):
            extra = getattr(exc, "headers", None)  # e.g. Accept-Encoding with a 415, Connection: close with a 413
            headers = {"Retry-After": str(RETRY_AFTER_SECONDS)} if status == 503 else (dict(extra) if extra else None)
            if isinstance(exc, Overloaded):  # shed load: come back soon, not after an outage's pause
                headers = {"Retry-After": str(max(1, math.ceil(exc.retry_after)))}
            field = exc.field if isinstance(exc, InvalidEvent) else None
            detail = exc.message if isinstance(exc, InvalidEvent) else str(exc)
            return error_response(status, code, detail, field, headers)
    return error_response(500, "internal_error", "unexpected error")


def _http_error(_: Request, exc: HTTPException) -> Response:
    codes = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "payload_too_large", 415: "unsupported_media_type"}
    detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    extra = getattr(exc, "extra", None)
    field = None
    if extra:  # Litestar's parameter validation says which parameter and why
        problems = extra if isinstance(extra, list) else [extra]
        parts = []
        for problem in problems:
            if isinstance(problem, dict) and "key" in problem:
                field = field or str(problem["key"])
                parts.append(f"{problem['key']}: {problem.get('message', 'invalid')}")
            else:
                parts.append(str(problem))
        detail = "; ".join(parts)
    return error_response(exc.status_code, codes.get(exc.status_code, "http_error"), detail, field, headers=exc.headers)


EXCEPTION_HANDLERS = {WotrError: _domain_error, HTTPException: _http_error}
