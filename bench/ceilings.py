"""Ceilings: what each service (and the HTTP stack) does on its own on this machine, with
the same client libraries wotr uses. Every measurement is bounded in count and time."""

from __future__ import annotations

import io
import multiprocessing
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

from .common import CpuWindow, Namespace


def _result(name: str, value: float, unit: str, count: int, seconds: float, cpu: dict, **detail: Any) -> dict:
    return {"name": name, "value": value, "unit": unit, "count": count, "seconds": seconds, "cpu": cpu, **detail}


# -- S3 PUT ------------------------------------------------------------------------------


def _s3_put_worker(endpoint: str, access: str, secret: str, bucket: str, prefix: str, threads: int,
                   seconds: float, limit: int, size: int) -> int:
    """One process: `threads` threads putting small objects until the deadline or the limit."""
    from wotr_adapters.connections import S3Connection
    from wotr_adapters.minio import minio_client

    client = minio_client(S3Connection(endpoint=endpoint, access_key=access, secret_key=secret, bucket=bucket),
                          max_connections=threads)
    body = b'{"x":"' + b"a" * max(0, size - 8) + b'"}'
    count = [0] * threads
    deadline = time.monotonic() + seconds

    def loop(k: int) -> None:
        n = 0
        while time.monotonic() < deadline and n < limit:
            client.put_object(bucket, f"{prefix}/{k}/{n}.json", io.BytesIO(body), len(body),
                              content_type="application/json")
            n += 1
        count[k] = n

    ts = [threading.Thread(target=loop, args=(k,)) for k in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return sum(count)


def s3_put(ns: Namespace, *, processes: int = 2, threads: int = 4, seconds: float = 8.0, size: int = 200) -> dict:
    s3 = ns.s3()
    ctx = multiprocessing.get_context("spawn")  # no fork of a process holding librdkafka/chdb threads
    with ProcessPoolExecutor(processes, mp_context=ctx) as pool:
        # Warm the workers (interpreter start, imports) outside the measured window.
        list(pool.map(_s3_put_worker, *zip(*[(s3.endpoint, s3.access_key, s3.secret_key, ns.bucket, f"ceiling/warm{p}",
                                               1, 0.5, 5, size) for p in range(processes)])))
        with CpuWindow() as cpu:
            t0 = time.monotonic()
            futures = [pool.submit(_s3_put_worker, s3.endpoint, s3.access_key, s3.secret_key, ns.bucket,
                                   f"ceiling/p{p}", threads, seconds, 100_000, size) for p in range(processes)]
            count = sum(f.result(timeout=seconds + 60) for f in futures)
            elapsed = time.monotonic() - t0
    return _result("S3 PUT", count / elapsed, "objects/s", count, elapsed, cpu.result,
                   how=f"minio SDK put_object, {processes} processes x {threads} threads, {size}-byte objects, {seconds:g} s")


def s3_put_server(ns: Namespace, wrk_path: str, *, objects: int = 2000, connections: int = 16, seconds: float = 8.0,
                  size: int = 200) -> dict:
    """The S3 server's own PUT rate, without a Python client: wrk PUTs small objects to
    presigned URLs (signed once, up front, for `objects` distinct keys used in turn)."""
    from datetime import timedelta as _td
    from urllib.parse import urlsplit

    from wotr_adapters.minio import minio_client

    from . import load

    client = minio_client(ns.s3())
    paths = []
    for i in range(objects):
        u = urlsplit(client.presigned_put_object(ns.bucket, f"ceiling/wrk/{i}.json", expires=_td(hours=1)))
        paths.append(f"{u.path}?{u.query}")
    base = f"http://{ns.s3().endpoint}"
    body = b'{"x":"' + b"a" * max(0, size - 8) + b'"}'
    with CpuWindow() as cpu:
        r = load.wrk(wrk_path, base + "/", ns.workdir, body=body, connections=connections, duration=seconds,
                     put_paths=paths)
    return _result("S3 PUT, server only", r["requests_per_s"], "objects/s", r["requests"], r["duration_s"], cpu.result,
                   how=f"wrk PUT to presigned URLs ({objects:,} keys in turn), {connections} connections, {size}-byte "
                       f"objects, {seconds:g} s; p99 {r['latency_ms']['p99']:.1f} ms; no Python client",
                   errors=r["errors"])


# -- PostgreSQL --------------------------------------------------------------------------

_PG_TABLE = "ceiling_rows"


def _pg_rows(n: int, tag: str) -> list[tuple]:
    now = datetime.now(UTC)
    return [(f"{tag}-{i:09d}", f"raw/dt={now:%Y-%m-%d}/{tag}-{i:09d}.json", 180, "0" * 64, now, "stored", None,
             "bench", "page_view") for i in range(n)]


def postgres(ns: Namespace, *, threads: int = 4, seconds: float = 5.0, copy_rows: int = 200_000) -> list[dict]:
    import psycopg
    from psycopg import sql

    pg = ns.postgres()
    table = sql.Identifier(ns.schema, _PG_TABLE)
    with psycopg.connect(pg.conninfo, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(ns.schema)))
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(table))
        conn.execute(sql.SQL(
            "CREATE TABLE {} (id text PRIMARY KEY, object_key text NOT NULL, size bigint NOT NULL, checksum text NOT NULL, "
            "received_at timestamptz NOT NULL, status text NOT NULL, published_at timestamptz, source text, type text)"
        ).format(table))
    insert = sql.SQL("INSERT INTO {} (id, object_key, size, checksum, received_at, status, published_at, source, type) "
                     "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)").format(table)

    counts = [0] * threads
    rows = [_pg_rows(200_000, f"single{k}") for k in range(threads)]
    deadline_holder: list[float] = []
    start = threading.Barrier(threads + 1)

    def loop(k: int) -> None:
        with psycopg.connect(pg.conninfo, autocommit=True) as conn:  # one row, one transaction
            conn.execute(insert, rows[k][0])
            start.wait()
            n = 1
            while time.monotonic() < deadline_holder[0] and n < len(rows[k]):
                conn.execute(insert, rows[k][n])
                n += 1
            counts[k] = n - 1

    ts = [threading.Thread(target=loop, args=(k,)) for k in range(threads)]
    for t in ts:
        t.start()
    with CpuWindow() as cpu:
        deadline_holder.append(time.monotonic() + seconds)
        t0 = time.monotonic()
        start.wait()
        for t in ts:
            t.join()
        elapsed = time.monotonic() - t0
    single = _result("PostgreSQL INSERT, one row per transaction", sum(counts) / elapsed, "rows/s", sum(counts), elapsed,
                     cpu.result, how=f"psycopg, {threads} connections in threads, autocommit, {seconds:g} s")

    data = _pg_rows(copy_rows, "copy")
    with psycopg.connect(pg.conninfo) as conn, CpuWindow() as cpu:
        t0 = time.monotonic()
        with conn.cursor() as cur, cur.copy(sql.SQL(
                "COPY {} (id, object_key, size, checksum, received_at, status, published_at, source, type) FROM STDIN"
        ).format(table)) as copy:
            for row in data:
                copy.write_row(row)
        conn.commit()
        elapsed = time.monotonic() - t0
    copied = _result("PostgreSQL COPY", copy_rows / elapsed, "rows/s", copy_rows, elapsed, cpu.result,
                     how=f"psycopg COPY FROM STDIN, one transaction of {copy_rows:,} rows")
    with psycopg.connect(pg.conninfo, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(table))
    return [single, copied]


# -- Kafka -------------------------------------------------------------------------------


def bus_messages(n: int) -> list[tuple[bytes, bytes, list]]:
    """`n` messages exactly as the ingest service publishes them (encoded Event, key, headers)."""
    from wotr_domain.codec import encode
    from wotr_domain.ids import new_event_id
    from wotr_domain.models import Event
    from wotr_domain.archive import bus_message_for, object_key_for

    now = datetime.now(UTC)
    out = []
    for i in range(n):
        received = now + timedelta(microseconds=i)
        event = Event(id=new_event_id(), received_at=received, source="bench", type="page_view", timestamp=received,
                      payload={"seq": i, "page": "/pricing", "user": f"user-{i % 500}"})
        m = bus_message_for(event.id, encode(event), object_key_for(event.id, received))
        out.append((m.value, m.key.encode(), [(k, v.encode()) for k, v in m.headers.items()]))
    return out


def kafka_produce(bus: Any, messages: list[tuple[bytes, bytes, list]], *, seconds: float = 60.0) -> dict:
    """The adapter's own producer settings (acks=all, idempotence, lz4, linger 5 ms), producing
    asynchronously and flushing once: the broker's produce ceiling for wotr's messages."""
    from confluent_kafka import Producer

    producer = Producer(dict(bus._producer_config))
    failed = [0]

    def delivered(err: Any, _msg: Any) -> None:
        if err is not None:
            failed[0] += 1

    topic = bus.topic
    with CpuWindow() as cpu:
        t0 = time.monotonic()
        deadline = t0 + seconds
        sent = 0
        for value, key, headers in messages:
            if time.monotonic() > deadline:
                break
            while True:
                try:
                    producer.produce(topic, value, key, headers=headers, on_delivery=delivered)
                    break
                except BufferError:
                    producer.poll(0.05)
            sent += 1
            if sent % 10_000 == 0:
                producer.poll(0)
        left = producer.flush(max(5.0, deadline - time.monotonic()))
        elapsed = time.monotonic() - t0
    acked = sent - left - failed[0]
    return _result("Kafka produce", acked / elapsed, "messages/s", acked, elapsed, cpu.result,
                   how=f"confluent-kafka Producer with the adapter's settings (acks=all, idempotence, lz4, linger 5 ms), "
                       f"{len(messages[0][0])}-byte events, async produce + one flush", failed=failed[0] + left)


def kafka_consume(bootstrap: str, topic: str, n: int, *, seconds: float = 60.0) -> dict:
    """Raw consume of `n` messages (no decoding, no commit): the broker's fetch ceiling."""
    import uuid

    from confluent_kafka import Consumer

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-raw-{uuid.uuid4().hex[:8]}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False,
                         # As wotr's consumer: the default (1 s) stalls fetching whenever the
                         # prefetch queue fills, so the ceiling swung between ~150k and ~1M/s.
                         "fetch.queue.backoff.ms": 100})
    consumer.subscribe([topic])
    got = 0
    try:
        # Wait for the assignment and the first message outside the window.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            first = consumer.consume(1, timeout=0.5)
            if first and first[0].error() is None:
                got = 1
                break
        with CpuWindow() as cpu:
            t0 = time.monotonic()
            deadline = t0 + seconds
            while got < n and time.monotonic() < deadline:
                for msg in consumer.consume(10_000, timeout=0.5):
                    if msg.error() is None:
                        got += 1
            elapsed = time.monotonic() - t0
    finally:
        consumer.close()
    return _result("Kafka consume", (got - 1) / elapsed, "messages/s", got - 1, elapsed, cpu.result,
                   how="confluent-kafka Consumer.consume(10000), no decoding, no commits")


# -- ClickHouse --------------------------------------------------------------------------


def clickhouse_insert(client: Any, *, rows: int = 200_000, batch: int = 5_000, seconds: float = 30.0) -> list[dict]:
    """Batches of `batch` rows of the ingested_data shape through clickhouse-connect into the
    in-process engine (a database of its own), two ways:

    - column-oriented, timestamps as integer microseconds: what the engine takes in with
      the least Python work per value (the engine's ceiling through this client);
    - row-oriented with `datetime` objects, exactly as `ClickHouseAnalyticsSink.write`
      builds them (the ceiling of the sink as written).
    """
    from wotr_adapters.clickhouse import _COLUMNS, ClickHouseAnalyticsSink

    now = datetime.now(UTC)
    base = int(now.timestamp() * 1_000_000)
    ids = [f"ceil-{i:09d}" for i in range(rows)]
    payloads = ['{"seq":%d,"page":"/pricing","user":"user-%d"}' % (i, i % 500) for i in range(rows)]
    keys = [f"raw/dt={now:%Y-%m-%d}/{i}.json" for i in ids]
    out = []
    for mode in ("columns", "rows"):
        database = f"benchceiling{mode}"
        ClickHouseAnalyticsSink(client, database).start()
        table = f"{database}.ingested_data"
        if mode == "columns":
            data: Any = [ids, [base + i for i in range(rows)], [base] * rows, ["bench"] * rows, ["page_view"] * rows,
                         payloads, keys]
        else:
            data = [[ids[i], now + timedelta(microseconds=i), now, "bench", "page_view", payloads[i], keys[i]]
                    for i in range(rows)]
        done = 0
        with CpuWindow() as cpu:
            t0 = time.monotonic()
            while done < rows and time.monotonic() - t0 < seconds:
                if mode == "columns":
                    client.insert(table, [col[done:done + batch] for col in data], column_names=_COLUMNS,
                                  column_oriented=True)
                else:
                    client.insert(table, data[done:done + batch], column_names=_COLUMNS)
                done = min(rows, done + batch)
            elapsed = time.monotonic() - t0
        client.command(f"DROP DATABASE IF EXISTS {database}")
        how = (f"clickhouse-connect into the in-process engine (chdb), batches of {batch:,} rows, "
               + ("column-oriented, timestamps as int microseconds" if mode == "columns"
                  else "row-oriented with datetime objects (as ClickHouseAnalyticsSink.write)"))
        name = "ClickHouse insert" if mode == "columns" else "ClickHouse insert, sink-style rows"
        out.append(_result(name, done / elapsed, "rows/s", done, elapsed, cpu.result, how=how))
    return out


# -- the batch path's own I/O, alone -------------------------------------------------------
#
# What one `POST /ingest/batch` of `batch` events asks of PostgreSQL and Kafka, done alone
# through wotr's own adapters: the ceiling each service sets on the batch path, and the CPU
# each costs per event on this machine (client process and, for PostgreSQL, the backend).


def _proc_cpu(pid: int) -> float:
    """User + system CPU seconds of one process (its threads included), from /proc."""
    import os
    from pathlib import Path

    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _batch_metadata(batch: int) -> list:
    """`batch` metadata rows as `IngestService` records them for one batch object."""
    import hashlib

    from wotr_domain.archive import batch_key_for
    from wotr_domain.ids import new_event_ids
    from wotr_domain.models import EventMetadata

    now = datetime.now(UTC)
    key = batch_key_for(now)
    return [EventMetadata(id=i, object_key=key, line=n, size=220, checksum=hashlib.sha256(i.encode()).hexdigest(),
                          received_at=now, source="bench", type="page_view")
            for n, i in enumerate(new_event_ids(batch))]


def postgres_batches(ns: Namespace, *, batch: int = 1000, batches: int = 40) -> list[dict]:
    """`PostgresMetadataRepo.record` of `batch` rows per statement (unnest of binary arrays,
    ON CONFLICT DO NOTHING RETURNING id), then `mark_published` of the same ids: the two
    statements each accepted batch costs PostgreSQL. One connection, one batch at a time;
    rows/s with the CPU per row of this process and of the PostgreSQL backend."""
    from wotr_adapters.postgres import PostgresMetadataRepo, postgres_pool

    repo = PostgresMetadataRepo(postgres_pool(ns.postgres(), min_size=1, max_size=1), schema=ns.schema)
    repo.start()
    try:
        with repo._db.cursor() as cur:
            cur.execute("SELECT pg_backend_pid()")
            backend = cur.fetchone()[0]
        work = [_batch_metadata(batch) for _ in range(batches + 2)]
        for rows in work[:2]:  # warm: prepared statements, the table's first pages
            repo.record(rows)
            repo.mark_published([m.id for m in rows], datetime.now(UTC))
        out = []
        for name, step in (("record", repo.record),
                           ("mark_published", lambda rows: repo.mark_published([m.id for m in rows],
                                                                              datetime.now(UTC)))):
            with CpuWindow() as cpu:
                server0, client0, t0 = _proc_cpu(backend), self_cpu_s(), time.monotonic()
                for rows in work[2:]:
                    step(rows)
                elapsed = time.monotonic() - t0
                server, client = _proc_cpu(backend) - server0, self_cpu_s() - client0
            n = batch * batches
            out.append(_result(f"PostgreSQL {name}, {batch:,} rows per statement", n / elapsed, "rows/s", n, elapsed,
                               cpu.result, server_cpu_us_per_row=server / n * 1e6,
                               client_cpu_us_per_row=client / n * 1e6,
                               how=f"PostgresMetadataRepo.{name} on one connection, {batches} statements of {batch:,} "
                                   "rows; server CPU from /proc of the backend"))
        return out
    finally:
        with repo._db.cursor() as cur:
            cur.execute(repo._db.sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(repo._db.sql.Identifier(ns.schema)))
        repo.close()


def self_cpu_s() -> float:
    """CPU seconds of this process, all its threads (the Kafka client's included)."""
    return time.process_time()


def kafka_publish_batches(ns: Namespace, *, batch: int = 1000, batches: int = 40, publishers: int = 1) -> dict:
    """`KafkaEventBus.publish` of `batch` bus messages as one batch of the ingest path makes
    them (the encoded event, keyed by id, its object and line as headers), waiting for every
    delivery report, `publishers` threads at a time: messages/s and this process's CPU per
    message (the driver's threads included)."""
    from wotr_adapters.kafka import kafka_bus
    from wotr_domain.archive import bus_message_for
    from wotr_domain.models import BusMessage

    bus = kafka_bus(ns.kafka())
    bus.start()
    try:
        key = _batch_metadata(1)[0].object_key
        messages: list[BusMessage] = [bus_message_for(k.decode(), value, key, line)
                                      for line, (value, k, _) in enumerate(bus_messages(batch))]
        bus.publish(messages)  # warm: connections, metadata, the producer id

        def loop(count: int) -> None:
            for _ in range(count):
                bus.publish(messages)

        with CpuWindow() as cpu:
            client0, t0 = self_cpu_s(), time.monotonic()
            ts = [threading.Thread(target=loop, args=(batches // publishers,)) for _ in range(publishers)]
            for t in ts:
                t.start()
            for t in ts:
                t.join()
            elapsed = time.monotonic() - t0
            client = self_cpu_s() - client0
        n = batch * (batches // publishers) * publishers
        return _result(f"Kafka publish, {batch:,} messages per call", n / elapsed, "messages/s", n, elapsed, cpu.result,
                       client_cpu_us_per_message=client / n * 1e6,
                       how=f"KafkaEventBus.publish (the adapter's producer: acks=all, idempotence, lz4, linger 5 ms), "
                           f"{publishers} publisher thread(s), {len(messages[0].value)}-byte events, each call waits "
                           "for its delivery reports")
    finally:
        bus.close()


def main(argv: list[str] | None = None) -> int:
    """`python -m bench.ceilings`: the batch path's PostgreSQL and Kafka ceilings, in a
    namespace of their own, on the stack whose exports are in the environment
    (`eval "$(wotr stack env)"`)."""
    import argparse
    import json
    import os
    import tempfile
    from pathlib import Path

    p = argparse.ArgumentParser(prog="python -m bench.ceilings", description=main.__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--batches", type=int, default=40)
    p.add_argument("--publishers", type=int, default=1)
    args = p.parse_args(argv)
    ns = Namespace(dict(os.environ), Path(tempfile.mkdtemp(prefix="wotr-ceilings-")))
    results = postgres_batches(ns, batch=args.batch, batches=args.batches)
    results.append(kafka_publish_batches(ns, batch=args.batch, batches=args.batches, publishers=args.publishers))
    for r in results:
        extra = {k: round(v, 2) for k, v in r.items() if k.endswith(("per_row", "per_message"))}
        print(f"{r['name']}: {r['value']:,.0f} {r['unit']} {extra} (machine busy {r['cpu']['machine_busy_cores']:.2f} "
              f"cores)")
    print(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
