"""Kafka event bus on confluent-kafka (Kafka or Redpanda), in three parts.

`clients` owns the driver settings, the idempotent producer and the admin client; `bus`
is the `EventBus` port (topics, publishing with delivery confirmation, read-back);
`subscription` is a consumer-group member (poll, explicit commits, lag, dead letters).
Importing the package does not import confluent-kafka: each call imports what it uses.
"""

from __future__ import annotations

from typing import Any

from ..connections import KafkaConnection
from .bus import KafkaEventBus, TopicSpec, topic_specs
from .clients import KafkaClients
from .subscription import KafkaSubscription

__all__ = ["KafkaClients", "KafkaEventBus", "KafkaSubscription", "TopicSpec", "kafka_bus", "topic_specs"]


def kafka_bus(conn: KafkaConnection, **options: Any) -> KafkaEventBus:
    """A bus on the connection's bootstrap servers and topic; `options` go to the constructor."""
    return KafkaEventBus(conn.bootstrap, conn.topic, partitions=conn.partitions, replication=conn.replication_factor,
                         min_insync_replicas=conn.min_insync_replicas, **options)
