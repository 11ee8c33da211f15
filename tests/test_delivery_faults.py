"""End to end under faults: native API → inbox → processor → scheduler → fake Meta.

Every event must end delivered or dead with a reason; none lost; none sent with two different
event ids; a destination that is down must not delay a healthy one.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import msgspec
from aiohttp.test_utils import TestClient

from tests.conftest import auth, make_config, processor_of, purchase, store_of
from tests.fakes.meta import FakeMeta
from tracklayerd.app import SCHEDULER, create_app

TOKEN = "meta-token"
PIXEL = "1234567890"


class FakeClock:
    def __init__(self) -> None:
        self.t = time.time()

    def now(self) -> float:
        return self.t


def meta(endpoint: str, **options: Any) -> dict[str, Any]:
    return {"type": "meta_capi", "pixel_id": PIXEL, "access_token": TOKEN,
            "endpoint": endpoint, **options}


def events(n: int) -> list[dict[str, Any]]:
    now = time.time()
    return [purchase(f"evt-{i}", order_id=f"order-{i}", timestamp=now - 60) for i in range(n)]


async def start_fake(aiohttp_server: Any) -> tuple[FakeMeta, str]:
    fake = FakeMeta(access_token=TOKEN)
    server = await aiohttp_server(fake.app)
    return fake, str(server.make_url(f"/v24.0/{PIXEL}/events"))


def sent_event_ids_by_order(fake: FakeMeta) -> dict[str, set[str]]:
    """Every event id each order was sent under, in every request (answered or not)."""
    seen: dict[str, set[str]] = defaultdict(set)
    for request in fake.requests:
        for event in msgspec.json.decode(request.body)["data"]:
            seen[event["custom_data"]["order_id"]].add(event["event_id"])
    return seen


async def test_under_every_fault_each_event_ends_delivered_or_dead_and_none_is_lost(
    aiohttp_client: Any, aiohttp_server: Any, tmp_path: Path
) -> None:
    healthy, healthy_url = await start_fake(aiohttp_server)
    faulty, faulty_url = await start_fake(aiohttp_server)
    # In order, one request each: throttled with Retry-After, a 500, no answer (the client
    # times out), a dropped connection; and Meta refusing any batch holding order 7's event.
    faulty.fail_next(4, status=429, is_transient=True, retry_after=30,
                     message="(#4) Application request limit reached")
    faulty.respond_next(500, b"upstream error")
    faulty.hang_next()
    faulty.reset_next()
    faulty.fail_when_event_id("evt-7", 100, 2804001, message="Invalid parameter")
    config = make_config(tmp_path, destinations={
        "healthy": meta(healthy_url, max_batch_events=10),
        "faulty": meta(faulty_url, max_batch_events=10, timeout_secs=0.5,
                       backoff_base_secs=5, breaker_failures=100),
    })
    clock = FakeClock()
    client: TestClient[Any, Any] = await aiohttp_client(
        create_app(config, tmp_path, start_processor=False, clock=clock))
    response = await client.post("/v1/events", json={"events": events(30)}, headers=auth())
    assert response.status == 200
    await processor_of(client).run_until_idle()
    scheduler = client.app[SCHEDULER]
    store = store_of(client)
    for _ in range(50):
        await scheduler.run_until_idle()
        counts = await store.counts()
        if not any(counts.get(f"deliveries.{s}") for s in ("pending", "retrying", "in_flight")):
            break
        clock.t += 120
    faulty.release()

    counts = await store.counts()
    assert counts["deliveries"] == 60
    assert counts.get("deliveries.delivered") == 59 and counts.get("deliveries.dead") == 1
    # The healthy destination got every event exactly once, unaffected by the other.
    assert sorted(healthy.event_ids) == sorted(f"evt-{i}" for i in range(30))
    # The faulty one: every event but the bad one, each accepted once.
    assert sorted(faulty.event_ids) == sorted(f"evt-{i}" for i in range(30) if i != 7)
    # Retries, splits and re-sends always carried the same event id for an order.
    for order, ids in sent_event_ids_by_order(faulty).items():
        assert ids == {f"evt-{order.removeprefix('order-')}"}
    bad = (await store.events_for("web", ["evt-7"]))[0]
    records = {r.destination: r for r in await store.delivery_records(bad.id)}
    assert records["healthy"].status == "delivered"
    dead = records["faulty"]
    assert dead.status == "dead"
    assert dead.reason is not None and "Meta 100/2804001: Invalid parameter" in dead.reason
    assert "fbtrace_id=" in dead.reason
    assert [a.outcome for a in dead.history][-2:] == ["split", "rejected"]
    # The attempts log holds every fault met, with the platform's answers verbatim.
    history = [a for row in range(1, 31) for r in await store.delivery_records(row)
               if r.destination == "faulty" for a in r.history]
    assert {a.http_status for a in history if a.outcome == "retry"} >= {429, 500, None}
    assert {a.error for a in history if a.http_status is None} == {
        "no answer within the timeout", "connection failed (ServerDisconnectedError)"}
    throttled = next(a for a in history if a.http_status == 429)
    assert "Application request limit reached" in (throttled.response or "")


async def test_a_destination_that_is_down_does_not_delay_a_healthy_one(
    aiohttp_client: Any, aiohttp_server: Any, tmp_path: Path
) -> None:
    healthy, healthy_url = await start_fake(aiohttp_server)
    down, down_url = await start_fake(aiohttp_server)
    for _ in range(20):
        down.hang_next()
    config = make_config(tmp_path, destinations={
        "healthy": meta(healthy_url, batch_linger_secs=0, max_batch_events=5),
        "down": meta(down_url, batch_linger_secs=0, max_batch_events=5, timeout_secs=60),
    })
    app = create_app(config, tmp_path)  # the real loops: processor and scheduler running
    client: TestClient[Any, Any] = await aiohttp_client(app)
    try:
        for batch in range(4):
            chunk = events(20)[batch * 5:(batch + 1) * 5]
            response = await client.post("/v1/events", json={"events": chunk}, headers=auth())
            assert response.status == 200
        async with asyncio.timeout(15):
            while True:
                healthy.accepted_any.clear()
                if len(healthy.event_ids) >= 20:
                    break
                await healthy.accepted_any.wait()
        assert sorted(healthy.event_ids) == sorted(f"evt-{i}" for i in range(20))
        assert down.event_ids == []
        assert len(down.requests) >= 1  # it is stuck in flight, not skipped
    finally:
        down.release()
