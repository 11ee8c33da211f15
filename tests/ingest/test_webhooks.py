"""Segment and RudderStack webhook receivers: signatures computed here, independently."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import left_to_the_collector, make_config, processor_of, store_of

SECRET = "whsec-test-1"
AUTH = "Bearer forwarder-token"
RUDDER_TOKEN = "rudder-hook-token"


def config(tmp_path: Path) -> Any:
    return make_config(tmp_path, sources={
        "seg": {"type": "segment_webhook", "shared_secret": SECRET, "authorization": AUTH},
        "rud": {"type": "rudderstack_webhook", "header": "X-Rudder-Token",
                "secret": RUDDER_TOKEN},
        "web": {"type": "http_api", "token": "t"},
    })


def sign(data: bytes, secret: str = SECRET) -> str:
    return hmac.new(secret.encode(), data, hashlib.sha1).hexdigest()


def event(message_id: str, **fields: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "type": "track", "event": "Order Completed", "messageId": message_id,
        "userId": "u-1", "timestamp": "2026-11-20T10:00:00.000Z",
        "receivedAt": "2026-11-20T10:00:01.000Z",
        "properties": {"order_id": message_id, "revenue": 10.5, "currency": "EUR",
                       "note": "caf\u00e9 \u2713"},
    }
    data.update(fields)
    return data


def js_stringify(value: Any) -> bytes:
    """What JavaScript's JSON.stringify produces for these values."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


async def post(client: Any, path: str, body: bytes, **headers: str) -> Any:
    return await client.post(path, data=body,
                             headers={"Content-Type": "application/json", **headers})


async def test_single_event_with_x_signature_over_the_body(
    make_client: Any, tmp_path: Path
) -> None:
    client = await make_client(config(tmp_path))
    body = js_stringify(event("s1"))
    resp = await post(client, "/ingest/seg", body, **{"X-Signature": sign(body)})
    assert resp.status == 200
    assert await resp.json() == {"success": True}
    assert await store_of(client).inbox_message_ids("seg") == ["s1"]


async def test_legacy_batch_signature_covers_only_the_first_event(
    make_client: Any, tmp_path: Path
) -> None:
    client = await make_client(config(tmp_path))
    events = [event("b1"), event("b2"), event("b3")]
    body = js_stringify(events)
    resp = await post(client, "/ingest/seg", body, **{"X-Signature": sign(js_stringify(events[0]))})
    assert resp.status == 200
    assert await store_of(client).inbox_message_ids("seg") == ["b1", "b2", "b3"]


async def test_legacy_batch_signature_survives_pretty_printed_body(
    make_client: Any, tmp_path: Path
) -> None:
    client = await make_client(config(tmp_path))
    events = [event("p1"), event("p2")]
    body = json.dumps(events, indent=2, ensure_ascii=False).encode()
    resp = await post(client, "/ingest/seg", body, **{"X-Signature": sign(js_stringify(events[0]))})
    assert resp.status == 200


async def test_x_segment_signature_covers_the_whole_body(
    make_client: Any, tmp_path: Path
) -> None:
    client = await make_client(config(tmp_path))
    body = js_stringify([event("w1"), event("w2")])
    resp = await post(client, "/ingest/seg", body, **{"X-Segment-Signature": sign(body)})
    assert resp.status == 200
    # Signing only the first event is not enough for the whole-body header.
    body2 = js_stringify([event("w3"), event("w4")])
    resp = await post(client, "/ingest/seg", body2,
                      **{"X-Segment-Signature": sign(js_stringify(event("w3")))})
    assert resp.status == 401
    assert await store_of(client).inbox_message_ids("seg") == ["w1", "w2"]


async def test_wrong_or_missing_signature_is_401(make_client: Any, tmp_path: Path) -> None:
    client = await make_client(config(tmp_path))
    body = js_stringify(event("x"))
    for headers in ({"X-Signature": sign(body, "other-secret")},
                    {"X-Signature": sign(body + b" ")},
                    {"X-Segment-Signature": "00" * 20},
                    {"Authorization": "Bearer wrong"},
                    {}):
        resp = await post(client, "/ingest/seg", body, **headers)
        assert resp.status == 401, headers
        assert (await resp.json())["code"] == "unauthorized"
    assert await store_of(client).inbox_message_ids("seg") == []


async def test_configured_authorization_header_is_accepted_instead(
    make_client: Any, tmp_path: Path
) -> None:
    client = await make_client(config(tmp_path))
    body = js_stringify([event("a1"), event("a2")])
    resp = await post(client, "/ingest/seg", body, Authorization=AUTH)
    assert resp.status == 200
    assert await store_of(client).inbox_message_ids("seg") == ["a1", "a2"]


async def test_webhook_events_keep_their_corrected_timestamp(
    make_client: Any, tmp_path: Path
) -> None:
    client = await make_client(config(tmp_path))
    body = js_stringify(event("ts1", sentAt="2026-11-20T12:00:00.000Z",
                              originalTimestamp="2026-11-20T11:59:00.000Z"))
    assert (await post(client, "/ingest/seg", body, Authorization=AUTH)).status == 200
    await processor_of(client).run_until_idle()
    (stored,) = await store_of(client).events_for("seg", ["ts1"])
    assert stored.name == "purchase"
    assert stored.body is not None
    assert json.loads(stored.body)["timestamp"] == "2026-11-20T10:00:00Z"


async def test_webhook_request_address_is_never_the_users_ip(
    make_client: Any, tmp_path: Path
) -> None:
    client = await make_client(config(tmp_path))
    body = js_stringify(event("ip1", context={"library": {"name": "analytics.js"}}))
    assert (await post(client, "/ingest/seg", body, Authorization=AUTH)).status == 200
    await processor_of(client).run_until_idle()
    (stored,) = await store_of(client).events_for("seg", ["ip1"])
    assert stored.body is not None
    assert "ip" not in json.loads(stored.body)["context"]  # 127.0.0.1 is Segment's server


async def test_odd_signature_and_auth_values_are_401_never_500(
    make_client: Any, tmp_path: Path
) -> None:
    client = await make_client(config(tmp_path))
    body = js_stringify(event("odd"))
    for headers in ({"X-Signature": "\u00e9\u2713"}, {"X-Segment-Signature": "\u00e9"},
                    {"Authorization": "Bearer \u00e9t\u00e9"}):
        assert (await post(client, "/ingest/seg", body, **headers)).status == 401
    assert (await post(client, "/ingest/rud", body,
                       **{"X-Rudder-Token": "\u00e9\u2713"})).status == 401


async def test_rudderstack_webhook_header_and_body_forms(
    make_client: Any, tmp_path: Path
) -> None:
    client = await make_client(config(tmp_path))
    token = {"X-Rudder-Token": RUDDER_TOKEN}
    forms = [js_stringify(event("r1")), js_stringify([event("r2"), event("r3")]),
             js_stringify({"batch": [event("r4")]})]
    for body in forms:
        assert (await post(client, "/ingest/rud", body, **token)).status == 200
    for headers in ({"X-Rudder-Token": "wrong"}, {"Authorization": RUDDER_TOKEN}, {}):
        assert (await post(client, "/ingest/rud", forms[0], **headers)).status == 401
    assert await store_of(client).inbox_message_ids("rud") == ["r1", "r2", "r3", "r4"]


async def test_unknown_or_non_webhook_source_is_404(make_client: Any, tmp_path: Path) -> None:
    client = await make_client(config(tmp_path))
    for path in ("/ingest/nope", "/ingest/web"):
        resp = await post(client, path, b"{}", Authorization=AUTH)
        assert resp.status == 404


async def test_invalid_events_in_a_webhook_batch_are_recorded(
    make_client: Any, tmp_path: Path
) -> None:
    client = await make_client(config(tmp_path))
    body = js_stringify([event("ok"), {"type": "track", "userId": "u"}])
    assert (await post(client, "/ingest/seg", body, Authorization=AUTH)).status == 200
    assert await store_of(client).inbox_message_ids("seg") == ["ok"]
    (reason,) = await store_of(client).rejects("seg")
    assert "a track call needs a non-empty event name" in reason
    resp = await post(client, "/ingest/seg", b"[1, 2", Authorization=AUTH)
    assert resp.status == 400
    assert "malformed JSON" in (await resp.json())["message"]
    # Well-formed JSON of the wrong shape is named as such, not called malformed.
    resp = await post(client, "/ingest/seg", b'{"batch": 5}', Authorization=AUTH)
    assert resp.status == 400
    assert (await resp.json())["message"].startswith("expected an event, an array of events")


async def test_requests_are_freed_when_answered_not_left_to_the_collector(
    make_client: Any, tmp_path: Path
) -> None:
    client = await make_client(config(tmp_path))
    with left_to_the_collector() as held:
        for body in (js_stringify(event("one")),
                     js_stringify([event("a"), {"type": "track", "userId": "u"}]),
                     b'{"batch": 5}', b"[1, 2"):
            resp = await post(client, "/ingest/seg", body, Authorization=AUTH)
            assert resp.status in (200, 400)
    assert held == []


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=st.one_of(
    st.recursive(st.none() | st.integers() | st.text(max_size=10),
                 lambda c: st.lists(c, max_size=3) | st.dictionaries(
                     st.sampled_from(["type", "event", "userId", "batch", "messageId", "x"]),
                     c, max_size=5), max_leaves=15).map(js_stringify),
    st.binary(max_size=100)),
    signed=st.booleans(), target=st.sampled_from(["seg", "rud"]))
async def test_junk_to_webhooks_never_causes_5xx(
    make_client: Any, tmp_path: Path, payload: bytes, signed: bool, target: str
) -> None:
    client = await make_client(config(tmp_path))
    try:
        headers = {}
        if signed:
            headers = ({"X-Segment-Signature": sign(payload)} if target == "seg"
                       else {"X-Rudder-Token": RUDDER_TOKEN})
        resp = await post(client, f"/ingest/{target}", payload, **headers)
        assert resp.status in ((200, 400, 413) if signed else (401,)), await resp.text()
        await processor_of(client).run_until_idle()
    finally:
        await client.close()
