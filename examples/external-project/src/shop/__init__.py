"""A tiny shop that records every order it takes as a wotr event."""

from __future__ import annotations

import wotr


class Shop:
    def __init__(self, platform: wotr.Platform) -> None:
        self._events = platform

    def place_order(self, order_id: str, items: list[str], total: float) -> wotr.Receipt:
        """Record the order; a retry of the same order is a duplicate, never a second event."""
        return self._events.ingest({"items": items, "total": total}, id=order_id, source="shop", type="order")
