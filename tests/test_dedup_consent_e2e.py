"""Deduplication and consent end to end: real ingest routes, the real processor and scheduler,
a real SQLite file, and fake platforms on port 0 (docs/dedup.md, docs/consent.md).

Every claim is checked where the user would see it: what the fake platform received, and
the status, reason and consent decision stored with each event and delivery.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import re
import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from aiohttp.test_utils import TestClient
from click.testing import CliRunner, Result
from segment.analytics.client import Client as SegmentClient

from tests.conftest import ClientFactory, auth, make_config, processor_of, store_of
from tests.fakes.meta import FakeMeta
from tests.fakes.webhook import FakeReceiver
from tests.server import ServerProcess
from tracklayerd.app import SCHEDULER
from tracklayerd.cli import cli
from tracklayerd.config import Config, load_config
from tracklayerd.delivery_tools import inbox_record
from tracklayerd.processor import Pipeline, Processor
from tracklayerd.store.base import ExplicitIdShare, InboxRow, Overlap
from tracklayerd.store.sqlite import SQLiteStore

META_TOKEN = "meta-token-e2e"
PIXEL = "1234567890"
WRITE_KEY = "wk-e2e-1"
HOOK_SECRET = "whsec-e2e-1"
WEB_TOKEN = "web-token-e2e"
APP_TOKEN = "app-token-e2e"
EMAIL = "ada@example.com"
PHONE = "+1 415 555 0100"
IP = "203.0.113.9"
DAY = 86400.0
SEVEN_DAYS = 7 * DAY
DUPLICATE_REASON = re.compile(
    r"duplicate of event #(\d+) from source (\S+) \((\w+), (order|event id) (\S+), "
    r"first received \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC\)")


# The CLI runs in these tests and takes over logging (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("restore_logging")


# --- inputs ------------------------------------------------------------------------------


def iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat().replace("+00:00", "Z")


def segment_context(**extra: Any) -> dict[str, Any]:
    # A server library: the request's address is not the shopper's, context.ip is.
    return {"traits": {"email": EMAIL, "phone": PHONE}, "ip": IP,
            "userAgent": "Mozilla/5.0 (X11; Linux x86_64)",
            "page": {"url": "https://shop.example/thanks"},
            "library": {"name": "analytics-python", "version": "2.3.0"}, **extra}


def order_completed(message_id: str, order_id: str = "1001", *,
                    context: dict[str, Any] | None = None, **properties: Any) -> dict[str, Any]:
    """A Segment track call for an order, as an SDK or Segment's webhook sends it."""
    props: dict[str, Any] = {"order_id": order_id, "revenue": 59.9, "currency": "EUR",
                             "products": [{"product_id": "sku-1", "price": 59.9,
                                           "quantity": 1}], **properties}
    return {"type": "track", "event": "Order Completed", "userId": "user-1",
            "messageId": message_id, "timestamp": iso(datetime.now(UTC) - timedelta(minutes=5)),
            "properties": props, "context": segment_context() if context is None else context}


def lead(event_id: str) -> dict[str, Any]:
    return {"event": "lead", "event_id": event_id,
            "timestamp": iso(datetime.now(UTC) - timedelta(minutes=5)),
            "user": {"email": EMAIL, "phone": PHONE},
            "context": {"ip": IP, "user_agent": "Mozilla/5.0",
                        "page_url": "https://shop.example/contact"}}


def native_purchase(event_id: str, order_id: str) -> dict[str, Any]:
    return {**lead(event_id), "event": "purchase", "order_id": order_id, "value": 129.9,
            "currency": "USD"}


def basic(key: str = WRITE_KEY) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


def signed(message: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
    """A Segment Webhooks destination request: X-Signature is HMAC-SHA1 of the body."""
    body = json.dumps(message, separators=(",", ":")).encode()
    signature = hmac.new(HOOK_SECRET.encode(), body, hashlib.sha1).hexdigest()
    return body, {"Content-Type": "application/json", "X-Signature": signature}


# --- the rig -----------------------------------------------------------------------------


async def start_meta(aiohttp_server: Any) -> tuple[FakeMeta, str]:
    fake = FakeMeta(access_token=META_TOKEN)
    server = await aiohttp_server(fake.app)
    return fake, str(server.make_url(f"/v24.0/{PIXEL}/events"))


async def start_receiver(aiohttp_server: Any) -> tuple[FakeReceiver, str]:
    fake = FakeReceiver()
    server = await aiohttp_server(fake.app)
    return fake, str(server.make_url("/hook"))


def meta(endpoint: str, **options: Any) -> dict[str, Any]:
    return {"type": "meta_capi", "pixel_id": PIXEL, "access_token": META_TOKEN,
            "endpoint": endpoint, **options}


SEGMENT_SOURCES = {
    "shop": {"type": "segment", "write_key": WRITE_KEY},
    "hook": {"type": "segment_webhook", "shared_secret": HOOK_SECRET},
}
NATIVE_SOURCES = {
    "web": {"type": "http_api", "token": WEB_TOKEN},
    "app": {"type": "http_api", "token": APP_TOKEN},
}


async def track(client: TestClient[Any, Any], message: dict[str, Any]) -> None:
    response = await client.post("/v1/track", json=message, headers=basic())
    assert response.status == 200, await response.text()


async def webhook(client: TestClient[Any, Any], message: dict[str, Any]) -> None:
    body, headers = signed(message)
    response = await client.post("/ingest/hook", data=body, headers=headers)
    assert response.status == 200, await response.text()


async def native(client: TestClient[Any, Any], token: str, *events: dict[str, Any]) -> None:
    response = await client.post("/v1/events", json={"events": list(events)},
                                 headers=auth(token))
    assert response.status == 200, await response.text()


async def run(client: TestClient[Any, Any]) -> None:
    """Process the inbox, then send everything due."""
    await processor_of(client).run_until_idle()
    await client.app[SCHEDULER].run_until_idle()


async def one(store: SQLiteStore, source: str, event_id: str) -> Any:
    (stored,) = await store.events_for(source, [event_id])
    return stored


async def delivery(store: SQLiteStore, source: str, event_id: str, destination: str) -> Any:
    stored = await one(store, source, event_id)
    records = {r.destination: r for r in await store.delivery_records(stored.id)}
    return records[destination]


async def received_at(store: SQLiteStore, event_row: int) -> float:
    record = await store.inbox_record(event_row)
    assert record is not None
    return record.received_at


def purchases_of(fake: FakeMeta, order_id: str) -> list[dict[str, Any]]:
    return [e for e in fake.events
            if e["event_name"] == "Purchase" and e["custom_data"]["order_id"] == order_id]


def as_row(config: Config, source_id: str, message: dict[str, Any], at: float) -> InboxRow:
    """The inbox row ingest stores for `message` on `source_id`, received at `at`: a copy that
    arrives days later, without waiting days."""
    record = inbox_record(source_id, config.sources[source_id],
                          json.dumps(message).encode(), at)
    return InboxRow(**{name: getattr(record, name) for name in InboxRow.__struct_fields__})


def invoke(*args: str) -> Result:
    result = CliRunner().invoke(cli, list(args))
    # Exits are expected; anything else escaping the command is a bug (a traceback).
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result


# --- 1. one order from two routes --------------------------------------------------------


async def test_the_same_order_from_the_sdk_and_the_segment_webhook_reaches_meta_once(
    make_client: ClientFactory, aiohttp_server: Any, tmp_path: Path
) -> None:
    fake, endpoint = await start_meta(aiohttp_server)
    config = make_config(tmp_path, sources=SEGMENT_SOURCES,
                         destinations={"meta": meta(endpoint)})
    client = await make_client(config)
    store = store_of(client)

    await track(client, order_completed("sdk-1001"))
    await track(client, order_completed("sdk-1001"))  # the SDK's retry: stored once
    await run(client)
    # Segment forwards the same order later, under its own message id.
    await webhook(client, order_completed("hook-1001"))
    await track(client, order_completed("sdk-1002", order_id="1002"))
    await run(client)

    assert await store.inbox_message_ids("shop") == ["sdk-1001", "sdk-1002"]
    assert [e["event_id"] for e in purchases_of(fake, "1001")] == ["sdk-1001"]
    assert [e["event_id"] for e in purchases_of(fake, "1002")] == ["sdk-1002"]
    first = await one(store, "shop", "sdk-1001")
    duplicate = await one(store, "hook", "hook-1001")
    assert duplicate.status == "duplicate"
    match = DUPLICATE_REASON.fullmatch(duplicate.reason)
    assert match is not None, duplicate.reason
    assert match.groups() == (str(first.id), "shop", "purchase", "order", "1001")
    assert await store.deliveries_for(duplicate.id) == []
    assert (await one(store, "shop", "sdk-1002")).status == "accepted"
    assert await store.dedup_overlaps() == [Overlap("shop", "hook", "purchase", 1)]

    # The same order once the 7-day window has passed is a new purchase (a re-order under
    # a recycled order number, say): delivered again.
    late = await received_at(store, first.id) + SEVEN_DAYS + 60
    await store.append_inbox([as_row(config, "hook", order_completed("hook-1001-late"), late)])
    await run(client)
    assert (await one(store, "hook", "hook-1001-late")).status == "accepted"
    assert [e["event_id"] for e in purchases_of(fake, "1001")] == ["sdk-1001", "hook-1001-late"]
    assert (await delivery(store, "hook", "hook-1001-late", "meta")).status == "delivered"
    assert await store.dedup_overlaps() == [Overlap("shop", "hook", "purchase", 1)]


SERVE_CONFIG = """
[storage]
path = "tl.sqlite3"

[sources.shop]
type = "segment"
write_key = "{write_key}"

[sources.hook]
type = "segment_webhook"
shared_secret = "{secret}"

[destinations.meta]
type = "meta_capi"
pixel_id = "{pixel}"
access_token = "{token}"
endpoint = "{endpoint}"
batch_linger_secs = 0
"""


async def test_segment_sdk_and_webhook_against_tracklayerd_serve_send_one_purchase(
    aiohttp_server: Any, tmp_path: Path
) -> None:
    fake, endpoint = await start_meta(aiohttp_server)
    config_path = tmp_path / "tracklayerd.toml"
    config_path.write_text(SERVE_CONFIG.format(write_key=WRITE_KEY, secret=HOOK_SECRET,
                                               pixel=PIXEL, token=META_TOKEN,
                                               endpoint=endpoint))
    server = await asyncio.to_thread(ServerProcess(tmp_path / "data", config_path).start)
    try:
        message = order_completed("unused")
        sdk = SegmentClient(WRITE_KEY, host=server.url, max_retries=2)

        def send() -> None:
            sdk.track("user-1", "Order Completed", message["properties"],
                      context=segment_context(), message_id="sdk-1001")
            sdk.flush()

        await asyncio.to_thread(send)
        async with asyncio.timeout(20):
            await fake.accepted_any.wait()
        body, headers = signed(order_completed("hook-1001"))
        async with aiohttp.ClientSession() as session, session.post(
                f"{server.url}/ingest/hook", data=body, headers=headers) as response:
            assert response.status == 200
        server.signal(signal.SIGTERM)
        assert await asyncio.to_thread(server.wait) == 0
    finally:
        server.stop()

    config = load_config(config_path)
    store = SQLiteStore(tmp_path / "data" / "tl.sqlite3")
    await store.open()
    try:
        # Whatever the server had not reached yet: the decision is the store's, not timing's.
        await Processor(store, Pipeline(config)).run_until_idle()
        first = await one(store, "shop", "sdk-1001")
        duplicate = await one(store, "hook", "hook-1001")
        assert first.status == "accepted" and duplicate.status == "duplicate"
        assert duplicate.reason is not None
        assert duplicate.reason.startswith(f"duplicate of event #{first.id} from source shop")
        assert await store.deliveries_for(duplicate.id) == []
        assert await store.deliveries_for(first.id) == [("meta", "delivered")]
        assert await store.dedup_overlaps() == [Overlap("shop", "hook", "purchase", 1)]
    finally:
        await store.close()
    assert [e["event_id"] for e in purchases_of(fake, "1001")] == ["sdk-1001"]
    assert len(fake.events) == 1


# --- 2. one explicit event id from two native sources ------------------------------------


async def test_the_same_explicit_event_id_from_two_native_sources_is_delivered_once(
    make_client: ClientFactory, aiohttp_server: Any, tmp_path: Path
) -> None:
    fake, endpoint = await start_meta(aiohttp_server)
    client = await make_client(make_config(tmp_path, sources=NATIVE_SOURCES,
                                           destinations={"meta": meta(endpoint)}))
    store = store_of(client)
    await native(client, WEB_TOKEN, lead("lead-42"))
    await native(client, WEB_TOKEN, lead("lead-42"))  # a retry: the ingest layer
    await native(client, APP_TOKEN, lead("lead-42"))  # another route: business dedup
    await run(client)

    assert await store.inbox_message_ids("web") == ["lead-42"]
    assert await store.inbox_message_ids("app") == ["lead-42"]
    assert fake.event_ids == ["lead-42"]
    assert [e["event_name"] for e in fake.events] == ["Lead"]
    first = await one(store, "web", "lead-42")
    duplicate = await one(store, "app", "lead-42")
    match = DUPLICATE_REASON.fullmatch(duplicate.reason or "")
    assert match is not None, duplicate.reason
    assert match.groups() == (str(first.id), "web", "lead", "event id", "lead-42")
    assert await store.deliveries_for(duplicate.id) == []
    assert await store.dedup_overlaps() == [Overlap("web", "app", "lead", 1)]


# --- 3. the delivery ledger and replay ---------------------------------------------------


def write_config(tmp_path: Path, endpoint: str) -> Path:
    """A config file for the app and the CLI alike: both open the same store."""
    path = tmp_path / "tracklayerd.toml"
    path.write_text(
        f'[storage]\npath = "{tmp_path / "tl.sqlite3"}"\n\n'
        f'[sources.web]\ntype = "http_api"\ntoken = "{WEB_TOKEN}"\n\n'
        f'[sources.app]\ntype = "http_api"\ntoken = "{APP_TOKEN}"\n\n'
        f'[destinations.meta]\ntype = "meta_capi"\npixel_id = "{PIXEL}"\n'
        f'access_token = "{META_TOKEN}"\nendpoint = "{endpoint}"\n')
    return path


async def replay(path: Path, *args: str) -> Result:
    # The CLI runs its own event loop: off this one, which serves the fake.
    return await asyncio.to_thread(invoke, "replay", "--config", str(path),
                                   "--destination", "meta", "--yes", *args)


async def test_replaying_delivered_events_sends_nothing_new_unless_forced(
    make_client: ClientFactory, aiohttp_server: Any, tmp_path: Path
) -> None:
    fake, endpoint = await start_meta(aiohttp_server)
    path = write_config(tmp_path, endpoint)
    client = await make_client(load_config(path))
    store = store_of(client)
    await native(client, WEB_TOKEN, native_purchase("ord-7", "7"))
    await run(client)
    assert fake.event_ids == ["ord-7"]

    result = await replay(path, "--status", "delivered")
    assert result.exit_code == 2 and "--status delivered needs --force" in result.stderr
    result = await replay(path)  # the default, dead: there is none
    assert result.exit_code == 0 and "nothing to re-queue" in result.stdout
    assert (await delivery(store, "web", "ord-7", "meta")).status == "delivered"
    await client.app[SCHEDULER].run_until_idle()
    assert fake.event_ids == ["ord-7"]

    result = await replay(path, "--status", "delivered", "--force")
    assert result.exit_code == 0, result.output
    assert "re-queued 1 delivery of meta" in result.stdout
    assert (await delivery(store, "web", "ord-7", "meta")).status == "pending"
    await client.app[SCHEDULER].run_until_idle()
    # The same event id (and the same stored bytes): Meta can deduplicate it.
    assert fake.event_ids == ["ord-7", "ord-7"]
    assert fake.events[0] == fake.events[1]


async def test_a_dead_delivery_whose_event_id_was_delivered_since_needs_force(
    make_client: ClientFactory, aiohttp_server: Any, tmp_path: Path
) -> None:
    fake, endpoint = await start_meta(aiohttp_server)
    path = write_config(tmp_path, endpoint)
    client = await make_client(load_config(path))
    store = store_of(client)
    fake.fail_next(100, message="Invalid parameter")  # refused as a batch of one: dead
    await native(client, WEB_TOKEN, native_purchase("pay-1", "8"))
    await run(client)
    assert (await delivery(store, "web", "pay-1", "meta")).status == "dead"
    # A second route sends another order under the same event id; it goes out.
    await native(client, APP_TOKEN, native_purchase("pay-1", "9"))
    await run(client)
    assert (await delivery(store, "app", "pay-1", "meta")).status == "delivered"
    assert fake.event_ids == ["pay-1"]

    result = await replay(path)
    assert result.exit_code == 0 and "nothing to re-queue" in result.stdout
    assert (await delivery(store, "web", "pay-1", "meta")).status == "dead"
    result = await replay(path, "--force")
    assert result.exit_code == 0 and "re-queued 1 delivery of meta" in result.stdout
    await client.app[SCHEDULER].run_until_idle()
    assert (await delivery(store, "web", "pay-1", "meta")).status == "delivered"
    assert [e["custom_data"]["order_id"] for e in fake.events] == ["9", "8"]


async def test_an_event_id_delivered_before_the_window_is_suppressed_by_the_ledger(
    make_client: ClientFactory, aiohttp_server: Any, tmp_path: Path
) -> None:
    fake, endpoint = await start_meta(aiohttp_server)
    path = write_config(tmp_path, endpoint)
    config = load_config(path)
    client = await make_client(config)
    store = store_of(client)
    await native(client, WEB_TOKEN, lead("lead-9"))
    await run(client)
    first = await one(store, "web", "lead-9")
    # Past the 48-hour event window business dedup lets it through; the ledger does not.
    later = await received_at(store, first.id) + 49 * 3600
    await store.append_inbox([as_row(config, "app", lead("lead-9"), later)])
    await run(client)

    again = await one(store, "app", "lead-9")
    assert again.status == "accepted"
    record = await delivery(store, "app", "lead-9", "meta")
    assert record.status == "suppressed"
    assert record.reason == (f"event id already delivered to meta with event #{first.id} "
                             "(delivery ledger); replay --force to send again")
    assert fake.event_ids == ["lead-9"]

    # What the reason says works: the stored payload goes out, under the same event id.
    result = await replay(path, "--status", "suppressed", "--force")
    assert result.exit_code == 0 and "re-queued 1 delivery of meta" in result.stdout
    await client.app[SCHEDULER].run_until_idle()
    assert fake.event_ids == ["lead-9", "lead-9"]


# --- 4. consent through the app ----------------------------------------------------------


def consent_of(record: Any) -> dict[str, Any]:
    assert record.consent is not None
    decision: dict[str, Any] = json.loads(record.consent)
    return decision


async def test_consent_decides_each_destination_and_is_stored_with_the_delivery(
    make_client: ClientFactory, aiohttp_server: Any, tmp_path: Path
) -> None:
    gated, gated_url = await start_meta(aiohttp_server)
    ads, ads_url = await start_meta(aiohttp_server)
    warehouse, warehouse_url = await start_receiver(aiohttp_server)
    client = await make_client(make_config(tmp_path, sources=SEGMENT_SOURCES, destinations={
        "meta": meta(gated_url, consent=["marketing"]),
        "ads": meta(ads_url),  # an ad platform at its defaults: gated by region
        "warehouse": {"type": "webhook", "endpoint": warehouse_url,
                      "consent": ["marketing"], "consent_denied": "limited"},
    }))
    store = store_of(client)
    await track(client, order_completed("denied", "2001", context=segment_context(
        consent={"categoryPreferences": {"marketing": False}}, location={"country": "US"})))
    await track(client, order_completed("fr", "2002", context=segment_context(
        location={"country": "FR"})))
    await track(client, order_completed("us", "2003", context=segment_context(
        location={"country": "US"})))
    await run(client)

    denied = await delivery(store, "shop", "denied", "meta")
    assert (denied.status, denied.reason) == ("suppressed", (
        "consent: the consent's categories deny marketing; region US (from context.location) "
        "[category_denied:marketing]"))
    assert consent_of(denied) | {"reason": ""} == {
        "outcome": "suppressed", "rule": "category_denied:marketing", "reason": "",
        "region": "US", "region_source": "location"}
    assert gated.event_ids == ["us"]  # nothing of the denied or the FR order was sent

    # Limited: the conversion without the person.
    by_id = {event["event_id"]: event for event in warehouse.events}
    assert sorted(by_id) == ["denied", "fr", "us"]
    for event_id, order_id in (("denied", "2001"), ("fr", "2002")):
        sent = by_id[event_id]
        assert sent.get("user", {}) == {}
        assert not {"ip", "user_agent"} & set(sent.get("context", {}))
        as_sent = json.dumps(sent)
        for personal in (EMAIL, PHONE, "4155550100", IP):
            assert personal not in as_sent
        assert (sent["order_id"], sent["value"], sent["currency"]) == (order_id, 59.9, "EUR")
        record = await delivery(store, "shop", event_id, "warehouse")
        assert record.status == "delivered" and consent_of(record)["outcome"] == "limited"
    assert by_id["us"]["user"]["email"] == EMAIL  # allowed: sent as stored

    # The ad destination at its defaults: no consent from an opt-in region is a no.
    fr = await delivery(store, "shop", "fr", "ads")
    assert fr.status == "suppressed"
    assert fr.reason is not None and fr.reason.endswith("[no_consent_opt_in_region]")
    assert consent_of(fr)["region"] == "FR"
    us = await delivery(store, "shop", "us", "ads")
    assert us.status == "delivered"
    assert (consent_of(us)["rule"], consent_of(us)["region"]) == (
        "no_consent_default_allow", "US")
    # A stated consent naming no category of its own is honoured as stated.
    assert consent_of(await delivery(store, "shop", "denied", "ads"))["rule"] == "consent_stated"
    assert sorted(ads.event_ids) == ["denied", "us"]


# --- 5. limited data use ----------------------------------------------------------------


async def test_ldu_payload_matches_metas_documented_form(
    make_client: ClientFactory, aiohttp_server: Any, tmp_path: Path
) -> None:
    fake, endpoint = await start_meta(aiohttp_server)
    client = await make_client(make_config(
        tmp_path, sources=SEGMENT_SOURCES, consent={"ldu_states": ["CA"]},
        destinations={"meta": meta(endpoint)}))
    store = store_of(client)
    places: dict[str, dict[str, Any]] = {
        "ca": segment_context(location={"country": "US", "region": "CA"}),
        "tx": segment_context(location={"country": "US", "region": "TX"}),
        "us": segment_context(location={"country": "US"}),
        "address": segment_context(traits={"email": EMAIL, "address": {
            "country": "United States", "state": "California"}}),
    }
    for n, (message_id, context) in enumerate(places.items()):
        await track(client, order_completed(message_id, f"30{n}", context=context))
    await run(client)

    sent = {event["event_id"]: event for event in fake.events}
    assert sorted(sent) == sorted(places)
    ldu = ("data_processing_options", "data_processing_options_country",
           "data_processing_options_state")
    options = {event_id: tuple(event.get(key) for key in ldu)
               for event_id, event in sent.items()}
    assert options == {
        "ca": (["LDU"], 1, 1000),
        "tx": (None, None, None),
        "us": (["LDU"], 0, 0),  # a US user, state unknown: Meta geolocates
        "address": (["LDU"], 1, 1000),
    }
    decision = consent_of(await delivery(store, "shop", "ca", "meta"))
    assert (decision["ldu"], decision["ldu_state"], decision["region"]) == (True, "CA", "US-CA")
    assert consent_of(await delivery(store, "shop", "address", "meta"))["region_source"] == (
        "address")
    assert "ldu" not in consent_of(await delivery(store, "shop", "tx", "meta"))


# --- 6. pixel deduplication readiness ----------------------------------------------------


async def test_explicit_event_id_share_per_source_and_the_id_meta_gets(
    make_client: ClientFactory, aiohttp_server: Any, tmp_path: Path
) -> None:
    fake, endpoint = await start_meta(aiohttp_server)
    client = await make_client(make_config(tmp_path, sources=SEGMENT_SOURCES,
                                           destinations={"meta": meta(endpoint)}))
    store = store_of(client)
    await track(client, order_completed("m-1", "4001", event_id="pixel-4001"))
    await track(client, order_completed("m-2", "4002", eventId="pixel-4002"))
    await track(client, order_completed("m-3", "4003"))
    await run(client)

    assert await store.explicit_id_share() == [ExplicitIdShare("shop", "purchase", 3, 2)]
    # The id the pixel must send as eventID: the explicit one, else the messageId.
    assert [(e["custom_data"]["order_id"], e["event_id"]) for e in fake.events] == [
        ("4001", "pixel-4001"), ("4002", "pixel-4002"), ("4003", "m-3")]
    body = msgspec.json.decode((await one(store, "shop", "pixel-4001")).body)
    assert (body["event_id"], body["message_id"], body["explicit_event_id"]) == (
        "pixel-4001", "m-1", True)
