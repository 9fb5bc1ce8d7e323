"""The API's contract as published at `/schema/openapi.json`.

Litestar derives paths, parameters and the main success answer from the handlers. What
it cannot see is added here, in one table per operation: the request bodies (the ingest
and tracking handlers read their bodies themselves, to bound and decode them), every
answer each endpoint gives with its schema and examples (the one error shape,
`errors.ErrorBody`, for every 4xx and 5xx), the `Content-Encoding` the bodies may have,
and the security schemes of the write keys (`auth.py` checks them): HTTP Basic with the
key as user name (Segment's SDKs), Bearer, and `X-Write-Key`. While write keys are off
(`WOTR_REQUIRE_WRITE_KEY`) the contract says so: no credentials is one of the accepted
alternatives.

Schemas come from the msgspec types the handlers encode (`msgspec.json.schema_components`),
so the contract describes the bytes the API sends; `tests/unit/test_openapi_contract.py`
checks it against the running API with schemathesis.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, fields
from typing import Any

import msgspec
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import OpenAPI

from wotr_domain.models import AnalyticsRow, BatchItemResult, EventMetadata, IngestRequest, Receipt
from wotr_domain.services.ingest import MAX_TEXT_FIELD_CHARS

from .errors import ErrorBody
from .segment import KINDS, MessageResult, TrackingAnswer, TrackingBatchAnswer

__all__ = ["SECURITY_SCHEMES", "contract_openapi_config", "publish"]

_REF = "#/components/schemas/{name}"


# -- documentation-only types (the handlers answer plain dicts of these shapes) -----------


class BatchAnswer(msgspec.Struct, frozen=True, kw_only=True):
    """`POST /ingest/batch`: per-event results in input order."""

    accepted: int
    rejected: int
    results: list[BatchItemResult]


class Health(msgspec.Struct, frozen=True, kw_only=True):
    status: str


class Readiness(msgspec.Struct, frozen=True, kw_only=True):
    """`ready`, or `unavailable` with each failing dependency or worker as `down: <why>`."""

    status: str
    checks: dict[str, str]


_TYPES = (ErrorBody, IngestRequest, Receipt, BatchAnswer, EventMetadata, AnalyticsRow, Health, Readiness,
          TrackingAnswer, TrackingBatchAnswer, MessageResult)

# -- the write keys ----------------------------------------------------------------------

SECURITY_SCHEMES: dict[str, dict[str, Any]] = {
    "writeKeyBasic": {
        "type": "http", "scheme": "basic",
        "description": "The write key as the user name and an empty password, as Segment's SDKs send it.",
    },
    "writeKeyBearer": {"type": "http", "scheme": "bearer", "description": "`Authorization: Bearer <write key>`."},
    "writeKeyHeader": {"type": "apiKey", "in": "header", "name": "X-Write-Key", "description": "The write key."},
}

# -- schemas written here (what msgspec types cannot say) --------------------------------

_NO_CONTROL = "^[^\\u0000-\\u001f\\u007f]*$"
_ID = {"type": ["string", "number"], "minLength": 1, "description": "a user or group id (string; numbers accepted)"}
_INSTANT = {"type": "string", "format": "date-time"}


def _segment_message(kind: str) -> dict[str, Any]:
    """A Segment spec message of one call (`type` may be omitted on the call's own endpoint)."""
    props: dict[str, Any] = {
        "type": {"type": "string", "enum": [kind]},
        "messageId": {
            "type": "string", "minLength": 1,
            "description": "The event id: a valid wotr id is kept, any other becomes `seg-` + its hex SHA-256.",
        },
        "userId": _ID,
        "anonymousId": _ID,
        "timestamp": {**_INSTANT, "description": "When it happened, by the device's clock (corrected by sentAt)."},
        "sentAt": {**_INSTANT, "description": "When the device sent it: the event time becomes "
                                              "timestamp + (receivedAt - sentAt)."},
        "context": {"type": "object"},
        "integrations": {"type": "object"},
        "properties": {"type": "object"},
        "traits": {"type": "object"},
        "writeKey": {"description": "analytics.js's write key in the body; never archived."},
    }
    schema: dict[str, Any] = {
        "type": "object",
        "description": (
            f"A Segment `{kind}` call (https://segment.com/docs/connections/spec/{kind}/); fields not named here are "
            "kept as sent. docs/api.md says how it becomes a wotr event."
        ),
        "properties": props,
        "additionalProperties": True,
    }
    if kind == "track":
        props["event"] = {"type": "string", "minLength": 1, "maxLength": MAX_TEXT_FIELD_CHARS - len("track:"),
                          "pattern": _NO_CONTROL, "description": "The event's name."}
        schema["required"] = ["event"]
    elif kind in ("page", "screen"):
        props["name"] = {"type": ["string", "null"]}
        props["category"] = {"type": ["string", "null"]}
    elif kind == "group":
        props["groupId"] = _ID
        schema["required"] = ["groupId"]
    if kind == "alias":
        props["previousId"] = _ID
        schema["required"] = ["previousId", "userId"]
    else:
        schema["anyOf"] = [{"required": ["userId"]}, {"required": ["anonymousId"]}]
    return schema


def _written_schemas() -> dict[str, Any]:
    schemas = {f"Segment{kind.title()}": _segment_message(kind) for kind in KINDS}
    schemas["SegmentMessage"] = {
        "description": "A message of a batch: any call, its `type` saying which.",
        "allOf": [{"type": "object", "required": ["type"]},
                  {"oneOf": [_ref(f"Segment{kind.title()}") for kind in KINDS]}],
    }
    schemas["SegmentBatch"] = {
        "type": "object",
        "description": "Segment's batch envelope: `context`, `integrations` and `sentAt` apply to every message "
                       "that has none of its own.",
        "required": ["batch"],
        "properties": {
            "batch": {"type": "array", "minItems": 1, "items": {"$ref": _REF.format(name="SegmentMessage")}},
            "sentAt": _INSTANT,
            "context": {"type": "object"},
            "integrations": {"type": "object"},
            "writeKey": {"type": "string"},
        },
        "additionalProperties": True,
    }
    return schemas


def _component_schemas() -> dict[str, Any]:
    _, components = msgspec.json.schema_components(_TYPES, ref_template=_REF)
    request = components["IngestRequest"]["properties"]
    text = {"type": "string", "maxLength": MAX_TEXT_FIELD_CHARS, "pattern": _NO_CONTROL}
    request["id"] = {"anyOf": [{"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"}, {"type": "null"}],
                     "description": "Your id for the event (retries with it are idempotent); wotr makes one if absent."}
    request["source"] = {"anyOf": [text, {"type": "null"}]}
    request["type"] = {"anyOf": [text, {"type": "null"}]}
    request["timestamp"] = {"anyOf": [{**_INSTANT, "description": "between 1900-01-01 and 2299-12-31 UTC"},
                                      {"type": "null"}]}
    return {**components, **_written_schemas()}


# -- examples -----------------------------------------------------------------------------

_EVENT_ID = "0192f3a4-7b1c-7d2e-8f90-a1b2c3d4e5f6"
_KEY = f"raw/dt=2026-11-26/{_EVENT_ID}.json"
_RECEIPT = {"id": _EVENT_ID, "object_key": _KEY, "status": "published", "duplicate": False, "line": None}
_SEGMENT_EXAMPLES = {
    "track": {"type": "track", "messageId": "9f2c1a7e-0d4b-4c39-9a57-3f1f7f0f2a11", "userId": "user-42",
              "event": "Order Completed", "properties": {"revenue": 39.5, "currency": "EUR"},
              "timestamp": "2026-11-26T09:15:02.120Z", "sentAt": "2026-11-26T09:15:03.004Z"},
    "identify": {"type": "identify", "messageId": "m-identify-1", "userId": "user-42",
                 "traits": {"email": "ada@example.com", "plan": "pro"}},
    "page": {"type": "page", "messageId": "m-page-1", "anonymousId": "a-7f3e", "name": "Pricing",
             "properties": {"url": "https://example.com/pricing"}},
    "screen": {"type": "screen", "messageId": "m-screen-1", "userId": "user-42", "name": "Checkout"},
    "group": {"type": "group", "messageId": "m-group-1", "userId": "user-42", "groupId": "acme",
              "traits": {"employees": 120}},
    "alias": {"type": "alias", "messageId": "m-alias-1", "previousId": "a-7f3e", "userId": "user-42"},
}


def _error(status: int, code: str, detail: str, field: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"status_code": status, "error": code, "detail": detail}
    if field:
        body["field"] = field
    return body


_ERRORS: dict[int, tuple[str, dict[str, Any]]] = {
    400: ("The body is not JSON, an id is not acceptable, or a compressed body does not decode.",
          {"malformed_json": _error(400, "malformed_json", "JSON is malformed: expected ',' or '}' (byte 19)"),
           "corrupt_body": _error(400, "corrupt_body", "the gzip body is truncated")}),
    401: ("No valid write key (only when write keys are required).",
          {"unauthorized": _error(401, "unauthorized", "a write key is required: send it as Authorization: Basic "
                                                       "(the key as user name), Authorization: Bearer, or X-Write-Key")}),
    403: ("The request's Origin is not one WOTR_CORS_ORIGINS allows; nothing was read or written.",
          {"origin_not_allowed": _error(403, "origin_not_allowed",
                                        "origin 'https://evil.example' is not allowed (WOTR_CORS_ORIGINS)")}),
    404: ("No such event.", {"not_found": _error(404, "not_found", "event 'x' not found")}),
    409: ("The id was used before for other content; the first event stands.",
          {"conflict": _error(409, "conflict", "event 'order-1' exists with other content")}),
    413: ("The body (on the wire or decoded) or the event passed its limit; the connection is closed.",
          {"payload_too_large": _error(413, "payload_too_large", "the request body exceeds the limit of 1048576 bytes")}),
    415: ("The content type or content coding is not one the endpoint reads.",
          {"unsupported_media_type": _error(415, "unsupported_media_type",
                                            "content type must be application/json, got 'text/csv'"),
           "unsupported_content_encoding": _error(415, "unsupported_content_encoding",
                                                  "content encoding 'br' is not supported: send gzip, deflate or identity")}),
    422: ("The JSON is not an acceptable event (`field` names the problem), or a store permanently refused it.",
          {"invalid_event": _error(422, "invalid_event", "Expected `object`, got `array` - at `$.payload`", "payload")}),
    429: ("The write key (or client address) sent more than its rate; retry after `Retry-After` seconds.",
          {"rate_limited": _error(429, "rate_limited", "rate limit of 100 requests per second exceeded")}),
    503: ("A store is down, or load is shed; nothing was written. Retry after `Retry-After` seconds.",
          {"unavailable": _error(503, "unavailable", "metadata repo is unavailable: connection refused")}),
}
_TRACKING_400 = ("The message (or, for a batch, every message) is not a valid Segment message, or the body is "
                 "not JSON. Segment's SDKs drop it rather than retry.",
                 {"invalid_event": _error(400, "invalid_event", "track needs event (the event's name, a non-empty "
                                                                "string)", "event"),
                  "malformed_json": _error(400, "malformed_json", "JSON is malformed: invalid character (byte 0)")})
_HEADERS = {
    413: {"Connection": {"description": "`close`: the rest of the body was not read.", "schema": {"type": "string"}}},
    415: {"Accept-Encoding": {"description": "the content codings the endpoint decodes",
                              "schema": {"type": "string"}}},
    429: {"Retry-After": {"description": "seconds to wait", "schema": {"type": "string"}}},
    503: {"Retry-After": {"description": "seconds to wait", "schema": {"type": "string"}}},
    401: {"WWW-Authenticate": {"description": "the schemes accepted", "schema": {"type": "string"}}},
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF.format(name=name)}


def _json(schema: dict[str, Any], examples: dict[str, Any] | None = None) -> dict[str, Any]:
    media: dict[str, Any] = {"schema": schema}
    if examples:
        media["examples"] = {name: {"value": value} for name, value in examples.items()}
    return {"application/json": media}


def _answer(description: str, schema: dict[str, Any], examples: dict[str, Any], status: int | None = None) -> dict:
    answer: dict[str, Any] = {"description": description, "content": _json(schema, examples)}
    if status in _HEADERS:
        answer["headers"] = _HEADERS[status]
    return answer


def _errors(*statuses: int, **overrides: tuple[str, dict[str, Any]]) -> dict[str, Any]:
    out = {}
    for status in statuses:
        description, examples = overrides.get(f"e{status}", _ERRORS[status])
        out[str(status)] = _answer(description, _ref("ErrorBody"), examples, status)
    return out


# Not a header parameter: `Content-Encoding: gzip` says how the body's bytes are coded, and
# a client (or schemathesis) sending the header with a plain body gets 400 corrupt_body.
_BODY_CODING = (
    "The body may be sent with `Content-Encoding: gzip` or `deflate` (zlib-wrapped or raw); the size limit holds "
    "for the bytes on the wire and for the decoded body. Any other coding is 415, a corrupt one 400."
)
_INGEST_EXAMPLE = {"id": "order-1", "source": "shop", "type": "order.completed", "timestamp": "2026-11-26T09:15:02Z",
                   "payload": {"order": 1, "total": 39.5}}


def _as_text(schema: str, example: dict[str, Any]) -> dict[str, Any]:
    """The same JSON sent as `text/plain`, as analytics.js does (no CORS preflight)."""
    return {
        "schema": {"type": "string", "contentMediaType": "application/json", "contentSchema": _ref(schema),
                   "description": "the JSON text of the same body"},
        "example": msgspec.json.encode(example).decode(),
    }


def _operations() -> dict[tuple[str, str], dict[str, Any]]:
    """Per (path, method): what the contract adds to (or puts in place of) Litestar's operation."""
    ops: dict[tuple[str, str], dict[str, Any]] = {}
    item_ok = {"index": 0, "id": "order-1", "object_key": "raw/dt=2026-11-26/batch-0192f3a4.ndjson", "line": 0,
               "status": "published"}
    item_bad = {"index": 1, "error": "Expected `object`, got `str` - at `$.payload`", "code": "invalid_event",
                "field": "payload"}
    ops[("/ingest", "post")] = {
        "secured": True,
        "requestBody": {"required": True, "content": _json(_ref("IngestRequest"), {"event": _INGEST_EXAMPLE,
                                                                                  "minimal": {"payload": {"n": 1}}})},
        "responses": {
            "202": _answer("Accepted: the raw event and its metadata are durable.", _ref("Receipt"), {"new": _RECEIPT}),
            "200": _answer("The id was seen before with the same content: the first receipt.", _ref("Receipt"),
                           {"repeat": {**_RECEIPT, "duplicate": True}}),
            **_errors(400, 401, 409, 413, 415, 422, 429, 503),
        },
    }
    ops[("/ingest/batch", "post")] = {
        "secured": True,
        "requestBody": {"required": True, "content": {
            **_json({"type": "array", "minItems": 1, "items": _ref("IngestRequest")},
                    {"two events": [_INGEST_EXAMPLE, {"payload": {"n": 2}}]}),
            "application/x-ndjson": {
                "schema": {"type": "string", "description": "one IngestRequest JSON object per line"},
                "example": '{"payload": {"n": 1}}\n{"payload": {"n": 2}}\n',
            },
        }},
        "responses": {
            "202": _answer("Every event accepted.", _ref("BatchAnswer"),
                           {"all": {"accepted": 1, "rejected": 0, "results": [item_ok]}}),
            "207": _answer("Some events accepted, the others rejected alone (each result says why).",
                           _ref("BatchAnswer"), {"some": {"accepted": 1, "rejected": 1, "results": [item_ok, item_bad]}}),
            "422": {"description": "No event accepted (per-event results), or the body is not a batch (an error).",
                    "content": _json({"anyOf": [_ref("BatchAnswer"), _ref("ErrorBody")]},
                                     {"none": {"accepted": 0, "rejected": 1, "results": [{**item_bad, "index": 0}]},
                                      "empty": _error(422, "invalid_event", "batch is empty")})},
            **_errors(400, 401, 413, 415, 429, 503),
        },
    }
    tracking_errors = _errors(400, 401, 403, 413, 415, 429, 503, e400=_TRACKING_400)
    for kind in KINDS:
        example = _SEGMENT_EXAMPLES[kind]
        operation = {
            "secured": True,
            "requestBody": {"required": True, "content": {
                **_json(_ref(f"Segment{kind.title()}"), {kind: example}),
                "text/plain": _as_text(f"Segment{kind.title()}", example),
            }},
            "responses": {
                "200": _answer("Accepted (or already accepted: `duplicate`).", _ref("TrackingAnswer"),
                               {"accepted": {"success": True, "id": example["messageId"], "duplicate": False}}),
                **tracking_errors,
            },
        }
        ops[(f"/v1/{kind}", "post")] = ops[(f"/v1/{kind[0]}", "post")] = operation
    batch_example = {"batch": [_SEGMENT_EXAMPLES["track"], _SEGMENT_EXAMPLES["identify"]],
                     "sentAt": "2026-11-26T09:15:03.004Z", "context": {"library": {"name": "analytics-python"}}}
    batch_op = {
        "secured": True,
        "requestBody": {"required": True, "content": {
            **_json(_ref("SegmentBatch"), {"batch": batch_example}),
            "text/plain": _as_text("SegmentBatch", batch_example),
        }},
        "responses": {
            "200": _answer("At least one message accepted; the invalid ones are listed (Segment answers 200 too).",
                           _ref("TrackingBatchAnswer"),
                           {"one invalid": {"success": True, "accepted": 1, "rejected": 1, "results": [
                               {"index": 0, "id": "9f2c1a7e-0d4b-4c39-9a57-3f1f7f0f2a11"},
                               {"index": 1, "error": "timestamp must be between 1900-01-01 and 2299-12-31 (UTC)",
                                "code": "invalid_event", "field": "timestamp"}]}}),
            **tracking_errors,
        },
    }
    ops[("/v1/batch", "post")] = ops[("/v1/b", "post")] = batch_op
    ops[("/events/{event_id}", "get")] = {"responses": {
        "200": _answer("The event's metadata row.", _ref("EventMetadata"), {"event": {
            "id": _EVENT_ID, "object_key": _KEY, "size": 187, "checksum": "9f86d081884c7d65" * 4,
            "received_at": "2026-11-26T09:15:03.120Z", "status": "published", "published_at": "2026-11-26T09:15:03.131Z",
            "source": "shop", "type": "order.completed", "line": None, "fingerprint": "3a7bd3e2360a3d29" * 4}}),
        **_errors(404, 503),
    }}
    ops[("/analytics/latest", "get")] = {"responses": {
        "200": _answer("The newest rows of wotr.ingested_data.", {"type": "array", "items": _ref("AnalyticsRow")},
                       {"rows": [{"id": _EVENT_ID, "created_at": "2026-11-26T09:15:03.120Z",
                                  "event_time": "2026-11-26T09:15:02Z", "source": "shop", "type": "order.completed",
                                  "payload": '{"order":1,"total":39.5}', "object_key": _KEY}]}),
        **_errors(400, 503, e400=("`limit` is not an integer from 1 to 1000.", {"limit": _error(
            400, "bad_request", "Validation failed for GET /analytics/latest?limit=0")})),
    }}
    ops[("/health", "get")] = {"responses": {"200": _answer("Alive.", _ref("Health"), {"ok": {"status": "ok"}})}}
    ready = {"status": "ready", "checks": {"object_store": "ok", "metadata_repo": "ok", "event_bus": "ok"}}
    ops[("/ready", "get")] = {"responses": {
        "200": _answer("Every dependency and in-process worker is up.", _ref("Readiness"), {"ready": ready}),
        "503": {**_answer("Something is down (named in `checks`).", _ref("Readiness"), {"down": {
            "status": "unavailable", "checks": {**ready["checks"], "event_bus": "down: kafka is unavailable"}}}),
            "headers": _HEADERS[503]},
    }}
    return ops


def publish(document: dict[str, Any], *, auth_optional: bool = True) -> dict[str, Any]:
    """Complete Litestar's document (in place, and returned) with the contract above."""
    components = document.setdefault("components", {})
    components.setdefault("schemas", {}).update(_component_schemas())
    components.setdefault("securitySchemes", {}).update(copy.deepcopy(SECURITY_SCHEMES))
    security = [{name: []} for name in SECURITY_SCHEMES] + ([{}] if auth_optional else [])
    for (path, method), spec in _operations().items():
        operation = document.get("paths", {}).get(path, {}).get(method)
        if operation is None:
            continue
        spec = copy.deepcopy(spec)
        if spec.pop("secured", False):
            operation["security"] = security
        if "requestBody" in spec:
            operation["requestBody"] = {"description": _BODY_CODING, **spec["requestBody"]}
        operation["responses"] = spec["responses"]
    return document


@dataclass
class _PublishedOpenAPI(OpenAPI):
    """Litestar's OpenAPI object, rendered with the contract added (`publish`)."""

    auth_optional: bool = True

    @property
    def _exclude_fields(self) -> set[str]:
        return {"auth_optional"}

    def to_schema(self) -> dict[str, Any]:
        return publish(super().to_schema(), auth_optional=self.auth_optional)


@dataclass
class _ContractConfig(OpenAPIConfig):
    auth_optional: bool = True

    def to_openapi_schema(self) -> OpenAPI:
        base = super().to_openapi_schema()
        document = _PublishedOpenAPI(**{f.name: getattr(base, f.name) for f in fields(base)})
        document.auth_optional = self.auth_optional
        return document


def contract_openapi_config(*, require_write_key: bool = False) -> OpenAPIConfig:
    """The OpenAPI configuration of the API: Litestar's schema completed by `publish`."""
    return _ContractConfig(
        title="wotr",
        version="0.1.0",
        description=(
            "Event ingestion API: `POST /ingest` and `POST /ingest/batch` (wotr's own events), the Segment-compatible "
            "tracking API under `/v1/` (docs/api.md), event metadata, analytics rows, health and readiness. Every "
            "error is one JSON shape (`ErrorBody`). Write keys, when required, go in `Authorization: Basic` (the key "
            "as user name), `Authorization: Bearer` or `X-Write-Key`."
        ),
        auth_optional=not require_write_key,
    )
