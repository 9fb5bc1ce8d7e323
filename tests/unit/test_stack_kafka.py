"""The native stack's Kafka: what it hands the storage tool."""

from __future__ import annotations

import base64

from wotr_testing.stack.kafka import new_cluster_id


def test_cluster_ids_never_start_with_a_dash_and_hold_16_bytes():
    """The storage tool reads an id starting with "-" as an option (one URL-safe base64 id
    in 64 does): the stack's ids never do."""
    ids = [new_cluster_id() for _ in range(5000)]
    assert not [i for i in ids if i.startswith("-")]
    assert all(len(base64.urlsafe_b64decode(i + "==")) == 16 for i in ids)
    assert len(set(ids)) == len(ids)
