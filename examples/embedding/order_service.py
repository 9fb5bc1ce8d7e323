"""An asyncio service that embeds wotr: it records every order it handles as an event.

Run it: `python examples/embedding/order_service.py DATA_DIR` (embedded profile: files,
SQLite and the in-process ClickHouse engine under DATA_DIR, no servers). It handles a few
orders concurrently, retries one (a duplicate, not a second event), shows a conflicting
reuse of an id being refused, then prints what the analytics table holds.
"""

import asyncio
import sys
import time

import wotr


async def handle_order(platform: wotr.AsyncPlatform, order_id: str, amount: float) -> wotr.Receipt:
    # ... the service's own work would happen here ...
    return await platform.ingest({"amount": amount, "currency": "EUR"}, id=order_id, source="shop", type="order")


async def main(data_dir: str) -> None:
    async with wotr.open_async(profile="embedded", data_dir=data_dir) as platform:
        receipts = await asyncio.gather(*(handle_order(platform, f"order-{n}", 10.0 * n) for n in range(1, 6)))
        for r in receipts:
            print(f"accepted {r.id} -> {r.object_key} line {r.line}")
        retry = await handle_order(platform, "order-1", 10.0)  # a client retry: same id, same content
        print(f"retry of {retry.id}: duplicate={retry.duplicate}")
        try:
            await handle_order(platform, "order-1", 99.0)  # same id, other content
        except wotr.errors.Conflict as e:
            print(f"refused: {e}")
        deadline = time.monotonic() + 20
        while len(rows := await platform.latest(10)) < 5 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)  # the in-process consumer loads the analytics rows
        print(f"analytics rows: {sorted(row.id for row in rows)}")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
