"""The batch path's shortcuts give exactly what the general path gives: a batch decoded in
one pass, ids generated in bulk, the depth check's fast case."""

from __future__ import annotations

import random
import time
import uuid

import pytest

from wotr_apps.api.ingest import parse_batch
from wotr_domain.codec import (
    MAX_DEPTH,
    decode_request,
    decode_request_array,
    decode_requests,
    nesting_exceeds,
)
from wotr_domain.errors import InvalidEvent, PayloadTooLarge
from wotr_domain.ids import new_event_id, new_event_ids
from wotr_domain.models import IngestRequest


def _nested(levels: int) -> bytes:
    return b'{"payload":' + b'{"a":' * (levels - 1) + b"{}" + b"}" * (levels - 1) + b"}"


def _one_by_one(body: bytes) -> list[IngestRequest | InvalidEvent]:
    out: list[IngestRequest | InvalidEvent] = []
    for raw in decode_requests(body):
        try:
            out.append(decode_request(raw))
        except InvalidEvent as e:
            out.append(e)
    return out


def _same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(
        x == y if isinstance(x, IngestRequest) else (type(x), x.message, x.field) == (type(y), y.message, y.field)
        for x, y in zip(a, b, strict=True)
    )


GOOD = [
    b'{"payload":{"n":1},"source":"web","type":"click"}',
    b'{"id":"order-1","payload":{"s":"],[{\\"}","t":[1,{"u":null}]},"timestamp":"2026-05-17T00:00:00Z"}',
    b' {"payload":{}} ',
    _nested(MAX_DEPTH),  # exactly at the limit
]
BAD = [
    b'{"payload":[]}',
    b'{"payload":{"n":1},"extra":1}',
    b'{"payload":{"n":1},"timestamp":"not a time"}',
    _nested(MAX_DEPTH + 1),  # one level too deep: refused alone, never accepted by the one-pass decoder
    _nested(5_000),
]


def test_a_batch_of_valid_requests_is_decoded_in_one_pass_to_the_same_requests():
    body = b"[" + b",".join(GOOD * 3) + b"]"
    whole = decode_request_array(body)
    assert whole is not None and _same(whole, _one_by_one(body))
    assert _same(parse_batch(body, "application/json", 100), _one_by_one(body))


@pytest.mark.parametrize("bad", BAD)
def test_a_batch_with_a_bad_item_is_answered_item_by_item(bad):
    body = b"[" + b",".join([GOOD[0], bad, GOOD[1]]) + b"]"
    assert decode_request_array(body) is None
    items = parse_batch(body, "application/json", 100)
    assert _same(items, _one_by_one(body))
    assert isinstance(items[0], IngestRequest) and isinstance(items[1], InvalidEvent) and isinstance(items[2], IngestRequest)


def test_a_malformed_body_is_refused_whole_as_before():
    from wotr_domain.errors import MalformedJson

    with pytest.raises(MalformedJson):
        parse_batch(b"[" + GOOD[0] + b',{"payload":{"n":1}]', "application/json", 100)


def test_the_count_limits_hold_on_the_one_pass_decoder():
    with pytest.raises(InvalidEvent):
        parse_batch(b"[]", "application/json", 10)
    with pytest.raises(PayloadTooLarge):
        parse_batch(b"[" + b",".join([GOOD[0]] * 11) + b"]", "application/json", 10)
    assert decode_request_array(b'{"payload":{}}') is None  # not an array: the general path explains


def test_the_depth_check_agrees_with_a_reference_walk_on_random_text():
    def reference(data: bytes) -> int | None:
        """The deepest nesting outside strings; None unless the brackets and strings balance as in JSON."""
        depth = deepest = 0
        inside = escaped = False
        for c in data:
            if inside:
                if escaped:
                    escaped = False
                elif c == 0x5C:
                    escaped = True
                elif c == 0x22:
                    inside = False
            elif c == 0x22:
                inside = True
            elif c == 0x5C:  # an escape outside a string: not JSON
                return None
            elif c in b"[{":
                depth += 1
                deepest = max(deepest, depth)
            elif c in b"]}":
                depth -= 1
                if depth < 0:
                    return None
        return None if inside or depth else deepest

    rnd = random.Random(7)
    alphabet = [b'"', b"[", b"]", b"{", b"}", b"a", b"\\", b","]
    checked = 0
    for _ in range(50_000):
        data = b"".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 24)))
        deepest = reference(data)
        if deepest is None:
            continue  # unbalanced text is only bounded from above (tested elsewhere)
        checked += 1
        for limit in (0, 1, 2, 3):
            assert nesting_exceeds(data, limit) == (deepest > limit), (data, limit)
    assert checked > 1_000


def test_ids_generated_in_bulk_are_uuid7s_like_single_ones():
    ids = new_event_ids(2_000) + [new_event_id() for _ in range(10)]
    assert len(set(ids)) == len(ids)
    for i in ids:
        u = uuid.UUID(i)
        assert str(u) == i and u.version == 7 and u.variant == uuid.RFC_4122
    millis = int(ids[0].replace("-", "")[:12], 16)
    assert abs(millis - time.time() * 1000) < 60_000
    assert new_event_ids(0) == []
