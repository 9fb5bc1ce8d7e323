"""Contract of the EventBus port: durable publish, at-least-once group consumption,
explicit commits and a dead-letter topic; run against every bus adapter."""

from __future__ import annotations

import time
import uuid

import pytest

from wotr_domain.errors import Unavailable
from wotr_domain.models import BusMessage, Delivery


def _messages(n: int, key: str | None = None) -> list[BusMessage]:
    return [
        BusMessage(key=key or f"id-{i}", value=f'{{"n":{i}}}'.encode(), headers={"content-type": "application/json", "event-id": key or f"id-{i}"})
        for i in range(n)
    ]


def drain(subscription, expected: int, timeout: float = 30.0) -> list[Delivery]:
    """Poll until `expected` deliveries arrived or the time is up (group joins take a while)."""
    got: list[Delivery] = []
    deadline = time.monotonic() + timeout
    while len(got) < expected and time.monotonic() < deadline:
        got.extend(subscription.poll(max_messages=expected - len(got), timeout=0.5))
    return got


def group() -> str:
    return f"g-{uuid.uuid4().hex[:8]}"


def test_published_messages_reach_a_subscriber_with_key_value_and_headers(event_bus):
    sent = _messages(5)
    event_bus.publish(sent)
    sub = event_bus.subscribe(group())
    try:
        got = drain(sub, 5)
    finally:
        sub.close()
    assert sorted((d.key, d.value) for d in got) == sorted((m.key, m.value) for m in sent)
    for d in got:
        assert d.headers["event-id"] == d.key
        assert d.headers["content-type"] == "application/json"


def test_messages_with_one_key_keep_their_order(event_bus):
    sent = _messages(20, key="same-id")
    event_bus.publish(sent)
    sub = event_bus.subscribe(group())
    try:
        got = drain(sub, 20)
    finally:
        sub.close()
    assert [d.value for d in got] == [m.value for m in sent]


def test_committed_messages_are_not_delivered_again_to_the_group(event_bus):
    g = group()
    event_bus.publish(_messages(3))
    sub = event_bus.subscribe(g)
    first = drain(sub, 3)
    sub.commit(first)
    sub.close()
    event_bus.publish(_messages(2, key="later"))
    sub = event_bus.subscribe(g)
    try:
        second = drain(sub, 2)
        extra = sub.poll(max_messages=10, timeout=1.0)
    finally:
        sub.close()
    assert [d.key for d in second] == ["later", "later"]
    assert extra == []


def test_uncommitted_messages_are_delivered_again(event_bus):
    g = group()
    event_bus.publish(_messages(3))
    sub = event_bus.subscribe(g)
    first = drain(sub, 3)
    sub.close()  # crash before commit
    sub = event_bus.subscribe(g)
    try:
        again = drain(sub, 3)
    finally:
        sub.close()
    assert sorted(d.value for d in again) == sorted(d.value for d in first)


def test_each_group_sees_every_message(event_bus):
    event_bus.publish(_messages(4))
    a, b = event_bus.subscribe(group()), event_bus.subscribe(group())
    try:
        assert len(drain(a, 4)) == 4
        assert len(drain(b, 4)) == 4
    finally:
        a.close()
        b.close()


def test_poll_on_an_empty_topic_returns_nothing_within_the_timeout(event_bus):
    sub = event_bus.subscribe(group())
    try:
        started = time.monotonic()
        assert sub.poll(max_messages=10, timeout=0.5) == []
        assert time.monotonic() - started < 15
    finally:
        sub.close()


def test_dead_letters_keep_the_message_and_the_reason(event_bus):
    event_bus.publish([BusMessage(key="bad-1", value=b"not json", headers={"event-id": "bad-1"})])
    sub = event_bus.subscribe(group())
    try:
        (poison,) = drain(sub, 1)
        sub.dead_letter(poison, "undecodable event: not JSON")
        sub.commit([poison])
    finally:
        sub.close()
    deadline = time.monotonic() + 30
    letters: list[Delivery] = []
    while not letters and time.monotonic() < deadline:
        letters = event_bus.dead_letters(limit=10)
    assert len(letters) == 1
    assert letters[0].value == b"not json"
    assert letters[0].key == "bad-1"
    assert letters[0].headers["dlq-reason"] == "undecodable event: not JSON"
    assert letters[0].headers["dlq-source"].startswith(poison.topic)


def test_publishing_nothing_is_a_no_op(event_bus):
    event_bus.publish([])
    sub = event_bus.subscribe(group())
    try:
        assert sub.poll(max_messages=10, timeout=0.5) == []
    finally:
        sub.close()


def test_an_unreachable_bus_raises_unavailable(down_event_bus):
    with pytest.raises(Unavailable):
        bus = down_event_bus()
        bus.start()
        bus.publish(_messages(1))
    with pytest.raises(Unavailable):
        down_event_bus().check()


def test_lag_counts_what_the_group_has_not_committed(event_bus):
    g = group()
    event_bus.publish(_messages(6))
    sub = event_bus.subscribe(g)
    try:
        got = drain(sub, 6)
        deadline = time.monotonic() + 15
        while sum(sub.lag().values()) != 6 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert sum(sub.lag().values()) == 6
        sub.commit(got)
        deadline = time.monotonic() + 15
        while sum(sub.lag().values()) != 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert sum(sub.lag().values()) == 0
    finally:
        sub.close()
