"""The processor: inbox → canonical events + one delivery row per destination."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import msgspec

from tests.conftest import auth, make_config, processor_of, purchase, store_of
from tracklayerd.config import parse_config
from tracklayerd.events import Event
from tracklayerd.processor import CURSOR, Pipeline, Processor
from tracklayerd.store.base import InboxRow
from tracklayerd.store.sqlite import SQLiteStore

DESTINATIONS = {
    "hook_live": {"type": "webhook", "endpoint": "http://127.0.0.1:1/live"},
    "hook_observe": {"type": "webhook", "endpoint": "http://127.0.0.1:1/o", "mode": "observe"},
    "hook_off": {"type": "webhook", "endpoint": "http://127.0.0.1:1/off", "mode": "off"},
}


async def test_each_event_gets_one_delivery_per_active_destination(
    make_client: Any, tmp_path: Path
) -> None:
    client = await make_client(make_config(tmp_path, destinations=DESTINATIONS))
    batch = {"events": [purchase("p1"), purchase("p2", event="add_to_cart")]}
    assert (await client.post("/v1/events", json=batch, headers=auth())).status == 200
    assert await processor_of(client).run_until_idle() == 2
    store = store_of(client)
    events = await store.events_for("web", ["p1", "p2"])
    assert [(e.event_id, e.name, e.status) for e in events] == [
        ("p1", "purchase", "accepted"), ("p2", "add_to_cart", "accepted"),
    ]
    for stored in events:
        assert await store.deliveries_for(stored.id) == [
            ("hook_live", "pending"), ("hook_observe", "observed"),
        ]
    assert await store.cursor(CURSOR) == events[-1].inbox_seq


async def test_processor_resumes_from_its_cursor(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    store = SQLiteStore(path)
    await store.open()
    payload = msgspec.json.encode(purchase("r1"))
    await store.append_inbox([InboxRow(source="web", message_id="r1", kind="native",
                                       received_at=1.0, payload=payload)])
    assert await Processor(store, Pipeline(parse_config({}, Path(".")))).run_until_idle() == 1
    await store.append_inbox([InboxRow(source="web", message_id="r2", kind="native",
                                       received_at=2.0, payload=payload)])
    await store.close()

    reopened = SQLiteStore(path)
    await reopened.open()
    processor = Processor(reopened, Pipeline(parse_config({}, Path("."))))
    assert await processor.run_until_idle() == 1  # only r2 is new
    assert [e.event_id for e in await reopened.events_for("web", ["r1", "r2"])] == ["r1", "r2"]
    counts = await reopened.counts()
    assert counts["events"] == 2 and counts["deliveries"] == 0
    await reopened.close()


async def test_undecodable_record_is_kept_as_invalid_and_does_not_block(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "db.sqlite3")
    await store.open()
    await store.append_inbox([
        InboxRow(source="web", message_id="bad", kind="martian", received_at=1.0, payload=b"?"),
        InboxRow(source="web", message_id="good", kind="native", received_at=1.0,
                 payload=msgspec.json.encode(purchase("good"))),
    ])
    assert await Processor(store, Pipeline(parse_config({}, Path(".")))).run_until_idle() == 2
    bad, good = await store.events_for("web", ["bad", "good"])
    assert bad.status == "invalid" and bad.reason is not None and "martian" in bad.reason
    assert good.status == "accepted"
    assert good.body is not None
    assert msgspec.json.decode(good.body, type=Event).value == 129.9
    await store.close()


async def test_running_processor_wakes_on_commit_without_polling(
    make_client: Any, tmp_path: Path
) -> None:
    client = await make_client()
    processor = processor_of(client)
    processor.start()
    try:
        store = store_of(client)
        # Idle: blocked on its wake-up event, not looping.
        await asyncio.sleep(0)
        assert not processor._wake.is_set()
        done = asyncio.get_running_loop().create_future()

        original = store.commit_processed

        async def observed(*args: Any, **kwargs: Any) -> None:
            await original(*args, **kwargs)
            if not done.done():
                done.set_result(None)

        store.commit_processed = observed  # type: ignore[method-assign]
        assert (await client.post("/v1/events", json=purchase("w1"), headers=auth())).status == 200
        await asyncio.wait_for(done, 5)
        assert [e.event_id for e in await store.events_for("web", ["w1"])] == ["w1"]
    finally:
        await processor.stop()


async def test_two_sources_sending_the_same_orders_are_named_once_in_the_log(
    make_client: Any, tmp_path: Path, caplog: Any
) -> None:
    config = make_config(tmp_path, sources={
        "web": {"type": "http_api", "token": "t-web"},
        "shop": {"type": "http_api", "token": "t-shop"},
    })
    client = await make_client(config)
    for token in ("t-web", "t-shop"):
        batch = {"events": [purchase(f"{token}-{n}", order_id=str(n)) for n in (1, 2)]}
        assert (await client.post("/v1/events", json=batch, headers=auth(token))).status == 200
    with caplog.at_level("WARNING", logger="tracklayerd.processor"):
        await processor_of(client).run_until_idle()
    warnings = [r.getMessage() for r in caplog.records if r.name == "tracklayerd.processor"]
    assert warnings == [
        "sources web and shop both send purchase events: the repeats are kept as duplicates "
        "and delivered once; decide which route owns them (docs/dedup.md)"]
    overlaps = await store_of(client).dedup_overlaps()
    assert [(o.first_source, o.duplicate_source, o.event, o.count) for o in overlaps] == [
        ("web", "shop", "purchase", 2)]
