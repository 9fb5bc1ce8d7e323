"""The API's published contract (`/schema/openapi.json`) and the API keeping it.

Statically: every operation documents its request body, each answer it gives with its
schema, the one error shape for every 4xx and 5xx, examples that validate against their
own schemas, and the write-key security schemes (optional while write keys are off,
required when they are on).

Dynamically: schemathesis generates requests from the contract (schema-valid ones, and
schema-violating ones) against a real API (uvicorn on 127.0.0.1, memory profile) and
checks every answer: no 5xx, a status the contract lists, its content type, headers and
body schema, and that schema-valid data is accepted. The number of examples is bounded
(`EXAMPLES` per operation; the whole run stays well under a minute on 2 cores).

Two things JSON Schema cannot say are told to the generator instead of being left out of
the checks silently: an event time must lie between 1900 and 2299 (UTC), and a Segment
message's `timestamp` is corrected by `receivedAt - sentAt`, so generated date-times stay
within 2000-2100 where every combination is in range; and the tracking API's `text/plain`
body is JSON text (`contentSchema`), which the generator sends as arbitrary strings.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import Any

import jsonschema_rs
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis.specs.openapi.checks import negative_data_rejection, positive_data_acceptance

from serving import uvicorn_serving

from wotr_apps.container import build_container
from wotr_apps.settings import Settings

pytestmark = pytest.mark.timeout(120)

ENV = {
    "WOTR_PROFILE": "memory",
    "WOTR_MAX_BODY_BYTES": "65536",
    "WOTR_MAX_BATCH_BYTES": "262144",
    "WOTR_MAX_BATCH_EVENTS": "50",
}
EXAMPLES = 40  # per operation (20 operations)

ERROR = {"$ref": "#/components/schemas/ErrorBody"}
# What each endpoint may answer, besides what it answers on success.
ERRORS = {
    ("/ingest", "post"): {"400", "401", "409", "413", "415", "422", "429", "503"},
    ("/ingest/batch", "post"): {"400", "401", "413", "415", "429", "503"},
    ("/events/{event_id}", "get"): {"404", "503"},
    ("/analytics/latest", "get"): {"400", "503"},
}
TRACKING_ERRORS = {"400", "401", "403", "413", "415", "429", "503"}
SUCCESS = {
    ("/ingest", "post"): {"200", "202"},
    ("/ingest/batch", "post"): {"202", "207", "422"},
    ("/health", "get"): {"200"},
    ("/ready", "get"): {"200", "503"},
    ("/events/{event_id}", "get"): {"200"},
    ("/analytics/latest", "get"): {"200"},
}
TRACKING = [f"/v1/{name}" for name in ("track", "identify", "page", "screen", "group", "alias", "batch")]
TRACKING += [f"/v1/{name}" for name in ("t", "i", "p", "s", "g", "a", "b")]
for path in TRACKING:
    ERRORS[(path, "post")] = TRACKING_ERRORS
    SUCCESS[(path, "post")] = {"200"}


def document(env: dict[str, str] | None = None) -> dict[str, Any]:
    app = build_container(Settings.from_env(ENV | (env or {})), with_workers=False).app()
    return app.openapi_schema.to_schema()


DOCUMENT = document()


def operations(doc: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            if method in {"get", "post", "put", "patch", "delete"}:
                yield path, method, operation


def test_every_endpoint_is_in_the_contract():
    assert {(path, method) for path, method, _ in operations(DOCUMENT)} == set(SUCCESS)


@pytest.mark.parametrize(("path", "method"), sorted(SUCCESS))
def test_each_operation_documents_its_body_and_every_answer(path, method):
    operation = DOCUMENT["paths"][path][method]
    responses = operation["responses"]
    assert set(responses) == SUCCESS[(path, method)] | ERRORS.get((path, method), set())
    for status, answer in responses.items():
        media = answer["content"]["application/json"]
        assert answer["description"] and media["examples"], f"{status} has no description or examples"
        if status in ERRORS.get((path, method), set()):
            assert media["schema"] == ERROR, f"{status} is not the error shape"
    if method == "post":
        body = operation["requestBody"]
        assert body["required"] and "gzip" in body["description"]
        assert all("example" in media or "examples" in media for media in body["content"].values())
    for status in {"429", "503"} & set(responses):
        assert "Retry-After" in responses[status]["headers"]


def test_writes_name_the_write_key_schemes_optional_while_keys_are_off():
    schemes = DOCUMENT["components"]["securitySchemes"]
    assert (schemes["writeKeyBasic"]["type"], schemes["writeKeyBasic"]["scheme"]) == ("http", "basic")
    assert (schemes["writeKeyBearer"]["type"], schemes["writeKeyBearer"]["scheme"]) == ("http", "bearer")
    assert (schemes["writeKeyHeader"]["in"], schemes["writeKeyHeader"]["name"]) == ("header", "X-Write-Key")
    alternatives = [{"writeKeyBasic": []}, {"writeKeyBearer": []}, {"writeKeyHeader": []}]
    for path, method, operation in operations(DOCUMENT):
        if method == "post":
            assert operation["security"] == [*alternatives, {}], path
        else:
            assert "security" not in operation, path
    required = document({"WOTR_REQUIRE_WRITE_KEY": "true"})
    assert required["paths"]["/ingest"]["post"]["security"] == alternatives


def validator(schema: dict[str, Any]) -> jsonschema_rs.Draft202012Validator:
    """A validator of `schema` whose `#/components/...` references find the document's components."""
    return jsonschema_rs.Draft202012Validator({**schema, "components": DOCUMENT["components"]})


def test_every_example_validates_against_its_schema():
    checked = 0
    for path, method, operation in operations(DOCUMENT):
        contents = [answer["content"] for answer in operation["responses"].values()]
        contents += [operation["requestBody"]["content"]] if "requestBody" in operation else []
        for media_type, media in (pair for content in contents for pair in content.items()):
            examples = [e["value"] for e in media.get("examples", {}).values()]
            examples += [media["example"]] if "example" in media else []
            schema = media["schema"]
            if media_type == "text/plain":  # JSON text of the body the content schema describes
                schema, examples = schema["contentSchema"], [json.loads(e) for e in examples]
            elif media_type == "application/x-ndjson":
                schema, examples = {"$ref": "#/components/schemas/IngestRequest"}, [
                    json.loads(line) for e in examples for line in e.splitlines()]
            for example in examples:
                errors = list(validator(schema).iter_errors(example))
                assert not errors, f"{method.upper()} {path} {media_type}: {errors[0]}"
                checked += 1
    assert checked > 60
    bad = {"batch": [{"type": "track", "userId": "u"}]}  # a track call without its event
    assert list(validator({"$ref": "#/components/schemas/SegmentBatch"}).iter_errors(bad))


# -- the API keeps it (schemathesis) ------------------------------------------------------

# Event times within 2000-2100 in any offset: every timestamp, and every Segment timestamp
# corrected by (receivedAt - sentAt), lies in what the stores hold (1900-2299, UTC).
_OFFSETS = st.integers(-(23 * 60 + 59), 23 * 60 + 59).map(lambda m: timezone(timedelta(minutes=m)))
_TIMES = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=_OFFSETS)
schemathesis.openapi.format("date-time", _TIMES.map(lambda t: t.isoformat().replace("+00:00", "Z")))
schemathesis.serializer.alias("application/x-ndjson", "text/plain")  # the NDJSON body's text, as it is

SCHEMA = schemathesis.openapi.from_dict(DOCUMENT)


@contextmanager
def serving(env: dict[str, str]) -> Iterator[str]:
    """The API on a real uvicorn server on 127.0.0.1 (an ephemeral port), in a thread."""
    with uvicorn_serving(build_container(Settings.from_env(env), with_workers=False)) as port:
        yield f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def api():
    with serving(ENV) as url:
        yield url


@SCHEMA.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
def test_the_api_keeps_its_contract(case, api):
    # Left out, and why: `negative_data_rejection` (the tracking API keeps whatever fields
    # a message has, as Segment does, and takes any non-null JSON where the contract says
    # "object"); `positive_data_acceptance` where schema-valid data is legitimately refused:
    # an /ingest/batch item whose id an earlier example used with other content (409 for
    # that item, so 422 when it is the only one), and a text/plain body, which is JSON text
    # the generator cannot produce from `contentSchema`.
    excluded = [negative_data_rejection]
    if case.path == "/ingest/batch" or case.media_type == "text/plain":
        excluded.append(positive_data_acceptance)
    case.call_and_validate(base_url=api, timeout=10, excluded_checks=excluded)
