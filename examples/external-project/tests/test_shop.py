"""The shop's suite, using wotr's pytest fixtures (found through pytest's entry point)."""

import time

import pytest
import wotr


def test_an_order_is_recorded_once_even_when_retried(wotr_platform):
    from shop import Shop

    shop = Shop(wotr_platform)
    first = shop.place_order("o-1", ["tea"], 4.5)
    retry = shop.place_order("o-1", ["tea"], 4.5)
    assert retry.duplicate and retry.id == first.id
    assert wotr_platform.get("o-1").object_key == first.object_key
    with pytest.raises(wotr.errors.Conflict):
        shop.place_order("o-1", ["coffee"], 3.0)


def test_orders_reach_the_analytics_table_on_the_embedded_profile(wotr_embedded_platform):
    from shop import Shop

    Shop(wotr_embedded_platform).place_order("o-2", ["cake"], 2.0)
    deadline = time.monotonic() + 20
    while not wotr_embedded_platform.latest(5) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [row.id for row in wotr_embedded_platform.latest(5)] == ["o-2"]


def test_the_http_api_refuses_a_conflicting_order(wotr_http):
    assert wotr_http.post("/ingest", json={"id": "o-3", "payload": {"total": 1}}).status_code == 202
    r = wotr_http.post("/ingest", json={"id": "o-3", "payload": {"total": 2}})
    assert r.status_code == 409 and "o-3" in r.json()["detail"]
