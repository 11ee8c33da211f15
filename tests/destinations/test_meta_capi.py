"""The Meta Conversions API destination: golden payloads, what it refuses to send, the request
it builds, and how it reads Meta's answers (against the fake Graph API in tests/fakes/meta.py)."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import msgspec
import pytest

from tests.conftest import auth, make_config, processor_of, purchase, store_of
from tests.fakes.meta import FakeMeta
from tracklayerd.app import SCHEDULER
from tracklayerd.destinations.base import (
    Delivered,
    Encoded,
    Environment,
    Rejected,
    RetryLater,
    TransportError,
    build_payload,
)
from tracklayerd.destinations.meta_capi import (
    EVENT_NAMES,
    LDU_STATE_CODES,
    MetaCapi,
    MetaCapiConfig,
)
from tracklayerd.destinations.meta_errors import CONFIG_PAUSE_SECS, THROTTLED_AFTER_SECS
from tracklayerd.destinations.registry import registry
from tracklayerd.errors import DestinationError
from tracklayerd.events import Event, from_native, native_decoder
from tracklayerd.ingest.segment_messages import BatchFields, prepare
from tracklayerd.pipeline.decode import decode
from tracklayerd.pipeline.mapping import BUILTIN_RULES, Mapper
from tracklayerd.secrets import Secret, make_dec_hook
from tracklayerd.store.base import InboxRecord

DATA = Path(__file__).resolve().parent.parent / "data" / "meta"
GOLDEN = sorted(DATA.glob("*.json"))
PIXEL = "1234567890"
TOKEN = "EAAB-meta-test-token"
RECEIVED = datetime(2026, 11, 20, 10, 0, 1, tzinfo=UTC)
EVENT_TIME = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)
# The fake's clock: a minute after the events happened.
NOW = EVENT_TIME.timestamp() + 60
JOHN_EM = "62a14e44f765419d10fea99367361a727c12365e2520f32218d505ed9aa0f62f"
JOHN_PH = "e323ec626319ca94ee8bff2e4c87cf613be6ea19919ed1364124e16807ab3176"
US = "79adb2a2fce5c6ba215fe5f27f532d4e7edbac4b6a5e09e1ef3a08084a904621"


def meta_config(**options: Any) -> MetaCapiConfig:
    table = {"type": "meta_capi", "pixel_id": PIXEL, "access_token": TOKEN, **options}
    return msgspec.convert(table, MetaCapiConfig, strict=True, dec_hook=make_dec_hook(DATA))


def meta(**options: Any) -> MetaCapi:
    return MetaCapi("meta", meta_config(**options), Environment())


def native(**fields: Any) -> Event:
    data: dict[str, Any] = {
        "event": "purchase",
        "event_id": "ord-1-purchase",
        "timestamp": EVENT_TIME.isoformat(),
        "user": {"email": "john_smith@gmail.com", "phone": "+1 650 555 1212"},
        "order_id": "1",
        "value": 10.0,
        "currency": "USD",
        "context": {"ip": "203.0.113.7", "user_agent": "Mozilla/5.0",
                    "page_url": "https://shop.example.com/thank-you"},
    }
    data.update(fields)
    return from_native_json(data)


def from_native_json(data: dict[str, Any]) -> Event:
    """A native API event as the processor sees it (the native event_id is the message id)."""
    parsed = native_decoder.decode(msgspec.json.encode(data))
    return from_native(parsed, event_id=data.get("event_id") or "derived-id", source="web",
                       received_at=RECEIVED)


def segment(message: dict[str, Any]) -> Event:
    """A Segment message as the processor sees it: stored by ingest, decoded, mapped."""
    prepared = prepare(
        [msgspec.json.encode(message)], BatchFields(origin="tracking_api"), source_id="web",
        received_at=RECEIVED.timestamp(), request_ip="198.51.100.4", max_event_bytes=32768,
    )
    assert not prepared.rejected, prepared.rejected
    record = InboxRecord(seq=1, **msgspec.structs.asdict(prepared.rows[0]))
    return Mapper(list(BUILTIN_RULES)).apply(decode(record, None))


def payload_of(encoded: Encoded) -> dict[str, Any]:
    assert encoded.payload is not None, encoded.rejected
    decoded: dict[str, Any] = json.loads(encoded.payload)
    return decoded


def _resolve_hashes(value: Any) -> Any:
    """{"sha256": "plain"} in a golden file stands for the SHA-256 hex of "plain"."""
    if isinstance(value, dict):
        if set(value) == {"sha256"}:
            return hashlib.sha256(value["sha256"].encode()).hexdigest()
        return {key: _resolve_hashes(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_resolve_hashes(item) for item in value]
    return value


# --- golden payloads -------------------------------------------------------------------------


@pytest.mark.parametrize("path", GOLDEN, ids=[p.stem for p in GOLDEN])
def test_golden_server_event(path: Path) -> None:
    case = json.loads(path.read_text())
    event = segment(case["segment"]) if "segment" in case else from_native_json(case["input"])
    encoded = meta(**case.get("config", {})).encode(event)
    assert encoded.rejected is None
    assert payload_of(encoded) == _resolve_hashes(case["expected"])
    assert encoded.warnings == case["warnings"]


def test_golden_files_cover_the_cases_the_docs_promise() -> None:
    assert {p.stem for p in GOLDEN} >= {
        "purchase_with_items", "lead_phone_only", "ldu_california", "custom_event",
        "segment_explicit_event_id", "segment_message_id",
    }


def test_hashes_are_metas_published_test_vectors() -> None:
    user_data = payload_of(meta().encode(native(
        user={"email": " John_Smith@gmail.com ", "phone": "(650)555-1212", "country": "US"},
    )))["user_data"]
    assert (user_data["em"], user_data["ph"], user_data["country"]) == (JOHN_EM, JOHN_PH, US)


def test_payload_is_compact_json_without_nulls() -> None:
    encoded = meta().encode(native(items=[{"id": "a"}], order_id=None))
    assert encoded.payload is not None
    assert b"null" not in encoded.payload
    assert encoded.payload == msgspec.json.encode(msgspec.json.decode(encoded.payload))
    assert payload_of(encoded)["custom_data"] == {
        "value": 10.0, "currency": "USD", "content_ids": ["a"], "contents": [{"id": "a"}],
        "content_type": "product", "num_items": 1,
    }


def test_every_builtin_name_is_metas_except_the_documented_custom_refund() -> None:
    custom = {canonical for canonical in EVENT_NAMES if "custom event" in " ".join(
        meta().encode(native(event=canonical)).warnings)}
    assert custom == {"refund"}


# --- what is never sent ----------------------------------------------------------------------


@pytest.mark.parametrize(("fields", "reason"), [
    ({"value": None}, "Purchase without value: Meta refuses it (subcode 2804009)"),
    ({"currency": None}, "Purchase without currency"),
    ({"currency": "dollars"}, "Purchase without currency"),
    ({"user": {"gender": "f", "first_name": "Ada"}, "context": {}},
     "customer information is only fn, ge: Meta rejects events that carry only fn + ge"),
    ({"user": {"gender": "f", "city": "Paris"}, "context": {
        "user_agent": "Mozilla/5.0", "page_url": "https://x.example/"}},
     "customer information is only client_user_agent, ct, ge: Meta rejects events that carry "
     "only client_user_agent + country + ct + ge + st + zp or part of it"),
    ({"user": {}, "context": {"user_agent": "Mozilla/5.0", "page_url": "https://x.example/"}},
     "customer information is only client_user_agent"),
    ({"context": {"ip": "203.0.113.7", "page_url": "https://x.example/"}},
     "website events need client_user_agent (context.user_agent)"),
    ({"context": {"ip": "203.0.113.7", "user_agent": "Mozilla/5.0"}},
     "website events need event_source_url (context.page_url)"),
    ({"context": {"ip": "203.0.113.7"}}, "website events need client_user_agent "
     "(context.user_agent) and event_source_url (context.page_url)"),
])
def test_encode_refuses_what_meta_would_refuse_for_the_whole_batch(
    fields: dict[str, Any], reason: str
) -> None:
    encoded = meta().encode(native(**fields))
    assert encoded.payload is None
    assert encoded.rejected is not None
    assert encoded.rejected.startswith(reason), encoded.rejected


def test_baseline_combination_alone_is_refused_but_with_an_ip_it_is_not() -> None:
    only_gender = native(user={"gender": "m"}, context={"user_agent": "UA", "page_url": "https://x/"})
    assert meta().encode(only_gender).rejected is not None
    with_ip = native(user={"gender": "m"},
                     context={"user_agent": "UA", "page_url": "https://x/", "ip": "203.0.113.9"})
    assert meta().encode(with_ip).rejected is None


def test_no_identity_at_all_is_refused_for_non_website_sources() -> None:
    encoded = meta(action_source="system_generated").encode(native(user={}, context={}))
    assert encoded.rejected == "no customer information Meta can match on"


def test_non_website_events_need_no_user_agent_or_url() -> None:
    body = payload_of(meta(action_source="physical_store").encode(native(context={})))
    assert body["action_source"] == "physical_store"
    assert "event_source_url" not in body
    assert set(body["user_data"]) == {"em", "ph"}


def test_identify_is_skipped_not_rejected() -> None:
    # No delivery at all (not a dead letter): Meta has no event for an identify.
    encoded = meta().encode(native(type="identify", event="identify"))
    assert encoded.payload is None and encoded.rejected is None
    assert encoded.skipped == "identify messages are not conversions: Meta has no event for them"


def test_unmapped_events_are_skipped_when_send_unmapped_is_false() -> None:
    destination = meta(send_unmapped=False)
    assert destination.encode(native(event="remove_from_cart")).skipped == (
        "no Meta event name for 'remove_from_cart' (add it to event_names, or set "
        "send_unmapped = true)")
    assert destination.encode(native(event="lead")).rejected is None


def test_event_names_override_the_builtin_table() -> None:
    destination = meta(event_names={"purchase": "OrderPlaced", "remove_from_cart": "Lead"})
    placed = destination.encode(native())
    assert payload_of(placed)["event_name"] == "OrderPlaced"
    # A custom name is not a Purchase: Meta's value rule does not apply to it.
    assert destination.encode(native(value=None)).rejected is None
    assert "'OrderPlaced' is a custom event to Meta (not a standard event)" in placed.warnings
    lead = destination.encode(native(event="remove_from_cart"))
    assert payload_of(lead)["event_name"] == "Lead"
    assert lead.warnings == []


# --- warnings never carry personal data ------------------------------------------------------


def test_dropped_identifiers_and_bad_ip_are_warnings_without_the_values() -> None:
    encoded = meta().encode(native(
        user={"email": "john_smith@gmail.com", "phone": "555 0100", "first_name": "Ada"},
        context={"ip": "10.0.0.300", "user_agent": "UA", "page_url": "https://x.example/"},
    ))
    body = payload_of(encoded)
    assert "client_ip_address" not in body["user_data"]
    assert "ph" not in body["user_data"]
    assert "context.ip is not an IPv4 or IPv6 address: not sent" in encoded.warnings
    assert any(w.startswith("phone ") for w in encoded.warnings)
    text = " ".join(encoded.warnings)
    for secret in ("555 0100", "10.0.0.300", "john_smith", "Ada"):
        assert secret not in text


def test_rejection_reasons_never_carry_personal_data() -> None:
    encoded = meta().encode(native(user={"gender": "female", "first_name": "Zelda"}, value=None))
    assert encoded.rejected is not None
    assert "Zelda" not in encoded.rejected and "female" not in encoded.rejected


def test_fractional_quantities_are_not_sent_and_are_warned_about() -> None:
    encoded = meta().encode(native(items=[{"id": "cheese", "quantity": 0.25, "price": 4.0}]))
    custom = payload_of(encoded)["custom_data"]
    assert custom["contents"] == [{"id": "cheese", "item_price": 4.0}]
    assert custom["num_items"] == 0
    assert "an item quantity is not a whole number: not sent" in encoded.warnings


# --- Limited Data Use ------------------------------------------------------------------------


def _dpo(destination: MetaCapi, event: Event) -> dict[str, Any]:
    return {k: v for k, v in payload_of(destination.encode(event)).items()
            if k.startswith("data_processing_options")}


@pytest.mark.parametrize(("state", "code"), sorted(LDU_STATE_CODES.items()))
def test_ldu_state_codes_are_metas(state: str, code: int) -> None:
    event = native(consent={"region": f"US-{state}"})
    assert _dpo(meta(ldu_states=[state]), event) == {
        "data_processing_options": ["LDU"], "data_processing_options_country": 1,
        "data_processing_options_state": code,
    }


def test_ldu_state_without_a_meta_code_lets_meta_geolocate() -> None:
    event = native(consent={"region": "US-VA"})
    assert _dpo(meta(ldu_states=["VA"]), event) == {
        "data_processing_options": ["LDU"], "data_processing_options_country": 0,
        "data_processing_options_state": 0,
    }


@pytest.mark.parametrize("fields", [
    {"consent": {"region": "US-TX"}},
    {"consent": {"region": "DE"}, "user": {"email": "a@b.example", "state": "CA"}},
    {"user": {"email": "a@b.example", "state": "CA", "country": "CA"}},  # California? Canada.
    {"user": {"email": "a@b.example", "state": "California"}},  # no country: not known to be US
])
def test_no_ldu_outside_the_configured_states(fields: dict[str, Any]) -> None:
    assert _dpo(meta(ldu_states=["CA"]), native(**fields)) == {}


def test_no_ldu_without_ldu_states() -> None:
    assert _dpo(meta(), native(consent={"region": "US-CA"})) == {}


# --- config, limits, registry ----------------------------------------------------------------


@pytest.mark.parametrize("options", [
    {"pixel_id": "pixel-123"}, {"pixel_id": ""}, {"api_version": "24.0"},
    {"api_version": "v24"}, {"action_source": "web"}, {"ldu_states": ["California"]},
    {"test_event_code": ""}, {"unknown_option": 1},
])
def test_config_refuses_bad_options(options: dict[str, Any]) -> None:
    with pytest.raises(msgspec.ValidationError):
        meta_config(**options)


def test_config_requires_pixel_id_and_access_token() -> None:
    for missing in ("pixel_id", "access_token"):
        table = {"type": "meta_capi", "pixel_id": PIXEL, "access_token": TOKEN}
        del table[missing]
        with pytest.raises(msgspec.ValidationError, match=missing):
            msgspec.convert(table, MetaCapiConfig, strict=True, dec_hook=make_dec_hook(DATA))


def test_limits() -> None:
    assert meta().limits.max_events == 1000
    assert meta(max_batch_events=50).limits.max_events == 50
    assert meta(max_batch_events=5000).limits.max_events == 1000
    week, max_future = meta().limits.max_age_secs, meta().limits.max_future_secs
    assert week is not None and 6.9 * 86400 < week <= 7 * 86400
    assert max_future is not None and 0 < max_future <= 600
    store_age = meta(action_source="physical_store").limits.max_age_secs
    assert store_age is not None and 61.9 * 86400 < store_age <= 62 * 86400


def test_registered_as_meta_capi_with_a_factory() -> None:
    reg = registry()
    assert reg.config_type("meta_capi") is MetaCapiConfig
    assert reg.platform("meta_capi") == "meta"
    factory = reg.factory("meta_capi")
    assert factory is not None
    assert isinstance(factory("m", meta_config(), Environment()), MetaCapi)


async def test_healthcheck() -> None:
    await meta().healthcheck()
    config = meta_config()
    config.access_token = Secret("  ", "inline")
    with pytest.raises(DestinationError, match="access_token is empty"):
        await MetaCapi("m", config, Environment()).healthcheck()


# --- the request -----------------------------------------------------------------------------


def _query(url: str) -> dict[str, list[str]]:
    return parse_qs(urlsplit(url).query)


def test_request_joins_the_stored_payloads_into_metas_body() -> None:
    destination = meta()
    payloads = [destination.encode(native(event_id=f"e{i}")).payload for i in range(3)]
    assert all(payloads)
    request = destination.build_request([p for p in payloads if p])
    body = json.loads(request.body)
    assert body == {"data": [json.loads(p) for p in payloads if p]}
    assert request.body == msgspec.json.encode(msgspec.json.decode(request.body))
    assert request.method == "POST"
    assert request.headers == {"Content-Type": "application/json"}
    assert request.url.startswith(f"https://graph.facebook.com/v24.0/{PIXEL}/events?")
    assert _query(request.url) == {"access_token": [TOKEN]}


def test_token_travels_in_the_query_never_in_the_body() -> None:
    request, problems = build_payload(meta(app_secret="s3cret"), [native()])
    assert problems == []
    assert TOKEN.encode() not in request.body
    assert b"s3cret" not in request.body
    assert "access_token" not in json.loads(request.body)


def test_test_event_code_is_a_top_level_key() -> None:
    destination = meta(test_event_code="TEST12345")
    payload = destination.encode(native()).payload
    assert payload is not None
    body = json.loads(destination.build_request([payload]).body)
    assert body["test_event_code"] == "TEST12345"
    assert len(body["data"]) == 1


def test_appsecret_proof_is_hmac_sha256_of_the_token() -> None:
    request = meta(app_secret="app-secret-1").build_request([b"{}"])
    expected = hmac.new(b"app-secret-1", TOKEN.encode(), hashlib.sha256).hexdigest()
    assert _query(request.url)["appsecret_proof"] == [expected]


def test_endpoint_and_api_version() -> None:
    assert meta(api_version="v25.0").build_request([]).url.startswith(
        f"https://graph.facebook.com/v25.0/{PIXEL}/events?access_token=")
    url = meta(endpoint="https://proxy.example/meta/events?x=1").build_request([]).url
    assert url.startswith("https://proxy.example/meta/events?x=1&access_token=")


# --- sending to the fake Graph API -----------------------------------------------------------


@dataclass
class Harness:
    fake: FakeMeta
    endpoint: str
    make: Callable[..., MetaCapi]

    def events(self, *ids: str, **fields: Any) -> list[bytes]:
        destination = self.make()
        payloads = []
        for event_id in ids:
            payload = destination.encode(native(event_id=event_id, **fields)).payload
            assert payload is not None
            payloads.append(payload)
        return payloads


@pytest.fixture
async def harness(aiohttp_server: Any) -> AsyncIterator[Harness]:
    fake = FakeMeta(access_token=TOKEN, now=lambda: NOW)
    server = await aiohttp_server(fake.app)
    endpoint = str(server.make_url(f"/v24.0/{PIXEL}/events"))
    made: list[MetaCapi] = []

    def make(**options: Any) -> MetaCapi:
        options.setdefault("endpoint", endpoint)
        destination = meta(**options)
        made.append(destination)
        return destination

    yield Harness(fake, endpoint, make)
    for destination in made:
        await destination.close()


async def test_accepted_batch_is_delivered_with_metas_reply(harness: Harness) -> None:
    payloads = harness.events("e1", "e2", "e3")
    outcomes = await harness.make().send(payloads)
    assert [type(o) for o in outcomes] == [Delivered] * 3
    reply = outcomes[0].reply
    assert reply is not None and reply.status == 200
    answer = json.loads(reply.body)
    assert answer["events_received"] == 3 and answer["fbtrace_id"]
    assert harness.fake.event_ids == ["e1", "e2", "e3"]
    (accepted,) = harness.fake.accepted
    assert accepted.query["access_token"] == TOKEN
    assert harness.fake.requests[0].headers["Content-Type"] == "application/json"


async def test_empty_send_makes_no_request(harness: Harness) -> None:
    assert await harness.make().send([]) == []
    assert harness.fake.requests == []


async def test_test_event_code_and_appsecret_proof_reach_meta(aiohttp_server: Any) -> None:
    fake = FakeMeta(access_token=TOKEN, app_secret="app-secret-1", now=lambda: NOW)
    server = await aiohttp_server(fake.app)
    endpoint = str(server.make_url(f"/v24.0/{PIXEL}/events"))
    good = meta(endpoint=endpoint, app_secret="app-secret-1", test_event_code="TEST1")
    wrong = meta(endpoint=endpoint, app_secret="another-app")
    try:
        payload = good.encode(native()).payload
        assert payload is not None
        assert [type(o) for o in await good.send([payload])] == [Delivered]
        assert fake.accepted[0].body["test_event_code"] == "TEST1"
        (outcome,) = await wrong.send([payload])
        assert isinstance(outcome, RetryLater) and outcome.after_secs == CONFIG_PAUSE_SECS
        assert outcome.reason.startswith("appsecret_proof rejected: app_secret is not")
    finally:
        await good.close()
        await wrong.close()


async def test_wrong_token_pauses_with_what_to_do_and_loses_no_event(harness: Harness) -> None:
    destination = harness.make(access_token="EAAB-expired")
    outcomes = await destination.send(harness.events("e1", "e2"))
    assert len(outcomes) == 2
    for outcome in outcomes:
        # The events are fine: they wait (the destination pauses) until the token is fixed.
        assert isinstance(outcome, RetryLater) and outcome.after_secs == CONFIG_PAUSE_SECS
        assert outcome.reason.startswith("access token invalid or expired: create a new "
                                         "system-user token")
        assert "Meta 190: Invalid OAuth access token" in outcome.reason
        assert "EAAB" not in outcome.reason and harness.endpoint not in outcome.reason


async def test_one_too_old_event_fails_the_whole_batch(harness: Harness) -> None:
    fresh = harness.events("fresh")
    old = harness.events("old", timestamp="2026-11-01T00:00:00Z")
    outcomes = await harness.make().send(fresh + old)
    assert len(outcomes) == 2
    for outcome in outcomes:
        assert isinstance(outcome, Rejected) and outcome.whole_batch
        assert outcome.reason.startswith("an event is older than Meta accepts")
        assert "Meta 100/2804003: Event Timestamp Too Old" in outcome.reason
        assert "fbtrace_id=" in outcome.reason
    assert harness.fake.accepted == []


async def test_batch_refused_for_one_event_goes_through_without_it(harness: Harness) -> None:
    harness.fake.fail_when_event_id("bad", subcode=2804019, message="Invalid parameter")
    destination = harness.make()
    payloads = harness.events("a", "bad", "b")
    outcomes = await destination.send(payloads)
    assert all(isinstance(o, Rejected) and o.whole_batch for o in outcomes)
    # What the scheduler does with whole_batch: split and resend.
    assert [type(o) for o in await destination.send([payloads[0], payloads[2]])] == [Delivered] * 2
    assert harness.fake.event_ids == ["a", "b"]


@pytest.mark.parametrize(("status", "code", "subcode", "transient", "expected", "after"), [
    (400, 1, None, False, RetryLater, None),
    (503, 2, None, False, RetryLater, None),
    (400, 4, None, True, RetryLater, None),
    (400, 4, None, False, RetryLater, THROTTLED_AFTER_SECS),
    (400, 17, None, False, RetryLater, THROTTLED_AFTER_SECS),
    (400, 32, None, False, RetryLater, THROTTLED_AFTER_SECS),
    (400, 613, None, False, RetryLater, THROTTLED_AFTER_SECS),
    (400, 80000, None, False, RetryLater, THROTTLED_AFTER_SECS),
    (400, 80004, None, False, RetryLater, THROTTLED_AFTER_SECS),
    (400, 80014, None, False, RetryLater, THROTTLED_AFTER_SECS),
    (400, 341, None, False, RetryLater, None),
    (400, 368, None, False, RetryLater, None),
    (400, 5000, None, False, RetryLater, None),
    (400, 21009, None, False, RetryLater, None),
    (400, 100, 2804003, False, "whole_batch", None),
    (400, 100, 2804009, False, "whole_batch", None),
    (400, 100, 2804048, False, "whole_batch", None),
    (400, 100, None, False, "whole_batch", None),
    (400, 100, 33, False, "config", None),
    (400, 190, None, False, "config", None),
    (401, 190, 463, False, "config", None),
    (400, 102, None, False, "config", None),
    (403, 200, None, False, "config", None),
    (403, 10, None, False, "config", None),
    (400, 100, None, True, RetryLater, None),  # Meta's is_transient wins
    # Codes the table does not know: the HTTP status decides.
    (500, 9999, None, False, RetryLater, None),
    (400, 9999, None, False, "whole_batch", None),
])
async def test_graph_error_table(
    harness: Harness, status: int, code: int, subcode: int | None, transient: bool,
    expected: type | str, after: float | None,
) -> None:
    harness.fake.fail_next(code, subcode, status=status, is_transient=transient,
                           message="Scripted failure")
    outcomes = await harness.make().send(harness.events("e1", "e2"))
    assert len(outcomes) == 2 and outcomes[0] == outcomes[1]
    outcome = outcomes[0]
    if expected is RetryLater:
        assert isinstance(outcome, RetryLater)
        assert outcome.after_secs == after
    elif expected == "config":
        assert isinstance(outcome, RetryLater)
        assert outcome.after_secs == CONFIG_PAUSE_SECS
    else:
        assert isinstance(outcome, Rejected)
        assert outcome.whole_batch is (expected == "whole_batch")
    code_text = f"{code}/{subcode}" if subcode is not None else f"{code}"
    assert f"Meta {code_text}: Scripted failure" in outcome.reason
    assert "fbtrace_id=" in outcome.reason
    assert outcome.reply is not None and outcome.reply.status == status


async def test_throttled_with_retry_after_waits_that_long(harness: Harness) -> None:
    harness.fake.fail_next(4, status=429, is_transient=True, retry_after=7,
                           message="(#4) Application request limit reached")
    (outcome,) = await harness.make().send(harness.events("e1"))
    assert isinstance(outcome, RetryLater)
    assert outcome.after_secs == 7
    assert outcome.reason.startswith("Meta 4: (#4) Application request limit reached")


async def test_user_message_is_quoted_verbatim(harness: Harness) -> None:
    harness.fake.fail_next(100, 2804009, message="Missing Value for Purchase Event")
    (outcome,) = await harness.make().send(harness.events("e1"))
    assert isinstance(outcome, Rejected)
    assert outcome.reason.startswith(
        "a Purchase has no value or currency. Meta 100/2804009: Missing Value for Purchase "
        "Event (Missing Value for Purchase Event (fake Meta)) fbtrace_id=A")


@pytest.mark.parametrize(("status", "body", "expected"), [
    (500, b"", RetryLater),
    (502, b"<html>Bad gateway</html>", RetryLater),
    (429, b"", RetryLater),
    (403, b"Forbidden", RetryLater),  # a config problem: the destination pauses
    (400, b'{"error": "not a graph error"}', Rejected),
])
async def test_replies_without_a_graph_error_fall_back_to_the_status(
    harness: Harness, status: int, body: bytes, expected: type
) -> None:
    harness.fake.respond_next(status, body)
    (outcome,) = await harness.make().send(harness.events("e1"))
    assert isinstance(outcome, expected) and isinstance(outcome, RetryLater | Rejected)
    assert outcome.reason.endswith(f"HTTP {status} from Meta without a Graph error body")


async def test_short_events_received_is_retried(harness: Harness) -> None:
    harness.fake.respond_next(200, {"events_received": 1, "messages": [], "fbtrace_id": "X"})
    outcomes = await harness.make().send(harness.events("e1", "e2"))
    assert all(isinstance(o, RetryLater) and o.reason == "Meta acknowledged 1 of 2 events"
               for o in outcomes)


async def test_connection_reset_raises_transport_error(harness: Harness) -> None:
    harness.fake.reset_next()
    destination = harness.make()
    with pytest.raises(TransportError) as raised:
        await destination.send(harness.events("e1"))
    assert TOKEN not in str(raised.value)
    # The next request on the same destination works.
    assert [type(o) for o in await destination.send(harness.events("e2"))] == [Delivered]


async def test_no_answer_within_the_timeout_raises_transport_error(harness: Harness) -> None:
    harness.fake.hang_next()
    with pytest.raises(TransportError, match="no answer within the timeout"):
        await harness.make(timeout_secs=0.2).send(harness.events("e1"))
    harness.fake.release()
    assert harness.fake.accepted == []


# --- the fake validates what Meta validates --------------------------------------------------


Post = Callable[[dict[str, Any]], Awaitable[tuple[int, dict[str, Any]]]]


@pytest.fixture
def post(harness: Harness) -> Post:
    async def send(body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        async with aiohttp.ClientSession() as session, session.post(
            harness.endpoint, params={"access_token": TOKEN}, json=body
        ) as response:
            answer: dict[str, Any] = await response.json()
            return response.status, answer

    return send


def _valid_event(**changes: Any) -> dict[str, Any]:
    event = payload_of(meta().encode(native()))
    event.update(changes)
    return event


async def test_fake_accepts_what_the_destination_encodes(post: Post) -> None:
    status, answer = await post({"data": [_valid_event()]})
    assert (status, answer["events_received"], answer["messages"]) == (200, 1, [])
    assert answer["fbtrace_id"]


@pytest.mark.parametrize(("event", "code", "subcode", "says"), [
    (_valid_event(user_data={"em": "john_smith@gmail.com", "client_user_agent": "UA"}),
     100, None, "user_data.em must be hashed"),
    (_valid_event(event_time=int(NOW * 1000)), 100, None, "event_time is in the future"),
    (_valid_event(event_time=NOW), 100, None, "event_time must be an integer"),
    (_valid_event(event_time=int(NOW) - 8 * 86400), 100, 2804003, "Event Timestamp Too Old"),
    (_valid_event(custom_data={"currency": "USD"}), 100, 2804009, "Missing Value"),
    (_valid_event(user_data={"em": JOHN_EM, "fbp": JOHN_EM, "client_user_agent": "UA"}),
     100, None, "user_data.fbp must not be hashed"),
    (_valid_event(event_source_url=None), 100, None, "website events require"),
    (_valid_event(user_data={"ge": JOHN_EM, "client_user_agent": "UA"}), 100, None,
     "baseline-invalid"),
    (_valid_event(event_label="x"), 100, None, "unknown parameters: event_label"),
    (_valid_event(action_source="web"), 100, None, "action_source"),
])
async def test_fake_refuses_what_meta_refuses(
    post: Post, event: dict[str, Any], code: int, subcode: int | None, says: str
) -> None:
    event = {k: v for k, v in event.items() if v is not None}
    status, answer = await post({"data": [_valid_event(event_id="ok"), event]})
    assert status == 400
    error = answer["error"]
    assert (error["code"], error.get("error_subcode")) == (code, subcode)
    assert says in error["message"]


async def test_fake_refuses_empty_and_oversized_batches(post: Post) -> None:
    assert (await post({"data": []}))[0] == 400
    assert (await post({"data": [_valid_event()] * 1001}))[0] == 400
    assert (await post({"data": [_valid_event()] * 1000}))[0] == 200


# --- end to end: ingest → processor → scheduler → the fake -----------------------------------


async def test_events_reach_meta_through_the_scheduler_and_one_bad_event_does_not_block_the_rest(
    make_client: Any, aiohttp_server: Any, tmp_path: Path
) -> None:
    fake = FakeMeta(access_token=TOKEN)  # real clock: the events are timestamped on arrival
    server = await aiohttp_server(fake.app)
    config = make_config(tmp_path, destinations={"meta": {
        "type": "meta_capi", "pixel_id": PIXEL, "access_token": TOKEN,
        "endpoint": str(server.make_url(f"/v24.0/{PIXEL}/events")),
    }})
    client = await make_client(config)
    fake.fail_when_event_id("ord-3", subcode=2804019)
    events = [{k: v for k, v in purchase(f"ord-{i}", order_id=str(i)).items()
               if k != "timestamp"} for i in range(1, 6)]
    no_value = {k: v for k, v in purchase("ord-6", order_id="6").items()
                if k not in ("timestamp", "value")}
    batch = {"events": [*events, no_value]}
    assert (await client.post("/v1/events", json=batch, headers=auth())).status == 200
    assert await processor_of(client).run_until_idle() == 6
    await client.app[SCHEDULER].run_until_idle()
    assert sorted(fake.event_ids) == ["ord-1", "ord-2", "ord-4", "ord-5"]
    assert all(request.query["access_token"] == TOKEN for request in fake.requests)
    counts = await store_of(client).counts()
    assert {k: v for k, v in counts.items() if k.startswith("deliveries.")} == {
        "deliveries.delivered": 4, "deliveries.dead": 2}
