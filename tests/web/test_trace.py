"""The event trace: what arrived, what it became, every decision, every attempt; redacted."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import msgspec
import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import auth, make_config, processor_of, purchase
from tracklayerd.app import SCHEDULER
from tracklayerd.web.redact import MAX_DEPTH, TOO_DEEP, key_category, redact, redact_text

EMAIL = "ada@example.com"
PHONE = "+1 415 555 0100"
IP = "203.0.113.7"
PERSONAL = (EMAIL, PHONE, "4155550100", IP, "Lovelace", "Augusta", "1815-12-10", "Baker Street")
OBSERVE = {"hook": {"type": "webhook", "endpoint": "http://127.0.0.1:9/in", "mode": "observe"}}
SHA256 = "a" * 64


def personal_purchase(event_id: str = "ord-1-purchase", **fields: Any) -> dict[str, Any]:
    event = purchase(event_id, **fields)
    event["user"] = {"email": EMAIL, "phone": PHONE, "first_name": "Augusta",
                     "last_name": "Lovelace", "street": "221B Baker Street",
                     "date_of_birth": "1815-12-10", "external_id": "cust-42", "country": "GB"}
    event["properties"] = {"coupon": "WELCOME10", "contact": "write to " + EMAIL}
    return event


async def traced(client: Any, path: str, **headers: str) -> tuple[dict[str, Any], str]:
    resp = await client.get(path, headers=headers)
    assert resp.status == 200, await resp.text()
    assert resp.content_type == "application/json"
    assert resp.headers["Cache-Control"] == "no-store"
    text = await resp.text()
    return msgspec.json.decode(text), text


def assert_no_personal_data(text: str) -> None:
    for value in PERSONAL:
        assert value not in text, f"{value!r} is shown"


async def post(client: Any, *events: dict[str, Any]) -> None:
    for event in events:
        resp = await client.post("/v1/events", json=event, headers=auth())
        assert resp.status == 200, await resp.text()
    await processor_of(client).run_until_idle()


# -- the document ------------------------------------------------------------------------------


async def test_trace_shows_input_canonical_decisions_and_observed_delivery_without_personal_data(
    make_client: Any, tmp_path: Path
) -> None:
    client = await make_client(make_config(tmp_path, destinations=OBSERVE))
    await post(client, personal_purchase())

    doc, text = await traced(client, "/-/events/1")

    assert_no_personal_data(text)
    assert set(doc) == {"event", "input", "canonical", "decisions", "deliveries"}
    event = doc["event"]
    assert {k: event[k] for k in ("id", "source", "event_id", "status", "reason", "name")} == {
        "id": 1, "source": "web", "event_id": "ord-1-purchase", "status": "accepted",
        "reason": None, "name": "purchase"}
    assert event["received_at"].endswith("Z")

    sent = doc["input"]
    assert sent["kind"] == "native" and sent["request_ip"] == "[redacted: ip]"
    user = sent["payload"]["user"]
    assert user == {"email": "[redacted: email]", "phone": "[redacted: phone]",
                    "first_name": "[redacted: name]", "last_name": "[redacted: name]",
                    "street": "[redacted: address]", "date_of_birth": "[redacted: date of birth]",
                    "external_id": "cust-42", "country": "GB"}
    # Everything that is not personal is shown as sent.
    assert sent["payload"]["context"] == {"ip": "[redacted: ip]", "user_agent": "Mozilla/5.0",
                                          "page_url": "https://x.example/"}
    assert sent["payload"]["items"] == [{"id": "sku-1", "price": 64.95, "quantity": 2}]
    assert sent["payload"]["properties"] == {"coupon": "WELCOME10",
                                             "contact": "write to [redacted: email]"}

    canonical = doc["canonical"]
    assert canonical["user"]["email"] == "[redacted: email]"
    assert canonical["user"]["external_id"] == "cust-42"
    assert canonical["context"]["ip"] == "[redacted: ip]"
    assert canonical["value"] == 129.9 and canonical["order_id"] == "1001"

    decisions = doc["decisions"]
    assert decisions["outcome"] == {"status": "accepted", "reason": None}
    assert decisions["mapping"] == {"original_name": None, "event": "purchase", "renamed": False}
    assert decisions["event_id"] == {"event_id": "ord-1-purchase", "origin": "explicit",
                                     "message_id": "ord-1-purchase"}
    assert "email" in decisions["identity"]["present"]
    assert decisions["identity"]["enriched"] == []
    assert set(decisions["contract"]) == {"violations", "warnings"}

    [delivery] = doc["deliveries"]
    assert delivery["destination"] == "hook" and delivery["status"] == "observed"
    assert delivery["attempt_count"] == 0 and delivery["attempts"] == []
    assert delivery["next_attempt_at"] is None
    # The webhook payload is the canonical event with personal data in clear: shown redacted.
    assert delivery["payload"]["event_id"] == "ord-1-purchase"
    assert delivery["payload"]["user"]["phone"] == "[redacted: phone]"


async def test_meta_payload_keeps_hashes_and_hides_the_client_ip(
    make_client: Any, tmp_path: Path
) -> None:
    meta = {"type": "meta_capi", "mode": "observe", "pixel_id": "123",
            "access_token": "meta-token-secret"}
    client = await make_client(make_config(tmp_path, destinations={"meta": meta}))
    # A UK customer: Meta (an ad platform) needs a consent statement there.
    await post(client, {**personal_purchase(), "consent": {"categories": {"marketing": True}}})

    doc, text = await traced(client, "/-/events/1")

    assert_no_personal_data(text)
    assert "meta-token-secret" not in text
    [delivery] = doc["deliveries"]
    user_data = delivery["payload"]["user_data"]
    assert user_data["client_ip_address"] == "[redacted: ip]"
    assert user_data["client_user_agent"] == "Mozilla/5.0"
    hashes = user_data["em"] if isinstance(user_data["em"], list) else [user_data["em"]]
    assert hashes and all(len(h) == 64 and int(h, 16) >= 0 for h in hashes)
    assert delivery["match_quality"] is not None


async def test_a_renamed_event_without_id_shows_mapping_and_derived_id(
    make_client: Any, tmp_path: Path
) -> None:
    client = await make_client()
    await post(client, {"event": "Order Completed", "value": 5.0, "currency": "EUR"})

    doc, _ = await traced(client, "/-/events/1")

    decisions = doc["decisions"]
    assert decisions["mapping"] == {"original_name": "Order Completed", "event": "purchase",
                                    "renamed": True}
    assert decisions["event_id"]["origin"] == "derived"
    assert decisions["event_id"]["event_id"].startswith("h-")
    assert doc["deliveries"] == []


async def test_an_event_outside_the_allowlist_shows_why_it_was_dropped(
    make_client: Any, tmp_path: Path
) -> None:
    sources = {"web": {"type": "http_api", "token": "test-token-1", "allow": ["purchase"]}}
    client = await make_client(make_config(tmp_path, sources=sources, destinations=OBSERVE))
    await post(client, {"event": "lead", "event_id": "l-1"})

    doc, _ = await traced(client, "/-/events/1")

    assert doc["event"]["status"] == "dropped"
    assert "allowlist" in doc["decisions"]["outcome"]["reason"]
    assert doc["event"]["reason"] == doc["decisions"]["outcome"]["reason"]
    assert doc["deliveries"] == []


async def test_identity_enrichment_names_the_earlier_event(
    make_client: Any, tmp_path: Path
) -> None:
    client = await make_client()
    await post(client,
               {"event": "sign_up", "event_id": "s-1",
                "user": {"email": EMAIL, "user_id": "u-1"}},
               {"event": "purchase", "event_id": "p-1", "user": {"user_id": "u-1"}})

    doc, text = await traced(client, "/-/events/2")

    assert_no_personal_data(text)
    enriched = doc["decisions"]["identity"]["enriched"]
    assert {"field": "user.email", "from_event": 1} in [
        {k: e[k] for k in ("field", "from_event")} for e in enriched]
    # The graph keeps emails hashed; a hash is fine to show.
    assert "email" in doc["decisions"]["identity"]["present"]
    assert len(doc["canonical"]["user"]["email"]) == 64


async def test_an_event_not_yet_processed_shows_its_input(make_client: Any) -> None:
    client = await make_client()
    resp = await client.post("/v1/events", json=personal_purchase(), headers=auth())
    assert resp.status == 200

    doc, text = await traced(client, "/-/events/1")

    assert_no_personal_data(text)
    assert doc["event"]["status"] == "received"
    assert doc["input"]["payload"]["user"]["email"] == "[redacted: email]"
    assert doc["canonical"] is None and doc["deliveries"] == []


async def test_unknown_row_is_404_and_a_non_integer_is_400(make_client: Any) -> None:
    client = await make_client()
    resp = await client.get("/-/events/7")
    assert resp.status == 404
    assert (await resp.json())["error"] == "not_found"
    for bad in ("abc", "-1", "1.5", "1" * 19, "%20"):
        resp = await client.get(f"/-/events/{bad}")
        assert resp.status == 400, bad
        assert (await resp.json())["error"] == "invalid_request"


# -- lookup by event id ------------------------------------------------------------------------


async def test_lookup_by_source_and_event_id_returns_the_same_document(
    make_client: Any, tmp_path: Path
) -> None:
    client = await make_client(make_config(tmp_path, destinations=OBSERVE))
    await post(client, personal_purchase("e-1"), personal_purchase("e-2"))

    by_row, _ = await traced(client, "/-/events/2")
    by_id, _ = await traced(client, "/-/events?source=web&event_id=e-2")

    assert by_id == by_row
    for query in ("source=web&event_id=nope", "source=other&event_id=e-2"):
        resp = await client.get(f"/-/events?{query}")
        assert resp.status == 404
    for query in ("", "source=web", "event_id=e-2", "source=&event_id=e-2"):
        resp = await client.get(f"/-/events?{query}")
        assert resp.status == 400, query


async def test_lookup_returns_a_list_when_several_events_share_the_id(
    make_client: Any, tmp_path: Path
) -> None:
    key = "seg-key-1"
    client = await make_client(make_config(
        tmp_path, sources={"site": {"type": "segment", "write_key": key}}))
    headers = {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}
    for message_id in ("m-1", "m-2"):
        # Two messages (say, a browser and a server copy) with one explicit pixel event id.
        message = {"type": "track", "event": "Order Completed", "messageId": message_id,
                   "userId": "u-1", "properties": {"event_id": "ord-9", "total": 3}}
        resp = await client.post("/v1/track", json=message, headers=headers)
        assert resp.status == 200, await resp.text()
    await processor_of(client).run_until_idle()

    resp = await client.get("/-/events?source=site&event_id=ord-9")
    assert resp.status == 200
    docs = await resp.json()
    assert [d["event"]["id"] for d in docs] == [1, 2]
    assert [d["decisions"]["event_id"]["message_id"] for d in docs] == ["m-1", "m-2"]
    assert all(d["decisions"]["event_id"]["origin"] == "explicit" for d in docs)


# -- delivery attempts -------------------------------------------------------------------------


async def test_a_delivered_event_shows_its_attempt_and_the_receivers_answer(
    make_client: Any, tmp_path: Path, aiohttp_server: Any
) -> None:
    received: list[bytes] = []

    async def receive(request: web.Request) -> web.Response:
        received.append(await request.read())
        # A receiver that echoes personal data back must not put it on the trace either.
        return web.json_response({"ok": True, "note": "thanks", "echo": EMAIL})

    receiver = web.Application()
    receiver.router.add_post("/in", receive)
    server = await aiohttp_server(receiver)
    hook = {"type": "webhook", "endpoint": str(server.make_url("/in"))}
    client = await make_client(make_config(tmp_path, destinations={"hook": hook}))
    await post(client, personal_purchase())
    await client.app[SCHEDULER].run_until_idle()
    assert len(received) == 1

    doc, text = await traced(client, "/-/events/1")

    assert_no_personal_data(text)
    [delivery] = doc["deliveries"]
    assert delivery["status"] == "delivered"
    assert delivery["attempt_count"] == 1
    assert delivery["next_attempt_at"] is None
    [attempt] = delivery["attempts"]
    assert attempt["outcome"] == "delivered"
    assert attempt["http_status"] == 200
    assert attempt["response"] == {"ok": True, "note": "thanks", "echo": "[redacted: email]"}
    assert attempt["at"].endswith("Z") and attempt["duration_ms"] is not None
    assert attempt["error"] is None


async def test_a_refused_delivery_shows_the_status_and_a_text_answer(
    make_client: Any, tmp_path: Path, aiohttp_server: Any
) -> None:
    async def receive(request: web.Request) -> web.Response:
        return web.Response(status=400, text="bad event <b>no</b>")

    receiver = web.Application()
    receiver.router.add_post("/in", receive)
    server = await aiohttp_server(receiver)
    hook = {"type": "webhook", "endpoint": str(server.make_url("/in"))}
    client = await make_client(make_config(tmp_path, destinations={"hook": hook}))
    await post(client, personal_purchase())
    await client.app[SCHEDULER].run_until_idle()

    doc, _ = await traced(client, "/-/events/1")

    [delivery] = doc["deliveries"]
    assert delivery["status"] == "dead"
    [attempt] = delivery["attempts"]
    assert attempt["http_status"] == 400
    assert attempt["response"] == "bad event <b>no</b>"
    assert "400" in delivery["reason"]


# -- HTML --------------------------------------------------------------------------------------


BROWSER = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"


async def test_a_browser_gets_a_self_contained_escaped_html_page(
    make_client: Any, tmp_path: Path
) -> None:
    client = await make_client(make_config(tmp_path, destinations=OBSERVE))
    event = personal_purchase()
    event["properties"]["note"] = "<script>alert(1)</script> & \"q\""
    await post(client, event)

    resp = await client.get("/-/events/1", headers={"Accept": BROWSER})

    assert resp.status == 200
    assert resp.content_type == "text/html"
    page = await resp.text()
    assert page.startswith("<!doctype html>")
    assert "<script" not in page.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; &quot;q&quot;" in page
    assert "src=" not in page and "href=" not in page  # nothing external
    assert "default-src 'none'" in resp.headers["Content-Security-Policy"]
    assert "ord-1-purchase" in page and "[redacted: email]" in page
    assert_no_personal_data(page)


async def test_json_unless_html_comes_first_or_format_json_is_asked(
    make_client: Any, tmp_path: Path
) -> None:
    client = await make_client()
    await post(client, personal_purchase())
    for accept in ("*/*", "application/json", "application/json, text/html", ""):
        resp = await client.get("/-/events/1", headers={"Accept": accept})
        assert resp.content_type == "application/json", accept
    resp = await client.get("/-/events/1?format=json", headers={"Accept": BROWSER})
    assert resp.content_type == "application/json"
    resp = await client.get("/-/events/1?format=html")
    assert resp.content_type == "text/html"
    resp = await client.get("/-/events/1?format=xml")
    assert resp.status == 400


async def test_the_trace_requires_the_admin_token_when_one_is_set(
    make_client: Any, tmp_path: Path
) -> None:
    client = await make_client(make_config(tmp_path, server={"admin_token": "adm-1"}))
    await post(client, personal_purchase())
    for path in ("/-/events/1", "/-/events?source=web&event_id=ord-1-purchase",
                 "/-/events/nope", "/-/events/1?format=xml"):
        resp = await client.get(path)
        assert resp.status == 401, path
    doc, _ = await traced(client, "/-/events/1", Authorization="Bearer adm-1")
    assert doc["event"]["id"] == 1


# -- redaction ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("key", "expected"), [
    ("email", "email"), ("Email", "email"), ("customerEmail", "email"), ("e_mail", "email"),
    ("email_address", "email"), ("phone", "phone"), ("phoneNumber", "phone"),
    ("mobile_phone", "phone"), ("first_name", "name"), ("firstName", "name"),
    ("billing_last_name", "name"), ("surname", "name"), ("street", "address"),
    ("address1", "address"), ("address_line_2", "address"), ("city", "address"),
    ("zip", "address"), ("postalCode", "address"), ("postal_code", "address"),
    ("birthday", "date of birth"), ("date_of_birth", "date of birth"), ("dob", "date of birth"),
    ("ip", "ip"), ("client_ip_address", "ip"), ("IPAddress", "ip"), ("gender", "gender"),
    ("name", None), ("product_name", None), ("velocity", None), ("ethnicity", None),
    ("tip", None), ("shipping", None), ("state", None), ("country", None),
    ("user_agent", None), ("external_id", None), ("em", None), ("email_verified", None),
])
def test_key_categories(key: str, expected: str | None) -> None:
    assert key_category(key) == expected


def test_name_is_personal_only_inside_a_person() -> None:
    doc = {"name": "Home", "traits": {"name": "Ada L", "company": {"name": "ACME"}},
           "properties": {"name": "Checkout", "products": [{"name": "Shoe"}]},
           "billing_address": {"name": "Ada L", "country": "GB", "line1": "1 Main St"}}
    assert redact(doc) == {
        "name": "Home", "traits": {"name": "[redacted: name]", "company": {"name": "ACME"}},
        "properties": {"name": "Checkout", "products": [{"name": "Shoe"}]},
        "billing_address": {"name": "[redacted: name]", "country": "GB",
                            "line1": "[redacted: address]"}}


def test_segment_identify_traits_are_redacted_and_ids_kept() -> None:
    message = {
        "type": "identify", "userId": "u-1", "anonymousId": "a-1",
        "traits": {"email": EMAIL, "phone": "415-555-0100", "firstName": "Ada",
                   "address": {"street": "1 Main", "city": "SF", "postalCode": "94107",
                               "state": "CA", "country": "US"},
                   "birthday": "1990-01-01", "plan": "pro", "logins": 5},
        "context": {"ip": IP, "userAgent": "Mozilla/5.0 Chrome/120.0.6099.109",
                    "page": {"url": "https://x.example/?e=ada%40example.com&utm=1"}},
    }
    shown = redact(message)
    assert shown["userId"] == "u-1" and shown["anonymousId"] == "a-1"
    assert shown["traits"]["address"] == {
        "street": "[redacted: address]", "city": "[redacted: address]",
        "postalCode": "[redacted: address]", "state": "CA", "country": "US"}
    assert shown["traits"]["plan"] == "pro" and shown["traits"]["logins"] == 5
    assert shown["traits"]["phone"] == "[redacted: phone]"
    assert shown["context"]["userAgent"] == message["context"]["userAgent"]
    assert shown["context"]["page"]["url"] == "https://x.example/?e=[redacted: email]&utm=1"
    assert "ada" not in msgspec.json.encode(shown).decode()


@pytest.mark.parametrize(("value", "expected"), [
    (EMAIL, "[redacted: email]"),
    ("Ada <ada@example.com>", "Ada <[redacted: email]>"),
    ("jörg@bücher.de", "[redacted: email]"),
    (PHONE, "[redacted: phone]"),
    ("(415) 555-0100", "[redacted: phone]"),
    ("415.555.0100", "[redacted: phone]"),
    ("0044 20 7946 0958", "[redacted: phone]"),
    ("call +44 20 7946 0958 today", "call [redacted: phone] today"),
    (IP, "[redacted: ip]"),
    ("2001:db8::1", "[redacted: ip]"),
    ("203.0.113.7, 10.0.0.1", "[redacted: ip]"),
    # Not personal: ids, amounts, dates, versions, times.
    ("1001", "1001"), ("100234567", "100234567"), ("129.90", "129.90"),
    ("2026-11-20", "2026-11-20"), ("20.11.2026", "20.11.2026"),
    ("2026-11-20T10:00:00Z", "2026-11-20T10:00:00Z"), ("Chrome/120.0.6099.109", None),
    ("sku-1", "sku-1"), ("v+1.2", "v+1.2"), ("", ""), ("   ", "   "),
])
def test_values_that_look_personal_are_redacted_anywhere(value: str, expected: str | None) -> None:
    assert redact_text(value) == (value if expected is None else expected)
    assert redact({"anything": [value]}) == {"anything": [redact_text(value)]}


def test_hashes_under_personal_keys_are_kept() -> None:
    payload = {"user_data": {"em": [SHA256], "ph": [SHA256], "email": SHA256.upper(),
                             "fn": ["b" * 64], "client_ip_address": IP, "fbc": "fb.1.2.abc"}}
    assert redact(payload) == {"user_data": {
        "em": [SHA256], "ph": [SHA256], "email": SHA256.upper(), "fn": ["b" * 64],
        "client_ip_address": "[redacted: ip]", "fbc": "fb.1.2.abc"}}


def test_personal_containers_redact_their_scalars_and_keep_structure() -> None:
    doc = {"emails": [EMAIL, "b@example.org"], "phone": {"number": "4155550100", "type": "cell"},
           "zip": 94107, "email": None, "ip": True, "addresses": [{"line": "x", "country": "US"}]}
    assert redact(doc) == {
        "emails": ["[redacted: email]", "[redacted: email]"],
        "phone": {"number": "[redacted: phone]", "type": "cell"},
        "zip": "[redacted: address]", "email": None, "ip": True,
        "addresses": [{"line": "[redacted: address]", "country": "US"}]}


def test_keys_that_are_personal_data_are_redacted_without_losing_entries() -> None:
    assert redact({EMAIL: 1, "b@example.org": 2}) == {
        "[redacted: email]": 1, "[redacted: email] #2": 2}


def test_deep_nesting_is_cut_not_a_crash() -> None:
    deep: Any = "x"
    for _ in range(MAX_DEPTH + 10):
        deep = [deep]
    shown = redact(deep)
    for _ in range(MAX_DEPTH + 1):
        shown = shown[0]
    assert shown == TOO_DEEP


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=20) | st.sampled_from(["email", "name", "user", "ip"]),
                      children, max_size=5),
    max_leaves=40,
)


@settings(max_examples=150, deadline=None)
@given(json_values)
def test_redact_never_raises_and_keeps_json_shape(value: Any) -> None:
    shown = redact(value)
    # Still JSON: encodes, and containers stay containers of the same size.
    msgspec.json.encode(shown)
    if isinstance(value, dict | list):
        assert type(shown) is type(value) and len(shown) == len(value)


emails = st.from_regex(r"[a-z][a-z0-9._]{0,10}@[a-z]{2,10}\.(com|org|de|io)", fullmatch=True)


@settings(max_examples=100, deadline=None)
@given(json_values, emails, st.sampled_from(["", "x ", "mailto:", "?e="]))
def test_no_email_survives_anywhere(value: Any, email: str, prefix: str) -> None:
    doc = {"a": value, "b": [prefix + email], "c": {"note": f"{prefix}{email} said hi"},
           email: "k", "d": prefix + email.replace("@", "%40")}
    assert email not in msgspec.json.encode(redact(doc)).decode()
    assert email.replace("@", "%40") not in msgspec.json.encode(redact(doc)).decode()


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=200))
def test_redact_text_never_raises(data: bytes) -> None:
    redact_text(data.decode("utf-8", "replace"))
