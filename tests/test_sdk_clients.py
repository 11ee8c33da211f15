"""Unmodified Segment and RudderStack Python SDKs against a live `tracklayerd serve`."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from rudderstack.analytics.client import Client as RudderClient
from segment.analytics.client import Client as SegmentClient

from tests.proxy import DroppingProxy
from tests.server import ServerProcess
from tracklayerd.config import load_config
from tracklayerd.events import Event
from tracklayerd.processor import Pipeline, Processor
from tracklayerd.store.sqlite import SQLiteStore

CONFIG = """
[sources.shop]
type = "segment"
write_key = ["segment-key", "rudder-key"]
[storage]
path = "tl.sqlite3"
"""


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    config = tmp_path / "tracklayerd.toml"
    config.write_text(CONFIG)
    process = ServerProcess(tmp_path / "data", config).start()
    yield process
    process.stop()


async def stop_and_read(server: ServerProcess, tmp_path: Path) -> dict[str, Event]:
    server.signal(signal.SIGTERM)
    assert await asyncio.to_thread(server.wait) == 0
    config = load_config(tmp_path / "tracklayerd.toml")
    store = SQLiteStore(tmp_path / "data" / "tl.sqlite3")
    await store.open()
    try:
        await Processor(store, Pipeline(config)).run_until_idle()
        ids = await store.inbox_message_ids("shop")
        assert len(ids) == len(set(ids))
        stored = await store.events_for("shop", ids)
        return {s.event_id: msgspec.json.decode(s.body, type=Event) for s in stored if s.body}
    finally:
        await store.close()


def send_with(client: Any, prefix: str) -> None:
    client.identify(f"{prefix}-user", {"email": f"{prefix}@example.com", "firstName": "Ada",
                                       "lastName": "Lovelace", "phone": "+44 20 7946 0000"},
                    message_id=f"{prefix}-identify")
    client.track(f"{prefix}-user", "Order Completed", {
        "order_id": f"{prefix}-1001", "revenue": 90.0, "total": 104.5, "currency": "EUR",
        "products": [{"product_id": "sku-1", "name": "Notebook", "price": 45.0,
                      "quantity": 2}],
    }, message_id=f"{prefix}-order")
    client.track(f"{prefix}-user", "Product Added",
                 {"product_id": "sku-2", "price": 9.5, "quantity": 3, "currency": "EUR"},
                 message_id=f"{prefix}-added")
    client.flush()


def assert_canonical(events: dict[str, Event], prefix: str) -> None:
    identify = events[f"{prefix}-identify"]
    assert identify.message_type == "identify"
    assert identify.user.email == f"{prefix}@example.com"
    assert (identify.user.first_name, identify.user.last_name) == ("Ada", "Lovelace")
    order = events[f"{prefix}-order"]
    assert (order.event, order.original_name) == ("purchase", "Order Completed")
    assert (order.order_id, order.value, order.currency) == (f"{prefix}-1001", 90.0, "EUR")
    assert [(i.id, i.price, i.quantity) for i in order.items] == [("sku-1", 45.0, 2.0)]
    assert order.user.user_id == f"{prefix}-user"
    assert order.context.ip is None  # a server library's request IP is not the shopper's
    added = events[f"{prefix}-added"]
    assert (added.event, added.value, added.currency) == ("add_to_cart", 28.5, "EUR")


async def test_segment_and_rudder_sdks_deliver_canonical_events(
    server: ServerProcess, tmp_path: Path
) -> None:
    segment = SegmentClient("segment-key", host=server.url, max_retries=2)
    rudder = RudderClient("rudder-key", host=server.url, max_retries=2)  # Basic auth + gzip
    await asyncio.to_thread(send_with, segment, "seg")
    await asyncio.to_thread(send_with, rudder, "rud")
    events = await stop_and_read(server, tmp_path)
    assert_canonical(events, "seg")
    assert_canonical(events, "rud")
    assert len(events) == 6


@pytest.mark.parametrize("client_type", [SegmentClient, RudderClient])
async def test_client_retry_after_a_dropped_connection_is_stored_once(
    server: ServerProcess, tmp_path: Path, client_type: Any
) -> None:
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    proxy = DroppingProxy(host, int(port), drop_first=1)
    url = await proxy.start()
    try:
        key = "segment-key" if client_type is SegmentClient else "rudder-key"
        client = client_type(key, host=url, max_retries=3, upload_interval=0.01)
        await asyncio.to_thread(send_with, client, "retry")
    finally:
        await proxy.close()
    assert proxy.dropped == 1
    assert proxy.forwarded > 1  # the SDK sent the dropped batch again
    events = await stop_and_read(server, tmp_path)
    assert sorted(events) == ["retry-added", "retry-identify", "retry-order"]
    assert_canonical(events, "retry")
