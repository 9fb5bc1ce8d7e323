"""Looking at the running pipeline from outside: the outbox, the consumer group's
offsets, and canary events that measure the time to recover."""

from __future__ import annotations

import logging
import time
from collections import Counter

import httpx

from .pipeline import PARTITIONS, Pipeline
from .util import say

_quiet = logging.getLogger("chaos.kafka")
_quiet.addHandler(logging.NullHandler())
_quiet.propagate = False


class Observer:
    def __init__(self, pipeline: Pipeline) -> None:
        self.p = pipeline
        self._pg = None
        self._consumer = None
        self.canaries: list[str] = []  # canary ids answered 202/200: accepted events like the others
        self.canary_refused: list[str] = []

    # -- PostgreSQL ----------------------------------------------------------------------

    def _conn(self):
        import psycopg

        if self._pg is None or self._pg.closed:
            env = self.p.stack_env
            self._pg = psycopg.connect(host=env["POSTGRES_HOST"], port=int(env["POSTGRES_PORT"]),
                                       user=env["POSTGRES_USER"], password=env["POSTGRES_PASSWORD"],
                                       dbname=env["POSTGRES_DB"], autocommit=True, connect_timeout=3)
        return self._pg

    def sql(self, query: str, params: tuple = ()) -> list[tuple] | None:
        """Run a query on the metadata schema's database; None while PostgreSQL is down."""
        try:
            return self._conn().execute(query.replace("{schema}", f'"{self.p.schema}"'), params).fetchall()
        except Exception:  # noqa: BLE001 - down or restarting: unknown
            try:
                if self._pg is not None:
                    self._pg.close()
            except Exception:  # noqa: BLE001
                pass
            self._pg = None
            return None

    def stored(self) -> int | None:
        """Accepted events not yet published (the outbox backlog)."""
        rows = self.sql("SELECT count(*) FROM {schema}.event_metadata WHERE status = 'stored'")
        return None if rows is None else rows[0][0]

    def status(self, event_id: str) -> str | None:
        rows = self.sql("SELECT status FROM {schema}.event_metadata WHERE id = %s", (event_id,))
        return rows[0][0] if rows else None

    # -- Kafka ---------------------------------------------------------------------------

    def _kafka(self):
        from confluent_kafka import Consumer

        if self._consumer is None:
            self._consumer = Consumer({
                "bootstrap.servers": self.p.stack_env["KAFKA_BOOTSTRAP"], "group.id": self.p.group,
                "enable.auto.commit": False, "logger": _quiet, "socket.timeout.ms": 3000,
            })
        return self._consumer

    def _partitions(self):
        from confluent_kafka import TopicPartition

        return [TopicPartition(self.p.topic, p) for p in range(PARTITIONS)]

    def end_offsets(self) -> list[int] | None:
        try:
            consumer = self._kafka()
            return [consumer.get_watermark_offsets(tp, timeout=3, cached=False)[1] for tp in self._partitions()]
        except Exception:  # noqa: BLE001 - Kafka down: unknown
            return None

    def committed(self) -> list[int] | None:
        try:
            offsets = self._kafka().committed(self._partitions(), timeout=5)
        except Exception:  # noqa: BLE001
            return None
        return [max(tp.offset, 0) for tp in offsets]

    def lag(self) -> int | None:
        end, done = self.end_offsets(), self.committed()
        if end is None or done is None:
            return None
        return sum(max(e - c, 0) for e, c in zip(end, done))

    def caught_up_to(self, end: list[int]) -> bool:
        done = self.committed()
        return done is not None and all(c >= e for c, e in zip(done, end))

    def keys_between(self, start: list[int], end: list[int], timeout: float = 120.0) -> Counter:
        """How many messages each key (event id) has on the topic between two offset lists."""
        from confluent_kafka import Consumer, TopicPartition

        reader = Consumer({"bootstrap.servers": self.p.stack_env["KAFKA_BOOTSTRAP"],
                           "group.id": f"{self.p.group}-chaos-reader", "enable.auto.commit": False,
                           "logger": _quiet})
        counts: Counter = Counter()
        todo = {p for p in range(PARTITIONS) if end[p] > start[p]}
        try:
            reader.assign([TopicPartition(self.p.topic, p, start[p]) for p in sorted(todo)])
            deadline = time.monotonic() + timeout
            while todo and time.monotonic() < deadline:
                for msg in reader.consume(5000, timeout=1):
                    if msg.error() is not None:
                        continue
                    part, offset = msg.partition(), msg.offset()
                    if offset < end[part] and msg.key() is not None:
                        counts[msg.key().decode(errors="replace")] += 1
                    if offset >= end[part] - 1:
                        todo.discard(part)
        finally:
            reader.close()
        if todo:
            raise RuntimeError(f"could not read partitions {sorted(todo)} of {self.p.topic} to their end")
        return counts

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None
        if self._pg is not None:
            self._pg.close()
            self._pg = None

    # -- recovery --------------------------------------------------------------------------

    def time_to_recover(self, since: float, limit: float = 180.0) -> float | None:
        """Seconds from `since` until a canary event sent now is end to end: answered 202,
        published, and its partition's offsets committed by the consumer group. Canaries are
        sent one after another until one makes it; None when none did within `limit`."""
        deadline = since + limit
        n = 0
        while time.monotonic() < deadline:
            n += 1
            event_id = f"canary-{self.p.name}-{len(self.canaries) + len(self.canary_refused)}-{n}"
            try:
                r = httpx.post(f"{self.p.url}/ingest", timeout=5,
                               json={"id": event_id, "source": "chaos", "type": "canary", "payload": {"canary": n}})
            except httpx.HTTPError:
                r = None
            if r is None or r.status_code not in (200, 202):
                # a canary without an answer may still be in (an SDK would retry it): track it
                self.canary_refused.append(event_id)
                time.sleep(0.25)
                continue
            self.canaries.append(event_id)
            while time.monotonic() < deadline and self.status(event_id) != "published":
                time.sleep(0.1)
            end = None
            while time.monotonic() < deadline and end is None:
                end = self.end_offsets()
            while time.monotonic() < deadline and end is not None:
                if self.caught_up_to(end):
                    return time.monotonic() - since
                time.sleep(0.1)
        say(f"no canary made it end to end within {limit:.0f}s")
        return None
