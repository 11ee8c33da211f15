"""The status page and its JSON twin, computed from a store the real pipeline filled.

Events go in through the ingest API, the processor and the scheduler deliver them to a fake
Meta that fails on cue, and the page must show exactly what happened: counts per source and
destination, the retry, the dead letter with a link to its trace, Meta's answers verbatim,
consent suppression, and all of it again after a restart (it reads SQLite, not memory).
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import msgspec
from aiohttp.test_utils import TestClient

from tests.conftest import auth, make_config, processor_of, purchase, store_of
from tests.fakes.meta import FakeMeta
from tracklayerd.app import SCHEDULER, create_app
from tracklayerd.config import Config

META_TOKEN = "meta-token-status"
PIXEL = "1234567890"
SHOP_TOKEN = "shop-token-1"
ADMIN = "admin-status-1"
WARNING = "Event parameter fbc is formatted incorrectly (fake Meta warning)"
EMAIL = "ada@example.com"


class FakeClock:
    def __init__(self) -> None:
        self.t = time.time()

    def now(self) -> float:
        return self.t


def config(tmp_path: Path, endpoint: str, **server: Any) -> Config:
    return make_config(
        tmp_path,
        sources={"web": {"type": "http_api", "token": "test-token-1"},
                 "shop": {"type": "http_api", "token": SHOP_TOKEN, "allow": ["purchase"]}},
        consent={"ad_categories": ["marketing"]},
        destinations={
            "meta": {"type": "meta_capi", "pixel_id": PIXEL, "access_token": META_TOKEN,
                     "endpoint": endpoint, "backoff_base_secs": 5, "breaker_failures": 100},
            "hook": {"type": "webhook", "endpoint": "http://127.0.0.1:9/in", "mode": "observe"},
        },
        server=server,
    )


def event(event_id: str | None, name: str = "purchase", **fields: Any) -> dict[str, Any]:
    body = purchase(event_id or "unused", timestamp=time.time() - 60, **fields)
    body["event"] = name
    if event_id is None:
        del body["event_id"]  # the sender gives none: tracklayerd derives one
    return body


async def post(client: TestClient[Any, Any], body: Any, token: str = "test-token-1") -> None:
    resp = await client.post("/v1/events", json=body, headers=auth(token))
    assert resp.status == 200, await resp.text()


async def run(client: TestClient[Any, Any]) -> None:
    await processor_of(client).run_until_idle()
    await client.app[SCHEDULER].run_until_idle()


async def fill(client: TestClient[Any, Any], fake: FakeMeta, clock: FakeClock) -> None:
    """What the tests below expect, made by the real ingest, processor and scheduler."""
    # Meta is down for the first request (all retry), then refuses any batch holding
    # evt-bad (split until it is alone: the dead letter).
    fake.fail_next(2, status=500, is_transient=True, message="(#2) Service temporarily unavailable")
    fake.fail_when_event_id("evt-bad", 100, 2804001, message="Invalid parameter")
    await post(client, {"events": [
        event("evt-1", order_id="1001"),
        event("evt-2", order_id="1002"),
        event("evt-bad", order_id="1003"),
        event(None, "lead"),
        # A British customer without a consent statement: suppressed for Meta.
        event("evt-gb", order_id="1004", user={"email": EMAIL, "country": "GB"}),
    ]})
    # Not in shop's allowlist, and the same order as evt-1 by another route.
    await post(client, {"events": [event("shop-pv", "page_view"),
                                   event("shop-1", order_id="1001")]}, SHOP_TOKEN)
    resp = await client.post("/v1/events", data=b'{"event": "purchase"',
                             headers={**auth(), "Content-Type": "application/json"})
    assert resp.status == 400
    await run(client)
    clock.t += 120
    await client.app[SCHEDULER].run_until_idle()
    # A later event, accepted with a warning in Meta's answer.
    fake.respond_next(200, {"events_received": 1, "messages": [WARNING],
                            "fbtrace_id": "AwarnTrace1"})
    await post(client, event("evt-late", order_id="1005"))
    await run(client)


async def start(aiohttp_client: Any, aiohttp_server: Any, tmp_path: Path, **server: Any
                ) -> tuple[TestClient[Any, Any], FakeMeta, FakeClock]:
    fake = FakeMeta(access_token=META_TOKEN)
    meta = await aiohttp_server(fake.app)
    clock = FakeClock()
    app = create_app(config(tmp_path, str(meta.make_url(f"/v24.0/{PIXEL}/events")), **server),
                     tmp_path, start_processor=False, clock=clock)
    client: TestClient[Any, Any] = await aiohttp_client(app)
    return client, fake, clock


async def status_json(client: TestClient[Any, Any], **headers: str) -> dict[str, Any]:
    resp = await client.get("/-/status.json", headers=headers)
    assert resp.status == 200, await resp.text()
    assert resp.content_type == "application/json"
    assert resp.headers["Cache-Control"] == "no-store"
    document: dict[str, Any] = msgspec.json.decode(await resp.read())
    return document


def by_id(items: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {item["id"]: item for item in items}


async def test_status_shows_what_the_pipeline_did_per_source_and_destination(
    aiohttp_client: Any, aiohttp_server: Any, tmp_path: Path
) -> None:
    client, fake, clock = await start(aiohttp_client, aiohttp_server, tmp_path)
    await fill(client, fake, clock)
    store = store_of(client)
    bad = (await store.events_for("web", ["evt-bad"]))[0]

    doc = await status_json(client)

    assert doc["window"]["hours"] == 24 and len(doc["window"]["hour_starts"]) == 24
    sources = by_id(doc["sources"])
    web, shop = sources["web"], sources["shop"]
    assert (web["type"], web["received"], web["accepted"], web["rejected"]) == (
        "http_api", 6, 6, 1)
    assert sum(web["hourly"]["received"]) == 6 and sum(web["hourly"]["rejected"]) == 1
    [reject] = web["rejects"]
    assert reject["count"] == 1 and reject["reason"].startswith("malformed_json: malformed JSON")
    # Five purchases and a lead are conversions; only the lead came without an event id.
    assert web["conversions"]["accepted"] == 6
    assert web["conversions"]["without_event_id"] == 1
    assert web["conversions"]["share_without_event_id"] == round(1 / 6, 4)
    assert {c["event"]: c["without_event_id"] for c in web["conversions"]["by_event"]} == {
        "purchase": 0, "lead": 1}
    assert (shop["received"], shop["accepted"], shop["dropped"], shop["duplicate"]) == (2, 0, 1, 1)
    assert shop["dropped_events"] == [{"event": "page_view", "count": 1}]
    assert doc["dedup"]["duplicates"] == 1
    assert doc["dedup"]["overlaps"] == [
        {"first_source": "web", "duplicate_source": "shop", "event": "purchase", "count": 1}]

    destinations = by_id(doc["destinations"])
    meta, hook = destinations["meta"], destinations["hook"]
    assert meta["mode"] == "live" and hook["mode"] == "observe"
    assert meta["last_24h"] == {"delivered": 4, "dead": 1, "suppressed": 1, "observed": 0}
    assert meta["totals"] == {"delivered": 4, "dead": 1, "suppressed": 1, "observed": 0,
                              "pending": 0, "retrying": 0, "in_flight": 0}
    assert meta["queue"] == {"pending": 0, "retrying": 0, "in_flight": 0,
                             "oldest_created_at": None}
    assert meta["acceptance_rate"] == 0.8
    assert sum(meta["hourly"]["delivered"]) == 4 and sum(meta["hourly"]["dead"]) == 1
    # The 500, then the whole-batch 400s of the split down to evt-bad alone.
    assert sum(meta["hourly"]["failed_requests"]) >= 3
    assert meta["latency_secs"]["sample"] == 4
    assert meta["latency_secs"]["p95"] >= 120  # the retried ones waited for the backoff
    assert meta["circuit"]["state"] == "closed"
    assert meta["health"] == "degraded"  # 80 % accepted
    assert any("acceptance 80.0%" in r for r in meta["health_reasons"])
    assert meta["consent"] == {"suppressed": 1,
                               "by_rule": [{"rule": "no_consent_opt_in_region", "count": 1}]}
    assert meta["dedup"] == {"ledger_suppressed": 0}
    assert meta["match_quality"]["deliveries"] == 6
    assert sum(meta["match_quality"]["bands"].values()) == 6
    assert hook["last_24h"]["observed"] == 6 and hook["health"] == "observing"
    assert hook["circuit"] is None and hook["dead_letters"] == [] and hook["errors"] == []

    [dead] = meta["dead_letters"]
    assert dead["event"] == bad.id and dead["trace"] == f"/-/events/{bad.id}"
    assert (dead["source"], dead["name"]) == ("web", "purchase")
    assert dead["reason"].startswith("Meta 100/2804001: Invalid parameter")

    # Meta's answers verbatim, as the attempts log holds them.
    answers = {a.response for r in await store.delivery_records(bad.id) for a in r.history
               if a.response}
    errors = meta["errors"]
    assert errors[0]["http_status"] == 400 and errors[0]["response"] in answers
    error = msgspec.json.decode(errors[0]["response"])["error"]
    assert (error["message"], error["code"], error["error_subcode"]) == (
        "Invalid parameter", 100, 2804001)
    assert error["fbtrace_id"]
    assert errors[-1]["http_status"] == 500
    assert "Service temporarily unavailable" in errors[-1]["response"]
    [warning] = meta["warnings"]
    assert warning["response"] == msgspec.json.encode(
        {"events_received": 1, "messages": [WARNING], "fbtrace_id": "AwarnTrace1"}).decode()
    assert meta["last_request"]["ok"] is True

    # The parallel-validation report's summary, over the latest events (all of them here).
    validation = doc["validation"]
    totals = {d["destination"]: d for d in validation["destinations"]}
    assert {k: totals["meta"][k] for k in (
        "arrived", "delivered", "observed", "consent_suppressed", "ledger_suppressed", "dead",
        "queued")} == {"arrived": 6, "delivered": 4, "observed": 0, "consent_suppressed": 1,
                       "ledger_suppressed": 0, "dead": 1, "queued": 0}
    assert totals["hook"]["observed"] == 6
    assert totals["meta"]["values"] == [{"currency": "USD", "events": 4, "value": 519.6}]
    events = {e["event"]: e for e in validation["events"]}
    assert events["purchase"]["duplicate"] == 1 and events["page_view"]["dropped"] == 1


async def test_status_html_renders_the_same_document_self_contained(
    aiohttp_client: Any, aiohttp_server: Any, tmp_path: Path
) -> None:
    client, fake, clock = await start(aiohttp_client, aiohttp_server, tmp_path)
    await fill(client, fake, clock)
    bad = (await store_of(client).events_for("web", ["evt-bad"]))[0]
    doc = await status_json(client)

    resp = await client.get("/-/status")
    assert resp.status == 200 and resp.content_type == "text/html"
    assert resp.headers["Content-Security-Policy"].startswith("default-src 'none'")
    page = await resp.text()
    for section in ("sources", "destinations", "dedup", "validation"):
        assert f'id="{section}"' in page
    assert 'id="destination-meta"' in page and 'id="source-shop"' in page
    assert f'<a href="/-/events/{bad.id}">#{bad.id}</a>' in page
    assert page.count('<svg class="spark"') == 4  # one per source and destination
    # Verbatim, HTML-escaped.
    assert doc["destinations"][0]["errors"][0]["response"].replace('"', "&quot;") in page
    assert WARNING in page and "no_consent_opt_in_region" in page
    assert "<script" not in page and "http://" not in page.replace(
        'xmlns="http://www.w3.org/2000/svg"', "")
    assert EMAIL not in page


async def test_status_is_right_after_a_restart(
    aiohttp_client: Any, aiohttp_server: Any, tmp_path: Path
) -> None:
    client, fake, clock = await start(aiohttp_client, aiohttp_server, tmp_path)
    await fill(client, fake, clock)
    before = await status_json(client)
    await client.close()

    # Meta is not reachable from the new process: nothing is sent, only read.
    again = create_app(config(tmp_path, "http://127.0.0.1:9/unused"), tmp_path,
                       start_processor=False, clock=clock)
    restarted: TestClient[Any, Any] = await aiohttp_client(again)
    after = await status_json(restarted)

    for key in ("sources", "dedup"):
        assert after[key] == before[key]
    for was, now in zip(before["destinations"], after["destinations"], strict=True):
        for key in ("last_24h", "totals", "queue", "hourly", "errors", "warnings",
                    "dead_letters", "consent", "match_quality", "latency_secs"):
            assert now[key] == was[key], key
    # Only the breaker is live state, and a new process starts closed.
    assert after["destinations"][0]["circuit"]["failures_in_a_row"] == 0


async def test_status_needs_the_admin_token_when_one_is_set(
    aiohttp_client: Any, aiohttp_server: Any, tmp_path: Path
) -> None:
    client, _, _ = await start(aiohttp_client, aiohttp_server, tmp_path, admin_token=ADMIN)
    for path in ("/-/status", "/-/status.json"):
        resp = await client.get(path)
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"].startswith("Basic")
        assert (await client.get(path, headers=auth("wrong"))).status == 401
        ok = await client.get(path, headers=auth(ADMIN))
        assert ok.status == 200


async def test_status_of_an_empty_store(make_client: Any, tmp_path: Path) -> None:
    client = await make_client(make_config(tmp_path))
    doc = await status_json(client)
    [web] = doc["sources"]
    assert web["received"] == 0 and web["conversions"]["share_without_event_id"] is None
    assert doc["destinations"] == []
    page = await (await client.get("/-/status")).text()
    assert "No destinations." in page
    assert doc["processing"] == {"backlog": 0, "oldest_unprocessed_at": None, "lag_secs": None}
    assert "The processor has processed every accepted event." in page


async def test_status_shows_the_backlog_ingest_left_for_the_processor(
    make_client: Any, tmp_path: Path
) -> None:
    client = await make_client(make_config(tmp_path))
    for i in range(2):
        assert (await client.post("/v1/events", json=purchase(f"p-{i}"),
                                  headers=auth())).status == 200
    processing = (await status_json(client))["processing"]
    assert processing["backlog"] == 2
    assert processing["oldest_unprocessed_at"] is not None and processing["lag_secs"] >= 0
    page = await (await client.get("/-/status")).text()
    assert "<b>2</b> accepted events wait for the processor" in page

    await processor_of(client).run_until_idle()
    assert (await status_json(client))["processing"]["backlog"] == 0


# -- the counters behind the page ----------------------------------------------------------------


def recount(path: Path) -> tuple[dict[Any, int], dict[Any, int], dict[Any, int]]:
    """(totals, delivery hours, event hours) by reading every row, for comparison with the
    counters the triggers keep."""
    conn = sqlite3.connect(path)
    try:
        totals = {(d, s): n for d, s, n in conn.execute(
            "SELECT destination, status, count(*) FROM deliveries GROUP BY 1, 2")}
        hours = {(h, d, s, r): n for h, d, s, r, n in conn.execute(
            "SELECT CAST(finished_at / 3600 AS INTEGER) * 3600, destination, status,"
            " CASE WHEN status = 'suppressed' AND json_extract(p.consent, '$.outcome') ="
            " 'suppressed' THEN json_extract(p.consent, '$.rule') ELSE '' END, count(*)"
            " FROM deliveries d LEFT JOIN delivery_details p ON p.id = d.id"
            " WHERE finished_at IS NOT NULL GROUP BY 1, 2, 3, 4")}
        events = {(h, src, s, n, x): c for h, src, s, n, x, c in conn.execute(
            "SELECT CAST(received_at / 3600 AS INTEGER) * 3600, source, status,"
            " coalesce(name, ''), coalesce(explicit_id, 0), count(*) FROM events"
            " GROUP BY 1, 2, 3, 4, 5")}
    finally:
        conn.close()
    return totals, hours, events


def counters(path: Path) -> tuple[dict[Any, int], dict[Any, int], dict[Any, int]]:
    conn = sqlite3.connect(path)
    try:
        totals = {(d, s): n for d, s, n in conn.execute(
            "SELECT destination, status, deliveries FROM status_delivery_totals"
            " WHERE deliveries != 0")}
        hours = {(h, d, s, r): n for h, d, s, r, n in conn.execute(
            "SELECT hour, destination, status, rule, deliveries FROM status_delivery_hours"
            " WHERE deliveries != 0")}
        events = {(h, src, s, n, x): c for h, src, s, n, x, c in conn.execute(
            "SELECT hour, source, status, name, explicit, events FROM status_event_hours"
            " WHERE events != 0")}
    finally:
        conn.close()
    return totals, hours, events


async def test_counters_follow_every_change_to_the_rows_they_count(
    aiohttp_client: Any, aiohttp_server: Any, tmp_path: Path
) -> None:
    client, fake, clock = await start(aiohttp_client, aiohttp_server, tmp_path)
    await fill(client, fake, clock)
    store = store_of(client)
    path = store.path
    assert counters(path) == recount(path)

    # Replay: dead and delivered back to pending (their finished hours lose them) ...
    assert await store.requeue("meta", ["dead", "delivered"], None, clock.now(), force=True) == 5
    assert counters(path) == recount(path)
    # ... leased, and given back at shutdown ...
    leased = await store.lease_deliveries("meta", clock.now(), 2, 60)
    assert counters(path) == recount(path)
    await store.release_leases([d.id for d in leased], clock.now())
    assert counters(path) == recount(path)
    # ... and delivered again.
    fake.fail_when_event_id("evt-bad", 100, 2804001)
    await client.app[SCHEDULER].run_until_idle()
    assert counters(path) == recount(path)
    # Erasure deletes events and their deliveries.
    report = await store.forget(emails=[EMAIL])
    assert report.events >= 1 and report.deliveries >= 1
    assert counters(path) == recount(path)
    doc = await status_json(client)
    assert by_id(doc["destinations"])["meta"]["consent"]["suppressed"] == 0
